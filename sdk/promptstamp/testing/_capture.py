"""In-memory capture of exported OTel log records."""

from __future__ import annotations

from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter


class CaptureLogExporter(InMemoryLogRecordExporter):
    """The SDK's ``InMemoryLogRecordExporter`` (thread-safe), plus a ``records`` list view.

    Use with ``SimpleLogRecordProcessor`` for synchronous capture in tests.
    """

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]

    @property
    def records(self) -> list[ReadableLogRecord]:
        """Every exported record so far, oldest first (a copy)."""
        return list(self.get_finished_logs())
