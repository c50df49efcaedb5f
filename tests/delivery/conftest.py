"""Fixtures for the delivery tests: a programmable upstream, the relay's settings for it (the
relay itself, in process or as a real ``promptstamp-relay serve`` process, is started through
:mod:`tests.relays`), and a sender that is the OTel SDK's own OTLP/gRPC exporter.

Everything binds 127.0.0.1 port 0; every wait is bounded; every server and process is stopped
in a ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import promptstamp_contract as c
from promptstamp_relay.config import Config
from tests.relays import relay_config
from tests.waiting import wait_until as wait_until  # the one wait_until, for the tests here

from .upstream import Upstream

#: ``serve`` without its upstream check: these tests start relays while the upstream fails on purpose.
NO_UPSTREAM_CHECK = "--check-upstream=off"
GEN = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
       c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as u:
        yield u


def base_settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    """Dotted settings for a relay exporting to ``base_url``, with fast retries."""
    s: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "receivers.http.listen": "127.0.0.1:0",  # never the fixed default port in tests
        "hold.seconds": 0.2,
        "exporter.type": "langfuse",
        "exporter.langfuse.base_url": base_url,
        "exporter.langfuse.public_key": "pk-lf-test",
        "exporter.langfuse.secret_key": "sk-lf-test",
        "exporter.langfuse.timeout_seconds": 5,
        "retry.initial_interval_seconds": 0.05,
        "retry.max_interval_seconds": 0.2,
        "retry.max_elapsed_seconds": 60,
        "queue.shutdown_timeout_seconds": 5,
    }
    s.update(overrides)
    return s


def config(base_url: str, **overrides: Any) -> Config:
    """:func:`tests.relays.relay_config` with :func:`base_settings` (an in-process relay's)."""
    return relay_config(None, **base_settings(base_url, **overrides))


# -- the sender: the OTel SDK's own exporter ----------------------------------------------------
class Sender:
    """Makes real SDK spans and sends them in batches with ``OTLPSpanExporter`` (one request each)."""

    def __init__(self, endpoint: str, *, timeout: float = 10.0, instance: str = "agent-1") -> None:
        resource = Resource.create({"service.name": "order-status", "service.instance.id": instance})
        self._memory = InMemorySpanExporter()
        self._tp = TracerProvider(resource=resource)
        self._tp.add_span_processor(SimpleSpanProcessor(self._memory))
        self._tracer = self._tp.get_tracer("delivery-test")
        self.exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=timeout)

    def make(self, n: int, *, pad: int = 0, attributes: dict[str, Any] | None = None) -> list[ReadableSpan]:
        self._memory.clear()
        attrs = dict(attributes or {})
        if pad:
            attrs["pad"] = "x" * pad
        for i in range(n):
            with self._tracer.start_as_current_span(f"op-{i}", attributes=attrs):
                pass
        spans = list(self._memory.get_finished_spans())
        self._memory.clear()
        return spans

    def send(self, spans: Sequence[ReadableSpan]) -> bool:
        return self.exporter.export(spans) == SpanExportResult.SUCCESS

    def close(self) -> None:
        self.exporter.shutdown()
        self._tp.shutdown()


def ids(spans: Sequence[ReadableSpan]) -> set[bytes]:
    return {s.context.span_id.to_bytes(8, "big") for s in spans}
