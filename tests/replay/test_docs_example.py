"""The worked example of docs/testing.md, as it appears there (a test checks they match)."""

from pathlib import Path

from promptstamp.testing import assert_all_linked

RECORDING = Path(__file__).parent / "recordings" / "demo.jsonl"


def test_every_generation_is_linked_at_the_trace_tier(promptstamp_replay):
    result = promptstamp_replay(RECORDING)
    assert_all_linked(result, tier="trace")
    assert len(result.generations) == 5
    assert {(g.label, g.version, g.source) for g in result.generations} == {
        ("production", 1, "langfuse"),
        ("prod-a", 1, "langfuse"),
        ("prod-b", 2, "langfuse"),
        ("production", 1, "cache"),  # served from cache while Langfuse was down
    }


def test_the_docs_show_this_file() -> None:
    docs = (Path(__file__).parents[2] / "docs" / "testing.md").read_text(encoding="utf-8")
    example = Path(__file__).read_text(encoding="utf-8").split("\n\n\ndef test_the_docs_show_this_file")[0]
    body = example.split('"""\n\n', 1)[1]  # without the module docstring
    assert body.strip() in docs, "docs/testing.md's worked example differs from tests/replay/test_docs_example.py"
