"""The delivery queue: one interface, and the workers both implementations share.

A :class:`DeliveryQueue` sits between receiving and exporting, for one signal: bounded in
requests and bytes, drained by N worker threads that export each request and retry retryable
failures with :class:`~.retry.Backoff`. Two implementations, the OpenTelemetry Collector's
exporterhelper shape: :class:`~.memory.MemoryQueue` (the default) and
:class:`~.persistent.PersistentQueue` (every request a database row before the sender's OK).
They differ only in where a request lives, what a restart finds and what shutdown gives up.

Accounting, exact under any concurrency (every counter changes under the queue's lock): every
item that enters ends in exactly one of ``exported_items``, ``rejected_items`` (upstream partial
success), ``failed_permanent_items`` (permanent error or retries spent), ``lost_items`` (memory:
not sent by the shutdown deadline, or put after it) or ``kept_items`` (persistent: left on disk
at shutdown, re-sent at the next start).

Threads: receiver threads call :meth:`~DeliveryQueue.try_reserve`, :meth:`~DeliveryQueue.put`
and :meth:`~DeliveryQueue.unreserve`; the relay's ticker calls ``put``; the workers export;
the lifecycle calls ``start`` and ``shutdown``.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ..counters import Counters, count, metric
from ..export.retry import Backoff
from ._config import QueueConfig

if TYPE_CHECKING:  # the exporters import deliver.retry: no import of export/ at run time
    from ..export import Exporter, ExportResult

__all__ = [
    "LATENCY_BUCKETS",
    "SHUTDOWN_GRACE_SECONDS",
    "DeliveryItem",
    "DeliveryQueue",
    "DeliveryStats",
    "ExporterFor",
]

log = logging.getLogger("promptstamp_relay.deliver")

#: Upper bounds (seconds) of the export-latency histogram buckets; one more bucket for +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: After the shutdown deadline, how long an export attempt already on the wire may still finish.
SHUTDOWN_GRACE_SECONDS = 1.0

#: The exporter for a tenant's requests (tenants may have their own upstream credentials).
ExporterFor = Callable[[str], "Exporter"]

_Outcome = Literal["exported", "failed", "aborted"]
_Bytes = bytes  # DeliveryQueue.bytes (a property) shadows the type inside the classes


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
class DeliveryStats(Counters):
    """A queue's counters, exported per queue (label ``signal``). Only ever incremented, by the
    queue, under its lock."""

    exported_items: int = metric("Items exported upstream")
    exported_requests: int = metric("Requests exported upstream")
    retries: int = metric("Export attempts retried", name="export_retries")
    failed_permanent_items: int = metric("Items that failed permanently", name="export_failed_items")
    failed_permanent_requests: int = metric("Requests that failed permanently", name="export_failed_requests")
    rejected_items: int = metric("Items rejected by upstream partial success", name="export_rejected_items")
    lost_items: int = metric("Items given up at shutdown (memory mode)")  # always logged too
    kept_items: int = metric("Items left in the persistent queue at shutdown, for the next start")
    recovered_items: int = metric("Items found in the persistent queue at start and re-sent")
    recovered_requests: int = metric("Requests found in the persistent queue at start and re-sent")
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


class DeliveryQueue(Protocol):
    """FIFO of encoded requests for one signal, bounded in requests and bytes.

    Admission never blocks: :meth:`try_reserve` answers False when the queue is at a bound (the
    receiver then refuses the data with a retryable status); what it admits it hands to
    :meth:`put` and releases with :meth:`unreserve`. ``put`` itself always succeeds: it is also
    the way in for data the relay already owns (released held spans). The byte count covers
    queued items, items being exported (until their outcome is known) and open reservations.
    """

    name: str
    stats: DeliveryStats
    max_requests: int
    max_bytes: int

    def start(self) -> None:
        """Start the workers (persistent: after queuing what an earlier run left)."""

    def put(self, item: DeliveryItem) -> None:
        """Queue ``item`` (persistent: a row in the caller's transaction, queued at its commit)."""

    def try_reserve(self, size: int, extra_bytes: int = 0) -> bool:
        """Atomically check the bounds for ``size`` more bytes and hold them until ``unreserve``.
        ``extra_bytes``: what else shares the bound (held spans, the other signal's queue)."""

    def unreserve(self, size: int) -> None:
        """Release a reservation ``try_reserve`` granted."""

    def shutdown(self, timeout: float) -> int:
        """Stop taking new data, drain for up to ``timeout`` seconds, give up on the rest;
        return how many items were lost (always 0 for a persistent queue: they stay on disk)."""

    @property
    def depth(self) -> int:
        """Requests queued or being exported."""

    @property
    def bytes(self) -> int:
        """Bytes of the requests queued or being exported (on disk for a persistent queue)."""


class WorkerQueue(ABC):
    """What both queues share: the bounds, the workers, retries and the exact accounting.

    Subclasses say where an item lives: :meth:`put`, :meth:`_payload`, :meth:`_settled`,
    :meth:`_give_up` and, optionally, :meth:`_recover`.
    """

    def __init__(
        self,
        exporter_for: ExporterFor,
        config: QueueConfig | None = None,
        *,
        backoff: Backoff | None = None,
        name: str = "traces",
        workers: int | None = None,
    ) -> None:
        cfg = config or QueueConfig()
        self._exporter_for = exporter_for
        self.name = name
        self.max_requests = cfg.max_requests
        self.max_bytes = cfg.max_bytes
        self._backoff = backoff or Backoff()
        self._items: deque[DeliveryItem] = deque()
        self._inflight: dict[int, DeliveryItem] = {}  # id(item) -> item
        self._bytes = 0  # queued + in flight
        self._reserved = 0  # bytes admitted, not yet put
        self._reserved_requests = 0
        self._cond = threading.Condition()  # guards everything above and every stats counter
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._closed = False  # shutdown has given up on what was left: later puts are not sent
        self._threads = [
            threading.Thread(target=self._work, name=f"deliver-{name}-{i}", daemon=True)
            for i in range(cfg.workers if workers is None else workers)
        ]
        self._started = False
        self.stats = DeliveryStats()

    # -- where an item lives (the implementations) ------------------------------------------------
    @abstractmethod
    def put(self, item: DeliveryItem) -> None: ...

    @abstractmethod
    def _payload(self, item: DeliveryItem) -> _Bytes | None:
        """The bytes to export, None when they are gone."""

    def _settled(self, item: DeliveryItem) -> None:
        """``item`` reached its outcome (worker thread, no lock held)."""
        return None

    @abstractmethod
    def _give_up(self, n_items: int) -> None:
        """Count ``n_items`` not sent at shutdown (lost or kept); called with the lock held."""

    @abstractmethod
    def _log_given_up(self, why: str, n_items: int, n_requests: int) -> None: ...

    def _recover(self) -> None:
        """Queue what an earlier run left, before the workers start."""
        return None

    # -- producer side ------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._recover()
        for t in self._threads:
            t.start()

    @property
    def depth(self) -> int:
        return len(self._items) + len(self._inflight)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _room(self, size: int, extra_bytes: int) -> bool:
        return (
            not self._stopping.is_set()
            and self.depth + self._reserved_requests < self.max_requests
            and self._bytes + self._reserved + size + extra_bytes <= self.max_bytes
        )

    def try_reserve(self, size: int, extra_bytes: int = 0) -> bool:
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

    def _append(self, item: DeliveryItem) -> None:
        with self._cond:
            if not self._closed:
                self._items.append(item)
                self._bytes += item.size
                self._cond.notify()
                return
            self._give_up(item.items)  # after shutdown: counted, never silently dropped
        self._log_given_up("put after shutdown", item.items, 1)

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
            took = time.monotonic() - t0
            with self._cond:
                self.stats.observe_latency(took)
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
            with self._cond:
                self.stats.retries += 1
            log.info("%s export will retry in %.2fs: %s", self.name, delay, result.message)
            if self._abort.wait(delay):
                self._settle(item, "aborted")
                return

    def _settle(self, item: DeliveryItem, outcome: _Outcome, result: ExportResult | None = None,
                why: str = "") -> None:
        """Account for ``item`` exactly once: a no-op if shutdown already gave up on it."""
        rejected = result.rejected if result is not None else 0
        with self._cond:
            if self._inflight.pop(id(item), None) is None:
                return
            self._bytes -= item.size
            self._cond.notify_all()
            st = self.stats
            if outcome == "aborted":
                self._give_up(item.items)
            elif outcome == "exported":
                st.exported_requests += 1
                st.exported_items += item.items - rejected
                st.rejected_items += rejected
            else:
                st.failed_permanent_items += item.items
                st.failed_permanent_requests += 1
        if outcome == "aborted":
            self._log_given_up("shutting down before delivery", item.items, 1)
            return
        if outcome == "exported":
            if result is not None and (result.rejected or result.message):
                log.warning("%s upstream rejected %d of %s (partial success): %s",
                            self.name, rejected, count(item.items, "item"), result.message)
        else:
            log.error("%s: %s; %s not delivered", self.name, why, count(item.items, "item"))
        self._settled(item)

    # -- shutdown ------------------------------------------------------------------------------
    def shutdown(self, timeout: float) -> int:
        """Stop taking new data, drain for up to ``timeout`` seconds, then give up on the rest.

        An export already on the wire at the deadline gets :data:`SHUTDOWN_GRACE_SECONDS` more.
        Returns how many items were lost (each one logged and counted).
        """
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            lost_before = self.stats.lost_items
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
            self._closed = True
            rest = list(self._items)
            stuck = list(self._inflight.values())
            self._items.clear()
            self._inflight.clear()
            self._bytes = 0
            for i in (*rest, *stuck):
                self._give_up(i.items)
            lost = self.stats.lost_items - lost_before
        if rest:
            self._log_given_up("not sent by the shutdown deadline", sum(i.items for i in rest), len(rest))
        if stuck:
            self._log_given_up("export still in flight at the shutdown deadline, outcome unknown",
                               sum(i.items for i in stuck), len(stuck))
        return lost
