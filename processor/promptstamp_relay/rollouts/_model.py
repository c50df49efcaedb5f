"""The label timeline as data: compact, mergeable aggregates, and the JSON the relay serves.

Pure: no I/O, no clock (times are the records' own). One :class:`Timeline` per tenant, prompt
and label holds intervals and sums, never raw records:

- per version: first and last hand-out, fetches, and the generation aggregates (count, errors,
  tokens, sketches of the duration and of the input and output tokens per generation);
- per instance and version: first and last hand-out and fetches (which version an instance
  served last, and when it switched, follow from these);
- the label moves Langfuse's webhooks reported.

Every field merges by min, max or sum, so two relays' timelines (or a relay's unflushed delta
and the shared copy in Redis) add up with :func:`merge`, in any order.

The duration sketch is a fixed set of log-spaced buckets (ratio 2^(1/8), about 4.4 % wide):
bucket counts add up across relays, and a quantile read from them is within one bucket of the
true one. The token sketches use the same ratio over integer counts: bucket ``i >= 0`` holds the
counts in [r^i, r^(i+1)), so every count up to 15 has a bucket of its own (exact), and bucket -1
holds 0 (a negative count, which no instrumentation should send, counts as 0). A generation
that did not report a count is in no token bucket.

:func:`window` subtracts two served snapshots of a version: what a rollout controller judges.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

__all__ = [
    "SKETCHES",
    "GenerationBatch",
    "InstanceStats",
    "Timeline",
    "VersionStats",
    "dump_timeline",
    "duration_bucket",
    "duration_bucket_value_ms",
    "load_timeline",
    "merge",
    "parse_rfc3339",
    "previous_version",
    "prune",
    "quantile_ms",
    "render_label",
    "render_prompt",
    "rfc3339",
    "token_bucket",
    "token_bucket_value",
    "window",
]

_RATIO = 2 ** (1 / 8)
_MIN_BUCKET = -80  # ~1 µs
_MAX_BUCKET = 200  # ~9.7 h
UNKNOWN_INSTANCE = "(unknown)"


#: The sketch's bucket edges in whole ns: bucket ``i`` holds durations in [r^i, r^(i+1)) ms.
#: Rounded up, so an integer duration falls where the exact edge puts it, and compared as ints.
_EDGES_NS = tuple(math.ceil(_RATIO ** i * 1e6) for i in range(_MIN_BUCKET + 1, _MAX_BUCKET + 1))


def duration_bucket(duration_ns: int) -> int:
    """The sketch bucket of a duration: ``floor(log_r(ms))``, clamped to the sketch's range."""
    return _MIN_BUCKET + bisect.bisect_right(_EDGES_NS, duration_ns)


def duration_bucket_value_ms(i: int) -> float:
    """What duration bucket ``i`` stands for, in ms: its geometric middle."""
    return float(_RATIO ** (i + 0.5))


_MAX_TOKEN_BUCKET = 256  # 2^32 tokens and more


def _ceil_power(i: int) -> int:
    """The smallest integer n >= r^i, exactly (n^8 >= 2^i in integers: no float edge lands off)."""
    n = max(1, math.ceil(2 ** (i / 8)))
    while n ** 8 < 2 ** i:
        n += 1
    while n > 1 and (n - 1) ** 8 >= 2 ** i:
        n -= 1
    return n


#: ``_TOKEN_EDGES[i]``: the smallest count in token bucket ``i`` (1 for bucket 0), so that
#: ``bisect_right(_TOKEN_EDGES, n) - 1`` is ``floor(log_r(n))`` for n >= 1 and -1 for n <= 0.
_TOKEN_EDGES = tuple(_ceil_power(i) for i in range(_MAX_TOKEN_BUCKET + 1))


def token_bucket(n: int) -> int:
    """The token sketch bucket of a count: -1 for 0 (and below), else ``floor(log_r(n))``,
    clamped to the sketch's range."""
    return bisect.bisect_right(_TOKEN_EDGES, n) - 1


def token_bucket_value(i: int) -> float:
    """What token bucket ``i`` stands for: 0 for bucket -1; the bucket's only count when it holds
    one (every count up to 15); else its geometric middle."""
    if i < 0:
        return 0.0
    lo = _TOKEN_EDGES[min(i, _MAX_TOKEN_BUCKET)]
    if i < _MAX_TOKEN_BUCKET and _TOKEN_EDGES[i + 1] == lo + 1:
        return float(lo)
    return float(_RATIO ** (i + 0.5))


