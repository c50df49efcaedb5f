"""Hypothesis properties of the pure processor (decode → stamp → encode) and of the decoder.

- every span conserved: each span in comes out exactly once, with its ids, name, times, events,
  links, resource and scope unchanged, and its own attributes first, unchanged;
- only the contract §3 attributes are ever added, the link pair only together, and only to
  generation spans that carry a prompt key and are not linked yet;
- stamping twice equals stamping once;
- a tenant without fetch records of its own never gets a link from another tenant's;
- the decoder with limits is never looser than the exact all-Python check.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c
from promptstamp_contract.langfuse_typing import GenerationRules, is_generation
from promptstamp_relay.admission.decode import Violation, check_request, decode_traces
from promptstamp_relay.config import LimitsConfig
from promptstamp_relay.core.pipeline import Outgoing, Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import T0, S, fetch_record, kvs, logs, sid, tid

ADDED = frozenset({c.LF_META_PROMPT_NAME, c.LF_META_PROMPT_LABEL, c.LF_META_RESOLUTION, c.LF_META_SOURCE,
                   c.LF_PROMPT_NAME, c.LF_PROMPT_VERSION, c.LF_OBSERVATION_TYPE})
KEYS = ["order-status-answer", "refund-policy", ""]  # "" is not a prompt key
LABELS = ["production", "staging"]
INSTANCES = ["agent-1", "agent-2"]
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------
text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)  # no surrogates


def any_values(depth: int = 3) -> st.SearchStrategy[AnyValue]:
    scalars = st.one_of(
        text.map(lambda s: AnyValue(string_value=s)),
        st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
        st.booleans().map(lambda b: AnyValue(bool_value=b)),
        st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
        st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
        st.just(AnyValue()),
    )
    if depth <= 1:
        return scalars
    inner = any_values(depth - 1)
    return st.one_of(
        scalars,
        st.lists(inner, max_size=3).map(lambda vs: AnyValue(array_value=ArrayValue(values=vs))),
        st.lists(st.tuples(text, inner), max_size=3).map(
            lambda kv: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key=k, value=v) for k, v in kv]))),
    )


@st.composite
def attributes(draw: st.DrawFn) -> list[KeyValue]:
    out: list[KeyValue] = []
    if draw(st.integers(0, 3)) > 0:
        out.append(KeyValue(key=c.PROMPT_KEY, value=AnyValue(string_value=draw(st.sampled_from(KEYS)))))
    if draw(st.integers(0, 3)) > 0:
        out.append(KeyValue(key=c.PROMPT_LABEL, value=AnyValue(string_value=draw(st.sampled_from(LABELS)))))
    for marker, values, odds in ((c.GEN_AI_OPERATION_NAME, ["chat"], 2), (c.OPENINFERENCE_SPAN_KIND, ["LLM", "TOOL"], 4),
                                 (c.LF_OBSERVATION_TYPE, ["generation", "span"], 4), (c.LF_PROMPT_NAME, ["linked"], 6),
                                 (c.LF_META_RESOLUTION, ["trace"], 6)):
        if draw(st.integers(1, odds)) == 1:
            out.append(KeyValue(key=marker, value=AnyValue(string_value=draw(st.sampled_from(values)))))
    out.extend(KeyValue(key=k, value=v) for k, v in draw(st.lists(st.tuples(text, any_values()), max_size=4)))
    return draw(st.permutations(out))


@st.composite
def spans(draw: st.DrawFn, span_id: int) -> Span:
    s = Span(trace_id=tid(draw(st.integers(1, 4))), span_id=sid(span_id), name=draw(text),
             start_time_unix_nano=T0 + draw(st.integers(-5, 5)) * S)
    s.end_time_unix_nano = s.start_time_unix_nano + S
    s.attributes.extend(draw(attributes()))
    if draw(st.integers(0, 4)) == 0:
        ev = s.events.add()
        ev.name = draw(text)
        ev.attributes.extend(kvs({"k": draw(text)}))
    if draw(st.integers(0, 4)) == 0:
        ln = s.links.add()
        ln.trace_id, ln.span_id = tid(99), sid(99)
    return s


@st.composite
def trace_requests(draw: st.DrawFn, first_span_id: int = 1) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    n = first_span_id
    for _ in range(draw(st.integers(1, 2))):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(kvs({c.SERVICE_NAME: "agent",
                                           c.SERVICE_INSTANCE_ID: draw(st.sampled_from(INSTANCES))}))
        for _ in range(draw(st.integers(1, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(text)
            for _ in range(draw(st.integers(0, 4))):
                ss.spans.append(draw(spans(n)))
                n += 1
    return req


fetch_logs = st.lists(
    st.builds(
        lambda key, label, version, trace, dt, source: fetch_record(
            key, label, version, trace=trace, time=T0 + dt * S, source=source),
        st.sampled_from(KEYS[:2]), st.sampled_from(LABELS), st.integers(1, 9),
        st.one_of(st.none(), st.integers(1, 4)), st.integers(-6, 6),
        st.sampled_from(["langfuse", "cache"]),
    ),
    max_size=6,
).map(lambda records: logs(records, resource={c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-1"}))


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
@dataclass
class Placed:
    span: Span
    resource: bytes
    scope: bytes


def flatten(requests: Sequence[ExportTraceServiceRequest | Outgoing]) -> dict[bytes, list[Placed]]:
    out: dict[bytes, list[Placed]] = {}
    for r in requests:
        req = r.request if isinstance(r, Outgoing) else r
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.setdefault(bytes(s.span_id), []).append(
                        Placed(s, rs.resource.SerializeToString(deterministic=True),
                               ss.scope.SerializeToString(deterministic=True)))
    return out


def renumber(reqs: Sequence[ExportTraceServiceRequest]) -> None:
    """Span ids unique across ``reqs``."""
    n = 1
    for r in reqs:
        for rs in r.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    s.span_id = sid(n)
                    n += 1


def without_attributes(s: Span) -> Span:
    copy = Span()
    copy.CopyFrom(s)
    del copy.attributes[:]
    return copy


def run(requests: Sequence[ExportTraceServiceRequest], log_requests: Sequence[ExportLogsServiceRequest],
        hold_s: float, tenant: str = "t") -> list[Outgoing]:
    p = Processor(StampSettings(hold_ns=int(hold_s * S)), MemoryStore())
    for lr in log_requests:
        copy = ExportLogsServiceRequest()
        copy.CopyFrom(lr)
        p.consume_logs(copy, T0, tenant)
    out: list[Outgoing] = []
    for i, r in enumerate(requests):
        copy = ExportTraceServiceRequest()
        copy.CopyFrom(r)
        out += p.consume_traces(copy, T0 + i * S // 10, tenant)
    return out + p.release_all()


def attr_map(s: Span) -> dict[str, Any]:
    return {kv.key: kv.value for kv in s.attributes}


# --------------------------------------------------------------------------------------------
# Properties of the processor
# --------------------------------------------------------------------------------------------
@PROPS
@given(reqs=st.lists(trace_requests(), min_size=1, max_size=3), fetched=fetch_logs, hold_s=st.sampled_from([0, 2]))
def test_conserved_append_only_allowed_attributes_generations_only(
    reqs: list[ExportTraceServiceRequest], fetched: ExportLogsServiceRequest, hold_s: float
) -> None:
    renumber(reqs)
    before = flatten(reqs)
    out = run(reqs, [fetched], hold_s)
    after = flatten(out)
    assert set(after) == set(before)
    rules = GenerationRules()
    for span_id, [orig] in before.items():
        assert len(after[span_id]) == 1, "a span duplicated"
        got = after[span_id][0]
        assert without_attributes(got.span) == without_attributes(orig.span)
        assert (got.resource, got.scope) == (orig.resource, orig.scope)
        k = len(orig.span.attributes)
        assert list(got.span.attributes)[:k] == list(orig.span.attributes)
        added = list(got.span.attributes)[k:]
        added_keys = [kv.key for kv in added]
        assert set(added_keys) <= ADDED and len(set(added_keys)) == len(added_keys)
        a = attr_map(orig.span)
        found = {key: (v.string_value if v.WhichOneof("value") == "string_value" else v) for key, v in a.items()}
        key = found.get(c.PROMPT_KEY)
        should = (isinstance(key, str) and bool(key) and c.LF_PROMPT_NAME not in a
                  and c.LF_META_RESOLUTION not in a and is_generation(found, rules))
        assert bool(added) == should
        if added:
            new = {kv.key: kv.value for kv in added}
            event(f"stamped: {new[c.LF_META_RESOLUTION].string_value}")
            assert (c.LF_PROMPT_NAME in new) == (c.LF_PROMPT_VERSION in new)
            if c.LF_PROMPT_VERSION in new:
                assert new[c.LF_PROMPT_VERSION].WhichOneof("value") == "int_value"
                assert new[c.LF_PROMPT_VERSION].int_value > 0
            assert (c.LF_OBSERVATION_TYPE in new) == (c.LF_OBSERVATION_TYPE not in a)


@PROPS
@given(reqs=st.lists(trace_requests(), min_size=1, max_size=2), fetched=fetch_logs, hold_s=st.sampled_from([0, 2]))
def test_stamping_twice_equals_stamping_once(
    reqs: list[ExportTraceServiceRequest], fetched: ExportLogsServiceRequest, hold_s: float
) -> None:
    renumber(reqs)
    once = run(reqs, [fetched], hold_s)
    again = run([o.request for o in once], [fetched], hold_s)
    first = {k: v[0].span.SerializeToString(deterministic=True) for k, v in flatten(once).items()}
    second = {k: v[0].span.SerializeToString(deterministic=True) for k, v in flatten(again).items()}
    assert first == second


@PROPS
@given(reqs=st.lists(trace_requests(), min_size=1, max_size=2), fetched=fetch_logs, hold_s=st.sampled_from([0, 2]))
def test_another_tenants_fetch_log_never_links_a_span(
    reqs: list[ExportTraceServiceRequest], fetched: ExportLogsServiceRequest, hold_s: float
) -> None:
    renumber(reqs)
    before = flatten(reqs)
    p = Processor(StampSettings(hold_ns=int(hold_s * S)), MemoryStore())
    p.consume_logs(fetched, T0, "a")
    out: list[Outgoing] = []
    for r in reqs:
        copy = ExportTraceServiceRequest()
        copy.CopyFrom(r)
        out += p.consume_traces(copy, T0, "b")
    out += p.release_all()
    assert {o.tenant for o in out} <= {"b"}
    for span_id, placed in flatten(out).items():
        added = {kv.key: kv.value for kv in list(placed[0].span.attributes)[len(before[span_id][0].span.attributes):]}
        assert c.LF_PROMPT_NAME not in added and c.LF_PROMPT_VERSION not in added
        if added:
            assert added[c.LF_META_RESOLUTION].string_value == "unresolved"
    assert sum(p.stats.stamped[t] for t in ("trace", "instance", "latest", "api")) == 0


# --------------------------------------------------------------------------------------------
# Fetch records as span events (contract §2), and what observers are told
# --------------------------------------------------------------------------------------------
class Recorder:
    def __init__(self) -> None:
        self.fetches: list[Any] = []
        self.generations: list[Any] = []

    def on_fetch_records(self, tenant: str, records: Sequence[Any], now_ns: int) -> None:
        self.fetches += records

    def on_generations(self, records: Sequence[Any], now_ns: int) -> None:
        self.generations += records


def carriers(fetched: ExportLogsServiceRequest, with_events: bool) -> ExportTraceServiceRequest:
    """One span per fetch record of a trace, in that trace, on the fetching instance: carrying
    the record as an ``app.prompt.fetch`` span event, or not."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.CopyFrom(fetched.resource_logs[0].resource)
    ss = rs.scope_spans.add()
    for rec in fetched.resource_logs[0].scope_logs[0].log_records:
        s = ss.spans.add(trace_id=rec.trace_id, span_id=rec.span_id, name="carrier",
                         start_time_unix_nano=rec.time_unix_nano, end_time_unix_nano=rec.time_unix_nano + 1)
        if with_events:
            s.events.add(name=c.FETCH_EVENT_NAME, time_unix_nano=rec.time_unix_nano, attributes=rec.attributes)
    return req


