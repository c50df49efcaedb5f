"""Upstream down: what the relay keeps stays within queue.max_bytes, and so does its memory."""

from __future__ import annotations

from pathlib import Path

import grpc

from tests.otlp_builders import TRACES_EXPORT
from tests.relays import RelayProcess

from .conftest import NO_UPSTREAM_CHECK, Sender, base_settings
from .upstream import Upstream

MiB = 1024 * 1024


def test_memory_stays_within_the_configured_limit_while_upstream_is_down(
    upstream: Upstream, tmp_path: Path
) -> None:
    upstream.fail(503)  # down for the whole test
    limit = 4 * MiB
    settings = base_settings(upstream.base_url, **{
        "queue.max_bytes": limit, "queue.max_requests": 10_000, "retry.max_elapsed_seconds": 0,
        "retry.initial_interval_seconds": 0.2, "retry.max_interval_seconds": 1,
    })
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, settings=settings)
    channel = grpc.insecure_channel(relay.address)
    sender = Sender(relay.address)
    try:
        export = channel.unary_unary(TRACES_EXPORT)
        body = sender.exporter._translate_data(sender.make(10, pad=10_000)).SerializeToString()
        assert 90_000 < len(body) < 120_000
        export(body, timeout=5)  # warm up: imports, threads, first allocations
        baseline = relay.metric("process_resident_memory_bytes")
        accepted = refused = 0
        peak_kept = 0.0
        for i in range(1000):  # ~100 MB offered, 25x the limit
            try:
                export(body, timeout=5)
                accepted += 1
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
                refused += 1
            if i % 50 == 0:
                kept = relay.metric("promptstamp_queue_bytes", 'signal="traces"') + relay.metric(
                    "promptstamp_held_bytes")
                peak_kept = max(peak_kept, kept)
                assert kept <= limit
        rss = relay.metric("process_resident_memory_bytes")
        queued = relay.metric("promptstamp_queue_bytes", 'signal="traces"')
        assert relay.metric("promptstamp_queue_limit_bytes") == limit
        assert relay.metric("promptstamp_requests_refused_backpressure_total") == refused
        assert accepted * len(body) <= limit + len(body) and queued <= limit
        assert refused >= 900
        growth = rss - baseline
        print(f"\naccepted {accepted}, refused {refused}, queued {queued / MiB:.2f} MiB, "
              f"RSS {baseline / MiB:.1f} -> {rss / MiB:.1f} MiB (+{growth / MiB:.1f})")
        # Without the bound the relay would hold ~100 MB; with it, the queue (4 MiB) plus noise.
        assert growth < limit + 24 * MiB
    finally:
        channel.close()
        sender.close()
        relay.kill()  # no drain: the upstream is down for good
        relay.stop()
