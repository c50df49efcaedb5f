"""Fetch-log state that survives restarts: a :class:`MemoryStore` written through to SQLite.

Used in persistent mode (``queue.directory``) with ``store.backend: memory``: the records live
in the same database as the persistent queue (table ``fetch_log``), written in the receiving
request's transaction, so a fetch log the sender got an OK for is on disk. Reads are answered
from memory, exactly as :class:`MemoryStore` answers them; at start the table is read back
(oldest first, within the age bound) into memory. On ``add`` the table is pruned by age and to
the store's bounds, tenant-fair like the memory index (the largest tenants are cut first), at
most once a minute (of the caller's clock).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core.model import FetchRecord
from ._config import StoreConfig
from .memory import MemoryStore

if TYPE_CHECKING:
    from ..journal import Journal

__all__ = ["SqliteStore"]

_PRUNE_EVERY_NS = 60 * 10**9

_SCHEMA = """
CREATE TABLE IF NOT EXISTS fetch_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    key TEXT NOT NULL,
    label TEXT NOT NULL,
    version INTEGER NOT NULL,
    source TEXT NOT NULL,
    time_ns INTEGER NOT NULL,
    trace_id BLOB NOT NULL,
    span_id BLOB NOT NULL,
    instance TEXT NOT NULL,
    error_type TEXT,
    service TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS fetch_log_time ON fetch_log(time_ns);
"""

_COLUMNS = "tenant, key, label, version, source, time_ns, trace_id, span_id, instance, error_type, service"


class SqliteStore:
    """:class:`~promptstamp_relay.store.FetchLogStore` backed by the relay's SQLite database.

    Not thread-safe beyond what the relay guarantees (its processing lock); every write is one
    local SQLite statement inside the caller's transaction, never a network call.
    """

    def __init__(
        self,
        journal: Journal,
        config: StoreConfig | None = None,
        *,
        max_entries: int | None = None,
        max_entries_per_tenant: int | None = None,
        max_age_ns: int | None = None,
        now_ns: int,
    ) -> None:
        self._journal = journal
        self._mem = MemoryStore(config, max_entries=max_entries,
                                max_entries_per_tenant=max_entries_per_tenant, max_age_ns=max_age_ns)
        self._max_entries = self._mem.bounds.max_entries
        self._max_age_ns = self._mem.bounds.max_age_ns
        with journal.transaction():
            journal.ensure_schema(_SCHEMA)
            columns = {str(r[1]) for r in journal.query("PRAGMA table_info(fetch_log)")}
            if "service" not in columns:  # a database written before records carried service.name
                journal.execute("ALTER TABLE fetch_log ADD COLUMN service TEXT NOT NULL DEFAULT ''")
        self.loaded = self._load(now_ns)
        self._last_prune_ns = now_ns

    def _load(self, now_ns: int) -> int:
        rows = self._journal.query(
            f"SELECT {_COLUMNS} FROM fetch_log WHERE time_ns >= ? ORDER BY id",
            (now_ns - self._max_age_ns,),
        )
        batch: list[FetchRecord] = []
        tenant = None
        for r in rows:
            if r[0] != tenant and batch:
                self._mem.add(str(tenant), batch, now_ns)
                batch = []
            tenant = r[0]
            batch.append(FetchRecord(
                key=r[1], label=r[2], version=int(r[3]), source=r[4], time_ns=int(r[5]),
                trace_id=bytes(r[6]), span_id=bytes(r[7]), instance=r[8], error_type=r[9],
                service=r[10] or "",
            ))
        if batch:
            self._mem.add(str(tenant), batch, now_ns)
        return len(rows)

    # -- writes --------------------------------------------------------------------------------
    def add(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        keep = [r for r in records if r.version is not None]
        if keep:
            self._journal.executemany(
                f"INSERT INTO fetch_log ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(tenant, r.key, r.label, r.version, r.source, r.time_ns, r.trace_id, r.span_id,
                  r.instance, r.error_type, r.service) for r in keep],
            )
        self._mem.add(tenant, records, now_ns)
        self._prune_disk(now_ns)

    def prune(self, now_ns: int) -> None:
        self._mem.prune(now_ns)
        self._prune_disk(now_ns, force=True)

    def _prune_disk(self, now_ns: int, *, force: bool = False) -> None:
        if not force and now_ns - self._last_prune_ns < _PRUNE_EVERY_NS:
            return
        self._last_prune_ns = now_ns
        j = self._journal
        with j.transaction():
            j.execute("DELETE FROM fetch_log WHERE time_ns < ?", (now_ns - self._max_age_ns,))
            counts = [int(n) for (n,) in j.query("SELECT COUNT(*) FROM fetch_log GROUP BY tenant")]
            quota = _fair_quota(counts, self._mem.bounds.max_per_tenant, self._max_entries)
            if quota is not None:  # each tenant keeps its newest ``quota`` rows
                j.execute(
                    "DELETE FROM fetch_log WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() "
                    "OVER (PARTITION BY tenant ORDER BY id DESC) AS n FROM fetch_log) WHERE n > ?)",
                    (quota,),
                )

    # -- reads ---------------------------------------------------------------------------------
    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> Sequence[FetchRecord]:
        return self._mem.in_trace(tenant, trace_id, key, label)

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        return self._mem.latest_for_instance(tenant, instance, key, label, at_ns)

    def latest(
        self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int
    ) -> FetchRecord | None:
        return self._mem.latest(tenant, key, label, at_ns, not_before_ns)

    def __len__(self) -> int:
        return len(self._mem)

    def close(self) -> None:
        """The database belongs to the relay's journal, which closes it."""
        return None


def _fair_quota(counts: Sequence[int], per_tenant: int, total: int) -> int | None:
    """The most rows each tenant may keep so that no tenant keeps more than ``per_tenant`` and
    all together no more than ``total``, cutting the largest tenants first (what the memory
    index's eviction converges to); None when nothing needs cutting."""
    capped = [min(n, per_tenant) for n in counts]
    if sum(capped) <= total and capped == list(counts):
        return None
    if sum(capped) <= total:
        return per_tenant
    lo, hi = 0, per_tenant  # the largest q with sum(min(n, q)) <= total
    while lo < hi:
        q = (lo + hi + 1) // 2
        if sum(min(n, q) for n in counts) <= total:
            lo = q
        else:
            hi = q - 1
    return lo
