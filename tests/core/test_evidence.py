"""No guessing over evidence, and saying so when evidence comes late (the processor, pure).

* A prompt whose records arrive on fetch spans (``promptstamp.fetch``) has its trace's record on
  its way whenever a generation arrives without one: the lower tiers (guesses from other
  traces) are not asked; it stays unresolved with its reason rather than being linked to
  another trace's version. The same generation from an app whose records come as events on a
  long request span (older SDKs) still gets the ``instance`` guess.
* A trace's record arriving after its generation was sent without it is compared with what was
  written: agreed, disagreed (a wrong link, counted and reported), or was_unresolved.
* A generation that arrived already linked is kept as it came; a trace record naming another
  version is counted and reported as a conflict.
* A fetch record the relay cannot use is reported with the sending service.
"""

from __future__ import annotations

from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import T0, S, attrs_of, fetch_record, fetch_span, gen_attrs, logs, span, traces

HOLD = 2 * S


def processor() -> Processor:
    return Processor(StampSettings(hold_ns=HOLD), MemoryStore())


def stamped(p: Processor, out: list[object]) -> list[dict[str, object]]:
    found = []
    for o in out:
        for rs in o.request.resource_spans:  # type: ignore[attr-defined]
            for ss in rs.scope_spans:
                found += [attrs_of(sp) for sp in ss.spans if sp.name == "chat gpt-4o"]
    return found


def test_a_label_move_is_never_guessed_across_traces_for_fetch_span_apps() -> None:
    """Request 1 was handed v1 (its fetch span arrived); request 2, after the label moved, was
    handed v2, but its generation arrives first and its record only after the hold window. The
    old answer was ``instance`` → v1: a wrong link. Now: unresolved (hold_expired), then the late
    record is reported as such."""
    p = processor()
    p.consume_traces(traces([fetch_span(version=1, trace=1, time=T0)]), T0)
    gen = span(trace=2, span_id=2, start=T0 + 3 * S, attrs=gen_attrs())
    assert p.consume_traces(traces([gen]), T0 + 3 * S) == []  # held
    released = p.release_due(T0 + 3 * S + HOLD)
    [attrs] = stamped(p, released)
    assert attrs["langfuse.observation.metadata.prompt_resolution"] == "unresolved"
    assert "langfuse.observation.prompt.version" not in attrs
    assert p.stats.unresolved["hold_expired"] == 1
    out = p.consume_traces(traces([fetch_span(version=2, trace=2, time=T0 + 2 * S)]), T0 + 6 * S)
    [late] = out.notices.late
    assert (late.verdict, late.record_version, late.written_version) == ("was_unresolved", 2, None)
    assert late.late_ns == 6 * S - (3 * S + HOLD)
    assert p.stats.late_records["was_unresolved"] == 1


def test_an_older_sdks_record_on_the_request_span_still_lets_the_instance_tier_answer() -> None:
    """Records that come as events on a request span (not a fetch span) give no such promise:
    the ``instance`` tier answers, and when the trace's own record then disagrees, it is said."""
    p = processor()
    p.consume_traces(traces([fetch_span(version=1, trace=1, time=T0, name="handle_request")]), T0)
    gen = span(trace=2, span_id=2, start=T0 + 3 * S, attrs=gen_attrs())
    p.consume_traces(traces([gen]), T0 + 3 * S)
    [attrs] = stamped(p, p.release_due(T0 + 3 * S + HOLD))
    assert attrs["langfuse.observation.metadata.prompt_resolution"] == "instance"
    assert attrs["langfuse.observation.prompt.version"] == 1
    out = p.consume_traces(traces([fetch_span(version=2, trace=2, time=T0 + 2 * S, name="handle_request")]),
                           T0 + 9 * S)
    [late] = out.notices.late
    assert (late.verdict, late.written_tier, late.written_version, late.record_version) == (
        "disagreed", "instance", 1, 2)
    assert late.trace_id.hex().endswith("02") and late.late_ns == 4 * S
    assert p.stats.late_records == {"disagreed": 1}


def test_a_late_record_that_agrees_is_counted_not_reported_as_wrong() -> None:
    p = processor()
    p.consume_logs(logs([fetch_record(version=1, trace=1, time=T0)]), T0)
    p.consume_traces(traces([span(trace=2, span_id=2, start=T0 + S, attrs=gen_attrs())]), T0 + S)
    p.release_due(T0 + S + HOLD)
    out = p.consume_logs(logs([fetch_record(version=1, trace=2, time=T0 + S)]), T0 + 5 * S)
    assert [x.verdict for x in out.notices.late] == ["agreed"]


def test_without_a_hold_window_a_fetch_span_apps_generation_is_not_guessed() -> None:
    p = Processor(StampSettings(hold_ns=0), MemoryStore())
    p.consume_traces(traces([fetch_span(version=1, trace=1, time=T0)]), T0)
    out = p.consume_traces(traces([span(trace=2, span_id=2, start=T0 + S, attrs=gen_attrs())]), T0 + S)
    [attrs] = stamped(p, out)
    assert attrs["langfuse.observation.metadata.prompt_resolution"] == "unresolved"
    assert p.stats.unresolved["trace_record_missing"] == 1


def test_the_trace_tier_still_answers_at_once_from_a_fetch_span() -> None:
    p = processor()
    req = traces([fetch_span(version=2, trace=3, time=T0), span(trace=3, span_id=3, start=T0 + S,
                                                                attrs=gen_attrs())])
    [attrs] = stamped(p, p.consume_traces(req, T0 + S))
    assert (attrs["langfuse.observation.metadata.prompt_resolution"], attrs["langfuse.observation.prompt.version"]) \
        == ("trace", 2)


def test_an_already_linked_generation_that_disagrees_with_its_trace_is_a_conflict() -> None:
    p = processor()
    p.consume_traces(traces([fetch_span(version=3, trace=1, time=T0)]), T0)
    linked = span(trace=1, span_id=5, start=T0 + S, attrs=gen_attrs(**{
        "langfuse.observation.prompt.name": "order-status-answer", "langfuse.observation.prompt.version": 9}))
    agreeing = span(trace=1, span_id=6, start=T0 + S, attrs=gen_attrs(**{
        "langfuse.observation.prompt.name": "order-status-answer", "langfuse.observation.prompt.version": 3}))
    out = p.consume_traces(traces([linked, agreeing]), T0 + S)
    [conflict] = out.notices.conflicts
    assert (conflict.linked_version, conflict.evidence_version, conflict.span_id.hex()[-2:]) == (9, 3, "05")
    assert p.stats.prompt_conflicts == 1
    sent = stamped(p, out)
    assert all("langfuse.observation.metadata.prompt_resolution" not in a for a in sent)  # kept as they came


def test_unusable_fetch_records_name_the_sending_service() -> None:
    p = processor()
    bad = [fetch_record(version=0), fetch_record(version=None),
           fetch_record(version=2, source="fallback"), fetch_record(key="")]
    out = p.consume_logs(logs(bad, resource={"service.name": "checkout-agent"}), T0)
    assert [(v.code, v.service) for v in out.notices.invalid] == [
        ("version_not_positive", "checkout-agent"), ("missing_version", "checkout-agent"),
        ("fallback_with_version", "checkout-agent"), ("missing_key", "checkout-agent")]
    ev = fetch_span(version=None, trace=4)
    out2 = p.consume_traces(traces([ev], resource={"service.name": "node-agent"}), T0)
    assert [(v.code, v.service) for v in out2.notices.invalid] == [("missing_version", "node-agent")]
