"""A bounded queue between receiving and exporting, drained by N worker threads with retries.

In memory by default; with a :class:`~.persistent.Journal` every item is a database row first
(written in the receiving request's transaction) and the queue keeps only its id and size.

Accounting: every item that enters ends in exactly one of ``exported_items``,
``rejected_items`` (upstream partial success), ``failed_permanent_items`` (permanent error or
retries spent), ``lost_items`` (memory mode: not sent by the shutdown deadline) or
``kept_items`` (persistent mode: left on disk at shutdown, re-sent at the next start).
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ..export import Exporter, ExportResult
from .persistent import Journal, JournalError
from .retry import Backoff

__all__ = ["LATENCY_BUCKETS", "SHUTDOWN_GRACE_SECONDS", "DeliveryItem", "DeliveryQueue", "DeliveryStats"]

log = logging.getLogger("promptstamp_relay.deliver")

#: Upper bounds (seconds) of the export-latency histogram buckets; one more bucket for +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: After the shutdown deadline, how long an export attempt already on the wire may still finish.
SHUTDOWN_GRACE_SECONDS = 1.0

_Outcome = Literal["exported", "failed", "aborted"]
_Bytes = bytes  # DeliveryQueue.bytes (a property) shadows the type inside the class


@dataclass(slots=True)
class DeliveryItem:
    payload: bytes  # an encoded Export*ServiceRequest (b"" once it is on disk)
    items: int  # spans or log records in it
    tenant: str = "default"
    id: int = 0  # persistent-queue row id, 0 in memory
    size: int = -1  # bytes counted against the bound; len(payload) when not given

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)


@dataclass
class DeliveryStats:
    """Only ever incremented, except the gauges the queue reports itself (depth, bytes)."""

    exported_items: int = 0
    exported_requests: int = 0
    retries: int = 0
    failed_permanent_items: int = 0
    failed_permanent_requests: int = 0
    rejected_items: int = 0  # upstream partial success
    lost_items: int = 0  # memory mode: not delivered by the shutdown deadline (always logged)
    kept_items: int = 0  # persistent mode: left on disk at shutdown for the next start
    recovered_items: int = 0  # persistent mode: found on disk at start, re-sent
    recovered_requests: int = 0
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


Sink = Callable[[DeliveryItem], None]


class DeliveryQueue:
    """FIFO of encoded requests for one signal, bounded in requests and bytes.

    Admission (receiver threads) never blocks: :meth:`try_reserve` answers False when the queue
    is at a bound, and the receiver refuses the data with a retryable status; what it admits it
    then hands to :meth:`put` and releases with :meth:`unreserve`. ``put`` itself always
    succeeds: it is also the way in for data the relay already owns (released held spans). The
    byte count covers queued items, items being exported (until their outcome is known) and
    open reservations.

    Workers take items in order and export each, retrying retryable failures with
    :class:`Backoff`.
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
        journal: Journal | None = None,
    ) -> None:
        self._exporter_for = exporter_for
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self._backoff = backoff or Backoff()
        self._journal = journal
        self._items: deque[DeliveryItem] = deque()
        self._inflight: dict[int, DeliveryItem] = {}  # id(item) -> item
        self._bytes = 0  # queued + in flight
        self._reserved = 0  # bytes admitted, not yet put
        self._reserved_requests = 0
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, name=f"deliver-{name}-{i}", daemon=True)
            for i in range(workers)
        ]
        self._on_done = on_done
        self._started = False
        self.stats = DeliveryStats()
        self.name = name

    @property
    def persistent(self) -> bool:
        return self._journal is not None

    # -- producer side ------------------------------------------------------------------------
    def start(self) -> None:
        """Load what an earlier run left on disk (it goes first), then start the workers."""
        if self._started:
            return
        self._started = True
        if self._journal is not None:
            with self._cond:
                queued = {i.id for i in self._items}  # put before start: already here, and newer
                rows = [r for r in self._journal.pending_items(self.name) if r.id not in queued]
                self._items.extendleft(
                    DeliveryItem(b"", r.items, r.tenant, id=r.id, size=r.size) for r in reversed(rows)
                )
                self._bytes += sum(r.size for r in rows)
            if rows:
                n = sum(r.items for r in rows)
                self.stats.recovered_requests += len(rows)
                self.stats.recovered_items += n
                log.warning("%s: re-sending %d requests (%d items) left in the persistent queue "
                            "by an earlier run", self.name, len(rows), n)
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        """Requests queued or being exported."""
        return len(self._items) + len(self._inflight)

    @property
    def bytes(self) -> int:
        """Bytes of the requests queued or being exported (on disk in persistent mode)."""
        return self._bytes

    def has_room(self, size: int, extra_bytes: int = 0) -> bool:
        with self._cond:
            return self._room(size, extra_bytes)

    def _room(self, size: int, extra_bytes: int) -> bool:
        return (
            not self._stopping.is_set()
            and self.depth + self._reserved_requests < self.max_requests
            and self._bytes + self._reserved + size + extra_bytes <= self.max_bytes
        )

    def try_reserve(self, size: int, extra_bytes: int = 0) -> bool:
        """Atomically check the bounds for ``size`` more bytes and hold them until ``unreserve``.

        ``extra_bytes``: what else shares the bound (held spans, the other signal's queue).
        """
        with self._cond:
            if not self._room(size, extra_bytes):
                return False
            self._reserved += size
            self._reserved_requests += 1
            return True

    def unreserve(self, size: int) -> None:
        with self._cond:
            self._reserved -= size
            self._reserved_requests -= 1

    def offer(self, item: DeliveryItem, extra_bytes: int = 0) -> bool:
        """``put`` if there is room, else False."""
        if not self.try_reserve(item.size, extra_bytes):
            return False
        try:
            self.put(item)
        finally:
            self.unreserve(item.size)
        return True

    def put(self, item: DeliveryItem) -> None:
        """Queue ``item``. Persistent: a row in the caller's transaction, queued at its commit."""
        if self._journal is None:
            with self._cond:
                self._append(item)
            return
        journal = self._journal
        with journal.transaction():
            item.id = journal.add_item(self.name, item.tenant, item.items, item.payload)
            item.payload = b""  # on disk now; read back by the worker that sends it
            journal.after_commit(lambda: self._publish(item))

    def _publish(self, item: DeliveryItem) -> None:
        with self._cond:
            self._append(item)

    def _append(self, item: DeliveryItem) -> None:
        self._items.append(item)
        self._bytes += item.size
        self._cond.notify()

    # -- workers -------------------------------------------------------------------------------
    def _take(self) -> DeliveryItem | None:
        with self._cond:
            while True:
                if self._abort.is_set():
                    return None
                if self._items:
                    item = self._items.popleft()
                    self._inflight[id(item)] = item
                    return item
                if self._stopping.is_set():
                    return None
                self._cond.wait(0.5)

    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            try:
                self._deliver(item)
            except Exception as e:  # an exporter bug must not kill the worker
                log.exception("%s exporter raised", self.name)
                self._settle(item, "failed", why=f"exporter raised {type(e).__name__}: {e}")

    def _payload(self, item: DeliveryItem) -> _Bytes | None:
        if item.payload or self._journal is None:
            return item.payload
        return self._journal.item_payload(item.id)

    def _deliver(self, item: DeliveryItem) -> None:
        payload = self._payload(item)
        if payload is None:
            self._settle(item, "failed", why=f"persistent queue row {item.id} vanished")
            return
        exporter = self._exporter_for(item.tenant)
        run = self._backoff.delays()
        while True:
            if self._abort.is_set():
                self._settle(item, "aborted")
                return
            t0 = time.monotonic()
            result: ExportResult = exporter.export(payload)
            self.stats.observe_latency(time.monotonic() - t0)
            if result.ok:
                self._settle(item, "exported", result)
                return
            if result.outcome == "permanent":
                self._settle(item, "failed", why=f"export failed permanently: {result.message}")
                return
            if self._abort.is_set():
                self._settle(item, "aborted")
                return
            delay = run.next_delay(result.retry_after)
            if delay is None:
                self._settle(item, "failed", why=f"export gave up after retrying for {run.elapsed:.1f}s: "
                                                 f"{result.message}")
                return
            self.stats.retries += 1
            log.info("%s export will retry in %.2fs: %s", self.name, delay, result.message)
            if self._abort.wait(delay):
                self._settle(item, "aborted")
                return

    def _settle(self, item: DeliveryItem, outcome: _Outcome, result: ExportResult | None = None,
                why: str = "") -> None:
        """Account for ``item`` exactly once: a no-op if shutdown already gave up on it."""
        with self._cond:
            if self._inflight.pop(id(item), None) is None:
                return
            self._bytes -= item.size
            self._cond.notify_all()
        st = self.stats
        if outcome == "aborted":
            self._not_sent([item], "shutting down before delivery")
            return
        if outcome == "exported":
            rejected = result.rejected if result is not None else 0
            st.exported_requests += 1
            st.exported_items += item.items - rejected
            if result is not None and (result.rejected or result.message):
                st.rejected_items += rejected
                log.warning("%s upstream rejected %d of %d items (partial success): %s",
                            self.name, rejected, item.items, result.message)
        else:
            st.failed_permanent_items += item.items
            st.failed_permanent_requests += 1
            log.error("%s: %s; %d items not delivered", self.name, why, item.items)
        if self._journal is not None:
            try:
                self._journal.delete_item(item.id)
            except JournalError as e:  # the row stays: sent again at the next start (at least once)
                log.warning("%s: could not delete settled row %d: %s", self.name, item.id, e)
        if self._on_done is not None:
            self._on_done(item)

    def _not_sent(self, items: list[DeliveryItem], why: str) -> None:
        if not items:
            return
        n = sum(i.items for i in items)
        if self._journal is not None:
            self.stats.kept_items += n
            log.warning("%s: %s: %d items in %d requests kept in the persistent queue for the "
                        "next start", self.name, why, n, len(items))
        else:
            self.stats.lost_items += n
            log.error("%s: %s: %d items in %d requests lost (in-memory queue)",
                      self.name, why, n, len(items))

    # -- shutdown ------------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> int:
        """Stop taking new data, drain for up to ``timeout`` seconds, then give up on the rest.

        An export already on the wire at the deadline gets :data:`SHUTDOWN_GRACE_SECONDS` more.
        Returns how many items were lost (memory mode; each one logged and counted). In
        persistent mode what is left stays on disk and 0 is returned.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        lost_before = self.stats.lost_items
        with self._cond:
            self._stopping.set()
            self._cond.notify_all()
            while (self._items or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
        self._abort.set()
        with self._cond:
            self._cond.notify_all()
        grace = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=max(0.0, grace - time.monotonic()))
        with self._cond:
            rest = list(self._items)
            stuck = list(self._inflight.values())
            self._items.clear()
            self._inflight.clear()
            self._bytes = 0
        self._not_sent(rest, "not sent by the shutdown deadline")
        self._not_sent(stuck, "export still in flight at the shutdown deadline, outcome unknown")
        return self.stats.lost_items - lost_before
