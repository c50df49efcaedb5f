"""A guarded rollout's split against the shared vectors (``tests/vectors/rollout_side.json``),
which the TypeScript SDK checks too: every language puts a subject on the same side for the same
salt and share. The file is written by ``tests/vectors/make_rollout_side.py``; this test also
checks that it still matches what that script would write."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from promptstamp_contract.rollout_plan import STATE_RUNNING, RolloutPlan, subject_point

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "rollout_side.json"
DOCUMENT: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = DOCUMENT["cases"]


def _plan(share: float, salt: str) -> RolloutPlan:
    return RolloutPlan("p", "production", 1, 2, STATE_RUNNING, float(share), salt, 1)


def test_the_file_covers_what_it_should() -> None:
    assert len(CASES) >= 300
    assert {c["share_percent"] for c in CASES} >= {0, 100, 25, 50}
    assert any(c["new_side"] for c in CASES) and any(not c["new_side"] for c in CASES)
    assert any(not c["subject"].isascii() for c in CASES)
    assert any(len(c["subject"]) == 32 and all(ch in "0123456789abcdef" for ch in c["subject"]) for c in CASES)
    assert len({c["salt"] for c in CASES}) >= 5
    # on the boundary (share == point * 100: not new) and just above it (new)
    on = [c for c in CASES if c["share_percent"] == c["point"] * 100.0 and 0 < c["share_percent"] < 100]
    assert on and not any(c["new_side"] for c in on)
    above = [c for c in CASES if c["point"] * 100.0 < c["share_percent"] < c["point"] * 100.0 + 1e-9]
    assert above and all(c["new_side"] for c in above)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['subject'][:12]!r}/{c['share_percent']}")
def test_the_side_matches_the_vector(case: dict[str, Any]) -> None:
    digest = hashlib.blake2b(
        str(len(case["salt"].encode())).encode() + b":" + case["salt"].encode() + case["subject"].encode(),
        digest_size=8,
    ).digest()
    assert digest.hex() == case["digest"]
    assert subject_point(case["subject"], case["salt"]) == case["point"]
    assert _plan(case["share_percent"], case["salt"]).new_side(case["subject"]) is case["new_side"]


def test_the_file_is_what_the_generator_writes() -> None:
    from tests.vectors.make_rollout_side import cases

    assert cases() == CASES