# -- the observer's bucketing: looked up rather than searched --------------------------------------
# A duration and two counts per generation, on the processing path: a list index costs about
# half the instructions of a bisect call. Counts below 2^15 are looked up; durations by cells of
# 2^20 ns (~1.05 ms) up to 2^35 ns (~34 s), from the first cell on where no cell holds two bucket
# edges (~10 ms): a duration's bucket is its cell's (the bucket of the cell's first ns), or the
# next one from that bucket's upper edge on. Past the tables, the observer bisects. Both give
# exactly duration_bucket and token_bucket (tests/rollouts/test_sketches.py checks every edge).
_TOKEN_TABLE_SIZE = 1 << 15
_CELL_SHIFT = 20
_DURATION_CELLS = 1 << 15


def _tables() -> tuple[tuple[int, ...], tuple[int, ...], int]:
    """The token buckets of 0 .. 2^15 - 1; the duration buckets of the cells' first ns; the first
    cell from which on no cell holds two bucket edges past its first ns."""
    tokens = [-1]  # the count 0
    for i, lo in enumerate(_TOKEN_EDGES):
        if lo >= _TOKEN_TABLE_SIZE:
            break
        tokens.extend([i] * (min(_TOKEN_EDGES[i + 1], _TOKEN_TABLE_SIZE) - lo))
    durations: list[int] = []  # cell k: duration_bucket(k << _CELL_SHIFT)
    bucket = _MIN_BUCKET
    for e in _EDGES_NS:  # from the first cell whose first ns is past the edge, the next bucket
        start = min(-(-e >> _CELL_SHIFT), _DURATION_CELLS)
        durations.extend([bucket] * (start - len(durations)))
        bucket += 1
    durations.extend([bucket] * (_DURATION_CELLS - len(durations)))
    inside: dict[int, int] = {}
    for e in _EDGES_NS:
        if e & ((1 << _CELL_SHIFT) - 1):
            inside[e >> _CELL_SHIFT] = inside.get(e >> _CELL_SHIFT, 0) + 1
    first = 1 + max(k for k, n in inside.items() if n > 1 and k < _DURATION_CELLS)
    return tuple(tokens), tuple(durations), first


#: Small ints (-1 .. 120, shared objects): 256 KiB of pointers each. Tuples: the GC stops
#: tracking a tuple of ints, so its full collections do not walk them (lists: ~2 M instructions
#: more per full collection).
_TOKEN_TABLE, _DURATION_TABLE, _FIRST_CELL = _tables()
#: bucket b (>= 0) -> the first ns of bucket b + 1
_NEXT_EDGE_NS = _EDGES_NS[-_MIN_BUCKET:]


