"""The example app as docker-compose runs it: not driven by the demo, seeding the prompt itself,
answering model calls from its in-process fake, simulating the Langfuse outage in-process.

Loopback stand-ins for the compose services: the Langfuse-compatible server and the relay run
in this process; the app is a subprocess exporting OTLP/gRPC to the relay.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.demo.app.prompts import PROMPT_NAME, LangfuseApi, seed_prompts
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running
from tests.waiting import wait_until

APP_MODULE = "promptstamp_relay.demo.app"  # what the demo-app image's ENTRYPOINT runs


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    # The app exports OTLP/gRPC: no HTTP listener.
    with running(relay_config(langfuse, **{"hold.seconds": 1.0, "receivers.http.listen": ""}),
                 timeout=None) as server:
        yield server
        assert server.stop() == 0


def _app_env(langfuse: LangfuseServer, relay: RelayServer) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_"))}
    env.update({
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{relay.address}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "LANGFUSE_BASE_URL": langfuse.base_url,
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
    })
    return env


def test_compose_command_runs_all_scenarios_linked(langfuse: LangfuseServer, relay: RelayServer,
                                                   tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    # docker-compose.yml's command for order-status-app, plus the report.
    cmd = [sys.executable, "-m", APP_MODULE, "--seed-prompts", "--wait-for-langfuse", "30",
           "--fake-openai", "all", "--report", str(report_path)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_app_env(langfuse, relay), capture_output=True,
                          text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "answer", "prod-a: answer", "prod-b: answer", "warmup: langfuse answer", "fallback: cache answer",
    ]
    report = json.loads(report_path.read_text())
    sent = {(s["trace_id"], s["span_id"]) for s in report["spans"]}
    wait_until(lambda: not {(o.trace_id, o.span_id) for o in langfuse.observations()} < sent, 15,
               "every span the app sent in Langfuse", interval=0.05)
    observations = langfuse.observations()
    assert {(o.trace_id, o.span_id) for o in observations} == sent  # nothing lost, nothing extra
    assert langfuse.rejected() == []

    generations = {o.trace_id: o for o in observations if o.type == "GENERATION"}
    assert len(generations) == len(report["runs"]) == 5
    for run in report["runs"]:
        g = generations[run["trace_id"]]
        assert (g.prompt_name, g.prompt_version) == ("order-status-answer", run["version"])
        assert g.metadata["prompt_label"] == run["label"]
        assert g.metadata["prompt_source"] == run["source"]
    fallback = next(r for r in report["runs"] if r["trace_name"] == "manual-prompt-cache-fallback")
    assert fallback["source"] == "cache"
    node = next(o for o in observations
                if o.trace_id == fallback["trace_id"] and o.name == "workflow.node compose_answer")
    # the chapter's simulated timeout, now behind promptstamp's cache policy
    assert node.attributes["app.prompt.fetch.error_type"] == "TimeoutError"


def test_seeding_is_idempotent(langfuse: LangfuseServer) -> None:
    api = LangfuseApi(langfuse.base_url, langfuse.public_key, langfuse.secret_key)
    api.wait_until_up(5)
    assert len(seed_prompts(api)) == 2
    assert seed_prompts(api) == []  # every label already points somewhere
    v1 = langfuse.get_prompt(PROMPT_NAME, version=1)
    v2 = langfuse.get_prompt(PROMPT_NAME, version=2)
    assert v1 is not None and v2 is not None and langfuse.get_prompt(PROMPT_NAME, version=3) is None
    assert {"production", "prod-a"} <= set(v1["labels"])
    assert "prod-b" in v2["labels"]
    # the chapter's messages and variables
    assert v1["prompt"][0]["content"].startswith("You are a support assistant.")
    assert "{{order_state}}" in v1["prompt"][1]["content"]
    assert v1["prompt"][0]["content"] != v2["prompt"][0]["content"]


def test_wait_for_langfuse_gives_up_with_the_reason(langfuse: LangfuseServer) -> None:
    api = LangfuseApi(langfuse.base_url, langfuse.public_key, "sk-lf-wrong")
    with pytest.raises(RuntimeError, match="HTTP 401"):
        api.wait_until_up(1.5)
