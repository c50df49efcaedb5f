"""Prompt links in other conventions, written by real instrumentations, through a real relay to
the loopback Langfuse (which links none of them itself, as Langfuse does not):

* OpenInference's ``using_prompt_template(template=..., version=...)`` around a call traced by
  its OpenAI instrumentation: the template mapped to a prompt name in the relay's config;
* the Langfuse SDK's ``propagate_attributes(prompt=..., as_baggage=True)`` in one service, and a
  second service whose OpenTelemetry SDK copies baggage onto its spans with OTel's own
  ``BaggageSpanProcessor``: its generation carries ``langfuse_prompt_name`` / ``_version``.

(OpenLLMetry's ``traceloop.prompt.*`` come only from its commercial prompt registry, and no
installed instrumentation writes ``gen_ai.prompt.name`` yet: those two rows are tested on the
processor in tests/core/test_conventions.py.) The portable link out is checked against the
loopback Langfuse's mirror of Langfuse's input extraction: what it would do to the input.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import baggage, propagate
from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from promptstamp.testing import FakeOpenAI, LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running
from tests.waiting import wait_until

pytest.importorskip("openinference.instrumentation.openai")
pytest.importorskip("opentelemetry.processor.baggage")

TEMPLATE = "You answer questions about order {order}."


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    cfg = relay_config(langfuse, **{"conventions.openinference_prompts": {TEMPLATE: "order-status-answer"}})
    with running(cfg, timeout=10) as server:
        yield server


def _provider(relay: RelayServer, service: str) -> TracerProvider:
    tp = TracerProvider(resource=Resource.create({"service.name": service}))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://{relay.address}", insecure=True)))
    return tp


def _generation(langfuse: LangfuseServer, name: str | None = None) -> Any:
    def found() -> Any:
        gens = [o for o in langfuse.observations() if o.type == "GENERATION" and (name is None or o.name == name)]
        return gens[0] if gens else None

    return wait_until(found, timeout=15, what="the generation at Langfuse")


def test_openinference_prompt_template_is_linked_by_the_configured_name(
    langfuse: LangfuseServer, relay: RelayServer
) -> None:
    from openai import OpenAI
    from openinference.instrumentation import using_prompt_template
    from openinference.instrumentation.openai import OpenAIInstrumentor

    tp = _provider(relay, "oi-agent")
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        with FakeOpenAI() as fake:
            client = OpenAI(base_url=fake.base_url, api_key="sk-test", max_retries=0)
            with using_prompt_template(template=TEMPLATE, version="2", variables={"order": "42"}):
                client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "where is order 42?"}])
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
    gen = _generation(langfuse)
    assert gen.attributes["llm.prompt_template.version"] == "2"
    assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 2)
    assert gen.metadata["prompt_resolution"] == "convention"
    assert langfuse.rejected() == []


def test_langfuse_sdk_prompt_baggage_read_in_a_second_service(langfuse: LangfuseServer, relay: RelayServer) -> None:
    from langfuse import propagate_attributes
    from opentelemetry.processor.baggage import ALLOW_ALL_BAGGAGE_KEYS, BaggageSpanProcessor

    # Service A: the Langfuse SDK puts the prompt in baggage; its HTTP call carries the headers.
    headers: dict[str, str] = {}
    with propagate_attributes(prompt={"name": "order-status-answer", "version": 7}, as_baggage=True):
        propagate.inject(headers)
    assert "langfuse_prompt_name=order-status-answer" in headers["baggage"]
    # Service B: plain OpenTelemetry, copying baggage onto its spans with OTel's own processor.
    tp = _provider(relay, "answer-writer")
    tp.add_span_processor(BaggageSpanProcessor(ALLOW_ALL_BAGGAGE_KEYS))
    token = otel_context.attach(propagate.extract(headers))
    try:
        assert baggage.get_baggage("langfuse_prompt_version") == "7"
        with tp.get_tracer("answer-writer").start_as_current_span(
                "chat gpt-4o-mini", attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"}):
            pass
    finally:
        otel_context.detach(token)
        tp.shutdown()
    gen = _generation(langfuse, "chat gpt-4o-mini")
    assert gen.attributes["langfuse_prompt_version"] == "7"
    assert (gen.prompt_name, gen.prompt_version) == ("order-status-answer", 7)
    assert gen.metadata["prompt_resolution"] == "convention"


def test_the_portable_link_would_become_the_generations_input_in_langfuse(langfuse: LangfuseServer) -> None:
    """Why ``stamp.semconv_link`` is refused with the Langfuse exporter, judged by the loopback
    Langfuse's mirror of ``extractInputAndOutput``: on an OpenInference span, the input it shows
    is ``llm.input_messages``; add ``gen_ai.prompt.name`` / ``.version`` and it shows those."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    messages = {"llm.input_messages.0.message.role": "user", "llm.input_messages.0.message.content": "hi",
                "openinference.span.kind": "LLM", "llm.model_name": "gpt-4o-mini"}
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(HttpExporter(
        endpoint=langfuse.otlp_traces_endpoint, headers={"Authorization": langfuse.auth_header})))
    tracer = tp.get_tracer("openinference.instrumentation.openai")
    with tracer.start_as_current_span("plain", attributes=messages):
        pass
    with tracer.start_as_current_span("portable", attributes={
            **messages, "gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"}):
        pass
    tp.shutdown()
    plain = _generation(langfuse, "plain")
    portable = _generation(langfuse, "portable")
    assert plain.input == {"0": {"message": {"role": "user", "content": "hi"}}}
    assert portable.input == {"name": "order-status-answer", "version": "3"}  # the messages are gone
