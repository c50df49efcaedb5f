"""The processor's counters, unresolved reasons, observers and span-event fetch records (contract §2–§4)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

import promptstamp_contract as c
from promptstamp_relay.core import stamp
from promptstamp_relay.core.model import FetchRecord, GenerationRecord
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
    kvs,
    logs,
    sid,
    span,
    tid,
    traces,
)


class Recorder:
    def __init__(self) -> None:
        self.fetches: list[tuple[str, FetchRecord, int]] = []
        self.generations: list[tuple[GenerationRecord, int]] = []

    def on_fetch_records(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        self.fetches += [(tenant, r, now_ns) for r in records]

    def on_generations(self, records: Sequence[GenerationRecord], now_ns: int) -> None:
        self.generations += [(r, now_ns) for r in records]


def make(hold_s: float = 2.0, early_release: bool = True, **kw: Any) -> tuple[Processor, Recorder]:
    rec = Recorder()
    p = Processor(StampSettings(hold_ns=int(hold_s * S)), MemoryStore(), observers=[rec],
                  early_release=early_release, **kw)
    return p, rec


def with_fetch_event(s: Span, version: int | None = 3, *, source: str = "langfuse", time: int = T0,
                     label: str = "production", **extra: Any) -> Span:
    """``s`` carrying the SDK's ``app.prompt.fetch`` span event (contract §2)."""
    attrs: dict[str, Any] = {c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: label, c.FETCH_SOURCE: source,
                             **extra}
    if version is not None:
        attrs[c.PROMPT_VERSION] = version
    s.events.add(name=c.FETCH_EVENT_NAME, time_unix_nano=time, attributes=kvs(attrs))
    return s


