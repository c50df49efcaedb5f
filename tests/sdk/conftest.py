"""Fixtures for the SDK tests: a loopback Langfuse, the real ``langfuse`` client, in-memory
OpenTelemetry pipelines, and a clock promptstamp's cache reads instead of sleeping."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Tracer

import promptstamp
from promptstamp import _fetch, _install
from promptstamp.testing import CaptureLogExporter, LangfuseServer, PromptRequest, reset_langfuse_clients
from promptstamp_contract.rollout_plan import is_plan_name

PROMPT = "order-status-answer"
CHAT = [
    {"role": "system", "content": "You are a support assistant. Escalate when unsure."},
    {"role": "user", "content": "Question: {{query}}\nRegion: {{ region }}"},
]
FETCH_TIMEOUT = 0.3  # seconds: the "short fetch timeout" every test client uses


class Clock:
    """Monotonic seconds that only move when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Otel:
    tracer_provider: TracerProvider
    logger_provider: LoggerProvider
    spans: InMemorySpanExporter
    logs: CaptureLogExporter

    @property
    def tracer(self) -> Tracer:
        return self.tracer_provider.get_tracer("tests.sdk")

    def finished(self) -> dict[str, ReadableSpan]:
        return {span.name: span for span in self.spans.get_finished_spans()}

    def fetch_records(self) -> list[ReadableLogRecord]:
        return [r for r in self.logs.records if r.log_record.event_name == "app.prompt.fetch"]


def label_requests(server: LangfuseServer) -> list[PromptRequest]:
    """The prompts GETs for prompts themselves, without the rollout plan lookups beside them."""
    return [r for r in server.prompt_requests if not is_plan_name(r.name)]


def plan_requests(server: LangfuseServer) -> list[PromptRequest]:
    """The rollout plan lookups (``promptstamp-rollout/<label>/<name>``, label ``active``)."""
    return [r for r in server.prompt_requests if is_plan_name(r.name)]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(_fetch, "_now", clock)
    return clock


@pytest.fixture(autouse=True)
def _fresh_promptstamp() -> Iterator[None]:
    _install._reset_for_tests()
    yield
    _install._reset_for_tests()


@pytest.fixture(autouse=True)
def _fast_langfuse_http_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Langfuse's generated HTTP client retries a 5xx twice by itself, sleeping ~1 s then ~2 s
    (``get_prompt(max_retries=...)`` does not reach it). Keep those real retries — tests count
    them — but shrink the sleeps so no test waits seconds."""
    from langfuse.api.core import http_client

    monkeypatch.setattr(http_client, "INITIAL_RETRY_DELAY_SECONDS", 0.001)


@pytest.fixture
def server() -> Iterator[LangfuseServer]:
    # One public key per server: the real client keeps state per public key, process-wide.
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="sk-lf-test") as srv:
        srv.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
        yield srv


@pytest.fixture
def langfuse_client(server: LangfuseServer) -> Iterator[Any]:
    from langfuse import Langfuse

    client = Langfuse(
        public_key=server.public_key,
        secret_key=server.secret_key,
        base_url=server.base_url,
        tracing_enabled=False,
    )
    yield client
    reset_langfuse_clients()


@pytest.fixture
def otel() -> Iterator[Otel]:
    tracer_provider = TracerProvider()
    spans = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    logger_provider = LoggerProvider()
    logs = CaptureLogExporter()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(logs))
    yield Otel(tracer_provider, logger_provider, spans, logs)
    tracer_provider.shutdown()
    logger_provider.shutdown()


@pytest.fixture
def installed(otel: Otel, langfuse_client: Any) -> Otel:
    """promptstamp installed on the in-memory pipelines, fetching from the loopback server."""
    promptstamp.install(
        otel.tracer_provider,
        otel.logger_provider,
        langfuse_client,
        fetch_timeout_seconds=FETCH_TIMEOUT,
    )
    return otel
