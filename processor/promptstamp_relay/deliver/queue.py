"""A bounded queue between receiving and exporting, drained by N worker threads with retries."""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..export import Exporter, ExportResult
from .retry import Backoff

__all__ = ["LATENCY_BUCKETS", "DeliveryItem", "DeliveryQueue", "DeliveryStats"]

log = logging.getLogger("promptstamp_relay.deliver")

#: Upper bounds (seconds) of the export-latency histogram buckets; one more bucket for +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(slots=True)
class DeliveryItem:
    payload: bytes  # an encoded Export*ServiceRequest
    items: int  # spans or log records in it
    tenant: str = "default"
    id: int = 0  # persistent-queue row id, 0 in memory


@dataclass
class DeliveryStats:
    """Only ever incremented, except the two gauges (depth, bytes) which the queue reports."""

    exported_items: int = 0
    exported_requests: int = 0
    retries: int = 0
    failed_permanent_items: int = 0
    rejected_items: int = 0  # upstream partial success
    lost_items: int = 0  # given up at shutdown in memory mode (always logged)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


Sink = Callable[[DeliveryItem], None]


class DeliveryQueue:
    """FIFO of encoded requests for one exporter.

    ``offer`` (receiver threads) never blocks: it answers False when the queue is at its
    request or byte bound and the receiver refuses the data with a retryable status. ``put``
    is for data the relay already owns (released held spans): it always succeeds.
    Workers export one item at a time, retrying retryable failures with :class:`Backoff`.
    """

    def __init__(
        self,
        exporter_for: Callable[[str], Exporter],
        *,
        max_requests: int = 1000,
        max_bytes: int = 256 * 1024 * 1024,
        workers: int = 2,
        backoff: Backoff | None = None,
        name: str = "traces",
        on_done: Sink | None = None,
    ) -> None:
        self._exporter_for = exporter_for
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._backoff = backoff or Backoff()
        self._items: deque[DeliveryItem] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._busy = 0
        self._threads = [
            threading.Thread(target=self._work, name=f"deliver-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._on_done = on_done
        self.stats = DeliveryStats()
        self.name = name

    # -- producer side ------------------------------------------------------------------------
    def start(self) -> None:
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._items) + self._busy

    @property
    def bytes(self) -> int:
        return self._bytes

    def has_room(self, size: int, extra_bytes: int = 0) -> bool:
        with self._cond:
            return (
                len(self._items) < self.max_requests
                and self._bytes + size + extra_bytes <= self.max_bytes
            )

    def offer(self, item: DeliveryItem, extra_bytes: int = 0) -> bool:
        with self._cond:
            if self._stopping.is_set():
                return False
            full = len(self._items) >= self.max_requests
            if full or self._bytes + len(item.payload) + extra_bytes > self.max_bytes:
                return False
            self._append(item)
            return True

    def put(self, item: DeliveryItem) -> None:
        with self._cond:
            self._append(item)

    def _append(self, item: DeliveryItem) -> None:
        self._items.append(item)
        self._bytes += len(item.payload)
        self._cond.notify()

    # -- workers -------------------------------------------------------------------------------
    def _take(self) -> DeliveryItem | None:
        with self._cond:
            while not self._items:
                if self._stopping.is_set():
                    return None
                self._cond.wait(0.5)
            item = self._items.popleft()
            self._bytes -= len(item.payload)
            self._busy += 1
            return item

    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception:  # an exporter bug must not kill the worker
                log.exception("%s exporter raised; %d items counted lost", self.name, item.items)
                self.stats.lost_items += item.items
            finally:
                with self._cond:
                    self._busy -= 1
                    self._cond.notify_all()

    def _deliver(self, item: DeliveryItem) -> None:
        exporter = self._exporter_for(item.tenant)
        run = self._backoff.delays()
        while True:
            t0 = time.monotonic()
            result: ExportResult = exporter.export(item.payload)
            self.stats.observe_latency(time.monotonic() - t0)
            if result.ok:
                self.stats.exported_requests += 1
                self.stats.exported_items += item.items - result.rejected
                if result.rejected:
                    self.stats.rejected_items += result.rejected
                    log.warning("%s upstream rejected %d of %d items (partial success): %s",
                                self.name, result.rejected, item.items, result.message)
                self._done(item)
                return
            if result.outcome == "permanent":
                self.stats.failed_permanent_items += item.items
                log.error("%s export failed permanently, %d items not delivered: %s",
                          self.name, item.items, result.message)
                self._done(item)
                return
            delay = None if self._abort.is_set() else run.next_delay(result.retry_after)
            if delay is None:
                self.stats.failed_permanent_items += item.items
                log.error("%s export gave up after retrying, %d items not delivered: %s",
                          self.name, item.items, result.message)
                self._done(item)
                return
            self.stats.retries += 1
            log.info("%s export will retry in %.2fs: %s", self.name, delay, result.message)
            if self._abort.wait(delay):
                # Shutdown deadline passed mid-retry: hand the item back as not delivered.
                self._give_up(item, result.message)
                return

    def _done(self, item: DeliveryItem) -> None:
        if self._on_done is not None:
            self._on_done(item)

    def _give_up(self, item: DeliveryItem, why: str) -> None:
        self.stats.lost_items += item.items
        log.error("%s: shutting down before delivery, %d items lost: %s", self.name, item.items, why)

    # -- shutdown ------------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> int:
        """Stop taking new data, drain for up to ``timeout`` seconds, then give up on the rest.

        Returns how many items were not delivered (each one logged and counted as lost).
        """
        deadline = time.monotonic() + timeout
        lost_before = self.stats.lost_items
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
            while (self._items or self._busy) and time.monotonic() < deadline:
                self._cond.wait(min(0.1, max(0.0, deadline - time.monotonic())))
        self._abort.set()
        for t in self._threads:
            t.join(timeout=max(0.1, deadline - time.monotonic()) + 5)
        with self._cond:
            rest = list(self._items)
            self._items.clear()
            self._bytes = 0
        lost = sum(i.items for i in rest)
        if lost:
            self.stats.lost_items += lost
            log.error("%s: %d items in %d requests not delivered before the shutdown deadline",
                      self.name, lost, len(rest))
        return self.stats.lost_items - lost_before
