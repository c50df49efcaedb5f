"""The relay's processing core: fetch log in, traces in, stamped traces out. No I/O, no clock.

:class:`Processor` is the one stateful piece between receivers and exporters. The live server
calls it under a lock with the wall clock; replay calls it with a virtual clock. Both get the
same requests out for the same inputs and times.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .fetchlog import split_fetch_log
from .hold import HoldWindow
from .records import DEFAULT_TENANT
from .resolve import ApiLookup
from .stamp import HeldSpan, StampSettings, release_spans, stamp_request
from .store import FetchLogStore, MemoryStore

__all__ = ["LogsResult", "Outgoing", "Processor", "ProcessorStats"]


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


@dataclass
class ProcessorStats:
    """Counters the telemetry layer exports; only ever incremented."""

    spans_received: int = 0
    spans_held: int = 0
    stamped: Counter[str] = field(default_factory=Counter)  # by resolution tier
    fetch_records: int = 0
    fetch_fallbacks: int = 0
    fetch_invalid: int = 0
    other_logs: int = 0
    hold_overflow: int = 0  # generations stamped at once because the window was full


@dataclass
class LogsResult:
    """What one logs request gave: the logs to pass on (None: nothing left), spans released."""

    passthrough: ExportLogsServiceRequest | None
    released: list[Outgoing]
    invalid: list[str]


class Processor:
    """Resolution state plus the hold window, behind three calls that take ``now_ns``.

    Not thread-safe; one caller at a time (the server holds a lock around each call).
    ``early_release``: release held spans as soon as their trace's fetch record arrives (the
    live server does; replay follows contract §5 to the letter and does not).
    """

    def __init__(
        self,
        settings: StampSettings | None = None,
        store: FetchLogStore | None = None,
        *,
        max_held_spans: int = 100_000,
        max_held_spans_per_tenant: int | None = None,
        api: ApiLookup | None = None,
        early_release: bool = True,
        hold: HoldWindow | None = None,
    ) -> None:
        self.settings = settings or StampSettings()
        self.store: FetchLogStore = store if store is not None else MemoryStore()
        # ``hold``: a window built by the caller (a persistent one); its bound is then its own.
        self.hold = hold if hold is not None else HoldWindow(self.settings.hold_ns, max_held_spans)
        self.max_held_spans_per_tenant = (
            max_held_spans if max_held_spans_per_tenant is None else max_held_spans_per_tenant
        )
        self.api = api
        self.early_release = early_release
        self.stats = ProcessorStats()

    def consume_logs(
        self, request: ExportLogsServiceRequest, now_ns: int, tenant: str = DEFAULT_TENANT
    ) -> LogsResult:
        batch = split_fetch_log(request)
        self.stats.fetch_records += len(batch.records)
        self.stats.fetch_fallbacks += batch.fallbacks
        self.stats.fetch_invalid += len(batch.invalid)
        self.stats.other_logs += batch.other_logs
        released: list[Outgoing] = []
        if batch.records:
            self.store.add(tenant, batch.records, now_ns)
            if self.early_release:
                arrived = {(tenant, r.trace_id, r.key, r.label) for r in batch.records if r.trace_id}
                released = self._release(self.hold.pop_matching(arrived))
        keep = request if batch.other_logs else None
        return LogsResult(keep, released, batch.invalid)

    def consume_traces(
        self,
        request: ExportTraceServiceRequest,
        now_ns: int,
        tenant: str = DEFAULT_TENANT,
        encoded: bytes | None = None,
    ) -> list[Outgoing]:
        """Stamp ``request``; return what is ready to send (it first, then any due held spans).

        ``encoded``: the bytes ``request`` was decoded from, if at hand (a faster scan).
        """
        if encoded is None:
            encoded = request.SerializeToString()
        outcome = stamp_request(
            encoded, request, tenant=tenant, store=self.store, settings=self.settings,
            now_ns=now_ns, hold_capacity=self.hold_capacity(tenant), api=self.api,
        )
        st = self.stats
        st.spans_received += outcome.spans
        st.stamped.update(outcome.stamped)
        st.spans_held += len(outcome.held)
        self.hold.add(outcome.held)
        out = []
        if outcome.payload is not None:
            out.append(Outgoing(tenant, outcome.payload, outcome.spans - len(outcome.held)))
        out.extend(self.release_due(now_ns))
        return out

    def hold_capacity(self, tenant: str) -> int:
        """Spans ``tenant`` may still hold: within the window's bound and its own share."""
        own = self.max_held_spans_per_tenant - self.hold.held_for(tenant)
        return max(0, min(self.hold.capacity, own))

    def release_due(self, now_ns: int) -> list[Outgoing]:
        """Held spans whose window has passed, stamped with what is known now."""
        return self._release(self.hold.pop_due(now_ns))

    def release_all(self) -> list[Outgoing]:
        """Everything still held (shutdown, end of a replay)."""
        return self._release(self.hold.pop_all())

    def next_due_ns(self) -> int | None:
        return self.hold.next_due_ns()

    def _release(self, held: list[HeldSpan]) -> list[Outgoing]:
        """One request per tenant, tenants in order of their first held span."""
        by_tenant: dict[str, list[HeldSpan]] = {}
        for h in held:
            by_tenant.setdefault(h.key.tenant, []).append(h)
        out = []
        for tenant, spans in by_tenant.items():
            request = release_spans(
                spans, store=self.store, settings=self.settings, api=self.api, stamped=self.stats.stamped
            )
            out.append(Outgoing(tenant, request.SerializeToString(), len(spans)))
        return out
