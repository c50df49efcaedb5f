"""``serve``: the live relay. Receiver → processor (under one lock, wall clock) → delivery queue.

Threads: gRPC handler threads decode and stamp (holding the processing lock only around the
pure processor call); one ticker thread releases held spans when their window ends; delivery
workers export. Nothing on a receive path waits on the network.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import grpc
import promptstamp_contract as c
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .apitier import LabelPointers
from .config import Config, LimitsConfig
from .deliver.persistent import Journal, JournalError, PersistentHold
from .deliver.queue import DeliveryItem, DeliveryQueue
from .deliver.retry import Backoff
from .detect import GenerationRules
from .export import (
    DebugExporter,
    Exporter,
    FileExporter,
    JsonLinesWriter,
    LangfuseExporter,
    OtlpGrpcExporter,
)
from .fetchlog import MARKER as FETCH_MARKER
from .limits import Violation, decode_logs, decode_traces
from .pipeline import Outgoing, Processor
from .receive import CallInfo, OtlpGrpcReceiver, Refusal
from .receive.auth import Authenticator
from .receive.budget import ByteBudget
from .receive.tls import server_credentials
from .stamp import StampSettings
from .store import FetchLogStore, MemoryStore
from .store.sqlite import SqliteStore
from .tenants import TenantRouter

__all__ = ["RelayServer", "RelayStats", "check_protobuf_backend"]

log = logging.getLogger("promptstamp_relay")

_KEY_MARKER = c.PROMPT_KEY.encode()
_Req = TypeVar("_Req", ExportTraceServiceRequest, ExportLogsServiceRequest)


def check_protobuf_backend() -> str:
    """The protobuf backend in use; warns loudly unless it is the fast ``upb`` one."""
    from google.protobuf.internal import api_implementation

    kind = str(api_implementation.Type())
    if kind != "upb":
        log.warning(
            "!!! protobuf is using the %r backend, not 'upb': the relay will be several times "
            "slower. Install protobuf>=6.33.5 wheels and unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION.",
            kind,
        )
    from . import wire

    if not wire.native():
        log.warning(
            "the C extension promptstamp_relay._wirec is not in use (no compiler at install time, "
            "or PROMPTSTAMP_PURE_PYTHON set): same results, about half the throughput"
        )
    return kind


@dataclass
class RelayStats:
    spans_received: int = 0
    logs_received: int = 0
    logs_dropped: int = 0
    refused: int = 0
    refused_backpressure: int = 0  # of ``refused``: queue/memory full (UNAVAILABLE + RetryInfo)
    invalid: int = 0
    passthrough_requests: int = 0


def build_processor(cfg: Config, store: FetchLogStore | None = None,
                    api: Callable[[str, str, str], int | None] | None = None,
                    early_release: bool = True) -> Processor:
    settings = StampSettings(
        rules=GenerationRules(present=frozenset(cfg.generation.present), equals=dict(cfg.generation.equals)),
        prompt_names=dict(cfg.prompt_names),
        staleness_ns=int(cfg.resolution.latest_staleness_seconds * 1e9),
        hold_ns=int(cfg.hold.seconds * 1e9),
    )
    if store is None:
        store = MemoryStore(
            max_entries=cfg.store.max_entries,
            max_entries_per_tenant=cfg.store.max_entries_per_tenant,
            max_age_ns=int(cfg.store.max_age_seconds * 1e9),
        )
    # One tenant's share of the hold window matters only when there can be several tenants.
    tenants = cfg.auth.enabled or cfg.auth.passthrough_langfuse_credentials
    return Processor(settings, store, max_held_spans=cfg.hold.max_spans,
                     max_held_spans_per_tenant=cfg.hold.max_spans_per_tenant if tenants else None,
                     api=api, early_release=early_release)


def build_store(cfg: Config) -> FetchLogStore:
    if cfg.store.backend == "redis":
        import importlib

        redis_store = importlib.import_module("promptstamp_relay.store.redis")  # the redis extra
        store: FetchLogStore = redis_store.RedisStore.from_config(cfg.store)
        return store
    return MemoryStore(
        max_entries=cfg.store.max_entries,
        max_entries_per_tenant=cfg.store.max_entries_per_tenant,
        max_age_ns=int(cfg.store.max_age_seconds * 1e9),
    )


def build_trace_exporter(cfg: Config) -> Exporter:
    kind = cfg.exporter_type()
    if kind == "langfuse":
        lf = cfg.exporter.langfuse
        return LangfuseExporter(lf.base_url, lf.public_key, lf.secret_key,
                                ingestion_version=lf.ingestion_version, gzip_level=lf.gzip_level,
                                timeout=lf.timeout_seconds)
    if kind == "otlp_grpc":
        g = cfg.exporter.otlp_grpc
        return OtlpGrpcExporter(g.endpoint, insecure=g.insecure, headers=g.headers,
                                timeout=g.timeout_seconds, compression=g.compression)
    if kind == "file":
        return FileExporter(cfg.exporter.file)
    return DebugExporter()


def build_logs_exporter(cfg: Config) -> Exporter | None:
    lx = cfg.logs_exporter
    if lx.type == "otlp_grpc":
        g = lx.otlp_grpc
        return OtlpGrpcExporter(g.endpoint, signal="logs", insecure=g.insecure, headers=g.headers,
                                timeout=g.timeout_seconds, compression=g.compression)
    if lx.type == "file":
        return FileExporter(lx.file, signal="logs")
    return None


def _count_spans(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


def _count_logs(req: ExportLogsServiceRequest) -> int:
    return sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)


class RelayServer:
    """The whole live relay. ``start()`` binds and returns; ``stop()`` drains and returns.

    ``clock`` (ns since the epoch) is injectable for tests; production uses the wall clock.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], int] = time.time_ns,
        trace_exporter: Exporter | None = None,
        logs_exporter: Exporter | None = None,
        store: FetchLogStore | None = None,
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self.stats = RelayStats()
        self.api: LabelPointers | None = None
        if cfg.resolution.api.enabled:
            self.api = LabelPointers(
                self._api_credentials,
                refresh_seconds=cfg.resolution.api.refresh_seconds,
                timeout=cfg.resolution.api.timeout_seconds,
            )
        # Persistent mode: one SQLite database for the queue, held spans and (memory backend)
        # the fetch log. Lock order everywhere: the journal's transaction, then self._lock.
        self.journal: Journal | None = (
            Journal(cfg.queue.directory, synchronous=cfg.queue.synchronous) if cfg.queue.directory else None
        )
        if store is None and self.journal is not None and cfg.store.backend == "memory":
            store = SqliteStore(
                self.journal, max_entries=cfg.store.max_entries,
                max_entries_per_tenant=cfg.store.max_entries_per_tenant,
                max_age_ns=int(cfg.store.max_age_seconds * 1e9), now_ns=clock(),
            )
        self.processor = build_processor(
            cfg, store if store is not None else build_store(cfg),
            api=self.api.lookup if self.api else None,
        )
        self._lock = threading.Lock()
        if self.journal is not None:
            # Held spans are rows too: a crash inside the hold window loses nothing.
            hold = self.processor.hold
            self.processor.hold = PersistentHold(self.journal, hold.hold_ns, hold.max_spans)
        self._trace_exporter = trace_exporter or build_trace_exporter(cfg)
        # Tenants: who sent a request (auth) and where its spans go (their own Langfuse keys).
        self.tenants = TenantRouter(cfg, self._trace_exporter)
        self.auth = Authenticator(cfg.auth, default_has_keys=self.tenants.default_has_keys)
        self._decode_budget = ByteBudget(cfg.limits.max_inflight_request_bytes)
        self._logs_exporter = logs_exporter if logs_exporter is not None else build_logs_exporter(cfg)
        backoff = Backoff(
            initial=cfg.retry.initial_interval_seconds, maximum=cfg.retry.max_interval_seconds,
            max_elapsed=cfg.retry.max_elapsed_seconds, multiplier=cfg.retry.multiplier,
            randomization=cfg.retry.randomization,
        )
        self.trace_queue = DeliveryQueue(
            self.tenants.exporter_for, max_requests=cfg.queue.max_requests,
            max_bytes=cfg.queue.max_bytes, workers=cfg.queue.workers, backoff=backoff, name="traces",
            journal=self.journal,
        )
        self.logs_queue: DeliveryQueue | None = None
        if self._logs_exporter is not None:
            logs_exporter_ = self._logs_exporter
            self.logs_queue = DeliveryQueue(
                lambda tenant: logs_exporter_, max_requests=cfg.queue.max_requests,
                max_bytes=cfg.queue.max_bytes, workers=1, backoff=backoff, name="logs",
                journal=self.journal,
            )
        self._recorder = JsonLinesWriter(cfg.record) if cfg.record else None
        self.receiver = OtlpGrpcReceiver(
            cfg.listen, self._on_traces, self._on_logs,
            max_message_bytes=cfg.limits.max_request_bytes,
            credentials=server_credentials(cfg.tls),
            extra_services=self._add_health,
        )
        self.address = self.receiver.address
        self._stop = threading.Event()
        self._ticker = threading.Thread(target=self._tick_loop, name="hold-ticker", daemon=True)
        self._metrics_server: object | None = None
        self.metrics_port: int | None = None
        self._stopped = False

    # -- lifecycle -----------------------------------------------------------------------------
    def _add_health(self, server: grpc.Server) -> None:
        from grpc_health.v1 import health, health_pb2, health_pb2_grpc

        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        self._serving = health_pb2.HealthCheckResponse.SERVING
        self._not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    def start(self) -> RelayServer:
        check_protobuf_backend()
        self.trace_queue.start()  # persistent mode: what an earlier run left goes first
        if self.logs_queue is not None:
            self.logs_queue.start()
        self._recover_held()
        if self.api is not None:
            self.api.start()
        self._ticker.start()
        if self.cfg.metrics_listen:
            self._start_metrics()
        self.receiver.start()
        self._health.set("", self._serving)
        if self._logs_exporter is None:
            log.info("no logs exporter configured: log records other than the prompt fetch log "
                     "are counted (promptstamp_logs_dropped) and dropped")
        return self

    def _start_metrics(self) -> None:
        from prometheus_client import start_http_server

        from .telemetry import make_registry

        host, _, port = self.cfg.metrics_listen.rpartition(":")
        server, _thread = start_http_server(int(port), addr=host, registry=make_registry(self))
        self._metrics_server = server
        self.metrics_port = int(server.server_port)

    def queues(self) -> Iterator[DeliveryQueue]:
        yield self.trace_queue
        if self.logs_queue is not None:
            yield self.logs_queue

    def stop(self, timeout: float | None = None) -> int:
        """Stop accepting, release held spans, drain within ``timeout``. Returns items lost."""
        if self._stopped:
            return 0
        self._stopped = True
        timeout = self.cfg.queue.shutdown_timeout_seconds if timeout is None else timeout
        self._health.set("", self._not_serving)
        self.receiver.stop(grace=1.0)
        self._stop.set()
        self._ticker.join(timeout=2)
        try:
            with self._durable(), self._lock:
                released = self.processor.release_all()
                self._enqueue_traces(released)
        except Refusal:  # logged; the held rows stay on disk for the next start
            pass
        deadline = time.monotonic() + timeout
        lost = self.trace_queue.shutdown(timeout)
        if self.logs_queue is not None:
            lost += self.logs_queue.shutdown(max(0.0, deadline - time.monotonic()))
        if self.api is not None:
            self.api.stop()
        self._trace_exporter.shutdown()
        self.tenants.shutdown()
        if self._logs_exporter is not None:
            self._logs_exporter.shutdown()
        if self._recorder is not None:
            self._recorder.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()  # type: ignore[attr-defined]
            self._metrics_server.server_close()  # type: ignore[attr-defined]
        self.processor.store.close()
        if self.journal is not None:
            self.journal.close()
        return lost

    @contextlib.contextmanager
    def _durable(self) -> Iterator[None]:
        """Persistent mode: one SQLite transaction (committed before the sender's OK) around a
        processing step; a failed write refuses the request as retryable. Memory mode: nothing.

        Take it before ``self._lock``, never inside it (the store and hold write through it).
        """
        if self.journal is None:
            yield
            return
        try:
            with self.journal.transaction():
                yield
        except JournalError as e:
            log.error("persistent queue write failed, refusing data: %s", e)
            raise Refusal(grpc.StatusCode.UNAVAILABLE, "relay cannot write its persistent queue, retry later",
                          retry_after=self.cfg.queue.retry_after_seconds) from e

    def _recover_held(self) -> None:
        """Persistent mode: spans an earlier run held go through the processor again."""
        if self.journal is None:
            return
        with self.journal.transaction():
            rows = self.journal.take_held()
            if not rows:
                return
            now = self._clock()
            with self._lock:
                out: list[Outgoing] = []
                for tenant, payload in rows:
                    out.extend(self.processor.consume_traces(
                        ExportTraceServiceRequest.FromString(payload), now, tenant))
                self._enqueue_traces(out)
        log.warning("took back %d held spans left in the persistent queue by an earlier run", len(rows))

    def _tick_loop(self) -> None:
        while not self._stop.is_set():
            now = self._clock()
            due = self.processor.next_due_ns()
            if due is not None and due <= now:
                try:
                    with self._durable(), self._lock:
                        released = self.processor.release_due(now)
                        self._enqueue_traces(released)
                except Refusal:  # logged; the held rows stay on disk for the next start
                    self._stop.wait(0.5)
                continue
            wait = 0.05 if due is None else min(0.05, max(0.001, (due - now) / 1e9))
            self._stop.wait(wait)

    # -- tenants -------------------------------------------------------------------------------
    def tenant_for(self, info: CallInfo) -> str:
        """The tenant a call belongs to (``receive/auth.py``); Refusal (UNAUTHENTICATED) when
        its credentials are missing or wrong. Nothing is decoded before this answers."""
        try:
            identity = self.auth.identify(info.metadata)
        except Refusal:
            self.stats.refused += 1
            raise
        if identity.langfuse_keys is not None:
            self.tenants.remember(identity.tenant, identity.langfuse_keys)
        return identity.tenant

    def _api_credentials(self, tenant: str) -> tuple[str, str, str] | None:
        return self.tenants.api_credentials(tenant)

    # -- receive paths -------------------------------------------------------------------------
    def _refuse_full(self, what: str) -> Refusal:
        self.stats.refused += 1
        self.stats.refused_backpressure += 1
        return Refusal(grpc.StatusCode.UNAVAILABLE, f"relay {what}, retry later",
                       retry_after=self.cfg.queue.retry_after_seconds)

    def _reserve(self, queue: DeliveryQueue | None, size: int) -> None:
        """Admit ``size`` more bytes into ``queue`` or refuse (UNAVAILABLE + RetryInfo).

        One byte bound for everything the relay keeps: both queues (queued and in flight) and
        the held spans. The caller calls ``unreserve`` once the request is queued.
        """
        if queue is None:
            return
        shared = self.processor.hold.held_bytes + sum(q.bytes for q in self.queues() if q is not queue)
        if not queue.try_reserve(size, shared):
            raise self._refuse_full(f"{queue.name} queue is full")

    def _check_size(self, data: bytes) -> None:
        if len(data) > self.cfg.limits.max_request_bytes:
            self.stats.refused += 1
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"request of {len(data)} bytes exceeds limits.max_request_bytes "
                          f"({self.cfg.limits.max_request_bytes})")

    def _on_traces(self, data: bytes, info: CallInfo) -> bytes:
        tenant = self.tenant_for(info)
        self._check_size(data)
        with self._decoding(data):
            req = self._decode(decode_traces, data)
            spans = _count_spans(req)
            self._reserve(self.trace_queue, len(data))
            try:
                with self._durable():
                    self._accept_traces(req, data, spans, tenant)
            finally:
                self.trace_queue.unreserve(len(data))
        return b""

    @contextlib.contextmanager
    def _decoding(self, data: bytes) -> Iterator[None]:
        """Hold ``len(data)`` of ``limits.max_inflight_request_bytes`` while a request is decoded
        and processed; refuse it (UNAVAILABLE + RetryInfo) when none frees up in time."""
        if not self._decode_budget.acquire(len(data)):
            raise self._refuse_full("is decoding too much at once")
        try:
            yield
        finally:
            self._decode_budget.release(len(data))

    def _decode(self, decode: Callable[[bytes, LimitsConfig], _Req], data: bytes) -> _Req:
        """Decode and check against ``limits.*`` (limits.py); a Violation becomes a Refusal."""
        try:
            return decode(data, self.cfg.limits)
        except Violation as v:
            if v.kind == "invalid":
                self.stats.invalid += 1
                raise Refusal(grpc.StatusCode.INVALID_ARGUMENT, v.message) from None
            self.stats.refused += 1
            raise Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, v.message) from None

    def _accept_traces(self, req: ExportTraceServiceRequest, data: bytes, spans: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        self.stats.spans_received += spans
        if _KEY_MARKER not in data:
            # Nothing to stamp: forward the bytes as they came, no re-encoding.
            self.stats.passthrough_requests += 1
            self.trace_queue.put(DeliveryItem(data, spans, tenant))
            return
        now = self._clock()
        with self._lock:
            out = self.processor.consume_traces(req, now, tenant, encoded=data)
        self._enqueue_traces(out)

    def _enqueue_traces(self, outgoing: list[Outgoing]) -> None:
        for o in outgoing:
            self.trace_queue.put(DeliveryItem(o.payload, o.spans, o.tenant))

    def _on_logs(self, data: bytes, info: CallInfo) -> bytes:
        tenant = self.tenant_for(info)
        self._check_size(data)
        with self._decoding(data):
            req = self._decode(decode_logs, data)
            n = _count_logs(req)
            # Fetch-log records become store entries (bounded by store.*) and release held spans
            # (already counted); only the other records are queued, for the logs exporter.
            queue = self.logs_queue
            self._reserve(queue, len(data))
            try:
                with self._durable():
                    self._accept_logs(req, data, n, tenant)
            finally:
                if queue is not None:
                    queue.unreserve(len(data))
        return b""

    def _accept_logs(self, req: ExportLogsServiceRequest, data: bytes, n: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        self.stats.logs_received += n
        if FETCH_MARKER not in data:
            self._pass_logs(req, data, n, tenant)
            return
        now = self._clock()
        with self._lock:
            result = self.processor.consume_logs(req, now, tenant)
        if result.invalid:
            log.warning("%d malformed fetch-log records rejected, first: %s",
                        len(result.invalid), result.invalid[0])
        self._enqueue_traces(result.released)
        if result.passthrough is not None:
            self._pass_logs(result.passthrough, None, _count_logs(result.passthrough), tenant)

    def _pass_logs(self, req: ExportLogsServiceRequest, data: bytes | None, n: int, tenant: str) -> None:
        if self.logs_queue is None:
            self.stats.logs_dropped += n
            return
        self.logs_queue.put(DeliveryItem(data if data is not None else req.SerializeToString(), n, tenant))
