"""Prometheus metrics, read at scrape time from the components' own stats objects.

:class:`Sources` lists what there is to read (``wiring.py`` fills it in once); the collector
reads those objects and nothing else, so a component's counters are exported by naming its
stats here, not by reaching into the server. Nothing here runs on the hot path.
"""

from __future__ import annotations

import importlib.metadata
import platform
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, Protocol, get_args

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

import promptstamp_contract as c

from ..admission import AdmissionStats
from ..core.model import UnresolvedReason
from ..core.pipeline import ProcessorStats
from ..deliver.queue import LATENCY_BUCKETS
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


#: (metric name, help, DeliveryStats attribute): one series per queue, label ``signal``.
_QUEUE_COUNTERS = (
    ("exported_items", "Items exported upstream", "exported_items"),
    ("exported_requests", "Requests exported upstream", "exported_requests"),
    ("export_retries", "Export attempts retried", "retries"),
    ("export_failed_items", "Items that failed permanently", "failed_permanent_items"),
    ("export_failed_requests", "Requests that failed permanently", "failed_permanent_requests"),
    ("export_rejected_items", "Items rejected by upstream partial success", "rejected_items"),
    ("lost_items", "Items given up at shutdown (memory mode)", "lost_items"),
    ("kept_items", "Items left in the persistent queue at shutdown, for the next start", "kept_items"),
    ("recovered_items", "Items found in the persistent queue at start and re-sent", "recovered_items"),
    ("recovered_requests", "Requests found in the persistent queue at start and re-sent",
     "recovered_requests"),
)

#: (metric name, help, whether a gauge, RedisStore stats attribute).
_STORE_SERIES = (
    ("store_degraded", "1 while Redis is unreachable: resolving from the local view", True, "degraded"),
    ("store_connected", "1 while both Redis links are up", True, "connected"),
    ("store_pending", "Fetch-log records waiting to be written to Redis", True, "pending"),
    ("store_errors", "Failed Redis operations (connects, flushes, reads)", False, "errors"),
    ("store_flushed", "Fetch-log records written to Redis", False, "flushed"),
    ("store_dropped", "Fetch-log records never written to Redis (buffer full)", False, "dropped"),
    ("store_remote_records", "Fetch-log records taken in from other relays", False, "remote"),
    ("store_degraded_resolutions", "instance/latest answers given while degraded", False,
     "degraded_resolutions"),
)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"promptstamp_{name}", doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"promptstamp_{name}", doc, value=value)


def _copy(counter: Mapping[str, int]) -> dict[str, int]:
    """A Counter another thread may be updating: copy it, retrying a resize mid-copy."""
    for _ in range(10):
        try:
            return dict(counter)
        except RuntimeError:
            continue
    return {}


