"""Realistic OTLP traffic, built once and encoded once.

One *app request* is one trace of 8 spans, the shape of an LLM support agent behind an HTTP API
(the order-status example): the HTTP server span, the app span that opens ``promptstamp.prompt()``,
a SQL query, a Redis read, a retrieval step, **one generation span** copied from a real
instrumentation recording (OpenLLMetry, OpenInference or openai-v2, rotating; see
``tests/replay/recordings``), the HTTP client call to the model provider under it, and a tool
step. Every span started inside ``prompt()`` (7 of 8) carries ``app.prompt.key`` and
``app.prompt.label``, as the SDK's span processor puts them there; each span has ~12–20
attributes. One generation per 8 spans: 12.5 % of spans are generations.

Each trace request (``batch`` spans, one resource = one app instance, grouped by
instrumentation scope as the OTel SDK exporter does) comes with the fetch log an app emits: one
``app.prompt.fetch`` record per trace (one ``prompt()`` per request). ``late_share`` of those
records arrive *after* the spans (a second, small logs request), so those generations are held
and released early when their record arrives; the rest arrive before, so the generation
resolves at once (trace tier), as in real traffic where the fetch happens before the model call.

Trace ids carry 4 patchable bytes (8..12): the load generator writes a per-send counter there,
in the trace request and in its logs requests alike, so every send is a new set of traces.

Workload kinds:
  ``mixed``  the above (configurations 1, 2, 4);
  ``nokey``  the same spans without ``app.prompt.*`` and without fetch logs: an app that does
             not use promptstamp (configuration 3, pass-through);
  ``held``   generation spans only, with ``app.prompt.*`` and no fetch log at all: every one is
             held (memory tests).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import promptstamp_contract as c

__all__ = ["Batch", "Workload", "build", "patch"]

ROOT = Path(__file__).resolve().parent.parent
RECORDINGS = ROOT / "tests" / "replay" / "recordings"
SPANS_PER_TRACE = 8
PATCH_AT = 8  # trace-id bytes [8:12] are rewritten per send

PROMPTS = [  # (key, label, version): what the fetch log says the app received
    ("order-status-answer", "production", 7),
    ("order-status-answer", "prod-a", 8),
    ("order-status-answer", "prod-b", 9),
    ("refund-policy-answer", "production", 3),
    ("ticket-triage", "production", 12),
]

_SCOPES = {
    "http.server": ("opentelemetry.instrumentation.fastapi", "0.66b2"),
    "app": ("order_status", "1.4.2"),
    "sql": ("opentelemetry.instrumentation.sqlalchemy", "0.66b2"),
    "redis": ("opentelemetry.instrumentation.redis", "0.66b2"),
    "httpx": ("opentelemetry.instrumentation.httpx", "0.66b2"),
}


@dataclass
class Batch:
    traces: bytes
    logs_before: bytes  # b"" when there is none
    logs_after: bytes
    spans: int
    generations: int
    trace_offsets: list[int]  # where to write the 4 per-send bytes
    before_offsets: list[int]
    after_offsets: list[int]
    first_trace_id: bytes  # of the first span, before patching
    before_time_offsets: list[int] = field(default_factory=list)  # fetch-record times (fixed64)
    after_time_offsets: list[int] = field(default_factory=list)


@dataclass
class Workload:
    kind: str
    batch_size: int
    batches: list[Batch]

    @property
    def avg_span_bytes(self) -> float:
        total = sum(len(b.traces) for b in self.batches)
        return total / max(1, sum(b.spans for b in self.batches))

    def describe(self) -> dict[str, Any]:
        n = sum(b.spans for b in self.batches)
        attrs = self._attr_stats()
        return {
            "kind": self.kind, "batch_size": self.batch_size, "distinct_batches": len(self.batches),
            "avg_span_bytes": round(self.avg_span_bytes, 1),
            "avg_attributes_per_span": round(attrs, 1),
            "generation_share": round(sum(b.generations for b in self.batches) / max(1, n), 4),
            "trace_request_bytes": round(sum(len(b.traces) for b in self.batches) / len(self.batches)),
            "logs_before_bytes": round(sum(len(b.logs_before) for b in self.batches) / len(self.batches)),
            "logs_after_bytes": round(sum(len(b.logs_after) for b in self.batches) / len(self.batches)),
        }

    def _attr_stats(self) -> float:
        req = ExportTraceServiceRequest()
        req.ParseFromString(self.batches[0].traces)
        n = a = 0
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    n += 1
                    a += len(sp.attributes)
        return a / max(1, n)


def _kv(key: str, value: Any) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=str(value)))


def _kvs(attrs: Mapping[str, Any]) -> list[KeyValue]:
    return [_kv(k, v) for k, v in attrs.items()]


def _generation_templates() -> list[tuple[tuple[str, str], Span]]:
    """The first generation span of each real instrumentation recording, with its scope."""
    from promptstamp_relay.wire.otlpjson import decode_line

    out: list[tuple[tuple[str, str], Span]] = []
    for name in ("openllmetry", "openinference", "openai-v2"):
        path = RECORDINGS / f"{name}.jsonl"
        for line in path.read_text(encoding="utf-8").splitlines():
            req = decode_line(line)
            if not isinstance(req, ExportTraceServiceRequest):
                continue
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    for sp in ss.spans:
                        keys = {kv.key for kv in sp.attributes}
                        if c.PROMPT_KEY in keys and (c.GEN_AI_OPERATION_NAME in keys
                                                     or c.OPENINFERENCE_SPAN_KIND in keys):
                            out.append(((ss.scope.name, ss.scope.version), sp))
                            break
                    else:
                        continue
                    break
                else:
                    continue
                break
            else:
                continue
            break
    if len(out) != 3:
        raise RuntimeError(f"expected 3 generation templates in {RECORDINGS}, found {len(out)}")
    return out


def _resource(instance: int) -> list[KeyValue]:
    return _kvs({
        "service.name": "order-status-agent",
        "service.instance.id": f"order-status-agent-{instance}",
        "service.version": "2.14.0",
        "deployment.environment.name": "production",
        "host.name": f"ip-10-0-{instance}-17.eu-west-1.compute.internal",
        "host.arch": "amd64",
        "os.type": "linux",
        "process.pid": 4000 + instance,
        "process.runtime.name": "cpython",
        "process.runtime.version": "3.11.7",
        "telemetry.sdk.language": "python",
        "telemetry.sdk.name": "opentelemetry",
        "telemetry.sdk.version": "1.45.2",
        "k8s.pod.name": f"order-status-agent-7d9f8c6b5-{instance:05d}",
        "k8s.namespace.name": "support",
    })


class _Ids:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def trace(self) -> bytes:
        b = bytearray(self.rng.randbytes(16))
        b[PATCH_AT:PATCH_AT + 4] = b"\0\0\0\0"
        b[0] |= 1  # never all zero
        return bytes(b)

    def span(self) -> bytes:
        return self.rng.randbytes(8)


def _trace_spans(
    rng: random.Random, ids: _Ids, gen: tuple[tuple[str, str], Span], t0: int,
    prompt: tuple[str, str, int], with_key: bool, order_id: int,
) -> tuple[bytes, bytes, list[tuple[str, Span]], bool]:
    """One app request: (trace id, app span id, [(scope kind, span)], has generation)."""
    key, label, _version = prompt
    tid = ids.trace()
    ms = 1_000_000
    pk: dict[str, Any] = {c.PROMPT_KEY: key, c.PROMPT_LABEL: label} if with_key else {}

    def mk(name: str, kind: int, parent: bytes, start: int, dur: int, attrs: Mapping[str, Any],
           status: int = 0) -> Span:
        sp = Span(trace_id=tid, span_id=ids.span(), parent_span_id=parent, name=name, kind=kind,
                  start_time_unix_nano=t0 + start * ms, end_time_unix_nano=t0 + (start + dur) * ms,
                  attributes=_kvs(attrs), flags=0x100)
        if status:
            sp.status.CopyFrom(Status(code=status))
        return sp

    root = mk("GET /orders/{order_id}/status", 2, b"", 0, 1900, {
        "http.request.method": "GET", "http.route": "/orders/{order_id}/status",
        "url.path": f"/orders/{order_id}/status", "url.scheme": "https",
        "server.address": "support-api.internal", "server.port": 443,
        "network.protocol.version": "1.1", "client.address": f"10.0.{order_id % 250}.{order_id % 200}",
        "client.port": 40000 + order_id % 20000,
        "user_agent.original": "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15",
        "http.response.status_code": 200, "http.response.body.size": 812,
        "network.peer.address": "10.0.3.9", "network.peer.port": 51234,
        "http.request.header.x-request-id": rng.randbytes(8).hex(), "network.type": "ipv4",
    })
    app = mk("order_status.answer", 1, root.span_id, 5, 1880, {
        **pk, c.FETCH_SOURCE: "langfuse", "order.id": f"ord_{order_id:08d}", "order.region": "eu",
        "customer.tier": rng.choice(["free", "plus", "enterprise"]), "session.id": rng.randbytes(8).hex(),
        "enduser.pseudo.id": rng.randbytes(6).hex(), "app.request.id": rng.randbytes(10).hex(),
        "app.channel": "chat", "app.locale": "en-GB", "app.escalated": False, "app.attempt": 1,
        "code.function.name": "order_status.agent.answer",
    } if with_key else {
        "order.id": f"ord_{order_id:08d}", "order.region": "eu", "customer.tier": "plus",
        "session.id": rng.randbytes(8).hex(), "enduser.pseudo.id": rng.randbytes(6).hex(),
        "app.request.id": rng.randbytes(10).hex(), "app.channel": "chat", "app.locale": "en-GB",
        "app.escalated": False, "app.attempt": 1, "app.prompt.mode": "static",
    })
    sql = mk("SELECT orders", 3, app.span_id, 12, 4, {
        **pk, "db.system.name": "postgresql", "db.namespace": "support", "db.operation.name": "SELECT",
        "db.collection.name": "orders",
        "db.query.text": "SELECT id, state, carrier, eta FROM orders WHERE id = %(id)s AND region = %(region)s",
        "server.address": "orders-db.internal", "server.port": 5432, "network.peer.address": "10.0.8.21",
        "network.peer.port": 5432, "db.client.connection.pool.name": "orders", "db.response.returned_rows": 1,
        "network.type": "ipv4", "code.function.name": "orders.repository.load_order_state",
    })
    redis = mk("HGETALL", 3, app.span_id, 17, 1, {
        **pk, "db.system.name": "redis", "db.operation.name": "HGETALL",
        "db.query.text": f"HGETALL memory:{order_id % 9973}", "db.namespace": "0",
        "server.address": "memory-cache.internal", "server.port": 6379, "network.transport": "tcp",
        "network.peer.address": "10.0.9.4", "network.peer.port": 6379, "db.response.status_code": "OK",
        "network.type": "ipv4", "code.function.name": "memory.store.load_categories",
    })
    retrieve = mk("retrieve policy_documents", 1, app.span_id, 19, 35, {
        **pk, "retrieval.index": "policies-eu-v3", "retrieval.k": 4, "retrieval.documents": 3,
        "retrieval.min_score": 0.72, "retrieval.embedding.model": "text-embedding-3-small",
        "retrieval.query.chars": 118, "retrieval.cache_hit": bool(order_id % 3 == 0),
        "retrieval.latency_budget_ms": 80, "retrieval.filter": "region = 'eu' AND active",
        "retrieval.shard": order_id % 8, "code.function.name": "policies.retriever.search",
        "code.file.path": "/app/order_status/policies/retriever.py",
    })
    scope, tmpl = gen
    g = Span()
    g.CopyFrom(tmpl)
    g.trace_id = tid
    g.span_id = ids.span()
    g.parent_span_id = app.span_id
    g.start_time_unix_nano = t0 + 60 * ms
    g.end_time_unix_nano = t0 + 1700 * ms
    keep = [kv for kv in g.attributes if kv.key not in (c.PROMPT_KEY, c.PROMPT_LABEL)]
    del g.attributes[:]
    g.attributes.extend(_kvs(pk))
    g.attributes.extend(keep)
    http = mk("POST", 3, g.span_id, 62, 1630, {
        **pk, "http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
        "server.address": "api.openai.com", "server.port": 443, "network.protocol.version": "1.1",
        "http.response.status_code": 200, "http.request.body.size": 1734, "http.response.body.size": 912,
        "user_agent.original": "OpenAI/Python 1.109.1", "network.peer.address": "162.159.140.245",
        "network.peer.port": 443, "http.request.resend_count": 0, "network.type": "ipv4",
    })
    tool = mk("tool lookup_carrier_eta", 1, app.span_id, 1720, 140, {
        **pk, "tool.name": "lookup_carrier_eta", "tool.call.id": "call_" + rng.randbytes(9).hex(),
        "tool.arguments.chars": 64, "tool.result.chars": 211, "carrier.name": "DHL", "carrier.region": "eu",
        "tool.cache_hit": False, "tool.retries": 0, "tool.timeout_ms": 2000, "tool.outcome": "ok",
        "code.function.name": "tools.carrier.lookup_eta", "code.file.path": "/app/order_status/tools/carrier.py",
    })
    spans = [("http.server", root), ("app", app), ("sql", sql), ("redis", redis), ("app", retrieve),
             (f"gen:{scope[0]}:{scope[1]}", g), ("httpx", http), ("app", tool)]
    return tid, app.span_id, spans, True


def _fetch_record(tid: bytes, app_span: bytes, t: int, prompt: tuple[str, str, int]) -> LogRecord:
    key, label, version = prompt
    rec = LogRecord(time_unix_nano=t, observed_time_unix_nano=t + 1000, severity_number=9,
                    severity_text="INFO", trace_id=tid, span_id=app_span, flags=1,
                    event_name=c.FETCH_EVENT_NAME)
    rec.attributes.extend(_kvs({c.PROMPT_KEY: key, c.PROMPT_LABEL: label,
                                c.FETCH_SOURCE: c.SOURCE_LANGFUSE, c.PROMPT_VERSION: version}))
    return rec


def _traces_request(instance: int, spans: Iterable[tuple[str, Span]]) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(_resource(instance))
    rs.schema_url = "https://opentelemetry.io/schemas/1.28.0"
    groups: dict[str, Any] = {}
    for kind, sp in spans:
        ss = groups.get(kind)
        if ss is None:
            ss = groups[kind] = rs.scope_spans.add()
            if kind.startswith("gen:"):
                _, name, version = kind.split(":", 2)
            else:
                name, version = _SCOPES[kind]
            ss.scope.name = name
            ss.scope.version = version
        ss.spans.append(sp)
    return req


def _logs_request(instance: int, records: list[LogRecord]) -> bytes:
    if not records:
        return b""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.extend(_resource(instance))
    sl = rl.scope_logs.add()
    sl.scope.name = "promptstamp"
    sl.scope.version = "0.1.0"
    sl.log_records.extend(records)
    return bytes(req.SerializeToString())


def _offsets(data: bytes, tids: Iterable[bytes]) -> list[int]:
    out: list[int] = []
    for tid in tids:
        i = data.find(tid)
        while i >= 0:
            out.append(i + PATCH_AT)
            i = data.find(tid, i + 1)
    out.sort()
    return out


def build(kind: str = "mixed", batch_size: int = 512, n_batches: int = 8, *, late_share: float = 0.05,
          seed: int = 7, now_ns: int | None = None) -> Workload:
    """Encode ``n_batches`` distinct trace requests of ``batch_size`` spans (+ their fetch logs)."""
    if kind not in ("mixed", "nokey", "held"):
        raise ValueError(f"unknown workload kind {kind!r}")
    rng = random.Random(seed * 1_000_003 + batch_size)
    ids = _Ids(rng)
    gens = _generation_templates()
    t_base = (now_ns if now_ns is not None else time.time_ns()) - 5 * 10**9
    with_key = kind != "nokey"
    batches: list[Batch] = []
    order = 0
    for b in range(n_batches):
        instance = b % 4
        spans: list[tuple[str, Span]] = []
        before: list[LogRecord] = []
        after: list[LogRecord] = []
        tids: list[bytes] = []
        generations = 0
        while len(spans) < batch_size:
            order += 1
            prompt = PROMPTS[order % len(PROMPTS)]
            t0 = t_base + order * 3_000_000
            tid, app_span, tspans, _ = _trace_spans(rng, ids, gens[order % len(gens)], t0, prompt,
                                                    with_key, order)
            if kind == "held":
                tspans = [s for s in tspans if s[0].startswith("gen:")]
            room = batch_size - len(spans)
            tspans = tspans[:room]
            generations += sum(1 for s in tspans if s[0].startswith("gen:"))
            spans.extend(tspans)
            tids.append(tid)
            if kind == "mixed":
                rec = _fetch_record(tid, app_span, t0 + 5_000_000, prompt)
                (after if rng.random() < late_share else before).append(rec)
        traces = bytes(_traces_request(instance, spans).SerializeToString())
        lb = _logs_request(instance, before)
        la = _logs_request(instance, after)
        times = [t for rec in before + after for t in (rec.time_unix_nano, rec.observed_time_unix_nano)]
        batches.append(Batch(traces, lb, la, len(spans), generations, _offsets(traces, tids),
                             _offsets(lb, tids), _offsets(la, tids), spans[0][1].trace_id,
                             _time_offsets(lb, times), _time_offsets(la, times)))
    return Workload(kind, batch_size, batches)


def _time_offsets(data: bytes, times: list[int]) -> list[int]:
    """Where the fetch records' fixed64 times sit in an encoded logs request."""
    out: list[int] = []
    for t in times:
        i = data.find(t.to_bytes(8, "little"))
        if i >= 0:
            out.append(i)
    return sorted(out)


def patch(data: bytes, offsets: list[int], stamp: bytes, time_offsets: list[int] | None = None,
          now_ns: int | None = None) -> bytes:
    """``data`` with the 4 bytes at every offset replaced by ``stamp`` (a new bytes object), and
    the fetch records' times (``time_offsets``) set to ``now_ns`` onwards, 1 µs apart, as an app
    emitting them now would (the relay's store sees them arrive in time order)."""
    if not offsets and not time_offsets:
        return data
    buf = bytearray(data)
    for off in offsets:
        buf[off:off + 4] = stamp
    if time_offsets:
        base = time.time_ns() if now_ns is None else now_ns
        for k, off in enumerate(time_offsets):
            buf[off:off + 8] = (base + k * 1000).to_bytes(8, "little")
    return bytes(buf)


if __name__ == "__main__":
    import json

    for k in ("mixed", "nokey", "held"):
        w = build(k, int(os.environ.get("BATCH", "512")), 2)
        print(json.dumps(w.describe()))
