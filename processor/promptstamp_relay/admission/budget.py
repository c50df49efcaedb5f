"""A bound on the bytes of requests being decoded and processed at once, across all callers.

Why: the protobuf parser allocates per message, and a request made of millions of tiny
messages (empty spans, empty attributes) takes up to ~90 times its encoded size in memory
(measured: a 16 MB request of empty spans, 1.4 GB). ``limits.max_request_bytes`` bounds one
request; this bounds how many are decoded together, so the relay's worst case is about
90 × ``limits.max_inflight_request_bytes`` whatever callers send.
"""

from __future__ import annotations

import threading
import time

__all__ = ["ByteBudget"]


class ByteBudget:
    """``acquire(n)`` waits up to ``wait_seconds`` for ``n`` bytes of room, else answers False
    (the caller refuses the request with a retryable status). ``release(n)`` gives them back."""

    def __init__(self, max_bytes: int, *, wait_seconds: float = 2.0) -> None:
        self.max_bytes = max_bytes
        self.wait_seconds = wait_seconds
        self._used = 0
        self._cond = threading.Condition()

    @property
    def used(self) -> int:
        return self._used

    def acquire(self, n: int) -> bool:
        n = min(n, self.max_bytes)  # a request as large as the whole budget still gets in, alone
        deadline = time.monotonic() + self.wait_seconds
        with self._cond:
            while self._used + n > self.max_bytes:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            self._used += n
            return True

    def release(self, n: int) -> None:
        n = min(n, self.max_bytes)
        with self._cond:
            self._used -= n
            self._cond.notify_all()
