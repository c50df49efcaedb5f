"""Poison end to end: one span on which Langfuse's observation type mapper throws must not cost
the other spans of its export request.

A real app: the OTel SDK with its own ``BatchSpanProcessor`` and OTLP/gRPC span exporter (every
span of a run leaves in one export request: a long schedule delay, one flush), ``promptstamp``
with the real ``langfuse`` client fetching the prompt; a real relay exporting to
``LangfuseServer``, which maps each request with Langfuse's typing (the same table) and loses a
whole request when Langfuse's mapper would throw on any of its spans.
"""

from __future__ import annotations

import logging
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from langfuse import Langfuse
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import promptstamp
import promptstamp_contract as c
from promptstamp import _install
from promptstamp.testing import LangfuseServer, reset_langfuse_clients
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running, scrape
from tests.waiting import wait_until

PROMPT = "order-status-answer"
MESSAGES = [{"role": "system", "content": "You answer order questions."}, {"role": "user", "content": "{{q}}"}]
CHAT = {c.GEN_AI_OPERATION_NAME: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"}


@pytest.fixture
def prompts(langfuse: LangfuseServer) -> LangfuseServer:
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])  # v2
    return langfuse


@pytest.fixture
def relay(prompts: LangfuseServer) -> Iterator[RelayServer]:
    with running(relay_config(prompts, metrics_listen="127.0.0.1:0")) as server:
        yield server


@pytest.fixture
def fresh_sdk() -> Iterator[None]:
    reset_langfuse_clients()
    _install._reset_for_tests()
    yield
    _install._reset_for_tests()
    reset_langfuse_clients()


def run_app(relay: RelayServer, langfuse: LangfuseServer, poisoned: dict[str, Any], *,
            with_prompt: bool = True) -> None:
    """Two model calls inside ``prompt()`` (each a generation span, the model call traced by hand
    as instrumentations do), a tool step, and one span carrying ``poisoned``: one export request."""
    resource = Resource.create({"service.name": "order-status", "service.instance.id": "agent-1"})
    tp = TracerProvider(resource=resource)
    tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=relay.address, insecure=True, timeout=5),
                                             schedule_delay_millis=60_000, max_export_batch_size=512))
    if with_prompt:
        client = Langfuse(public_key=langfuse.public_key, secret_key=langfuse.secret_key,
                          base_url=langfuse.base_url, tracing_enabled=False)
        promptstamp.install(tracer_provider=tp, langfuse=client)
    tracer = tp.get_tracer("order_status")
    try:
        with tracer.start_as_current_span("handle-request"):
            if with_prompt:
                with promptstamp.prompt(PROMPT, label="production") as p:
                    assert p.version == 2
                    _spans(tracer, poisoned)
            else:
                _spans(tracer, poisoned)
        assert tp.force_flush(10_000)
    finally:
        tp.shutdown()


def _spans(tracer: Any, poisoned: dict[str, Any]) -> None:
    with tracer.start_as_current_span("chat gpt-4o-mini", attributes=CHAT):
        pass
    with tracer.start_as_current_span("execute_tool lookup_order",
                                      attributes={c.GEN_AI_OPERATION_NAME: "execute_tool"}):
        pass
    with tracer.start_as_current_span("poisoned", attributes=poisoned):
        pass
    with tracer.start_as_current_span("chat again", attributes=CHAT):
        pass


def metric(relay: RelayServer, action: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{relay.metrics_port}/metrics", timeout=5).read().decode()
    return scrape(text, "promptstamp_poison_spans_total", f'action="{action}"')


def poison_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "promptstamp_relay.intake" and r.levelno == logging.WARNING and "throws" in r.getMessage()]


