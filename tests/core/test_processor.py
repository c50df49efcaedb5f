"""Contract §3–§4 on the pure processor: every rule and tier, no network, no clock."""

from __future__ import annotations

from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c
from promptstamp_contract.langfuse_typing import GenerationRules
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import (
    T0,
    S,
    all_spans,
    attrs_of,
    fetch_record,
    gen_attrs,
    logs,
    span,
    traces,
)

LINK_KEYS = {c.LF_PROMPT_NAME, c.LF_PROMPT_VERSION}


def make(hold_s: float = 2.0, **kw: object) -> Processor:
    settings = StampSettings(hold_ns=int(hold_s * S), **kw)  # type: ignore[arg-type]
    return Processor(settings, MemoryStore())


def one(reqs: list) -> Span:  # type: ignore[type-arg]
    spans = all_spans(reqs)
    assert len(spans) == 1, spans
    return spans[0]


def version_value(s: Span) -> str:
    """The OTLP oneof the version was written with: must always be int_value."""
    for kv in s.attributes:
        if kv.key == c.LF_PROMPT_VERSION:
            return str(kv.value.WhichOneof("value"))
    return "absent"


def test_trace_tier_at_arrival_is_stamped_at_once_with_an_int_version() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3, time=T0)]), T0)
    out = p.consume_traces(traces([span(start=T0 + S, attrs=gen_attrs())]), T0 + S)
    s = one(out)
    a = attrs_of(s)
    assert a[c.LF_PROMPT_NAME] == "order-status-answer"
    assert a[c.LF_PROMPT_VERSION] == 3 and version_value(s) == "int_value"
    assert a[c.LF_META_PROMPT_NAME] == "order-status-answer"
    assert a[c.LF_META_PROMPT_LABEL] == "production"
    assert a[c.LF_META_RESOLUTION] == "trace"
    assert a[c.LF_META_SOURCE] == "langfuse"
    assert a[c.LF_OBSERVATION_TYPE] == "generation"
    assert len(p.hold) == 0


def test_fetch_log_after_span_is_held_then_resolved_from_the_trace() -> None:
    p = make()
    p.early_release = False
    out = p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    assert out == [] and len(p.hold) == 1
    p.consume_logs(logs([fetch_record(version=7, time=T0 + S // 2)]), T0 + S // 2)
    assert p.release_due(T0 + S) == []  # window not over yet
    s = one(p.release_due(T0 + 2 * S))
    a = attrs_of(s)
    assert a[c.LF_PROMPT_VERSION] == 7
    assert a[c.LF_META_RESOLUTION] == "trace"  # the earliest record after the span's start


def test_early_release_when_the_trace_fetch_log_arrives() -> None:
    p = make()
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    result = p.consume_logs(logs([fetch_record(version=7, time=T0 + 1)]), T0 + 1)
    assert attrs_of(one(result.released))[c.LF_PROMPT_VERSION] == 7
    assert len(p.hold) == 0


def test_held_span_released_unresolved_carries_metadata_but_no_link_pair() -> None:
    p = make()
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    s = one(p.release_due(T0 + 2 * S))
    a = attrs_of(s)
    assert not LINK_KEYS & a.keys()
    assert a[c.LF_META_RESOLUTION] == "unresolved"
    assert a[c.LF_META_PROMPT_NAME] == "order-status-answer"
    assert a[c.LF_META_PROMPT_LABEL] == "production"
    assert c.LF_META_SOURCE not in a


def test_label_moved_between_two_fetches_in_one_trace() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=1, time=T0), fetch_record(version=2, time=T0 + 10 * S)]), T0)
    out = p.consume_traces(
        traces([
            span(span_id=1, start=T0 + S, attrs=gen_attrs()),
            span(span_id=2, start=T0 + 11 * S, attrs=gen_attrs()),
        ]),
        T0 + 12 * S,
    )
    v = [attrs_of(s)[c.LF_PROMPT_VERSION] for s in all_spans(out)]
    assert v == [1, 2]


