"""The one index behind every store: a bounded FIFO per tenant and three lookups over it.

:class:`MemoryStore` (and :class:`SqliteStore`, through it) and the Redis store's local view
are the same structure: records in arrival order per tenant (what bounds and ages evict), and
three indexes of sorted series, by trace, by instance and by (key, label), that answer the
resolver's three questions with a dictionary read and a bisect. They differ only in how ties on
fetch time break (``tie``: arrival order in memory, the Redis member on the view, so that every
relay picks the same record) and in whether a record can arrive twice (the view dedupes).

Eviction is tenant-fair: over the global bound, the tenant holding the most records gives up its
oldest one, so a tenant that floods the store evicts its own records, never another tenant's.
Not thread-safe: callers hold their own lock.
"""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Hashable, Sequence
from typing import Any, Generic, TypeVar

from ..core.model import FetchRecord

__all__ = ["FetchIndex", "latest_at"]

Tie = TypeVar("Tie", int, str)
_Entry = tuple[int, Any, FetchRecord]  # (time_ns, tie, record), sorted by (time_ns, tie)
_Series = list[_Entry]


def _order(e: _Entry) -> tuple[int, Any]:
    return e[0], e[1]


class FetchIndex(Generic[Tie]):
    """Records of every tenant, bounded by ``max_entries`` overall and ``max_per_tenant`` each.

    ``unique``: a second :meth:`add` of the same ``(tenant, tie)`` is ignored (the Redis view,
    whose ties are the records' members, i.e. their ids). ``own`` marks records this relay
    received itself (the Redis view writes them back after a Redis restart).
    """

    def __init__(self, max_entries: int, max_per_tenant: int, *, unique: bool = False) -> None:
        if max_entries <= 0 or max_per_tenant <= 0:
            raise ValueError("max_entries and max_per_tenant must be positive")
        self.max_entries = max_entries
        self.max_per_tenant = min(max_per_tenant, max_entries)
        self._seq = 0
        self._size = 0
        self._known: set[tuple[str, Tie]] | None = set() if unique else None
        # tenant -> (arrival seq, tie, record, own), oldest arrival first
        self._fifo: dict[str, deque[tuple[int, Tie, FetchRecord, bool]]] = {}
        self._trace: dict[Hashable, _Series] = {}
        self._instance: dict[Hashable, _Series] = {}
        self._label: dict[Hashable, _Series] = {}

    def __len__(self) -> int:
        return self._size

    def tenant_size(self, tenant: str) -> int:
        fifo = self._fifo.get(tenant)
        return len(fifo) if fifo else 0

    # -- writes ----------------------------------------------------------------------------------
    def add(self, tenant: str, record: FetchRecord, tie: Tie, *, own: bool = True) -> bool:
        """Index ``record`` (which must have a version); False when ``unique`` and already known."""
        if self._known is not None:
            if (tenant, tie) in self._known:
                return False
            self._known.add((tenant, tie))
        self._seq += 1
        fifo = self._fifo.get(tenant)
        if fifo is None:
            fifo = self._fifo[tenant] = deque()
        fifo.append((self._seq, tie, record, own))
        self._size += 1
        e: _Entry = (record.time_ns, tie, record)
        for index, key in self._series(tenant, record):
            _insert(index, key, e)
        if len(fifo) > self.max_per_tenant:
            self._evict_oldest(tenant)
        if self._size > self.max_entries:
            self._evict_oldest(self._largest_tenant())
        return True

    def prune(self, horizon_ns: int) -> None:
        """Evict, per tenant, the oldest arrivals while their fetch time is before ``horizon_ns``."""
        for tenant in list(self._fifo):
            fifo = self._fifo.get(tenant)
            while fifo and fifo[0][2].time_ns < horizon_ns:
                self._evict_oldest(tenant)

    def _largest_tenant(self) -> str:
        # Most records first; among equals, the one whose oldest record arrived first.
        return max(self._fifo, key=lambda t: (len(self._fifo[t]), -self._fifo[t][0][0]))

    def _evict_oldest(self, tenant: str) -> None:
        fifo = self._fifo[tenant]
        _, tie, r, _own = fifo.popleft()
        if not fifo:
            del self._fifo[tenant]
        self._size -= 1
        if self._known is not None:
            self._known.discard((tenant, tie))
        e: _Entry = (r.time_ns, tie, r)
        for index, key in self._series(tenant, r):
            _remove(index, key, e)

    def _series(self, tenant: str, r: FetchRecord) -> list[tuple[dict[Hashable, _Series], Hashable]]:
        """The series ``r`` is in, as (index, key): one place, so that eviction finds what add put."""
        out: list[tuple[dict[Hashable, _Series], Hashable]] = [(self._label, (tenant, r.key, r.label))]
        if r.trace_id:
            out.append((self._trace, (tenant, r.trace_id, r.key, r.label)))
        if r.instance:
            out.append((self._instance, (tenant, r.instance, r.key, r.label)))
        return out

    # -- reads -----------------------------------------------------------------------------------
    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> list[FetchRecord]:
        series = self._trace.get((tenant, trace_id, key, label))
        return [e[2] for e in series] if series else []

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        return latest_at(self._instance.get((tenant, instance, key, label)), at_ns, None)

    def latest(self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int) -> FetchRecord | None:
        return latest_at(self._label.get((tenant, key, label)), at_ns, not_before_ns)

    def own_entries(self) -> list[tuple[str, Tie, FetchRecord]]:
        """``(tenant, tie, record)`` of every record added with ``own=True``, oldest first per tenant."""
        return [(tenant, tie, r) for tenant, fifo in self._fifo.items()
                for _, tie, r, own in fifo if own]


def _insert(index: dict[Hashable, _Series], key: Hashable, e: _Entry) -> None:
    series = index.get(key)
    if series is None:
        index[key] = [e]
        return
    last = series[-1]
    if e[0] > last[0] or (e[0] == last[0] and e[1] >= last[1]):
        series.append(e)  # the common case: records arrive in time order
    else:
        bisect.insort(series, e, key=_order)


def _remove(index: dict[Hashable, _Series], key: Hashable, e: _Entry) -> None:
    series = index.get(key)
    if series is None:
        return
    # The common case first: the oldest arrival is the oldest record of its series.
    first = series[0]
    i = 0 if first[1] == e[1] and first[0] == e[0] else bisect.bisect_left(series, _order(e), key=_order)
    if i < len(series) and series[i][1] == e[1]:
        del series[i]
    if not series:
        del index[key]


def latest_at(series: Sequence[_Entry] | None, at_ns: int, not_before_ns: int | None) -> FetchRecord | None:
    """The record of the last entry with time <= ``at_ns`` (among equal times the last in tie
    order), or None when there is none or it is before ``not_before_ns``."""
    if not series:
        return None
    i = bisect.bisect_right(series, at_ns, key=lambda e: e[0])
    if i == 0:
        return None
    entry = series[i - 1]
    if not_before_ns is not None and entry[0] < not_before_ns:
        return None
    return entry[2]
