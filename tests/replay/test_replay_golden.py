"""Replay of recordings captured from real instrumentations, against golden outputs.

Regenerate a recording: ``python -m tests.replay.capture KIND tests/replay/recordings/KIND.jsonl``.
Update the golden files after a deliberate change: ``PROMPTSTAMP_UPDATE_GOLDEN=1 pytest tests/replay``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c
from promptstamp_relay.cli import main
from tests.otlp_builders import attrs_of, line_spans

HERE = Path(__file__).parent
KINDS = ["openllmetry", "openinference", "openai-v2"]
UPDATE = os.environ.get("PROMPTSTAMP_UPDATE_GOLDEN") == "1"
EXPECTED_VERSION = {"production": 1, "prod-a": 1, "prod-b": 2}


def run_replay(src: Path, tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / f"{src.stem}.out.jsonl"
    assert main(["replay", str(src), "--output", str(out), *extra]) == 0
    return out


def spans_by_id(lines: list[str]) -> dict[bytes, Span]:
    out: dict[bytes, Span] = {}
    for s in line_spans(lines):
        assert s.span_id not in out, "a span came out twice"
        out[s.span_id] = s
    return out


@pytest.mark.parametrize("kind", KINDS)
def test_replay_matches_golden(kind: str, tmp_path: Path) -> None:
    out = run_replay(HERE / "recordings" / f"{kind}.jsonl", tmp_path)
    golden = HERE / "golden" / f"{kind}.jsonl"
    if UPDATE:
        golden.write_bytes(out.read_bytes())
    assert out.read_bytes() == golden.read_bytes(), f"replay output differs from {golden}"


@pytest.mark.parametrize("kind", KINDS)
def test_replay_stamps_each_generation_with_its_labels_version(kind: str, tmp_path: Path) -> None:
    src = HERE / "recordings" / f"{kind}.jsonl"
    in_spans = spans_by_id(src.read_text().splitlines())
    out_spans = spans_by_id(run_replay(src, tmp_path).read_text().splitlines())
    assert in_spans.keys() == out_spans.keys()  # every span, exactly once
    stamped = []
    for span_id, out_span in out_spans.items():
        a_in, a_out = attrs_of(in_spans[span_id]), attrs_of(out_span)
        added = {k: v for k, v in a_out.items() if k not in a_in}
        # Only ever adds: everything the span came with is still there, unchanged.
        assert {k: a_out[k] for k in a_in} == a_in
        if c.LF_META_RESOLUTION not in added:
            assert added == {}
            continue
        stamped.append(added)
        label = added[c.LF_META_PROMPT_LABEL]
        assert added[c.LF_PROMPT_NAME] == "order-status-answer"
        assert added[c.LF_PROMPT_VERSION] == EXPECTED_VERSION[label]  # type: ignore[index]
        assert added[c.LF_META_SOURCE] == "langfuse"
    tiers = sorted(str(a[c.LF_META_RESOLUTION]) for a in stamped)
    assert tiers == ["instance", "trace", "trace", "trace"]
    # The model call with no prompt around it stays untouched.
    assert len(stamped) == 4


def test_replay_is_deterministic(tmp_path: Path) -> None:
    src = HERE / "recordings" / "openllmetry.jsonl"
    a = run_replay(src, tmp_path).read_bytes()
    (tmp_path / "again").mkdir()
    b = run_replay(src, tmp_path / "again").read_bytes()
    assert a == b


def test_fetch_log_arriving_after_the_spans_is_held_and_resolves_by_trace(tmp_path: Path) -> None:
    lines = (HERE / "recordings" / "openllmetry.jsonl").read_text().splitlines()
    logs_last = [ln for ln in lines if '"resourceSpans"' in ln] + [ln for ln in lines if '"resourceLogs"' in ln]
    src = tmp_path / "late.jsonl"
    src.write_text("\n".join(logs_last) + "\n")
    out = spans_by_id(run_replay(src, tmp_path).read_text().splitlines())
    tiers = sorted(str(attrs_of(s).get(c.LF_META_RESOLUTION)) for s in out.values()
                   if c.LF_META_RESOLUTION in attrs_of(s))
    # The warm-up fetch had no trace: its generation still resolves, by the instance tier.
    assert tiers == ["instance", "trace", "trace", "trace"]


def test_shipped_example_recording_replays(tmp_path: Path) -> None:
    root = HERE.parent.parent
    out = run_replay(root / "examples" / "recordings" / "order-status.jsonl", tmp_path)
    assert sum(c.LF_PROMPT_VERSION in attrs_of(s) for s in spans_by_id(out.read_text().splitlines()).values()) == 4


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json\n", "line 1, column 1: not JSON: Expecting value"),
        ('{"resourceSpans": []}\n\n{"resourceSpans": [1,]}\n', "line 3, column 22: not JSON: Expecting value"),
        ('{"resourceSpans": []}\n{"foo": 1}\n',
         "line 2: expected a JSON object with resourceSpans, resourceLogs or resourceMetrics"),
        ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"zz","spanId":"0102030405060708"}]}]}]}\n',
         "line 1: traceId is not hex"),
        ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"0102","spanId":"0102030405060708"}]}]}]}\n',
         "line 1: traceId must be 16 bytes, got 2"),
        ('{"resourceSpans":[{"scopeSpans":[{"spans":[{"name": 5, "kind": "x"}]}]}]}\n', "line 1: not OTLP/JSON: resourceSpans.scopeSpans.spans.name"),
    ],
)
def test_bad_input_exits_non_zero_with_file_and_line(
    content: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "bad.jsonl"
    src.write_text(content)
    assert main(["replay", str(src), "--output", str(tmp_path / "o.jsonl")]) == 3
    err = capsys.readouterr().err
    assert str(src) in err and message in err


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.jsonl")]) == 3
    assert "cannot read" in capsys.readouterr().err
