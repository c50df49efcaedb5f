"""The hold window: generation spans waiting, for a bounded time, for their fetch log."""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable

from .stamp import HeldSpan

__all__ = ["HoldWindow"]


class HoldWindow:
    """Held spans in arrival order, each due at ``arrival + hold``. Time is passed in.

    Bounded by ``max_spans``: the caller asks :attr:`capacity` before holding more and stamps
    at once what does not fit, so a full window delays nothing and loses nothing.
    Not thread-safe: the relay calls it with its processing lock held.
    """

    def __init__(self, hold_ns: int, max_spans: int) -> None:
        self.hold_ns = hold_ns
        self.max_spans = max_spans
        self._queue: deque[HeldSpan] = deque()
        self._bytes = 0
        self._waiting: Counter[tuple[str, bytes, str, str]] = Counter()
        self._per_tenant: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def capacity(self) -> int:
        return max(0, self.max_spans - len(self._queue))

    def held_for(self, tenant: str) -> int:
        """Spans of ``tenant`` held now (a per-tenant bound keeps tenants from crowding out
        each other)."""
        return self._per_tenant.get(tenant, 0)

    @property
    def held_bytes(self) -> int:
        """Approximate encoded size of the held spans."""
        return self._bytes

    def add(self, spans: Iterable[HeldSpan]) -> None:
        for h in spans:
            self._bytes += len(h.span_bytes)
            self._waiting[_wait_key(h)] += 1
            self._per_tenant[h.key.tenant] += 1
            self._queue.append(h)

    def next_due_ns(self) -> int | None:
        return self._queue[0].arrival_ns + self.hold_ns if self._queue else None

    def pop_due(self, now_ns: int) -> list[HeldSpan]:
        """Every span whose ``arrival + hold`` is not after ``now_ns``, oldest first."""
        out: list[HeldSpan] = []
        q = self._queue
        while q and q[0].arrival_ns + self.hold_ns <= now_ns:
            out.append(q.popleft())
        self._account(out)
        return out

    def pop_matching(self, arrived: set[tuple[str, bytes, str, str]]) -> list[HeldSpan]:
        """Take out early the spans whose (tenant, trace, key, label) fetch log just arrived."""
        wanted = {k for k in arrived if k in self._waiting}
        if not wanted:
            return []
        keep: deque[HeldSpan] = deque()
        out: list[HeldSpan] = []
        for h in self._queue:
            if _wait_key(h) in wanted:
                out.append(h)
            else:
                keep.append(h)
        self._queue = keep
        self._account(out)
        return out

    def pop_all(self) -> list[HeldSpan]:
        out = list(self._queue)
        self._queue.clear()
        self._bytes = 0
        self._waiting.clear()
        self._per_tenant.clear()
        return out

    def _account(self, spans: list[HeldSpan]) -> None:
        for h in spans:
            self._bytes -= len(h.span_bytes)
            k = _wait_key(h)
            self._waiting[k] -= 1
            if self._waiting[k] <= 0:
                del self._waiting[k]
            t = h.key.tenant
            self._per_tenant[t] -= 1
            if self._per_tenant[t] <= 0:
                del self._per_tenant[t]


def _wait_key(h: HeldSpan) -> tuple[str, bytes, str, str]:
    return (h.key.tenant, h.key.trace_id, h.key.key, h.key.label)
