"""The live relay's OTLP/HTTP receiver between real OTel SDK exporters (and httpx for OTLP/JSON,
which the Python SDK has no exporter for) and a Langfuse-shaped server; metrics in, not errors."""

from __future__ import annotations

import base64
import gzip
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from promptstamp_relay.wire.otlpjson import encode_line, to_protobuf
from tests.otlp_builders import fetch_record, gen_attrs, logs, span, traces
from tests.relays import relay_config, running
from tests.waiting import wait_until

GEN = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
       c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}
PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}


def basic(pk: str, sk: str) -> str:
    return "Basic " + base64.b64encode(f"{pk}:{sk}".encode()).decode()


class Recording(SpanExporter):
    """The app's exporter, with every export result kept (what the app would see)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.results: list[SpanExportResult] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        r = self.inner.export(spans)
        self.results.append(r)
        return r

    def shutdown(self) -> None:
        self.inner.shutdown()


class RecordingLogs(LogRecordExporter):
    def __init__(self, inner: LogRecordExporter) -> None:
        self.inner = inner
        self.results: list[LogRecordExportResult] = []

    def export(self, batch: Any) -> LogRecordExportResult:
        r = self.inner.export(batch)
        self.results.append(r)
        return r

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True

    def shutdown(self) -> None:
        self.inner.shutdown()


class HttpApp:
    """An app's OTel set-up exporting OTLP/HTTP protobuf (the OTLP default) to the relay."""

    def __init__(self, base: str, *, traces_path: str = "/v1/traces", headers: dict[str, str] | None = None,
                 compression: Compression = Compression.NoCompression) -> None:
        resource = Resource.create({"service.name": "order-status", "service.instance.id": "agent-1"})
        self.spans = Recording(OTLPSpanExporter(endpoint=base + traces_path, headers=headers, timeout=5,
                                                compression=compression))
        self.tp = TracerProvider(resource=resource)
        self.tp.add_span_processor(SimpleSpanProcessor(self.spans))
        self.logs = RecordingLogs(OTLPLogExporter(endpoint=base + "/v1/logs", headers=headers, timeout=5,
                                                  compression=compression))
        self.lp = LoggerProvider(resource=resource)
        self.lp.add_log_record_processor(SimpleLogRecordProcessor(self.logs))
        self.tracer = self.tp.get_tracer("app")
        self.logger = self.lp.get_logger("promptstamp")

    def fetch_log(self, version: int) -> None:
        self.logger.emit(event_name=c.FETCH_EVENT_NAME, attributes={
            c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production",
            c.PROMPT_VERSION: version, c.FETCH_SOURCE: "langfuse"})

    def agent_turn(self, version: int = 3) -> None:
        with self.tracer.start_as_current_span("agent", attributes={c.PROMPT_KEY: "order-status-answer"}):
            self.fetch_log(version)
            with self.tracer.start_as_current_span("chat gpt-4o-mini", attributes=GEN):
                pass

    def close(self) -> None:
        self.tp.shutdown()
        self.lp.shutdown()


def http_base(relay: RelayServer) -> str:
    assert relay.http_address is not None
    return f"http://{relay.http_address}"


def linked_generation(langfuse: LangfuseServer, n: int = 2) -> Any:
    obs = langfuse.wait_for_observations(n, timeout=10)
    return next(o for o in obs if o.type == "GENERATION")


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_otel_http_exporters_link_generations(
    relay: RelayServer, langfuse: LangfuseServer, compression: Compression
) -> None:
    """Also the app-side BadStatusLine case: an OTLP/HTTP exporter pointed at the relay works."""
    app = HttpApp(http_base(relay), compression=compression)
    try:
        app.agent_turn(version=3)
    finally:
        app.close()
    gen = linked_generation(langfuse)
    assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 3)
    assert gen.metadata["prompt_resolution"] == "trace"
    assert app.spans.results and set(app.spans.results) == {SpanExportResult.SUCCESS}
    assert app.logs.results and set(app.logs.results) == {LogRecordExportResult.SUCCESS}
    assert langfuse.rejected() == []
    assert relay.stats.spans_received == 2


