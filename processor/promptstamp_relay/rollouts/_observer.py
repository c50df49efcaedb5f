"""The pipeline observer that feeds the label timeline and the per-version metrics.

Threads: the :class:`~promptstamp_relay.pipeline.Processor` calls :meth:`RolloutObserver.
on_fetch_records` and :meth:`~RolloutObserver.on_generations` synchronously, under the relay's
processing lock: they only update dictionaries (O(1) per record) under this object's own short
lock, never do I/O. The flusher thread, HTTP handlers and Prometheus scrapes take the same lock
to copy what they need, and do their I/O after releasing it.

State: ``timelines`` is everything this relay knows (what it loaded at start plus what it saw);
with a shared store, ``pending`` is what it saw since the last flush to Redis (a delta that adds
up with the other relays' deltas there); ``dirty`` names the timelines changed since the last
write to SQLite.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from ..records import FetchRecord, GenerationRecord
from ._config import RolloutsConfig
from ._metrics import GenerationMetrics
from ._model import UNKNOWN_INSTANCE, Timeline, dump_timeline, load_timeline, merge, prune

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
    """A :class:`~promptstamp_relay.pipeline.PipelineObserver`. ``shared``: keep deltas for Redis."""

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
    def on_fetch_records(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        with self.lock:
            for r in records:
                if r.version is None:
                    continue  # a fallback prompt: no version to put on the timeline
                key = (tenant, self._names.get(r.key, r.key), r.label)
                instance = r.instance or r.service or UNKNOWN_INSTANCE
                targets = self._targets(key)
                if not targets:
                    continue
                # The switch is dated from the whole local timeline; the Redis delta gets it too.
                full = targets[0]
                prev = full.latest.get(instance)
                for tl in targets:
                    self._room_for(tl, r.version, instance)
                    tl.add_fetch(instance, r.version, r.time_ns, r.service)
                if len(targets) > 1 and prev is not None and prev[0] != r.version and r.time_ns >= prev[1]:
                    delta = targets[1].served[(instance, r.version)]
                    delta.since_ns = max(delta.since_ns, r.time_ns)

    def on_generations(self, records: Sequence[GenerationRecord], now_ns: int) -> None:
        with self.lock:
            for g in records:
                self.metrics.add(g)
                if g.version is None:
                    continue
                for tl in self._targets((g.tenant, g.prompt_name, g.label)):
                    self._room_for(tl, g.version, None)
                    tl.version(g.version).add_generation(g.start_ns, g.end_ns, g.error, g.input_tokens,
                                                         g.output_tokens)

    def add_move(self, key: TimelineKey, version: int, at_ns: int) -> bool:
        """A label move Langfuse reported (webhook). False past ``max_timelines``."""
        with self.lock:
            targets = self._targets(key)
            for tl in targets:
                tl.moves[at_ns] = version
            return bool(targets)

    def _targets(self, key: TimelineKey) -> list[Timeline]:
        """The timelines to update for ``key`` (local, and the Redis delta); [] past the bound."""
        tl = self.timelines.get(key)
        if tl is None:
            if len(self.timelines) >= self.cfg.max_timelines:
                self.stats.timelines_dropped += 1
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
        yield from families
        for name, text, value in counts:
            yield CounterMetricFamily(f"promptstamp_rollout_{name}", text, value=value)
        yield GaugeMetricFamily("promptstamp_rollout_timelines", "Label timelines this relay holds "
                                "(tenant x prompt x label)", value=timelines)
