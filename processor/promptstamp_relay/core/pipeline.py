"""The relay's processing core: fetch records in, traces in, stamped traces out. No I/O, no clock.

:class:`Processor` is the one stateful piece between receivers and exporters. The live server
calls it under a lock with the wall clock; replay calls it with a virtual clock. Both get the
same requests out for the same inputs and times. Fetch records come from log requests and
from ``app.prompt.fetch`` span events in trace requests (contract §2); the two forms of one
fetch count once. Observers (:class:`PipelineObserver`) hear of every new fetch record and
every stamped generation, synchronously.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, get_args

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c

from .. import wire
from ..counters import Counters, metric
from ._recent import RecentKeys
from .evidence import LateEvidence, LateRecord
from .fetch_records import FetchLogBatch, Invalid, span_fetch_events, split_fetch_log
from .fetch_store import FetchLogStore
from .hold import HoldWindow
from .model import DEFAULT_TENANT, FetchRecord, GenerationRecord, UnresolvedReason
from .resolve import ApiLookup, Resolver, pick_in_trace
from .stamp import (
    POISON_ACTIONS,
    Conflict,
    HeldSpan,
    PoisonSpan,
    Stamped,
    StampSettings,
    generation_record,
    release_spans,
    span_id_of,
    stamp_request,
)

__all__ = [
    "LogsResult", "Notices", "Outgoing", "PipelineObserver", "Processor", "ProcessorStats", "TracesResult",
]


class Outgoing:
    """An encoded, stamped request ready to send, and whose it is (exporters route by tenant)."""

    __slots__ = ("_request", "payload", "spans", "tenant")

    def __init__(self, tenant: str, payload: bytes, spans: int) -> None:
        self.tenant = tenant
        self.payload = payload
        self.spans = spans
        self._request: ExportTraceServiceRequest | None = None

    @property
    def request(self) -> ExportTraceServiceRequest:
        """The payload decoded (for replay output and tests; the live path sends bytes)."""
        if self._request is None:
            self._request = ExportTraceServiceRequest.FromString(self.payload)
        return self._request


class PipelineObserver(Protocol):
    """Called synchronously by Processor under the relay's processing lock: must not block or do I/O."""

    def on_fetch_records(self, tenant: str, records: Sequence[FetchRecord], now_ns: int) -> None: ...

    def on_generations(self, records: Sequence[GenerationRecord], now_ns: int) -> None: ...


@dataclass
class ProcessorStats(Counters):
    """The processor's counters; only ever incremented, under the relay's processing lock (the
    fields are updated directly there; telemetry reads :meth:`snapshot`)."""

    spans_received: int = metric("Spans in requests that went through stamping (the others were "
                                 "forwarded as they came)", name="spans_processed")
    spans_held: int = metric("Generation spans held for their fetch log")
    stamped: Counter[str] = metric("Generation spans stamped, by resolution tier", name="spans_stamped",
                                   label="tier", values=c.TIERS)  # unresolved included
    unresolved: Counter[str] = metric("Generations stamped unresolved, by reason", label="reason",
                                      values=get_args(UnresolvedReason))
    hold_overflow: int = metric("Generations stamped at once because the hold window was full")
    fetch_records: int = metric("Fetch-log records taken into the store")  # versioned, new
    fetch_fallbacks: int = metric("Fetch-log records with source fallback (a code-embedded prompt: "
                                  "no version)", name="fetch_records_fallback")
    fetch_duplicates: int = metric("Fetch records seen a second time (as log record and span event): "
                                   "taken once", name="fetch_records_duplicate")
    fetch_invalid: int = 0
    fetch_invalid_reasons: Counter[str] = metric("Fetch-log records rejected as malformed, by reason",
                                                 name="fetch_records_invalid", label="reason")
    other_logs: int = 0  # log records that are not fetch records (passed on): see AdmissionStats
    late_records: Counter[str] = metric(
        "A trace's fetch record that arrived after one of its generations was sent without it, by "
        "verdict: agreed (the lower tier's guess was right), disagreed (linked to another version "
        "than the app was handed), was_unresolved", name="late_fetch_records", label="verdict",
        values=("agreed", "disagreed", "was_unresolved"))
    prompt_conflicts: int = metric("Generations that arrived linked (kept as they were) while their "
                                   "trace's fetch record names another version")
    poison_spans: Counter[str] = metric(
        "Spans on which Langfuse's observation type mapper throws (losing every span of their export "
        "request), by what the relay did: typed (added the langfuse.observation.type Langfuse gives them "
        "otherwise), isolated (sent in an export request of their own), forwarded (to a collector, as "
        "they came)", label="action", values=POISON_ACTIONS)


