"""The embedded default store: the shared index (``_index.py``) held in this process's memory."""

from __future__ import annotations

from collections.abc import Sequence

from ..core.model import FetchRecord
from ._config import StoreBounds, StoreConfig
from ._index import FetchIndex

__all__ = ["MemoryStore"]


class MemoryStore:
    """In-memory :class:`~promptstamp_relay.store.FetchLogStore`.

    Bounded three ways (:class:`StoreConfig`; each keyword overrides its field): records older
    than ``max_age_ns`` (relative to the ``now_ns`` the caller passes) are pruned, each tenant
    keeps at most ``max_entries_per_tenant`` records and all tenants together ``max_entries``;
    the oldest arrivals go first, over the global bound those of the tenant keeping the most.
    Among records with the same fetch time the later arrival wins. Not thread-safe: the relay
    calls it with its processing lock held.
    """

    def __init__(
        self,
        config: StoreConfig | None = None,
        *,
        max_entries: int | None = None,
        max_entries_per_tenant: int | None = None,
        max_age_ns: int | None = None,
    ) -> None:
        self.bounds = StoreBounds.of(config, max_entries=max_entries,
                                     max_entries_per_tenant=max_entries_per_tenant, max_age_ns=max_age_ns)
        self._index: FetchIndex[int] = FetchIndex(self.bounds.max_entries, self.bounds.max_per_tenant)
        self._seq = 0

    # -- writes ------------------------------------------------------------------------------
    def add(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        index = self._index
        for record in records:
            if record.version is None:
                continue  # a fallback record resolves nothing (contract §4)
            self._seq += 1
            index.add(tenant, record, self._seq)
        self.prune(now_ns)

    def prune(self, now_ns: int) -> None:
        self._index.prune(now_ns - self.bounds.max_age_ns)

    # -- reads -------------------------------------------------------------------------------
    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> Sequence[FetchRecord]:
        return self._index.in_trace(tenant, trace_id, key, label)

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        return self._index.latest_for_instance(tenant, instance, key, label, at_ns)

    def latest(
        self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int
    ) -> FetchRecord | None:
        return self._index.latest(tenant, key, label, at_ns, not_before_ns)

    def __len__(self) -> int:
        return len(self._index)

    def close(self) -> None:
        return None
