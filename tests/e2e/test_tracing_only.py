"""A tracing-only app (TracerProvider + OTLP exporter, no LoggerProvider: the shape of most
Python OTel apps) with a real OpenAI instrumentation (OpenLLMetry), through the relay: every
generation linked at the ``trace`` tier, from the ``app.prompt.fetch`` span event alone.

The app is a subprocess (its OTel globals are its own) exporting OTLP/gRPC to a relay in this
process, which sends to a loopback :class:`~promptstamp.testing.LangfuseServer`; model calls go
to :class:`~promptstamp.testing.FakeOpenAI`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import pytest

from promptstamp.testing import FakeOpenAI, LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running
from tests.waiting import wait_until

pytest.importorskip("opentelemetry.instrumentation.openai")

PROMPT = "order-status-answer"
CHAT = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "Question: {{query}}\nRegion: {{region}}"},
]
REQUESTS = 4

APP = textwrap.dedent(
    """
    import json, os, warnings
    warnings.simplefilter("error", UserWarning)  # a promptstamp set-up warning fails the app

    from openai import OpenAI
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import promptstamp

    # Tracing only: no LoggerProvider anywhere.
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "order-status", "service.instance.id": "order-status-1"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=os.environ["RELAY"], insecure=True)))
    trace.set_tracer_provider(provider)
    promptstamp.install()          # LANGFUSE_* from the environment, tracing_enabled=False
    OpenAIInstrumentor().instrument()
    client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test")
    tracer = trace.get_tracer("order_status")

    out = []
    for i in range(int(os.environ["REQUESTS"])):
        with tracer.start_as_current_span("handle_request") as root:
            with promptstamp.prompt("order-status-answer", label="production") as p:
                reply = client.chat.completions.create(
                    model=p.config["model"], messages=p.compile(query=f"order {i}?", region="eu"))
            out.append({"answer": reply.choices[0].message.content,
                        "trace_id": format(root.get_span_context().trace_id, "032x"),
                        "version": p.version})
    provider.shutdown()
    print(json.dumps(out))
    """
)


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        server.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
        server.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})  # v2
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    cfg = relay_config(langfuse, **{"hold.seconds": 1.0, "receivers.http.listen": ""})
    with running(cfg, timeout=10) as server:
        yield server


def test_tracing_only_app_is_linked_at_the_trace_tier(langfuse: LangfuseServer, relay: RelayServer) -> None:
    with FakeOpenAI() as openai_fake:
        environment = {k: v for k, v in os.environ.items()
                       if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_"))}
        environment.update({
            "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
            "LANGFUSE_SECRET_KEY": langfuse.secret_key,
            "LANGFUSE_BASE_URL": langfuse.base_url,
            "RELAY": f"http://{relay.address}",
            "OPENAI_BASE_URL": openai_fake.base_url,
            "REQUESTS": str(REQUESTS),
        })
        proc = subprocess.run([sys.executable, "-c", APP], env=environment, capture_output=True, text=True,
                              timeout=90)
        assert proc.returncode == 0, proc.stderr
        assert len(openai_fake.requests) == REQUESTS
    sent = json.loads(proc.stdout)
    assert [s["version"] for s in sent] == [2] * REQUESTS

    def linked() -> list[object]:
        gens = [o for o in langfuse.observations() if o.type == "GENERATION"]
        return gens if len(gens) == REQUESTS else []

    generations = wait_until(linked, timeout=15, what="every generation at Langfuse")
    assert relay.stop(timeout=10) == 0
    generations = [o for o in langfuse.observations() if o.type == "GENERATION"]
    assert {g.trace_id for g in generations} == {s["trace_id"] for s in sent}
    for gen in generations:
        assert gen.scope_name is not None and gen.scope_name.startswith("opentelemetry.instrumentation.openai")
        assert (gen.prompt_name, gen.prompt_version) == (PROMPT, 2)
        assert gen.metadata["prompt_resolution"] == "trace"
        assert gen.metadata["prompt_source"] == "langfuse"
    assert langfuse.rejected() == []
