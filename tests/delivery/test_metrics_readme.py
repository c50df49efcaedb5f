"""Every metric the README lists moves, on a real /metrics scrape of real relays.

The README's metrics table is the list (so a metric documented but never incremented, like
``promptstamp_hold_overflow_total`` once was, fails here). Two relays cover everything: a
persistent one (restarted, to recover what it kept) and a memory-mode one (to lose something at
shutdown, and to refuse an unauthenticated caller). Counters that only settle at shutdown are
read through a listener on the stopped relay's own stats objects.
"""

from __future__ import annotations

import re
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from prometheus_client.parser import text_string_to_metric_families

from promptstamp.testing import LangfuseServer
from promptstamp_relay.ops.listener import MetricsListener
from promptstamp_relay.ops.telemetry import make_registry
from promptstamp_relay.server import RelayServer
from promptstamp_relay.store import label_pointers as apitier
from tests.otlp_builders import (
    LOGS_EXPORT,
    METRICS_EXPORT,
    TRACES_EXPORT,
    fetch_record,
    gen_attrs,
    logs,
    span,
    traces,
)
from tests.relays import running
from tests.waiting import wait_until

from .collector import FakeCollector
from .conftest import config
from .upstream import Upstream

README = Path(__file__).resolve().parents[2] / "README.md"
TOKEN = "metrics-test-token-0123456789"


def readme_metrics() -> list[str]:
    """Sample names from the README's metrics table (``_x`` is short for ``promptstamp_x``)."""
    text = README.read_text(encoding="utf-8")
    table = text.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    names: list[str] = []
    for row in table.splitlines():
        if not row.startswith("| `"):
            continue
        first, kind = row.split("|")[1], row.split("|")[2].strip()
        for name in re.findall(r"`([a-z_]+)(?:\{[^}]*\})?`", first):
            name = f"promptstamp{name}" if name.startswith("_") else name
            names.append(f"{name}_count" if kind == "histogram" else name)
    return names


class Seen:
    """The largest value each sample name (summed over its labels) reached in any scrape."""

    def __init__(self) -> None:
        self.max: dict[str, float] = {}

    def scrape(self, port: int) -> dict[str, float]:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        now: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                now[sample.name] = now.get(sample.name, 0.0) + float(sample.value)
        for name, value in now.items():
            self.max[name] = max(self.max.get(name, 0.0), value)
        return now

    def scrape_stopped(self, relay: RelayServer) -> None:
        """The stopped relay's own stats objects behind a fresh listener (shutdown counters)."""
        assert relay.parts is not None
        listener = MetricsListener("127.0.0.1:0", make_registry(relay.parts.telemetry))
        listener.start()
        try:
            self.scrape(listener.port)
        finally:
            listener.stop()


def send(address: str, method: str, payload: bytes, metadata: tuple[tuple[str, str], ...] = ()) -> grpc.StatusCode:
    with grpc.insecure_channel(address) as channel:
        try:
            channel.unary_unary(method)(payload, timeout=10, metadata=metadata)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


