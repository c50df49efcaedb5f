"""Which prompt version produced a generation (contract §4): an ordered list of tiers.

Each tier is one small function ``(sources, span, prompt name) -> Resolution | None`` (None:
ask the next tier); :data:`TIERS` is their contract order, so a new tier is one new entry.
When none answers, :class:`Resolver` says why (``UnresolvedReason``).

**No guessing over evidence.** The tiers after ``trace`` guess from other traces: right for an
app whose record has no trace (a log record sent with no span active) or rides on a long span,
wrong when the label moved meanwhile. An SDK that sends its records on fetch spans
(``promptstamp.fetch``, contract §2) puts every scope's record in the scope's own trace and
exports it no later than the scope's generations; for a prompt key whose records arrive that
way (:class:`FetchSpanKeys`), a generation without its trace's record has one on its way (from
another service of the trace) or lost, never none. The lower tiers are not asked for it: it
stays unresolved, with its reason, rather than linked to what another trace was handed.

Pure: the store is read through :class:`~promptstamp_relay.core.fetch_store.FetchLogStore` only,
no clock; called by the processor with the relay's processing lock held.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, get_args

import promptstamp_contract as c

from ._recent import RecentKeys
from .fetch_store import FetchLogStore
from .model import FetchRecord, UnresolvedReason

__all__ = [
    "TIERS",
    "ApiLookup",
    "FallbackMemory",
    "FetchSpanKeys",
    "LabelMemory",
    "Resolution",
    "Resolver",
    "Sources",
    "SpanKey",
    "Tier",
]

#: ``(tenant, prompt name, label) -> version`` from a local view of the Langfuse prompts API, or None.
ApiLookup = Callable[[str, str, str], "int | None"]


class SpanKey(NamedTuple):
    """What resolution needs to know about one generation span (a named tuple: one is made
    per generation stamped, and a tuple is the cheapest immutable record to make)."""

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
    reason: UnresolvedReason | None = None  # why unresolved (None when resolved)

    @property
    def resolved(self) -> bool:
        return self.version is not None


@dataclass(frozen=True, slots=True)
class Sources:
    """What the tiers may read."""

    store: FetchLogStore
    staleness_ns: int
    api: ApiLookup | None = None


Tier = Callable[[Sources, SpanKey, str], "Resolution | None"]


# Answers repeat (few tiers, versions and sources): one frozen Resolution each. Bounded.
_ANSWERS: dict[tuple[str, int | None, str], Resolution] = {}
_ANSWERS_MAX = 4096


def _answer(tier: str, record: FetchRecord | None) -> Resolution | None:
    if record is None:
        return None
    k = (tier, record.version, record.source)
    got = _ANSWERS.get(k)
    if got is None:
        if len(_ANSWERS) >= _ANSWERS_MAX:
            _ANSWERS.clear()
        got = _ANSWERS[k] = Resolution(*k)
    return got


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


def trace_tier(src: Sources, span: SpanKey, prompt_name: str) -> Resolution | None:
    """A record of the span's own trace (from any service of it)."""
    if not span.trace_id:
        return None
    records = src.store.in_trace(span.tenant, span.trace_id, span.key, span.label)
    return _answer(c.TIER_TRACE, pick_in_trace(records, span.start_ns))


def instance_tier(src: Sources, span: SpanKey, prompt_name: str) -> Resolution | None:
    """The latest record of the span's own instance, not after its start."""
    if not span.instance:
        return None
    record = src.store.latest_for_instance(span.tenant, span.instance, span.key, span.label, span.start_ns)
    return _answer(c.TIER_INSTANCE, record)


def latest_tier(src: Sources, span: SpanKey, prompt_name: str) -> Resolution | None:
    """The latest record of any instance of the tenant, not after the start, not stale."""
    not_before = span.start_ns - src.staleness_ns
    record = src.store.latest(span.tenant, span.key, span.label, span.start_ns, not_before)
    return _answer(c.TIER_LATEST, record)


def api_tier(src: Sources, span: SpanKey, prompt_name: str) -> Resolution | None:
    """What the label points to now, per the prompts API (off unless configured)."""
    if src.api is None:
        return None
    version = src.api(span.tenant, prompt_name, span.label)
    return Resolution(c.TIER_API, version) if version is not None and version > 0 else None


#: The tiers in contract §4 order; the first that answers wins.
TIERS: tuple[Tier, ...] = (trace_tier, instance_tier, latest_tier, api_tier)


class FetchSpanKeys:
    """Prompt keys, per tenant, whose fetch records arrive on fetch spans. Bounded (see
    :class:`RecentKeys`): a key forgotten under pressure only lets the lower tiers answer again."""

    def __init__(self, per_tenant: int = 4096, tenants: int = 1024) -> None:
        self._seen: RecentKeys[str] = RecentKeys(per_tenant, tenants)

    def add(self, tenant: str, keys: Iterable[str]) -> None:
        for key in keys:
            self._seen.add(tenant, key)

    def __contains__(self, item: tuple[str, str]) -> bool:
        return item in self._seen


