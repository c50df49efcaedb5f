"""Admission: whether the relay takes an OTLP request, whatever transport it came by.

A receiver (``receive/grpc.py``, ``receive/http.py``) hands the request bytes and a
:class:`CallInfo` to :class:`Admission`; it authenticates, checks the size, holds decode
budget, decodes and checks ``limits.*``, reserves queue room and accepts — or raises
:class:`Refusal`, a reason and a retry hint that each receiver maps to its own status codes.
:class:`Intake` is the accepting end, shared with the lifecycle's hold ticker: the processor
under one lock, inside the persistent queue's transaction when there is one.

Threads: receiver threads call :class:`Admission` concurrently; the ticker calls
:class:`Intake`. Lock order: the journal's transaction, then the processing lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c

from ._ratelog import RateLimitedLog
from .config import LimitsConfig
from .counters import Counters
from .deliver import DeliveryItem, DeliveryQueue
from .deliver.journal import Journal, JournalError
from .export import JsonLinesWriter
from .fetchlog import CORRECT_RECORD
from .fetchlog import MARKER as FETCH_MARKER
from .hold_persistent import take_held
from .limits import Violation, decode_logs, decode_traces
from .pipeline import Notices, Outgoing, Processor
from .receive.auth import Authenticator, Unauthenticated
from .receive.budget import ByteBudget

__all__ = [
    "Admission",
    "AdmissionStats",
    "Admitter",
    "CallInfo",
    "Intake",
    "Refusal",
    "RefusalReason",
]

log = logging.getLogger("promptstamp_relay.admit")

RefusalReason = Literal["unauthenticated", "invalid", "too_large", "backpressure", "unavailable"]

_KEY_MARKER = c.PROMPT_KEY.encode()
_Req = TypeVar("_Req", ExportTraceServiceRequest, ExportLogsServiceRequest)

#: At most one "refused authentication" log line per this many seconds (the rest are counted).
AUTH_LOG_INTERVAL_SECONDS = 10.0


class Refusal(Exception):
    """Why a request is not taken. ``retry_after``: seconds the sender should wait before
    retrying (None: no hint). Never carries a credential or a value the caller sent."""

    def __init__(self, reason: RefusalReason, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.reason: RefusalReason = reason
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"Refusal({self.reason!r}, {self.message!r}, retry_after={self.retry_after!r})"


@dataclass(frozen=True)
class CallInfo:
    """One incoming call, as the receiver saw it."""

    metadata: Mapping[str, str]  # lower-case header / gRPC metadata names -> values
    peer: str  # "ipv4:127.0.0.1:5555" (gRPC) or "127.0.0.1:5555"
    transport: str = "grpc"  # "grpc" | "http"


class Admitter(Protocol):
    """What a receiver calls (``Admission`` is the real one; test fakes implement it too).
    Each returns normally for an OK answer, or raises :class:`Refusal`."""

    def traces(self, data: bytes, call: CallInfo) -> None: ...
    def logs(self, data: bytes, call: CallInfo) -> None: ...
    def metrics(self, data: bytes, call: CallInfo) -> None: ...


@dataclass
class AdmissionStats(Counters):
    """Admission's counters; :meth:`add` is exact under concurrent receiver threads."""

    spans_received: int = 0
    logs_received: int = 0
    logs_dropped: int = 0  # non-fetch log records, no logs exporter configured
    logs_other: int = 0  # log records in requests without any fetch record (not looked at)
    metric_points_received: int = 0
    metric_points_dropped: int = 0  # no metrics exporter configured
    refused: int = 0  # every refusal except ``invalid``
    refused_backpressure: int = 0  # of ``refused``: backpressure / unavailable (retryable)
    refused_unauthenticated: int = 0  # of ``refused``: missing or wrong credentials
    invalid: int = 0
    passthrough_requests: int = 0  # trace requests forwarded as they came (nothing to stamp)


