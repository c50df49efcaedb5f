"""The relay's start-up failures, as types: the CLI picks each exit code by type, in one table
(``cli.START_FAILURES``), never by reading a message."""

from __future__ import annotations

__all__ = ["ListenError", "MetricsListenError", "ReceiverListenError"]


class ListenError(OSError):
    """A listener could not bind its address. The message names the address, the listener and
    the reason; ``hint`` says what to change."""

    def __init__(self, address: str, listener: str, reason: str, hint: str = "") -> None:
        super().__init__(f"cannot listen on {address} ({listener}): {reason}")
        self.address = address
        self.listener = listener
        self.hint = hint


class ReceiverListenError(ListenError):
    """An OTLP receiver (gRPC or HTTP)."""


class MetricsListenError(ListenError):
    """The admin listener (``/metrics``, health, the timeline API)."""
