"""The delivery queue: one interface, and the workers both implementations share.

A :class:`DeliveryQueue` sits between receiving and exporting, for one signal: bounded in
requests and bytes, drained by worker threads that export each request and retry retryable
failures with :class:`~.retry.Backoff`. Two implementations, the OpenTelemetry Collector's
exporterhelper shape: :class:`~.memory.MemoryQueue` (the default) and
:class:`~.persistent.PersistentQueue` (every request a database row before the sender's OK).
They differ only in where a request lives, what a restart finds and what shutdown gives up.

Destinations: every request goes to one upstream destination (a tenant's own Langfuse project,
or the relay's own exporter: ``destination_of(tenant)``), and the queue keeps one FIFO per
destination. A destination that fails, throttles or hangs only holds its own:

- bounds: with ``share`` set (a queue that can have several destinations), a destination may
  hold at most ``share`` times what is still free of the queue's bounds (requests and bytes;
  the "dynamic threshold" of shared-buffer switches), so one destination in trouble fills at
  most half of the queue with the default 1.0, k of them each 1/(k+1), and the rest is always
  free for the others; a refused sender is told which (:class:`Full`);
- workers' time: a retry never holds a worker. A retryable failure puts the request back at the
  head of its destination, which pauses for the backoff (or the upstream's ``Retry-After`` /
  RetryInfo): none of its requests is tried before then, while the workers serve the other
  destinations. At most ``workers`` exports run per destination; more worker threads are
  started when one destination's exports occupy them all and another has work, up to
  ``max_workers``.

Accounting, exact under any concurrency (every counter changes under the queue's lock): every
item that enters ends in exactly one of ``exported_items``, ``rejected_items`` (upstream partial
success), ``failed_permanent_items`` (permanent error or retries spent), ``lost_items`` (memory:
not sent by the shutdown deadline, or put after it) or ``kept_items`` (persistent: left on disk
at shutdown, re-sent at the next start).

Threads: receiver threads call :meth:`~DeliveryQueue.reserve`, :meth:`~DeliveryQueue.put`
and :meth:`~DeliveryQueue.unreserve`; the relay's ticker calls ``put``; the workers export;
the lifecycle calls ``start`` and ``shutdown``.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Protocol

from ..counters import Counters, count, metric
from ..export.retry import Backoff, BackoffRun
from ._config import QueueConfig

if TYPE_CHECKING:  # the exporters import deliver.retry: no import of export/ at run time
    from ..export import Exporter, ExportResult

__all__ = [
    "DELIVERY_BUCKETS",
    "LATENCY_BUCKETS",
    "MAX_DESTINATION_LABELS",
    "OTHER_DESTINATION",
    "RELAY_DESTINATION",
    "SHUTDOWN_GRACE_SECONDS",
    "DeliveryItem",
    "DeliveryQueue",
    "DeliveryStats",
    "DestinationOf",
    "ExporterFor",
    "Full",
]

log = logging.getLogger("promptstamp_relay.deliver")

#: Upper bounds (seconds) of the export-latency histogram buckets; one more bucket for +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Upper bounds (seconds) of the delivery-latency buckets (queued -> confirmed, retries included).
DELIVERY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

#: After the shutdown deadline, how long an export attempt already on the wire may still finish.
SHUTDOWN_GRACE_SECONDS = 1.0

#: The destination of everything the relay's own exporter sends (``destination_of``'s default).
RELAY_DESTINATION = "relay"

#: Distinct destinations a queue's metrics name (label ``destination``); the rest are summed here.
MAX_DESTINATION_LABELS = 64
OTHER_DESTINATION = "other"

#: The longest wait a refusal for a paused destination suggests to its senders.
MAX_REFUSAL_HINT_SECONDS = 30.0

#: The exporter for a tenant's requests (tenants may have their own upstream credentials).
ExporterFor = Callable[[str], "Exporter"]

#: The upstream destination of a tenant's requests: a short name, also its metrics label.
DestinationOf = Callable[[str], str]

_Outcome = Literal["exported", "failed", "aborted"]
_Bytes = bytes  # DeliveryQueue.bytes (a property) shadows the type inside the classes


@dataclass(slots=True)
class DeliveryItem:
    payload: bytes  # an encoded Export*ServiceRequest (b"" once it is on disk)
    items: int  # spans or log records in it
    tenant: str = "default"
    id: int = 0  # persistent-queue row id, 0 in memory
    size: int = -1  # bytes counted against the bound; len(payload) when not given
    destination: str = ""  # set when queued: destination_of(tenant)
    queued_at: float = 0.0  # time.monotonic() when queued (delivery latency)
    run: BackoffRun | None = None  # its retries, from its first attempt

    def __post_init__(self) -> None:
        if self.size < 0:
            self.size = len(self.payload)


@dataclass(frozen=True, slots=True)
class Full:
    """Why :meth:`DeliveryQueue.reserve` refused: the whole queue is at a bound
    (``destination`` ""), or the request's destination holds its whole share; ``retry_after``:
    what to tell the sender (a paused destination's remaining pause, when longer)."""

    destination: str
    retry_after: float


@dataclass
class DeliveryStats(Counters):
    """A queue's counters, exported per queue (label ``signal``; per destination too, label
    ``destination``). Only ever changed by the queue, under its lock."""

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
    destination_refused: Counter[str] = metric(
        "Requests refused because their destination held its whole share of the queue (its upstream "
        "slow, failing or throttling); UNAVAILABLE + RetryInfo / HTTP 503 + Retry-After",
        name="destination_refused_requests", label="destination")
    destination_depth: Counter[str] = metric(
        "Requests queued or being exported, per upstream destination", name="destination_queue_depth",
        gauge=True, label="destination")
    destination_bytes: Counter[str] = metric(
        "Bytes queued or being exported, per upstream destination", name="destination_queue_bytes",
        gauge=True, label="destination")
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    # destination label -> bucket counts (DELIVERY_BUCKETS and +Inf) and sum: queued -> confirmed
    delivery_counts: dict[str, list[int]] = field(default_factory=dict)
    delivery_sum: dict[str, float] = field(default_factory=dict)

    def observe_latency(self, seconds: float) -> None:
        self.latency_sum += seconds
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def observe_delivery(self, label: str, seconds: float) -> None:
        counts = self.delivery_counts.get(label)
        if counts is None:
            counts = self.delivery_counts[label] = [0] * (len(DELIVERY_BUCKETS) + 1)
        counts[bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        self.delivery_sum[label] = self.delivery_sum.get(label, 0.0) + seconds


class DeliveryQueue(Protocol):
    """Encoded requests for one signal, FIFO per destination, bounded in requests and bytes.

    Admission never blocks: :meth:`reserve` answers :class:`Full` when the queue, or the
    request's destination, is at a bound (the receiver then refuses the data with a retryable
    status); what it admits it hands to :meth:`put` and releases with :meth:`unreserve`. ``put``
    itself always succeeds: it is also the way in for data the relay already owns (released
    held spans). The byte count covers queued items, items being exported (until their outcome
    is known) and open reservations.
    """

    name: str
    stats: DeliveryStats
    max_requests: int
    max_bytes: int

    def start(self) -> None:
        """Start the workers (persistent: after queuing what an earlier run left)."""

    def put(self, item: DeliveryItem) -> None:
        """Queue ``item`` (persistent: a row in the caller's transaction, queued at its commit)."""

    def reserve(self, size: int, extra_bytes: int = 0, tenant: str = "default") -> Full | None:
        """Atomically check the bounds for ``size`` more bytes of ``tenant``'s and hold them
        until ``unreserve``; None when granted. ``extra_bytes``: what else shares the bound
        (held spans, the other signals' queues)."""

    def try_reserve(self, size: int, extra_bytes: int = 0, tenant: str = "default") -> bool:
        """:meth:`reserve`, answering whether it was granted."""

    def unreserve(self, size: int, tenant: str = "default") -> None:
        """Release a reservation ``reserve`` granted."""

    def shutdown(self, timeout: float) -> int:
        """Stop taking new data, drain for up to ``timeout`` seconds, give up on the rest;
        return how many items were lost (always 0 for a persistent queue: they stay on disk)."""

    @property
    def depth(self) -> int:
        """Requests queued or being exported."""

    @property
    def bytes(self) -> int:
        """Bytes of the requests queued or being exported (on disk for a persistent queue)."""


_IDLE, _RUNNABLE, _PAUSED = 0, 1, 2


class _Destination:
    """One destination's FIFO and its share of the queue (all under the queue's lock)."""

    __slots__ = ("bytes", "inflight", "items", "label", "name", "ready_at", "reserved", "reserved_requests",
                 "state")

    def __init__(self, name: str, label: str) -> None:
        self.name = name
        self.label = label
        self.items: deque[DeliveryItem] = deque()
        self.inflight = 0
        self.bytes = 0  # queued + in flight
        self.reserved = 0
        self.reserved_requests = 0
        self.ready_at = 0.0  # monotonic; paused (backoff, Retry-After) until then
        self.state = _IDLE  # _RUNNABLE: in the queue's run list; _PAUSED: in its pause heap

    @property
    def requests(self) -> int:
        return len(self.items) + self.inflight + self.reserved_requests

    def empty(self) -> bool:
        return not self.items and not self.inflight and not self.reserved_requests and not self.reserved


def _one_destination(tenant: str) -> str:
    return RELAY_DESTINATION


class WorkerQueue(ABC):
    """What both queues share: the bounds, the destinations, the workers, retries and the exact
    accounting.

    Subclasses say where an item lives: :meth:`put`, :meth:`_payload`, :meth:`_settled`,
    :meth:`_give_up` and, optionally, :meth:`_recover`.

    ``destination_of``: the destination of a tenant's requests (default: one, ``relay``);
    ``share``: a destination's bound as a multiple of what is free (None: no per-destination
    bound, for a queue with one destination); ``destinations``: names known in advance (their
    metrics start at 0); ``workers``: exports at once per destination (default
    ``config.workers``); ``config.max_workers``: worker threads at most.
    """

    def __init__(
        self,
        exporter_for: ExporterFor,
        config: QueueConfig | None = None,
        *,
        backoff: Backoff | None = None,
        name: str = "traces",
        workers: int | None = None,
        destination_of: DestinationOf | None = None,
        share: float | None = None,
        destinations: Sequence[str] = (),
    ) -> None:
        cfg = config or QueueConfig()
        self._exporter_for = exporter_for
        self._destination_of = destination_of or _one_destination
        self.name = name
        self.max_requests = cfg.max_requests
        self.max_bytes = cfg.max_bytes
        self.retry_after = cfg.retry_after_seconds
        self.share = share
        self._backoff = backoff or Backoff()
        self._per_destination = max(1, cfg.workers if workers is None else workers)
        # One destination never needs more threads than its own exports at once.
        self._max_threads = self._per_destination
        if destination_of is not None:
            self._max_threads = max(self._per_destination, cfg.max_workers)
        self._dests: dict[str, _Destination] = {}
        self._runnable: deque[_Destination] = deque()
        self._paused: list[tuple[float, int, _Destination]] = []  # heap by ready_at
        self._seq = itertools.count()
        self._labels: dict[str, str] = {}  # destination name -> metrics label
        self._queued = 0  # items waiting in their destinations (not in flight)
        self._inflight: dict[int, DeliveryItem] = {}  # id(item) -> item
        self._bytes = 0  # queued + in flight
        self._reserved = 0  # bytes admitted, not yet put
        self._reserved_requests = 0
        self._idle = 0  # workers waiting for work
        self._settles = 0
        self._cond = threading.Condition()  # guards everything above and every stats counter
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._closed = False  # shutdown has given up on what was left: later puts are not sent
        self._threads: list[threading.Thread] = []
        self._started = False
        for _ in range(self._per_destination):
            self._new_thread()
        self.stats = DeliveryStats()
        for d in destinations:
            label = self._label(d)
            st = self.stats
            for series in (st.destination_depth, st.destination_bytes, st.destination_refused):
                series[label] += 0

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

    # -- destinations (all with the lock held) ---------------------------------------------------
    def _label(self, name: str) -> str:
        """The first :data:`MAX_DESTINATION_LABELS` names are their own label; later ones are
        summed under ``other`` (a bounded label set, however many passthrough tenants come)."""
        label = self._labels.get(name)
        if label is not None:
            return label
        if len(self._labels) < MAX_DESTINATION_LABELS:
            self._labels[name] = name
            return name
        return OTHER_DESTINATION

    def _destination(self, tenant: str) -> _Destination:
        name = self._destination_of(tenant)
        d = self._dests.get(name)
        if d is None:
            d = self._dests[name] = _Destination(name, self._label(name))
        return d

    def _forget(self, d: _Destination, now: float) -> None:
        """Drop an empty destination that is not paused (its metrics stay, by label)."""
        if d.state == _IDLE and d.empty() and d.ready_at <= now and self._dests.get(d.name) is d:
            del self._dests[d.name]

    def _schedule(self, d: _Destination, now: float) -> None:
        """Put ``d`` in the run list when it has work it may send now, or in the pause heap."""
        if d.state != _IDLE or not d.items:
            return
        if d.ready_at > now:
            d.state = _PAUSED
            heapq.heappush(self._paused, (d.ready_at, next(self._seq), d))
            return
        if d.inflight >= self._per_destination:
            return  # scheduled again when one of its exports ends
        d.state = _RUNNABLE
        self._runnable.append(d)
        self._cond.notify()
        self._maybe_spawn()

    def _wake_paused(self, now: float) -> None:
        while self._paused and self._paused[0][0] <= now:
            _, _, d = heapq.heappop(self._paused)
            d.state = _IDLE
            self._schedule(d, now)  # paused again if its pause was extended meanwhile

    def _next_runnable(self, now: float) -> _Destination | None:
        while self._runnable:
            d = self._runnable.popleft()
            d.state = _IDLE
            if d.items and d.ready_at <= now and d.inflight < self._per_destination:
                return d
            self._schedule(d, now)
        return None

    def _new_thread(self) -> None:
        t = threading.Thread(target=self._work, name=f"deliver-{self.name}-{len(self._threads)}", daemon=True)
        self._threads.append(t)
        if self._started:
            t.start()

    def _maybe_spawn(self) -> None:
        """More destinations can send than workers are free: one more worker, up to the cap
        (a destination whose exports hang must not keep the others waiting)."""
        if (self._started and not self._abort.is_set() and len(self._runnable) > self._idle
                and len(self._threads) < self._max_threads):
            self._new_thread()

    def _count_in(self, d: _Destination, item: DeliveryItem) -> None:
        self._queued += 1
        self._bytes += item.size
        d.bytes += item.size
        self.stats.destination_depth[d.label] += 1
        self.stats.destination_bytes[d.label] += item.size

    # -- producer side ------------------------------------------------------------------------
    def start(self) -> None:
        if self._started:
            return
        self._recover()
        with self._cond:
            self._started = True
            threads = list(self._threads)
        for t in threads:
            t.start()

    @property
    def depth(self) -> int:
        return self._queued + len(self._inflight)

    @property
    def bytes(self) -> int:
        return self._bytes

    def destinations(self) -> dict[str, tuple[int, int]]:
        """Destination name -> (requests, bytes) queued or in flight, now."""
        with self._cond:
            return {n: (len(d.items) + d.inflight, d.bytes) for n, d in self._dests.items()}

    def reserve(self, size: int, extra_bytes: int = 0, tenant: str = "default") -> Full | None:
        now = time.monotonic()
        with self._cond:
            free_requests = self.max_requests - (self.depth + self._reserved_requests)
            free_bytes = self.max_bytes - (self._bytes + self._reserved + extra_bytes)
            if self._stopping.is_set() or free_requests < 1 or size > free_bytes:
                return Full("", self.retry_after)
            d = self._destination(tenant)
            if self.share is not None and (
                    d.requests + 1 > self.share * free_requests
                    or d.bytes + d.reserved + size > self.share * free_bytes):
                self.stats.destination_refused[d.label] += 1
                hint = min(MAX_REFUSAL_HINT_SECONDS, d.ready_at - now)
                self._forget(d, now)
                return Full(d.name, max(self.retry_after, hint))
            self._reserved += size
            self._reserved_requests += 1
            d.reserved += size
            d.reserved_requests += 1
            return None

    def try_reserve(self, size: int, extra_bytes: int = 0, tenant: str = "default") -> bool:
        return self.reserve(size, extra_bytes, tenant) is None

    def unreserve(self, size: int, tenant: str = "default") -> None:
        with self._cond:
            self._reserved -= size
            self._reserved_requests -= 1
            d = self._dests.get(self._destination_of(tenant))
            if d is not None:
                d.reserved -= size
                d.reserved_requests -= 1
                self._forget(d, time.monotonic())

    def _append(self, item: DeliveryItem) -> None:
        with self._cond:
            if not self._closed:
                now = time.monotonic()
                d = self._destination(item.tenant)
                item.destination, item.queued_at = d.name, now
                d.items.append(item)
                self._count_in(d, item)
                self._schedule(d, now)
                return
            self._give_up(item.items)  # after shutdown: counted, never silently dropped
        self._log_given_up("put after shutdown", item.items, 1)

    def _queued_ids(self) -> set[int]:
        """Row ids of the items queued now (the persistent queue's recovery skips them)."""
        with self._cond:
            return {i.id for d in self._dests.values() for i in d.items}

    def _restore(self, items: Iterable[DeliveryItem]) -> None:
        """Items an earlier run left, oldest first: each goes ahead of what its destination
        already holds (put before start), in their order."""
        now = time.monotonic()
        with self._cond:
            by_destination: dict[str, list[DeliveryItem]] = {}
            for item in items:
                d = self._destination(item.tenant)
                item.destination, item.queued_at = d.name, now
                by_destination.setdefault(d.name, []).append(item)
                self._count_in(d, item)
            for name, restored in by_destination.items():
                d = self._dests[name]
                d.items.extendleft(reversed(restored))
                self._schedule(d, now)

    # -- workers -------------------------------------------------------------------------------
    def _take(self) -> DeliveryItem | None:
        with self._cond:
            self._idle += 1
            idle = True
            try:
                while True:
                    if self._abort.is_set():
                        return None
                    now = time.monotonic()
                    self._wake_paused(now)
                    d = self._next_runnable(now)
                    if d is not None:
                        item = d.items.popleft()
                        self._queued -= 1
                        d.inflight += 1
                        self._inflight[id(item)] = item
                        self._idle -= 1
                        idle = False
                        self._schedule(d, now)  # the back of the run list: destinations take turns
                        return item
                    if self._stopping.is_set() and not self._queued and not self._inflight:
                        return None  # drained (an export still on the wire may come back to retry)
                    wait = 0.5
                    if self._paused:
                        wait = min(wait, max(0.001, self._paused[0][0] - now))
                    self._cond.wait(wait)
            finally:
                if idle:
                    self._idle -= 1

    def _work(self) -> None:
        while True:
            item = self._take()
            if item is None:
                return
            try:
                self._attempt(item)
            except Exception as e:  # an exporter bug must not kill the worker
                log.exception("%s exporter raised", self.name)
                self._settle(item, "failed", why=f"exporter raised {type(e).__name__}: {e}")

    def _attempt(self, item: DeliveryItem) -> None:
        """One export of ``item``: its outcome, or back to the head of its destination, which
        pauses for the backoff (or the upstream's own hint)."""
        payload = self._payload(item)
        if payload is None:
            self._settle(item, "failed", why=f"persistent queue row {item.id} vanished")
            return
        exporter = self._exporter_for(item.tenant)
        if item.run is None:
            item.run = self._backoff.delays()
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
        delay = item.run.next_delay(result.retry_after)
        if delay is None:
            self._settle(item, "failed", why=f"export gave up after retrying for {item.run.elapsed:.1f}s: "
                                             f"{result.message}")
            return
        self._retry(item, delay)
        log.info("%s export to %s will retry in %.2fs: %s", self.name, item.destination, delay,
                 result.message)

    def _retry(self, item: DeliveryItem, delay: float) -> None:
        now = time.monotonic()
        with self._cond:
            if self._inflight.pop(id(item), None) is None:
                return  # shutdown gave up on it meanwhile (counted there)
            self.stats.retries += 1
            d = self._dests.get(item.destination)
            if d is None:  # cannot happen while it is in flight; be safe
                d = self._destination(item.tenant)
            d.inflight -= 1
            d.ready_at = max(d.ready_at, now + delay)
            d.items.appendleft(item)
            self._queued += 1
            self._schedule(d, now)
            self._cond.notify()  # a waiting worker takes the new pause into its wait

    def _settle(self, item: DeliveryItem, outcome: _Outcome, result: ExportResult | None = None,
                why: str = "") -> None:
        """Account for ``item`` exactly once: a no-op if shutdown already gave up on it."""
        rejected = result.rejected if result is not None else 0
        with self._cond:
            if self._inflight.pop(id(item), None) is None:
                return
            now = time.monotonic()
            self._bytes -= item.size
            st = self.stats
            d = self._dests.get(item.destination)
            label = d.label if d is not None else self._label(item.destination)
            st.destination_depth[label] -= 1
            st.destination_bytes[label] -= item.size
            if d is not None:
                d.inflight -= 1
                d.bytes -= item.size
                self._schedule(d, now)  # wakes a worker when the destination has more to send
                self._forget(d, now)
            if self._stopping.is_set():
                self._cond.notify_all()  # shutdown waits for the queue to empty
            if outcome == "aborted":
                self._give_up(item.items)
            elif outcome == "exported":
                st.exported_requests += 1
                st.exported_items += item.items - rejected
                st.rejected_items += rejected
                st.observe_delivery(label, now - item.queued_at)
            else:
                st.failed_permanent_items += item.items
                st.failed_permanent_requests += 1
            self._settles += 1
            if self._settles % 1024 == 0:
                for other in list(self._dests.values()):
                    self._forget(other, now)
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
            while (self._queued or self._inflight) and time.monotonic() < deadline:
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            self._abort.set()
            self._cond.notify_all()
            threads = list(self._threads)
        grace = time.monotonic() + SHUTDOWN_GRACE_SECONDS
        for t in threads:
            if t.is_alive():
                t.join(timeout=max(0.0, grace - time.monotonic()))
        with self._cond:
            self._closed = True
            rest = [i for d in self._dests.values() for i in d.items]
            stuck = list(self._inflight.values())
            for d in self._dests.values():
                d.items.clear()
                d.inflight = 0
                d.bytes = 0
                d.state = _IDLE
            self._runnable.clear()
            self._paused.clear()
            self._queued = 0
            self._inflight.clear()
            self._bytes = 0
            for label in list(self.stats.destination_depth):
                self.stats.destination_depth[label] = 0
                self.stats.destination_bytes[label] = 0
            for i in (*rest, *stuck):
                self._give_up(i.items)
            lost = self.stats.lost_items - lost_before
        if rest:
            self._log_given_up("not sent by the shutdown deadline", sum(i.items for i in rest), len(rest))
        if stuck:
            self._log_given_up("export still in flight at the shutdown deadline, outcome unknown",
                               sum(i.items for i in stuck), len(stuck))
        return lost
