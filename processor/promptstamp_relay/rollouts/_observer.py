"""The pipeline observer that feeds the label timeline and the per-version metrics.

Threads: the :class:`~promptstamp_relay.core.pipeline.Processor` calls :meth:`RolloutObserver.
on_fetch_records` and :meth:`~RolloutObserver.on_generations` synchronously, under the relay's
processing lock: they group a request's records (O(1) per record) and update dictionaries once
per group under this object's own short lock, never do I/O. The flusher thread, HTTP handlers
and Prometheus scrapes take the same lock to copy what they need, and do their I/O after
releasing it.

State: ``timelines`` is everything this relay knows (what it loaded at start plus what it saw);
with a shared store, ``pending`` is what it saw since the last flush to Redis (a delta that adds
up with the other relays' deltas there); ``dirty`` names the timelines changed since the last
write to SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from operator import attrgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..core.model import FetchRecord, GenerationRecord
from ._config import RolloutsConfig
from ._metrics import GenerationMetrics
from ._model import (
    UNKNOWN_INSTANCE,
    GenerationBatch,
    Timeline,
    dump_timeline,
    load_timeline,
    merge,
    prune,
)

__all__ = ["RolloutObserver", "RolloutStats", "TimelineKey"]

TimelineKey = tuple[str, str, str]  # tenant, prompt name, label


@dataclass
class RolloutStats:
    timelines_dropped: int = 0  # records for a new timeline past rollouts.max_timelines
    entries_evicted: int = 0  # oldest versions / instance entries forgotten past the bounds
    entries_expired: int = 0  # forgotten after rollouts.retention_days
    flushes: int = 0
    flush_errors: int = 0


class RolloutObserver:
    """A :class:`~promptstamp_relay.core.pipeline.PipelineObserver`. ``shared``: keep deltas for Redis."""

    def __init__(self, cfg: RolloutsConfig, prompt_names: Mapping[str, str] | None = None, *,
                 shared: bool = False) -> None:
        self.cfg = cfg
        self._names = dict(prompt_names or {})
        self.lock = threading.Lock()
        self.timelines: dict[TimelineKey, Timeline] = {}
        self.pending: dict[TimelineKey, Timeline] | None = {} if shared else None
        self.dirty: set[TimelineKey] = set()
        self.metrics = GenerationMetrics(cfg.max_series)
        self.stats = RolloutStats()

    # -- the processing path ----------------------------------------------------------------------
    # A request holds few distinct prompts, labels and instances: records are grouped first, and
    # the timelines and series are touched once per group, not once per record.
    def on_fetch_records(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        groups: dict[tuple[str, str, str], list[FetchRecord]] = {}
        names = self._names
        for r in records:
            if r.version is None:
                continue  # a fallback prompt: no version to put on the timeline
            group = (names.get(r.key, r.key), r.label, r.instance or r.service or UNKNOWN_INSTANCE)
            got = groups.get(group)
            if got is None:
                groups[group] = [r]
            else:
                got.append(r)
        with self.lock:
            for (name, label, instance), rs in groups.items():
                targets = self._targets((tenant, name, label), len(rs))
                if not targets:
                    continue
                version = rs[0].version
                if all(r.version == version for r in rs):
                    self._add_fetches(targets, instance, rs)
                else:  # the label moved within this request: one version at a time, in order
                    for r in rs:
                        self._add_fetches(targets, instance, [r])

    def _add_fetches(self, targets: list[Timeline], instance: str, rs: list[FetchRecord]) -> None:
        """``rs``: one instance's hand-outs of one version under one label, in arrival order."""
        version = rs[0].version
        assert version is not None
        times = [r.time_ns for r in rs]
        service = next((r.service for r in reversed(rs) if r.service), "")
        for tl in targets:
            self._room_for(tl, version, instance)
        # The switch is dated from the whole local timeline; the Redis delta gets it too.
        switched = targets[0].add_fetches(instance, version, times, service)
        if len(targets) > 1:
            targets[1].add_fetches(instance, version, times, service)
            if switched:
                delta = targets[1].served[(instance, version)]
                delta.since_ns = max(delta.since_ns, switched)

    def on_generations(self, records: Sequence[GenerationRecord], now_ns: int) -> None:
        groups: dict[tuple[str, str, str, int | None], list[GenerationRecord]] = {}
        for g in records:
            group = (g.tenant, g.prompt_name, g.label, g.version)
            got = groups.get(group)
            if got is None:
                groups[group] = [g]
            else:
                got.append(g)
        batches = [(group, _batch(gs)) for group, gs in groups.items()]
        with self.lock:
            for (tenant, prompt, label, version), batch in batches:
                self.metrics.add(tenant, prompt, label, version, batch)
                if version is None:
                    continue
                for tl in self._targets((tenant, prompt, label), batch.count):
                    self._room_for(tl, version, None)
                    tl.version(version).add_generations(batch)

    def add_move(self, key: TimelineKey, version: int, at_ns: int) -> bool:
        """A label move Langfuse reported (webhook). False past ``max_timelines``."""
        with self.lock:
            targets = self._targets(key)
            for tl in targets:
                tl.moves[at_ns] = version
            return bool(targets)

    def _targets(self, key: TimelineKey, records: int = 1) -> list[Timeline]:
        """The timelines to update with ``records`` records for ``key`` (local, and the Redis
        delta); [] past the bound."""
        tl = self.timelines.get(key)
        if tl is None:
            if len(self.timelines) >= self.cfg.max_timelines:
                self.stats.timelines_dropped += records
                return []
            tl = self.timelines[key] = Timeline()
        self.dirty.add(key)
        if self.pending is None:
            return [tl]
        delta = self.pending.get(key)
        if delta is None:
            delta = self.pending[key] = Timeline()
        return [tl, delta]

    def _room_for(self, tl: Timeline, version: int, instance: str | None) -> None:
        """Forget the oldest entry when a new one would pass a bound (rare: retention prunes first)."""
        if version not in tl.versions and len(tl.versions) >= self.cfg.max_versions:
            oldest = min(tl.versions, key=lambda v: tl.versions[v].seen_last_ns)
            del tl.versions[oldest]
            self.stats.entries_evicted += 1
        full = len(tl.served) >= self.cfg.max_instances
        if instance is not None and full and (instance, version) not in tl.served:
            oldest_i = min(tl.served, key=lambda k: tl.served[k].last_ns)
            del tl.served[oldest_i]
            tl.reindex()
            self.stats.entries_evicted += 1

    # -- the flusher, readers ----------------------------------------------------------------------
    def take_pending(self) -> dict[TimelineKey, Timeline]:
        """The Redis delta so far; a new one starts."""
        with self.lock:
            got, self.pending = (self.pending or {}), ({} if self.pending is not None else None)
            return got

    def give_back(self, delta: Mapping[TimelineKey, Timeline]) -> None:
        """A delta that could not be flushed: merged back, so nothing is lost (only late)."""
        with self.lock:
            if self.pending is None:
                return
            for key, tl in delta.items():
                mine = self.pending.get(key)
                self.pending[key] = tl if mine is None else merge(mine, tl)

    def take_dirty(self) -> dict[TimelineKey, Timeline]:
        """Copies of the timelines changed since the last call (for SQLite)."""
        with self.lock:
            keys, self.dirty = self.dirty, set()
            return {k: load_timeline(dump_timeline(self.timelines[k])) for k in keys if k in self.timelines}

    def expire(self, horizon_ns: int) -> list[TimelineKey]:
        """Forget what was last seen before ``horizon_ns``; the timelines left empty (removed)."""
        gone: list[TimelineKey] = []
        with self.lock:
            for key, tl in list(self.timelines.items()):
                n = prune(tl, horizon_ns)
                self.stats.entries_expired += n
                if tl.empty():
                    del self.timelines[key]
                    self.dirty.discard(key)
                    gone.append(key)
                elif n:
                    self.dirty.add(key)
        return gone

    def load(self, timelines: Mapping[TimelineKey, Timeline]) -> None:
        """What persistence kept (at start)."""
        with self.lock:
            for key, tl in timelines.items():
                if key in self.timelines or len(self.timelines) < self.cfg.max_timelines:
                    mine = self.timelines.get(key)
                    self.timelines[key] = tl if mine is None else _merged(mine, tl)

    def local(self, tenant: str, prompt: str) -> dict[str, Timeline]:
        """Copies of this relay's timelines of ``tenant``'s ``prompt``, by label."""
        with self.lock:
            return {label: load_timeline(dump_timeline(tl)) for (t, p, label), tl in self.timelines.items()
                    if t == tenant and p == prompt}

    def pending_for(self, tenant: str, prompt: str) -> dict[str, Timeline]:
        with self.lock:
            pending = self.pending or {}
            return {label: load_timeline(dump_timeline(tl)) for (t, p, label), tl in pending.items()
                    if t == tenant and p == prompt}

    def collector(self) -> Collector:
        return _Collector(self)


