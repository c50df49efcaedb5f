"""One helper writes every count in words: never "1 items"."""

from __future__ import annotations

import logging

import pytest

from promptstamp_relay.counters import count
from promptstamp_relay.deliver import DeliveryItem, build_queue
from promptstamp_relay.deliver._config import QueueConfig
from promptstamp_relay.export import ExportResult
from promptstamp_relay.export.settings import RetryConfig
from tests.fakes import FakeExporter


def test_count() -> None:
    assert count(1, "item") == "1 item"
    assert count(0, "item") == "0 items"
    assert count(2, "entry", "entries") == "2 entries"


def test_shutdown_with_one_item_in_one_request_says_so(caplog: pytest.LogCaptureFixture) -> None:
    never = FakeExporter(then=ExportResult("retry", "down"))
    queue = build_queue(lambda tenant: never, QueueConfig(workers=1), RetryConfig(
        initial_interval_seconds=5, max_interval_seconds=5), name="traces")
    queue.start()
    queue.put(DeliveryItem(b"x", 1, "default"))
    with caplog.at_level(logging.ERROR):
        lost = queue.shutdown(timeout=0.2)
    assert lost == 1
    lines = [r.getMessage() for r in caplog.records if "lost" in r.getMessage() or "not delivered" in r.getMessage()]
    assert lines, [r.getMessage() for r in caplog.records]
    assert all("1 items" not in line and "1 requests" not in line for line in lines), lines
    assert any("1 item" in line for line in lines), lines
