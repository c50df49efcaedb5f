"""Prometheus metrics, read at scrape time from the components' own stats objects.

:class:`Sources` lists what there is to read (``wiring.py`` fills it in once); the collector
reads those objects and nothing else, so a component's counters are exported by naming its
stats here, not by reaching into the server. Nothing here runs on the hot path.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from ..admission import AdmissionStats
from ..core.pipeline import ProcessorStats
from ..counters import exported
from ..deliver.queue import DELIVERY_BUCKETS, LATENCY_BUCKETS
from ..store.label_pointers import ApiStats

__all__ = ["BuildInfo", "RelayCollector", "Sources", "build_info", "make_registry"]

_Family = CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily


class QueueSource(Protocol):
    """A delivery queue as telemetry sees it."""

    @property
    def name(self) -> str: ...
    @property
    def stats(self) -> Any: ...  # DeliveryStats
    @property
    def depth(self) -> int: ...
    @property
    def bytes(self) -> int: ...


class HoldSource(Sized, Protocol):
    @property
    def held_bytes(self) -> int: ...


class JournalSource(Protocol):
    @property
    def commits(self) -> int: ...
    def disk_bytes(self) -> int: ...


@dataclass(frozen=True)
class BuildInfo:
    version: str
    python: str
    protobuf_backend: str
    native: bool


def build_info(protobuf_backend: str, native: bool) -> BuildInfo:
    try:
        version = importlib.metadata.version("promptstamp")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return BuildInfo(version, platform.python_version(), protobuf_backend, native)


@dataclass(frozen=True)
class Sources:
    """Everything the collector reads; each is a component's own object."""

    admission: AdmissionStats
    processor: ProcessorStats
    hold: HoldSource
    store: Sized  # len() = fetch-log records kept; ``.stats`` when the store is shared (Redis)
    queues: Sequence[QueueSource]
    queue_limit_bytes: int
    build: BuildInfo
    journal: JournalSource | None = None
    api: ApiStats | None = None
    receivers: Sequence[Any] = ()  # the listeners' own stats objects (Counters), when they keep any


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"promptstamp_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"promptstamp_{name}", doc, value=value)


def _families(stats: Any, snapshot: dict[str, Any] | None = None) -> Iterator[_Family]:
    """A family for every field of ``stats`` declared with :func:`~promptstamp_relay.counters.metric`."""
    for spec, value in exported(stats, snapshot):
        name = f"promptstamp_{spec.name}"
        if spec.label is None:
            kind = GaugeMetricFamily if spec.gauge else CounterMetricFamily
            yield kind(name, spec.help, value=float(value))
            continue
        family = CounterMetricFamily(name, spec.help, labels=[spec.label])
        seen: dict[str, int] = value
        for label in (*spec.values, *sorted(set(seen) - set(spec.values))):
            family.add_metric([label], seen.get(label, 0))
        yield family


def _per_queue(queues: Sequence[QueueSource]) -> Iterator[_Family]:
    """Each declared DeliveryStats metric once, a sample per queue (label ``signal``), and per
    value of its own label (``destination``) when it has one."""
    families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
    for q in queues:
        for spec, value in exported(q.stats):
            family = families.get(spec.name)
            if family is None:
                kind = GaugeMetricFamily if spec.gauge else CounterMetricFamily
                family = families[spec.name] = kind(
                    f"promptstamp_{spec.name}", spec.help,
                    labels=["signal"] if spec.label is None else ["signal", spec.label])
            if spec.label is None:
                family.add_metric([q.name], value)
                continue
            for label, n in sorted(value.items()):
                family.add_metric([q.name, label], n)
    yield from families.values()


def _histogram(family: HistogramMetricFamily, labels: list[str], bounds: Sequence[float],
               counts: Sequence[int], total: float) -> None:
    cum, series = 0, []
    for bound, n in zip((*map(str, bounds), "+Inf"), list(counts)[:len(bounds) + 1], strict=True):
        cum += n
        series.append((bound, cum))
    family.add_metric(labels, series, sum_value=total)


class RelayCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[_Family]:
        s = self._s
        admission = s.admission.snapshot()
        processor = s.processor.snapshot()
        yield from _families(s.admission, admission)
        yield from _families(s.processor, processor)
        # the one derived series: log records looked at by admission and by the processor
        yield _counter("logs_other", "Log records that are not fetch records (forwarded, or dropped "
                       "without a logs exporter)", admission["logs_other"] + processor["other_logs"])
        held = GaugeMetricFamily("promptstamp_held_spans", "Spans in the hold window now")
        held.add_metric([], len(s.hold))
        yield held
        yield _gauge("held_bytes", "Bytes of spans in the hold window now", s.hold.held_bytes)
        yield from self._queues(s)
        yield from self._store(s.store)
        if s.journal is not None:
            yield _gauge("persistent_queue_disk_bytes", "Size of the persistent queue database and its WAL",
                         s.journal.disk_bytes())
            yield _counter("persistent_queue_commits", "Persistent queue transactions committed",
                           s.journal.commits)
        if s.api is not None:
            yield from _families(s.api)
        for stats in s.receivers:
            yield from _families(stats)
        b = s.build
        info = GaugeMetricFamily("promptstamp_build_info", "The relay's build: always 1",
                                 labels=["version", "python", "protobuf_backend", "native"])
        info.add_metric([b.version, b.python, b.protobuf_backend, str(b.native).lower()], 1)
        yield info

    @staticmethod
    def _queues(s: Sources) -> Iterator[_Family]:
        yield from _per_queue(s.queues)
        depth = GaugeMetricFamily("promptstamp_queue_depth", "Requests queued or in flight",
                                  labels=["signal"])
        qbytes = GaugeMetricFamily("promptstamp_queue_bytes", "Bytes queued or in flight (on disk in "
                                   "persistent mode)", labels=["signal"])
        latency = HistogramMetricFamily("promptstamp_export_seconds", "Upstream export latency per attempt",
                                        labels=["signal"])
        delivery = HistogramMetricFamily(
            "promptstamp_destination_delivery_seconds", "Queued to confirmed by the upstream (retries "
            "included), per upstream destination", labels=["signal", "destination"])
        for q in s.queues:
            d = q.stats
            depth.add_metric([q.name], q.depth)
            qbytes.add_metric([q.name], q.bytes)
            _histogram(latency, [q.name], LATENCY_BUCKETS, d.latency_counts, d.latency_sum)
            snap = d.snapshot()  # dicts copied safely against a worker adding a destination
            sums = snap["delivery_sum"]
            for label, counts in sorted(snap["delivery_counts"].items()):
                _histogram(delivery, [q.name, label], DELIVERY_BUCKETS, counts, sums.get(label, 0.0))
        yield depth
        yield qbytes
        yield _gauge("queue_limit_bytes", "queue.max_bytes: the bound on queued + in-flight + held bytes",
                     s.queue_limit_bytes)
        yield latency
        yield delivery

    @staticmethod
    def _store(store: Sized) -> Iterator[_Family]:
        yield _gauge("store_entries", "Fetch-log records kept", len(store))
        sst = getattr(store, "stats", None)  # a shared store's link (store/redis.py)
        if sst is None:
            return
        yield from _families(sst)


def make_registry(sources: Sources) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RelayCollector(sources))
    ProcessCollector(registry=reg)  # process_resident_memory_bytes, CPU, open fds
    return reg
