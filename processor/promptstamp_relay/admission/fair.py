"""Turns at the relay's processing, shared fairly between tenants.

Every request, once its tenant is known and before anything costly (decompressing, decoding,
stamping, committing), takes a turn: at most ``slots`` requests run at once, whatever the
transport, and with tenants at most ``slots - 1`` of one tenant (the last slot is there for
whoever comes next: a tenant whose turns are slow cannot hold every slot). When they are all
taken, a request waits in its tenant's line, and the next free slot goes to the waiting request
with the smallest start tag of start-time fair queueing
(Goyal et al., SFQ): a request's start tag is the larger of the virtual time (the start tag of
the request last let in) and its tenant's previous finish tag; its finish tag adds its cost
(bytes) divided by its tenant's weight. So tenants share the processing in proportion to their
weights, counted in bytes, and a tenant that has been idle starts at the current virtual time:
its request is next in line, ahead of everything a flooding tenant has queued.

With tenants (``per_tenant``), the waiting room is bounded: ``max_waiting`` requests, of which
a tenant may hold its weight's share among the tenants waiting or running now plus room for one
more (a tenant alone holds at most half: the other half is for whoever comes next). A tenant
over its share is refused at once (UNAVAILABLE + RetryInfo: it retries), so a flood cannot
occupy every receiving thread either. A tenant with nothing waiting may always wait (its
request is next); one under its share finding the room full may still wait while another
tenant holds more than its share (it came when it was alone), up to twice ``max_waiting`` in
all. Without tenants nothing is refused for room. A request that does not get its turn within
``wait_seconds`` is refused the same way.

Threads: receiver threads call :meth:`FairGate.turn` concurrently.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

__all__ = ["FairGate", "NoTurn"]


class NoTurn(Exception):
    """A request that gets no turn: ``why`` is ``share`` (its tenant already has its part of the
    waiting room), ``full`` (the waiting room is full) or ``timeout``."""

    def __init__(self, why: str, message: str) -> None:
        super().__init__(message)
        self.why = why
        self.message = message


@dataclass(slots=True)
class _Waiter:
    tenant: str
    start: float
    wake: threading.Condition  # on the gate's lock: only this waiter is woken when granted
    granted: bool = False
    gone: bool = False


class FairGate:
    """``slots`` requests at once; the others wait their turn in start-tag order (see the
    module). ``per_tenant``: bound each tenant's part of the waiting room (when the relay can
    have several tenants); ``weights``: tenant -> weight (default ``default_weight``)."""

    def __init__(self, slots: int, *, max_waiting: int, wait_seconds: float,
                 weights: Mapping[str, float] | None = None, per_tenant: bool = True,
                 default_weight: float = 1.0) -> None:
        self.slots = slots
        self.max_waiting = max_waiting
        self.wait_seconds = wait_seconds
        self.per_tenant = per_tenant
        self._weights = dict(weights or {})
        self._default_weight = default_weight
        self._free = slots
        # With tenants, one tenant holds at most all slots but one: the last is kept for whoever
        # comes next, so a tenant whose turns are slow (waiting for the processing lock, a
        # commit) cannot keep every other tenant's request from starting.
        self._cap = slots - 1 if per_tenant and slots > 1 else slots
        self._vtime = 0.0
        self._finish: dict[str, float] = {}  # tenant -> finish tag of its last request
        self._waiting: dict[str, int] = {}
        self._running: dict[str, int] = {}
        self._heap: list[tuple[float, int, _Waiter]] = []
        self._n_waiting = 0
        self._seq = itertools.count()
        self._lock = threading.Lock()

    def weight(self, tenant: str) -> float:
        return self._weights.get(tenant, self._default_weight)

    @property
    def waiting(self) -> int:
        return self._n_waiting

    @property
    def running(self) -> int:
        return self.slots - self._free

    # -- the tags -----------------------------------------------------------------------------
    def _tag(self, tenant: str, cost: int) -> float:
        start = max(self._vtime, self._finish.get(tenant, 0.0))
        self._finish[tenant] = start + max(1, cost) / self.weight(tenant)
        if len(self._finish) > 4096:  # tenants long idle: their finish tags no longer matter
            self._finish = {t: f for t, f in self._finish.items() if f > self._vtime}
        return start

    def _share(self, tenant: str) -> int:
        """``tenant``'s part of the waiting room now: its weight's share among the tenants
        waiting or running (itself included) and one more of the default weight, at least one
        request."""
        active = set(self._waiting) | set(self._running) | {tenant}
        total = sum(self.weight(t) for t in active) + self._default_weight
        return max(1, int(self.max_waiting * self.weight(tenant) / total))

    def _someone_over_share(self, tenant: str) -> bool:
        """Whether another tenant holds more of the waiting room than its share now (it waited
        when it was alone): then ``tenant``, under its own share, may wait anyway, and the other
        one's next requests are refused until it is back under its share."""
        return any(n > self._share(t) for t, n in self._waiting.items() if t != tenant)

    # -- a turn ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def turn(self, tenant: str, cost: int) -> Iterator[None]:
        """Run the body in one of the slots, after the requests ahead of this one by start tag;
        raise :class:`NoTurn` when there is no room to wait or the turn does not come in time."""
        self.acquire(tenant, cost)
        try:
            yield
        finally:
            self.release(tenant)

    def acquire(self, tenant: str, cost: int) -> None:
        """A slot for ``tenant``'s request of ``cost`` bytes (give it back with :meth:`release`),
        or :class:`NoTurn`."""
        with self._lock:
            if self._free > 0 and not self._n_waiting and self._may_run(tenant):  # nobody waits: go at once
                self._vtime = max(self._vtime, self._tag(tenant, cost))
                self._free -= 1
                self._running[tenant] = self._running.get(tenant, 0) + 1
                return
            mine = self._waiting.get(tenant, 0)
            if self.per_tenant and mine:  # a tenant with nothing waiting may always wait
                if mine >= self._share(tenant):
                    raise NoTurn("share", "this tenant already has its share of the requests waiting for "
                                          "their turn at the relay, retry later")
                if self._n_waiting >= 2 * self.max_waiting or (
                        self._n_waiting >= self.max_waiting and not self._someone_over_share(tenant)):
                    raise NoTurn("full", f"relay has {self._n_waiting} requests waiting for their turn, "
                                         "retry later")
            w = _Waiter(tenant, self._tag(tenant, cost), threading.Condition(self._lock))
            heapq.heappush(self._heap, (w.start, next(self._seq), w))
            self._n_waiting += 1
            self._waiting[tenant] = self._waiting.get(tenant, 0) + 1
            self._grant()  # a slot may be free (a waiter ahead gave up)
            deadline = time.monotonic() + self.wait_seconds
            while not w.granted:
                left = deadline - time.monotonic()
                if left <= 0:
                    w.gone = True
                    self._unwait(tenant)
                    self._grant()  # its tag is dropped: the next one may go
                    raise NoTurn("timeout", "relay did not get to this request within "
                                            f"{self.wait_seconds:g} s, retry later")
                w.wake.wait(left)

    def _unwait(self, tenant: str) -> None:
        self._n_waiting -= 1
        left = self._waiting[tenant] - 1
        if left:
            self._waiting[tenant] = left
        else:
            del self._waiting[tenant]

    def _may_run(self, tenant: str) -> bool:
        return self._running.get(tenant, 0) < self._cap

    def _grant(self) -> None:
        """Give every free slot to the waiters with the smallest start tags whose tenant may
        take one more, waking just those (lock held)."""
        passed: list[tuple[float, int, _Waiter]] = []
        while self._free > 0 and self._heap:
            entry = heapq.heappop(self._heap)
            start, _, w = entry
            if w.gone:
                continue
            if not self._may_run(w.tenant):
                passed.append(entry)  # keeps its tag: first in line once its tenant may run
                continue
            w.granted = True
            self._unwait(w.tenant)
            self._vtime = max(self._vtime, start)
            self._free -= 1
            self._running[w.tenant] = self._running.get(w.tenant, 0) + 1
            w.wake.notify()
        for entry in passed:
            heapq.heappush(self._heap, entry)

    def release(self, tenant: str) -> None:
        with self._lock:
            self._free += 1
            left = self._running[tenant] - 1
            if left:
                self._running[tenant] = left
            else:
                del self._running[tenant]
            self._grant()
