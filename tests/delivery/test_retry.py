"""The retry settings and backoff: defaults from the retry section, bounds, the upstream's hint."""

from __future__ import annotations

import random

from promptstamp_relay.export.retry import Backoff, parse_retry_after
from promptstamp_relay.export.settings import RetryConfig


def test_backoff_defaults_are_the_retry_section_defaults() -> None:
    b, r = Backoff(), RetryConfig()
    assert (b.initial, b.maximum, b.max_elapsed, b.multiplier, b.randomization) == (
        r.initial_interval_seconds, r.max_interval_seconds, r.max_elapsed_seconds, r.multiplier, r.randomization)
    custom = Backoff.from_config(RetryConfig(initial_interval_seconds=0.5, max_elapsed_seconds=0))
    assert (custom.initial, custom.max_elapsed, custom.maximum) == (0.5, 0, r.max_interval_seconds)


def test_backoff_is_bounded_and_honours_the_hint() -> None:
    b = Backoff(initial=1, maximum=4, max_elapsed=10, multiplier=2, randomization=0, rng=random.Random(1))
    run = b.delays()
    assert [run.next_delay() for _ in range(3)] == [1, 2, 4]
    assert run.next_delay(hint=0.5) == 0.5
    assert run.next_delay() is None  # 1+2+4+0.5+4 > 10


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
