"""Where the two ``app.prompt.*`` baggage entries go: the ``anthropic`` SDK's built-in
OpenTelemetry (docs/baggage.md).

A loopback fake of Anthropic's Messages API records every request's headers; the real
``anthropic`` client (2.x) calls it with the baggage ``promptstamp.prompt()`` attaches (attached
here directly, as the scope does, so no prompt is fetched). What the tests pin, read from
``anthropic/_tracing.py`` and ``anthropic/_base_client.py``:

* the SDK writes the registered propagator's headers (``traceparent`` and ``baggage`` by default)
  into each request itself, so HTTP-client switches (``suppress_http_instrumentation()``,
  ``OTEL_PYTHON_*_EXCLUDED_URLS``) do not stop it; it does so even with no SDK tracer provider;
* ``ANTHROPIC_OPEN_TELEMETRY_PROPAGATION=false`` (or ``ANTHROPIC_OPEN_TELEMETRY=false``) stops it,
  read once when a client is built, and only by a client given no ``open_telemetry=`` option;
  ``open_telemetry={..., "propagation": False}`` or ``open_telemetry=False`` stop it in code;
* each call makes one span of its own, ``anthropic.messages.create``, which Langfuse types as a
  GENERATION (``gen_ai.operation.name=chat``) and which carries ``app.prompt.*`` like any span.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anthropic
import pytest
from opentelemetry import context, trace
from opentelemetry.instrumentation.utils import suppress_http_instrumentation
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import promptstamp
from promptstamp._baggage import with_prompt
from promptstamp_contract import langfuse_typing as detect

KEY = "order-status-answer"
LABEL = "production"
MODEL = "claude-test-1"
ENTRIES = (f"app.prompt.key={KEY}", f"app.prompt.label={LABEL}")
ANTHROPIC_ENV = (
    "ANTHROPIC_OPEN_TELEMETRY",
    "ANTHROPIC_OPEN_TELEMETRY_PROPAGATION",
    "ANTHROPIC_OPEN_TELEMETRY_TRACES_CONTENT_MODE",
    "ANTHROPIC_OPEN_TELEMETRY_TRACES_MAX_CONTENT_BYTES",
)

MESSAGE = {
    "id": "msg_01loopback",
    "type": "message",
    "role": "assistant",
    "model": MODEL,
    "content": [{"type": "text", "text": "Your order shipped yesterday."}],
    "stop_reason": "end_turn",
    "stop_sequence": None,
    "usage": {"input_tokens": 12, "output_tokens": 6},
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]  # names in lowercase


@dataclass
class MessagesApi:
    """The loopback fake: ``POST /v1/messages`` answers ``MESSAGE``; every request is kept."""

    base_url: str
    requests: list[Recorded] = field(default_factory=list)

    def last_headers(self) -> dict[str, str]:
        assert self.requests, "the client sent no request"
        return self.requests[-1].headers


def _handler(api: MessagesApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            headers = {name.lower(): value for name, value in self.headers.items()}
            api.requests.append(Recorded("POST", self.path, headers))
            if self.path.split("?")[0] != "/v1/messages":
                self._answer(404, {"type": "error", "error": {"type": "not_found_error", "message": "no"}})
                return
            self._answer(200, MESSAGE)

        def _answer(self, status: int, payload: object) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("request-id", "req_loopback")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    return Handler


@pytest.fixture
def messages_api() -> Iterator[MessagesApi]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    api = MessagesApi(base_url=f"http://127.0.0.1:{server.server_address[1]}")
    server.RequestHandlerClass = _handler(api)
    # A short poll interval only so that shutdown() returns at once (the default waits up to 0.5 s).
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.01}, name="fake-messages-api", daemon=True
    )
    thread.start()
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def _no_anthropic_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The ``ANTHROPIC_OPEN_TELEMETRY*`` variables unset, and the default W3C propagators."""
    for name in (*ANTHROPIC_ENV, "OTEL_PROPAGATORS"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """A real SDK provider with promptstamp's baggage processor on it (no Langfuse client: no
    prompt is fetched here)."""
    provider = TracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    promptstamp.install(tracer_provider=provider)
    yield provider, exporter
    provider.shutdown()


def _client(api: MessagesApi, **kwargs: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=api.base_url, max_retries=0, **kwargs)


def _call_in_prompt_scope(client: anthropic.Anthropic) -> str:
    """One Messages call with the two entries in the context, as inside ``promptstamp.prompt()``."""
    token = context.attach(with_prompt(KEY, LABEL))
    try:
        message = client.messages.create(
            model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Where is order 42?"}]
        )
    finally:
        context.detach(token)
    block = message.content[0]
    assert block.type == "text"
    return block.text


def _carries_prompt_baggage(headers: dict[str, str]) -> bool:
    return all(entry in headers.get("baggage", "").split(",") for entry in ENTRIES)


def test_by_default_the_model_api_gets_the_baggage(messages_api: MessagesApi) -> None:
    # No open_telemetry= option, nothing in the environment: the SDK's defaults.
    assert _call_in_prompt_scope(_client(messages_api)) == "Your order shipped yesterday."

    request = messages_api.requests[-1]
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert "app.prompt.key=order-status-answer" in request.headers["baggage"]
    assert _carries_prompt_baggage(request.headers)


def test_no_sdk_tracer_provider_is_needed_for_it(messages_api: MessagesApi) -> None:
    # A no-op provider (an app without the OTel SDK): no span, no traceparent, baggage all the same.
    client = _client(messages_api, open_telemetry={"tracer_provider": trace.NoOpTracerProvider()})
    _call_in_prompt_scope(client)

    headers = messages_api.last_headers()
    assert _carries_prompt_baggage(headers)
    assert "traceparent" not in headers


def test_suppress_http_instrumentation_does_not_stop_it(
    messages_api: MessagesApi, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    client = _client(messages_api, open_telemetry={"tracer_provider": provider})
    with suppress_http_instrumentation():
        _call_in_prompt_scope(client)

    headers = messages_api.last_headers()
    assert _carries_prompt_baggage(headers)
    assert "traceparent" in headers
    assert [s.name for s in exporter.get_finished_spans()] == ["anthropic.messages.create"]


def test_propagation_false_in_the_environment_stops_it(
    messages_api: MessagesApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    built_before = _client(messages_api)
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_PROPAGATION", "false")
    built_after = _client(messages_api)

    _call_in_prompt_scope(built_after)
    headers = messages_api.last_headers()
    assert "baggage" not in headers
    assert "traceparent" not in headers

    # Read once, when a client is built: one built before the variable was set still sends it,
    # and so does a copy of it.
    _call_in_prompt_scope(built_before.with_options(timeout=30))
    assert _carries_prompt_baggage(messages_api.last_headers())


def test_the_environment_is_ignored_by_a_client_given_open_telemetry(
    messages_api: MessagesApi,
    monkeypatch: pytest.MonkeyPatch,
    spans: tuple[TracerProvider, InMemorySpanExporter],
) -> None:
    provider, _ = spans
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_PROPAGATION", "false")
    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
    _call_in_prompt_scope(_client(messages_api, open_telemetry={"tracer_provider": provider}))

    assert _carries_prompt_baggage(messages_api.last_headers())


def test_propagation_false_in_code_stops_it_and_keeps_the_span(
    messages_api: MessagesApi, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    client = _client(messages_api, open_telemetry={"tracer_provider": provider, "propagation": False})
    _call_in_prompt_scope(client)

    headers = messages_api.last_headers()
    assert "baggage" not in headers
    assert "traceparent" not in headers
    (span,) = exporter.get_finished_spans()
    assert span.name == "anthropic.messages.create"


@pytest.mark.parametrize("how", ["env ANTHROPIC_OPEN_TELEMETRY=false", "open_telemetry=False"])
def test_turning_the_sdk_telemetry_off_stops_it_too(
    messages_api: MessagesApi, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how.startswith("env"):
        monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY", "false")
        client = _client(messages_api)
    else:
        client = _client(messages_api, open_telemetry=False)
    _call_in_prompt_scope(client)

    headers = messages_api.last_headers()
    assert "baggage" not in headers
    assert "traceparent" not in headers


def test_the_async_client_does_the_same(messages_api: MessagesApi, monkeypatch: pytest.MonkeyPatch) -> None:
    async def call() -> None:
        client = anthropic.AsyncAnthropic(
            api_key="sk-ant-test", base_url=messages_api.base_url, max_retries=0
        )
        token = context.attach(with_prompt(KEY, LABEL))
        try:
            await client.messages.create(
                model=MODEL, max_tokens=64, messages=[{"role": "user", "content": "Where is order 42?"}]
            )
        finally:
            context.detach(token)
            await client.close()

    asyncio.run(call())
    assert _carries_prompt_baggage(messages_api.last_headers())

    monkeypatch.setenv("ANTHROPIC_OPEN_TELEMETRY_PROPAGATION", "false")
    asyncio.run(call())
    assert "baggage" not in messages_api.last_headers()


def test_the_sdk_span_is_a_generation_that_carries_the_prompt(
    messages_api: MessagesApi, spans: tuple[TracerProvider, InMemorySpanExporter]
) -> None:
    provider, exporter = spans
    _call_in_prompt_scope(_client(messages_api, open_telemetry={"tracer_provider": provider}))

    (span,) = exporter.get_finished_spans()
    assert span.name == "anthropic.messages.create"
    assert span.kind is SpanKind.CLIENT
    assert span.instrumentation_scope is not None
    assert span.instrumentation_scope.name == "com.anthropic.sdk.python"
    attrs = dict(span.attributes or {})
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "anthropic"
    assert attrs["gen_ai.request.model"] == MODEL
    assert attrs["gen_ai.response.model"] == MODEL
    assert attrs["gen_ai.usage.output_tokens"] == 6
    # promptstamp's processor stamps it like any span started in the scope.
    assert attrs["app.prompt.key"] == KEY
    assert attrs["app.prompt.label"] == LABEL

    # Langfuse's typing (the relay's mirror of it): a GENERATION, from gen_ai.operation.name.
    typing = detect.classify(attrs, scope_name=span.instrumentation_scope.name)
    assert (typing.type, typing.rule) == (detect.GENERATION, "OTel_GenAI_Operation")
    assert detect.is_generation(attrs, scope_name=span.instrumentation_scope.name)

    # The request's traceparent names this span: it is the model API's parent.
    context_ = span.get_span_context()
    assert context_ is not None
    version, trace_id, span_id, _flags = messages_api.last_headers()["traceparent"].split("-")
    assert (version, int(trace_id, 16), int(span_id, 16)) == ("00", context_.trace_id, context_.span_id)
