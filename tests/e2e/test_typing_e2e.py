"""Langfuse's typing end to end: every span inside one ``prompt()`` block carries the prompt key,
and only the spans Langfuse would type GENERATION (and that nothing links yet) are stamped.

A real app: the OTel SDK with its own OTLP/gRPC exporters, ``promptstamp.install()``, the real
``langfuse`` client fetching the prompt, a real model call through OpenLLMetry's OpenAI
instrumentation against ``FakeOpenAI``; a real relay in between; ``LangfuseServer`` types what
arrives with Langfuse's own rules (the relay's table).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from langfuse import Langfuse
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import promptstamp
import promptstamp_contract as c
from promptstamp import _install
from promptstamp.testing import FakeOpenAI, LangfuseServer, Observation, reset_langfuse_clients
from promptstamp_contract.langfuse_typing import langfuse_type
from promptstamp_relay.server import RelayServer

PROMPT = "order-status-answer"
MESSAGES = [{"role": "system", "content": "You answer order questions."}, {"role": "user", "content": "{{q}}"}]
STAMP_KEYS = {c.LF_META_PROMPT_NAME, c.LF_META_PROMPT_LABEL, c.LF_META_RESOLUTION, c.LF_META_SOURCE,
              c.LF_PROMPT_NAME, c.LF_PROMPT_VERSION, c.LF_OBSERVATION_TYPE}  # fmt: skip

# name -> (attributes the app sets, the type Langfuse gives the span)
OTHER_SPANS: dict[str, tuple[dict[str, Any], str]] = {
    "execute_tool lookup_order": (
        {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "lookup_order",
         "gen_ai.tool.call.id": "call_1", "gen_ai.request.model": "gpt-4o-mini"}, "TOOL"),
    "tool without an operation": ({"gen_ai.tool.name": "policy_search", "gen_ai.request.model": "gpt-4o-mini"}, "TOOL"),
    "invoke_agent order-agent": (
        {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "order-agent",
         "gen_ai.request.model": "gpt-4o-mini"}, "AGENT"),
    "OpenInference agent": ({"openinference.span.kind": "AGENT", "llm.model_name": "gpt-4o-mini"}, "AGENT"),
    "embeddings text-embedding-3-small": (
        {"gen_ai.operation.name": "embeddings", "gen_ai.request.model": "text-embedding-3-small"}, "EMBEDDING"),
    "retrieve policies": (
        {"openinference.span.kind": "RETRIEVER", "llm.model_name": "text-embedding-3-small",
         "input.value": "refund policy"}, "RETRIEVER"),
    # Generations already linked by the app, to version 1 (the relay would resolve 2): left alone.
    "legacy link": (
        {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
         c.LF_LEGACY_PROMPT_NAME: PROMPT, c.LF_LEGACY_PROMPT_VERSION: 1}, "GENERATION"),
    "ai.generateText.doGenerate": (
        {"operation.name": "ai.generateText.doGenerate", "ai.model.id": "gpt-4o-mini",
         c.AI_SDK_LANGFUSE_PROMPT: json.dumps({"name": PROMPT, "version": 1})}, "GENERATION"),
}  # fmt: skip


@pytest.fixture
def prompts(langfuse: LangfuseServer) -> LangfuseServer:
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["staging"])
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])  # v2
    return langfuse


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def fresh_sdk() -> Iterator[None]:
    reset_langfuse_clients()
    _install._reset_for_tests()
    yield
    _install._reset_for_tests()
    reset_langfuse_clients()


def test_only_the_model_call_is_linked_and_every_span_keeps_its_langfuse_type(
    prompts: LangfuseServer, relay: RelayServer, model: FakeOpenAI, fresh_sdk: None
) -> None:
    resource = Resource.create({"service.name": "order-status", "service.instance.id": "agent-1"})
    tp = TracerProvider(resource=resource)
    sent = InMemorySpanExporter()  # what the app sent, to compare with what Langfuse shows
    tp.add_span_processor(SimpleSpanProcessor(sent))
    tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=relay.address, insecure=True, timeout=5)))
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter(endpoint=relay.address, insecure=True, timeout=5))
    )
    client = Langfuse(public_key=prompts.public_key, secret_key=prompts.secret_key, base_url=prompts.base_url,
                      tracing_enabled=False)  # fmt: skip
    promptstamp.install(tracer_provider=tp, logger_provider=lp, langfuse=client)
    instrumentor = OpenAIInstrumentor()
    instrumentor.instrument(tracer_provider=tp)
    try:
        tracer = tp.get_tracer("order_status")
        llm = openai.OpenAI(base_url=model.base_url, api_key="test-key", max_retries=0)
        with tracer.start_as_current_span("handle-request"):
            with promptstamp.prompt(PROMPT, label="production") as p:
                assert p.version == 2
                for name, (attrs, _) in OTHER_SPANS.items():
                    with tracer.start_as_current_span(name, attributes=attrs):
                        pass
                llm.chat.completions.create(model="gpt-4o-mini", messages=p.compile(q="Where is my order?"))
    finally:
        instrumentor.uninstrument()
        tp.shutdown()
        lp.shutdown()

    app_spans = {s.name: s for s in sent.get_finished_spans()}
    [model_call] = [n for n in app_spans if n not in OTHER_SPANS and n not in ("handle-request", "promptstamp.fetch")]
    seen = {o.name: o for o in prompts.wait_for_observations(len(app_spans), timeout=15)}
    assert set(seen) == set(app_spans)
    assert prompts.rejected() == []

    def check_type(o: Observation) -> None:
        assert o.type == langfuse_type(o.attributes, scope_name=o.scope_name or "", span_name=o.name)

    # The model call: stamped, linked to the version the app was handed, at the trace tier.
    gen = seen[model_call]
    assert gen.type == "GENERATION"
    check_type(gen)
    assert (gen.prompt_name, gen.prompt_version) == (PROMPT, 2)
    assert gen.metadata["prompt_resolution"] == "trace"
    assert gen.metadata["prompt_label"] == "production"
    original = dict(app_spans[model_call].attributes or {})
    assert set(gen.attributes) - set(original) <= STAMP_KEYS
    assert {k: gen.attributes[k] for k in original if not isinstance(original[k], tuple)} == {
        k: v for k, v in original.items() if not isinstance(v, tuple)
    }

    # Every other span carries the prompt key, keeps its type, and arrives exactly as it was sent.
    for name, (_, want) in OTHER_SPANS.items():
        o = seen[name]
        assert o.attributes[c.PROMPT_KEY] == PROMPT, name
        assert o.type == want, name
        check_type(o)
        assert o.attributes == dict(app_spans[name].attributes or {}), name
        assert "prompt_resolution" not in o.metadata, name
    for name in ("legacy link", "ai.generateText.doGenerate"):  # Langfuse reads the app's own link
        assert (seen[name].prompt_name, seen[name].prompt_version) == (PROMPT, 1), name
    for name in OTHER_SPANS.keys() - {"legacy link", "ai.generateText.doGenerate"}:
        assert (seen[name].prompt_name, seen[name].prompt_version) == (None, None), name
    root = seen["handle-request"]
    assert root.type == "SPAN" and root.attributes == dict(app_spans["handle-request"].attributes or {})
