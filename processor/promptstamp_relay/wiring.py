"""Builds the live relay's components from a validated :class:`~.config.Config`, once.

Every collaborator is passed in at construction; nothing is patched afterwards.
``RelayServer.start`` calls :func:`build`, which opens the persistent queue's database (and its
lock) but binds no port: receivers and the metrics listener bind in their own ``start``.
:meth:`Components.close` releases what building opened. A receiver for another transport is
one more entry in :func:`build_receivers`, reusing the same :class:`~.admit.Admission`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from promptstamp_contract.langfuse_typing import GenerationRules

from .admission import Admission, AdmissionStats
from .admission.auth import Authenticator
from .admission.budget import ByteBudget
from .admission.fair import FairGate
from .config import Config, LogsExporterConfig, MetricsExporterConfig
from .core.hold import HoldWindow
from .core.pipeline import PipelineObserver, Processor
from .core.stamp import StampSettings
from .deliver import DeliveryQueue, build_queue
from .export import (
    DebugExporter,
    Exporter,
    FileExporter,
    JsonLinesWriter,
    LangfuseExporter,
    OtlpGrpcExporter,
)
from .export.routing import TenantRouter
from .intake import Intake
from .journal import Journal
from .journal.held import PersistentHold
from .ops.listener import MetricsListener
from .ops.telemetry import Sources, build_info, make_registry
from .receive.grpc import OtlpGrpcReceiver
from .receive.http import OtlpHttpReceiver, effective_listen
from .receive.tls import server_credentials, server_ssl_context
from .rollouts._plans import PlanReader
from .rollouts.component import Rollouts
from .store import FetchLogStore, MemoryStore
from .store.label_pointers import LabelPointers
from .store.sqlite import SqliteStore

__all__ = [
    "Components",
    "Receiver",
    "build",
    "build_gate",
    "build_logs_exporter",
    "build_metrics_exporter",
    "build_processor",
    "build_receivers",
    "build_store",
    "build_trace_exporter",
]


class Receiver(Protocol):
    """A transport's listener, driven by the lifecycle (``server.py``)."""

    @property
    def address(self) -> str: ...  # host:port actually bound, after start()
    def start(self) -> None: ...  # bind and serve; OSError when it cannot bind
    def set_serving(self, serving: bool) -> None: ...  # health: False while draining
    def stop(self, grace: float | None = None) -> None: ...  # idempotent, fine before start


def build_processor(cfg: Config, store: FetchLogStore | None = None, *,
                    api: Callable[[str, str, str], int | None] | None = None,
                    early_release: bool = True, hold: HoldWindow | None = None,
                    observers: Sequence[PipelineObserver] = ()) -> Processor:
    """The pure processor (also what ``replay`` runs, with ``early_release=False``).
    ``observers``: :class:`~.pipeline.PipelineObserver` objects."""
    settings = StampSettings(
        rules=GenerationRules(present=frozenset(cfg.generation.present), equals=dict(cfg.generation.equals)),
        prompt_names=dict(cfg.prompt_names),
        staleness_ns=int(cfg.resolution.latest_staleness_seconds * 1e9),
        hold_ns=int(cfg.hold.seconds * 1e9),
        convention_names=dict(cfg.conventions.openinference_prompts),
        semconv_link=cfg.stamp.semconv_link,
        # A collector batches spans again: a poison span sent alone would land beside others.
        isolate_poison=cfg.exporter_type() != "otlp_grpc",
    )
    # One tenant's share of the hold window matters only when there can be several tenants.
    tenants = cfg.auth.enabled or cfg.auth.passthrough_langfuse_credentials
    # Without a store given (replay, tools): in memory, whatever store.backend says.
    return Processor(settings, store if store is not None else _memory_store(cfg),
                     max_held_spans=cfg.hold.max_spans,
                     max_held_spans_per_tenant=cfg.hold.max_spans_per_tenant if tenants else None,
                     api=api, early_release=early_release, hold=hold,
                     observers=tuple(observers))


def build_store(cfg: Config, journal: Journal | None = None, now_ns: int = 0) -> FetchLogStore:
    if cfg.store.backend == "redis":
        redis_store = importlib.import_module("promptstamp_relay.store.redis")  # the redis extra
        store: FetchLogStore = redis_store.RedisStore.from_config(cfg.store)
        return store
    if journal is not None:  # persistent mode: the fetch-log state survives a restart too
        return SqliteStore(journal, cfg.store, now_ns=now_ns)
    return _memory_store(cfg)


def _memory_store(cfg: Config) -> MemoryStore:
    return MemoryStore(cfg.store)


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
    """Where log records other than the fetch log go (``logs_exporter``); None: dropped."""
    return _signal_exporter(cfg.logs_exporter, "logs")


def build_metrics_exporter(cfg: Config) -> Exporter | None:
    """Where OTLP metrics go unchanged (``metrics_exporter``); None: counted and dropped."""
    return _signal_exporter(cfg.metrics_exporter, "metrics")


