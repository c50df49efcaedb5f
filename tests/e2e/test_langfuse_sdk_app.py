"""An app that traces with the real Langfuse SDK (``@observe``, ``propagate_attributes``, a
generation from a real OpenAI instrumentation), routed through the relay as
``docs/langfuse-sdk.md`` says: every generation linked, every span ingested exactly once.

Loopback stand-ins: the Langfuse-compatible server and the relay run in this process; the app is
a subprocess running the documented set-up verbatim (its globals are its own), answering model
calls from :class:`~promptstamp.testing.FakeOpenAI`. Runs against langfuse 4.x and 5.x alike
(``scripts/test.sh`` runs it in a second virtualenv with 4.x).
"""

from __future__ import annotations

import collections
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

pytest.importorskip("langfuse")
pytest.importorskip("opentelemetry.instrumentation.openai")

PROMPT = "order-status-answer"
CHAT = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "Question: {{query}}\nRegion: {{region}}"},
]
REQUESTS = 3

# The documented set-up (docs/langfuse-sdk.md, "Route Langfuse's spans through the relay").
APP = textwrap.dedent(
    """
    import json, os, sys, warnings
    warnings.simplefilter("error", UserWarning)  # any promptstamp set-up warning fails the app

    from langfuse import Langfuse, observe, propagate_attributes
    from openai import OpenAI
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry import trace

    import promptstamp

    # base_url (LANGFUSE_BASE_URL) stays Langfuse: prompts come from there; spans go to the relay.
    if os.environ.get("UNDOCUMENTED"):  # Langfuse's own exporter, straight to Langfuse
        langfuse = Langfuse()
    elif os.environ.get("NO_FILTER"):  # to the relay, with Langfuse's default span filter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        langfuse = Langfuse(span_exporter=OTLPSpanExporter(endpoint=os.environ["RELAY"], insecure=True))
    elif os.environ["EXPORTER"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        langfuse = Langfuse(span_exporter=OTLPSpanExporter(endpoint=os.environ["RELAY"], insecure=True),
                            should_export_span=promptstamp.should_export_span)
    else:  # OTLP/HTTP, to the relay's /v1/traces or its Langfuse path
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        langfuse = Langfuse(span_exporter=OTLPSpanExporter(endpoint=os.environ["RELAY"]),
                            should_export_span=promptstamp.should_export_span)
    promptstamp.install(langfuse=langfuse)
    OpenAIInstrumentor().instrument()
    client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test")

    @observe(name="handle_request")
    def handle(query):
        with propagate_attributes(user_id="user-7", session_id="session-1"):
            with promptstamp.prompt("order-status-answer", label="production") as p:
                reply = client.chat.completions.create(
                    model=p.config["model"], messages=p.compile(query=query, region="eu"))
        return reply.choices[0].message.content, trace.get_current_span().get_span_context()

    out = []
    for i in range(int(os.environ["REQUESTS"])):
        answer, _ = handle(f"where is order {i}?")
        out.append(answer)
    langfuse.shutdown()
    print(json.dumps(out))
    """
)


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        server.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    cfg = relay_config(langfuse, **{"hold.seconds": 1.0})
    with running(cfg, timeout=10) as server:
        yield server


@pytest.fixture
def openai_fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


