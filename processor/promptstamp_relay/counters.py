"""A base for components' stats objects: counters that stay exact when many threads add; and the
words for a count (``count(1, "item")`` is "1 item", never "1 items").

A component declares its counters as a dataclass deriving from :class:`Counters` and calls
:meth:`Counters.add` (one lock per stats object, held for a few attribute updates); the
telemetry collector reads :meth:`Counters.snapshot` at scrape time.
"""

from __future__ import annotations

import threading
from dataclasses import fields

__all__ = ["Counters", "count"]


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and the noun in its number: ``count(1, "request")`` → "1 request", ``count(2,
    "entry", "entries")`` → "2 entries". Every count the relay writes in words goes through here."""
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


class Counters:
    """Subclass as a ``@dataclass`` of ``int`` fields; never assign to the fields directly."""

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def add(self, **counts: int) -> None:
        """Increment each named counter by its amount, atomically."""
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        """Every counter, read together."""
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
