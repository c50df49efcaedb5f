"""The persistent queue: one SQLite database (WAL) that holds what the relay has accepted.

Opt-in (``queue.directory`` / ``serve --queue-dir DIR``). The database ``DIR/relay.db`` keeps:

- ``queue``: every encoded request waiting for its upstream, one row each, in arrival order
  (``id``). A row is written, in the same transaction as everything else the request caused,
  before the sender gets its OK; it is deleted only once the upstream confirmed it or failed
  it permanently. On start, pending rows are handed to the workers first, in ``id`` order.
- ``held``: generation spans waiting in the hold window (one single-span request per row), so a
  crash during the window loses nothing; at start they go through the processor again.
- ``fetch_log`` (:mod:`promptstamp_relay.store.sqlite`): the fetch-log state.

Durability: ``synchronous=FULL`` by default — every commit fsyncs the WAL, so an OK survives a
power cut or kernel crash; ``NORMAL`` skips that fsync (the commit still reaches the OS before
the OK, so it survives ``kill -9`` of the relay, not a machine crash). Measured costs are in
docs/delivery.md.

Concurrency: one connection, one re-entrant lock. :meth:`Journal.transaction` holds the lock
from ``BEGIN IMMEDIATE`` to ``COMMIT``; nested uses join the outer one; callbacks registered
with :meth:`Journal.after_commit` run after the outermost commit (that is where new rows become
visible to the delivery workers). A directory is used by one relay at a time (``flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..hold import HoldWindow
from ..stamp import HeldSpan

__all__ = ["SYNCHRONOUS_MODES", "Journal", "JournalError", "PendingRow", "PersistentHold"]

log = logging.getLogger("promptstamp_relay.deliver")

SYNCHRONOUS_MODES = ("full", "normal")
DB_FILE = "relay.db"
LOCK_FILE = "relay.lock"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    signal TEXT NOT NULL,
    tenant TEXT NOT NULL,
    items INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_signal ON queue(signal, id);
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


class JournalError(OSError):
    """The persistent queue could not be read or written (disk full, closed, corrupt)."""


@dataclass(frozen=True, slots=True)
class PendingRow:
    id: int
    tenant: str
    items: int
    size: int


class Journal:
    """The relay's SQLite database in persistent mode. Thread-safe."""

    def __init__(self, directory: str | os.PathLike[str], *, synchronous: str = "full") -> None:
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_MODES}, got {synchronous!r}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / DB_FILE
        self.synchronous = synchronous
        self._lock_fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            raise JournalError(f"{self.directory} is in use by another relay (lock {LOCK_FILE})") from None
        try:
            self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            mode = self._conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.executescript(_SCHEMA)
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise JournalError(f"{self.path}: schema version {version}, "
                                   f"this relay knows {SCHEMA_VERSION}")
            self._conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (sqlite3.Error, JournalError) as e:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            raise JournalError(f"cannot open the persistent queue {self.path}: {e}") from e
        self._lock = threading.RLock()
        self._depth = 0
        self._callbacks: list[Callable[[], None]] = []
        self._closed = False
        self.commits = 0

    # -- transactions ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One atomic, durable unit. Re-entrant: an inner use joins the outer transaction."""
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield
                finally:
                    self._depth -= 1
                return
            self._check_open()
            try:
                self._conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as e:
                raise JournalError(f"persistent queue: cannot begin: {e}") from e
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._callbacks.clear()
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise
            self._depth = 0
            callbacks, self._callbacks = self._callbacks, []
            try:
                self._conn.execute("COMMIT")
            except sqlite3.Error as e:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.execute("ROLLBACK")
                raise JournalError(f"persistent queue: commit failed: {e}") from e
            self.commits += 1
            for fn in callbacks:
                fn()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the current transaction has committed (never if it rolls back)."""
        with self._lock:
            if not self._depth:
                raise RuntimeError("after_commit outside a transaction")
            self._callbacks.append(fn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
        """One statement, inside the caller's transaction (or its own)."""
        with self.transaction():
            try:
                return self._conn.execute(sql, params)
            except sqlite3.Error as e:
                raise JournalError(f"persistent queue: {e}") from e

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        with self.transaction():
            try:
                self._conn.executemany(sql, rows)
            except sqlite3.Error as e:
                raise JournalError(f"persistent queue: {e}") from e

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            self._check_open()
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as e:
                raise JournalError(f"persistent queue: {e}") from e

    def _check_open(self) -> None:
        if self._closed:
            raise JournalError("persistent queue is closed")

    # -- the queue -------------------------------------------------------------------------------
    def add_item(self, signal: str, tenant: str, items: int, payload: bytes) -> int:
        cur = self.execute(
            "INSERT INTO queue (signal, tenant, items, payload) VALUES (?, ?, ?, ?)",
            (signal, tenant, items, payload),
        )
        return int(cur.lastrowid or 0)

    def item_payload(self, row_id: int) -> bytes | None:
        rows = self.query("SELECT payload FROM queue WHERE id = ?", (row_id,))
        return bytes(rows[0][0]) if rows else None

    def delete_item(self, row_id: int) -> None:
        self.execute("DELETE FROM queue WHERE id = ?", (row_id,))

    def pending_items(self, signal: str) -> list[PendingRow]:
        """Rows not yet confirmed, oldest first."""
        return [
            PendingRow(int(r[0]), str(r[1]), int(r[2]), int(r[3]))
            for r in self.query(
                "SELECT id, tenant, items, length(payload) FROM queue WHERE signal = ? ORDER BY id",
                (signal,),
            )
        ]

    # -- held spans ------------------------------------------------------------------------------
    def add_held(self, tenant: str, payload: bytes) -> int:
        cur = self.execute("INSERT INTO held (tenant, payload) VALUES (?, ?)", (tenant, payload))
        return int(cur.lastrowid or 0)

    def delete_held(self, row_id: int) -> None:
        self.execute("DELETE FROM held WHERE id = ?", (row_id,))

    def take_held(self) -> list[tuple[str, bytes]]:
        """Every held span of an earlier run, oldest first, deleted in the caller's transaction."""
        with self.transaction():
            rows = self.query("SELECT tenant, payload FROM held ORDER BY id")
            self.execute("DELETE FROM held")
        return [(str(t), bytes(p)) for t, p in rows]

    # -- housekeeping ----------------------------------------------------------------------------
    def disk_bytes(self) -> int:
        """Size of the database and its WAL on disk."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Checkpoint the WAL into the database, close, release the directory. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)


def encode_held(h: HeldSpan) -> bytes:
    """A held span as a one-span ExportTraceServiceRequest (resource and scope with it)."""
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.CopyFrom(h.resource)
    rs.schema_url = h.resource_schema_url
    ss = rs.scope_spans.add()
    ss.scope.CopyFrom(h.scope)
    ss.schema_url = h.scope_schema_url
    ss.spans.append(h.span)
    data: bytes = req.SerializeToString()
    return data


class PersistentHold(HoldWindow):
    """A :class:`HoldWindow` whose spans are also rows of the ``held`` table.

    Rows are written and deleted in the caller's transaction, so a span moves from ``held`` to
    ``queue`` atomically. Called, like its base, with the relay's processing lock held.
    """

    def __init__(self, journal: Journal, hold_ns: int, max_spans: int) -> None:
        super().__init__(hold_ns, max_spans)
        self._journal = journal
        self._rows: dict[int, int] = {}  # id(HeldSpan) -> row id; the span is alive while held

    def add(self, spans: Iterable[HeldSpan]) -> None:
        spans = list(spans)
        for h in spans:
            self._rows[id(h)] = self._journal.add_held(h.key.tenant, encode_held(h))
        super().add(spans)

    def pop_due(self, now_ns: int) -> list[HeldSpan]:
        return self._forget(super().pop_due(now_ns))

    def pop_matching(self, arrived: set[tuple[str, bytes, str, str]]) -> list[HeldSpan]:
        return self._forget(super().pop_matching(arrived))

    def pop_all(self) -> list[HeldSpan]:
        return self._forget(super().pop_all())

    def _forget(self, spans: list[HeldSpan]) -> list[HeldSpan]:
        for h in spans:
            row = self._rows.pop(id(h), None)
            if row is not None:
                self._journal.delete_held(row)
        return spans