def app_span(trace: int = 1, span_id: int = 99) -> Span:
    """The span active at fetch time: inside prompt(), so it carries the key, but no generation."""
    return span("handle", trace=trace, span_id=span_id, start=T0,
                attrs={c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"})


# -- counters and reasons ------------------------------------------------------------------------
def test_hold_overflow_counts_generations_stamped_at_once_because_the_window_was_full() -> None:
    p, _ = make(max_held_spans=2)
    out = p.consume_traces(traces([span(span_id=i, start=T0, attrs=gen_attrs()) for i in range(1, 6)]), T0)
    assert len(all_spans(out)) == 3 and len(p.hold) == 2
    assert p.stats.hold_overflow == 3
    assert p.stats.unresolved == {"no_fetch_record": 3}


def test_unresolved_reasons() -> None:
    p, rec = make(hold_s=0)
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    assert p.stats.unresolved == {"no_fetch_record": 1}
    p.consume_logs(logs([fetch_record(version=None, source="fallback", trace=2)]), T0)
    p.consume_traces(traces([span(trace=2, start=T0, attrs=gen_attrs())]), T0)  # fallback in its trace
    p.consume_traces(traces([span(trace=3, start=T0, attrs=gen_attrs())]), T0)  # fallback in its tenant
    assert p.stats.unresolved == {"no_fetch_record": 1, "fallback_only": 2}
    assert p.stats.fetch_fallbacks == 1 and p.stats.fetch_records == 0
    assert [g.reason for g, _ in rec.generations] == ["no_fetch_record", "fallback_only", "fallback_only"]
    other = p.consume_traces(traces([span(start=T0, attrs=gen_attrs(label="staging"))]), T0)
    assert attrs_of(all_spans(other)[0])[c.LF_META_RESOLUTION] == "unresolved"
    assert rec.generations[-1][0].reason == "no_fetch_record"  # another label: the fallback says nothing


def test_a_held_span_released_without_its_record_is_hold_expired() -> None:
    p, rec = make()
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    assert rec.generations == [] and p.stats.spans_held == 1  # held: not stamped yet
    p.release_due(T0 + 2 * S)
    assert p.stats.unresolved == {"hold_expired": 1} and p.stats.stamped == {"unresolved": 1}
    [(g, now)] = rec.generations
    assert (g.resolution, g.reason, g.version, now) == ("unresolved", "hold_expired", None, T0 + 2 * S)


# -- observers -------------------------------------------------------------------------------------
def test_observers_hear_every_fetch_record_and_every_generation_as_stamped() -> None:
    p, rec = make()
    p.consume_logs(logs([fetch_record(version=3, source="cache", error_type="TimeoutError"),
                         fetch_record(key="other", version=None, source="fallback")]), T0, tenant="t")
    assert [(t, r.key, r.version, r.service, n) for t, r, n in rec.fetches] == [
        ("t", "order-status-answer", 3, "agent", T0), ("t", "other", None, "agent", T0)]
    s = span(start=T0 + S, end=T0 + 3 * S, attrs=gen_attrs(**{"gen_ai.usage.input_tokens": 11,
                                                               "gen_ai.usage.completion_tokens": 7}))
    s.status.code = Status.STATUS_CODE_ERROR
    p.consume_traces(traces([s]), T0 + 3 * S, tenant="t")
    [(g, now)] = rec.generations
    assert now == T0 + 3 * S
    assert g == GenerationRecord(
        tenant="t", trace_id=tid(1), span_id=sid(1), span_name="chat gpt-4o", key="order-status-answer",
        label="production", prompt_name="order-status-answer", version=3, resolution="trace", source="cache",
        reason=None, instance="agent-1", service="agent", start_ns=T0 + S, end_ns=T0 + 3 * S, error=True,
        input_tokens=11, output_tokens=7)


def test_openinference_token_counts() -> None:
    p, rec = make(hold_s=0)
    attrs = gen_attrs(**{"llm.token_count.prompt": 5, "llm.token_count.completion": 2})
    p.consume_traces(traces([span(start=T0, attrs=attrs)]), T0)
    g = rec.generations[0][0]
    assert (g.input_tokens, g.output_tokens, g.error) == (5, 2, False)


def test_no_generation_records_are_built_without_an_observer(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_: object) -> GenerationRecord:
        raise AssertionError("built without an observer")

    monkeypatch.setattr(stamp, "generation_record", boom)
    monkeypatch.setattr("promptstamp_relay.core.pipeline.generation_record", boom)
    p = Processor(StampSettings(hold_ns=2 * S), MemoryStore())
    p.consume_logs(logs([fetch_record()]), T0)
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs()), span(trace=2, span_id=2, attrs=gen_attrs())]), T0)
    p.release_all()
    assert p.stats.stamped == {"trace": 1, "instance": 1}


# -- span-event fetch records ----------------------------------------------------------------------
def test_a_tracing_only_app_links_at_the_trace_tier_in_the_same_request() -> None:
    p, rec = make()
    out = p.consume_traces(traces([with_fetch_event(app_span()), span(start=T0 + S, attrs=gen_attrs())]), T0 + S)
    assert len(p.hold) == 0 and p.stats.fetch_records == 1
    app, gen = all_spans(out)
    assert c.LF_META_RESOLUTION not in attrs_of(app)  # the carrier is no generation: untouched
    assert len(app.events) == 1  # events stay on the span
    a = attrs_of(gen)
    assert (a[c.LF_META_RESOLUTION], a[c.LF_PROMPT_VERSION]) == ("trace", 3)
    [(tenant, r, _)] = rec.fetches
    assert (tenant, r.trace_id, r.span_id, r.instance, r.service, r.time_ns) == (
        "default", tid(1), sid(99), "agent-1", "agent", T0)


def test_span_events_release_held_spans_of_their_trace_in_live_mode() -> None:
    p, _ = make()
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    assert len(p.hold) == 1
    out = p.consume_traces(traces([with_fetch_event(app_span())]), T0 + 1)
    assert len(p.hold) == 0
    released, carrier = out  # released first, then the request itself
    assert attrs_of(all_spans([released])[0])[c.LF_PROMPT_VERSION] == 3
    assert all_spans([carrier])[0].name == "handle"


