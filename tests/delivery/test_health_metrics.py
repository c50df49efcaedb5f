"""Health (grpc.health.v1, /healthz, /readyz), the metrics listener and /metrics."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.otlp_builders import LOGS_SERVICE, METRICS_SERVICE, TRACE_SERVICE, TRACES_EXPORT
from tests.relays import running, scrape

from .conftest import GEN, Sender, config, ids, wait_until
from .upstream import Upstream

METRICS = [
    "promptstamp_spans_received_total",
    "promptstamp_logs_received_total",
    'promptstamp_spans_stamped_total{tier="unresolved"}',
    'promptstamp_spans_stamped_total{tier="api"}',  # every tier's series exists from the start
    'promptstamp_unresolved_total{reason="fallback_only"}',
    'promptstamp_export_seconds_count{signal="traces"}',
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
    with running(config(upstream.base_url, **{
        "metrics_listen": "127.0.0.1:0", "queue.directory": str(tmp_path / "q"), "hold.seconds": 0.05,
    })) as relay:
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
            assert scrape(text, "promptstamp_spans_stamped_total", 'tier="api"') == 0
            info = [line for line in text.splitlines() if line.startswith("promptstamp_build_info{")]
            assert len(info) == 1 and info[0].endswith(" 1.0")
            assert all(f'{k}="' in info[0] for k in ("version", "python", "protobuf_backend", "native"))
        finally:
            sender.close()
            channel.close()


SERVICES = ("", TRACE_SERVICE, LOGS_SERVICE, METRICS_SERVICE)


def _health(channel: grpc.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status)
    except grpc.RpcError:
        return -1  # the listener is gone


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_health_answers_for_every_otlp_service_and_says_not_serving_while_draining(upstream: Upstream) -> None:
    with running(config(upstream.base_url, **{"metrics_listen": "127.0.0.1:0"}), timeout=1) as relay:
        channel = grpc.insecure_channel(relay.address)
        sender = Sender(relay.address)
        stopping: threading.Thread | None = None
        base = f"http://127.0.0.1:{relay.metrics_port}"
        try:
            for service in SERVICES:
                assert _health(channel, service) == health_pb2.HealthCheckResponse.SERVING, service
            assert _get(f"{base}/healthz")[0] == 200
            assert _get(f"{base}/readyz") == (200, "ready\n")
            upstream.fail(503)  # nothing can be delivered: the drain takes its whole timeout
            assert sender.send(sender.make(1))
            stopping = threading.Thread(target=relay.stop, kwargs={"timeout": 2.0})
            stopping.start()
            wait_until(lambda: all(_health(channel, s) == health_pb2.HealthCheckResponse.NOT_SERVING
                                   for s in SERVICES), 5, "NOT_SERVING while draining")
            assert stopping.is_alive()  # still draining
            status, body = _get(f"{base}/readyz")
            assert status == 503 and "draining" in body
            assert _get(f"{base}/healthz")[0] == 503
            # New data is refused as retryable while draining.
            try:
                channel.unary_unary(TRACES_EXPORT)(b"", timeout=2)
                raise AssertionError("accepted while draining")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE or _health(channel, "") == -1
        finally:
            sender.close()
            channel.close()
            if stopping is not None:
                stopping.join(timeout=10)


def test_readyz_follows_the_upstream_check_and_the_queue_bound(upstream: Upstream) -> None:
    with running(config(upstream.base_url, **{"metrics_listen": "127.0.0.1:0", "queue.max_requests": 1}),
                 timeout=2) as relay:
        sender = Sender(relay.address)
        base = f"http://127.0.0.1:{relay.metrics_port}"
        try:
            relay.upstream_ok = False
            status, body = _get(f"{base}/readyz")
            assert status == 503 and "upstream" in body
            assert _get(f"{base}/healthz")[0] == 200  # live all the same
            relay.upstream_ok = True
            upstream.fail(503)
            assert sender.send(sender.make(1))
            wait_until(lambda: _get(f"{base}/readyz")[0] == 503, 5, "not ready with a full queue")
            assert "queue full" in _get(f"{base}/readyz")[1]
            upstream.recover()
            wait_until(lambda: _get(f"{base}/readyz")[0] == 200, 10, "ready again once the queue drained")
        finally:
            sender.close()


def test_the_otel_sdk_metric_exporter_gets_ok_and_its_points_are_counted(upstream: Upstream) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader, MetricExportResult

    with running(config(upstream.base_url, **{"metrics_listen": "127.0.0.1:0"}), timeout=2) as relay:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        exporter = OTLPMetricExporter(endpoint=relay.address, insecure=True, timeout=5)
        try:
            counter = provider.get_meter("health-test").create_counter("orders")
            counter.add(3, {"shop": "a"})
            counter.add(1, {"shop": "b"})
            data = reader.get_metrics_data()
            assert data is not None
            assert exporter.export(data) == MetricExportResult.SUCCESS
            text = _get(f"http://127.0.0.1:{relay.metrics_port}/metrics")[1]
            assert scrape(text, "promptstamp_metric_points_received_total") == 2  # one point per shop
        finally:
            exporter.shutdown()
            provider.shutdown()


def test_the_listener_serves_registered_routes_and_refuses_the_rest() -> None:
    from promptstamp_relay.ops.listener import HttpRequest, HttpResponse, MetricsListener

    seen: list[HttpRequest] = []

    def echo(req: HttpRequest) -> HttpResponse:
        seen.append(req)
        return HttpResponse(200, req.method.encode() + b" " + req.path.encode() + b" " + req.body,
                            "application/json", {"X-Test": "1"})

    listener = MetricsListener("127.0.0.1:0")
    listener.route("GET", "/api/v1/prompts", echo)
    listener.route("POST", "/api/v1/webhooks/langfuse", echo)
    listener.start()
    base = f"http://127.0.0.1:{listener.port}"
    try:
        assert _get(f"{base}/api/v1/prompts/order-status?label=production") == \
            (200, "GET /api/v1/prompts/order-status ")
        assert seen[-1].query == {"label": ["production"]}
        post = urllib.request.Request(f"{base}/api/v1/webhooks/langfuse", data=b'{"a": 1}',
                                      headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(post, timeout=5) as r:
            assert (r.status, r.read(), r.headers["X-Test"]) == (200, b'POST /api/v1/webhooks/langfuse {"a": 1}', "1")
        assert seen[-1].headers["content-type"] == "application/json"
        assert _get(f"{base}/api/v1/promptsX")[0] == 404  # a prefix is a path segment, not a string prefix
        assert _get(f"{base}/nothing")[0] == 404
        assert _get(f"{base}/api/v1/webhooks/langfuse")[0] == 405
        big = urllib.request.Request(f"{base}/api/v1/webhooks/langfuse", data=b"x" * (2 << 20), method="POST")
        try:
            urllib.request.urlopen(big, timeout=5)
            raise AssertionError("a 2 MB body was read")
        except urllib.error.HTTPError as e:
            assert e.code == 413
        except (ConnectionError, urllib.error.URLError):
            pass  # the listener closed the connection while the body was still being sent
    finally:
        listener.stop()
        listener.stop()
