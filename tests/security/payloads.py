"""Requests for the security tests: a realistic batch, and hostile ones built from raw bytes.

Hostile payloads are built at the wire level (tag, length, bytes), never through the protobuf
API, so that they can be what no honest encoder would write: invalid UTF-8, ids of the wrong
length, nesting deeper than a parser allows.
"""

from __future__ import annotations

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import promptstamp_contract as c
from tests.otlp_builders import T0, S, kvs, sid, tid


def realistic_request(n_spans: int = 512, *, generations_every: int = 4) -> ExportTraceServiceRequest:
    """A batch like an instrumented agent sends: ~760 encoded bytes per span, every
    ``generations_every``-th span an LLM call carrying the prompt key."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(kvs({
        c.SERVICE_NAME: "order-status", c.SERVICE_INSTANCE_ID: "order-status-7f9c8d-x2k4p",
        "telemetry.sdk.name": "opentelemetry", "telemetry.sdk.language": "python",
        "telemetry.sdk.version": "1.39.0", "deployment.environment": "production",
    }))
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai.v2"
    ss.scope.version = "2.1b0"
    for i in range(n_spans):
        sp = Span(
            trace_id=tid(1000 + i // 8), span_id=sid(10_000 + i), parent_span_id=sid(9_000 + i // 8),
            name="chat gpt-4o-mini" if i % generations_every == 0 else f"tool lookup_order_{i % 7}",
            kind=Span.SPAN_KIND_CLIENT, start_time_unix_nano=T0 + i * 1000,
            end_time_unix_nano=T0 + i * 1000 + S // 3, status=Status(code=Status.STATUS_CODE_OK),
        )
        attrs: dict[str, object] = {
            c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production",
            "server.address": "api.openai.com", "server.port": 443,
            "http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
            "session.id": f"sess-{i // 32:08d}-4b1e-9a7c-1f2d3e4c5b6a",
            "user.id": f"customer-{i % 50:06d}",
        }
        if i % generations_every == 0:
            attrs.update({
                c.GEN_AI_OPERATION_NAME: "chat", "gen_ai.system": "openai",
                c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.request.temperature": 0.2, "gen_ai.request.max_tokens": 512,
                "gen_ai.usage.input_tokens": 812 + i, "gen_ai.usage.output_tokens": 96 + i % 40,
                "gen_ai.response.id": f"chatcmpl-{i:024d}",
            })
        else:
            attrs.update({"tool.name": f"lookup_order_{i % 7}", "tool.call.id": f"call_{i:020d}",
                          "order.id": f"ORD-{i:010d}", "db.system": "postgresql",
                          "db.operation.name": "SELECT", "db.collection.name": "orders",
                          "retry.count": 0, "cache.hit": False})
        sp.attributes.extend(kvs(attrs))
        fin = KeyValue(key="gen_ai.response.finish_reasons",
                       value=AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="stop")])))
        sp.attributes.append(fin)
        ss.spans.append(sp)
    return req


# --------------------------------------------------------------------------------------------
# Wire-level building blocks
# --------------------------------------------------------------------------------------------
def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(num: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(num << 3 | 2) + varint(len(payload)) + payload


def span_bytes(body: bytes, *, trace_id: bytes = b"\x01" * 16, span_id: bytes = b"\x02" * 8,
               name: bytes = b"chat") -> bytes:
    return field(1, trace_id) + field(2, span_id) + field(5, name) + body


def trace_request(*spans: bytes) -> bytes:
    """ExportTraceServiceRequest{resource_spans{scope_spans{spans...}}} from encoded spans."""
    scope = b"".join(field(2, s) for s in spans)
    return field(1, field(2, scope))


def logs_request(*records: bytes) -> bytes:
    """ExportLogsServiceRequest{resource_logs{scope_logs{log_records...}}}."""
    scope = b"".join(field(2, r) for r in records)
    return field(1, field(2, scope))


def kv(key: bytes, value: bytes) -> bytes:
    """A KeyValue (key=1, value=2: an encoded AnyValue)."""
    return field(1, key) + field(2, value)


def string_value(s: bytes) -> bytes:
    return field(1, s)


def nested_kvlist(depth: int, leaf: bytes = b"leaf") -> bytes:
    """An AnyValue ``depth`` kvlists deep (depth 1 is the string leaf), built without recursion."""
    v = string_value(leaf)
    for _ in range(depth - 1):
        v = field(6, field(1, kv(b"k", v)))
    return v


def nested_array(depth: int, leaf: bytes = b"leaf") -> bytes:
    v = string_value(leaf)
    for _ in range(depth - 1):
        v = field(5, field(1, v))
    return v