def quantile_ms(buckets: Mapping[int, int], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of a sketch, in ms; None when it is empty."""
    n = sum(buckets.values())
    if n <= 0:
        return None
    rank = max(1, math.ceil(q * n))
    seen = 0
    for i in sorted(buckets):
        seen += buckets[i]
        if seen >= rank:
            return duration_bucket_value_ms(i)
    return duration_bucket_value_ms(max(buckets))


def _lo(a: int, b: int) -> int:
    """min where 0 means "none"."""
    return b if a == 0 else a if b == 0 else min(a, b)


@dataclass(slots=True)
class GenerationBatch:
    """What one request's generations of one version add to its aggregates (built once, read by
    the timeline and the metrics alike)."""

    count: int
    errors: int
    input_tokens: int
    output_tokens: int
    first_start_ns: int
    last_start_ns: int
    durations_ns: list[int]  # one per generation, never negative
    #: One per generation that reported the count (0 included), in no particular order.
    input_counts: list[int] = field(default_factory=list)
    output_counts: list[int] = field(default_factory=list)


@dataclass(slots=True)
class VersionStats:
    """One version under one label. Times are ns since the epoch; 0: none yet."""

    first_ns: int = 0  # first hand-out (fetch record)
    last_ns: int = 0
    fetches: int = 0
    gen_first_ns: int = 0  # first generation's start
    gen_last_ns: int = 0
    generations: int = 0
    errors: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    durations: dict[int, int] = field(default_factory=dict)  # sketch bucket -> generations
    output_token_buckets: dict[int, int] = field(default_factory=dict)  # token bucket -> generations
    input_token_buckets: dict[int, int] = field(default_factory=dict)

    def add_fetches(self, first_ns: int, last_ns: int, count: int) -> None:
        self.first_ns = _lo(self.first_ns, first_ns)
        self.last_ns = max(self.last_ns, last_ns)
        self.fetches += count

    def add_generations(self, batch: GenerationBatch) -> None:
        self.gen_first_ns = _lo(self.gen_first_ns, batch.first_start_ns)
        self.gen_last_ns = max(self.gen_last_ns, batch.last_start_ns)
        self.generations += batch.count
        self.errors += batch.errors
        self.input_tokens += batch.input_tokens
        self.output_tokens += batch.output_tokens
        # duration_bucket and token_bucket, inlined (per generation, on the processing path)
        at, durations, edges = bisect.bisect_right, self.durations, _EDGES_NS
        table, nxt, first, cells = _DURATION_TABLE, _NEXT_EDGE_NS, _FIRST_CELL, _DURATION_CELLS
        for d in batch.durations_ns:
            k = d >> _CELL_SHIFT
            if first <= k < cells:
                b = table[k]
                if d >= nxt[b]:
                    b += 1
            else:
                b = _MIN_BUCKET + at(edges, d)
            durations[b] = durations.get(b, 0) + 1
        edges, table, size = _TOKEN_EDGES, _TOKEN_TABLE, _TOKEN_TABLE_SIZE
        for counts, sketch in ((batch.output_counts, self.output_token_buckets),
                               (batch.input_counts, self.input_token_buckets)):
            for n in counts:
                b = table[n] if 0 <= n < size else at(edges, n) - 1
                sketch[b] = sketch.get(b, 0) + 1

    @property
    def seen_first_ns(self) -> int:
        """First hand-out, else first generation (a version only the api tier answered)."""
        return self.first_ns or self.gen_first_ns

    @property
    def seen_last_ns(self) -> int:
        return self.last_ns or self.gen_last_ns

    def merge(self, o: VersionStats) -> None:
        self.first_ns = _lo(self.first_ns, o.first_ns)
        self.last_ns = max(self.last_ns, o.last_ns)
        self.fetches += o.fetches
        self.gen_first_ns = _lo(self.gen_first_ns, o.gen_first_ns)
        self.gen_last_ns = max(self.gen_last_ns, o.gen_last_ns)
        self.generations += o.generations
        self.errors += o.errors
        self.input_tokens += o.input_tokens
        self.output_tokens += o.output_tokens
        for mine, theirs in ((self.durations, o.durations),
                             (self.output_token_buckets, o.output_token_buckets),
                             (self.input_token_buckets, o.input_token_buckets)):
            for b, n in theirs.items():
                mine[b] = mine.get(b, 0) + n


@dataclass(slots=True)
class InstanceStats:
    """One instance handing out one version under one label. ``since_ns``: when the instance
    last switched to this version from another one (0: it never switched to it)."""

    first_ns: int = 0
    last_ns: int = 0
    fetches: int = 0
    since_ns: int = 0

    def add_fetches(self, first_ns: int, last_ns: int, count: int) -> None:
        self.first_ns = _lo(self.first_ns, first_ns)
        self.last_ns = max(self.last_ns, last_ns)
        self.fetches += count

    def merge(self, o: InstanceStats) -> None:
        self.first_ns = _lo(self.first_ns, o.first_ns)
        self.last_ns = max(self.last_ns, o.last_ns)
        self.fetches += o.fetches
        self.since_ns = max(self.since_ns, o.since_ns)


@dataclass(slots=True)
class Timeline:
    """One tenant's prompt under one label."""

    versions: dict[int, VersionStats] = field(default_factory=dict)
    served: dict[tuple[str, int], InstanceStats] = field(default_factory=dict)  # (instance, version)
    services: dict[str, str] = field(default_factory=dict)  # instance -> service.name
    moves: dict[int, int] = field(default_factory=dict)  # time ns -> version given the label
    #: instance -> (version, time) of its latest hand-out: an index over ``served``, not stored.
    latest: dict[str, tuple[int, int]] = field(default_factory=dict)

    def add_fetches(self, instance: str, version: int, times_ns: Sequence[int], service: str) -> int:
        """Hand-outs of ``version`` to ``instance`` (``times_ns`` in arrival order, not empty).

        The instance's switch from another version is dated by the first hand-out at or after its
        latest one; that time is returned (0: no switch). Taking the hand-outs one by one in order
        gives the same result: this is that, in one step.
        """
        first, last = min(times_ns), max(times_ns)
        self.version(version).add_fetches(first, last, len(times_ns))
        stats = self.instance(instance, version)
        stats.add_fetches(first, last, len(times_ns))
        switched = 0
        prev = self.latest.get(instance)
        if prev is None or last >= prev[1]:
            if prev is not None and prev[0] != version:
                switched = next(t for t in times_ns if t >= prev[1])
                stats.since_ns = max(stats.since_ns, switched)
            self.latest[instance] = (version, last)
        if service:
            self.services[instance] = service
        return switched

    def reindex(self) -> None:
        """Rebuild ``latest`` from ``served`` (after a load, a merge or a prune)."""
        self.latest = {}
        for (inst, v), s in self.served.items():
            got = self.latest.get(inst)
            if got is None or (s.last_ns, v) > (got[1], got[0]):
                self.latest[inst] = (v, s.last_ns)

    def version(self, v: int) -> VersionStats:
        got = self.versions.get(v)
        if got is None:
            got = self.versions[v] = VersionStats()
        return got

    def instance(self, instance: str, v: int) -> InstanceStats:
        got = self.served.get((instance, v))
        if got is None:
            got = self.served[(instance, v)] = InstanceStats()
        return got

    def empty(self) -> bool:
        return not (self.versions or self.served or self.moves)