def test_span_events_in_replay_mode_wait_for_the_clock_then_resolve_by_trace() -> None:
    p, _ = make(early_release=False)
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    p.consume_traces(traces([with_fetch_event(app_span(), time=T0 + 1)]), T0 + 1)
    assert len(p.hold) == 1  # no early release in replay
    out = p.consume_traces(traces([span("later", trace=5, span_id=5, start=T0)]), T0 + 2 * S)
    released, later = out
    assert all_spans([later])[0].name == "later"
    assert attrs_of(all_spans([released])[0])[c.LF_META_RESOLUTION] == "trace"


def test_a_lines_span_events_are_taken_in_before_its_clock_releases_held_spans() -> None:
    p, _ = make(early_release=False)
    p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0)
    # The line whose clock passes the window carries the trace's fetch (contract §5: first).
    out = p.consume_traces(traces([with_fetch_event(app_span(), version=4, time=T0 + 1)]), T0 + 2 * S)
    released = [o for o in out if all_spans([o])[0].name != "handle"]
    a = attrs_of(all_spans(released)[0])
    assert (a[c.LF_META_RESOLUTION], a[c.LF_PROMPT_VERSION]) == ("trace", 4)


def test_log_record_and_span_event_of_one_fetch_count_once() -> None:
    p, rec = make()
    carrier = with_fetch_event(app_span(), time=T0)
    p.consume_logs(logs([fetch_record(version=3, time=T0)]), T0)  # the same fetch as a log record
    p.consume_traces(traces([carrier]), T0)
    assert (p.stats.fetch_records, p.stats.fetch_duplicates, len(p.store), len(rec.fetches)) == (1, 1, 1, 1)
    # Another fetch in the same span (another time): a record of its own.
    p.consume_traces(traces([with_fetch_event(app_span(), version=4, time=T0 + 5)]), T0 + 5)
    assert (p.stats.fetch_records, len(p.store)) == (2, 2)


def test_invalid_span_events_are_counted_with_a_reason_and_the_span_passes_unchanged() -> None:
    p, rec = make()
    bad = with_fetch_event(app_span(), version=None)  # source langfuse without a version
    ev = bad.events.add(name=c.FETCH_EVENT_NAME, time_unix_nano=T0)
    ev.attributes.extend(kvs({c.PROMPT_KEY: "k", c.PROMPT_LABEL: "l", c.FETCH_SOURCE: "langfuse",
                              c.PROMPT_VERSION: "3"}))
    before = bad.SerializeToString()
    out = p.consume_traces(traces([bad]), T0)
    assert p.stats.fetch_invalid == 2
    assert p.stats.fetch_invalid_reasons == {"missing_version": 1, "version_not_int": 1}
    assert any("must be an int" in why for why in out.invalid) and len(out.invalid) == 2
    assert rec.fetches == [] and len(p.store) == 0
    assert all_spans(out)[0].SerializeToString() == before


def test_fetch_attributes_without_the_event_are_no_fetch_record() -> None:
    p, _ = make()
    s = app_span()
    s.attributes.extend(kvs({c.FETCH_SOURCE: "langfuse"}))
    s.events.add(name="app.prompt.fetch.other", attributes=kvs({c.PROMPT_VERSION: 3}))
    p.consume_traces(traces([s]), T0)
    assert (p.stats.fetch_records, p.stats.fetch_invalid) == (0, 0)


def test_span_event_fallback_gives_fallback_only() -> None:
    p, rec = make(hold_s=0)
    p.consume_traces(traces([with_fetch_event(app_span(), version=None, source="fallback"),
                             span(start=T0, attrs=gen_attrs())]), T0)
    assert p.stats.fetch_fallbacks == 1 and p.stats.unresolved == {"fallback_only": 1}
    assert rec.fetches[0][1].version is None


def test_another_tenants_span_events_never_resolve() -> None:
    p, _ = make(hold_s=0)
    p.consume_traces(traces([with_fetch_event(app_span())]), T0, tenant="a")
    out = p.consume_traces(traces([span(start=T0, attrs=gen_attrs())]), T0, tenant="b")
    assert attrs_of(all_spans(out)[0])[c.LF_META_RESOLUTION] == "unresolved"
