"""Write ``label_for.json``: shared vectors for ``label_for`` in every language.

Run once from the repository root (``.venv/bin/python tests/vectors/make_label_for.py``); the
output is committed and checked by ``tests/sdk/test_split_vectors.py`` (Python) and
``sdk/js/test/split.test.ts`` (TypeScript). Deterministic: no randomness, no clock.

Each case has the inputs, the expected label (or the error class for invalid weights), the
subject's point in [0, 1) and the BLAKE2b-64 digest behind it, so a port can check the hash,
the float conversion and the weighted pick one by one. A ``blake2b`` section has digests of
other lengths and sizes (block boundaries) for the hash alone. Weights that JSON cannot hold
(NaN, infinities) are written as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``.

Cases whose total weight depends on how a sum of floats is computed are left out: Python 3.12+
``sum()`` adds floats with compensation, 3.10 and 3.11 left to right, so ``label_for`` itself can
pick differently on the two for such weights (see ``docs/other-languages.md``).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from promptstamp import label_for

OUT = Path(__file__).with_name("label_for.json")

SUBJECTS = [
    "user-1", "user-2", "user-42", "", "0", "a", "usr_12_zz", "conv-9-xyz", "7@example.org",
    "Zoë", "Ünïcode-3-ß", "用户-42", "ユーザー", "🙂-7", "👩‍💻 dev", "e\u0301", "tab\there",
    "nul\x00inside", "line\nbreak", "Ω≈ç√", "x" * 127, "y" * 128, "z" * 300, "é" * 70,
    "🙂" * 40, " spaced ", "UPPER-lower-123", "550e8400-e29b-41d4-a716-446655440000",
]
SALTS = ["", "exp-14", "a", "exp-7", "ß", "实验", "s" * 130, "with space", "🙂"]
WEIGHTS: list[dict[str, Any]] = [
    {"prod-a": 0.5, "prod-b": 0.5},
    {"prod-a": 1, "prod-b": 1},
    {"prod-b": 0.5, "prod-a": 0.5},  # insertion order does not matter
    {"control": 90, "treatment": 10},
    {"a": 0, "b": 1, "c": 0},
    {"a": 0.0, "b": 0.25, "c": 0.75},
    {"x": 0.1, "y": 0.2, "z": 0.7},
    {"prod-a": 0.2, "prod-b": 0.3, "prod-c": 0.5},
    {"only": 1},
    {"only": 3.5, "never": 0},
    {"tiny": 1e-9, "huge": 1e9},
    {"l1": 1, "l2": 2, "l3": 3, "l4": 4, "l5": 5, "l6": 6, "l7": 7},
    {"Z": 1, "a": 1, "_": 1, "~": 1, "0": 1},  # ASCII sort order
    {"prod-a.v2": 0.333, "prod-b.v2": 0.333, "prod-c.v2": 0.334},
    {"canary": 0.01, "production": 0.99},
]
INVALID: list[dict[str, Any]] = [
    {},
    {"a": -1, "b": 2},
    {"a": 0, "b": 0},
    {"a": "NaN", "b": 1},
    {"a": "Infinity", "b": 1},
    {"a": "-Infinity", "b": 1},
    {"prod-ä": 1},
    {" lead": 1},
    {"trail ": 1},
    {"": 1},
    {"x" * 101: 1},
]
SPECIAL = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _numbers(weights: dict[str, Any]) -> dict[str, float]:
    return {k: SPECIAL[v] if isinstance(v, str) else v for k, v in weights.items()}


def _material(subject: str, salt: str) -> bytes:
    salt_bytes = salt.encode("utf-8")
    return str(len(salt_bytes)).encode("ascii") + b":" + salt_bytes + subject.encode("utf-8")


def _compensated_sum(values: list[float]) -> float:
    """Python 3.12's float sum() (Neumaier), to drop cases where it differs from 3.11's."""
    total, compensation = 0.0, 0.0
    for x in values:
        t = total + x
        compensation += (total - t) + x if abs(total) >= abs(x) else (x - t) + total
        total = t
    return total + compensation if compensation and math.isfinite(compensation) else total


def _plain_sum(values: list[float]) -> float:
    total = 0.0
    for x in values:
        total += x
    return total


def cases() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    i = 0
    for weights in WEIGHTS:
        values = [float(v) for _, v in sorted(weights.items())]
        if _plain_sum(values) != _compensated_sum(values):
            continue  # the pick may depend on the Python version: not a shared vector
        for subject in SUBJECTS:
            salt = SALTS[i % len(SALTS)]
            i += 1
            digest = hashlib.blake2b(_material(subject, salt), digest_size=8).digest()
            out.append({
                "subject": subject,
                "salt": salt,
                "weights": weights,
                "digest": digest.hex(),
                "point": int.from_bytes(digest, "big") / float(2**64),
                "label": label_for(subject, weights, salt),
            })
    for weights in INVALID:
        try:
            label_for("user-1", _numbers(weights), "exp")
        except ValueError as error:
            out.append({"subject": "user-1", "salt": "exp", "weights": weights, "error": type(error).__name__})
        else:  # pragma: no cover - the generator's own check
            raise AssertionError(f"{weights!r} should be refused")
    return out


def blake2b_vectors() -> list[dict[str, Any]]:
    out = []
    for length in (0, 1, 3, 64, 111, 127, 128, 129, 255, 256, 257, 1000):
        data = bytes((i * 7 + length) % 256 for i in range(length))
        for size in (1, 8, 20, 32, 48, 64):
            out.append({"data": data.hex(), "digest_size": size,
                        "digest": hashlib.blake2b(data, digest_size=size).hexdigest()})
    return out


def main() -> None:
    document = {
        "about": "label_for vectors generated by tests/vectors/make_label_for.py from promptstamp.label_for",
        "cases": cases(),
        "blake2b": blake2b_vectors(),
    }
    OUT.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"{OUT}: {len(document['cases'])} cases, {len(document['blake2b'])} blake2b vectors")


if __name__ == "__main__":
    main()
