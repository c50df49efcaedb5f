"""The hold window, persisted (``queue.directory``): held spans are rows of table ``held``.

So a crash inside the hold window loses nothing: a span is a row of ``held`` from the request
that brought it until it is released, and is moved to the delivery queue's table in the same
transaction that releases it. At start, :func:`take_held` hands an earlier run's held spans
back, to go through the processor again. Called, like :class:`~.hold.HoldWindow`, with the
relay's processing lock held, inside the caller's journal transaction.
"""

from __future__ import annotations

from collections.abc import Iterable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..core.hold import HoldWindow
from ..core.stamp import HeldSpan
from . import Journal

__all__ = ["PersistentHold", "encode_held", "take_held"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant TEXT NOT NULL,
    payload BLOB NOT NULL
);
"""


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


def take_held(journal: Journal) -> list[tuple[str, bytes]]:
    """Every ``(tenant, one-span request)`` an earlier run held, oldest first, deleted in the
    caller's transaction."""
    journal.ensure_schema(_SCHEMA)
    with journal.transaction():
        rows = journal.query("SELECT tenant, payload FROM held ORDER BY id")
        journal.execute("DELETE FROM held")
    return [(str(t), bytes(p)) for t, p in rows]


class PersistentHold(HoldWindow):
    """A :class:`HoldWindow` whose spans are also rows of the ``held`` table, written and
    deleted in the caller's transaction (so a span moves from ``held`` to ``queue`` atomically)."""

    def __init__(self, journal: Journal, hold_ns: int, max_spans: int) -> None:
        super().__init__(hold_ns, max_spans)
        self._journal = journal
        self._rows: dict[int, int] = {}  # id(HeldSpan) -> row id; the span is alive while held
        journal.ensure_schema(_SCHEMA)

    def add(self, spans: Iterable[HeldSpan]) -> None:
        spans = list(spans)
        for h in spans:
            cur = self._journal.execute("INSERT INTO held (tenant, payload) VALUES (?, ?)",
                                        (h.key.tenant, encode_held(h)))
            self._rows[id(h)] = int(cur.lastrowid or 0)
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
                self._journal.execute("DELETE FROM held WHERE id = ?", (row,))
        return spans