@dataclass
class Notices:
    """What the relay must say about one call, beyond counting it (logged by the caller, outside
    the lock, rate-limited): rejected fetch records, late evidence, conflicting links, poison."""

    invalid: list[Invalid] = field(default_factory=list)
    late: list[LateRecord] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    poison: list[PoisonSpan] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.invalid or self.late or self.conflicts or self.poison)


@dataclass
class LogsResult:
    """What one logs request gave: the logs to pass on (None: nothing left), spans released,
    and why each rejected fetch record was rejected."""

    passthrough: ExportLogsServiceRequest | None
    released: list[Outgoing]
    invalid: list[str]
    notices: Notices = field(default_factory=Notices)


class TracesResult(list[Outgoing]):
    """What one trace request gave: the requests to send (this list: spans released by its fetch
    events or by the clock first, then the request itself, then each of its poison spans that
    must travel alone), and why each rejected fetch event was rejected (``invalid``)."""

    invalid: list[str]
    notices: Notices


class Processor:
    """Resolution state plus the hold window, behind calls that take ``now_ns``.

    Not thread-safe; one caller at a time (the server holds a lock around each call).
    ``early_release``: release held spans as soon as their trace's fetch record arrives (the
    live server does; replay follows contract §5 to the letter and does not). ``hold``: the
    hold window to use (default: an in-memory one sized from ``settings.hold_ns`` and
    ``max_held_spans``).
    """

    def __init__(
        self,
        settings: StampSettings | None,
        store: FetchLogStore,
        *,
        max_held_spans: int = 100_000,
        max_held_spans_per_tenant: int | None = None,
        api: ApiLookup | None = None,
        early_release: bool = True,
        observers: Sequence[PipelineObserver] = (),
        hold: HoldWindow | None = None,
    ) -> None:
        self.settings = settings or StampSettings()
        self.store: FetchLogStore = store
        self.hold = hold if hold is not None else HoldWindow(self.settings.hold_ns, max_held_spans)
        self.max_held_spans_per_tenant = (
            self.hold.max_spans if max_held_spans_per_tenant is None else max_held_spans_per_tenant
        )
        self.resolver = Resolver(self.store, staleness_ns=self.settings.staleness_ns, api=api)
        self.early_release = early_release
        self.observers = tuple(observers)
        self.stats = ProcessorStats()
        # one fetch counts once: its log record and its event share trace and span (the fetch
        # span), key, label, version, source and time
        self._taken: RecentKeys[tuple[bytes, bytes, str, str, int | None, str, int]] = RecentKeys(8192)
        self.evidence = LateEvidence(keep_ns=max(600 * 10**9, 10 * self.settings.hold_ns))
        self._notices = Notices()
        self._now_ns = 0

    def take_notices(self) -> Notices:
        """What happened since the last call that must be logged (and forget it)."""
        notices, self._notices = self._notices, Notices()
        return notices

    # -- fetch records --------------------------------------------------------------------------
    def consume_logs(
        self, request: ExportLogsServiceRequest, now_ns: int, tenant: str = DEFAULT_TENANT
    ) -> LogsResult:
        """Take the fetch records out of ``request``; the other logs are passed on."""
        self._now_ns = now_ns
        batch = split_fetch_log(request)
        self.stats.other_logs += batch.other_logs
        released = self._take_in(tenant, batch, now_ns)
        return LogsResult(request if batch.other_logs else None, released, [v.message for v in batch.invalid],
                          self.take_notices())

    def _take_in(self, tenant: str, batch: FetchLogBatch, now_ns: int) -> list[Outgoing]:
        """New fetch records into the store (once per fetch); held spans they release (live)."""
        st = self.stats
        if batch.invalid:
            st.fetch_invalid += len(batch.invalid)
            st.fetch_invalid_reasons.update(v.code for v in batch.invalid)
            self._notices.invalid.extend(batch.invalid)
        if batch.fetch_span_keys:
            self.resolver.fetch_span_keys.add(tenant, batch.fetch_span_keys)
        new = self._first_time(tenant, batch.records)
        st.fetch_duplicates += len(batch.records) - len(new)
        if not new:
            return []
        versioned = [r for r in new if r.version is not None]
        st.fetch_records += len(versioned)
        st.fetch_fallbacks += len(new) - len(versioned)
        self.store.add(tenant, versioned, now_ns)
        self.resolver.labels.add(tenant, versioned)
        if len(self.evidence):
            late = self.evidence.arrived(tenant, [r for r in versioned if r.trace_id], now_ns,
                                         self.store.in_trace, pick_in_trace)
            if late:
                st.late_records.update(x.verdict for x in late)
                self._notices.late.extend(late)
        if len(versioned) < len(new):
            self.resolver.fallbacks.add(tenant, new)
        for o in self.observers:
            o.on_fetch_records(tenant, new, now_ns)
        if not (self.early_release and versioned):
            return []
        arrived = {(tenant, r.trace_id, r.key, r.label) for r in versioned if r.trace_id}
        return self._release(self.hold.pop_matching(arrived), now_ns)

    def _first_time(self, tenant: str, records: list[FetchRecord]) -> list[FetchRecord]:
        """``records`` without the second form of one fetch (its log record and its span event).
        A record with no trace (no span was active) is a log record only, never twice."""
        traced = [r for r in records if r.trace_id]
        if not traced:
            return records
        firsts = iter(self._taken.add_all(tenant, [
            (r.trace_id, r.span_id, r.key, r.label, r.version, r.source, r.time_ns) for r in traced]))
        return [r for r in records if not r.trace_id or next(firsts)]

    # -- traces -----------------------------------------------------------------------------------
    def consume_traces(
        self,
        request: ExportTraceServiceRequest,
        now_ns: int,
        tenant: str = DEFAULT_TENANT,
        encoded: bytes | None = None,
    ) -> TracesResult:
        """Take in the request's fetch events, release what is due, then stamp the request.

        ``encoded``: the bytes ``request`` was decoded from, if at hand (spliced, not re-encoded).
        """
        self._now_ns = now_ns
        data, index = wire.walk(encoded, request)
        scan = wire.scan_spans(data, index, self.settings.scan_keys)  # one pass: fetch events, candidates
        out = TracesResult()
        events = span_fetch_events(data, index, request, scan.events)
        out.invalid = [v.message for v in events.invalid]
        out += self._take_in(tenant, events, now_ns)
        out += self.release_due(now_ns)
        outcome = stamp_request(
            data, index, request, tenant=tenant, resolver=self.resolver, settings=self.settings,
            now_ns=now_ns, hold_capacity=self.hold_capacity(tenant), scan=scan,
        )
        st = self.stats
        st.spans_received += outcome.spans
        st.spans_held += len(outcome.held)
        st.hold_overflow += outcome.overflow
        self.hold.add(outcome.held)
        self._stamped(outcome.stamped, now_ns)
        if outcome.conflicts:
            st.prompt_conflicts += len(outcome.conflicts)
            self._notices.conflicts.extend(outcome.conflicts)
        if outcome.poison:
            st.poison_spans.update(p.action for p in outcome.poison)
            self._notices.poison.extend(outcome.poison)
        if outcome.payload is not None:
            kept = outcome.spans - len(outcome.held) - len(outcome.isolated)
            out.append(Outgoing(tenant, outcome.payload, kept))
        out += [Outgoing(tenant, alone, 1) for alone in outcome.isolated]
        out.notices = self.take_notices()
        return out

    def hold_capacity(self, tenant: str) -> int:
        """Spans ``tenant`` may still hold: within the window's bound and its own share."""
        own = self.max_held_spans_per_tenant - self.hold.held_for(tenant)
        return max(0, min(self.hold.capacity, own))

    def release_due(self, now_ns: int) -> list[Outgoing]:
        """Held spans whose window has passed, stamped with what is known now."""
        self._now_ns = now_ns
        return self._release(self.hold.pop_due(now_ns), now_ns)

    def release_all(self, now_ns: int | None = None) -> list[Outgoing]:
        """Everything still held (shutdown, end of a replay). ``now_ns`` (for observers):
        default, the latest time the processor was given."""
        return self._release(self.hold.pop_all(), self._now_ns if now_ns is None else now_ns)

    def next_due_ns(self) -> int | None:
        return self.hold.next_due_ns()

    def _release(self, held: list[HeldSpan], now_ns: int) -> list[Outgoing]:
        """One request per tenant, tenants in order of their first held span."""
        by_tenant: dict[str, list[HeldSpan]] = {}
        for h in held:
            by_tenant.setdefault(h.key.tenant, []).append(h)
        out = []
        for tenant, spans in by_tenant.items():
            request, stamped = release_spans(spans, resolver=self.resolver)
            self._stamped(stamped, now_ns)
            out.append(Outgoing(tenant, request.SerializeToString(), len(spans)))
        return out

    def _stamped(self, stamped: list[Stamped], now_ns: int) -> None:
        if not stamped:
            return
        self.stats.stamped.update(g.resolution.tier for g in stamped)
        self.stats.unresolved.update(g.resolution.reason for g in stamped if g.resolution.reason is not None)
        for g in stamped:
            if g.resolution.tier != c.TIER_TRACE and g.key.trace_id:  # sent without its trace's record
                self.evidence.sent(g.key.tenant, g.key.trace_id, g.key.key, g.key.label,
                                   span_id=span_id_of(g), start_ns=g.key.start_ns, tier=g.resolution.tier,
                                   version=g.resolution.version, now_ns=now_ns, service=g.service)
        if self.observers:
            records = [generation_record(g) for g in stamped]
            for o in self.observers:
                o.on_generations(records, now_ns)