class RelayCollector(Collector):
    def __init__(self, sources: Sources) -> None:
        self._s = sources

    def collect(self) -> Iterator[_Family]:
        s = self._s
        admission = s.admission.snapshot()
        yield from self._admission(admission)
        yield from self._processor(s.processor)
        yield _counter("logs_other", "Log records that are not fetch records (forwarded, or dropped "
                       "without a logs exporter)", admission["logs_other"] + s.processor.other_logs)
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
            api = s.api.snapshot()
            yield _counter("api_fetches", "Prompts API calls made by the api tier", api["fetches"])
            yield _counter("api_errors", "Prompts API calls that failed (answer kept from before)",
                           api["errors"])
            yield _counter("api_overflow", "api tier lookups not tracked: too many prompt/label keys",
                           api["overflow"])
        b = s.build
        info = GaugeMetricFamily("promptstamp_build_info", "The relay's build: always 1",
                                 labels=["version", "python", "protobuf_backend", "native"])
        info.add_metric([b.version, b.python, b.protobuf_backend, str(b.native).lower()], 1)
        yield info

    @staticmethod
    def _admission(a: dict[str, int]) -> Iterator[_Family]:
        yield _counter("spans_received", "Spans received over OTLP", a["spans_received"])
        yield _counter("logs_received", "Log records received over OTLP", a["logs_received"])
        yield _counter("logs_dropped", "Non-fetch log records dropped (no logs exporter)", a["logs_dropped"])
        yield _counter("metric_points_received", "Metric data points received over OTLP",
                       a["metric_points_received"])
        yield _counter("metric_points_dropped", "Metric data points dropped (no metrics_exporter configured)",
                       a["metric_points_dropped"])
        yield _counter("requests_refused", "Requests refused (backpressure, limits, auth)", a["refused"])
        yield _counter("requests_refused_backpressure",
                       "Of requests_refused: relay full (UNAVAILABLE + RetryInfo; senders retry)",
                       a["refused_backpressure"])
        yield _counter("requests_refused_unauthenticated",
                       "Of requests_refused: missing or wrong credentials", a["refused_unauthenticated"])
        yield _counter("requests_invalid", "Requests refused as malformed", a["invalid"])
        yield _counter("requests_passthrough", "Trace requests forwarded as they came (nothing to stamp)",
                       a["passthrough_requests"])

    @staticmethod
    def _processor(st: ProcessorStats) -> Iterator[_Family]:
        yield _counter("fetch_records", "Fetch-log records taken into the store", st.fetch_records)
        invalid = CounterMetricFamily("promptstamp_fetch_records_invalid",
                                      "Fetch-log records rejected as malformed, by reason", labels=["reason"])
        by_code = _copy(getattr(st, "fetch_invalid_reasons", None) or Counter())
        for code, n in sorted(by_code.items()):
            invalid.add_metric([code], n)
        if st.fetch_invalid > sum(by_code.values()):
            invalid.add_metric(["other"], st.fetch_invalid - sum(by_code.values()))
        yield invalid
        yield _counter("fetch_records_duplicate",
                       "Fetch records seen a second time (as log record and span event): taken once",
                       getattr(st, "fetch_duplicates", 0))
        yield _counter("spans_processed", "Spans in requests that went through stamping (the others "
                       "were forwarded as they came)", st.spans_received)
        yield _counter("fetch_records_fallback",
                       "Fetch-log records with source fallback (a code-embedded prompt: no version)",
                       st.fetch_fallbacks)
        stamped = CounterMetricFamily(
            "promptstamp_spans_stamped", "Generation spans stamped, by resolution tier", labels=["tier"]
        )
        by_tier = _copy(st.stamped)
        for tier in (*c.TIERS, *sorted(set(by_tier) - set(c.TIERS))):
            stamped.add_metric([tier], by_tier.get(tier, 0))
        yield stamped
        unresolved = CounterMetricFamily(
            "promptstamp_unresolved", "Generations stamped unresolved, by reason", labels=["reason"]
        )
        by_reason = _copy(getattr(st, "unresolved", None) or Counter())
        reasons = get_args(UnresolvedReason)
        for reason in (*reasons, *sorted(set(by_reason) - set(reasons))):
            unresolved.add_metric([reason], by_reason.get(reason, 0))
        yield unresolved
        late = CounterMetricFamily(
            "promptstamp_late_fetch_records",
            "A trace's fetch record that arrived after one of its generations was sent without it, by "
            "verdict: agreed (the lower tier's guess was right), disagreed (linked to another version "
            "than the app was handed), was_unresolved", labels=["verdict"])
        by_verdict = _copy(getattr(st, "late_records", None) or Counter())
        for verdict in ("agreed", "disagreed", "was_unresolved"):
            late.add_metric([verdict], by_verdict.get(verdict, 0))
        yield late
        yield _counter("prompt_conflicts", "Generations that arrived linked (kept as they were) while "
                       "their trace's fetch record names another version", getattr(st, "prompt_conflicts", 0))
        yield _counter("spans_held", "Generation spans held for their fetch log", st.spans_held)
        yield _counter("hold_overflow", "Generations stamped at once because the hold window was full",
                       st.hold_overflow)

    @staticmethod
    def _queues(s: Sources) -> Iterator[_Family]:
        families = {name: CounterMetricFamily(f"promptstamp_{name}", doc, labels=["signal"])
                    for name, doc, _ in _QUEUE_COUNTERS}
        depth = GaugeMetricFamily("promptstamp_queue_depth", "Requests queued or in flight",
                                  labels=["signal"])
        qbytes = GaugeMetricFamily("promptstamp_queue_bytes", "Bytes queued or in flight (on disk in "
                                   "persistent mode)", labels=["signal"])
        buckets = len(LATENCY_BUCKETS) + 1
        latency = HistogramMetricFamily("promptstamp_export_seconds", "Upstream export latency per attempt",
                                        labels=["signal"])
        for q in s.queues:
            d = q.stats
            for name, _, attr in _QUEUE_COUNTERS:
                families[name].add_metric([q.name], getattr(d, attr))
            depth.add_metric([q.name], q.depth)
            qbytes.add_metric([q.name], q.bytes)
            counts = list(d.latency_counts)[:buckets]
            cum, series = 0, []
            for bound, n in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
                cum += n
                series.append((bound, cum))
            latency.add_metric([q.name], series, sum_value=d.latency_sum)
        yield from families.values()
        yield depth
        yield qbytes
        yield _gauge("queue_limit_bytes", "queue.max_bytes: the bound on queued + in-flight + held bytes",
                     s.queue_limit_bytes)
        yield latency

    @staticmethod
    def _store(store: Sized) -> Iterator[_Family]:
        yield _gauge("store_entries", "Fetch-log records kept", len(store))
        sst = getattr(store, "stats", None)  # a shared store's link (store/redis.py)
        if sst is None:
            return
        for name, doc, gauge, attr in _STORE_SERIES:
            v = float(getattr(sst, attr))
            yield _gauge(name, doc, v) if gauge else _counter(name, doc, v)


def make_registry(sources: Sources) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RelayCollector(sources))
    ProcessCollector(registry=reg)  # process_resident_memory_bytes, CPU, open fds
    return reg
