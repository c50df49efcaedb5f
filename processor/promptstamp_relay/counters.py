"""A base for components' stats objects, the metric each counter is exported as, and the words
for a count (``count(1, "item")`` is "1 item", never "1 items").

A component declares its stats as a dataclass deriving from :class:`Counters`; each field that is
a metric says so with :func:`metric` (its name, help and kind), so adding a metric is one field
here and one line in the README's metrics table: ``ops/telemetry.py`` exports every such field of
the stats objects it is given (:func:`exported`), and nothing by hand.

One locking rule for every stats object: writers either call :meth:`Counters.add` (its own lock:
receiver threads, the api tier) or already hold the one lock that serializes their component's
writes (the processor's processing lock, a queue's lock, the Redis store's lock) and update the
fields directly; the collector reads :meth:`Counters.snapshot` at scrape time, which copies
labelled counters safely against such a writer.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["Counters", "Metric", "count", "exported", "metric"]


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

    def snapshot(self) -> dict[str, Any]:
        """Every field, read together; a labelled counter (a ``Counter``) as a plain dict copy."""
        with self._lock:
            return {f.name: _copy(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]


def _copy(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    for _ in range(10):  # a writer under its own lock may resize it mid-copy
        try:
            return dict(value)
        except RuntimeError:
            continue
    return {}


@dataclass(frozen=True)
class Metric:
    """How one stats field is exported: ``promptstamp_<name>`` (``_total`` added to counters by
    the Prometheus client), ``help``, a counter or a gauge, and for a labelled counter (a
    ``Counter`` field) the label's name and the values always shown (0 until seen)."""

    name: str
    help: str
    gauge: bool = False
    label: str | None = None
    values: tuple[str, ...] = ()


def metric(help: str, *, name: str = "", gauge: bool = False, label: str | None = None,
           values: tuple[str, ...] = (), default: Any = 0) -> Any:
    """A stats field exported as a metric (``name`` defaults to the field's own). A ``label``
    makes it a labelled counter: the field is a ``Counter`` of label value → count."""
    spec = {"metric": Metric(name, help, gauge, label, values)}
    if label is not None:
        return field(default_factory=Counter, metadata=spec)
    return field(default=default, metadata=spec)


def exported(stats: Any, snapshot: dict[str, Any] | None = None) -> Iterator[tuple[Metric, Any]]:
    """``(metric, value)`` for every field of ``stats`` declared with :func:`metric`, its name
    filled in, from ``snapshot`` (default: ``stats.snapshot()``)."""
    values = stats.snapshot() if snapshot is None else snapshot
    for f in fields(stats):
        spec = f.metadata.get("metric")
        if spec is not None:
            yield Metric(spec.name or f.name, spec.help, spec.gauge, spec.label, spec.values), values[f.name]
