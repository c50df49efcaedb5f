"""Delivery: the bounded queue between receiving and exporting (:class:`DeliveryQueue`, in
memory or persistent on disk), its retries, and its configuration. See docs/delivery.md for
what is guaranteed in each mode."""

from __future__ import annotations

from ..export.retry import Backoff
from ..export.settings import RetryConfig
from ..journal import Journal
from ._config import QueueConfig
from .memory import MemoryQueue
from .persistent import PersistentQueue
from .queue import DeliveryItem, DeliveryQueue, DeliveryStats, ExporterFor

__all__ = [
    "DeliveryItem",
    "DeliveryQueue",
    "DeliveryStats",
    "MemoryQueue",
    "PersistentQueue",
    "QueueConfig",
    "RetryConfig",
    "build_queue",
]


def build_queue(exporter_for: ExporterFor, config: QueueConfig, retry: RetryConfig, *,
                name: str, journal: Journal | None = None, workers: int | None = None) -> DeliveryQueue:
    """The queue for one signal: persistent when the relay has a journal (``queue.directory``),
    else in memory. ``workers`` overrides ``config.workers``."""
    backoff = Backoff.from_config(retry)
    if journal is not None:
        return PersistentQueue(exporter_for, journal, config, backoff=backoff, name=name, workers=workers)
    return MemoryQueue(exporter_for, config, backoff=backoff, name=name, workers=workers)