_START, _END, _ERROR, _INPUT, _OUTPUT = (
    attrgetter(f) for f in ("start_ns", "end_ns", "error", "input_tokens", "output_tokens"))


def _batch(gs: list[GenerationRecord]) -> GenerationBatch:
    starts: list[int] = list(map(_START, gs))
    ends = map(_END, gs)
    ins: list[int] = [n for n in map(_INPUT, gs) if n is not None]
    outs: list[int] = [n for n in map(_OUTPUT, gs) if n is not None]
    return GenerationBatch(count=len(gs), errors=sum(map(_ERROR, gs)),
                           input_tokens=sum(ins), output_tokens=sum(outs),
                           first_start_ns=min(starts), last_start_ns=max(starts),
                           durations_ns=[e - s if e > s else 0 for s, e in zip(starts, ends, strict=True)],
                           input_counts=ins, output_counts=outs)


def _merged(a: Timeline, b: Timeline) -> Timeline:
    return merge(a, b)


class _Collector(Collector):
    """The generation metrics at scrape time (registered on the relay's registry)."""

    def __init__(self, observer: RolloutObserver) -> None:
        self._o = observer

    def collect(self) -> Iterator[Metric]:
        with self._o.lock:
            families = list(self._o.metrics.families())
            st = self._o.stats
            counts = [("timelines_dropped", "Records for a new timeline past rollouts.max_timelines",
                       st.timelines_dropped),
                      ("timeline_evicted", "Timeline entries forgotten past rollouts.max_versions / "
                       "max_instances", st.entries_evicted),
                      ("timeline_expired", "Timeline entries forgotten after rollouts.retention_days",
                       st.entries_expired),
                      ("timeline_flush_errors", "Failed writes of the timeline to SQLite / Redis (kept "
                       "in memory, retried)", st.flush_errors)]
            timelines = len(self._o.timelines)
            serving = GaugeMetricFamily(
                "promptstamp_rollout_instance_version", "The version each instance last handed out under "
                "each label (a state timeline per instance; at most rollouts.max_series series)",
                labels=["tenant", "prompt", "label", "instance"])
            room = self._o.cfg.max_series
            for (tenant, prompt, label), tl in sorted(self._o.timelines.items()):
                for instance, (version, _) in sorted(tl.latest.items()):
                    if room <= 0:
                        break
                    serving.add_metric([tenant, prompt, label, instance], version)
                    room -= 1
        yield serving
        yield from families
        for name, text, value in counts:
            yield CounterMetricFamily(f"promptstamp_rollout_{name}", text, value=value)
        yield GaugeMetricFamily("promptstamp_rollout_timelines", "Label timelines this relay holds "
                                "(tenant x prompt x label)", value=timelines)
