"""Which prompt version produced a generation (contract §4). Pure: reads the store, no clock."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import promptstamp_contract as c

from .records import FetchRecord
from .store import FetchLogStore

__all__ = ["ApiLookup", "Resolution", "SpanKey", "has_trace_record", "resolve_version"]

#: ``(tenant, prompt name, label) -> version`` from a local view of the Langfuse prompts API, or None.
ApiLookup = Callable[[str, str, str], "int | None"]


@dataclass(frozen=True, slots=True)
class SpanKey:
    """What resolution needs to know about one generation span."""

    tenant: str
    key: str
    label: str
    trace_id: bytes
    instance: str
    start_ns: int


@dataclass(frozen=True, slots=True)
class Resolution:
    tier: str
    version: int | None = None
    source: str | None = None  # the fetch record's app.prompt.fetch.source, when one answered

    @property
    def resolved(self) -> bool:
        return self.version is not None


UNRESOLVED = Resolution(c.TIER_UNRESOLVED)


def pick_in_trace(records: Sequence[FetchRecord], start_ns: int) -> FetchRecord | None:
    """The latest record not after ``start_ns``, else the earliest one after it."""
    before: FetchRecord | None = None
    after: FetchRecord | None = None
    for r in records:  # oldest first; ties keep the later arrival for "before"
        if r.version is None:
            continue
        if r.time_ns <= start_ns:
            before = r
        elif after is None:
            after = r
    return before or after


def has_trace_record(store: FetchLogStore, span: SpanKey) -> bool:
    return pick_in_trace(store.in_trace(span.tenant, span.trace_id, span.key, span.label), 0) is not None


def resolve_version(
    store: FetchLogStore,
    span: SpanKey,
    *,
    prompt_name: str,
    staleness_ns: int,
    api: ApiLookup | None = None,
) -> Resolution:
    """Try the tiers in contract order; the first that answers wins."""
    if span.trace_id:
        r = pick_in_trace(store.in_trace(span.tenant, span.trace_id, span.key, span.label), span.start_ns)
        if r is not None:
            return Resolution(c.TIER_TRACE, r.version, r.source)
    if span.instance:
        r = store.latest_for_instance(span.tenant, span.instance, span.key, span.label, span.start_ns)
        if r is not None:
            return Resolution(c.TIER_INSTANCE, r.version, r.source)
    r = store.latest(span.tenant, span.key, span.label, span.start_ns, span.start_ns - staleness_ns)
    if r is not None:
        return Resolution(c.TIER_LATEST, r.version, r.source)
    if api is not None:
        version = api(span.tenant, prompt_name, span.label)
        if version is not None and version > 0:
            return Resolution(c.TIER_API, version, None)
    return UNRESOLVED