def _signal_exporter(section: LogsExporterConfig | MetricsExporterConfig,
                     signal: Literal["logs", "metrics"]) -> Exporter | None:
    if section.type == "otlp_grpc":
        g = section.otlp_grpc
        return OtlpGrpcExporter(g.endpoint, signal=signal, insecure=g.insecure, headers=g.headers,
                                timeout=g.timeout_seconds, compression=g.compression)
    if section.type == "file":
        return FileExporter(section.file, signal=signal)
    return None


def _queue(cfg: Config, exporter_for: Callable[[str], Exporter], *, name: str, workers: int,
           journal: Journal | None, tenants: TenantRouter | None = None) -> DeliveryQueue:
    """One signal's queue. ``tenants``: the traces', whose requests can go to several upstreams
    (tenants' own Langfuse projects): one share of the queue and one backoff per destination."""
    if tenants is not None and tenants.several_destinations:
        return build_queue(exporter_for, cfg.queue, cfg.retry, name=name, journal=journal, workers=workers,
                           destination_of=tenants.destination_of, destinations=tenants.destinations())
    return build_queue(exporter_for, cfg.queue, cfg.retry, name=name, journal=journal, workers=workers)


def build_gate(cfg: Config) -> FairGate:
    """Turns at the processing (``admission.*``), shared by the tenants by weight; each
    tenant's part of the waiting room bounded only when there can be several tenants."""
    a = cfg.admission
    return FairGate(a.concurrency, max_waiting=a.max_waiting, wait_seconds=a.wait_seconds,
                    weights={name: t.weight for name, t in cfg.auth.tenants.items()},
                    per_tenant=cfg.auth.enabled or cfg.auth.passthrough_langfuse_credentials)


def build_receivers(cfg: Config, admission: Admission) -> list[Receiver]:
    """Every transport the relay listens on; each calls the same admission."""
    grpc = cfg.receivers.grpc
    # With tenants, more handler threads than turns: requests wait for their turn in admission
    # (tenant by tenant), not in grpcio's FIFO. Without, one more than the turns (each idle
    # thread more costs the GIL a little: measured ~2 % of the spans per CPU-second).
    threads = grpc.threads or cfg.admission.concurrency + (
        cfg.admission.max_waiting + 4 if cfg.auth.enabled or cfg.auth.passthrough_langfuse_credentials else 1)
    receivers: list[Receiver] = [
        OtlpGrpcReceiver(cfg.listen, admission, max_message_bytes=cfg.limits.max_request_bytes,
                         credentials=server_credentials(cfg.tls), threads=threads, config=grpc),
    ]
    http_listen = effective_listen(cfg.receivers.http, cfg.listen)
    if http_listen:
        receivers.append(OtlpHttpReceiver(
            dataclasses.replace(cfg.receivers.http, listen=http_listen), admission,
            max_request_bytes=cfg.limits.max_request_bytes,
            max_inflight_bytes=cfg.limits.max_inflight_request_bytes,
            ssl_context=server_ssl_context(cfg.tls), retry_after=cfg.queue.retry_after_seconds))
    return receivers


@dataclass
class Components:
    """The live relay, built. Attributes are the components themselves, read-only by use."""

    cfg: Config
    journal: Journal | None
    processor: Processor
    api: LabelPointers | None
    tenants: TenantRouter
    trace_exporter: Exporter
    logs_exporter: Exporter | None
    trace_queue: DeliveryQueue
    logs_queue: DeliveryQueue | None
    recorder: JsonLinesWriter | None
    intake: Intake
    admission: Admission
    receivers: list[Receiver]
    telemetry: Sources
    listener: MetricsListener | None = None
    metrics_exporter: Exporter | None = None
    metrics_queue: DeliveryQueue | None = None
    rollouts: Rollouts | None = None
    _closed: bool = field(default=False, repr=False)

    def queues(self) -> list[DeliveryQueue]:
        return self.intake.queues()  # type: ignore[return-value]

    def close(self) -> None:
        """Release what building and running hold: exporters, files, the store, the journal.
        Idempotent. The lifecycle stops threads and drains queues before calling it."""
        if self._closed:
            return
        self._closed = True
        for closer in (self.trace_exporter.shutdown, self.tenants.shutdown,
                       *((self.logs_exporter.shutdown,) if self.logs_exporter is not None else ()),
                       *((self.metrics_exporter.shutdown,) if self.metrics_exporter is not None else ()),
                       *((self.recorder.close,) if self.recorder is not None else ()),
                       *((self.rollouts.close,) if self.rollouts is not None else ()),
                       self.processor.store.close,
                       *((self.journal.close,) if self.journal is not None else ())):
            closer()


