"""The ``queue:`` and ``retry:`` sections of the configuration, next to the delivery code.

The queues and :class:`~promptstamp_relay.deliver.retry.Backoff` read their defaults from here,
so each default is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["SYNCHRONOUS_MODES", "QueueConfig", "RetryConfig"]

#: ``queue.synchronous``: fsync every commit (``full``) or leave it to the OS (``normal``).
SYNCHRONOUS_MODES = ("full", "normal")


@dataclass
class QueueConfig:
    """The delivery queue (docs/delivery.md). ``max_bytes`` bounds queued + in-flight + held
    bytes, both signals together; in persistent mode the queued bytes are on disk."""

    max_requests: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    workers: int = 2
    directory: str = ""  # persistent queue when set
    synchronous: str = "full"  # persistent queue: full (fsync every commit) | normal
    shutdown_timeout_seconds: float = 10.0
    retry_after_seconds: float = 1.0  # RetryInfo delay suggested to senders refused when full

    def validate(self, path: str = "queue") -> list[str]:
        errs: list[str] = []
        for k in ("max_requests", "max_bytes", "workers"):
            if getattr(self, k) <= 0:
                errs.append(f"'{path}.{k}' must be > 0")
        if self.synchronous not in SYNCHRONOUS_MODES:
            errs.append(f"'{path}.synchronous' must be full or normal, got {self.synchronous!r}")
        if not (math.isfinite(self.shutdown_timeout_seconds) and self.shutdown_timeout_seconds >= 0):
            errs.append(f"'{path}.shutdown_timeout_seconds' must be >= 0")
        if not (math.isfinite(self.retry_after_seconds) and 0 < self.retry_after_seconds <= 300):
            errs.append(f"'{path}.retry_after_seconds' must be > 0 and <= 300")
        return errs


@dataclass
class RetryConfig:
    """Exponential backoff between export attempts; the OpenTelemetry Collector's
    ``retry_on_failure`` defaults (5 s initial, x1.5, 30 s max interval, +/-50 % jitter, give up
    after 5 min)."""

    initial_interval_seconds: float = 5.0
    max_interval_seconds: float = 30.0
    max_elapsed_seconds: float = 300.0  # 0 = retry for ever
    multiplier: float = 1.5
    randomization: float = 0.5

    def validate(self, path: str = "retry") -> list[str]:
        errs: list[str] = []
        if not 0 < self.initial_interval_seconds <= self.max_interval_seconds:
            errs.append(f"'{path}.initial_interval_seconds' must be > 0 and <= {path}.max_interval_seconds")
        if self.max_elapsed_seconds < 0:
            errs.append(f"'{path}.max_elapsed_seconds' must be >= 0")
        if self.multiplier < 1:
            errs.append(f"'{path}.multiplier' must be >= 1")
        if not 0 <= self.randomization < 1:
            errs.append(f"'{path}.randomization' must be in [0, 1)")
        return errs
