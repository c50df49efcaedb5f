"""promptstamp beside the real Langfuse SDK tracing the app (``@observe``,
``start_as_current_observation``, ``propagate_attributes``), v4 and v5 alike.

* ``install()`` warns once when Langfuse's own span processor exports straight to Langfuse
  (bypassing the relay), and when it and another OTLP exporter would both export the same spans;
  it stays quiet for the documented set-up (``Langfuse(span_exporter=...)`` to the relay).
* Spans exported by Langfuse's processor carry ``app.prompt.*`` and the fetch event, whichever
  processor was added first: ours sets the attributes in ``on_start``, Langfuse's exports after
  ``on_end``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import promptstamp
from promptstamp.testing import LangfuseServer, reset_langfuse_clients

from .conftest import FETCH_TIMEOUT, PROMPT

langfuse = pytest.importorskip("langfuse")


@pytest.fixture
def provider() -> Iterator[TracerProvider]:
    tracer_provider = TracerProvider()
    yield tracer_provider
    tracer_provider.shutdown()


@pytest.fixture(autouse=True)
def _one_langfuse_client() -> Iterator[None]:
    # @observe finds its client through get_client(), which disables tracing when the process
    # holds several: start and end every test with none.
    reset_langfuse_clients()
    yield
    reset_langfuse_clients()


def _client(server: LangfuseServer, provider: TracerProvider, **kwargs: Any) -> Any:
    return langfuse.Langfuse(
        public_key=server.public_key,  # unique per server: the SDK keeps one state per key
        secret_key=server.secret_key,
        base_url=server.base_url,
        tracer_provider=provider,
        **kwargs,
    )


def _ours(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if str(w.message).startswith("promptstamp")]


def test_langfuse_exporting_straight_to_langfuse_is_reported_once(
    server: LangfuseServer, provider: TracerProvider
) -> None:
    client = _client(server, provider)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(provider, langfuse=client, fetch_timeout_seconds=FETCH_TIMEOUT)
        promptstamp.install(provider, langfuse=client)
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    [message] = _ours(caught)
    assert f"exports spans straight to {server.base_url}/api/public/otel/v1/traces" in message
    assert "bypassing the promptstamp relay" in message
    assert "span_exporter=OTLPSpanExporter(" in message


def test_a_langfuse_client_built_after_install_is_reported_at_the_first_prompt(
    server: LangfuseServer, provider: TracerProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", server.secret_key)
    monkeypatch.setenv("LANGFUSE_BASE_URL", server.base_url)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(provider, fetch_timeout_seconds=FETCH_TIMEOUT)
        assert _ours(caught) == []
        _client(server, provider)  # the app's own client, never given to promptstamp
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    [message] = _ours(caught)
    assert "bypassing the promptstamp relay" in message
    [warning] = [w for w in caught if str(w.message) == message]
    assert warning.filename == __file__  # points at the app's prompt() call


def test_the_documented_set_up_is_not_reported(server: LangfuseServer, provider: TracerProvider) -> None:
    exporter = OTLPSpanExporter(endpoint="127.0.0.1:1", insecure=True)  # the relay's address
    client = _client(server, provider, span_exporter=exporter, should_export_span=promptstamp.should_export_span)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(provider, langfuse=client, fetch_timeout_seconds=FETCH_TIMEOUT)
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    assert _ours(caught) == []


def test_langfuses_default_span_filter_is_reported(server: LangfuseServer, provider: TracerProvider) -> None:
    """True: Langfuse's default filter drops the fetch span (asked of the filter itself)."""
    exported = InMemorySpanExporter()
    client = _client(server, provider, span_exporter=exported)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(provider, langfuse=client, fetch_timeout_seconds=FETCH_TIMEOUT)
        with provider.get_tracer("app").start_as_current_span("handle"), promptstamp.prompt(PROMPT):
            pass
    client.flush()
    [message] = _ours(caught)
    assert "should_export_span=promptstamp.should_export_span" in message
    assert [s.name for s in exported.get_finished_spans() if s.name == "promptstamp.fetch"] == []


def test_langfuse_beside_another_otlp_exporter_is_reported_as_double_export(
    server: LangfuseServer, provider: TracerProvider
) -> None:
    app_exporter = OTLPSpanExporter(endpoint="127.0.0.1:1", insecure=True)
    provider.add_span_processor(BatchSpanProcessor(app_exporter))
    client = _client(server, provider, span_exporter=InMemorySpanExporter(),
                     should_export_span=promptstamp.should_export_span)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        promptstamp.install(provider, langfuse=client)
    [message] = _ours(caught)
    assert "exported twice" in message


@pytest.mark.parametrize("order", ["promptstamp_first", "langfuse_first"])
def test_spans_langfuse_exports_carry_the_prompt_and_the_fetch_event(
    server: LangfuseServer, provider: TracerProvider, order: str
) -> None:
    exported = InMemorySpanExporter()  # stands in for the exporter to the relay
    if order == "promptstamp_first":
        promptstamp.install(provider)
    client = _client(server, provider, span_exporter=exported, should_export_span=promptstamp.should_export_span)
    promptstamp.install(provider, langfuse=client, fetch_timeout_seconds=FETCH_TIMEOUT)

    @langfuse.observe(name="handle_request")
    def handle(query: str) -> str:
        with langfuse.propagate_attributes(user_id="user-7", session_id="session-1"):
            with promptstamp.prompt(PROMPT, label="production") as p:
                messages = p.compile(query=query, region="eu")
                with client.start_as_current_observation(
                    name="llm", as_type="generation", model="gpt-4o-mini", input=messages
                ) as generation:
                    generation.update(output="answer")
                # a third-party instrumentation's span (gen_ai.*: Langfuse exports it by default)
                with provider.get_tracer("opentelemetry.instrumentation.openai.v1").start_as_current_span(
                    "openai.chat", attributes={"gen_ai.operation.name": "chat"}
                ):
                    pass
        return "answer"

    assert handle("where is my order?") == "answer"
    client.flush()
    spans: dict[str, ReadableSpan] = {s.name: s for s in exported.get_finished_spans()}
    # promptstamp.should_export_span keeps the fetch span, which Langfuse's default filter drops
    assert set(spans) == {"handle_request", "promptstamp.fetch", "llm", "openai.chat"}
    for name in ("llm", "openai.chat"):
        attributes = spans[name].attributes or {}
        assert (attributes["app.prompt.key"], attributes["app.prompt.label"]) == (PROMPT, "production")
        assert attributes["user.id"] == "user-7"  # Langfuse's own propagation still works
    root = spans["handle_request"]
    assert "app.prompt.key" not in (root.attributes or {})  # started before prompt()
    fetch = spans["promptstamp.fetch"]
    assert fetch.parent is not None and fetch.parent.span_id == root.get_span_context().span_id
    [event] = [e for e in fetch.events if e.name == "app.prompt.fetch"]
    assert dict(event.attributes or {}) == {
        "app.prompt.key": PROMPT,
        "app.prompt.label": "production",
        "app.prompt.version": 1,
        "app.prompt.fetch.source": "langfuse",
    }
