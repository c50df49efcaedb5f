"""Admission: whether the relay takes an OTLP request, whatever transport it came by.

A receiver (``receive/grpc.py``, ``receive/http.py``) hands the request bytes and a
:class:`CallInfo` to :class:`Admission`; it authenticates, waits for the tenant's turn
(``fair.py``: tenants share the processing by weight, an idle tenant goes next), checks the
size, holds decode budget, decodes and checks ``limits.*``, reserves room in the queue and in
the tenant's destination's share of it (``deliver/queue.py``), and accepts — or raises
:class:`Refusal`, a reason and a retry hint that each receiver maps to its own status codes.
What is taken goes to the :class:`~promptstamp_relay.intake.Intake`.

Threads: receiver threads call :class:`Admission` concurrently.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..counters import Counters, metric
from .auth import Authenticator, Unauthenticated
from .budget import ByteBudget
from .decode import Violation, decode_logs, decode_traces
from .fair import FairGate, NoTurn
from .settings import AdmissionConfig, LimitsConfig

__all__ = [
    "Admission",
    "AdmissionStats",
    "Admitter",
    "CallInfo",
    "Refusal",
    "RefusalReason",
]

if TYPE_CHECKING:
    from ..deliver import DeliveryQueue
    from ..intake import Intake

log = logging.getLogger("promptstamp_relay.admission")

RefusalReason = Literal["unauthenticated", "invalid", "too_large", "backpressure", "unavailable"]

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

    spans_received: int = metric("Spans received over OTLP")
    logs_received: int = metric("Log records received over OTLP")
    logs_dropped: int = metric("Non-fetch log records dropped (no logs exporter)")
    # log records in requests without any fetch record (not looked at): exported summed with the
    # processor's other_logs as promptstamp_logs_other_total
    logs_other: int = 0
    metric_points_received: int = metric("Metric data points received over OTLP")
    metric_points_dropped: int = metric("Metric data points dropped (no metrics_exporter configured)")
    refused: int = metric("Requests refused (backpressure, limits, auth)", name="requests_refused")
    refused_backpressure: int = metric(
        "Of requests_refused: relay full (UNAVAILABLE + RetryInfo; senders retry)",
        name="requests_refused_backpressure")
    refused_unauthenticated: int = metric("Of requests_refused: missing or wrong credentials",
                                          name="requests_refused_unauthenticated")
    invalid: int = metric("Requests refused as malformed", name="requests_invalid")
    passthrough_requests: int = metric("Trace requests forwarded as they came (nothing to stamp)",
                                       name="requests_passthrough")
    refused_turn: int = metric(
        "Of requests_refused_backpressure: no turn at the processing (the tenant's share of the waiting "
        "room taken, the room full, or admission.wait_seconds passed)", name="requests_refused_turn")


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
        gate: FairGate | None = None,
    ) -> None:
        self.intake = intake
        self.stats = intake.stats  # one stats object for both
        self._auth = auth
        self._limits = limits
        self._remember = remember_keys
        self._retry_after = retry_after
        self.decode_budget = decode_budget or ByteBudget(limits.max_inflight_request_bytes)
        defaults = AdmissionConfig()
        self.gate = gate or FairGate(defaults.concurrency, max_waiting=defaults.max_waiting,
                                     wait_seconds=defaults.wait_seconds, per_tenant=False)
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
        with self._turn(tenant, len(data)), self._admitting(data):
            req = self._decode(decode_traces, data)
            spans = count_spans(req)
            with self._room(self.intake.trace_queue, len(data), tenant), self.intake.durable():
                self.intake.traces(req, data, spans, tenant)

    def _logs(self, data: bytes, call: CallInfo) -> None:
        tenant = self._tenant(call)
        with self._turn(tenant, len(data)), self._admitting(data):
            req = self._decode(decode_logs, data)
            n = count_logs(req)
            # Fetch-log records become store entries (bounded by store.*) and release held
            # spans (already counted); only the other records are queued, for the logs exporter.
            with self._room(self.intake.logs_queue, len(data), tenant), self.intake.durable():
                self.intake.logs(req, data, n, tenant)

    def _metrics(self, data: bytes, call: CallInfo) -> None:
        tenant = self._tenant(call)
        with self._turn(tenant, len(data)), self._admitting(data):
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
            with self._room(self.intake.metrics_queue, len(data), tenant), self.intake.durable():
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
    def _turn(self, tenant: str, cost: int) -> Iterator[None]:
        """``tenant``'s turn at the processing (``fair.py``), or a retryable refusal."""
        try:
            self.gate.acquire(tenant, cost)
        except NoTurn as e:
            self.stats.add(refused=1, refused_backpressure=1, refused_turn=1)
            raise Refusal("backpressure", e.message, retry_after=self._retry_after) from None
        try:
            yield
        finally:
            self.gate.release(tenant)

    @contextlib.contextmanager
    def _room(self, queue: DeliveryQueue | None, size: int, tenant: str) -> Iterator[None]:
        """``size`` more bytes of room in ``queue`` and in ``tenant``'s destination's share of
        it while the body runs, or Refusal.

        One byte bound for everything the relay keeps: every queue (queued and in flight) and
        the held spans. The whole queue full: ``backpressure`` (every sender); the destination's
        share full (its upstream slow, failing or throttling): ``unavailable``, for its own
        senders only, with the destination's remaining pause as the hint when it is longer.
        """
        if queue is None:
            yield
            return
        intake = self.intake
        shared = intake.processor.hold.held_bytes + sum(q.bytes for q in intake.queues() if q is not queue)
        full = queue.reserve(size, shared, tenant)
        if full is not None:
            if full.destination:
                raise Refusal("unavailable",
                              f"relay {queue.name} queue: the share of upstream destination "
                              f"{full.destination!r} is full (slow, failing or throttling), retry later",
                              retry_after=max(self._retry_after, full.retry_after))
            raise Refusal("backpressure", f"relay {queue.name} queue is full, retry later",
                          retry_after=self._retry_after)
        try:
            yield
        finally:
            queue.unreserve(size, tenant)

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
        """Decode and check against ``limits.*`` (decode.py); a Violation becomes a Refusal."""
        try:
            return decode(data, self._limits)
        except Violation as v:
            if v.kind == "invalid":
                self.stats.add(invalid=1)
                raise Refusal("invalid", v.message) from None
            self.stats.add(refused=1)
            raise Refusal("too_large", v.message) from None


