"""The grpc.health.v1 service and the Prometheus /metrics endpoint."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from promptstamp_relay.server import RelayServer

from .conftest import GEN, Sender, config, ids, scrape, wait_until
from .upstream import Upstream

METRICS = [
    "promptstamp_spans_received_total",
    "promptstamp_logs_received_total",
    'promptstamp_spans_stamped_total{tier="unresolved"}',
    "promptstamp_spans_held_total",
    "promptstamp_held_spans",
    "promptstamp_held_bytes",
    'promptstamp_exported_items_total{signal="traces"}',
    'promptstamp_exported_requests_total{signal="traces"}',
    'promptstamp_export_retries_total{signal="traces"}',
    'promptstamp_export_failed_items_total{signal="traces"}',
    'promptstamp_export_failed_requests_total{signal="traces"}',
    'promptstamp_export_rejected_items_total{signal="traces"}',
    'promptstamp_lost_items_total{signal="traces"}',
    'promptstamp_kept_items_total{signal="traces"}',
    'promptstamp_recovered_items_total{signal="traces"}',
    "promptstamp_requests_refused_total",
    "promptstamp_requests_refused_backpressure_total",
    'promptstamp_queue_depth{signal="traces"}',
    'promptstamp_queue_bytes{signal="traces"}',
    "promptstamp_queue_limit_bytes",
    "promptstamp_persistent_queue_disk_bytes",
    "promptstamp_persistent_queue_commits_total",
    'promptstamp_export_seconds_bucket{le="+Inf",signal="traces"}',
    'promptstamp_export_seconds_sum{signal="traces"}',
    "process_resident_memory_bytes",
]


def test_health_serving_and_metrics_listed(upstream: Upstream, tmp_path: Path) -> None:
    upstream.fail(503, times=1)
    relay = RelayServer(config(upstream.base_url, **{
        "metrics_listen": "127.0.0.1:0", "queue.directory": str(tmp_path / "q"), "hold.seconds": 0.05,
    })).start()
    channel = grpc.insecure_channel(relay.address)
    sender = Sender(relay.address)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        assert stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status == \
            health_pb2.HealthCheckResponse.SERVING
        gen = sender.make(2, attributes=GEN)
        assert sender.send(gen)
        upstream.wait_for_spans(ids(gen), timeout=10)
        wait_until(lambda: relay.trace_queue.stats.exported_items == 2, 5, "the export to settle")
        text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics", timeout=5).read().decode()
        missing = [m for m in METRICS if f"\n{m} " not in f"\n{text}"]
        assert not missing, missing
        assert scrape(text, "promptstamp_spans_received_total") == 2
        assert scrape(text, "promptstamp_spans_stamped_total", 'tier="unresolved"') == 2
        assert scrape(text, "promptstamp_export_retries_total", 'signal="traces"') == 1
        assert scrape(text, "promptstamp_exported_items_total", 'signal="traces"') == 2
    finally:
        sender.close()
        channel.close()
        relay.stop(timeout=5)
