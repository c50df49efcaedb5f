"""OTLP/JSON lines (contract §5) to a file: what ``--record`` and the ``file`` exporter write."""

from __future__ import annotations

import threading
from typing import TextIO

from ..wire.otlpjson import REQUEST_TYPES, Request, Signal, encode_line
from ._base import OK, ExportResult

__all__ = ["FileExporter", "JsonLinesWriter"]


class JsonLinesWriter:
    """Appends one request per line; thread-safe; flushes every line (a crash loses at most one)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, request: Request) -> None:
        self.write_line(encode_line(request))

    def write_line(self, line: str) -> None:
        """One already encoded OTLP/JSON document (no newline in it)."""
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()


class FileExporter:
    """One signal's encoded requests, one OTLP/JSON line each (metrics' exemplar ids in hex too)."""

    def __init__(self, path: str, signal: Signal = "traces") -> None:
        self.signal: str = signal
        self._request = REQUEST_TYPES[signal]
        self._writer = JsonLinesWriter(path)

    def export(self, payload: bytes) -> ExportResult:
        self._writer.write_line(encode_line(self._request.FromString(payload)))
        return OK

    def shutdown(self) -> None:
        self._writer.close()