def test_a_poison_operation_name_on_a_model_call_is_typed_and_the_whole_request_arrives_linked(
    prompts: LangfuseServer, relay: RelayServer, fresh_sdk: None, caplog: pytest.LogCaptureFixture
) -> None:
    """A model call whose gen_ai.operation.name is poison: a generation by Langfuse's other rules
    (its model), so the stamp's ``langfuse.observation.type: generation`` defuses it and links it."""
    caplog.set_level(logging.WARNING, logger="promptstamp_relay.intake")
    run_app(relay, prompts, {c.GEN_AI_OPERATION_NAME: "constructor", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"})
    seen = {o.name: o for o in prompts.wait_for_observations(6, timeout=15)}
    assert prompts.rejected() == []
    assert set(seen) == {"handle-request", c.FETCH_SPAN_NAME, "chat gpt-4o-mini", "execute_tool lookup_order",
                         "poisoned", "chat again"}
    assert len(prompts.ingest_requests) == 1  # the app's one request, whole
    for name in ("chat gpt-4o-mini", "chat again", "poisoned"):
        assert (seen[name].type, seen[name].prompt_name, seen[name].prompt_version) == ("GENERATION", PROMPT, 2)
    poisoned = seen["poisoned"]
    assert poisoned.attributes[c.LF_OBSERVATION_TYPE] == "generation"
    assert poisoned.attributes[c.GEN_AI_OPERATION_NAME] == "constructor"  # kept: the relay only adds
    assert metric(relay, "typed") == 1 and metric(relay, "isolated") == 0
    [line] = poison_lines(caplog)
    for part in ("'poisoned'", "service.name='order-status'", "gen_ai.operation.name='constructor'",
                 "langfuse.observation.type='generation'"):
        assert part in line


@pytest.mark.parametrize("poison", [{c.LF_OBSERVATION_TYPE: "__proto__", **CHAT},
                                    {c.GEN_AI_OPERATION_NAME: "constructor", c.GEN_AI_TOOL_NAME: "lookup_order"}],
                         ids=["langfuse.observation.type __proto__", "a tool's gen_ai.operation.name constructor"])
def test_a_poison_that_adding_generation_cannot_defuse_travels_alone_and_only_it_is_lost(
    prompts: LangfuseServer, relay: RelayServer, fresh_sdk: None, caplog: pytest.LogCaptureFixture,
    poison: dict[str, Any]
) -> None:
    """A poison type, or a poison lookup on a span that is no generation (the relay writes only
    ``generation``, contract §3): the span goes in an export request of its own."""
    caplog.set_level(logging.WARNING, logger="promptstamp_relay.intake")
    run_app(relay, prompts, poison)
    seen = {o.name: o for o in prompts.wait_for_observations(5, timeout=15)}
    assert set(seen) == {"handle-request", c.FETCH_SPAN_NAME, "chat gpt-4o-mini", "execute_tool lookup_order",
                         "chat again"}
    for name in ("chat gpt-4o-mini", "chat again"):
        assert (seen[name].type, seen[name].prompt_name, seen[name].prompt_version) == ("GENERATION", PROMPT, 2)
    [lost] = wait_until(prompts.rejected, timeout=15, what="the request of the poison span alone")
    assert lost.observation.name == "poisoned" and str(next(iter(poison.values()))) in lost.reason
    requests = prompts.ingest_requests
    assert sorted(sum(len(ss.spans) for rs in r.request.resource_spans for ss in rs.scope_spans)
                  for r in requests) == [1, 5]  # the app's request, and the poison span alone
    assert metric(relay, "isolated") == 1 and metric(relay, "typed") == 0
    [line] = poison_lines(caplog)
    key, value = next(iter(poison.items()))
    assert f"{key}='{value}'" in line and "export request of its own" in line


def test_a_request_with_no_prompt_at_all_is_not_passed_through_with_its_poison(
    langfuse: LangfuseServer, relay: RelayServer
) -> None:
    """An app that does not use promptstamp: nothing to stamp, but the relay still keeps the
    poison from costing the request (the pass-through path's one walk finds it)."""
    run_app(relay, langfuse, {"openinference.span.kind": "toString", c.LLM_MODEL_NAME: "gpt-4o-mini"},
            with_prompt=False)
    seen = {o.name: o for o in langfuse.wait_for_observations(5, timeout=15)}
    assert langfuse.rejected() == []
    assert seen["poisoned"].type == "GENERATION"
    assert relay.admission.stats.passthrough_requests == 0
    assert metric(relay, "typed") == 1
    # The same app without the poison span: forwarded as it came, nothing counted.
    run_app(relay, langfuse, {"openinference.span.kind": "LLM", c.LLM_MODEL_NAME: "gpt-4o-mini"},
            with_prompt=False)
    langfuse.wait_for_observations(10, timeout=15)
    assert relay.admission.stats.passthrough_requests == 1
    assert metric(relay, "typed") == 1
