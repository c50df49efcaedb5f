"""SIGTERM with a slow upstream: drained within the bound, or kept on disk, or counted lost."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tests.relays import RelayProcess

from .conftest import GEN, NO_UPSTREAM_CHECK, Sender, base_settings, ids
from .upstream import Upstream

SHUTDOWN_TIMEOUT = 1.0
# timeout + the grace for an export already on the wire (1 s) + process start-up/teardown slack
EXIT_BOUND = SHUTDOWN_TIMEOUT + 1.0 + 2.0


def _fill(relay: RelayProcess, batches: int) -> set[bytes]:
    sender = Sender(relay.address)
    sent: set[bytes] = set()
    try:
        for _ in range(batches):
            batch = sender.make(10)
            assert sender.send(batch)
            sent |= ids(batch)
    finally:
        sender.close()
    return sent


def test_sigterm_slow_upstream_persistent_drains_within_the_bound_and_keeps_the_rest(
    upstream: Upstream, tmp_path: Path
) -> None:
    upstream.delay(0.3)  # ~3 requests a second with one worker
    qdir = tmp_path / "q"
    settings = base_settings(upstream.base_url, **{
        "queue.workers": 1, "queue.shutdown_timeout_seconds": SHUTDOWN_TIMEOUT,
    })
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir), settings=settings, name="run1")
    try:
        sent = _fill(relay, 20)
        t0 = time.monotonic()
        rc = relay.terminate()
        took = time.monotonic() - t0
        log = relay.stderr()
    finally:
        relay.stop()
    assert rc == 0, log
    print(f"\npersistent: SIGTERM to exit {took:.2f}s")
    assert took < EXIT_BOUND, took
    kept = int(re.search(r"shutdown: (\d+) items kept in the persistent queue", log)[1])  # type: ignore[index]
    delivered = upstream.accepted_span_ids()
    assert 0 < len(delivered) < len(sent) and kept > 0
    assert len(set(delivered)) + kept >= len(sent)  # nothing unaccounted for
    # The next start sends what was kept.
    upstream.delay(0)
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir), settings=settings, name="run2")
    try:
        upstream.wait_for_spans(sent, timeout=20)
    finally:
        assert relay.terminate() == 0
        relay.stop()


def test_sigterm_slow_upstream_memory_mode_counts_and_logs_what_is_lost(
    upstream: Upstream, tmp_path: Path
) -> None:
    upstream.delay(0.3)
    settings = base_settings(upstream.base_url, **{
        "queue.workers": 1, "queue.shutdown_timeout_seconds": SHUTDOWN_TIMEOUT,
    })
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, settings=settings)
    try:
        sent = _fill(relay, 20)
        t0 = time.monotonic()
        rc = relay.terminate()
        took = time.monotonic() - t0
        log = relay.stderr()
    finally:
        relay.stop()
    print(f"\nmemory: SIGTERM to exit {took:.2f}s")
    assert took < EXIT_BOUND, took
    assert rc == 4, log  # EXIT_LOST
    lost = int(re.search(r"shutdown: (\d+) items could not be delivered", log)[1])  # type: ignore[index]
    assert "lost (in-memory queue)" in log
    delivered = set(upstream.accepted_span_ids())
    assert lost > 0 and len(delivered) + lost >= len(sent)


def test_sigterm_releases_held_spans_and_drains_everything_and_exits_0(
    upstream: Upstream, tmp_path: Path
) -> None:
    upstream.delay(0.02)
    settings = base_settings(upstream.base_url, **{"queue.shutdown_timeout_seconds": 10, "hold.seconds": 30})
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, settings=settings)
    sender = Sender(relay.address)
    try:
        sent = _fill(relay, 20)
        held = sender.make(3, attributes=GEN)  # generations with no fetch log: held for 30 s
        assert sender.send(held)
        assert relay.metric("promptstamp_held_spans") == 3
        t0 = time.monotonic()
        rc = relay.terminate()
        took = time.monotonic() - t0
        log = relay.stderr()
    finally:
        sender.close()
        relay.stop()
    assert rc == 0, log
    assert "nothing lost" in log and took < 10
    assert set(upstream.accepted_span_ids()) == sent | ids(held)
