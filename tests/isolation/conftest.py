"""Two tenants, each with its own Langfuse project, behind one relay: the pieces the isolation
tests share. Everything on loopback, port 0; every server stopped; every wait bounded.

Senders are the OTel SDK's own OTLP exporters (tenant B, the one that must not notice anything)
and raw gRPC calls (tenant A, flooding: a raw call shows each refusal and its RetryInfo, where
the SDK exporter would retry it silently).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config
from tests.otlp_builders import TRACES_EXPORT, span, traces
from tests.relays import relay_config

TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"


@pytest.fixture
def langfuse_a() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-tenant-a", secret_key="sk-lf-tenant-a") as server:
        yield server


@pytest.fixture
def langfuse_b() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-tenant-b", secret_key="sk-lf-tenant-b") as server:
        yield server


@pytest.fixture
def langfuse_relay() -> Iterator[LangfuseServer]:
    """The relay's own Langfuse project (the ``default`` tenant's, and tenants without keys)."""
    with LangfuseServer(public_key="pk-lf-relay", secret_key="sk-lf-relay") as server:
        yield server


def tenant(token: str, base_url: str, public_key: str, secret_key: str, **extra: Any) -> dict[str, Any]:
    return {"tokens": [token], "langfuse_base_url": base_url, "langfuse_public_key": public_key,
            "langfuse_secret_key": secret_key, **extra}


def two_tenants(own: LangfuseServer, a_base_url: str, b: LangfuseServer, *,
                more_tenants: dict[str, Any] | None = None, **overrides: Any) -> Config:
    """A relay exporting to ``own``; tenant ``a`` to ``a_base_url`` (a LangfuseServer or the
    programmable upstream, keys pk-lf-tenant-a), tenant ``b`` to ``b``. Retries for ever (an
    upstream down for the whole test must not make the relay give up), quickly."""
    settings: dict[str, Any] = {
        "auth.enabled": True,
        "auth.tenants": {"a": tenant(TOKEN_A, a_base_url, "pk-lf-tenant-a", "sk-lf-tenant-a"),
                         "b": tenant(TOKEN_B, b.base_url, b.public_key, b.secret_key),
                         **(more_tenants or {})},
        "retry.max_elapsed_seconds": 0,
        "retry.initial_interval_seconds": 0.1,
        "retry.max_interval_seconds": 0.5,
        "exporter.langfuse.timeout_seconds": 2,
        "queue.shutdown_timeout_seconds": 2,
    }
    settings.update(overrides)
    return relay_config(own, **settings)


def delivered(server: LangfuseServer) -> set[bytes]:
    """Span ids in every ingest request ``server`` answered 200."""
    out: set[bytes] = set()
    for r in server.ingest_requests:
        if r.status == 200 and r.request is not None:
            out.update(sp.span_id for rs in r.request.resource_spans for ss in rs.scope_spans for sp in ss.spans)
    return out


def refused_statuses(server: LangfuseServer) -> list[int]:
    return [r.status for r in server.ingest_requests if r.status != 200]


# -- tenant B: the OTel SDK's exporter ----------------------------------------------------------------
class SdkSender:
    """Real SDK spans, sent in batches by the SDK's ``OTLPSpanExporter`` (gRPC) with a bearer
    token; each export's duration is kept."""

    def __init__(self, address: str, token: str, *, timeout: float = 10.0) -> None:
        self._memory = InMemorySpanExporter()
        self._tp = TracerProvider(resource=Resource.create({"service.name": "tenant-b-app"}))
        self._tp.add_span_processor(SimpleSpanProcessor(self._memory))
        self._tracer = self._tp.get_tracer("isolation-test")
        self.exporter = OTLPSpanExporter(endpoint=address, insecure=True, timeout=timeout,
                                         headers=(("authorization", f"Bearer {token}"),))
        self.sent: set[bytes] = set()
        self.durations: list[float] = []

    def make(self, n: int) -> list[ReadableSpan]:
        self._memory.clear()
        for i in range(n):
            with self._tracer.start_as_current_span(f"b-op-{i}"):
                pass
        spans = list(self._memory.get_finished_spans())
        self._memory.clear()
        return spans

    def send(self, n: int = 5) -> bool:
        spans = self.make(n)
        t0 = time.monotonic()
        ok = self.exporter.export(spans) == SpanExportResult.SUCCESS
        self.durations.append(time.monotonic() - t0)
        if ok:
            self.sent.update(s.context.span_id.to_bytes(8, "big") for s in spans)
        return ok

    def close(self) -> None:
        self.exporter.shutdown()
        self._tp.shutdown()


# -- tenant A: raw gRPC, at full speed ------------------------------------------------------------------
def retry_delay(e: grpc.RpcError) -> float | None:
    """The RetryInfo delay of a refusal (the ``google.rpc.retryinfo-bin`` trailer), if any."""
    for k, v in (e.trailing_metadata() or ()):  # type: ignore[attr-defined]
        if k == "google.rpc.retryinfo-bin":
            info = error_details_pb2.RetryInfo.FromString(v)
            return info.retry_delay.seconds + info.retry_delay.nanos / 1e9
    return None


@dataclass
class Flood:
    """``clients`` threads each sending ``spans``-span trace requests as tenant ``token`` as fast
    as the relay answers, refused or not, until :meth:`stop`. Span ids are unique (``prefix``)."""

    address: str
    token: str
    clients: int = 4
    spans: int = 20
    prefix: int = 0xA
    accepted: set[bytes] = field(default_factory=set)
    refusals: list[tuple[grpc.StatusCode, float | None]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Flood:
        for k in range(self.clients):
            t = threading.Thread(target=self._loop, args=(k,), name=f"flood-{k}", daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _loop(self, k: int) -> None:
        channel = grpc.insecure_channel(self.address)
        call = channel.unary_unary(TRACES_EXPORT)
        n = 0
        try:
            while not self._stop.is_set():
                first = (self.prefix << 56) | (k << 40) | n
                n += self.spans
                ids = [first + i for i in range(self.spans)]
                req = traces([span(f"a-{i}", trace=i, span_id=i, start=time.time_ns()) for i in ids])
                try:
                    call(req.SerializeToString(), timeout=10, metadata=(("authorization", f"Bearer {self.token}"),))
                except grpc.RpcError as e:
                    with self._lock:
                        self.refusals.append((e.code(), retry_delay(e)))
                    continue
                with self._lock:
                    self.accepted.update(i.to_bytes(8, "big") for i in ids)
        finally:
            channel.close()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(15)

    def __enter__(self) -> Flood:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ids_of(spans: Sequence[ReadableSpan]) -> set[bytes]:
    return {s.context.span_id.to_bytes(8, "big") for s in spans}
