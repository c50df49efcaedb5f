"""Small builders for OTLP messages in tests (no network), and the OTLP/gRPC method paths."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c

S = 10**9  # one second in ns
T0 = 1_700_000_000 * S

#: The OTLP/gRPC services and their ``Export`` method paths (what a raw gRPC client calls).
TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"
TRACES_EXPORT = f"/{TRACE_SERVICE}/Export"
LOGS_EXPORT = f"/{LOGS_SERVICE}/Export"
METRICS_EXPORT = f"/{METRICS_SERVICE}/Export"


def tid(n: int) -> bytes:
    return n.to_bytes(16, "big")


def sid(n: int) -> bytes:
    return n.to_bytes(8, "big")


def anyvalue(v: Any) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    return AnyValue(string_value=str(v))


def kvs(attrs: Mapping[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=anyvalue(v)) for k, v in attrs.items()]


def span(
    name: str = "chat gpt-4o",
    *,
    trace: int = 1,
    span_id: int = 1,
    start: int = T0,
    end: int | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Span:
    return Span(
        trace_id=tid(trace), span_id=sid(span_id), name=name,
        start_time_unix_nano=start, end_time_unix_nano=end if end is not None else start + S // 10,
        attributes=kvs(attrs or {}),
    )


def gen_attrs(key: str = "order-status-answer", label: str = "production", **extra: Any) -> dict[str, Any]:
    return {c.GEN_AI_OPERATION_NAME: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
            c.PROMPT_KEY: key, c.PROMPT_LABEL: label, **extra}


def traces(spans: Iterable[Span], resource: Mapping[str, Any] | None = None) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs(resource or {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-1"}))
    ss = rs.scope_spans.add()
    ss.scope.name = "test"
    ss.spans.extend(spans)
    return req


def fetch_record(
    key: str = "order-status-answer",
    label: str = "production",
    version: int | None = 3,
    *,
    source: str = "langfuse",
    time: int = T0,
    trace: int | None = 1,
    error_type: str | None = None,
    as_attribute: bool = False,
) -> LogRecord:
    attrs: dict[str, Any] = {c.PROMPT_KEY: key, c.PROMPT_LABEL: label, c.FETCH_SOURCE: source}
    if version is not None:
        attrs[c.PROMPT_VERSION] = version
    if error_type:
        attrs[c.FETCH_ERROR_TYPE] = error_type
    if as_attribute:
        attrs[c.EVENT_NAME_ATTRIBUTE] = c.FETCH_EVENT_NAME
    rec = LogRecord(time_unix_nano=time, attributes=kvs(attrs))
    if not as_attribute:
        rec.event_name = c.FETCH_EVENT_NAME
    if trace is not None:
        rec.trace_id = tid(trace)
        rec.span_id = sid(99)
    return rec


def fetch_span(
    key: str = "order-status-answer",
    label: str = "production",
    version: int | None = 3,
    *,
    source: str = "langfuse",
    time: int = T0,
    trace: int = 1,
    span_id: int = 90,
    name: str = c.FETCH_SPAN_NAME,
) -> Span:
    """The fetch record as the SDK sends it (contract §2): a short span named
    ``promptstamp.fetch`` ending when the fetch resolved, with one ``app.prompt.fetch`` event and
    the record's attributes. ``name``: another span carrying the event (older SDKs)."""
    attrs: dict[str, Any] = {c.PROMPT_KEY: key, c.PROMPT_LABEL: label, c.FETCH_SOURCE: source}
    if version is not None:
        attrs[c.PROMPT_VERSION] = version
    out = Span(trace_id=tid(trace), span_id=sid(span_id), name=name, start_time_unix_nano=time - S // 100,
               end_time_unix_nano=time, attributes=kvs(attrs))
    out.events.add(name=c.FETCH_EVENT_NAME, time_unix_nano=time, attributes=kvs(attrs))
    return out


def logs(records: Iterable[LogRecord], resource: Mapping[str, Any] | None = None) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(kvs(resource or {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-1"}))
    sl = rl.scope_logs.add()
    sl.log_records.extend(records)
    return req


def attrs_of(s: Span) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in s.attributes:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


def all_spans(reqs: Iterable[Any]) -> list[Span]:
    return [sp for r in reqs for rs in getattr(r, "request", r).resource_spans for ss in rs.scope_spans for sp in ss.spans]


def line_spans(lines: Iterable[str]) -> list[Span]:
    """Every span of an OTLP/JSON lines file's trace requests, in order (logs and metrics skipped)."""
    from promptstamp_relay.wire.otlpjson import read_documents

    return all_spans(d.request for d in read_documents(lines) if d.signal == "traces")
