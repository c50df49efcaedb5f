from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from .model import FetchRecord

__all__ = ["FetchLogStore"]


class FetchLogStore(Protocol):
    """Fetch-log state, keyed by tenant. The resolver only reads; the receiver only adds.

    Implementations are called from the relay's processing thread(s) with the relay's lock held:
    they must answer from memory (or a local view) and never block on a network.
    ``now_ns`` is passed in, never read from a clock, so replay and tests stay deterministic.
    """

    def add(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None:
        """Take in validated records (``fallback`` records are never passed here)."""

    def in_trace(self, tenant: str, trace_id: bytes, key: str, label: str) -> Sequence[FetchRecord]:
        """Every kept record of trace ``trace_id`` for (key, label), oldest first."""

    def latest_for_instance(
        self, tenant: str, instance: str, key: str, label: str, at_ns: int
    ) -> FetchRecord | None:
        """The latest record from ``instance`` for (key, label) not after ``at_ns``."""

    def latest(
        self, tenant: str, key: str, label: str, at_ns: int, not_before_ns: int
    ) -> FetchRecord | None:
        """The latest record for (key, label) from any instance, in ``[not_before_ns, at_ns]``."""

    def prune(self, now_ns: int) -> None:
        """Forget what is older than the store's age bound."""

    def __len__(self) -> int:
        """Records kept (all tenants)."""

    def close(self) -> None:
        """Release resources; idempotent."""