def build(cfg: Config, *, clock: Callable[[], int] = time.time_ns, protobuf_backend: str = "",
          native: bool = False, trace_exporter: Exporter | None = None,
          logs_exporter: Exporter | None = None, store: FetchLogStore | None = None,
          observers: Sequence[Any] = ()) -> Components:
    """Every component of the live relay, from ``cfg`` (validated). Opens the persistent queue's
    database (taking its directory's lock) when ``queue.directory`` is set, and closes it
    again if building fails."""
    # Persistent mode: one SQLite database for the queue, held spans and (memory backend) the
    # fetch log. Lock order everywhere: the journal's transaction, then the processing lock.
    journal = Journal(cfg.queue.directory, synchronous=cfg.queue.synchronous) if cfg.queue.directory else None
    try:
        return _build(cfg, journal, clock=clock, protobuf_backend=protobuf_backend, native=native,
                      trace_exporter=trace_exporter, logs_exporter=logs_exporter, store=store,
                      observers=observers)
    except BaseException:
        if journal is not None:
            with contextlib.suppress(Exception):
                journal.close()
        raise


def _build(cfg: Config, journal: Journal | None, *, clock: Callable[[], int], protobuf_backend: str,
           native: bool, trace_exporter: Exporter | None, logs_exporter: Exporter | None,
           store: FetchLogStore | None, observers: Sequence[Any] = ()) -> Components:
    trace_exporter = trace_exporter or build_trace_exporter(cfg)
    # Tenants: who sent a request (auth) and where its spans go (their own Langfuse keys).
    tenants = TenantRouter(cfg, trace_exporter)
    api = None
    if cfg.resolution.api.enabled:
        api = LabelPointers(tenants.api_credentials, refresh_seconds=cfg.resolution.api.refresh_seconds,
                            timeout=cfg.resolution.api.timeout_seconds)
    if store is None:
        store = build_store(cfg, journal if cfg.store.backend == "memory" else None, clock())
    hold = None
    if journal is not None:  # held spans are rows too: a crash inside the hold window loses nothing
        hold = PersistentHold(journal, int(cfg.hold.seconds * 1e9), cfg.hold.max_spans)
    rollouts = None
    if cfg.rollouts.enabled:  # per-version metrics and the label timeline (rollouts/)
        rollouts = Rollouts(cfg.rollouts, prompt_names=cfg.prompt_names, journal=journal,
                            redis_url=cfg.store.url if cfg.store.backend == "redis" else "",
                            authenticator=Authenticator(cfg.auth, default_has_keys=tenants.default_has_keys),
                            clock=clock, plan_of=PlanReader(tenants.api_credentials).plan)
        observers = (*observers, rollouts.observer)
    processor = build_processor(cfg, store, api=api.lookup if api else None, hold=hold,
                                observers=observers)
    if logs_exporter is None:
        logs_exporter = build_logs_exporter(cfg)
    trace_queue = _queue(cfg, tenants.exporter_for, name="traces", workers=cfg.queue.workers, journal=journal,
                         tenants=tenants)
    logs_queue = None
    if logs_exporter is not None:
        logs_out = logs_exporter
        logs_queue = _queue(cfg, lambda tenant: logs_out, name="logs", workers=1, journal=journal)
    metrics_exporter = build_metrics_exporter(cfg)
    metrics_queue = None
    if metrics_exporter is not None:
        metrics_out = metrics_exporter
        metrics_queue = _queue(cfg, lambda tenant: metrics_out, name="metrics", workers=1, journal=journal)
    recorder = JsonLinesWriter(cfg.record) if cfg.record else None
    stats = AdmissionStats()
    intake = Intake(processor, trace_queue, logs_queue, stats=stats, journal=journal, recorder=recorder,
                    clock=clock, retry_after=cfg.queue.retry_after_seconds, metrics_queue=metrics_queue)
    admission = Admission(
        intake, Authenticator(cfg.auth, default_has_keys=tenants.default_has_keys), cfg.limits,
        remember_keys=tenants.remember, retry_after=cfg.queue.retry_after_seconds,
        decode_budget=ByteBudget(cfg.limits.max_inflight_request_bytes),
        gate=build_gate(cfg),
    )
    receivers = build_receivers(cfg, admission)
    telemetry = Sources(
        admission=stats, processor=processor.stats, hold=processor.hold, store=processor.store,
        queues=intake.queues(), queue_limit_bytes=cfg.queue.max_bytes,
        build=build_info(protobuf_backend, native), journal=journal,
        api=api.stats if api is not None else None,
        receivers=[r.stats for r in receivers if isinstance(r, OtlpHttpReceiver)],
    )
    registry = make_registry(telemetry)
    listener = MetricsListener(cfg.metrics_listen, registry) if cfg.metrics_listen else None
    if rollouts is not None and listener is not None:
        rollouts.register(listener, registry)
    return Components(
        cfg=cfg, journal=journal, processor=processor, api=api, tenants=tenants,
        trace_exporter=trace_exporter, logs_exporter=logs_exporter, trace_queue=trace_queue,
        logs_queue=logs_queue, recorder=recorder, intake=intake, admission=admission,
        receivers=receivers, telemetry=telemetry, listener=listener,
        metrics_exporter=metrics_exporter, metrics_queue=metrics_queue, rollouts=rollouts,
    )
