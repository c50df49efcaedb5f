"""The rollouts observer groups a request's records before it touches the timelines and the
series. Grouping must not change what it records: a request's records given at once end in the
same timelines and metrics as the same records given one per call, in the same order (the
original per-record definition). Bounds are left wide here: under bound pressure, which entry is
evicted first may depend on the order groups are applied in.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.metrics_core import Metric

from promptstamp_relay.config import load_config
from promptstamp_relay.core.model import FetchRecord, GenerationRecord
from promptstamp_relay.rollouts._model import dump_timeline
from promptstamp_relay.rollouts._observer import RolloutObserver

T0 = 1_764_000_000_000_000_000
MS = 1_000_000

fetches = st.builds(
    lambda key, label, version, t, inst, svc: FetchRecord(
        key, label, version, "langfuse", T0 + t * MS, b"\x01" * 16, b"\x02" * 8, inst, None, svc),
    st.sampled_from(["answer", "triage"]), st.sampled_from(["production", "prod-a"]),
    st.one_of(st.none(), st.integers(1, 4)), st.integers(0, 50),
    st.sampled_from(["", "pod-1", "pod-2"]), st.sampled_from(["", "agent", "other-agent"]))

generations = st.builds(
    lambda tenant, prompt, label, version, start, dur, err, tin, tout: GenerationRecord(
        tenant, b"\x01" * 16, b"\x02" * 8, "chat", prompt, label, prompt, version,
        "trace" if version else "unresolved", "langfuse" if version else None,
        None if version else "no_fetch_record", "pod-1", "agent", T0 + start * MS,
        T0 + start * MS + dur, err, tin, tout),
    st.sampled_from(["default", "team-b"]), st.sampled_from(["answer", "triage"]),
    st.sampled_from(["production", "prod-a"]), st.one_of(st.none(), st.integers(1, 4)),
    st.integers(0, 50), st.integers(-5 * MS, 300_000 * MS), st.booleans(),
    st.one_of(st.none(), st.integers(0, 500)), st.one_of(st.none(), st.integers(0, 500)))

requests = st.lists(st.tuples(st.lists(fetches, max_size=12), st.lists(generations, max_size=12)),
                    min_size=1, max_size=5)


def _observer(shared: bool) -> RolloutObserver:
    cfg = load_config(None, env={}, overrides={"prompt_names": {"triage": "ticket-triage"}})
    return RolloutObserver(cfg.rollouts, cfg.prompt_names, shared=shared)


def _samples(families: list[Metric]) -> dict[tuple[Any, ...], float]:
    out: dict[tuple[Any, ...], float] = {}
    for fam in families:
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _state(o: RolloutObserver) -> tuple[Any, ...]:
    def dumped(tls: Any) -> dict[Any, Any]:  # entry order within a timeline is not part of it
        return {k: {f: sorted(v) if isinstance(v, list) else v for f, v in dump_timeline(tl).items()}
                for k, tl in tls.items()}
    samples = _samples(list(o.metrics.families()))
    seconds = {k: round(v, 6) for k, v in samples.items() if k[0].endswith("_sum")}  # float sums
    counts = {k: v for k, v in samples.items() if not k[0].endswith("_sum")}
    return dumped(o.timelines), dumped(o.pending or {}), counts, seconds, o.stats


@settings(max_examples=150, deadline=None)
@given(requests, st.booleans())
def test_a_request_at_once_is_its_records_one_by_one(reqs: list[Any], shared: bool) -> None:
    grouped, single = _observer(shared), _observer(shared)
    for i, (fs, gs) in enumerate(reqs):
        tenant = "default" if i % 2 else "team-b"
        grouped.on_fetch_records(tenant, fs, T0)
        grouped.on_generations(gs, T0)
        for f in fs:
            single.on_fetch_records(tenant, [f], T0)
        for g in gs:
            single.on_generations([g], T0)
    assert _state(grouped) == _state(single)


def test_a_label_move_inside_one_request_is_dated_as_record_by_record() -> None:
    """One instance, one label, v1 then v2 then v1 again in one request: both switches dated."""
    o = _observer(shared=False)
    rec = [FetchRecord("answer", "production", v, "langfuse", T0 + t * MS, b"", b"", "pod-1")
           for v, t in ((1, 0), (2, 10), (2, 5), (1, 20))]
    o.on_fetch_records("default", rec, T0)
    tl = o.timelines[("default", "answer", "production")]
    assert tl.latest["pod-1"] == (1, T0 + 20 * MS)
    assert tl.served[("pod-1", 2)].since_ns == T0 + 10 * MS
    assert tl.served[("pod-1", 1)].since_ns == T0 + 20 * MS
    assert (tl.served[("pod-1", 1)].fetches, tl.served[("pod-1", 2)].fetches) == (2, 2)