def only_traced(fetched: ExportLogsServiceRequest) -> ExportLogsServiceRequest:
    """The records made while a span was active, each in a span of its own (its carrier)."""
    out = ExportLogsServiceRequest()
    out.CopyFrom(fetched)
    recs = out.resource_logs[0].scope_logs[0].log_records
    keep = [r for r in recs if r.trace_id]
    for n, r in enumerate(keep):
        r.span_id = sid(10_000 + n)
    del recs[:]
    recs.extend(keep)
    return out


def stamped_spans(out: Sequence[Outgoing]) -> dict[bytes, bytes]:
    return {k: v[0].span.SerializeToString(deterministic=True) for k, v in flatten(out).items()
            if v[0].span.name != "carrier"}


@PROPS
@given(reqs=st.lists(trace_requests(), min_size=1, max_size=2), fetched=fetch_logs, hold_s=st.sampled_from([0, 2]),
       both=st.booleans())
def test_span_events_resolve_like_the_same_records_sent_as_logs_and_count_once(
    reqs: list[ExportTraceServiceRequest], fetched: ExportLogsServiceRequest, hold_s: float, both: bool
) -> None:
    renumber(reqs)
    fetched = only_traced(fetched)  # a fetch with no active span has no span event
    as_logs = run([carriers(fetched, False), *reqs], [fetched], hold_s)
    p = Processor(StampSettings(hold_ns=int(hold_s * S)), MemoryStore())
    if both:  # the log record too: the same fetches, counted once
        copy = ExportLogsServiceRequest()
        copy.CopyFrom(fetched)
        p.consume_logs(copy, T0, "t")
    as_events: list[Outgoing] = []
    for i, r in enumerate([carriers(fetched, True), *reqs]):
        copy = ExportTraceServiceRequest()
        copy.CopyFrom(r)
        as_events += p.consume_traces(copy, T0 + i * S // 10, "t")
    as_events += p.release_all()
    assert stamped_spans(as_events) == stamped_spans(as_logs)
    fetches = len(fetched.resource_logs[0].scope_logs[0].log_records)
    assert p.stats.fetch_records == len(p.store) == fetches  # each fetch once, in either or both forms
    assert p.stats.fetch_duplicates == (fetches if both else 0)


@PROPS
@given(reqs=st.lists(trace_requests(), min_size=1, max_size=3), fetched=fetch_logs, hold_s=st.sampled_from([0, 2]))
def test_observers_are_told_every_stamp_as_written(
    reqs: list[ExportTraceServiceRequest], fetched: ExportLogsServiceRequest, hold_s: float
) -> None:
    renumber(reqs)
    rec = Recorder()
    p = Processor(StampSettings(hold_ns=int(hold_s * S)), MemoryStore(), observers=[rec])
    copy = ExportLogsServiceRequest()
    copy.CopyFrom(fetched)
    p.consume_logs(copy, T0, "t")
    out: list[Outgoing] = []
    for i, r in enumerate(reqs):
        copy_t = ExportTraceServiceRequest()
        copy_t.CopyFrom(r)
        out += p.consume_traces(copy_t, T0 + i * S // 10, "t")
    out += p.release_all()
    records = fetched.resource_logs[0].scope_logs[0].log_records
    assert len(rec.fetches) == p.stats.fetch_records == len(records) - p.stats.fetch_duplicates
    # Only records of a trace identical in every field of a fetch's identity count once.
    traced = [r.SerializeToString(deterministic=True) for r in records if r.trace_id]
    assert p.stats.fetch_duplicates == len(traced) - len(set(traced))
    by_span = {g.span_id: g for g in rec.generations}
    assert len(by_span) == len(rec.generations) == sum(p.stats.stamped.values())
    assert sum(p.stats.unresolved.values()) == p.stats.stamped["unresolved"]
    for span_id, [placed] in flatten(out).items():
        a = attr_map(placed.span)
        if c.LF_META_RESOLUTION not in a or span_id not in by_span:
            continue
        g = by_span[span_id]
        assert g.resolution == a[c.LF_META_RESOLUTION].string_value
        assert g.version == (a[c.LF_PROMPT_VERSION].int_value if c.LF_PROMPT_VERSION in a else None)
        assert (g.reason is None) == (g.version is not None)
        assert g.label == a[c.LF_META_PROMPT_LABEL].string_value
    stamped_now = {k for k, [pl] in flatten(out).items() if c.LF_META_RESOLUTION in attr_map(pl.span)}
    assert set(by_span) <= stamped_now


# --------------------------------------------------------------------------------------------
# The decoder with limits is never looser than the exact check
# --------------------------------------------------------------------------------------------
SMALL = LimitsConfig(max_spans_per_request=6, max_attributes_per_span=5, max_attribute_value_bytes=8,
                     max_value_depth=3)


@PROPS
@given(req=trace_requests())
def test_the_decoder_agrees_with_the_exact_walk(req: ExportTraceServiceRequest) -> None:
    data = req.SerializeToString()
    exact = check_request(req, SMALL, encoded_size=len(data))
    try:
        decoded = decode_traces(data, SMALL)
    except Violation as v:
        if exact is not None:
            assert v.kind == exact.kind or "nested" in v.message or "nested" in exact.message
        return
    assert exact is None, exact  # accepted by the decoder: accepted by the exact walk
    assert decoded == req