def test_label_moved_across_traces_resolves_by_the_instance_and_latest_tiers() -> None:
    p = make(hold_s=0)
    p.consume_logs(logs([fetch_record(version=1, time=T0, trace=None)]), T0)
    p.consume_logs(logs([fetch_record(version=2, time=T0 + 10 * S, trace=None)]), T0 + 10 * S)
    out = p.consume_traces(
        traces([span(trace=5, span_id=1, start=T0 + 5 * S, attrs=gen_attrs()),
                span(trace=6, span_id=2, start=T0 + 15 * S, attrs=gen_attrs())]),
        T0 + 16 * S,
    )
    got = [(attrs_of(s)[c.LF_PROMPT_VERSION], attrs_of(s)[c.LF_META_RESOLUTION]) for s in all_spans(out)]
    assert got == [(1, "instance"), (2, "instance")]
    # Another instance of the same tenant: the latest tier answers.
    out = p.consume_traces(
        traces([span(trace=7, start=T0 + 15 * S, attrs=gen_attrs())],
               resource={c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-2"}),
        T0 + 16 * S,
    )
    a = attrs_of(one(out))
    assert (a[c.LF_PROMPT_VERSION], a[c.LF_META_RESOLUTION]) == (2, "latest")


def test_latest_tier_respects_the_staleness_bound() -> None:
    p = make(hold_s=0, staleness_ns=60 * S)
    p.consume_logs(logs([fetch_record(version=4, time=T0, trace=None)]), T0)
    other = {c.SERVICE_NAME: "other"}
    fresh = p.consume_traces(traces([span(trace=2, start=T0 + 30 * S, attrs=gen_attrs())], resource=other), T0)
    stale = p.consume_traces(traces([span(trace=3, start=T0 + 90 * S, attrs=gen_attrs())], resource=other), T0)
    assert attrs_of(one(fresh))[c.LF_META_RESOLUTION] == "latest"
    assert attrs_of(one(stale))[c.LF_META_RESOLUTION] == "unresolved"


def test_instance_falls_back_to_service_name() -> None:
    p = make(hold_s=0, staleness_ns=0)
    p.consume_logs(logs([fetch_record(version=4, time=T0, trace=None)], resource={c.SERVICE_NAME: "svc"}), T0)
    out = p.consume_traces(traces([span(start=T0 + S, attrs=gen_attrs())], resource={c.SERVICE_NAME: "svc"}), T0)
    assert attrs_of(one(out))[c.LF_META_RESOLUTION] == "instance"


def test_two_labels_in_one_trace() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(label="prod-a", version=1), fetch_record(label="prod-b", version=2)]), T0)
    out = p.consume_traces(
        traces([span(span_id=1, start=T0 + S, attrs=gen_attrs(label="prod-a")),
                span(span_id=2, start=T0 + S, attrs=gen_attrs(label="prod-b"))]),
        T0 + S,
    )
    got = [(attrs_of(s)[c.LF_META_PROMPT_LABEL], attrs_of(s)[c.LF_PROMPT_VERSION]) for s in all_spans(out)]
    assert got == [("prod-a", 1), ("prod-b", 2)]


def test_another_key_in_the_same_trace_does_not_resolve() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(key="refund-policy", version=9)]), T0)
    p.consume_traces(traces([span(start=T0 + S, attrs=gen_attrs())]), T0 + S)
    assert len(p.hold) == 1  # no trace-tier record for this key: held
    # The instance tier does not answer either: only refund-policy was fetched by agent-1.
    a = attrs_of(one(p.release_due(T0 + 3 * S)))
    assert a[c.LF_META_RESOLUTION] == "unresolved"


def test_span_already_linked_is_left_exactly_as_it_arrived() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    s = span(start=T0, attrs=gen_attrs(**{c.LF_PROMPT_NAME: "mine", c.LF_PROMPT_VERSION: 1}))
    before = s.SerializeToString()
    out = p.consume_traces(traces([s]), T0)
    assert one(out).SerializeToString() == before


def test_span_typed_span_is_not_a_generation() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    s = span(start=T0, attrs=gen_attrs(**{c.LF_OBSERVATION_TYPE: "span"}))
    before = s.SerializeToString()
    out = p.consume_traces(traces([s]), T0)
    assert one(out).SerializeToString() == before


