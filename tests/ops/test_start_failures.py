"""Start-up failures get their exit code by exception type, from one table (cli.START_FAILURES),
not from their message: a real bind failure of each listener, and the rest."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from prometheus_client.registry import CollectorRegistry

from promptstamp_relay import cli
from promptstamp_relay.config import ConfigError
from promptstamp_relay.errors import ListenError, MetricsListenError, ReceiverListenError
from promptstamp_relay.ops.listener import MetricsListener
from promptstamp_relay.receive.http import OtlpHttpReceiver
from promptstamp_relay.receive.settings import HttpReceiverConfig


@pytest.fixture
def taken_port() -> Iterator[int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


def test_the_metrics_listener_in_use_is_exit_6(taken_port: int) -> None:
    listener = MetricsListener(f"127.0.0.1:{taken_port}", CollectorRegistry())
    with pytest.raises(MetricsListenError) as caught:
        listener.start()
    assert cli.start_failure_code(caught.value) == cli.EXIT_METRICS_IN_USE == 6
    assert f"127.0.0.1:{taken_port}" in str(caught.value) and "--metrics-listen" in caught.value.hint


def test_the_otlp_http_receiver_in_use_is_exit_5(taken_port: int) -> None:
    admission = SimpleNamespace(traces=None, logs=None, metrics=None)  # never called: it cannot bind
    receiver = OtlpHttpReceiver(HttpReceiverConfig(listen=f"127.0.0.1:{taken_port}"), admission)  # type: ignore[arg-type]
    with pytest.raises(ReceiverListenError) as caught:
        receiver.start()
    assert isinstance(caught.value, ListenError) and isinstance(caught.value, OSError)
    assert cli.start_failure_code(caught.value) == cli.EXIT_LISTEN_IN_USE == 5
    assert "(OTLP/HTTP)" in str(caught.value) and "--http-listen" in caught.value.hint


def test_everything_else_is_a_start_up_problem_of_exit_2() -> None:
    assert cli.start_failure_code(ConfigError(["bad"])) == cli.EXIT_CONFIG == 2
    assert cli.start_failure_code(RuntimeError("something else")) == cli.EXIT_CONFIG
    assert all(issubclass(kind, BaseException) for kind, _ in cli.START_FAILURES)
