"""The process's resident set size, for ``queue.memory_limit_mib`` (Linux ``/proc``)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["ResidentMemory", "rss_bytes"]

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes() -> int | None:
    """Resident bytes of this process now; None where ``/proc/self/statm`` does not exist."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class ResidentMemory:
    """RSS read at most every ``every`` seconds (a read costs ~10 µs; receivers ask per request)."""

    def __init__(self, every: float = 0.05) -> None:
        self._every = every
        self._at = -1e18
        self._value: int | None = None
        self._lock = threading.Lock()

    def current(self) -> int | None:
        now = time.monotonic()
        with self._lock:
            if now - self._at >= self._every:
                self._value = rss_bytes()
                self._at = now
            return self._value

    def over(self, limit_bytes: int) -> bool:
        value = self.current()
        return value is not None and value > limit_bytes