def test_non_generation_spans_with_prompt_baggage_get_nothing() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    s = span("compose_answer", start=T0, attrs={c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"})
    before = s.SerializeToString()
    assert one(p.consume_traces(traces([s]), T0)).SerializeToString() == before


def test_generations_are_what_langfuse_types_generation() -> None:
    """Stamping follows detect.py's mirror of Langfuse's typing (the table itself is tested there)."""
    generations = [
        {c.GEN_AI_OPERATION_NAME: "chat"},
        {c.GEN_AI_REQUEST_MODEL: "m"},
        {c.GEN_AI_RESPONSE_MODEL: "m"},
        {c.LLM_MODEL_NAME: "m"},
        {c.OPENINFERENCE_SPAN_KIND: "LLM"},
        {c.LF_OBSERVATION_TYPE: "generation"},
    ]
    others = [
        {c.OPENINFERENCE_SPAN_KIND: "CHAIN"},
        {c.GEN_AI_OPERATION_NAME: "execute_tool", c.GEN_AI_REQUEST_MODEL: "m"},
        {c.GEN_AI_OPERATION_NAME: "invoke_agent", c.GEN_AI_REQUEST_MODEL: "m"},
        {c.GEN_AI_OPERATION_NAME: "embeddings", c.GEN_AI_REQUEST_MODEL: "m"},
        {c.GEN_AI_TOOL_NAME: "lookup"},
        {c.LLM_REQUEST_TYPE: "chat"},  # OpenLLMetry's older marker: Langfuse types it SPAN
    ]
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    base = {c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}
    for i, extra in enumerate(generations + others):
        s = span(span_id=i + 1, start=T0, attrs={**base, **extra})
        a = attrs_of(one(p.consume_traces(traces([s]), T0)))
        assert (a.get(c.LF_PROMPT_VERSION) == 3) == (extra in generations), extra
        if extra in others:
            assert c.LF_META_RESOLUTION not in a, extra


def test_configurable_generation_rules_only_add_spans_langfuse_types_span() -> None:
    p = make(rules=GenerationRules(present=frozenset({"my.llm"}), equals={}))
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    base = {c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}
    default_shape = span(span_id=1, start=T0, attrs=gen_attrs())
    custom = span(span_id=2, start=T0, attrs={**base, "my.llm": 1})
    tool = span(span_id=3, start=T0, attrs={**base, "my.llm": 1, c.GEN_AI_TOOL_NAME: "lookup"})
    out = all_spans(p.consume_traces(traces([default_shape, custom, tool]), T0))
    assert attrs_of(out[0])[c.LF_PROMPT_VERSION] == 3
    assert attrs_of(out[1])[c.LF_PROMPT_VERSION] == 3
    assert attrs_of(out[1])[c.LF_OBSERVATION_TYPE] == "generation"  # so Langfuse agrees
    assert c.LF_META_RESOLUTION not in attrs_of(out[2])


def test_observation_type_is_added_only_when_absent() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    s = span(start=T0, attrs=gen_attrs(**{c.LF_OBSERVATION_TYPE: "generation"}))
    out = one(p.consume_traces(traces([s]), T0))
    assert [kv.key for kv in out.attributes].count(c.LF_OBSERVATION_TYPE) == 1


def test_fallback_record_resolves_nothing() -> None:
    p = make(hold_s=0)
    result = p.consume_logs(logs([fetch_record(version=None, source="fallback")]), T0)
    assert result.invalid == [] and p.stats.fetch_fallbacks == 1
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)))
    assert a[c.LF_META_RESOLUTION] == "unresolved" and not LINK_KEYS & a.keys()


def test_cache_source_is_written_as_metadata() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=2, source="cache", error_type="TimeoutError")]), T0)
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)))
    assert a[c.LF_META_SOURCE] == "cache" and a[c.LF_PROMPT_VERSION] == 2


def test_invalid_fetch_records_are_rejected_with_a_reason() -> None:
    p = make()
    bad = [
        fetch_record(key=""),
        fetch_record(version=0),
        fetch_record(source="nope"),
        fetch_record(version=None),  # langfuse source without a version
    ]
    string_version = fetch_record()
    for kv in string_version.attributes:
        if kv.key == c.PROMPT_VERSION:
            kv.value.string_value = "3"
    result = p.consume_logs(logs([*bad, string_version]), T0)
    assert len(result.invalid) == 5
    assert any("must be an int" in why for why in result.invalid)
    assert len(p.store) == 0


