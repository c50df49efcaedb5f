"""Polling with a deadline: the one ``wait_until`` the suite uses (never a fixed sleep)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["wait_until"]

T = TypeVar("T")


def wait_until(condition: Callable[[], T], timeout: float = 10.0, what: str | Callable[[], str] = "condition",
               interval: float = 0.02) -> T:
    """Call ``condition`` until it returns something truthy, and return that; fail after
    ``timeout`` seconds with ``what`` in the message (a callable: what it returns then, for a
    message that says how far things got)."""
    deadline = time.monotonic() + timeout
    while True:
        got = condition()
        if got:
            return got
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {said}")
        time.sleep(interval)