def test_otlp_endpoint_env_var_form_works(relay: RelayServer, langfuse: LangfuseServer,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_EXPORTER_OTLP_ENDPOINT=http://relay:4318`` (the exporter appends /v1/traces)."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", http_base(relay))
    exporter = Recording(OTLPSpanExporter(timeout=5))
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    with tp.get_tracer("app").start_as_current_span("from-env"):
        pass
    tp.shutdown()
    assert exporter.results == [SpanExportResult.SUCCESS]
    assert langfuse.wait_for_observations(1, timeout=10)[0].name == "from-env"


def otlp_json(message: Any) -> bytes:
    """OTLP/JSON as the spec writes it: camelCase, hex ids, enums as integers."""
    return encode_line(message).encode()


def test_otlp_json_bodies_link_generations(relay: RelayServer, langfuse: LangfuseServer) -> None:
    now = time.time_ns()
    base = http_base(relay)
    with httpx.Client(base_url=base, trust_env=False, timeout=10) as client:
        r = client.post("/v1/logs", content=otlp_json(logs([fetch_record(version=4, time=now, trace=11)])),
                        headers=JS)
        assert (r.status_code, r.headers["content-type"], r.json()) == (200, "application/json", {})
        req = traces([span("agent", trace=11, span_id=1, start=now),
                      span("chat gpt-4o-mini", trace=11, span_id=2, start=now, attrs=gen_attrs())])
        r = client.post("/v1/traces", content=otlp_json(req), headers=JS)
        assert (r.status_code, r.json()) == (200, {})
        # gzip'd JSON too
        r = client.post("/v1/traces", content=gzip.compress(otlp_json(traces([span("later", trace=12,
                        span_id=3, start=now)]))), headers={**JS, "Content-Encoding": "gzip"})
        assert r.status_code == 200
    obs = langfuse.wait_for_observations(3, timeout=10)
    gen = next(o for o in obs if o.type == "GENERATION")
    assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 4)
    assert gen.metadata["prompt_resolution"] == "trace"
    assert {o.name for o in obs} == {"agent", "chat gpt-4o-mini", "later"}


def test_langfuse_path_with_basic_credentials_in_passthrough_mode(langfuse: LangfuseServer) -> None:
    """An exporter configured for Langfuse only changes its base URL: its Basic pk:sk is who it
    is, and with passthrough those keys (not the relay's) go upstream."""
    cfg = relay_config(langfuse, **{"auth.passthrough_langfuse_credentials": True,
                                    "exporter.langfuse.public_key": "pk-lf-relay-own",
                                    "exporter.langfuse.secret_key": "sk-lf-relay-own"})
    with running(cfg) as relay:
        app_auth = basic(langfuse.public_key, langfuse.secret_key)
        app = HttpApp(http_base(relay), traces_path="/api/public/otel/v1/traces",
                      headers={"Authorization": app_auth})
        try:
            app.agent_turn(version=5)
        finally:
            app.close()
        gen = linked_generation(langfuse)
        assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 5)
        assert set(app.spans.results) == {SpanExportResult.SUCCESS}
        sent = {r.headers.get("Authorization") or r.headers.get("authorization") for r in langfuse.ingest_requests}
        assert sent == {app_auth}  # the app's own credentials, not the relay's
        # Without credentials (and a relay whose own keys Langfuse would refuse): still its tenant
        # rules, same as gRPC.
        with httpx.Client(trust_env=False, timeout=10) as client:
            r = client.post(http_base(relay) + "/api/public/otel/v1/traces",
                            content=traces([span("x")]).SerializeToString(),
                            headers={**PB, "Authorization": "Bearer not-basic-at-all"})
        assert r.status_code == 401


def metrics_data() -> Any:
    reader = InMemoryMetricReader()
    mp = MeterProvider(resource=Resource.create({"service.name": "order-status"}), metric_readers=[reader])
    mp.get_meter("app").create_counter("llm.tokens").add(42, {"model": "gpt-4o-mini"})
    mp.get_meter("app").create_histogram("llm.latency").record(0.25)
    data = reader.get_metrics_data()
    mp.shutdown()
    return data


def export_metrics_both_ways(relay: RelayServer) -> list[MetricExportResult]:
    data = metrics_data()
    results = []
    grpc_exporter = GrpcMetricExporter(endpoint=relay.address, insecure=True, timeout=5)
    results.append(grpc_exporter.export(data))
    grpc_exporter.shutdown()
    http_exporter = HttpMetricExporter(endpoint=http_base(relay) + "/v1/metrics", timeout=5)
    results.append(http_exporter.export(data))
    http_exporter.shutdown()
    return results


