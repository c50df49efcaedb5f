"""What the running relay says, not only counts: unusable fetch records (with the sender's
service.name, the reason and a correct record's shape), a late record that disagrees with a
link already sent, and a conflicting link. Rate-limited: a flood gives one line and a count.

A real relay (OTLP/gRPC in, the loopback Langfuse out) fed with the OTel wire format.
"""

from __future__ import annotations

import logging
import time

import grpc
import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import (
    LOGS_EXPORT,
    TRACES_EXPORT,
    fetch_record,
    fetch_span,
    gen_attrs,
    kvs,
    logs,
    span,
    traces,
)
from tests.waiting import wait_until


def send(relay: RelayServer, method: str, payload: bytes) -> None:
    with grpc.insecure_channel(relay.address) as channel:
        channel.unary_unary(method)(payload, timeout=10)


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("promptstamp_relay") and r.levelno == logging.WARNING]


def test_an_unusable_fetch_record_is_logged_with_its_sender_once_per_interval(
    relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    string_version = fetch_record(version=None)
    string_version.attributes.extend(kvs({"app.prompt.version": "3"}))  # a string, as a JS app might
    with caplog.at_level(logging.WARNING, logger="promptstamp_relay"):
        for _ in range(5):
            send(relay, LOGS_EXPORT, logs([string_version], resource={"service.name": "node-agent"}).SerializeToString())
        send(relay, TRACES_EXPORT, traces([fetch_span(version=0, trace=8)],
                                          resource={"service.name": "go-agent"}).SerializeToString())
    lines = [m for m in warnings_of(caplog) if "fetch record from" in m]
    assert len(lines) == 1  # five more rejected records in the same interval: counted, not logged
    assert "service.name='node-agent'" in lines[0] and "version_not_int" in lines[0]
    assert "app.prompt.version (OTLP intValue > 0" in lines[0]  # what a correct record looks like
    assert relay.parts is not None
    stats = relay.parts.processor.stats
    assert stats.fetch_invalid_reasons == {"version_not_int": 5, "version_not_positive": 1}


def test_a_late_record_that_disagrees_with_a_sent_link_is_logged(
    langfuse: LangfuseServer, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.relays import relay_config, running

    # An older SDK: the record rides on the request span, so the instance tier may answer.
    with running(relay_config(langfuse, **{"hold.seconds": 0.2})) as relay, \
            caplog.at_level(logging.WARNING, logger="promptstamp_relay"):
        now = time.time_ns()
        send(relay, TRACES_EXPORT, traces([fetch_span(version=1, trace=1, time=now, name="handle_request")])
             .SerializeToString())
        send(relay, TRACES_EXPORT, traces([span(trace=2, span_id=2, start=now + 1000, attrs=gen_attrs())]).SerializeToString())
        wait_until(lambda: len(langfuse.generations()) == 1, 10, "the guessed generation")
        assert langfuse.generations()[0].metadata["prompt_resolution"] == "instance"
        send(relay, TRACES_EXPORT, traces([fetch_span(version=2, trace=2, time=now, name="handle_request")])
             .SerializeToString())
        assert relay.parts is not None
        wait_until(lambda: relay.parts is not None and relay.parts.processor.stats.late_records["disagreed"] == 1,
                   10, "the late record")
    [line] = [m for m in warnings_of(caplog) if "arrived" in m and "later" in m]
    assert "0" * 31 + "2" in line  # the trace id
    assert "linked to version 1 by the 'instance' tier" in line and "names version 2" in line
    assert "hold.seconds" in line and "the link is wrong" in line


def test_a_conflicting_link_is_kept_and_logged(relay: RelayServer, langfuse: LangfuseServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    now = time.time_ns()
    linked = span(trace=3, span_id=5, start=now, attrs=gen_attrs(**{
        "langfuse.observation.prompt.name": "order-status-answer", "langfuse.observation.prompt.version": 9}))
    with caplog.at_level(logging.WARNING, logger="promptstamp_relay"):
        send(relay, TRACES_EXPORT, traces([fetch_span(version=3, trace=3, time=now), linked]).SerializeToString())
        wait_until(lambda: len(langfuse.generations()) == 1, 10, "the linked generation")
    [line] = [m for m in warnings_of(caplog) if "arrived linked" in m]
    assert "version 9" in line and "names version 3" in line and "kept as it arrived" in line
    assert langfuse.generations()[0].prompt_version == 9  # left as the app linked it
