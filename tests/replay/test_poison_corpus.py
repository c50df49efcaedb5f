"""The poison corpus (tests/replay/poison, written by its make_corpus.py) replayed against golden
outputs, each output line (an export request) then taken as Langfuse's ingestion takes it: no
span is lost but a poison span that had to travel alone, and the app's generation stays linked."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import promptstamp_contract as c
from promptstamp.testing import replay
from promptstamp.testing._langfuse import RejectedObservation, _map_request
from promptstamp_relay.wire.otlpjson import read_documents
from tests.otlp_builders import attrs_of, line_spans
from tests.replay.poison.make_corpus import CASES

HERE = Path(__file__).parent / "poison"
UPDATE = os.environ.get("PROMPTSTAMP_UPDATE_GOLDEN") == "1"


@pytest.mark.parametrize("case", list(CASES))
def test_corpus_matches_golden_and_only_a_lone_poison_span_is_lost(case: str) -> None:
    result = replay(HERE / f"{case}.jsonl")
    out = "\n".join(result.lines) + "\n"
    golden = HERE / "golden" / f"{case}.jsonl"
    if UPDATE:
        golden.write_text(out)
    assert out == golden.read_text(), f"replay output differs from {golden}"

    attrs, langfuse_type = CASES[case]
    kept: dict[str, str] = {}
    lost: list[str] = []
    for doc in read_documents(result.lines):
        items = _map_request(doc.request)
        for item in items:
            if isinstance(item, RejectedObservation):
                assert len(items) == 1, "a poison span lost its request's other spans"
                lost.append(item.observation.name)
            else:
                kept[item.name] = item.type
    if langfuse_type is None:
        assert lost == ["poisoned"] and len(result.lines) == 2  # the request, and the span alone
    else:
        assert lost == [] and kept["poisoned"] == langfuse_type and len(result.lines) == 1
    [poisoned] = [sp for sp in line_spans(result.lines) if sp.name == "poisoned"]
    after = attrs_of(poisoned)
    assert {k: after[k] for k in attrs} == attrs  # the relay only adds
    if case != "passthrough":
        generations = {g.span_name: g for g in result.generations}
        assert (generations["chat gpt-4o"].prompt_name, generations["chat gpt-4o"].version) == (
            "order-status-answer", 3)
    if case == "poison_generation_with_a_prompt_key":  # a generation itself: stamped, linked, typed once
        assert generations["poisoned"].version == 3
        assert [kv.key for kv in poisoned.attributes].count(c.LF_OBSERVATION_TYPE) == 1
