"""The TypeScript SDK (``sdk/js``) end to end: a Node app on it, exporting with OpenTelemetry
JS's own OTLP/HTTP (protobuf) exporter to a real relay in this process, which sends to a loopback
:class:`~promptstamp.testing.LangfuseServer`; prompts come from that server through the real
``@langfuse/client``, model calls go to :class:`~promptstamp.testing.FakeOpenAI`.

Scenarios (``tests/js/app.mjs``): the tutorial's three (production; an A/B split between
``prod-a`` and ``prod-b`` by ``labelFor``, which must pick what Python's ``label_for`` picks;
cache fallback while Langfuse fails), a guarded rollout's plan followed (each subject, or trace,
on the side Python's ``RolloutPlan.new_side`` puts it, linked to the version it was handed), a
long request (8 s, the OTel JS SDK's default batch
timings) after the production label moved, the Langfuse client pointed at the relay by mistake,
and a plain-OTel JS app that writes ``app.prompt.version`` as a string: rejected and logged.

Needs Node >= 20 and a built ``sdk/js`` (``npm ci && npm run build``, which ``scripts/test.sh``
runs before pytest); skipped otherwise, saying so. These tests never run ``npm`` themselves: no
network from inside the test run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import promptstamp
import promptstamp_contract as contract
from promptstamp.testing import FakeOpenAI, LangfuseServer
from promptstamp.testing._langfuse import Observation
from promptstamp_contract.rollout_plan import PLAN_LABEL, parse_plan, plan_prompt_name
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SDK_JS = ROOT / "sdk" / "js"
KIT = SDK_JS / "dist-test" / "support" / "kit.js"
APP = Path(__file__).with_name("app.mjs")
NODE = shutil.which("node")


def _node_major() -> int:
    if NODE is None:
        return 0
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, timeout=30).stdout
    match = re.match(r"v(\d+)\.", out.strip())
    return int(match.group(1)) if match else 0


def _why_not() -> str | None:
    if NODE is None:
        return "node is not installed: the TypeScript SDK needs Node >= 20"
    major = _node_major()
    if major < 20:
        return f"node {major} found; the TypeScript SDK needs >= 20"
    if not (SDK_JS / "dist" / "index.js").exists() or not KIT.exists():
        return "sdk/js is not built: run scripts/test.sh, or `cd sdk/js && npm ci && npm run build`"
    return None


WHY_NOT = _why_not()
needs_node = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")

PROMPT = "order-status-answer"
CHAT = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "Question: {{query}}\nRegion: {{ region }}"},
]
AB_WEIGHTS = {"prod-a": 0.5, "prod-b": 0.5}


# --------------------------------------------------------------------------------------------
# Fixtures and the app runner
# --------------------------------------------------------------------------------------------
@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    with running(relay_config(langfuse, **{"hold.seconds": 1.0}), timeout=10) as server:
        yield server


@pytest.fixture
def model() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def run_app(
    scenario: str,
    langfuse: LangfuseServer,
    relay: RelayServer,
    model: FakeOpenAI,
    *,
    on_pause: Mapping[str, Callable[[], object]] | None = None,
    langfuse_url: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``tests/js/app.mjs`` with ``scenario``; call ``on_pause[name]`` at each pause; return
    its results."""
    assert NODE is not None and relay.http_address is not None
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_"))}
    environment.update({
        "KIT": str(KIT),
        "SCENARIO": scenario,
        "RELAY_HTTP": f"http://{relay.http_address}",
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
        "LANGFUSE_BASE_URL": langfuse_url or langfuse.base_url,
        "OPENAI_BASE_URL": model.base_url,
        **(env or {}),
    })
    with tempfile.TemporaryFile("w+") as stderr, subprocess.Popen(
        [NODE, str(APP)], env=environment, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr,
        text=True, bufsize=1,
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            for line in proc.stdout:
                message = json.loads(line)
                if "pause" in message:
                    (on_pause or {})[message["pause"]]()
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
                elif "results" in message:
                    assert proc.wait(timeout=timeout) == 0
                    results: list[dict[str, Any]] = message["results"]
                    return results
            proc.wait(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr.seek(0)
        raise AssertionError(f"the app ended without results (exit {proc.returncode}):\n{stderr.read()}")


def generations_at_langfuse(langfuse: LangfuseServer, n: int) -> list[Observation]:
    def found() -> list[Observation]:
        gens = langfuse.generations()
        return gens if len(gens) >= n else []

    wait_until(found, timeout=20, what=f"{n} generations at Langfuse")
    return langfuse.generations()


def assert_linked_as_handed(langfuse: LangfuseServer, relay: RelayServer, results: list[dict[str, Any]],
                            sources: Mapping[str, str] | None = None) -> list[Observation]:
    """Every generation is linked to the version its request printed, at the ``trace`` tier."""
    expected = sum(int(r.get("generations", 1)) for r in results)
    generations_at_langfuse(langfuse, expected)
    assert relay.stop(timeout=10) == 0
    gens = langfuse.generations()
    assert len(gens) == expected
    by_trace = {r["trace_id"]: r for r in results}
    for gen in gens:
        handed = by_trace[gen.trace_id]
        assert (gen.prompt_name, gen.prompt_version) == (PROMPT, handed["version"]), gen
        assert gen.metadata["prompt_resolution"] == "trace", gen.metadata
        assert gen.metadata["prompt_label"] == handed["label"]
        assert gen.metadata["prompt_source"] == (sources or {}).get(gen.trace_id, handed["source"])
        assert gen.attributes[contract.PROMPT_KEY] == PROMPT
        assert gen.service_name == "order-status-js"
    assert langfuse.rejected() == []
    fetch_spans = [o for o in langfuse.observations() if o.name == contract.FETCH_SPAN_NAME]
    assert len(fetch_spans) == len(results)
    for span in fetch_spans:
        # OTLP intValue, decoded by the loopback Langfuse as a Python int
        version = span.attributes[contract.PROMPT_VERSION]
        assert type(version) is int and version == by_trace[span.trace_id]["version"]
    return gens


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------
@needs_node
@pytest.mark.parametrize("logs", [False, True], ids=["tracing-only", "with-logs"])
def test_production(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI, logs: bool) -> None:
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o"})  # v2
    results = run_app("production", langfuse, relay, model, env={"WITH_LOGS": "1"} if logs else {})
    assert [(r["version"], r["source"], r["label"]) for r in results] == [(2, "langfuse", "production")] * 4
    assert len(model.requests) == 4
    gens = assert_linked_as_handed(langfuse, relay, results)
    assert {g.attributes[contract.GEN_AI_REQUEST_MODEL] for g in gens} == {"gpt-4o"}
    stats = relay.processor.stats
    assert (stats.fetch_records, stats.fetch_invalid) == (4, 0)
    # with a LoggerProvider each fetch reaches the relay twice (log record, span event): once counted
    assert stats.fetch_duplicates == (4 if logs else 0)


@needs_node
def test_ab_split_picks_what_python_picks(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI) -> None:
    langfuse.create_prompt(PROMPT, CHAT, labels=["prod-a"], config={"model": "gpt-4o-mini"})  # v1
    langfuse.create_prompt(PROMPT, CHAT, labels=["prod-b", "production"], config={"model": "gpt-4o"})  # v2
    results = run_app("ab", langfuse, relay, model)
    for r in results:
        assert r["label"] == promptstamp.label_for(r["subject"], AB_WEIGHTS, salt="exp-14"), r
        assert r["version"] == {"prod-a": 1, "prod-b": 2}[r["label"]]
    assert {r["label"] for r in results} == {"prod-a", "prod-b"}
    assert_linked_as_handed(langfuse, relay, results)


@needs_node
def test_guarded_rollout_sides_are_pythons(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI) -> None:
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})  # v1
    langfuse.create_prompt(PROMPT, CHAT, labels=[], config={"model": "gpt-4o"})  # v2: rolled out
    config = {"format": "promptstamp.rollout/1", "prompt": PROMPT, "label": "production",
              "from_version": 1, "to_version": 2, "state": "running", "share_percent": 50,
              "salt": "r-e2e-1"}
    plan_name = plan_prompt_name(PROMPT, "production")
    langfuse.create_prompt(plan_name, "rollout plan", type="text", labels=[PLAN_LABEL], config=config)
    plan, why = parse_plan(config, name=PROMPT, label="production", plan_version=1)
    assert plan is not None, why
    results = run_app("rollout", langfuse, relay, model)
    assert len(results) == 20
    for r in results:
        new = plan.new_side(r.get("subject") or r["trace_id"])  # no subject: the trace id
        assert (r["label"], r["version"], r["rollout"]) == ("production", 2 if new else 1, "new" if new else "old"), r
    assert {r["version"] for r in results if "subject" in r} == {1, 2}
    # one lookup of the plan and one fetch of the new version for all 20 (TTL 60 s)
    requests = langfuse.prompt_requests
    assert [(q.label, q.version) for q in requests if q.name == plan_name] == [(PLAN_LABEL, None)]
    assert [q.version for q in requests if q.name == PROMPT and q.version is not None] == ["2"]
    # the relay links each generation to the version its request was handed, under the label
    assert_linked_as_handed(langfuse, relay, results)