def test_metrics_are_accepted_counted_and_dropped_without_a_metrics_exporter(
    relay: RelayServer, caplog: pytest.LogCaptureFixture
) -> None:
    assert export_metrics_both_ways(relay) == [MetricExportResult.SUCCESS, MetricExportResult.SUCCESS]
    assert relay.stats.metric_points_received == 4  # 2 points, twice
    assert relay.stats.metric_points_dropped == 4


def test_no_metrics_exporter_is_said_once_at_start(langfuse: LangfuseServer,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="promptstamp_relay")
    with running(relay_config(langfuse)) as relay:
        said = [r.getMessage() for r in caplog.records if "metrics exporter" in r.getMessage()]
        assert len(said) == 1 and "dropped" in said[0]
        export_metrics_both_ways(relay)
        assert len([r for r in caplog.records if "metrics" in r.getMessage() and "dropped" in r.getMessage()]) == 1


def test_metrics_are_forwarded_unchanged_to_a_file_exporter(langfuse: LangfuseServer, tmp_path: Path) -> None:
    out = tmp_path / "metrics.jsonl"
    with running(relay_config(langfuse, **{"metrics_exporter.type": "file",
                                           "metrics_exporter.file": str(out)})) as relay:
        assert export_metrics_both_ways(relay) == [MetricExportResult.SUCCESS, MetricExportResult.SUCCESS]
        lines = wait_until(lambda: out.exists() and len(out.read_text().splitlines()) == 2 and out.read_text(),
                           what="two metrics requests in the file").splitlines()
    assert relay.stats.metric_points_dropped == 0
    for line in lines:
        req = ExportMetricsServiceRequest.FromString(to_protobuf("metrics", line.encode()))
        names = sorted(m.name for rm in req.resource_metrics for sm in rm.scope_metrics for m in sm.metrics)
        assert names == ["llm.latency", "llm.tokens"]
        point = next(m for m in req.resource_metrics[0].scope_metrics[0].metrics if m.name == "llm.tokens")
        assert point.sum.data_points[0].as_int == 42


def test_status_codes_of_the_live_relay(langfuse: LangfuseServer) -> None:
    cfg = relay_config(langfuse, **{"limits.max_request_bytes": 64 * 1024,
                                    "limits.max_inflight_request_bytes": 64 * 1024})
    with running(cfg) as relay:
        good = traces([span("ok")]).SerializeToString()
        with httpx.Client(base_url=http_base(relay), trust_env=False, timeout=10) as client:
            assert client.post("/v1/traces", content=good, headers=PB).status_code == 200
            assert client.post("/v1/traces", content=b"\xff\xff\xff", headers=PB).status_code == 400
            assert client.post("/v1/logs", content=b"{not json", headers=JS).status_code == 400
            assert client.post("/v1/metrics", content=b"\x0a\x05\x0a", headers=PB).status_code == 400
            assert client.post("/v1/traces", content=b"x" * (64 * 1024 + 1), headers=PB).status_code == 413
            bomb = gzip.compress(b"\x0a" * (64 * 1024 * 64), 9)
            r = client.post("/v1/traces", content=bomb, headers={**PB, "Content-Encoding": "gzip"})
            assert r.status_code == 413
            assert client.post("/v1/traces", content=good, headers={"Content-Type": "text/plain"}).status_code == 415
            assert client.get("/v1/traces").status_code == 405
            assert client.post("/v2/traces", content=good, headers=PB).status_code == 404
        assert relay.stats.spans_received == 1


def test_unauthenticated_and_backpressure_statuses(langfuse: LangfuseServer) -> None:
    token = "t" * 32
    cfg = relay_config(langfuse, **{"auth.enabled": True,
                                    "auth.tenants": {"team": {"tokens": [token]}},
                                    "queue.max_bytes": 300})
    with running(cfg) as relay:
        with httpx.Client(base_url=http_base(relay), trust_env=False, timeout=10) as client:
            body = traces([span("s")]).SerializeToString()
            r = client.post("/v1/traces", content=body, headers=PB)
            assert r.status_code == 401
            auth = {**PB, "Authorization": f"Bearer {token}"}
            assert client.post("/v1/traces", content=body, headers=auth).status_code == 200
            big = traces([span(f"s{i}", span_id=i + 1) for i in range(20)]).SerializeToString()
            assert len(big) > 300
            r = client.post("/v1/traces", content=big, headers=auth)
            assert r.status_code == 429
            assert int(r.headers["retry-after"]) >= 1


def test_http_listener_can_be_turned_off(langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **{"receivers.http.listen": ""})) as relay:
        assert relay.http_address is None
