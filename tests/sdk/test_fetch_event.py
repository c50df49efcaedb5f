"""The fetch record as a span event (contract §2), and the one-time warning when the record
can reach nobody (no LoggerProvider and no recording span)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

import promptstamp
from promptstamp.testing import LangfuseServer

from .conftest import FETCH_TIMEOUT, PROMPT, Clock, Otel

FALLBACK = [{"role": "user", "content": "{{query}}"}]


def _fetch_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "app.prompt.fetch"]


def test_every_hand_out_adds_one_event_to_the_active_span(installed: Otel) -> None:
    with installed.tracer.start_as_current_span("compose_answer"):
        with promptstamp.prompt(PROMPT, label="production"):
            with installed.tracer.start_as_current_span("llm"):
                pass
        with promptstamp.prompt(PROMPT, label="production"):  # from the fresh cache: an event too
            pass
    spans = installed.finished()
    events = [e for e in spans["compose_answer"].events if e.name == "app.prompt.fetch"]
    assert [dict(e.attributes or {}) for e in events] == [
        {
            "app.prompt.key": PROMPT,
            "app.prompt.label": "production",
            "app.prompt.version": 1,
            "app.prompt.fetch.source": "langfuse",
        }
    ] * 2
    assert all(type((e.attributes or {})["app.prompt.version"]) is int for e in events)
    assert _fetch_events(spans["llm"]) == []  # only the span active at fetch time
    # The event and the log record of one fetch carry the same time: when the fetch resolved.
    records = installed.fetch_records()
    assert [e.timestamp for e in events] == [r.log_record.timestamp for r in records]


def test_cache_hand_out_event_carries_the_error_type(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    with promptstamp.prompt(PROMPT):
        pass
    server.fail_prompts(503)
    clock.advance(120)
    with installed.tracer.start_as_current_span("compose_answer"), promptstamp.prompt(PROMPT) as p:
        assert p.source == "cache"
    span = installed.finished()["compose_answer"]
    assert _fetch_events(span) == [
        {
            "app.prompt.key": PROMPT,
            "app.prompt.label": "production",
            "app.prompt.version": 1,
            "app.prompt.fetch.source": "cache",
            "app.prompt.fetch.error_type": "ApiError",
        }
    ]
    assert [e.name for e in span.events] == ["app.prompt.fetch", "prompt.cache_fallback"]


def test_fallback_hand_out_event_has_no_version(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with installed.tracer.start_as_current_span("compose_answer"):
        with promptstamp.prompt("not-cached", fallback=FALLBACK) as p:
            assert p.source == "fallback"
    [event] = _fetch_events(installed.finished()["compose_answer"])
    assert event == {
        "app.prompt.key": "not-cached",
        "app.prompt.label": "production",
        "app.prompt.fetch.source": "fallback",
        "app.prompt.fetch.error_type": "ApiError",
    }


def test_a_failed_fetch_adds_no_event(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with installed.tracer.start_as_current_span("compose_answer"):
        with pytest.raises(promptstamp.PromptUnavailableError), promptstamp.prompt("not-cached"):
            pass
    span = installed.finished()["compose_answer"]
    assert _fetch_events(span) == []
    assert (span.attributes or {})["app.prompt.fetch.source"] == "unavailable"


# -- the one-time warning ----------------------------------------------------------------------


@pytest.fixture
def tracing_only(langfuse_client: Any) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """An app with an SDK tracer provider and no LoggerProvider anywhere (the global one unset)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    promptstamp.install(provider, langfuse=langfuse_client, fetch_timeout_seconds=FETCH_TIMEOUT)
    yield provider, exporter
    provider.shutdown()


def _ours(caught: list[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    return [w for w in caught if str(w.message).startswith("promptstamp")]


def _promptstamp_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in _ours(caught)]


def test_no_log_provider_and_no_span_warns_once_saying_what_to_add(
    tracing_only: tuple[TracerProvider, InMemorySpanExporter], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="promptstamp"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with promptstamp.prompt(PROMPT):
                pass
    [message] = _promptstamp_warnings(caught)
    assert "no LoggerProvider set and no recording span active" in message
    assert "start_as_current_span" in message and "LoggerProvider" in message
    assert _ours(caught)[0].filename == __file__  # points at the app's prompt() call
    logged = [r for r in caplog.records if r.name == "promptstamp" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in logged] == [message]


def test_a_recording_span_is_enough(tracing_only: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = tracing_only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    assert _promptstamp_warnings(caught) == []
    [span] = exporter.get_finished_spans()
    assert len(_fetch_events(span)) == 1


def test_a_logger_provider_is_enough(installed: Otel) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with promptstamp.prompt(PROMPT):  # no span: the log record alone carries it
            pass
    assert _promptstamp_warnings(caught) == []
    assert len(installed.fetch_records()) == 1


def test_a_global_logger_provider_set_after_install_is_enough(
    tracing_only: tuple[TracerProvider, InMemorySpanExporter], otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("opentelemetry._logs._internal._LOGGER_PROVIDER", otel.logger_provider)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with promptstamp.prompt(PROMPT):
            pass
    assert _promptstamp_warnings(caught) == []


def test_install_with_no_providers_at_all_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", NoOpTracerProvider)
    with caplog.at_level(logging.WARNING, logger="promptstamp"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install()
        promptstamp.install()
    [message] = _promptstamp_warnings(caught)
    assert "no OpenTelemetry SDK TracerProvider and no LoggerProvider" in message
    assert "promptstamp.configure()" in message
    assert _ours(caught)[0].filename == __file__  # points at the app's install() call
    assert sum("no LoggerProvider" in r.getMessage() for r in caplog.records) == 1