@needs_node
def test_cache_fallback_while_langfuse_fails(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI) -> None:
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})  # v2
    results = run_app("cache", langfuse, relay, model, on_pause={"warm": lambda: langfuse.fail_prompts(503)},
                      env={"CACHE_TTL": "0"})
    assert [(r["version"], r["source"], r["error_type"]) for r in results] == (
        [(2, "langfuse", None)] + [(2, "cache", "LangfuseAPIError")] * 3
    )
    assert_linked_as_handed(langfuse, relay, results)


@needs_node
def test_long_request_after_the_label_moved(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI) -> None:
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})  # v1
    langfuse.create_prompt(PROMPT, CHAT, labels=[], config={"model": "gpt-4o"})  # v2, not yet live
    results = run_app("long", langfuse, relay, model, on_pause={"move": lambda: langfuse.set_labels(PROMPT, 2, ["production"])},
                      env={"CACHE_TTL": "0", "HOLD_MS": "8000"})
    assert [(r["version"], r["generations"]) for r in results] == [(1, 1), (2, 2)]
    gens = assert_linked_as_handed(langfuse, relay, results)
    long_trace = results[1]["trace_id"]
    assert [g.prompt_version for g in gens if g.trace_id == long_trace] == [2, 2]
    first, second = sorted((g for g in gens if g.trace_id == long_trace), key=lambda g: g.start_time_unix_nano)
    assert second.start_time_unix_nano - first.start_time_unix_nano >= 8e9  # it was a long request


