"""The ``queue:`` section of the configuration, next to the delivery code (the queues read their
defaults from here, so each default is written once; ``retry:`` is the exporters', in
``export/settings.py``)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..journal import SYNCHRONOUS_MODES

__all__ = ["SYNCHRONOUS_MODES", "QueueConfig"]


@dataclass
class QueueConfig:
    """The delivery queue (docs/delivery.md). ``max_bytes`` bounds queued + in-flight + held
    bytes, both signals together; in persistent mode the queued bytes are on disk.

    Per destination (a tenant's own Langfuse project, the relay's own exporter): at most
    ``workers`` exports at once, and, when the relay can have several destinations, at most
    ``destination_share`` times what is still free of the bounds (1.0: one destination in
    trouble fills at most half of the queue; k of them 1/(k+1) each)."""

    max_requests: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    workers: int = 2  # exports at once per destination (traces; logs and metrics: 1)
    max_workers: int = 16  # worker threads per signal at most, all destinations together
    destination_share: float = 1.0
    directory: str = ""  # persistent queue when set
    synchronous: str = "full"  # persistent queue: full (fsync every commit) | normal
    shutdown_timeout_seconds: float = 10.0
    retry_after_seconds: float = 1.0  # RetryInfo delay suggested to senders refused when full

    def validate(self, path: str = "queue") -> list[str]:
        errs: list[str] = []
        for k in ("max_requests", "max_bytes", "workers"):
            if getattr(self, k) <= 0:
                errs.append(f"'{path}.{k}' must be > 0")
        if not 0 < self.max_workers <= 256 or self.max_workers < self.workers:
            errs.append(f"'{path}.max_workers' must be >= {path}.workers and <= 256")
        if not (math.isfinite(self.destination_share) and 0 < self.destination_share <= 100):
            errs.append(f"'{path}.destination_share' must be > 0 and <= 100")
        if self.synchronous not in SYNCHRONOUS_MODES:
            errs.append(f"'{path}.synchronous' must be full or normal, got {self.synchronous!r}")
        if not (math.isfinite(self.shutdown_timeout_seconds) and self.shutdown_timeout_seconds >= 0):
            errs.append(f"'{path}.shutdown_timeout_seconds' must be >= 0")
        if not (math.isfinite(self.retry_after_seconds) and 0 < self.retry_after_seconds <= 300):
            errs.append(f"'{path}.retry_after_seconds' must be > 0 and <= 300")
        return errs
