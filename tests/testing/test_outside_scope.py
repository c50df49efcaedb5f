"""A model call outside the prompt's scope, and in threads the context does not reach.

* The tutorial's helper shape (fetch and compile in one function, call the model in another):
  its generation carries no prompt key, so it cannot link; ``assert_all_linked`` and
  ``replay --check`` name it ``outside_prompt_scope``. Re-entering the handle around the call
  (``with p:``, no second fetch) links it at the ``trace`` tier.
* ``ThreadPoolExecutor`` / ``loop.run_in_executor`` inside a scope: ``contextvars`` do not
  cross into pool threads, so the generation there is outside the scope; submitting
  ``contextvars.copy_context().run`` carries it (``asyncio.to_thread`` does on its own).

A real OpenTelemetry SDK app in this process (its own OTLP/gRPC exporter, the real langfuse
client), the real relay (``promptstamp_relay`` fixture) and its loopback Langfuse.
"""

from __future__ import annotations

import asyncio
import contextvars
import gc
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import promptstamp
from promptstamp import _install
from promptstamp.testing import LiveRelay, assert_all_linked, replay, reset_langfuse_clients
from promptstamp_contract.rollout_plan import is_plan_name
from promptstamp_relay.wire.otlpjson import encode_line
from tests.otlp_builders import fetch_span, gen_attrs, span, traces
from tests.waiting import wait_until

PROMPT = "order-status-answer"
CHAT = [{"role": "user", "content": "Where is order {{order}}?"}]
GEN = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}


class App:
    def __init__(self, relay: LiveRelay) -> None:
        from langfuse import Langfuse

        resource = Resource.create({"service.name": "agent", "service.instance.id": f"agent-{uuid.uuid4().hex[:6]}"})
        self.tp = TracerProvider(resource=resource)
        self.tp.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=relay.otlp_grpc_endpoint,
                                                                       insecure=True)))
        client = Langfuse(public_key=relay.langfuse.public_key, secret_key=relay.langfuse.secret_key,
                          base_url=relay.langfuse.base_url, tracing_enabled=False)
        promptstamp.install(self.tp, langfuse=client, fetch_timeout_seconds=5)
        self.tracer = self.tp.get_tracer("agent")

    def model_call(self, name: str = "chat gpt-4o-mini") -> None:
        with self.tracer.start_as_current_span(name, attributes=GEN):
            pass

    def get_order_status_prompt(self, order: str) -> tuple[promptstamp.ChatPrompt, list[dict[str, Any]]]:
        """The tutorial's helper: fetch and compile, return the messages."""
        with promptstamp.prompt(PROMPT) as p:
            return p, p.compile(order=order)

    def flush(self) -> None:
        self.tp.force_flush()


@pytest.fixture
def app(promptstamp_relay: LiveRelay) -> Iterator[App]:
    promptstamp_relay.langfuse.create_prompt(PROMPT, CHAT, labels=["production"])
    _install._reset_for_tests()
    made = App(promptstamp_relay)
    yield made
    made.tp.shutdown()
    _install._reset_for_tests()
    reset_langfuse_clients()


def _all_arrived(relay: LiveRelay, n: int) -> None:
    wait_until(lambda: len([o for o in relay.langfuse.observations() if o.type == "GENERATION"]) >= n,
               15, f"{n} generation(s) at Langfuse")


def test_the_helper_shape_is_reported_as_outside_the_prompt_scope(app: App, promptstamp_relay: LiveRelay) -> None:
    with app.tracer.start_as_current_span("handle_request"):
        _p, _messages = app.get_order_status_prompt("42")
        app.model_call()  # outside the scope: no prompt key on its span
    app.flush()
    _all_arrived(promptstamp_relay, 1)
    with pytest.raises(AssertionError, match=r"outside `with promptstamp\.prompt"):
        assert_all_linked(promptstamp_relay)
    [outside] = promptstamp_relay.outside_scope()
    assert outside.reason == "outside_prompt_scope" and outside.span_name == "chat gpt-4o-mini"
    assert_all_linked(promptstamp_relay, allow="outside_prompt_scope", min_count=0)


def _prompt_fetches(relay: LiveRelay) -> int:
    """Prompts GETs for the prompt itself (not the rollout plan lookup beside each fetch)."""
    return len([r for r in relay.langfuse.prompt_requests if not is_plan_name(r.name)])