def test_event_name_as_attribute_is_accepted_and_other_logs_pass_through() -> None:
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    p = make()
    other = LogRecord(time_unix_nano=T0)
    other.body.string_value = "hello"
    result = p.consume_logs(logs([fetch_record(as_attribute=True), other]), T0)
    assert len(p.store) == 1
    assert result.passthrough is not None
    recs = result.passthrough.resource_logs[0].scope_logs[0].log_records
    assert [r.body.string_value for r in recs] == ["hello"]
    only_fetch = p.consume_logs(logs([fetch_record()]), T0)
    assert only_fetch.passthrough is None


def test_unresolved_at_arrival_spans_are_taken_out_and_others_keep_their_order() -> None:
    p = make()
    spans = [
        span("a", span_id=1, start=T0),
        span("gen", span_id=2, start=T0, attrs=gen_attrs()),
        span("b", span_id=3, start=T0),
    ]
    out = p.consume_traces(traces(spans), T0)
    assert [s.name for s in all_spans(out)] == ["a", "b"]
    released = p.release_due(T0 + 2 * S)
    assert [s.name for s in all_spans(released)] == ["gen"]
    # The released span keeps its resource and scope.
    rs = released[0].request.resource_spans[0]
    assert rs.scope_spans[0].scope.name == "test"
    assert any(kv.key == c.SERVICE_INSTANCE_ID for kv in rs.resource.attributes)


def test_a_request_without_prompt_keys_is_unchanged() -> None:
    p = make()
    req = traces([span("a", attrs={c.GEN_AI_OPERATION_NAME: "chat"}), span("b", span_id=2)])
    before = req.SerializeToString()
    out = p.consume_traces(req, T0)
    assert len(out) == 1 and out[0].request.SerializeToString() == before


def test_full_hold_window_stamps_at_once_and_loses_nothing() -> None:
    p = Processor(StampSettings(hold_ns=2 * S), MemoryStore(), max_held_spans=2)
    out = p.consume_traces(traces([span(span_id=i, start=T0, attrs=gen_attrs()) for i in range(1, 6)]), T0)
    assert len(all_spans(out)) == 3 and len(p.hold) == 2
    assert len(all_spans(p.release_all())) == 2


def test_prompt_name_map() -> None:
    p = make(prompt_names={"order-status-answer": "support/order-status"})
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)))
    assert a[c.LF_PROMPT_NAME] == "support/order-status"
    assert a[c.LF_META_PROMPT_NAME] == "support/order-status"


def test_api_tier_is_off_by_default_and_answers_last_when_on() -> None:
    asked: list[tuple[str, str, str]] = []

    def api(tenant: str, name: str, label: str) -> int | None:
        asked.append((tenant, name, label))
        return 12

    p = Processor(StampSettings(hold_ns=0), MemoryStore(), api=api)
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)))
    assert (a[c.LF_META_RESOLUTION], a[c.LF_PROMPT_VERSION]) == ("api", 12)
    assert asked == [("default", "order-status-answer", "production")]
    off = make(hold_s=0)
    assert attrs_of(one(off.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)))[
        c.LF_META_RESOLUTION
    ] == "unresolved"


def test_one_tenant_never_resolves_another() -> None:
    p = make(hold_s=0)
    p.consume_logs(logs([fetch_record(version=3)]), T0, tenant="a")
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0, tenant="b")))
    assert a[c.LF_META_RESOLUTION] == "unresolved"
    a = attrs_of(one(p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0, tenant="a")))
    assert a[c.LF_META_RESOLUTION] == "trace"


def test_stamping_twice_equals_stamping_once() -> None:
    p = make(hold_s=0)
    once = p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    before = once[0].request.SerializeToString()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    twice = p.consume_traces(once[0].request, T0)
    assert twice[0].request.SerializeToString() == before


def test_ids_names_times_events_and_links_are_never_changed() -> None:
    p = make()
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    s = span(start=T0, attrs=gen_attrs())
    s.parent_span_id = b"\x01" * 8
    s.events.add(name="ev", time_unix_nano=T0)
    s.links.add(trace_id=b"\x02" * 16, span_id=b"\x03" * 8)
    s.kind = Span.SPAN_KIND_CLIENT
    original = Span()
    original.CopyFrom(s)
    out = one(p.consume_traces(traces([s]), T0))
    n = len(original.attributes)
    assert list(out.attributes)[:n] == list(original.attributes)
    del out.attributes[n:]
    assert out == original