def count_spans(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def count_logs(req: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


def count_points(req: ExportMetricsServiceRequest) -> int:
    n = 0
    for rm in req.resource_metrics:
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                if kind is not None:
                    n += len(getattr(m, kind).data_points)
    return n


class Intake:
    """The accepting end: the processor under the processing lock, the delivery queues, the
    recorder and (persistent mode) the journal's transaction around each step."""

    def __init__(
        self,
        processor: Processor,
        trace_queue: DeliveryQueue,
        logs_queue: DeliveryQueue | None,
        *,
        stats: AdmissionStats,
        journal: Journal | None = None,
        recorder: JsonLinesWriter | None = None,
        clock: Callable[[], int] = time.time_ns,
        retry_after: float = 1.0,
        metrics_queue: DeliveryQueue | None = None,
    ) -> None:
        self.processor = processor
        self.trace_queue = trace_queue
        self.logs_queue = logs_queue
        self.metrics_queue = metrics_queue  # None: metrics are counted and dropped
        self.stats = stats
        self._journal = journal
        self._recorder = recorder
        self._clock = clock
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._say = RateLimitedLog(log)

    def queues(self) -> Sequence[DeliveryQueue]:
        return [q for q in (self.trace_queue, self.logs_queue, self.metrics_queue) if q is not None]

    @contextlib.contextmanager
    def durable(self) -> Iterator[None]:
        """Persistent mode: one SQLite transaction (committed before the sender's OK) around a
        step; a failed write refuses the request as retryable. Memory mode: nothing."""
        if self._journal is None:
            yield
            return
        try:
            with self._journal.transaction():
                yield
        except JournalError as e:
            log.error("persistent queue write failed, refusing data: %s", e)
            raise Refusal("unavailable", "relay cannot write its persistent queue, retry later",
                          retry_after=self._retry_after) from e

    @contextlib.contextmanager
    def reservation(self, queue: DeliveryQueue | None, size: int) -> Iterator[None]:
        """``size`` more bytes of room in ``queue`` while the body runs, or Refusal.

        One byte bound for everything the relay keeps: both queues (queued and in flight) and
        the held spans.
        """
        if queue is None:
            yield
            return
        shared = self.processor.hold.held_bytes + sum(q.bytes for q in self.queues() if q is not queue)
        if not queue.try_reserve(size, shared):
            raise Refusal("backpressure", f"relay {queue.name} queue is full, retry later",
                          retry_after=self._retry_after)
        try:
            yield
        finally:
            queue.unreserve(size)

    # -- accepting ------------------------------------------------------------------------------
    def traces(self, req: ExportTraceServiceRequest, data: bytes, spans: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        if _KEY_MARKER not in data:
            # Nothing to stamp: forward the bytes as they came, no re-encoding.
            self.stats.add(spans_received=spans, passthrough_requests=1)
            self.trace_queue.put(DeliveryItem(data, spans, tenant))
            return
        self.stats.add(spans_received=spans)
        now = self._clock()
        with self._lock:
            out = self.processor.consume_traces(req, now, tenant, encoded=data)
        self._enqueue(out)
        if out.notices:
            self.report(out.notices, tenant)

    def logs(self, req: ExportLogsServiceRequest, data: bytes, n: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        if FETCH_MARKER not in data:
            self.stats.add(logs_received=n, logs_other=n)
            self._pass_logs(req, data, n, tenant)
            return
        self.stats.add(logs_received=n)
        now = self._clock()
        with self._lock:
            result = self.processor.consume_logs(req, now, tenant)
        if result.notices:
            self.report(result.notices, tenant)
        self._enqueue(result.released)
        if result.passthrough is not None:
            self._pass_logs(result.passthrough, None, count_logs(result.passthrough), tenant)

    def report(self, notices: Notices, tenant: str) -> None:
        """Log what the processor noticed, at most one line per kind every 10 s (the rest are
        counted in that line and in the metrics)."""
        if notices.invalid:
            v = notices.invalid[0]
            self._say.log(logging.WARNING, "invalid",
                          "fetch record from service.name=%r (tenant %r) rejected, %d in this request: %s "
                          "(%s); a correct record has %s",
                          v.service, tenant, len(notices.invalid), v.message, v.code, CORRECT_RECORD)
        for late in notices.late:
            if late.verdict == "agreed":
                continue
            was = (f"linked to version {late.written_version} by the {late.written_tier!r} tier"
                   if late.written_version is not None else "sent unresolved")
            self._say.log(logging.WARNING, f"late-{late.verdict}",
                          "trace %s: generation %s (service.name=%r) was %s; its trace's fetch record "
                          "for %r label %r arrived %.1f s later and names version %d%s. Raise "
                          "hold.seconds above the delay between the app's fetch span and its "
                          "generations reaching the relay (the fetch record's export delay) to "
                          "prevent this (promptstamp_late_fetch_records_total)",
                          late.trace_id.hex(), late.span_id.hex(), late.service, was, late.key, late.label,
                          late.late_ns / 1e9, late.record_version,
                          "" if late.verdict == "was_unresolved" else ": the link is wrong")
            break
        if notices.conflicts:
            x = notices.conflicts[0]
            self._say.log(logging.WARNING, "conflict",
                          "trace %s: generation %s (service.name=%r) arrived linked to %r version %r, "
                          "but its trace's fetch record for %r label %r names version %d; kept as it "
                          "arrived (promptstamp_prompt_conflicts_total, %d in this request)",
                          x.trace_id.hex(), x.span_id.hex(), x.service, x.linked_name, x.linked_version,
                          x.key, x.label, x.evidence_version, len(notices.conflicts))

    def metrics(self, data: bytes, n: int, tenant: str) -> None:
        """Metrics go on unchanged (the bytes as they came) when there is a metrics exporter."""
        if self.metrics_queue is None:
            self.stats.add(metric_points_received=n, metric_points_dropped=n)
            return
        self.stats.add(metric_points_received=n)
        self.metrics_queue.put(DeliveryItem(data, n, tenant))

    def _pass_logs(self, req: ExportLogsServiceRequest, data: bytes | None, n: int, tenant: str) -> None:
        if self.logs_queue is None:
            self.stats.add(logs_dropped=n)
            return
        self.logs_queue.put(DeliveryItem(data if data is not None else req.SerializeToString(), n, tenant))

    def _enqueue(self, outgoing: list[Outgoing]) -> None:
        for o in outgoing:
            self.trace_queue.put(DeliveryItem(o.payload, o.spans, o.tenant))

    # -- the hold window (the lifecycle's ticker and shutdown) ---------------------------------
    def next_due_ns(self) -> int | None:
        return self.processor.next_due_ns()

    def release_due(self, now_ns: int) -> None:
        with self.durable(), self._lock:
            self._enqueue(self.processor.release_due(now_ns))

    def release_all(self) -> None:
        with self.durable(), self._lock:
            self._enqueue(self.processor.release_all())

    def recover_held(self) -> int:
        """Persistent mode: spans an earlier run held go through the processor again."""
        if self._journal is None:
            return 0
        with self._journal.transaction():
            rows = take_held(self._journal)
            if not rows:
                return 0
            now = self._clock()
            with self._lock:
                out: list[Outgoing] = []
                for tenant, payload in rows:
                    out.extend(self.processor.consume_traces(
                        ExportTraceServiceRequest.FromString(payload), now, tenant))
                self._enqueue(out)
        return len(rows)


class _AuthLog:
    """Refused authentication at INFO, at most one line per interval; the rest are counted
    and reported with the next line (a misconfigured fleet must not flood the log)."""

    def __init__(self, interval: float | None = None) -> None:
        self._interval = AUTH_LOG_INTERVAL_SECONDS if interval is None else interval
        self._next = 0.0
        self._suppressed = 0
        self._lock = threading.Lock()

    def refused(self, call: CallInfo, hint: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._suppressed += 1
                return
            self._next = now + self._interval
            suppressed, self._suppressed = self._suppressed, 0
        more = f" ({suppressed} more refused in the last {self._interval:.0f} s)" if suppressed else ""
        log.info("refused unauthenticated %s request from %s: %s%s", call.transport, call.peer, hint, more)


class Admission:
    """Built once (``wiring.py``); called from receiver threads. Each method returns when the
    relay owns the request (OK), or raises :class:`Refusal`."""

    def __init__(
        self,
        intake: Intake,
        auth: Authenticator,
        limits: LimitsConfig,
        *,
        remember_keys: Callable[[str, tuple[str, str]], None] | None = None,
        retry_after: float = 1.0,
        decode_budget: ByteBudget | None = None,
    ) -> None:
        self.intake = intake
        self.stats = intake.stats  # one stats object for both
        self._auth = auth
        self._limits = limits
        self._remember = remember_keys
        self._retry_after = retry_after
        self.decode_budget = decode_budget or ByteBudget(limits.max_inflight_request_bytes)
        self._auth_log = _AuthLog()
        self._inflight = 0
        self._draining = False
        self._idle = threading.Condition()

    def drain(self, timeout: float) -> bool:
        """Refuse every new call from now on (``unavailable``, with the retry hint) and wait up
        to ``timeout`` seconds for the calls in flight to finish; False if some did not."""
        deadline = time.monotonic() + timeout
        with self._idle:
            self._draining = True
            while self._inflight:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    @contextlib.contextmanager
    def _call(self) -> Iterator[None]:
        with self._idle:
            if self._draining:
                self.stats.add(refused=1, refused_backpressure=1)
                raise Refusal("unavailable", "relay is shutting down, retry later",
                              retry_after=self._retry_after)
            self._inflight += 1
        try:
            yield
        finally:
            with self._idle:
                self._inflight -= 1
                if not self._inflight:
                    self._idle.notify_all()

    # -- the three signals ----------------------------------------------------------------------
    def traces(self, data: bytes, call: CallInfo) -> None:
        with self._call():
            self._traces(data, call)

    def logs(self, data: bytes, call: CallInfo) -> None:
        with self._call():
            self._logs(data, call)

    def metrics(self, data: bytes, call: CallInfo) -> None:
        """Forwarded unchanged to the metrics exporter, or counted and dropped without one."""
        with self._call():
            self._metrics(data, call)

    def _traces(self, data: bytes, call: CallInfo) -> None:
        tenant = self._tenant(call)
        with self._admitting(data):
            req = self._decode(decode_traces, data)
            spans = count_spans(req)
            with self.intake.reservation(self.intake.trace_queue, len(data)), self.intake.durable():
                self.intake.traces(req, data, spans, tenant)

    def _logs(self, data: bytes, call: CallInfo) -> None:
        tenant = self._tenant(call)
        with self._admitting(data):
            req = self._decode(decode_logs, data)
            n = count_logs(req)
            # Fetch-log records become store entries (bounded by store.*) and release held
            # spans (already counted); only the other records are queued, for the logs exporter.
            with self.intake.reservation(self.intake.logs_queue, len(data)), self.intake.durable():
                self.intake.logs(req, data, n, tenant)

    def _metrics(self, data: bytes, call: CallInfo) -> None:
        tenant = self._tenant(call)
        with self._admitting(data):
            req = ExportMetricsServiceRequest()
            try:
                req.ParseFromString(data)
            except DecodeError:
                self.stats.add(invalid=1)
                raise Refusal("invalid", "malformed ExportMetricsServiceRequest") from None
            n = count_points(req)
            if n > self._limits.max_spans_per_request:
                self.stats.add(refused=1)
                raise Refusal("too_large", f"{n} metric data points, over limits.max_spans_per_request "
                                           f"({self._limits.max_spans_per_request})")
            with self.intake.reservation(self.intake.metrics_queue, len(data)), self.intake.durable():
                self.intake.metrics(data, n, tenant)

    # -- steps ----------------------------------------------------------------------------------
    def _tenant(self, call: CallInfo) -> str:
        """Who sent ``call``; nothing is decoded before this answers."""
        try:
            identity = self._auth.identify(call.metadata)
        except Unauthenticated as e:
            self.stats.add(refused=1, refused_unauthenticated=1)
            self._auth_log.refused(call, e.hint)
            raise Refusal("unauthenticated", e.message) from None
        if identity.langfuse_keys is not None and self._remember is not None:
            self._remember(identity.tenant, identity.langfuse_keys)
        return identity.tenant

    @contextlib.contextmanager
    def _admitting(self, data: bytes) -> Iterator[None]:
        """The size limit, then ``len(data)`` of the decode budget while the body runs."""
        limit = self._limits.max_request_bytes
        if len(data) > limit:
            self.stats.add(refused=1)
            raise Refusal("too_large",
                          f"request of {len(data)} bytes exceeds limits.max_request_bytes ({limit})")
        if not self.decode_budget.acquire(len(data)):
            self.stats.add(refused=1, refused_backpressure=1)
            raise Refusal("backpressure", "relay is decoding too much at once, retry later",
                          retry_after=self._retry_after)
        try:
            yield
        except Refusal as r:
            if r.reason in ("backpressure", "unavailable"):
                self.stats.add(refused=1, refused_backpressure=1)
            raise
        finally:
            self.decode_budget.release(len(data))

    def _decode(self, decode: Callable[[bytes, LimitsConfig], _Req], data: bytes) -> _Req:
        """Decode and check against ``limits.*`` (limits.py); a Violation becomes a Refusal."""
        try:
            return decode(data, self._limits)
        except Violation as v:
            if v.kind == "invalid":
                self.stats.add(invalid=1)
                raise Refusal("invalid", v.message) from None
            self.stats.add(refused=1)
            raise Refusal("too_large", v.message) from None


