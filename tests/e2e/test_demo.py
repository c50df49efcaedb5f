"""``promptstamp-relay demo`` end to end: the example app in a subprocess (its own OTel SDK, a real
OpenAI instrumentation, promptstamp), the relay and the Langfuse-compatible server in-process.

Assertions are on what the Langfuse-compatible server received and would show, never on the
relay's internals. Every server binds 127.0.0.1 on a free port and is stopped by ``run()``.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from promptstamp.testing import Observation
from promptstamp_relay.demo import run as demo
from promptstamp_relay.demo.run import DemoResult, GenerationRow

PROMPT = "order-status-answer"
CHAPTER_OUTPUT = [
    "answer",
    "prod-a: answer",
    "prod-b: answer",
    "warmup: langfuse answer",
    "fallback: cache answer",
]
# trace name -> (version, label, source) the generation must be linked with
EXPECTED = {
    "manual-prompt-management": (1, "production", "langfuse"),
    "manual-prompt-ab-test-prod-a": (1, "prod-a", "langfuse"),
    "manual-prompt-ab-test-prod-b": (2, "prod-b", "langfuse"),
    "manual-prompt-cache-warmup": (1, "production", "langfuse"),
    "manual-prompt-cache-fallback": (1, "production", "cache"),
}
# Bounds: an app run takes ~3 s here; these only stop a hung run.
APP_TIMEOUT = 90.0
ARRIVAL_TIMEOUT = 15.0


def _run(**kwargs: Any) -> tuple[DemoResult, str]:
    out = io.StringIO()
    result = demo.run(out=out, app_timeout=APP_TIMEOUT, arrival_timeout=ARRIVAL_TIMEOUT, **kwargs)
    return result, out.getvalue()


@pytest.fixture(scope="module")
def demo_run() -> Iterator[tuple[DemoResult, str]]:
    yield _run()


@pytest.fixture(scope="module")
def result(demo_run: tuple[DemoResult, str]) -> DemoResult:
    return demo_run[0]


def _trace_names(result: DemoResult) -> dict[str, str]:
    return {o.trace_id: o.attributes["langfuse.trace.name"] for o in result.observations
            if "langfuse.trace.name" in o.attributes}


def _generations_by_trace_name(result: DemoResult) -> dict[str, list[Observation]]:
    names = _trace_names(result)
    by_name: dict[str, list[Observation]] = {}
    for o in result.observations:
        if o.type == "GENERATION":
            by_name.setdefault(names[o.trace_id], []).append(o)
    return by_name


def test_demo_succeeds_and_prints_what_the_chapter_prints(demo_run: tuple[DemoResult, str]) -> None:
    result, printed = demo_run
    assert result.status == 0, printed + "\n" + result.app_stderr
    assert result.problems == []
    assert result.app_returncode == 0
    assert result.app_output == CHAPTER_OUTPUT
    lines = printed.splitlines()
    # The scenario output comes in the chapter's order, then the table of generations.
    positions = [lines.index(line) for line in CHAPTER_OUTPUT]
    assert positions == sorted(positions)
    header = next(i for i, line in enumerate(lines) if line.startswith("TRACE"))
    assert header > positions[-1]
    assert lines[header].split() == ["TRACE", "PROMPT", "NAME", "VERSION", "LABEL", "RESOLUTION", "SOURCE"]
    table = lines[header + 1 : header + 6]
    assert [row.split()[0] for row in table] == list(EXPECTED)
    for row in table:
        name, prompt, version, label, resolution, source = row.split()
        assert (prompt, resolution) == (PROMPT, "trace")
        assert (int(version), label, source) == EXPECTED[name]


def test_prompt_seeded_as_in_the_chapter(result: DemoResult) -> None:
    assert set(result.prompt_versions) == {1, 2}
    assert {"production", "prod-a"} <= set(result.prompt_versions[1])
    assert "prod-b" in result.prompt_versions[2]


def test_every_generation_is_linked_with_name_int_version_label(result: DemoResult) -> None:
    generations = [o for o in result.observations if o.type == "GENERATION"]
    assert len(generations) == len(EXPECTED)
    for g in generations:
        assert g.prompt_name == PROMPT
        version = g.attributes["langfuse.observation.prompt.version"]
        assert type(version) is int  # an OTLP intValue: a string "1" would be dropped by Langfuse
        assert g.prompt_version == version
        assert g.metadata["prompt_name"] == PROMPT
        assert g.metadata["prompt_resolution"] == "trace"
        # the app's own identity of the prompt, as the SDK put it on the span
        assert g.attributes["app.prompt.key"] == PROMPT
        assert g.attributes["app.prompt.label"] == g.metadata["prompt_label"]
    assert result.rejected == []


def test_each_scenario_links_the_version_behind_its_label(result: DemoResult) -> None:
    by_name = _generations_by_trace_name(result)
    assert set(by_name) == set(EXPECTED)
    for name, (version, label, source) in EXPECTED.items():
        (g,) = by_name[name]
        assert (g.prompt_name, g.prompt_version) == (PROMPT, version), name
        assert g.metadata["prompt_label"] == label, name
        assert g.metadata["prompt_source"] == source, name


def test_ab_test_gives_two_traces_with_two_versions(result: DemoResult) -> None:
    by_name = _generations_by_trace_name(result)
    ab = [g for name, gs in by_name.items() if name.startswith("manual-prompt-ab-test-") for g in gs]
    assert len({g.trace_id for g in ab}) == 2
    assert {(g.metadata["prompt_label"], g.prompt_version) for g in ab} == {("prod-a", 1), ("prod-b", 2)}
    # the app's record of which label each user got agrees
    runs = [r for r in result.runs if r["scenario"] == "prompt-ab-test"]
    assert [(r["label"], r["version"]) for r in runs] == [("prod-a", 1), ("prod-b", 2)]


def test_fallback_is_served_from_cache_and_says_so(result: DemoResult) -> None:
    names = _trace_names(result)
    (g,) = _generations_by_trace_name(result)["manual-prompt-cache-fallback"]
    assert g.metadata["prompt_source"] == "cache"
    assert g.prompt_version == 1
    # The node span that fetched the prompt records the failed fetch (contract §2).
    (node,) = [o for o in result.observations
               if names.get(o.trace_id) == "manual-prompt-cache-fallback"
               and o.name == "workflow.node compose_answer"]
    assert node.attributes["app.prompt.fetch.source"] == "cache"
    assert node.attributes["app.prompt.fetch.error_type"] == "ReadTimeout"  # the real client timed out
    assert node.type != "GENERATION" and node.prompt_name is None
    # ...while the warm-up fetched from Langfuse
    (warm,) = [o for o in result.observations
               if names.get(o.trace_id) == "manual-prompt-cache-warmup"
               and o.name == "workflow.node compose_answer"]
    assert warm.attributes["app.prompt.fetch.source"] == "langfuse"


def test_no_span_lost(result: DemoResult) -> None:
    sent = {(s["trace_id"], s["span_id"]) for s in result.sent_spans}
    received = [(o.trace_id, o.span_id) for o in result.observations]
    assert len(sent) == len(result.sent_spans) > 0
    # spans in - permanent errors (none) = spans out, each exactly once, nothing extra
    assert Counter(received) == Counter(sent)
    assert result.rejected == []
    assert result.relay_lost == 0
    # Per run: root, workflow.run, three nodes, the fetch span and the model call.
    per_trace = Counter(s["trace_id"] for s in result.sent_spans)
    assert sorted(per_trace.values()) == [7] * len(EXPECTED)


def test_only_generations_are_stamped(result: DemoResult) -> None:
    for o in result.observations:
        stamped = {k for k in o.attributes if k.startswith(("langfuse.observation.prompt.",
                                                            "langfuse.observation.metadata.prompt_"))}
        if o.type == "GENERATION":
            assert stamped
        else:
            assert not stamped, o.name


def test_model_call_is_traced_by_a_real_instrumentation(result: DemoResult) -> None:
    for g in (o for o in result.observations if o.type == "GENERATION"):
        assert g.scope_name and g.scope_name.startswith("opentelemetry.instrumentation.openai"), g.scope_name
        assert g.attributes.get("gen_ai.request.model") == "gpt-4o-mini"  # from the prompt's config
        assert g.service_name == "order-status-agent"


def test_format_table_marks_unlinked_and_dropped_generations() -> None:
    rows = [
        GenerationRow("t1", "trace-a", "openai.chat", PROMPT, 3, "production", "trace", "langfuse"),
        GenerationRow("t2", "trace-b", "openai.chat", None, None, "production", "unresolved", None),
        GenerationRow("t3", "trace-c", "openai.chat", None, None, None, None, None, rejected="bad version"),
    ]
    lines = demo.format_table(rows).splitlines()
    assert lines[1].split() == ["trace-a", PROMPT, "3", "production", "trace", "langfuse"]
    assert "(not linked)" in lines[2] and "unresolved" in lines[2]
    assert "DROPPED: bad version" in lines[3]


@pytest.mark.slow
def test_unlinked_generation_makes_the_demo_fail() -> None:
    """A relay that forgets every fetch-log record at once (a 1 ns store age) resolves nothing:
    every generation arrives unlinked (metadata only), and the demo must say so and fail
    (without losing a span)."""
    result, printed = _run(relay_overrides={"store.max_age_seconds": 1e-9})
    assert result.status == 1
    assert result.app_output == CHAPTER_OUTPUT  # the app itself was fine
    unlinked = [p for p in result.problems if "arrived unlinked" in p]
    assert len(unlinked) == len(EXPECTED), result.problems
    assert result.missing_spans() == []
    assert "FAILED:" in printed and "(not linked)" in printed


@pytest.mark.slow
@pytest.mark.parametrize("instrumentation", ["openinference", "openai-v2"])
def test_demo_with_other_instrumentations(instrumentation: str) -> None:
    result, printed = _run(instrumentation=instrumentation)
    assert result.status == 0, printed + "\n" + result.app_stderr
    assert result.app_output == CHAPTER_OUTPUT
    by_name = _generations_by_trace_name(result)
    assert {name: (g.prompt_version, g.metadata["prompt_label"], g.metadata["prompt_source"])
            for name, (g,) in by_name.items()} == EXPECTED
    assert result.missing_spans() == []


@pytest.mark.slow
def test_cli_demo_command_exits_zero() -> None:
    """The command the README puts first, as a user runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_"))}
    proc = subprocess.run(
        [sys.executable, "-m", "promptstamp_relay.cli", "demo"],
        capture_output=True, text=True, timeout=110, env=env,  # below pytest-timeout's 120 s
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for line in CHAPTER_OUTPUT:
        assert line in proc.stdout.splitlines()
    assert "OK: 5 of 5 generations linked" in proc.stdout