@needs_node
def test_langfuse_client_pointed_at_the_relay_fails_closed(
    langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI
) -> None:
    results = run_app("relay-as-langfuse", langfuse, relay, model, langfuse_url=f"http://{relay.http_address}")
    assert [(r["error"], r["error_type"]) for r in results] == [("PromptNotFoundError", "BaseUrlIsRelay")]
    assert model.requests == []


@needs_node
def test_a_string_version_is_rejected_and_logged(
    langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    # The relay's intake logs it (logger promptstamp_relay.intake; .admit before the relay's
    # package was reorganised): matched under the package's logger, by content.
    with caplog.at_level(logging.WARNING, logger="promptstamp_relay"):
        run_app("string-version", langfuse, relay, model, env={"SERVICE_NAME": "node-agent"})

        def logged() -> list[str]:
            return [r.getMessage() for r in caplog.records
                    if r.name.startswith("promptstamp_relay") and r.levelno == logging.WARNING
                    and "version_not_int" in r.getMessage()]

        [line] = wait_until(logged, timeout=10, what="the relay's warning")
    assert "service.name='node-agent'" in line
    assert "app.prompt.version (OTLP intValue" in line  # what a correct record looks like
    assert relay.processor.stats.fetch_invalid_reasons["version_not_int"] == 1


# --------------------------------------------------------------------------------------------
# The names the SDK spells
# --------------------------------------------------------------------------------------------
def test_the_js_contract_names_are_the_contract_package_names() -> None:
    source = (SDK_JS / "src" / "contract.ts").read_text(encoding="utf-8")
    names = dict(re.findall(r'^export const (\w+) = "([^"]*)";', source, flags=re.MULTILINE))
    assert len(names) >= 12
    for name, value in names.items():
        assert getattr(contract, name) == value, name


@needs_node
def test_vercel_ai_sdk_telemetry(langfuse: LangfuseServer, relay: RelayServer, model: FakeOpenAI) -> None:
    """The Vercel AI SDK's own generation spans (``experimental_telemetry``) inside the scope."""
    langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
    results = run_app("ai-sdk", langfuse, relay, model)
    assert [(r["version"], r["source"]) for r in results] == [(1, "langfuse")] * 2
    assert len(model.requests) == 2
    generations_at_langfuse(langfuse, 2)
    assert relay.stop(timeout=10) == 0
    gens = langfuse.generations()
    assert sorted(g.trace_id for g in gens) == sorted(r["trace_id"] for r in results)
    for gen in gens:
        assert gen.name == "ai.generateText.doGenerate"
        assert (gen.prompt_name, gen.prompt_version, gen.metadata["prompt_resolution"]) == (PROMPT, 1, "trace")
        assert gen.attributes[contract.PROMPT_LABEL] == "production"
    outer = [o for o in langfuse.observations() if o.name == "ai.generateText"]
    assert len(outer) == 2 and all(o.attributes[contract.PROMPT_KEY] == PROMPT and o.prompt_name is None for o in outer)
    assert langfuse.rejected() == []
