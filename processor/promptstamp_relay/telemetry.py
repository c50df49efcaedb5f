"""Prometheus metrics, read from the relay's counters at scrape time (nothing on the hot path)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from .deliver.queue import LATENCY_BUCKETS

if TYPE_CHECKING:
    from .server import RelayServer

__all__ = ["RelayCollector", "make_registry"]



class RelayCollector(Collector):
    def __init__(self, relay: RelayServer) -> None:
        self._relay = relay

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        r = self._relay
        st = r.processor.stats
        rs = r.stats

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"promptstamp_{name}", doc, value=value)

        yield counter("spans_received", "Spans received over OTLP", rs.spans_received)
        yield counter("logs_received", "Log records received over OTLP", rs.logs_received)
        yield counter("fetch_records", "Fetch-log records taken into the store", st.fetch_records)
        yield counter("fetch_records_invalid", "Fetch-log records rejected as malformed", st.fetch_invalid)
        yield counter("logs_dropped", "Non-fetch log records dropped (no logs exporter)", rs.logs_dropped)
        stamped = CounterMetricFamily(
            "promptstamp_spans_stamped", "Generation spans stamped, by resolution tier", labels=["tier"]
        )
        for tier, n in sorted(st.stamped.items()):
            stamped.add_metric([tier], n)
        yield stamped
        yield counter("spans_held", "Generation spans held for their fetch log", st.spans_held)
        yield counter("hold_overflow", "Generations stamped at once because the hold window was full",
                      st.hold_overflow)
        yield counter("requests_refused", "Requests refused (backpressure, limits, auth)", rs.refused)
        yield counter("requests_invalid", "Requests refused as malformed", rs.invalid)
        yield counter("requests_refused_backpressure",
                      "Of requests_refused: queue full (UNAVAILABLE + RetryInfo; senders retry)",
                      rs.refused_backpressure)
        for q in r.queues():
            d = q.stats
            lbl = [q.name]
            for name, doc, value in (
                ("exported_items", "Items exported upstream", d.exported_items),
                ("export_retries", "Export attempts retried", d.retries),
                ("export_failed_items", "Items that failed permanently", d.failed_permanent_items),
                ("export_rejected_items", "Items rejected by upstream partial success", d.rejected_items),
                ("lost_items", "Items given up at shutdown (memory mode)", d.lost_items),
                ("export_failed_requests", "Requests that failed permanently", d.failed_permanent_requests),
                ("exported_requests", "Requests exported upstream", d.exported_requests),
                ("kept_items", "Items left in the persistent queue at shutdown, for the next start",
                 d.kept_items),
                ("recovered_items", "Items found in the persistent queue at start and re-sent",
                 d.recovered_items),
            ):
                m = CounterMetricFamily(f"promptstamp_{name}", doc, labels=["signal"])
                m.add_metric(lbl, value)
                yield m
            g = GaugeMetricFamily("promptstamp_queue_depth", "Requests queued or in flight",
                                  labels=["signal"])
            g.add_metric(lbl, q.depth)
            yield g
            g = GaugeMetricFamily("promptstamp_queue_bytes",
                                  "Bytes queued or in flight (on disk in persistent mode)",
                                  labels=["signal"])
            g.add_metric(lbl, q.bytes)
            yield g
        limit = GaugeMetricFamily("promptstamp_queue_limit_bytes",
                                  "queue.max_bytes: the bound on queued + in-flight + held bytes")
        limit.add_metric([], r.cfg.queue.max_bytes)
        yield limit
        if r.journal is not None:
            disk = GaugeMetricFamily("promptstamp_persistent_queue_disk_bytes",
                                     "Size of the persistent queue database and its WAL")
            disk.add_metric([], r.journal.disk_bytes())
            yield disk
            yield counter("persistent_queue_commits", "Persistent queue transactions committed",
                          r.journal.commits)
        held = GaugeMetricFamily("promptstamp_held_spans", "Spans in the hold window now")
        held.add_metric([], len(r.processor.hold))
        yield held
        held_b = GaugeMetricFamily("promptstamp_held_bytes", "Bytes of spans in the hold window now")
        held_b.add_metric([], r.processor.hold.held_bytes)
        yield held_b
        store = GaugeMetricFamily("promptstamp_store_entries", "Fetch-log records kept")
        store.add_metric([], len(r.processor.store))
        yield store
        sst = getattr(r.processor.store, "stats", None)  # a shared store's link (store/redis.py)
        if sst is not None:
            for name, doc, gauge in (
                ("store_degraded", "1 while Redis is unreachable: resolving from the local view", True),
                ("store_connected", "1 while both Redis links are up", True),
                ("store_pending", "Fetch-log records waiting to be written to Redis", True),
                ("store_errors", "Failed Redis operations (connects, flushes, reads)", False),
                ("store_flushed", "Fetch-log records written to Redis", False),
                ("store_dropped", "Fetch-log records never written to Redis (buffer full)", False),
                ("store_remote_records", "Fetch-log records taken in from other relays", False),
                ("store_degraded_resolutions", "instance/latest answers given while degraded", False),
            ):
                v = float(getattr(sst, name.removeprefix("store_").removesuffix("_records")))
                yield (GaugeMetricFamily(f"promptstamp_{name}", doc, value=v) if gauge
                       else counter(name, doc, v))
        # Export latency, all queues together.
        counts = [0] * (len(LATENCY_BUCKETS) + 1)
        total = 0.0
        for q in r.queues():
            counts = [x + y for x, y in zip(counts, q.stats.latency_counts, strict=True)]
            total += q.stats.latency_sum
        cum = 0
        buckets = []
        for b, cnt in zip((*map(str, LATENCY_BUCKETS), "+Inf"), counts, strict=True):
            cum += cnt
            buckets.append((b, cum))
        yield HistogramMetricFamily(
            "promptstamp_export_seconds", "Upstream export latency per attempt",
            buckets=buckets, sum_value=total,
        )


def make_registry(relay: RelayServer) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RelayCollector(relay))
    ProcessCollector(registry=reg)  # process_resident_memory_bytes, CPU, open fds
    return reg
