"""``label_for``: deterministic, sticky, weighted, for any string id."""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import pytest

from promptstamp import label_for

N = 10_000


def _ids(n: int = N) -> list[str]:
    # Ids that do not end in hex digits (the tutorial's int(id[-2:], 16) would crash on them),
    # plus a few shapes real apps use.
    shapes = ("usr_{i}_zz", "conv-{i}-xyz", "{i}@example.org", "Ünïcode-{i}-ß", "user {i}")
    return [shapes[i % len(shapes)].format(i=i) for i in range(n)]


@pytest.mark.parametrize(
    "weights",
    [
        {"prod-a": 0.5, "prod-b": 0.5},
        {"prod-a": 0.2, "prod-b": 0.3, "prod-c": 0.5},
        {"control": 9, "candidate": 1},  # weights need not sum to 1
    ],
)
def test_distribution_follows_the_weights(weights: dict[str, float]) -> None:
    counts = Counter(label_for(subject, weights, salt="exp-7") for subject in _ids())
    total = sum(weights.values())
    assert set(counts) == set(weights)
    for label, weight in weights.items():
        assert abs(counts[label] / N - weight / total) <= 0.03, (label, counts)


def test_sticky_per_subject_and_salt() -> None:
    weights = {"prod-a": 0.5, "prod-b": 0.5}
    first = [label_for(subject, weights, salt="s1") for subject in _ids(2000)]
    again = [label_for(subject, dict(reversed(weights.items())), salt="s1") for subject in _ids(2000)]
    assert first == again  # the mapping's order does not matter
    other_salt = [label_for(subject, weights, salt="s2") for subject in _ids(2000)]
    changed = sum(a != b for a, b in zip(first, other_salt, strict=True))
    assert 800 < changed < 1200  # a new salt reshuffles about half of a 50/50 split


def _reference(subject: str, salt: str) -> float:
    """The documented mapping, written out independently: blake2b-64 of len(salt):salt+id."""
    salt_bytes = salt.encode()
    digest = hashlib.blake2b(
        f"{len(salt_bytes)}:".encode() + salt_bytes + subject.encode(), digest_size=8
    ).digest()
    return int.from_bytes(digest, "big") / 2**64


def test_stable_across_processes_and_versions() -> None:
    """Pinned outputs: a change of hash or layout would silently move users between arms."""
    weights = {"prod-a": 0.5, "prod-b": 0.5}
    subjects = ("a", "b", "c", "d", "usr_pseudo_prompt_demo", "usr_prompt_ab_00")
    pinned = {subject: label_for(subject, weights, salt="exp") for subject in subjects}
    assert pinned == {
        "a": "prod-a",
        "b": "prod-a",
        "c": "prod-b",
        "d": "prod-a",
        "usr_pseudo_prompt_demo": "prod-b",
        "usr_prompt_ab_00": "prod-a",
    }
    for subject in _ids(500):
        expected = "prod-a" if _reference(subject, "exp") < 0.5 else "prod-b"
        assert label_for(subject, weights, salt="exp") == expected


def test_growing_an_arm_moves_only_the_needed_subjects() -> None:
    before = [label_for(s, {"prod-a": 0.9, "prod-b": 0.1}) for s in _ids()]
    after = [label_for(s, {"prod-a": 0.8, "prod-b": 0.2}) for s in _ids()]
    moved = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all(pair == ("prod-a", "prod-b") for pair in moved)
    assert abs(len(moved) / N - 0.1) <= 0.03


def test_zero_weight_is_never_chosen() -> None:
    weights = {"prod-a": 1.0, "paused": 0.0, "prod-b": 1.0}
    assert "paused" not in {label_for(s, weights) for s in _ids(2000)}


def test_single_label() -> None:
    assert {label_for(s, {"production": 1}) for s in _ids(100)} == {"production"}


@pytest.mark.parametrize(
    "weights",
    [
        {},
        {"prod-a": -0.1, "prod-b": 1.0},
        {"prod-a": math.nan},
        {"prod-a": math.inf, "prod-b": 1.0},
        {"prod-a": 0.0, "prod-b": 0.0},
        {"prod-a": "0.5"},
        {"prod-a": True},
        {"prödüction": 1.0},
        {"": 1.0},
    ],
)
def test_bad_weights_are_a_clear_value_error(weights: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        label_for("usr_1", weights)


def test_subject_must_be_a_string() -> None:
    with pytest.raises(TypeError):
        label_for(42, {"prod-a": 1})  # type: ignore[arg-type]
