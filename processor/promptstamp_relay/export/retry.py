"""One table of what is retried (OTLP spec), and the backoff between tries."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from .settings import RetryConfig

__all__ = [
    "MIN_DELAY",
    "RETRYABLE_GRPC_CODES",
    "RETRYABLE_HTTP_STATUSES",
    "Backoff",
    "BackoffRun",
    "grpc_retryable",
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


def grpc_retryable(code: grpc.StatusCode, has_retry_info: bool) -> bool:
    """The OTLP/gRPC rule: the table above, plus RESOURCE_EXHAUSTED when RetryInfo came with it."""
    return code in RETRYABLE_GRPC_CODES or (
        code == grpc.StatusCode.RESOURCE_EXHAUSTED and has_retry_info
    )


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date. None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:  # delta-seconds; a decimal is accepted too (some proxies send one)
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


#: The shortest wait ever taken, whatever an upstream hint says (no hot loop on ``Retry-After: 0``).
MIN_DELAY = 0.01


_DEFAULT = RetryConfig()


@dataclass
class Backoff:
    """Exponential backoff with jitter, bounded in total elapsed time (the Collector's shape).

    Defaults are :class:`RetryConfig`'s (:meth:`from_config` builds one from a ``retry:``
    section). ``max_elapsed = 0`` retries for ever.
    """

    initial: float = _DEFAULT.initial_interval_seconds
    maximum: float = _DEFAULT.max_interval_seconds
    max_elapsed: float = _DEFAULT.max_elapsed_seconds
    multiplier: float = _DEFAULT.multiplier
    randomization: float = _DEFAULT.randomization
    rng: random.Random | None = None
    clock: Callable[[], float] = time.monotonic

    @classmethod
    def from_config(cls, cfg: RetryConfig) -> Backoff:
        return cls(initial=cfg.initial_interval_seconds, maximum=cfg.max_interval_seconds,
                   max_elapsed=cfg.max_elapsed_seconds, multiplier=cfg.multiplier,
                   randomization=cfg.randomization)

    def delays(self) -> BackoffRun:
        return BackoffRun(self)


class BackoffRun:
    """The waits for one request. Elapsed time is the larger of the waits handed out and the
    wall time since the run began, so slow failing attempts (timeouts) count against the bound.
    """

    def __init__(self, policy: Backoff) -> None:
        self._p = policy
        self._interval = policy.initial
        self._waited = 0.0
        self._started = policy.clock()
        self._rng = policy.rng or random.Random()

    @property
    def elapsed(self) -> float:
        return max(self._waited, self._p.clock() - self._started)

    def next_delay(self, hint: float | None = None) -> float | None:
        """Seconds to wait before the next try, or None when the total bound is spent.

        ``hint`` (Retry-After / RetryInfo) replaces the computed delay: the upstream knows best.
        A hint that does not fit in what is left of the bound ends the run (waiting less than
        asked would only be refused again).
        """
        p = self._p
        r = p.randomization
        delay = self._interval * (1 + r * (2 * self._rng.random() - 1))
        self._interval = min(self._interval * p.multiplier, p.maximum)
        if hint is not None:
            delay = hint
        delay = max(MIN_DELAY, delay)
        if p.max_elapsed > 0 and self.elapsed + delay > p.max_elapsed:
            return None
        self._waited += delay
        return delay
