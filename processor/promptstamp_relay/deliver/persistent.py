"""The persistent delivery queue (``queue.directory``): every request a row before the OK.

Table ``queue`` of the relay's database (:mod:`.journal`): every encoded request waiting for its
upstream, one row each, in arrival order (``id``). A row is written, in the same transaction as
everything else the request caused, before the sender gets its OK; it is deleted only once the
upstream confirmed it or failed it permanently. At start, pending rows are handed to the workers
first, in ``id`` order; at shutdown what is left stays on disk (``kept_items``). Delivery is at
least once: a request confirmed upstream but not yet deleted when the relay died is sent again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ..counters import count
from ..export.retry import Backoff
from ..journal import Journal, JournalError
from ._config import QueueConfig
from .queue import DeliveryItem, DestinationOf, ExporterFor, WorkerQueue

__all__ = ["Journal", "JournalError", "PendingRow", "PersistentQueue", "pending_rows"]

log = logging.getLogger("promptstamp_relay.deliver")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    signal TEXT NOT NULL,
    tenant TEXT NOT NULL,
    items INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_signal ON queue(signal, id);
"""


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    tenant: str
    items: int
    size: int


def pending_rows(journal: Journal, signal: str) -> list[PendingRow]:
    """Rows of ``signal`` not yet confirmed, oldest first."""
    journal.ensure_schema(_SCHEMA)
    return [
        PendingRow(int(r[0]), str(r[1]), int(r[2]), int(r[3]))
        for r in journal.query(
            "SELECT id, tenant, items, length(payload) FROM queue WHERE signal = ? ORDER BY id", (signal,)
        )
    ]


class PersistentQueue(WorkerQueue):
    """:class:`~.queue.DeliveryQueue` whose requests are rows of the journal's ``queue`` table;
    in memory it keeps only their ids and sizes."""

    def __init__(self, exporter_for: ExporterFor, journal: Journal, config: QueueConfig | None = None, *,
                 backoff: Backoff | None = None, name: str = "traces", workers: int | None = None,
                 destination_of: DestinationOf | None = None, share: float | None = None,
                 destinations: Sequence[str] = ()) -> None:
        super().__init__(exporter_for, config, backoff=backoff, name=name, workers=workers,
                         destination_of=destination_of, share=share, destinations=destinations)
        self._journal = journal
        journal.ensure_schema(_SCHEMA)

    def _recover(self) -> None:
        # Read outside the queue's lock (lock order: the journal first). A row put meanwhile is
        # queued by its commit callback before the journal answers this query.
        pending = pending_rows(self._journal, self.name)
        queued = self._queued_ids()  # put before start: already here, and newer
        rows = [r for r in pending if r.id not in queued]
        # Each row back to its destination, ahead of what was put since: the per-destination
        # shares and pauses hold across restarts.
        self._restore(DeliveryItem(b"", r.items, r.tenant, id=r.id, size=r.size) for r in rows)
        n = sum(r.items for r in rows)
        with self._cond:
            self.stats.recovered_requests += len(rows)
            self.stats.recovered_items += n
        if rows:
            log.warning("%s: re-sending %s (%s) left in the persistent queue by an earlier run",
                        self.name, count(len(rows), "request"), count(n, "item"))

    def put(self, item: DeliveryItem) -> None:
        journal = self._journal
        with journal.transaction():
            cur = journal.execute("INSERT INTO queue (signal, tenant, items, payload) VALUES (?, ?, ?, ?)",
                                  (self.name, item.tenant, item.items, item.payload))
            item.id = int(cur.lastrowid or 0)
            item.payload = b""  # on disk now; read back by the worker that sends it
            journal.after_commit(lambda: self._append(item))

    def _payload(self, item: DeliveryItem) -> bytes | None:
        if item.payload:
            return item.payload
        rows = self._journal.query("SELECT payload FROM queue WHERE id = ?", (item.id,))
        return bytes(rows[0][0]) if rows else None

    def _settled(self, item: DeliveryItem) -> None:
        try:
            self._journal.execute("DELETE FROM queue WHERE id = ?", (item.id,))
        except JournalError as e:  # the row stays: sent again at the next start (at least once)
            log.warning("%s: could not delete settled row %d: %s", self.name, item.id, e)

    def _give_up(self, n_items: int) -> None:
        self.stats.kept_items += n_items

    def _log_given_up(self, why: str, n_items: int, n_requests: int) -> None:
        log.warning("%s: %s: %s in %s kept in the persistent queue for the next start",
                    self.name, why, count(n_items, "item"), count(n_requests, "request"))