def merge(into: Timeline, other: Timeline) -> Timeline:
    """``into`` plus ``other`` (``into`` changed and returned)."""
    for v, s in other.versions.items():
        into.version(v).merge(s)
    for k, i in other.served.items():
        into.instance(*k).merge(i)
    for inst, svc in other.services.items():
        if svc:
            into.services[inst] = svc
    into.moves.update(other.moves)
    into.reindex()
    return into


def prune(tl: Timeline, horizon_ns: int) -> int:
    """Forget what was last seen before ``horizon_ns``; how many entries went."""
    old_v = [v for v, s in tl.versions.items() if s.seen_last_ns < horizon_ns]
    old_i = [k for k, s in tl.served.items() if s.last_ns < horizon_ns]
    old_m = [t for t in tl.moves if t < horizon_ns]
    for v in old_v:
        del tl.versions[v]
    for k in old_i:
        del tl.served[k]
    for t in old_m:
        del tl.moves[t]
    alive = {inst for inst, _ in tl.served}
    for inst in [i for i in tl.services if i not in alive]:
        del tl.services[inst]
    if old_i:
        tl.reindex()
    return len(old_v) + len(old_i) + len(old_m)


# -- persistence form (SQLite rows, the CLI's direct reads) ---------------------------------------
def dump_timeline(tl: Timeline) -> dict[str, Any]:
    """A JSON-able form of ``tl`` (compact lists), read back by :func:`load_timeline`.

    The token sketches are under a key of their own (``"t"``: version -> ``{"i": sketch, "o":
    sketch}``, only the versions that have some), not in the ``"v"`` rows: a form written before
    they existed loads (no token sketches), and a relay of that release still loads this form.
    """
    out: dict[str, Any] = {
        "v": {str(v): [s.first_ns, s.last_ns, s.fetches, s.gen_first_ns, s.gen_last_ns, s.generations,
                       s.errors, s.input_tokens, s.output_tokens,
                       {str(b): n for b, n in s.durations.items()}]
              for v, s in tl.versions.items()},
        "s": [[inst, v, s.first_ns, s.last_ns, s.fetches, s.since_ns] for (inst, v), s in tl.served.items()],
        "svc": dict(tl.services),
        "m": [[t, v] for t, v in tl.moves.items()],
    }
    tokens = {str(v): {"i": {str(b): n for b, n in s.input_token_buckets.items()},
                       "o": {str(b): n for b, n in s.output_token_buckets.items()}}
              for v, s in tl.versions.items() if s.input_token_buckets or s.output_token_buckets}
    if tokens:
        out["t"] = tokens
    return out


