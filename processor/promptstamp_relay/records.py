"""The fetch log as the relay sees it: one :class:`FetchRecord` per prompt an app was handed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TENANT", "FetchRecord"]

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class FetchRecord:
    """One ``app.prompt.fetch`` log record (contract §2), already validated.

    ``version`` is ``None`` only for ``fallback`` records, which resolve nothing.
    ``trace_id`` is empty when no span was active at fetch time. ``instance`` is the resource's
    ``service.instance.id``, else its ``service.name``, else ``""``.
    """

    key: str
    label: str
    version: int | None
    source: str
    time_ns: int
    trace_id: bytes
    span_id: bytes
    instance: str
    error_type: str | None = None
