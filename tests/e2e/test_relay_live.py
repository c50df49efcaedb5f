"""The live relay between the OTel SDK's own OTLP/gRPC exporters and a Langfuse-shaped server."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import TRACES_EXPORT
from tests.relays import relay_config, running
from tests.waiting import wait_until


class App:
    """An app's OTel set-up exporting straight to the relay over OTLP/gRPC."""

    def __init__(self, endpoint: str, instance: str = "agent-1") -> None:
        resource = Resource.create({"service.name": "order-status", "service.instance.id": instance})
        self.tp = TracerProvider(resource=resource)
        self.span_exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=5)
        self.tp.add_span_processor(SimpleSpanProcessor(self.span_exporter))
        self.lp = LoggerProvider(resource=resource)
        self.lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True, timeout=5)))
        self.tracer = self.tp.get_tracer("app")
        self.logger = self.lp.get_logger("promptstamp")

    def fetch_log(self, version: int, label: str = "production", source: str = "langfuse") -> None:
        self.logger.emit(
            event_name=c.FETCH_EVENT_NAME,
            attributes={c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: label,
                        c.PROMPT_VERSION: version, c.FETCH_SOURCE: source},
        )

    def close(self) -> None:
        self.tp.shutdown()
        self.lp.shutdown()


@pytest.fixture
def app(relay: RelayServer) -> Iterator[App]:
    a = App(relay.address)
    yield a
    a.close()


GEN = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
       c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}


def test_stamped_generation_reaches_langfuse_as_langfuse_expects(
    app: App, relay: RelayServer, langfuse: LangfuseServer
) -> None:
    with app.tracer.start_as_current_span("agent", attributes={c.PROMPT_KEY: "order-status-answer"}):
        app.fetch_log(version=3)
        with app.tracer.start_as_current_span("chat gpt-4o-mini", attributes=GEN):
            pass
    obs = langfuse.wait_for_observations(2, timeout=10)
    gen = next(o for o in obs if o.type == "GENERATION")
    assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 3)
    assert gen.metadata["prompt_label"] == "production"
    assert gen.metadata["prompt_resolution"] == "trace"
    assert gen.metadata["prompt_source"] == "langfuse"
    parent = next(o for o in obs if o.name == "agent")
    assert parent.prompt_name is None and "prompt_resolution" not in parent.metadata
    assert langfuse.rejected() == []

    # What went over the wire: path, auth, ingestion header, gzip'd protobuf.
    req = langfuse.ingest_requests[0]
    headers = {k.lower(): v for k, v in req.headers.items()}
    expected_auth = "Basic " + base64.b64encode(b"pk-lf-live:sk-lf-live").decode()
    assert headers["authorization"] == expected_auth
    assert headers["x-langfuse-ingestion-version"] == "4"
    assert req.content_type == "application/x-protobuf"
    assert req.content_encoding == "gzip"
    assert req.status == 200
    assert isinstance(req.request, ExportTraceServiceRequest)
    versions = [kv.value for r in langfuse.ingest_requests for rs in r.request.resource_spans
                for ss in rs.scope_spans for s in ss.spans for kv in s.attributes
                if kv.key == c.LF_PROMPT_VERSION]
    assert [v.WhichOneof("value") for v in versions] == ["int_value"]


def test_fetch_log_arriving_after_the_span_still_links_by_trace(
    app: App, relay: RelayServer, langfuse: LangfuseServer
) -> None:
    # The generation is exported (span ends) and held by the relay before the fetch log is emitted.
    with app.tracer.start_as_current_span("agent"):
        with app.tracer.start_as_current_span("chat", attributes=GEN):
            pass
        wait_until(lambda: relay.processor.stats.spans_held == 1, 5, "the generation held by the relay")
        app.fetch_log(version=5)
    obs = langfuse.wait_for_observations(2, timeout=10)
    gen = next(o for o in obs if o.type == "GENERATION")
    assert gen.prompt_version == 5 and gen.metadata["prompt_resolution"] == "trace"


def test_unresolved_generation_arrives_with_metadata_only_after_the_hold(
    app: App, relay: RelayServer, langfuse: LangfuseServer
) -> None:
    t0 = time.monotonic()
    with app.tracer.start_as_current_span("chat", attributes={**GEN, c.PROMPT_LABEL: "never-fetched"}):
        pass
    (gen,) = langfuse.wait_for_observations(1, timeout=10)
    assert time.monotonic() - t0 >= 0.4  # held for the window (0.5 s)
    assert gen.type == "GENERATION" and gen.prompt_name is None and gen.prompt_version is None
    assert gen.metadata["prompt_resolution"] == "unresolved"
    assert gen.metadata["prompt_name"] == "order-status-answer"
    assert langfuse.rejected() == []


def test_instance_tier_across_traces_and_conservation(
    app: App, relay: RelayServer, langfuse: LangfuseServer
) -> None:
    app.fetch_log(version=2)  # fetched outside any trace (e.g. at start-up)
    n = 20
    for i in range(n):
        with app.tracer.start_as_current_span(f"req-{i}"):
            with app.tracer.start_as_current_span("chat", attributes=GEN):
                pass
    obs = langfuse.wait_for_observations(2 * n, timeout=15)
    assert len(obs) == 2 * n  # nothing lost, nothing duplicated
    gens = [o for o in obs if o.type == "GENERATION"]
    assert len(gens) == n
    assert {(o.prompt_version, o.metadata["prompt_resolution"]) for o in gens} == {(2, "instance")}


def _raw_call(address: str, payload: bytes) -> grpc.RpcError:
    with grpc.insecure_channel(address) as ch:
        call = ch.unary_unary(TRACES_EXPORT)
        with pytest.raises(grpc.RpcError) as info:
            call(payload, timeout=5)
    return info.value  # type: ignore[return-value]


def test_malformed_request_is_invalid_argument_and_the_relay_keeps_serving(
    app: App, relay: RelayServer, langfuse: LangfuseServer
) -> None:
    err = _raw_call(relay.address, b"\xff\xff\xff not protobuf")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    with app.tracer.start_as_current_span("after"):
        pass
    assert len(langfuse.wait_for_observations(1, timeout=10)) == 1


def test_oversized_request_is_resource_exhausted(langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **{"limits.max_request_bytes": 1000})) as relay:
        big = ExportTraceServiceRequest()
        span = big.resource_spans.add().scope_spans.add().spans.add()
        span.name = "x" * 5000
        err = _raw_call(relay.address, big.SerializeToString())
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]


def test_gzip_compressed_senders_are_accepted(relay: RelayServer, langfuse: LangfuseServer) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import Compression

    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(
        OTLPSpanExporter(endpoint=relay.address, insecure=True, compression=Compression.Gzip)))
    with tp.get_tracer("t").start_as_current_span("zipped"):
        pass
    tp.shutdown()
    assert langfuse.wait_for_observations(1, timeout=10)[0].name == "zipped"


def test_passthrough_requests_are_forwarded_byte_for_byte(relay: RelayServer, langfuse: LangfuseServer) -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    s = rs.scope_spans.add().spans.add()
    s.trace_id = b"\x01" * 16
    s.span_id = b"\x02" * 8
    s.name = "plain"
    payload = req.SerializeToString()
    with grpc.insecure_channel(relay.address) as ch:
        ch.unary_unary(TRACES_EXPORT)(payload, timeout=5)
    langfuse.wait_for_observations(1, timeout=10)
    assert langfuse.ingest_requests[0].body == payload
