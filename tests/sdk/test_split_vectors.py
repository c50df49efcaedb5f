"""``label_for`` against the shared vectors (``tests/vectors/label_for.json``), which the
TypeScript SDK checks too (``sdk/js/test/split.test.ts``): every language picks the same label
for the same subject, weights and salt. The file is written by ``tests/vectors/make_label_for.py``;
this test also checks that it still matches what that script would write."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from promptstamp import label_for

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "label_for.json"
SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
DOCUMENT: dict[str, Any] = json.loads(VECTORS.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = DOCUMENT["cases"]


def _weights(raw: dict[str, Any]) -> dict[str, float]:
    return {label: SPECIAL[w] if isinstance(w, str) else w for label, w in raw.items()}


def _material(subject: str, salt: str) -> bytes:
    salt_bytes = salt.encode("utf-8")
    return str(len(salt_bytes)).encode("ascii") + b":" + salt_bytes + subject.encode("utf-8")


def test_the_file_covers_what_it_should() -> None:
    valid = [c for c in CASES if "label" in c]
    assert len(valid) >= 300
    assert any(not c["subject"].isascii() for c in valid)
    assert any(0 in c["weights"].values() for c in valid)
    assert any(len(set(c["weights"].values())) > 1 for c in valid)  # uneven weights
    assert len({c["salt"] for c in valid}) >= 5
    assert any("error" in c for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['subject'][:12]!r}/{c['salt'][:8]!r}")
def test_label_for_matches_the_vector(case: dict[str, Any]) -> None:
    weights = _weights(case["weights"])
    if "error" in case:
        with pytest.raises(ValueError):
            label_for(case["subject"], weights, case["salt"])
        return
    digest = hashlib.blake2b(_material(case["subject"], case["salt"]), digest_size=8).digest()
    assert digest.hex() == case["digest"]
    assert int.from_bytes(digest, "big") / float(2**64) == case["point"]
    assert label_for(case["subject"], weights, case["salt"]) == case["label"]
    assert label_for(case["subject"], dict(reversed(list(weights.items()))), case["salt"]) == case["label"]


def test_blake2b_vectors_are_hashlib() -> None:
    for v in DOCUMENT["blake2b"]:
        assert hashlib.blake2b(bytes.fromhex(v["data"]), digest_size=v["digest_size"]).hexdigest() == v["digest"]


def test_the_file_is_what_the_generator_writes() -> None:
    from tests.vectors.make_label_for import blake2b_vectors, cases

    assert cases() == CASES
    assert blake2b_vectors() == DOCUMENT["blake2b"]


def test_weights_are_added_left_to_right_on_every_python() -> None:
    """Python 3.12's ``sum()`` compensates rounding (0.1 * 10 → 1.0, 3.11 gives 0.999…9): the
    split adds in order, as 3.10/3.11 and the TypeScript SDK do, so no Python version moves a
    subject that sits within rounding of a boundary."""
    from promptstamp._split import _left_to_right_sum

    assert _left_to_right_sum([0.1] * 10) == 0.9999999999999999