def test_re_entering_the_handle_links_the_later_call(app: App, promptstamp_relay: LiveRelay) -> None:
    fetched_before = _prompt_fetches(promptstamp_relay)
    p, _messages = app.get_order_status_prompt("42")  # at start-up: outside any request
    for _ in range(2):
        with app.tracer.start_as_current_span("handle_request"), p:
            app.model_call()
    app.flush()
    _all_arrived(promptstamp_relay, 2)
    assert _prompt_fetches(promptstamp_relay) == fetched_before + 1  # one fetch in all
    assert_all_linked(promptstamp_relay, tier="trace", min_count=2)
    assert [g.version for g in promptstamp_relay.generations()] == [1, 1]


def _trace_of(relay: LiveRelay, name: str) -> str:
    [o] = [o for o in relay.langfuse.observations() if o.name == name]
    return o.trace_id


def test_a_thread_pool_inside_a_scope_needs_the_context_carried(
    app: App, promptstamp_relay: LiveRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Without the remedy the pool thread's span starts a trace of its own, with no prompt key:
    nothing can link it, and the SDK says so (the compiled prompt saw no span in its scope)."""
    with caplog.at_level("WARNING", logger="promptstamp"):
        with app.tracer.start_as_current_span("lost request"), promptstamp.prompt(PROMPT) as p, \
                ThreadPoolExecutor(max_workers=1) as pool:
            pool.submit(app.model_call, "lost in the pool", ).result()  # contextvars do not cross
            p.compile(order="42")
        del p
        gc.collect()
    assert any("no span started while it was in scope" in r.getMessage()
               and "copy_context().run" in r.getMessage() for r in caplog.records)
    with app.tracer.start_as_current_span("handle_request"), promptstamp.prompt(PROMPT), \
            ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(contextvars.copy_context().run, app.model_call, "carried").result()  # the remedy
    app.flush()
    _all_arrived(promptstamp_relay, 2)
    [linked] = promptstamp_relay.generations()
    assert (linked.span_name, linked.version, linked.resolution) == ("carried", 1, "trace")
    assert _trace_of(promptstamp_relay, "carried") == _trace_of(promptstamp_relay, "handle_request")
    [lost] = [o for o in promptstamp_relay.langfuse.observations() if o.name == "lost in the pool"]
    assert lost.trace_id != _trace_of(promptstamp_relay, "lost request")  # a trace of its own
    assert "app.prompt.key" not in lost.attributes and lost.prompt_name is None


def test_run_in_executor_and_to_thread(app: App, promptstamp_relay: LiveRelay) -> None:
    async def handle() -> None:
        loop = asyncio.get_running_loop()
        async with promptstamp.prompt(PROMPT):
            await loop.run_in_executor(None, app.model_call, "run_in_executor")  # lost
            await loop.run_in_executor(None, contextvars.copy_context().run, app.model_call, "carried")
            await asyncio.to_thread(app.model_call, "to_thread")  # copies the context itself

    with app.tracer.start_as_current_span("handle_request"):
        asyncio.run(handle())
    app.flush()
    _all_arrived(promptstamp_relay, 3)
    assert sorted(g.span_name for g in promptstamp_relay.generations()) == ["carried", "to_thread"]
    assert_all_linked(promptstamp_relay, tier="trace", min_count=2)
    [lost] = [o for o in promptstamp_relay.langfuse.observations() if o.name == "run_in_executor"]
    assert lost.trace_id != _trace_of(promptstamp_relay, "handle_request")
    assert "app.prompt.key" not in lost.attributes


# -- replay and replay --check ------------------------------------------------------------------


def _recording() -> str:
    """A trace with a fetch span and two generations: one in the scope, one outside it."""
    inside = span(trace=5, span_id=1, attrs=gen_attrs())
    outside = span("chat outside", trace=5, span_id=2, attrs=GEN)
    elsewhere = span("chat elsewhere", trace=6, span_id=3, attrs=GEN)  # no fetch record in trace 6
    return encode_line(traces([fetch_span(trace=5), inside, outside, elsewhere]))


def test_replay_reports_a_generation_outside_the_scope() -> None:
    result = replay(_recording())
    assert [g.span_name for g in result.generations] == ["chat gpt-4o"]
    assert [(g.span_name, g.reason) for g in result.outside_scope] == [("chat outside", "outside_prompt_scope")]
    with pytest.raises(AssertionError, match=r"chat outside.*outside `with promptstamp\.prompt"):
        assert_all_linked(result)


def test_replay_check_fails_on_it(tmp_path: Path) -> None:
    recording = tmp_path / "outside.jsonl"
    recording.write_text(_recording() + "\n")
    proc = subprocess.run([sys.executable, "-m", "promptstamp_relay.cli", "replay", str(recording), "--check",
                           "--output", str(tmp_path / "out.jsonl")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "span 'chat outside': outside_prompt_scope" in proc.stderr
    assert "1 outside the prompt's scope" in proc.stderr
