"""Every item put into a delivery queue ends in exactly one bucket, under concurrent load.

Several threads put while the workers export to a flaky fake exporter (OK, retryable, permanent,
partial success, raising), the queue shuts down while they are still putting, and more items
arrive after it: ``received == delivered + failed + lost`` (memory) or ``+ kept`` (persistent,
where every kept item is also still a row on disk), exactly.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from promptstamp_relay.deliver import DeliveryItem, MemoryQueue, PersistentQueue, QueueConfig
from promptstamp_relay.deliver.persistent import pending_rows
from promptstamp_relay.deliver.queue import WorkerQueue
from promptstamp_relay.export import ExportResult
from promptstamp_relay.export.retry import Backoff
from promptstamp_relay.journal import Journal
from tests.fakes import Answer, FakeExporter
from tests.waiting import wait_until

PUTTERS = 4
PER_PUTTER = 400
FAST = Backoff(initial=0.001, maximum=0.002, max_elapsed=0.05, randomization=0)


def flaky(seed: int) -> FakeExporter:
    """Answers at random (seeded): OK, retry, permanent, partial success, or raises."""
    rng = random.Random(seed)

    def answer() -> Answer:
        r = rng.random()
        if r < 0.45:
            return ExportResult("ok")
        if r < 0.65:
            return ExportResult("retry", "503 injected")
        if r < 0.75:
            return ExportResult("permanent", "400 injected")
        if r < 0.9:
            return ExportResult("ok", "1 span too old", rejected=1)
        return RuntimeError("injected exporter bug")

    return FakeExporter(then=answer, record=False)


def _load(q: WorkerQueue, exporter: FakeExporter) -> int:
    """Put from several threads across the shutdown and after it; the items put in all."""
    totals = [0] * PUTTERS
    halfway = threading.Barrier(PUTTERS + 1)

    def putter(k: int) -> None:
        rng = random.Random(k)
        for i in range(PER_PUTTER):
            if i == PER_PUTTER // 2:
                halfway.wait(10)
            n = rng.randint(1, 5)
            q.put(DeliveryItem(b"x" * n, n, tenant=f"t{k}"))
            totals[k] += n

    threads = [threading.Thread(target=putter, args=(k,)) for k in range(PUTTERS)]
    for t in threads:
        t.start()
    halfway.wait(10)
    wait_until(lambda: exporter.calls >= 50, 10, "the workers to be exporting")
    q.shutdown(0.05)  # while the putters are still putting
    after = 0
    for _ in range(5):  # and some more once it is over
        q.put(DeliveryItem(b"yy", 2))
        after += 2
    for t in threads:
        t.join(30)
        assert not t.is_alive()
    return sum(totals) + after


def _settled(q: WorkerQueue) -> int:
    st = q.stats
    return st.exported_items + st.rejected_items + st.failed_permanent_items + st.lost_items + st.kept_items


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_memory_queue_accounts_for_every_item_under_concurrent_load(seed: int) -> None:
    exporter = flaky(seed)
    q = MemoryQueue(lambda t: exporter, QueueConfig(max_requests=10_000, workers=4), backoff=FAST)
    q.start()
    received = _load(q, exporter)
    st = q.stats
    assert st.kept_items == 0 and st.lost_items > 0  # shut down mid-load: some were lost
    assert st.exported_items > 0 and st.rejected_items > 0 and st.failed_permanent_items > 0
    assert _settled(q) == received
    assert (q.depth, q.bytes) == (0, 0)


@pytest.mark.parametrize("seed", [4, 5])
def test_persistent_queue_accounts_for_every_item_and_keeps_them_on_disk(tmp_path: Path, seed: int) -> None:
    exporter = flaky(seed)
    journal = Journal(tmp_path, synchronous="normal")
    try:
        q = PersistentQueue(lambda t: exporter, journal, QueueConfig(max_requests=10_000, workers=4),
                            backoff=FAST)
        q.start()
        received = _load(q, exporter)
        st = q.stats
        assert st.lost_items == 0 and st.kept_items > 0
        assert st.exported_items > 0 and st.failed_permanent_items > 0
        assert _settled(q) == received
        # What was kept is exactly what is still on disk for the next start.
        assert sum(r.items for r in pending_rows(journal, "traces")) == st.kept_items
    finally:
        journal.close()