class LabelMemory:
    """The labels each prompt key was fetched by, per tenant (a convention's claim names a prompt
    but no label: its trace's records are looked up under each). Bounded: at most ``per_key``
    labels per key, ``keys`` keys in all, the oldest forgotten first."""

    def __init__(self, keys: int = 16384, per_key: int = 16) -> None:
        self._keys = keys
        self._per_key = per_key
        self._labels: OrderedDict[tuple[str, str], list[str]] = OrderedDict()

    def add(self, tenant: str, records: Iterable[FetchRecord]) -> None:
        for r in records:
            k = (tenant, r.key)
            labels = self._labels.get(k)
            if labels is None:
                if len(self._labels) >= self._keys:
                    self._labels.popitem(last=False)
                labels = self._labels[k] = []
            if r.label not in labels:
                if len(labels) >= self._per_key:
                    labels.pop(0)
                labels.append(r.label)

    def labels(self, tenant: str, key: str) -> list[str]:
        return list(self._labels.get((tenant, key), ()))


class FallbackMemory:
    """Recent ``fallback`` fetches per tenant: they resolve nothing, but explain why a span is
    unresolved (``fallback_only``). Bounded (see :class:`RecentKeys`)."""

    def __init__(self, per_tenant: int = 4096, tenants: int = 1024) -> None:
        self._seen: RecentKeys[tuple[bytes, str, str]] = RecentKeys(per_tenant, tenants)

    def add(self, tenant: str, records: Iterable[FetchRecord]) -> None:
        for r in records:
            if r.version is None:
                if r.trace_id:
                    self._seen.add(tenant, (r.trace_id, r.key, r.label))
                self._seen.add(tenant, (b"", r.key, r.label))

    def seen(self, span: SpanKey) -> bool:
        """A fallback fetch for the span's (key, label) in its trace or anywhere in its tenant."""
        return (span.tenant, (b"", span.key, span.label)) in self._seen or (
            bool(span.trace_id) and (span.tenant, (span.trace_id, span.key, span.label)) in self._seen
        )


_UNRESOLVED: dict[UnresolvedReason, Resolution] = {
    reason: Resolution(c.TIER_UNRESOLVED, reason=reason)
    for reason in get_args(UnresolvedReason)
}


class Resolver:
    """The tiers over one store, and the reason when none answers."""

    def __init__(
        self,
        store: FetchLogStore,
        *,
        staleness_ns: int,
        api: ApiLookup | None = None,
        fallbacks: FallbackMemory | None = None,
        tiers: Sequence[Tier] = TIERS,
    ) -> None:
        self.sources = Sources(store, staleness_ns, api)
        self.fallbacks = fallbacks if fallbacks is not None else FallbackMemory()
        self.fetch_span_keys = FetchSpanKeys()
        self.labels = LabelMemory()
        self.tiers = tuple(tiers)

    def convention_evidence(self, span: SpanKey) -> tuple[int, str, str] | None:
        """For a convention's claim (a prompt name, no label): the version, label and source of
        its trace's fetch record for that prompt under any label it was fetched by, picked as the
        ``trace`` tier picks (the latest not after the span's start, else the earliest after)."""
        if not span.trace_id:
            return None
        best: tuple[int, str, FetchRecord] | None = None  # (rank, label, record)
        for label in self.labels.labels(span.tenant, span.key):
            record = pick_in_trace(self.sources.store.in_trace(span.tenant, span.trace_id, span.key, label),
                                   span.start_ns)
            if record is None or record.version is None:
                continue
            before = record.time_ns <= span.start_ns
            rank = record.time_ns if before else -record.time_ns  # latest before; else earliest after
            if best is None or (before, rank) > (best[2].time_ns <= span.start_ns, best[0]):
                best = (rank, label, record)
        if best is None:
            return None
        record = best[2]
        assert record.version is not None
        return record.version, best[1], record.source

    def trace_evidence(self, span: SpanKey) -> int | None:
        """The version the span's own trace's fetch record names, if one has arrived."""
        answer = trace_tier(self.sources, span, "")
        return answer.version if answer is not None else None

    def at_arrival(self, span: SpanKey, prompt_name: str, *, may_hold: bool) -> Resolution | None:
        """:meth:`resolve` for a span just arrived; None when the ``trace`` tier cannot answer
        yet and ``may_hold``: then the span is held for its trace's record (contract §4)."""
        if may_hold:
            return trace_tier(self.sources, span, prompt_name)  # the first tier: held when None
        return self.resolve(span, prompt_name)

    def resolve(self, span: SpanKey, prompt_name: str, *, held: bool = False) -> Resolution:
        """The first tier's answer; else unresolved, with why. ``held``: released from the hold
        window (it waited for its trace's record and none came)."""
        exact_only = (span.tenant, span.key) in self.fetch_span_keys and bool(span.trace_id)
        for tier in self.tiers:
            if exact_only and tier is not trace_tier:
                continue  # its trace's record is on its way: no guess from other traces
            answer = tier(self.sources, span, prompt_name)
            if answer is not None:
                return answer
        if self.fallbacks.seen(span):
            return _UNRESOLVED["fallback_only"]
        if held:
            return _UNRESOLVED["hold_expired"]
        return _UNRESOLVED["trace_record_missing" if exact_only else "no_fetch_record"]
