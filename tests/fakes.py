"""The one fake of the relay's :class:`~promptstamp_relay.export.Exporter` the tests use."""

from __future__ import annotations

import threading
from collections.abc import Callable

from promptstamp_relay.export import OK, ExportResult

__all__ = ["Answer", "FakeExporter"]

#: What one export comes to: a result, or an exception it raises (an exporter with a bug).
Answer = ExportResult | BaseException


class FakeExporter:
    """An exporter that answers on demand.

    Each export is counted (``calls``), its payload kept in ``payloads`` (unless
    ``record=False``), and answered with the next of ``script``; once the script is used up,
    with ``then``: an answer, or a function called for each export (under the fake's lock, so a
    seeded random one stays reproducible across worker threads). :meth:`block` makes every
    export wait (at most ``block_timeout`` s) until :meth:`release`. Thread-safe.
    """

    def __init__(self, *script: Answer, then: Answer | Callable[[], Answer] = OK, signal: str = "traces",
                 record: bool = True, block_timeout: float = 5.0) -> None:
        self.signal = signal
        self.payloads: list[bytes] = []
        self.calls = 0
        self.shutdowns = 0
        self._script = list(script)
        self._then = then
        self._record = record
        self._block_timeout = block_timeout
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()

    def block(self) -> FakeExporter:
        """Exports wait from now on, until :meth:`release`."""
        self._open.clear()
        return self

    def release(self) -> None:
        self._open.set()

    def export(self, payload: bytes) -> ExportResult:
        with self._lock:
            self.calls += 1
            if self._record:
                self.payloads.append(payload)
            if self._script:
                answer = self._script.pop(0)
            else:
                answer = self._then() if callable(self._then) else self._then
        self._open.wait(self._block_timeout)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def shutdown(self) -> None:
        self.shutdowns += 1
