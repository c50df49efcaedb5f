"""The label timeline in persistent mode: table ``rollouts`` of the queue directory's database.

One row per tenant, prompt and label: the timeline's compact form as JSON (intervals and sums,
bounded by ``rollouts.max_versions`` / ``max_instances``). The flusher thread upserts the rows
changed since its last run and deletes the rows of timelines that expired; at start every row
is read back. The queue, the held spans and the fetch log keep their own tables and their own
retention: the timeline's is ``rollouts.retention_days``.

:func:`read_directory` is the command line's way in: it opens the database read-only, without
the directory's lock, so it works beside a running relay (SQLite's WAL lets a reader in).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ._model import Timeline, dump_timeline, load_timeline
from ._observer import TimelineKey

if TYPE_CHECKING:
    from ..journal import Journal

__all__ = ["RolloutTable", "read_directory"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    tenant TEXT NOT NULL,
    prompt TEXT NOT NULL,
    label TEXT NOT NULL,
    data TEXT NOT NULL,
    updated_ns INTEGER NOT NULL,
    PRIMARY KEY (tenant, prompt, label)
)
"""
DB_FILE = "relay.db"


def _rows_to_timelines(rows: Sequence[Sequence[object]]) -> dict[TimelineKey, Timeline]:
    out: dict[TimelineKey, Timeline] = {}
    for tenant, prompt, label, data in rows:
        try:
            out[(str(tenant), str(prompt), str(label))] = load_timeline(json.loads(str(data)))
        except (ValueError, TypeError, KeyError):
            continue  # a row this relay cannot read (written by another version): skipped
    return out


class RolloutTable:
    """The ``rollouts`` table of the relay's journal."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        journal.ensure_schema(_SCHEMA)

    def load(self) -> dict[TimelineKey, Timeline]:
        return _rows_to_timelines(self._journal.query("SELECT tenant, prompt, label, data FROM rollouts"))

    def write(self, changed: Mapping[TimelineKey, Timeline], gone: Sequence[TimelineKey],
              now_ns: int) -> None:
        """Upsert ``changed``, delete ``gone``: one transaction."""
        j = self._journal
        with j.transaction():
            if changed:
                j.executemany(
                    "INSERT INTO rollouts (tenant, prompt, label, data, updated_ns) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT (tenant, prompt, label) DO UPDATE SET data = excluded.data, "
                    "updated_ns = excluded.updated_ns",
                    [(t, p, lb, json.dumps(dump_timeline(tl), separators=(",", ":")), now_ns)
                     for (t, p, lb), tl in changed.items()],
                )
            if gone:
                j.executemany("DELETE FROM rollouts WHERE tenant = ? AND prompt = ? AND label = ?",
                              list(gone))


def read_directory(directory: str | Path, tenant: str, prompt: str) -> dict[str, Timeline] | None:
    """``tenant``'s timelines of ``prompt`` by label, read-only from a persistent queue directory;
    None when the directory has no relay database or no ``rollouts`` table. Raises ``OSError``
    when the database cannot be opened."""
    path = Path(directory) / DB_FILE
    if not path.is_file():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise OSError(f"cannot open {path}: {e}") from e
    try:
        rows = conn.execute("SELECT tenant, prompt, label, data FROM rollouts "
                            "WHERE tenant = ? AND prompt = ?", (tenant, prompt)).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return None
        raise OSError(f"cannot read {path}: {e}") from e
    finally:
        conn.close()
    return {label: tl for (_, _, label), tl in _rows_to_timelines(rows).items()}
