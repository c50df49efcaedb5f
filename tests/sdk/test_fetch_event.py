"""The fetch record on a span of its own (contract §2), the scope span, and the SDK's warnings,
each tested to be true where it fires."""

from __future__ import annotations

import gc
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode

import promptstamp
from promptstamp.testing import LangfuseServer

from .conftest import FETCH_TIMEOUT, PROMPT, Clock, Otel

FALLBACK = [{"role": "user", "content": "{{query}}"}]
RECORD = {
    "app.prompt.key": PROMPT,
    "app.prompt.label": "production",
    "app.prompt.version": 1,
    "app.prompt.fetch.source": "langfuse",
}


def _fetch_events(span: ReadableSpan) -> list[dict[str, Any]]:
    return [dict(e.attributes or {}) for e in span.events if e.name == "app.prompt.fetch"]


def _named(spans: list[ReadableSpan] | tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def test_each_hand_out_is_a_fetch_span_child_of_the_active_span(installed: Otel) -> None:
    with installed.tracer.start_as_current_span("compose_answer") as root:
        with promptstamp.prompt(PROMPT, label="production"):
            with installed.tracer.start_as_current_span("llm"):
                pass
        with promptstamp.prompt(PROMPT, label="production"):  # from the fresh cache: a record too
            pass
    spans = installed.spans.get_finished_spans()
    fetches = _named(spans, "promptstamp.fetch")
    assert len(fetches) == 2
    trace_id = root.get_span_context().trace_id
    for fetch in fetches:
        assert fetch.context is not None and fetch.context.trace_id == trace_id
        assert _parent_id(fetch) == root.get_span_context().span_id
        assert _fetch_events(fetch) == [RECORD]  # one event, the record
        assert {k: v for k, v in (fetch.attributes or {}).items() if k in RECORD} == RECORD
        assert type((fetch.attributes or {})["app.prompt.version"]) is int
        assert fetch.end_time is not None and fetch.events[0].timestamp == fetch.end_time  # ended when resolved
    [llm] = _named(spans, "llm")
    assert fetches[0].end_time is not None and llm.start_time is not None
    assert fetches[0].end_time <= llm.start_time  # exported no later than the generation
    [compose] = _named(spans, "compose_answer")
    assert _fetch_events(compose) == []  # the record is on the fetch span only
    assert (compose.attributes or {})["app.prompt.fetch.source"] == "langfuse"
    # The log record of each fetch names the fetch span and carries the event's time: one record.
    records = installed.fetch_records()
    assert [(r.log_record.span_id, r.log_record.timestamp) for r in records] == [
        (f.context.span_id, f.events[0].timestamp) for f in fetches if f.context is not None]


def test_a_scope_with_no_active_span_gets_a_span_of_its_own(installed: Otel) -> None:
    with promptstamp.prompt(PROMPT) as p:
        p.compile(query="where?", region="eu")
        with installed.tracer.start_as_current_span("llm"):
            pass
    spans = installed.spans.get_finished_spans()
    [scope] = _named(spans, "promptstamp.prompt")
    [fetch] = _named(spans, "promptstamp.fetch")
    [llm] = _named(spans, "llm")
    assert scope.parent is None and scope.context is not None
    assert _parent_id(fetch) == _parent_id(llm) == scope.context.span_id
    assert fetch.context is not None and llm.context is not None
    assert fetch.context.trace_id == llm.context.trace_id == scope.context.trace_id
    assert (llm.attributes or {})["app.prompt.key"] == PROMPT
    assert installed.fetch_records()[0].log_record.trace_id == scope.context.trace_id


def test_the_scope_span_records_an_exception_and_ends(installed: Otel) -> None:
    with pytest.raises(KeyError), promptstamp.prompt(PROMPT):
        raise KeyError("boom")
    [scope] = _named(installed.spans.get_finished_spans(), "promptstamp.prompt")
    assert scope.status.status_code is StatusCode.ERROR
    assert [e.name for e in scope.events] == ["exception"]


def test_an_inner_prompts_fetch_span_carries_its_own_key(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt("inner", [{"role": "user", "content": "hi"}], labels=["production"])
    with installed.tracer.start_as_current_span("handle"), promptstamp.prompt(PROMPT):
        with promptstamp.prompt("inner"):
            pass
    fetches = _named(installed.spans.get_finished_spans(), "promptstamp.fetch")
    assert [(f.attributes or {})["app.prompt.key"] for f in fetches] == [PROMPT, "inner"]


def test_cache_hand_out_record_carries_the_error_type(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    with promptstamp.prompt(PROMPT):
        pass
    server.fail_prompts(503)
    clock.advance(120)
    installed.spans.clear()
    with installed.tracer.start_as_current_span("compose_answer"), promptstamp.prompt(PROMPT) as p:
        assert p.source == "cache"
    spans = installed.spans.get_finished_spans()
    [fetch] = _named(spans, "promptstamp.fetch")
    assert _fetch_events(fetch) == [{**RECORD, "app.prompt.fetch.source": "cache",
                                     "app.prompt.fetch.error_type": "ApiError"}]
    [compose] = _named(spans, "compose_answer")
    assert [e.name for e in compose.events] == ["prompt.cache_fallback"]  # visible where the app looks


def test_fallback_hand_out_record_has_no_version(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with installed.tracer.start_as_current_span("compose_answer"):
        with promptstamp.prompt("not-cached", fallback=FALLBACK) as p:
            assert p.source == "fallback"
    [fetch] = _named(installed.spans.get_finished_spans(), "promptstamp.fetch")
    assert _fetch_events(fetch) == [{
        "app.prompt.key": "not-cached",
        "app.prompt.label": "production",
        "app.prompt.fetch.source": "fallback",
        "app.prompt.fetch.error_type": "ApiError",
    }]


def test_a_failed_fetch_ends_its_span_in_error_with_no_record(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with installed.tracer.start_as_current_span("compose_answer"):
        with pytest.raises(promptstamp.PromptUnavailableError), promptstamp.prompt("not-cached"):
            pass
    spans = installed.spans.get_finished_spans()
    [fetch] = _named(spans, "promptstamp.fetch")
    assert fetch.status.status_code is StatusCode.ERROR and _fetch_events(fetch) == []
    [compose] = _named(spans, "compose_answer")
    assert (compose.attributes or {})["app.prompt.fetch.source"] == "unavailable"
    assert installed.fetch_records() == []


def test_a_failed_fetch_with_no_active_span_ends_the_scope_span(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(404)
    with pytest.raises(promptstamp.PromptNotFoundError), promptstamp.prompt("missing"):
        pass
    names = sorted(s.name for s in installed.spans.get_finished_spans())
    assert names == ["promptstamp.fetch", "promptstamp.prompt"]


# -- re-entering a handle: the tutorial's helper shape -------------------------------------------


def _helper(query: str) -> tuple[promptstamp.ChatPrompt, list[dict[str, Any]]]:
    """The tutorial's shape: fetch and compile in one function, the model call in another."""
    with promptstamp.prompt(PROMPT) as p:
        return p, p.compile(query=query, region="eu")


def test_a_handle_re_entered_in_another_trace_records_the_same_version_there(
    installed: Otel, server: LangfuseServer
) -> None:
    p, _ = _helper("where?")  # at start-up, outside any request
    fetched = len(server.prompt_requests)
    with installed.tracer.start_as_current_span("request") as request:
        with p, installed.tracer.start_as_current_span("llm"):
            pass
        with p:  # the same trace again: already recorded there
            pass
    assert len(server.prompt_requests) == fetched  # no second fetch
    spans = installed.spans.get_finished_spans()
    [llm] = _named(spans, "llm")
    assert (llm.attributes or {})["app.prompt.key"] == PROMPT
    in_request = [f for f in _named(spans, "promptstamp.fetch")
                  if f.context is not None and f.context.trace_id == request.get_span_context().trace_id]
    assert [_fetch_events(f) for f in in_request] == [[RECORD]]
    assert in_request[0].start_time == in_request[0].end_time  # no fetch: a span of no duration


def test_a_handle_re_entered_with_no_active_span_opens_a_scope_span(installed: Otel) -> None:
    p, _ = _helper("where?")
    with p, installed.tracer.start_as_current_span("llm"):
        pass
    scopes = _named(installed.spans.get_finished_spans(), "promptstamp.prompt")
    assert len(scopes) == 2  # the helper's scope and the re-entry's
    [llm] = _named(installed.spans.get_finished_spans(), "llm")
    assert scopes[1].context is not None and _parent_id(llm) == scopes[1].context.span_id


def test_a_compiled_prompt_used_outside_its_scope_warns_once_per_name(
    installed: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        for _ in range(2):
            p, _messages = _helper("where?")
            with installed.tracer.start_as_current_span("llm"):  # the model call, out of scope
                pass
            del p
            gc.collect()
    warned = [r.getMessage() for r in caplog.records if "no span started while it was in scope" in r.getMessage()]
    assert len(warned) == 1
    assert repr(PROMPT) in warned[0] and "`with p:" in warned[0] and "copy_context().run" in warned[0]
    [llm, _] = _named(installed.spans.get_finished_spans(), "llm")
    assert "app.prompt.key" not in (llm.attributes or {})  # what the warning says is true


def test_a_re_entered_handle_does_not_warn(installed: Otel, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        p, _messages = _helper("where?")
        with p, installed.tracer.start_as_current_span("llm"):
            pass
        del p
        gc.collect()
        with promptstamp.prompt(PROMPT) as q:  # compiled and called inside: no warning either
            q.compile(query="x", region="eu")
            with installed.tracer.start_as_current_span("llm"):
                pass
        del q
        gc.collect()
    assert [r for r in caplog.records if "in scope" in r.getMessage()] == []


# -- set-up warnings -----------------------------------------------------------------------------


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


def test_a_fetch_at_start_up_outside_any_span_needs_no_warning(
    tracing_only: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    """Tracing only, no span active: the scope span carries the record, so nothing is lost."""
    _, exporter = tracing_only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with promptstamp.prompt(PROMPT):
            pass
    assert _promptstamp_warnings(caught) == []
    [fetch] = _named(exporter.get_finished_spans(), "promptstamp.fetch")
    assert _fetch_events(fetch) == [RECORD]


def test_a_recording_span_is_enough(tracing_only: tuple[TracerProvider, InMemorySpanExporter]) -> None:
    provider, exporter = tracing_only
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    assert _promptstamp_warnings(caught) == []
    [fetch] = _named(exporter.get_finished_spans(), "promptstamp.fetch")
    assert len(_fetch_events(fetch)) == 1


def test_no_tracer_provider_and_no_logger_provider_warns_once(
    langfuse_client: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """True: with neither provider the record goes nowhere (the no-op tracer records nothing).
    Said once, at ``install()``; the hand-outs that follow do not repeat it."""
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", NoOpTracerProvider)
    with caplog.at_level(logging.WARNING, logger="promptstamp"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(langfuse=langfuse_client, fetch_timeout_seconds=FETCH_TIMEOUT)
        for _ in range(3):
            with promptstamp.prompt(PROMPT):
                pass
    [message] = _promptstamp_warnings(caught)
    assert "no OpenTelemetry SDK TracerProvider and no LoggerProvider" in message
    assert not promptstamp._install.RUNTIME.fetch_log.traces_deliverable()


def test_a_provider_that_records_nothing_warns_at_the_first_hand_out(
    installed: Otel, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """install() saw real providers; the fetch spans then go to one that records nothing and
    there is no LoggerProvider: the first hand-out says its record reaches nobody."""
    runtime = promptstamp._install.RUNTIME
    runtime.fetch_log.use_tracer_provider(NoOpTracerProvider())
    monkeypatch.setattr(runtime.fetch_log, "delivers", lambda: False)
    with caplog.at_level(logging.WARNING, logger="promptstamp"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            with promptstamp.prompt(PROMPT):
                pass
    [message] = _promptstamp_warnings(caught)
    assert "reaches nobody" in message
    assert _ours(caught)[0].filename == __file__  # points at the app's prompt() call
    logged = [r for r in caplog.records if r.name == "promptstamp" and r.levelno == logging.WARNING]
    assert [r.getMessage() for r in logged] == [message]
    assert installed.spans.get_finished_spans() == ()  # nothing was recorded: the warning is true


def test_a_logger_provider_is_enough(installed: Otel) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with promptstamp.prompt(PROMPT):
            pass
    assert _promptstamp_warnings(caught) == []
    assert len(installed.fetch_records()) == 1


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
