from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["ExportResult", "Exporter"]

Outcome = Literal["ok", "retry", "permanent"]


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one export attempt came to. ``retry_after``: the upstream's own hint, in seconds.

    ``rejected``: items the upstream refused in an OTLP partial success (logged and counted,
    never retried).
    """

    outcome: Outcome
    message: str = ""
    retry_after: float | None = None
    rejected: int = 0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


OK = ExportResult("ok")


class Exporter(Protocol):
    """Sends one encoded OTLP export request (protobuf bytes) upstream.

    Called from a delivery worker thread, one request at a time per worker; may block on the
    network up to its own timeout. Never raises for upstream failures: it classifies them.
    """

    signal: str  # "traces", "logs" or "metrics"

    def export(self, payload: bytes) -> ExportResult: ...

    def shutdown(self) -> None: ...
