"""The relay's SQLite database in persistent mode (``queue.directory``): ``DIR/relay.db``.

One database, several tables, each owned by the component that uses it: ``queue``
(:mod:`.persistent`, the persistent delivery queue), ``held`` (:mod:`promptstamp_relay.journal.held`,
spans in the hold window) and ``fetch_log`` (:mod:`promptstamp_relay.store.sqlite`). What one
request causes in all of them is one transaction, committed before the sender gets its OK.

Durability: ``synchronous=FULL`` by default — every commit fsyncs the WAL, so an OK survives a
power cut or kernel crash; ``NORMAL`` skips that fsync (the commit still reaches the OS before
the OK, so it survives ``kill -9`` of the relay, not a machine crash). Measured costs are in
docs/delivery.md.

Concurrency: one connection, one re-entrant lock. :meth:`Journal.transaction` holds the lock
from ``BEGIN IMMEDIATE`` to ``COMMIT``; nested uses join the outer one; callbacks registered
with :meth:`Journal.after_commit` run after the outermost commit (that is where new rows become
visible to the delivery workers). A directory is used by one relay at a time (``flock``).
Lock order everywhere: the journal's transaction first, then any lock of the relay's.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

#: ``queue.synchronous``: fsync every commit (``full``) or leave it to the OS (``normal``).
SYNCHRONOUS_MODES = ("full", "normal")


__all__ = ["Journal", "JournalError"]

DB_FILE = "relay.db"
LOCK_FILE = "relay.lock"
SCHEMA_VERSION = 1


class JournalError(OSError):
    """The persistent queue could not be read or written (disk full, closed, corrupt)."""


class Journal:
    """The relay's SQLite database in persistent mode. Thread-safe.

    Holds no tables of its own: each user creates its table with :meth:`ensure_schema`.
    """

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

    def ensure_schema(self, script: str) -> None:
        """Run ``CREATE … IF NOT EXISTS`` statements (``;``-separated) in one transaction."""
        with self.transaction():
            for statement in script.split(";"):
                if statement.strip():
                    self.execute(statement)

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
