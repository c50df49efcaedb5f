"""The conventions corpus (tests/replay/conventions, written by its make_corpus.py) replayed
against golden outputs, and what ``assert_all_linked`` says of each case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from promptstamp.testing import assert_all_linked, replay
from tests.replay.conventions.make_corpus import CASES, CONFIG

HERE = Path(__file__).parent / "conventions"
UPDATE = os.environ.get("PROMPTSTAMP_UPDATE_GOLDEN") == "1"
LINKED = {"gen_ai", "traceloop", "langfuse_baggage", "openinference_prompt_id", "openinference_template",
          "record_decides"}
WHY = {"version_hash": "convention_version_not_int", "version_v1": "convention_version_not_int",
       "not_mapped": "convention_name_not_mapped"}


@pytest.mark.parametrize("case", [*CASES, "record_decides"])
def test_corpus_matches_golden(case: str) -> None:
    result = replay(HERE / f"{case}.jsonl", config=CONFIG)
    out = "\n".join(result.lines) + "\n"
    golden = HERE / "golden" / f"{case}.jsonl"
    if UPDATE:
        golden.write_text(out)
    assert out == golden.read_text(), f"replay output differs from {golden}"
    if case in LINKED:
        assert_all_linked(result, tier="convention")
        [g] = result.generations
        assert g.version == (5 if case == "record_decides" else 3)
    else:
        with pytest.raises(AssertionError, match=r"another convention|does not map"):
            assert_all_linked(result)
        assert [g.reason for g in result.generations] == [WHY[case]]
        assert_all_linked(result, allow=WHY[case], min_count=1)
