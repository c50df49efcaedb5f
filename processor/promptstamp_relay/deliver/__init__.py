"""Delivery: the bounded queue between receiving and exporting (:class:`DeliveryQueue`, in
memory or persistent on disk), its retries, and its configuration. See docs/delivery.md for
what is guaranteed in each mode."""

from __future__ import annotations

from collections.abc import Sequence

from ..export.retry import Backoff
from ..export.settings import RetryConfig
from ..journal import Journal
from ._config import QueueConfig
from .memory import MemoryQueue
from .persistent import PersistentQueue
from .queue import (
    RELAY_DESTINATION,
    DeliveryItem,
    DeliveryQueue,
    DeliveryStats,
    DestinationOf,
    ExporterFor,
    Full,
)

__all__ = [
    "RELAY_DESTINATION",
    "DeliveryItem",
    "DeliveryQueue",
    "DeliveryStats",
    "DestinationOf",
    "Full",
    "MemoryQueue",
    "PersistentQueue",
    "QueueConfig",
    "RetryConfig",
    "build_queue",
]


def build_queue(exporter_for: ExporterFor, config: QueueConfig, retry: RetryConfig, *,
                name: str, journal: Journal | None = None, workers: int | None = None,
                destination_of: DestinationOf | None = None,
                destinations: Sequence[str] = ()) -> DeliveryQueue:
    """The queue for one signal: persistent when the relay has a journal (``queue.directory``),
    else in memory. ``workers`` overrides ``config.workers``. ``destination_of``: where each
    tenant's requests go, when they can go to several upstreams (each then gets its share of the
    bounds, ``config.destination_share``); ``destinations``: those known in advance."""
    backoff = Backoff.from_config(retry)
    share = config.destination_share if destination_of is not None else None
    if journal is not None:
        return PersistentQueue(exporter_for, journal, config, backoff=backoff, name=name, workers=workers,
                               destination_of=destination_of, share=share, destinations=destinations)
    return MemoryQueue(exporter_for, config, backoff=backoff, name=name, workers=workers,
                       destination_of=destination_of, share=share, destinations=destinations)
