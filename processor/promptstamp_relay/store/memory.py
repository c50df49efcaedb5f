"""The embedded default store: three small indexes over one bounded FIFO per tenant."""

from __future__ import annotations

import bisect
from collections import deque
from collections.abc import Sequence
from typing import TypeVar

from ..records import FetchRecord

__all__ = ["MemoryStore"]

_Series = list[tuple[int, int, FetchRecord]]  # (time_ns, arrival seq, record), sorted
_K = TypeVar("_K")


class MemoryStore:
    """In-memory :class:`~promptstamp_relay.store.FetchLogStore`.

    Bounded three ways: records older than ``max_age_ns`` (relative to the ``now_ns`` the caller
    passes) are pruned, each tenant keeps at most ``max_entries_per_tenant`` records and all
    tenants together at most ``max_entries``; the oldest arrivals go first (over the global
    bound, those of the tenant keeping the most records). Lookups are
    dictionary reads plus a bisect over one (key, label) series. Not thread-safe: the relay
    calls it with its processing lock held.
    """

    def __init__(
        self,
        *,
        max_entries: int = 200_000,
        max_entries_per_tenant: int | None = None,
        max_age_ns: int = 24 * 3600 * 10**9,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self._max_entries = max_entries
        self._max_per_tenant = max_entries_per_tenant or max_entries
        self._max_age_ns = max_age_ns
        self._seq = 0
        self._size = 0
        self._fifo: dict[str, deque[tuple[int, FetchRecord]]] = {}
        self._trace: dict[tuple[str, bytes, str, str], _Series] = {}
        self._instance: dict[tuple[str, str, str, str], _Series] = {}
        self._label: dict[tuple[str, str, str], _Series] = {}

    # -- writes ------------------------------------------------------------------------------
    def add(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        for record in records:
            if record.version is None:
                continue  # a fallback record resolves nothing (contract §4)
            self._seq += 1
            entry = (record.time_ns, self._seq, record)
            if record.trace_id:
                _insert(self._trace, (tenant, record.trace_id, record.key, record.label), entry)
            _insert(self._instance, (tenant, record.instance, record.key, record.label), entry)
            _insert(self._label, (tenant, record.key, record.label), entry)
            self._fifo.setdefault(tenant, deque()).append((self._seq, record))
            self._size += 1
            if len(self._fifo[tenant]) > self._max_per_tenant:
                self._evict_oldest(tenant)
        while self._size > self._max_entries:
            # Over the global bound, the tenant keeping the most records gives one up: a
            # tenant that floods the store evicts its own records, not another tenant's.
            largest = max(self._fifo, key=lambda t: (len(self._fifo[t]), -self._fifo[t][0][0]))
            self._evict_oldest(largest)
        self.prune(now_ns)

    def prune(self, now_ns: int) -> None:
        horizon = now_ns - self._max_age_ns
        for tenant in list(self._fifo):
            fifo = self._fifo.get(tenant)
            while fifo and fifo[0][1].time_ns < horizon:
                self._evict_oldest(tenant)

    def _evict_oldest(self, tenant: str) -> None:
        fifo = self._fifo[tenant]
        seq, record = fifo.popleft()
        if not fifo:
            del self._fifo[tenant]
        self._size -= 1
        if record.trace_id:
            _remove(self._trace, (tenant, record.trace_id, record.key, record.label), seq)
        _remove(self._instance, (tenant, record.instance, record.key, record.label), seq)
        _remove(self._label, (tenant, record.key, record.label), seq)

    # -- reads -------------------------------------------------------------------------------
    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> Sequence[FetchRecord]:
        series = self._trace.get((tenant, trace_id, key, label))
        return [e[2] for e in series] if series else ()

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        return latest_at(self._instance.get((tenant, instance, key, label)), at_ns, None)

    def latest(
        self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int
    ) -> FetchRecord | None:
        return latest_at(self._label.get((tenant, key, label)), at_ns, not_before_ns)

    def __len__(self) -> int:
        return self._size

    def close(self) -> None:
        return None


def _insert(index: dict[_K, _Series], key: _K, entry: tuple[int, int, FetchRecord]) -> None:
    series = index.get(key)
    if series is None:
        index[key] = [entry]
    elif entry[:2] >= series[-1][:2]:
        series.append(entry)  # the common case: records arrive in time order
    else:
        bisect.insort(series, entry, key=lambda e: e[:2])


def _remove(index: dict[_K, _Series], key: _K, seq: int) -> None:
    series = index.get(key)
    if series is None:
        return
    for i, entry in enumerate(series):
        if entry[1] == seq:
            del series[i]
            break
    if not series:
        del index[key]


def latest_at(
    series: Sequence[tuple[int, object, FetchRecord]] | None, at_ns: int, not_before_ns: int | None
) -> FetchRecord | None:
    """The record of the last ``(time_ns, tie-break, record)`` entry with time <= ``at_ns``."""
    if not series:
        return None
    # Entries are sorted by (time, tie-break): among equal times the last one wins.
    i = bisect.bisect_right(series, at_ns, key=lambda e: e[0])
    if i == 0:
        return None
    entry = series[i - 1]
    if not_before_ns is not None and entry[0] < not_before_ns:
        return None
    return entry[2]
