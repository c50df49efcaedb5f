"""The span processor and ``install()``: attributes on child spans, once per provider."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from opentelemetry import baggage, context
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider

import promptstamp
from promptstamp._processor import PromptBaggageSpanProcessor

from .conftest import PROMPT, Otel

KEY, LABEL = "app.prompt.key", "app.prompt.label"


class CountingTracerProvider(TracerProvider):
    def __init__(self) -> None:
        super().__init__()
        self.added: list[SpanProcessor] = []

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        self.added.append(span_processor)
        super().add_span_processor(span_processor)


def test_every_span_inside_gets_the_attributes(installed: Otel) -> None:
    tracer = installed.tracer
    with tracer.start_as_current_span("request"):
        with promptstamp.prompt(PROMPT, label="production"):
            with tracer.start_as_current_span("graph.node"):
                with tracer.start_as_current_span("openai.chat") as llm:
                    llm.set_attribute("gen_ai.operation.name", "chat")
            tracer.start_span("sibling").end()
        with tracer.start_as_current_span("after"):
            pass
    spans = installed.finished()
    for name in ("graph.node", "openai.chat", "sibling"):
        attributes = spans[name].attributes or {}
        assert attributes[KEY] == PROMPT
        assert attributes[LABEL] == "production"
    for name in ("request", "after"):
        attributes = spans[name].attributes or {}
        assert KEY not in attributes and LABEL not in attributes
    assert spans["openai.chat"].attributes["gen_ai.operation.name"] == "chat"  # type: ignore[index]


def test_inbound_baggage_in_a_downstream_service_is_copied_too(otel: Otel) -> None:
    """Every process the baggage reaches stamps its spans (contract §1), no prompt() needed."""
    promptstamp.install(otel.tracer_provider, otel.logger_provider)
    ctx = baggage.set_baggage(KEY, PROMPT)
    ctx = baggage.set_baggage(LABEL, "prod-a", ctx)
    otel.tracer.start_span("downstream", context=ctx).end()
    attributes = otel.finished()["downstream"].attributes or {}
    assert (attributes[KEY], attributes[LABEL]) == (PROMPT, "prod-a")


@pytest.mark.parametrize("bad", ["ünïcode", "x" * 5000, "", " padded "])
def test_malformed_entries_are_not_copied(otel: Otel, bad: str) -> None:
    promptstamp.install(otel.tracer_provider, otel.logger_provider)
    ctx = baggage.set_baggage(KEY, bad)
    ctx = baggage.set_baggage(LABEL, "production", ctx)
    otel.tracer.start_span("s", context=ctx).end()
    attributes = otel.finished()["s"].attributes or {}
    assert KEY not in attributes
    assert attributes[LABEL] == "production"


def test_on_start_never_raises() -> None:
    class Exploding:
        def set_attributes(self, attributes: Any) -> None:
            raise RuntimeError("boom")

    token = context.attach(baggage.set_baggage(KEY, PROMPT))
    try:
        PromptBaggageSpanProcessor().on_start(Exploding())  # type: ignore[arg-type]
    finally:
        context.detach(token)


def test_install_is_idempotent(langfuse_client: Any) -> None:
    provider = CountingTracerProvider()
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for _ in range(3):
        promptstamp.install(provider, langfuse=langfuse_client)
    promptstamp.install(provider)
    ours = [p for p in provider.added if isinstance(p, PromptBaggageSpanProcessor)]
    assert len(ours) == 1

    # No LoggerProvider and no span at fetch time: the scope span carries the fetch record.
    with promptstamp.prompt(PROMPT), provider.get_tracer("t").start_as_current_span("s"):
        pass
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"promptstamp.prompt", "promptstamp.fetch", "s"}
    assert spans["s"].attributes == {KEY: PROMPT, LABEL: "production"}


def test_install_uses_the_global_tracer_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = CountingTracerProvider()
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", lambda: provider)
    promptstamp.install()
    promptstamp.install()
    assert [type(p) for p in provider.added] == [PromptBaggageSpanProcessor]


def test_install_without_an_sdk_provider_warns_and_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("opentelemetry.trace.get_tracer_provider", NoOpTracerProvider)
    with caplog.at_level(logging.WARNING, logger="promptstamp"), pytest.warns(UserWarning):
        promptstamp.install()
    assert "cannot take span processors" in caplog.text


def test_install_validates_its_settings() -> None:
    with pytest.raises(ValueError):
        promptstamp.install(max_stale_seconds=-1)
    with pytest.raises(ValueError):
        promptstamp.install(fetch_timeout_seconds=0)
    with pytest.raises(ValueError):
        promptstamp.install(max_retries=-1)