class LogsCollector:
    """Answers logs with a partial success (one record rejected); ``hold()`` blocks answers."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.collector = FakeCollector(self._answer)

    def _answer(self, data: bytes) -> bytes:
        self.open.wait(30)
        r = ExportLogsServiceResponse()
        r.partial_success.rejected_log_records = 1
        r.partial_success.error_message = "one record dropped"
        return r.SerializeToString()


def metric_points() -> bytes:
    req = ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add(name="orders")
    m.sum.data_points.add(as_int=3)
    m.sum.data_points.add(as_int=4)
    return req.SerializeToString()


def app_log(text: str) -> LogRecord:
    rec = LogRecord(time_unix_nano=time.time_ns())
    rec.body.string_value = text
    return rec


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-metrics", secret_key="sk-lf-metrics") as server:
        yield server


def test_every_metric_the_readme_lists_moves(langfuse: LangfuseServer, upstream: Upstream, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    names = readme_metrics()
    assert len(names) > 40 and "promptstamp_hold_overflow_total" in names
    monkeypatch.setattr(apitier, "MAX_KEYS", 2)  # a third prompt/label key overflows
    langfuse.create_prompt("api-known", "hello", type="text", labels=["production"])
    logs_out = LogsCollector()
    seen = Seen()
    now = time.time_ns()
    persistent = {
        "exporter.langfuse.base_url": langfuse.base_url, "exporter.langfuse.public_key": langfuse.public_key,
        "exporter.langfuse.secret_key": langfuse.secret_key,
        "metrics_listen": "127.0.0.1:0", "queue.directory": str(tmp_path / "q"),
        "hold.seconds": 0.4, "hold.max_spans": 2,
        "resolution.api.enabled": True, "resolution.api.refresh_seconds": 0.1,
        "logs_exporter.type": "otlp_grpc", "logs_exporter.otlp_grpc.endpoint": logs_out.collector.address,
        "receivers.http.header_timeout_seconds": 0.3,
    }
    with running(config(langfuse.base_url, **persistent), timeout=0.3) as relay:
        port = relay.metrics_port
        assert port is not None
        # Fetch records: one versioned (twice: the second is a duplicate), one fallback, one
        # malformed, and an app log line next to them; then a logs request with no fetch record.
        good = fetch_record("order-status-answer", version=3, time=now, trace=1)
        bad = fetch_record("order-status-answer", version=None, time=now, trace=1)  # langfuse, no version
        fallback = fetch_record("embedded", version=None, source="fallback", time=now, trace=7)
        assert send(relay.address, LOGS_EXPORT, logs([good, good, fallback, bad, app_log("hi")]).SerializeToString()) \
            == grpc.StatusCode.OK
        assert send(relay.address, LOGS_EXPORT, logs([app_log("plain")]).SerializeToString()) == grpc.StatusCode.OK
        langfuse.fail_ingest(503, times=1)  # one retry
        # Generations: resolved by trace; three held with no record (the window holds two: one
        # overflows); the api tier is asked for each key (a fourth key overflows its bound);
        # one span without a prompt key (passed through as it came).
        spans = [span(trace=1, span_id=1, start=now, attrs=gen_attrs())]
        spans += [span(trace=10 + i, span_id=10 + i, start=now, attrs=gen_attrs(key=k))
                  for i, k in enumerate(("api-known", "unknown-a", "unknown-b"))]
        assert send(relay.address, TRACES_EXPORT, traces(spans).SerializeToString()) == grpc.StatusCode.OK
        seen.scrape(port)  # held spans and bytes, while held
        assert send(relay.address, TRACES_EXPORT, traces([span(trace=30, span_id=30, start=now)]).SerializeToString()) \
            == grpc.StatusCode.OK
        langfuse.fail_prompts(500, times=1)
        assert send(relay.address, TRACES_EXPORT, traces([span(trace=31, span_id=31, start=now,
                                                                attrs=gen_attrs(key="unknown-c"))]).SerializeToString()) \
            == grpc.StatusCode.OK
        assert send(relay.address, METRICS_EXPORT, metric_points()) == grpc.StatusCode.OK
        assert send(relay.address, TRACES_EXPORT, b"\xff\xff\xff") == grpc.StatusCode.INVALID_ARGUMENT
        budget = relay.admission.decode_budget
        budget.wait_seconds = 0.1
        assert budget.acquire(budget.max_bytes)
        try:
            assert send(relay.address, TRACES_EXPORT, traces([span()]).SerializeToString()) == grpc.StatusCode.UNAVAILABLE
        finally:
            budget.release(budget.max_bytes)
        # Every turn at the processing taken: a request that gets none in time is refused.
        gate = relay.admission.gate
        gate.wait_seconds = 0.1
        for _ in range(gate.slots):
            gate.acquire("test", 1)
        try:
            assert send(relay.address, TRACES_EXPORT, traces([span()]).SerializeToString()) == grpc.StatusCode.UNAVAILABLE
        finally:
            for _ in range(gate.slots):
                gate.release("test")
        # An OTLP/HTTP connection that never finishes its headers is closed at the deadline.
        host, _, http_port = (relay.http_address or "").rpartition(":")
        with socket.create_connection((host, int(http_port)), timeout=5) as slow:
            slow.sendall(b"POST /v1/traces HTTP/1.1\r\n")
            assert slow.recv(100) == b""
        wait_until(lambda: seen.scrape(port).get("promptstamp_held_spans", 1) == 0, 10, "the hold window to empty")
        # Evidence after the fact: trace 11's own record arrives after its generation was sent
        # without it; a generation already linked to version 9 whose trace's record names 3.
        late = fetch_record("unknown-a", version=2, time=now, trace=11)
        assert send(relay.address, LOGS_EXPORT, logs([late]).SerializeToString()) == grpc.StatusCode.OK
        linked = span(trace=1, span_id=2, start=now, attrs=gen_attrs(**{
            "langfuse.observation.prompt.name": "order-status-answer", "langfuse.observation.prompt.version": 9}))
        assert send(relay.address, TRACES_EXPORT, traces([linked]).SerializeToString()) == grpc.StatusCode.OK
        # A span Langfuse's type mapper would throw on (poison): the relay types it.
        poisoned = span(trace=41, span_id=41, start=now, attrs={"gen_ai.operation.name": "constructor"})
        assert send(relay.address, TRACES_EXPORT, traces([poisoned]).SerializeToString()) == grpc.StatusCode.OK
        wait_until(lambda: seen.scrape(port).get("promptstamp_api_fetches_total", 0) >= 2, 10, "api tier fetches")
        langfuse.fail_ingest(400, times=1)  # one permanent failure
        assert send(relay.address, TRACES_EXPORT, traces([span(trace=40, span_id=40, start=now)]).SerializeToString()) \
            == grpc.StatusCode.OK
        wait_until(lambda: seen.scrape(port).get("promptstamp_export_failed_items_total", 0) >= 1, 10,
                   "the permanent failure")
        # A logs export on the wire at the shutdown deadline: queued (depth, bytes), then kept.
        logs_out.open.clear()
        assert send(relay.address, LOGS_EXPORT, logs([app_log("kept")]).SerializeToString()) == grpc.StatusCode.OK
        wait_until(lambda: seen.scrape(port).get("promptstamp_queue_depth", 0) >= 1, 10, "a queued request")
        wait_until(lambda: seen.scrape(port).get("promptstamp_export_rejected_items_total", 0) >= 1, 10,
                   "the partial success")
    seen.scrape_stopped(relay)  # kept_items
    logs_out.open.set()
    try:
        with running(config(langfuse.base_url, **persistent), timeout=5) as again:
            assert again.metrics_port is not None
            wait_until(lambda: seen.scrape(again.metrics_port or 0).get("promptstamp_recovered_items_total", 0) >= 1,
                       10, "the kept request recovered")
    finally:
        logs_out.collector.stop()

    # Memory mode: an unauthenticated caller, a dropped app log, and a span lost at shutdown.
    upstream.fail(503)
    auth = (("authorization", f"Bearer {TOKEN}"),)
    auth_b = (("authorization", f"Bearer {TOKEN}-b"),)
    tenants = {"a": {"tokens": [TOKEN]},  # the relay's own keys; b: a project of its own, down too
               "b": {"tokens": [f"{TOKEN}-b"], "langfuse_base_url": upstream.base_url,
                     "langfuse_public_key": "pk-lf-b", "langfuse_secret_key": "sk-lf-b"}}
    with running(config(upstream.base_url, **{
            "metrics_listen": "127.0.0.1:0", "auth.enabled": True, "auth.tenants": tenants,
            "queue.max_requests": 4}), timeout=0.2) as memory:
        assert send(memory.address, TRACES_EXPORT, traces([span()]).SerializeToString()) == grpc.StatusCode.UNAUTHENTICATED
        assert send(memory.address, LOGS_EXPORT, logs([app_log("dropped")]).SerializeToString(), auth) == grpc.StatusCode.OK
        assert send(memory.address, TRACES_EXPORT, traces([span(start=now)]).SerializeToString(), auth) == grpc.StatusCode.OK
        # b's destination holds its share (half of what is free): its third request is refused.
        assert [send(memory.address, TRACES_EXPORT, traces([span(trace=50 + i, span_id=50 + i, start=now)])
                     .SerializeToString(), auth_b) for i in range(3)] == [grpc.StatusCode.OK] * 2 + [
            grpc.StatusCode.UNAVAILABLE]
        seen.scrape(memory.metrics_port or 0)
    seen.scrape_stopped(memory)  # lost_items

    still = [n for n in names if seen.max.get(n, 0.0) <= 0]
    assert not still, f"listed in the README but never moved: {still}"
    assert seen.max["promptstamp_build_info"] == 1
    assert seen.max.get("promptstamp_unresolved_total", 0) >= 1
