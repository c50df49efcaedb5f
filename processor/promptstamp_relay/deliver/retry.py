"""One table of what is retried (OTLP spec), and the backoff between tries."""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

import grpc

__all__ = [
    "RETRYABLE_GRPC_CODES",
    "RETRYABLE_HTTP_STATUSES",
    "Backoff",
    "parse_retry_after",
]

#: OTLP/HTTP: retry these (honouring Retry-After); everything else is permanent.
RETRYABLE_HTTP_STATUSES = frozenset({429, 502, 503, 504})

#: OTLP/gRPC: retry these. RESOURCE_EXHAUSTED only when the server sent RetryInfo.
RETRYABLE_GRPC_CODES = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass
class Backoff:
    """Exponential backoff with jitter, bounded in total elapsed time (the Collector's shape)."""

    initial: float = 5.0
    maximum: float = 30.0
    max_elapsed: float = 300.0
    multiplier: float = 1.5
    randomization: float = 0.5
    rng: random.Random | None = None

    def delays(self) -> BackoffRun:
        return BackoffRun(self)


class BackoffRun:
    def __init__(self, policy: Backoff) -> None:
        self._p = policy
        self._interval = policy.initial
        self._elapsed = 0.0
        self._rng = policy.rng or random.Random()

    def next_delay(self, hint: float | None = None) -> float | None:
        """Seconds to wait before the next try, or None when the total bound is spent.

        ``hint`` (Retry-After / RetryInfo) replaces the computed delay: the upstream knows best.
        """
        p = self._p
        r = p.randomization
        delay = self._interval * (1 + r * (2 * self._rng.random() - 1))
        self._interval = min(self._interval * p.multiplier, p.maximum)
        if hint is not None:
            delay = hint
        if self._elapsed + delay > p.max_elapsed:
            return None
        self._elapsed += delay
        return delay
