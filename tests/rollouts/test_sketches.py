"""The per-version sketches a rollout controller judges: durations and input/output tokens per
generation, filled from the spans, merged, stored and loaded (also the form of the release before
the token sketches), served with ``sketches=1``, and subtracted between two snapshots by
``window()``."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from typing import Any

import pytest

import promptstamp_contract as c
from promptstamp_relay.rollouts._model import (
    _EDGES_NS,
    _TOKEN_EDGES,
    SKETCHES,
    GenerationBatch,
    Timeline,
    VersionStats,
    dump_timeline,
    duration_bucket,
    duration_bucket_value_ms,
    load_timeline,
    merge,
    prune,
    token_bucket,
    token_bucket_value,
    window,
)
from promptstamp_relay.rollouts._redis import _ops, parse_hash
from tests.otlp_builders import T0, S, gen_attrs, span, traces
from tests.rollouts.conftest import PROMPT, pod
from tests.rollouts.test_timeline import Cluster, rollout

MS = 10**6
_span_ids = itertools.count(10_000)


def generate(cluster: Cluster, instance: str, at: int, duration_ms: int, **tokens: Any) -> None:
    """One generation in the trace of the instance's latest fetch, with these token attributes
    (none at all when none are given)."""
    sp = span(trace=cluster._trace, span_id=next(_span_ids), start=at,
              end=at + duration_ms * MS, attrs=gen_attrs(PROMPT, "production", **tokens))
    cluster.now = max(cluster.now, at + duration_ms * MS)
    cluster.processor.consume_traces(traces([sp], resource=pod(instance)), cluster.now)


def sketches_of(cluster: Cluster, version: int) -> dict[str, dict[str, int]]:
    body, _ = cluster.rollouts.render("default", PROMPT, "production", sketches=True)
    assert body is not None
    entry = next(v for v in body["labels"]["production"]["versions"] if v["version"] == version)
    got: dict[str, dict[str, int]] = entry["sketches"]
    return got


def sketch(*pairs: tuple[int, int]) -> dict[str, int]:
    """``(bucket, n)`` pairs as served: string keys in bucket order."""
    return {str(b): n for b, n in sorted(pairs)}


# -- the bucket functions ---------------------------------------------------------------------------
def test_token_buckets_keep_small_counts_exact_and_large_ones_within_a_bucket() -> None:
    assert token_bucket(0) == -1 and token_bucket_value(-1) == 0.0
    assert token_bucket(-5) == -1  # a negative count (no instrumentation sends one) counts as 0
    for n in range(1, 16):  # every count up to 15 has a bucket of its own, read back exactly
        assert token_bucket_value(token_bucket(n)) == n
        assert token_bucket(n) != token_bucket(n + 1)
    assert token_bucket(16) == token_bucket(17)  # from here buckets may hold several counts
    previous = -1
    for n in [*range(1, 70_000), 10**5, 123_456, 10**7, 2**31]:  # looked up below 2^16, searched above
        b = token_bucket(n)
        assert b == (n**8).bit_length() - 1  # floor(log_r(n)), r = 2^(1/8): the largest i with 2^i <= n^8
        assert b >= previous
        previous = b
        assert token_bucket_value(b) == pytest.approx(n, rel=0.045)  # within one bucket (4.4 %)
    assert token_bucket(2**8) == 64 and token_bucket(2**8 - 1) == 63  # exact at the powers of 2
    assert token_bucket(10**15) == token_bucket(10**18) == 256  # clamped to the sketch's range


def test_the_observers_bucketing_is_duration_bucket_and_token_bucket_at_every_edge() -> None:
    """The observer looks buckets up in tables (and bisects past them): the same buckets as the
    functions, at every bucket edge, cell edge and table end, and in between."""
    rnd = random.Random(7)
    edges = [e + delta for e in (*_EDGES_NS, *(k << 20 for k in range(0, 1 << 15, 7)), 1 << 35)
             for delta in (-2, -1, 0, 1, 2)]
    durations = [d for d in edges if d >= 0] + [rnd.randrange(0, 1 << 40) for _ in range(20_000)]
    counts = [-3, *range(0, (1 << 15) + 3), *(e + delta for e in _TOKEN_EDGES for delta in (-1, 0, 1)),
              *(rnd.randrange(0, 1 << 34) for _ in range(5_000))]
    s = VersionStats()
    s.add_generations(GenerationBatch(count=len(durations), errors=0, input_tokens=0, output_tokens=0,
                                      first_start_ns=T0, last_start_ns=T0, durations_ns=durations,
                                      input_counts=counts, output_counts=counts[:3]))
    assert s.durations == dict(Counter(map(duration_bucket, durations)))
    assert s.input_token_buckets == dict(Counter(map(token_bucket, counts)))
    assert s.output_token_buckets == {-1: 2, 0: 1}


def test_duration_bucket_values_are_the_buckets_geometric_middles() -> None:
    for ms in (0.5, 1, 812, 1500, 60_000):
        b = duration_bucket(int(ms * MS))
        assert duration_bucket_value_ms(b) == pytest.approx(ms, rel=0.045)
        assert 2 ** (b / 8) <= ms < 2 ** ((b + 1) / 8)
    assert duration_bucket_value_ms(0) == pytest.approx(2 ** (1 / 16))


# -- filled from the spans --------------------------------------------------------------------------
def test_sketches_are_filled_from_the_spans_token_attributes() -> None:
    cluster = Cluster()
    cluster.fetch("pod-a", 13, T0)
    generate(cluster, "pod-a", T0 + S, 800, **{c.GEN_AI_USAGE_INPUT_TOKENS: 120, c.GEN_AI_USAGE_OUTPUT_TOKENS: 7})
    generate(cluster, "pod-a", T0 + 2 * S, 800, **{c.GEN_AI_USAGE_PROMPT_TOKENS: 120,
                                                   c.GEN_AI_USAGE_COMPLETION_TOKENS: 0})
    generate(cluster, "pod-a", T0 + 3 * S, 2000, **{c.LLM_TOKEN_COUNT_PROMPT: 3000,
                                                    c.LLM_TOKEN_COUNT_COMPLETION: 7.0})
    generate(cluster, "pod-a", T0 + 4 * S, 50, **{c.GEN_AI_USAGE_INPUT_TOKENS: 9})  # no output count
    generate(cluster, "pod-a", T0 + 5 * S, 50)  # no counts at all: in the duration sketch only
    got = sketches_of(cluster, 13)
    assert list(got) == list(SKETCHES) == ["duration_ms", "output_tokens", "input_tokens"]
    assert got["duration_ms"] == sketch((duration_bucket(800 * MS), 2), (duration_bucket(2000 * MS), 1),
                                        (duration_bucket(50 * MS), 2))
    assert got["input_tokens"] == sketch((token_bucket(120), 2), (token_bucket(3000), 1), (token_bucket(9), 1))
    assert got["output_tokens"] == sketch((token_bucket(7), 2), (-1, 1))  # the reported 0 is a count
    tl = cluster.rollouts.observer.timelines[("default", PROMPT, "production")]
    s = tl.versions[13]
    assert (s.generations, s.input_tokens, s.output_tokens) == (5, 3249, 14)  # the sums as before
    assert sum(s.durations.values()) == 5 and sum(s.input_token_buckets.values()) == 4


def test_a_timeline_body_has_sketches_only_when_asked() -> None:
    cluster = Cluster()
    rollout(cluster)
    plain = cluster.body()
    with_sketches, _ = cluster.rollouts.render("default", PROMPT, sketches=True)
    assert with_sketches is not None
    for v in plain["labels"]["production"]["versions"]:
        assert "sketches" not in v
    for v in with_sketches["labels"]["production"]["versions"]:
        sk = v.pop("sketches")
        assert sum(sk["duration_ms"].values()) == v["generations"]
        assert sum(sk["input_tokens"].values()) == sum(sk["output_tokens"].values()) == v["generations"]
    assert with_sketches == plain  # the rest of the body is the same


# -- merged, stored, loaded -------------------------------------------------------------------------
def test_sketches_merge_and_round_trip_through_the_stored_form() -> None:
    a, b = Cluster(), Cluster()
    rollout(a)
    rollout(b)
    ta = a.rollouts.observer.timelines[("default", PROMPT, "production")]
    tb = b.rollouts.observer.timelines[("default", PROMPT, "production")]
    assert load_timeline(dump_timeline(ta)) == ta  # every field, the token sketches included
    both = merge(load_timeline(dump_timeline(ta)), tb)
    for v in (13, 14):
        for attr in ("durations", "input_token_buckets", "output_token_buckets"):
            mine, theirs, summed = (getattr(t.versions[v], attr) for t in (ta, tb, both))
            assert summed == {k: mine.get(k, 0) + theirs.get(k, 0) for k in mine.keys() | theirs.keys()}
    assert both.versions[14].input_token_buckets == {token_bucket(150): 36}
    assert both.versions[13].output_token_buckets == {token_bucket(20): 84}
    # Pruning takes a version's sketches with it, and nothing else changes.
    prune(both, T0 + 150 * S)
    assert 13 in both.versions and 14 in both.versions
    prune(both, T0 + 1000 * S)
    assert both.versions == {}


def test_the_stored_form_of_the_previous_release_loads_without_token_sketches() -> None:
    old = {"v": {"13": [T0, T0 + S, 2, T0, T0 + S, 2, 1, 200, 40, {"58": 2}]},
           "s": [["pod-a", 13, T0, T0 + S, 2, 0]], "svc": {"pod-a": "order-agent"}, "m": []}
    tl = load_timeline(old)
    assert tl.versions[13] == VersionStats(T0, T0 + S, 2, T0, T0 + S, 2, 1, 200, 40, {58: 2})
    assert tl.versions[13].input_token_buckets == {} and tl.versions[13].output_token_buckets == {}
    assert dump_timeline(tl) == old  # no token sketches: nothing added to the form
    # That release reads the version rows with ten fields each: the new form keeps them so.
    tl.versions[13].input_token_buckets[token_bucket(100)] = 2
    new = dump_timeline(tl)
    assert all(len(row) == 10 for row in new["v"].values())
    assert new["t"] == {"13": {"i": {str(token_bucket(100)): 2}, "o": {}}}
    assert load_timeline(new) == tl


def test_redis_fields_carry_the_sketches_and_a_hash_without_them_loads() -> None:
    tl = Timeline()
    s = tl.version(13)
    s.generations, s.durations = 3, {58: 3}
    s.input_token_buckets, s.output_token_buckets = {53: 2, -1: 1}, {34: 3}
    ops = _ops(tl)
    fields = {ops[i + 1]: ops[i + 2] for i in range(0, len(ops), 3)}  # one delta, HINCRBY'd once
    assert fields["v|13|it|-1"] == "1" and fields["v|13|ot|34"] == "3" and fields["v|13|d|58"] == "3"
    assert parse_hash(fields).versions[13] == s
    old = {k: v for k, v in fields.items() if "|it|" not in k and "|ot|" not in k}  # written before them
    got = parse_hash(old).versions[13]
    assert got.durations == {58: 3} and got.input_token_buckets == {} and got.output_token_buckets == {}


# -- window(): what a version gained between two snapshots ------------------------------------------
def entry(version: int, generations: int, errors: int, d: dict[int, int], o: dict[int, int],
          i: dict[int, int]) -> dict[str, Any]:
    return {"version": version, "fetches": generations, "generations": generations, "errors": errors,
            "input_tokens": 10 * generations, "output_tokens": generations,
            "sketches": {"duration_ms": {str(b): n for b, n in d.items()},
                         "output_tokens": {str(b): n for b, n in o.items()},
                         "input_tokens": {str(b): n for b, n in i.items()}}}


def test_window_subtracts_two_snapshots() -> None:
    before = entry(14, 5, 1, {58: 3, 60: 2}, {-1: 1, 34: 4}, {53: 5})
    after = entry(14, 9, 2, {58: 3, 60: 5, 70: 1}, {-1: 1, 34: 6, 35: 2}, {53: 7, 54: 2})
    assert window(before, after) == {
        "version": 14, "fetches": 4, "generations": 4, "errors": 1, "input_tokens": 40, "output_tokens": 4,
        "sketches": {"duration_ms": {60: 3, 70: 1}, "output_tokens": {34: 2, 35: 2}, "input_tokens": {53: 2, 54: 2}}}
    # A version with no entry at the first snapshot: everything is new. Nothing either side: nothing.
    assert window({}, after)["sketches"]["duration_ms"] == {58: 3, 60: 5, 70: 1}
    assert window(None, after)["generations"] == 9
    assert window(None, None)["generations"] == 0
    assert window(after, after)["sketches"] == {k: {} for k in SKETCHES}


@pytest.mark.parametrize("what", ["generations", "errors", "bucket", "gone"])
def test_window_refuses_counts_that_went_down(what: str) -> None:
    before = entry(14, 5, 1, {58: 3, 60: 2}, {34: 5}, {53: 5})
    after = {"generations": entry(14, 4, 1, {58: 3, 60: 2}, {34: 5}, {53: 5}),
             "errors": entry(14, 6, 0, {58: 4, 60: 2}, {34: 6}, {53: 6}),
             "bucket": entry(14, 6, 1, {58: 2, 60: 4}, {34: 6}, {53: 6}),
             "gone": None}[what]
    with pytest.raises(ValueError, match="take a new baseline"):
        window(before, after)


def test_window_refuses_entries_that_do_not_fit() -> None:
    a = entry(14, 5, 1, {58: 5}, {34: 5}, {53: 5})
    with pytest.raises(ValueError, match="different versions"):
        window(a, {**a, "version": 13})
    with pytest.raises(ValueError, match="sketches=1"):
        window({k: v for k, v in a.items() if k != "sketches"}, a)


def test_window_of_two_served_bodies_is_what_came_in_between() -> None:
    cluster = Cluster()
    rollout(cluster)

    def served() -> dict[int, Any]:
        body, _ = cluster.rollouts.render("default", PROMPT, "production", sketches=True)
        assert body is not None
        return {v["version"]: v for v in body["labels"]["production"]["versions"]}

    first = served()
    cluster.fetch("pod-a", 14, T0 + 300 * S)
    generate(cluster, "pod-a", T0 + 301 * S, 3000, **{c.GEN_AI_USAGE_INPUT_TOKENS: 2,
                                                      c.GEN_AI_USAGE_OUTPUT_TOKENS: 640})
    cluster.fetch("pod-a", 15, T0 + 302 * S)  # a new version between the snapshots
    generate(cluster, "pod-a", T0 + 303 * S, 10, **{c.GEN_AI_USAGE_OUTPUT_TOKENS: 1})
    second = served()
    w14 = window(first[14], second[14])
    assert (w14["generations"], w14["errors"], w14["fetches"]) == (1, 0, 1)
    assert w14["sketches"] == {"duration_ms": {duration_bucket(3000 * MS): 1},
                               "output_tokens": {token_bucket(640): 1}, "input_tokens": {token_bucket(2): 1}}
    assert window(first[13], second[13])["generations"] == 0
    w15 = window(first.get(15), second[15])
    assert w15["sketches"] == {"duration_ms": {duration_bucket(10 * MS): 1}, "output_tokens": {0: 1},
                               "input_tokens": {}}
