"""``promptstamp.testing.replay`` (the ``promptstamp_replay`` fixture): what a test gets back,
every unresolved reason told apart, and the inputs it takes besides files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptstamp.testing import Generation, assert_all_linked, replay
from promptstamp_relay.wire.otlpjson import decode_line

HERE = Path(__file__).parent
RECORDING = HERE / "recordings" / "openllmetry.jsonl"
GOLDEN = HERE / "golden" / "openllmetry.jsonl"
LINES = RECORDING.read_text().splitlines()
SPAN_LINES = [ln for ln in LINES if ln.startswith('{"resourceSpans"')]
LOG_LINES = [ln for ln in LINES if ln.startswith('{"resourceLogs"')]


def reasons(result: object) -> list[str | None]:
    return [g.reason for g in result.generations]  # type: ignore[attr-defined]


def test_a_result_has_generations_spans_and_lines() -> None:
    result = replay(RECORDING)
    assert result.lines == GOLDEN.read_text().splitlines()  # the CLI's output
    assert result.by_tier() == {"trace": 3, "instance": 1}
    assert result.unresolved == [] and result.not_generations == [] and result.invalid_fetch_records == []
    assert result.fetch_records == 4
    g = result.generations[0]
    assert (g.key, g.prompt_name, g.label, g.version, g.source) == (
        "order-status-answer", "order-status-answer", "production", 1, "langfuse")
    assert len(g.trace_id) == 32 and len(g.span_id) == 16 and g.linked
    by_id = {s.span_id: s for s in result.spans}
    assert len(by_id) == len(result.spans) == 10
    span = by_id[g.span_id]
    assert span.type == "GENERATION" and span.prompt_version == 1  # as Langfuse would link it
    assert span.attributes["langfuse.observation.prompt.version"] == 1  # plain Python values
    assert span.attributes["app.prompt.key"] == "order-status-answer"


def test_no_fetch_record_at_all() -> None:
    result = replay(*SPAN_LINES)
    assert reasons(result) == ["no_fetch_record"] * 4


def test_a_fetch_record_that_arrives_after_the_hold_window() -> None:
    result = replay(*SPAN_LINES, *LOG_LINES, config={"hold": {"seconds": 0.001}})
    assert reasons(result) == ["hold_expired"] * 4
    with pytest.raises(AssertionError, match="the hold window ended before its fetch record arrived"):
        assert_all_linked(result)
    assert_all_linked(result, allow="hold_expired")


def test_only_a_fallback_fetch_record() -> None:
    lines = list(LINES)
    # a code-embedded fallback: the source says so and there is no version (contract §2)
    lines[0] = lines[0].replace('"stringValue":"langfuse"', '"stringValue":"fallback"', 1)
    lines[0] = lines[0].replace(',{"key":"app.prompt.version","value":{"intValue":"1"}}', '', 1)
    result = replay(*lines)
    assert sorted(map(str, reasons(result))) == ["None", "None", "None", "fallback_only"]
    assert result.fetch_records == 4  # the fallback record counts as accepted


def test_a_span_langfuse_types_as_an_agent_is_reported_not_stamped() -> None:
    doc = json.loads(SPAN_LINES[0])
    span = doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    span["attributes"] = [
        {"key": "app.prompt.key", "value": {"stringValue": "order-status-answer"}},
        {"key": "app.prompt.label", "value": {"stringValue": "production"}},
        {"key": "gen_ai.operation.name", "value": {"stringValue": "invoke_agent"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
    ]
    span["name"] = "agent run"
    result = replay(doc)  # a dict shaped like an OTLP/JSON line
    assert result.generations == []
    (mistyped,) = result.not_generations
    assert (mistyped.span_name, mistyped.reason, mistyped.langfuse_type) == ("agent run", "not_a_generation", "AGENT")
    with pytest.raises(AssertionError) as failed:
        assert_all_linked(result)
    assert "span 'agent run', key 'order-status-answer', label 'production': not a generation by Langfuse's rules" in str(
        failed.value)


def test_invalid_fetch_records_come_back_with_their_input_and_line(tmp_path: Path) -> None:
    lines = list(LINES)
    lines[3] = lines[3].replace('{"key":"app.prompt.version","value":{"intValue":"1"}}',
                                '{"key":"app.prompt.version","value":{"stringValue":"1"}}', 1)
    src = tmp_path / "rec.jsonl"
    src.write_text("\n".join(lines) + "\n")
    (bad,) = replay(src).invalid_fetch_records
    assert bad[:2] == (str(src), 4) and "must be an int" in bad[2]


def test_inline_requests_and_lines_and_files_merge() -> None:
    requests = [decode_line(ln) for ln in SPAN_LINES]
    result = replay(*requests, HERE / "samples" / "split-logs.jsonl")
    assert sorted(g.resolution for g in result.generations) == ["instance", "trace", "trace", "trace"]


def test_config_as_a_mapping_and_as_a_file(tmp_path: Path) -> None:
    names = {"prompt_names": {"order-status-answer": "support/order-status"}}
    assert {g.prompt_name for g in replay(RECORDING, config=names).generations} == {"support/order-status"}
    cfg = tmp_path / "relay.yaml"
    cfg.write_text("exporter:\n  type: langfuse\nprompt_names:\n  order-status-answer: support/order-status\n")
    assert {g.prompt_name for g in replay(RECORDING, config=cfg).generations} == {"support/order-status"}


def test_assert_all_linked_takes_a_list_and_predicates() -> None:
    gens = replay(*SPAN_LINES).generations
    assert_all_linked(gens, allow=lambda g: g.label in ("production", "prod-a", "prod-b"))
    with pytest.raises(AssertionError, match="4 of 4 generation"):
        assert_all_linked(gens)
    with pytest.raises(ValueError, match="unknown reason 'hold'"):
        assert_all_linked(gens, allow="hold")
    with pytest.raises(AssertionError, match="found 0"):
        assert_all_linked([])
    assert_all_linked([], min_count=0)
    assert isinstance(gens[0], Generation)


def test_assert_all_linked_with_a_tier_names_the_generations_at_another() -> None:
    with pytest.raises(AssertionError) as failed:
        assert_all_linked(replay(RECORDING), tier="trace")
    assert "1 of 4 generation(s) linked at another tier" in str(failed.value)
    assert "linked to version 1 at tier 'instance', expected 'trace'" in str(failed.value)
    assert_all_linked(replay(RECORDING), tier=("trace", "instance"))