def load_timeline(data: Mapping[str, Any]) -> Timeline:
    """The inverse of :func:`dump_timeline`; ``ValueError``/``TypeError``/``KeyError`` on a bad form."""
    tl = Timeline()
    for v, row in data.get("v", {}).items():
        f, last, n, gf, gl, g, e, i, o, d = row
        tl.versions[int(v)] = VersionStats(int(f), int(last), int(n), int(gf), int(gl), int(g), int(e),
                                           int(i), int(o), {int(b): int(c) for b, c in d.items()})
    for v, sketches in data.get("t", {}).items():
        s = tl.versions.get(int(v))
        if s is not None:  # a version's sketches without its row: nothing to add them to
            s.input_token_buckets = {int(b): int(c) for b, c in sketches.get("i", {}).items()}
            s.output_token_buckets = {int(b): int(c) for b, c in sketches.get("o", {}).items()}
    for inst, v, f, last, n, since in data.get("s", []):
        tl.served[(str(inst), int(v))] = InstanceStats(int(f), int(last), int(n), int(since))
    tl.services = {str(k): str(v) for k, v in data.get("svc", {}).items()}
    tl.moves = {int(t): int(v) for t, v in data.get("m", [])}
    tl.reindex()
    return tl


# -- what the relay serves ------------------------------------------------------------------------
def rfc3339(ns: int) -> str:
    """``2026-12-01T09:00:00Z`` (UTC; milliseconds only when there are some)."""
    dt = datetime.fromtimestamp(ns // 10**9, tz=timezone.utc)
    ms = (ns // 10**6) % 1000
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + (f".{ms:03d}" if ms else "") + "Z"


def _last_per_instance(tl: Timeline) -> dict[str, tuple[int, InstanceStats]]:
    """instance -> (the version it handed out last, that version's stats)."""
    out: dict[str, tuple[int, InstanceStats]] = {}
    for (inst, v), s in tl.served.items():
        got = out.get(inst)
        if got is None or (s.last_ns, v) > (got[1].last_ns, got[0]):
            out[inst] = (v, s)
    return out


def _target(tl: Timeline, last: Mapping[str, tuple[int, InstanceStats]]) -> tuple[int, int] | None:
    """(the version the label points to, since when), as far as the records tell.

    With webhook moves: the latest move. Else from the hand-outs: each version's first hand-out
    and each instance's switch to the version it serves now are events; the label points to the
    version of the latest event, since the first event of that version's final run. A new
    instance starting on an older version is no event: it is lagging, not a move back.
    """
    if tl.moves:
        at = max(tl.moves)
        return tl.moves[at], at
    events: list[tuple[int, int]] = [(s.first_ns, v) for v, s in tl.versions.items() if s.first_ns]
    events.extend((s.since_ns, v) for v, s in last.values() if s.since_ns)
    if not events:
        return None
    events.sort()
    version = events[-1][1]
    since = events[-1][0]
    for t, v in reversed(events):
        if v != version:
            break
        since = t
    return version, since


#: The sketches a version's entry carries with ``sketches=1``, by name.
SKETCHES = ("duration_ms", "output_tokens", "input_tokens")


def _sketch(buckets: Mapping[int, int]) -> dict[str, int]:
    return {str(b): buckets[b] for b in sorted(buckets)}


def render_label(tl: Timeline, *, with_moves: bool = False, sketches: bool = False) -> dict[str, Any]:
    """One label's part of the timeline body (docs/rollouts.md): lists in time order.
    ``sketches``: each version also carries its raw sketches (bucket -> generations)."""
    rows = sorted(tl.versions.items(), key=lambda kv: (kv[1].seen_first_ns, kv[0]))
    current = None
    if tl.versions:
        current = max(tl.versions.items(), key=lambda kv: (kv[1].seen_last_ns, kv[0]))[0]
    versions = []
    for v, s in rows:
        p50, p95 = quantile_ms(s.durations, 0.5), quantile_ms(s.durations, 0.95)
        entry: dict[str, Any] = {
            "version": v,
            "first_served": rfc3339(s.seen_first_ns) if s.seen_first_ns else None,
            "last_served": rfc3339(s.seen_last_ns) if s.seen_last_ns else None,
            "fetches": s.fetches, "generations": s.generations, "errors": s.errors,
            "duration_p50_ms": None if p50 is None else round(p50, 1),
            "duration_p95_ms": None if p95 is None else round(p95, 1),
            "input_tokens": s.input_tokens, "output_tokens": s.output_tokens,
        }
        if sketches:
            entry["sketches"] = {"duration_ms": _sketch(s.durations),
                                 "output_tokens": _sketch(s.output_token_buckets),
                                 "input_tokens": _sketch(s.input_token_buckets)}
        versions.append(entry)
    last = _last_per_instance(tl)
    by_time = sorted(last.items(), key=lambda kv: (kv[1][1].last_ns, kv[0]))
    instances = [{"instance": inst, "service": tl.services.get(inst, ""), "version": v,
                  "last_served": rfc3339(i.last_ns)} for inst, (v, i) in by_time]
    lagging = []
    target = _target(tl, last)
    if target is not None:
        version, since = target
        for inst, (v, i) in by_time:
            if v != version and i.last_ns > since:
                lagging.append({"instance": inst, "service": tl.services.get(inst, ""), "version": v,
                                "behind_seconds": round((i.last_ns - since) / 1e9, 1)})
    out: dict[str, Any] = {"current": current, "versions": versions, "instances": instances,
                           "lagging": lagging}
    if with_moves or tl.moves:
        moves, prev = [], None
        for t in sorted(tl.moves):
            if tl.moves[t] != prev:  # a tag change re-announces the same version: one move
                moves.append({"version": tl.moves[t], "at": rfc3339(t)})
            prev = tl.moves[t]
        out["moves"] = moves
    return out


def render_prompt(prompt: str, labels: Mapping[str, Timeline], *, with_moves: bool = False,
                  sketches: bool = False) -> dict[str, Any]:
    """The whole body of ``GET /api/v1/prompts/{prompt}/timeline`` (``sketches``: with ``sketches=1``)."""
    return {"prompt": prompt,
            "labels": {label: render_label(tl, with_moves=with_moves, sketches=sketches)
                       for label, tl in sorted(labels.items()) if not tl.empty()}}


_WINDOW_COUNTS = ("fetches", "generations", "errors", "input_tokens", "output_tokens")


def window(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> dict[str, Any]:
    """What one version gained between two snapshots of its served entry (an item of a label's
    ``versions``, read with ``sketches=1``), ``after`` taken later than ``before``. ``before``
    None or empty: the version had no entry yet at the first snapshot (all of ``after`` is new);
    both None or empty: nothing was gained.

    Returns ``{"version", "fetches", "generations", "errors", "input_tokens", "output_tokens",
    "sketches": {"duration_ms" | "output_tokens" | "input_tokens": {bucket (int): generations}}}``
    (buckets that gained nothing left out). Read a bucket's value with
    :func:`duration_bucket_value_ms` / :func:`token_bucket_value`.

    ``ValueError`` when the entries do not fit (two versions, no sketches) or when a count or a
    bucket went down, or the version's entry went away: the aggregates are cumulative, so the
    relay restarted without persistence or forgot the version (retention, bounds) in between,
    and the caller must take a new baseline.
    """
    before, after = before or {}, after or {}
    version = after.get("version", before.get("version"))
    if before and after and before.get("version") != after.get("version"):
        raise ValueError(f"two different versions: v{before.get('version')} and v{after.get('version')}")
    if (after and "sketches" not in after) or (before and "sketches" not in before):
        raise ValueError("a version entry without sketches: read the timeline with sketches=1")

    why = "(the relay restarted without persistence or forgot the version): take a new baseline"

    def went_down(what: str, was: int, now: int) -> ValueError:
        return ValueError(f"v{version}: {what} went down from {was} to {now} {why}")

    if before and not after:
        raise ValueError(f"v{version}: its entry went away {why}")
    out: dict[str, Any] = {"version": version}
    for name in _WINDOW_COUNTS:
        was, now = int(before.get(name, 0)), int(after.get(name, 0))
        if now < was:
            raise went_down(name, was, now)
        out[name] = now - was
    gained: dict[str, dict[int, int]] = {}
    for kind in SKETCHES:
        old = {int(b): int(n) for b, n in (before.get("sketches") or {}).get(kind, {}).items()}
        new = {int(b): int(n) for b, n in (after.get("sketches") or {}).get(kind, {}).items()}
        for b, n in old.items():
            if new.get(b, 0) < n:
                raise went_down(f"{kind} bucket {b}", n, new.get(b, 0))
        gained[kind] = {b: n - old.get(b, 0) for b, n in sorted(new.items()) if n > old.get(b, 0)}
    out["sketches"] = gained
    return out


def previous_version(label: Mapping[str, Any]) -> int | None:
    """From a rendered label: the version that served it before ``current`` (the other version
    handed out most recently), or None."""
    current = label.get("current")
    others = [v for v in label.get("versions", []) if v["version"] != current and v["last_served"]]
    if not others:
        return None
    return int(max(others, key=lambda v: (parse_rfc3339(v["last_served"]), v["version"]))["version"])


def parse_rfc3339(text: str) -> datetime:
    """What :func:`rfc3339` wrote (or any ISO 8601 time with a zone), as an aware datetime."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))
