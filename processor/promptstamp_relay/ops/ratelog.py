"""Log lines that cannot flood: at most one per kind per interval, the rest counted and
reported with the next line of that kind (a misbehaving fleet must not drown the relay's log).
Thread-safe; the clock is ``time.monotonic`` unless one is passed in."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["RateLimitedLog"]


class RateLimitedLog:
    def __init__(self, logger: logging.Logger, interval_seconds: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._interval = interval_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, kind: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless a line of ``kind`` went out less than the interval ago;
        True when it was logged."""
        now = self._clock()
        with self._lock:
            if now < self._next.get(kind, 0.0):
                self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
                return False
            self._next[kind] = now + self._interval
            suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            message += f" ({suppressed} more like it in the last {self._interval:g} s)"
        self._logger.log(level, message, *args)
        return True
