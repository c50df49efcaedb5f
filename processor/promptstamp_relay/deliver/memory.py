"""The in-memory delivery queue (the default): fast, and what is not sent by the shutdown
deadline is lost (counted in ``lost_items`` and logged, never silently)."""

from __future__ import annotations

import logging

from ..counters import count
from .queue import DeliveryItem, WorkerQueue

__all__ = ["MemoryQueue"]

log = logging.getLogger("promptstamp_relay.deliver")


class MemoryQueue(WorkerQueue):
    """:class:`~.queue.DeliveryQueue` holding its requests in memory."""

    def put(self, item: DeliveryItem) -> None:
        self._append(item)

    def _payload(self, item: DeliveryItem) -> bytes | None:
        return item.payload

    def _give_up(self, n_items: int) -> None:
        self.stats.lost_items += n_items

    def _log_given_up(self, why: str, n_items: int, n_requests: int) -> None:
        log.error("%s: %s: %s in %s lost (in-memory queue)",
                  self.name, why, count(n_items, "item"), count(n_requests, "request"))
