"""A live relay in-process (real gRPC receiver, real metrics listener), fed by a gRPC client
with OTLP requests, and read back over HTTP as an operator or the ``labels`` commands would.

Everything binds 127.0.0.1 port 0; every relay and server a fixture starts is stopped by it.
The Redis fixtures are the suite's real ``redis-server`` ones (``tests/conftest.py``).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from tests.otlp_builders import S, fetch_record, gen_attrs, logs, span, traces
from tests.relays import OtlpClient, relay_config, running

PROMPT = "order-status-answer"


def pod(name: str) -> dict[str, Any]:
    return {c.SERVICE_NAME: "order-agent", c.SERVICE_INSTANCE_ID: name}


class Relay:
    """One started in-process relay (:func:`tests.relays.running`) and a gRPC client for it."""

    def __init__(self, tmp: Path, name: str = "relay", **settings: Any) -> None:
        base: dict[str, Any] = {
            "receivers.http.listen": "", "metrics_listen": "127.0.0.1:0",
            "hold.seconds": 0.2, "exporter.type": "file", "exporter.file": str(tmp / f"{name}.jsonl"),
            "queue.shutdown_timeout_seconds": 5,
        }
        base.update(settings)
        self.cfg = relay_config(None, **base)
        self._running = ExitStack()
        self.server = self._running.enter_context(running(self.cfg))
        self.client = OtlpClient(self.server.address)
        self._trace = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.metrics_port}"

    def generation(self, instance: str, version: int | None, *, at: int | None = None, duration_ms: int = 500,
                   label: str = "production", prompt: str = PROMPT, error: bool = False,
                   tokens: tuple[int, int] = (100, 20), token_keys: tuple[str, str] | None = None,
                   authorization: str | None = None) -> None:
        """A fetch record (unless ``version`` is None) at ``at`` (default now: the live relay's fetch
        log keeps records for store.max_age_seconds of its clock) and a generation in its trace."""
        at = time.time_ns() if at is None else at
        self._trace += 1
        md = [("authorization", authorization)] if authorization else None
        if version is not None:
            self.client.logs(logs([fetch_record(prompt, label, version, time=at, trace=self._trace)],
                                  resource=pod(instance)), timeout=10, metadata=md)
        keys = token_keys or (c.GEN_AI_USAGE_INPUT_TOKENS, c.GEN_AI_USAGE_OUTPUT_TOKENS)
        sp = span(trace=self._trace, span_id=self._trace, start=at + S // 10,
                  end=at + S // 10 + duration_ms * 10**6,
                  attrs=gen_attrs(prompt, label, **{keys[0]: tokens[0], keys[1]: tokens[1]}))
        if error:
            sp.status.code = sp.status.STATUS_CODE_ERROR
        self.client.traces(traces([sp], resource=pod(instance)), timeout=10, metadata=md)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        return http(self.url + path, headers=headers)

    def stop(self) -> None:
        self.client.close()
        self._running.close()


def http(url: str, *, method: str = "GET", body: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any]:
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
            status = r.status
            ctype = r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        raw, status, ctype = e.read(), e.code, e.headers.get("Content-Type", "")
    return status, (json.loads(raw) if "json" in ctype else raw.decode())


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[Callable[..., Relay]]:
    started: list[Relay] = []

    def start(name: str = "relay", **settings: Any) -> Relay:
        r = Relay(tmp_path, name, **settings)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop()


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    server = LangfuseServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