def _run_app(langfuse: LangfuseServer, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_"))}
    environment.update({
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
        "LANGFUSE_BASE_URL": langfuse.base_url,
        "OTEL_SERVICE_NAME": "order-status",
        "OTEL_RESOURCE_ATTRIBUTES": "service.instance.id=order-status-1",
        "REQUESTS": str(REQUESTS),
        **env,
    })
    return subprocess.run([sys.executable, "-c", APP], env=environment, capture_output=True, text=True,
                          timeout=90)


def _ingested_span_counts(langfuse: LangfuseServer) -> collections.Counter[tuple[str, str]]:
    """How many times each span arrived at Langfuse, over every ingest request."""
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for request in langfuse.ingest_requests:
        for resource_spans in request.request.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    counts[(span.trace_id.hex(), span.span_id.hex())] += 1
    return counts


def _relay_endpoint(relay: RelayServer, exporter: str) -> str:
    if exporter == "grpc":
        return f"http://{relay.address}"
    path = "/v1/traces" if exporter == "http" else "/api/public/otel/v1/traces"
    return f"http://{relay.http_address}{path}"


@pytest.mark.parametrize("exporter", ["grpc", "http", "http-langfuse-path"])
def test_langfuse_sdk_app_through_the_relay_is_linked_and_ingested_once(
    langfuse: LangfuseServer, relay: RelayServer, openai_fake: FakeOpenAI, exporter: str
) -> None:
    proc = _run_app(langfuse, {"RELAY": _relay_endpoint(relay, exporter), "EXPORTER": exporter,
                               "OPENAI_BASE_URL": openai_fake.base_url})
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["answer"] * REQUESTS
    assert len(openai_fake.requests) == REQUESTS

    def arrived() -> bool:
        gens = [o for o in langfuse.observations() if o.type == "GENERATION"]
        return len(gens) == REQUESTS and all(o.prompt_version is not None for o in gens)

    wait_until(arrived, timeout=15, what="every generation linked at Langfuse")
    observations = langfuse.observations()
    generations = [o for o in observations if o.type == "GENERATION"]
    roots = [o for o in observations if o.name == "handle_request"]
    assert len(roots) == REQUESTS and len(generations) == REQUESTS
    for gen in generations:
        assert gen.scope_name is not None and gen.scope_name.startswith("opentelemetry.instrumentation.openai")
        assert (gen.prompt_name, gen.prompt_version) == (PROMPT, 1)
        assert gen.metadata["prompt_label"] == "production"
        assert gen.metadata["prompt_resolution"] == "trace"  # from the fetch span
        assert gen.attributes["user.id"] == "user-7"  # Langfuse's propagate_attributes kept
        assert gen.attributes["session.id"] == "session-1"
    assert {g.trace_id for g in generations} == {r.trace_id for r in roots}
    assert langfuse.rejected() == []

    assert relay.stop(timeout=10) == 0
    counts = _ingested_span_counts(langfuse)
    # per request: handle_request, promptstamp.fetch (kept by promptstamp.should_export_span), the generation
    assert len(counts) == len(observations) == 3 * REQUESTS
    assert sum(o.name == "promptstamp.fetch" for o in observations) == REQUESTS
    assert set(counts.values()) == {1}  # every span ingested exactly once
    # Only the relay sent them: Langfuse's own exporter was never used.
    assert {r.headers.get("x-langfuse-sdk-name") for r in langfuse.ingest_requests} == {None}


def test_langfuse_exporting_straight_to_langfuse_stops_the_app_at_install(
    langfuse: LangfuseServer, relay: RelayServer, openai_fake: FakeOpenAI
) -> None:
    """The undocumented set-up is reported at ``install()`` (here turned into an error)."""
    proc = _run_app(langfuse, {"RELAY": f"http://{relay.address}", "EXPORTER": "grpc",
                               "OPENAI_BASE_URL": openai_fake.base_url, "UNDOCUMENTED": "1"})
    assert proc.returncode != 0
    assert "promptstamp.install(): the Langfuse SDK's span processor" in proc.stderr
    assert f"straight to {langfuse.base_url}/api/public/otel/v1/traces" in proc.stderr
    assert openai_fake.requests == []


def test_langfuse_default_span_filter_is_reported_at_install(
    langfuse: LangfuseServer, relay: RelayServer, openai_fake: FakeOpenAI
) -> None:
    """Langfuse's default filter would drop the fetch span: ``install()`` says so and names
    ``should_export_span=promptstamp.should_export_span`` (here turned into an error). True:
    without it no fetch record leaves the app (the linked test above passes only with it)."""
    proc = _run_app(langfuse, {"RELAY": f"http://{relay.address}", "EXPORTER": "grpc",
                               "OPENAI_BASE_URL": openai_fake.base_url, "NO_FILTER": "1"})
    assert proc.returncode != 0
    assert "should_export_span=promptstamp.should_export_span" in proc.stderr
    assert openai_fake.requests == []


def test_base_url_at_the_relay_fails_closed_saying_why(
    langfuse: LangfuseServer, relay: RelayServer
) -> None:
    """LANGFUSE_BASE_URL at the relay's Langfuse path sends Langfuse's spans through the relay,
    but the same base_url serves the prompts API, which the relay does not: prompt() fails
    closed with a reason that names the fix (the documented route is span_exporter=)."""
    app = textwrap.dedent(
        """
        import promptstamp
        from langfuse import Langfuse
        langfuse = Langfuse()  # LANGFUSE_BASE_URL: the relay
        promptstamp.install(langfuse=langfuse)
        try:
            with langfuse.start_as_current_observation(name="handle_request"):
                with promptstamp.prompt("order-status-answer"):
                    pass
        except promptstamp.PromptNotFoundError as error:
            print(error.error_type)
            print(error)
        langfuse.shutdown()
        """
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_"))}
    environment.update({
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
        "LANGFUSE_BASE_URL": f"http://{relay.http_address}",
    })
    proc = subprocess.run([sys.executable, "-c", app], env=environment, capture_output=True, text=True,
                          timeout=90)
    assert proc.returncode == 0, proc.stderr
    error_type, message = proc.stdout.splitlines()[:2]
    assert error_type == "BaseUrlIsRelay"
    assert "span_exporter" in message and "docs/langfuse-sdk.md" in message
    assert "bypassing the promptstamp relay" in proc.stderr  # install() said so first
    assert langfuse.prompt_requests == []  # nothing reached Langfuse's prompts API
    # Langfuse's own exporter did reach the relay's Langfuse path, and went on to Langfuse.
    wait_until(lambda: [o for o in langfuse.observations() if o.name == "handle_request"],
               timeout=15, what="the span through the relay's Langfuse path")
