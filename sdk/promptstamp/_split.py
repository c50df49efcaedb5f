"""``label_for``: a deterministic, sticky, weighted A/B split over prompt labels.

The subject id (a pseudonymous user id, a conversation id — any string) is hashed with the
salt into a uniform number in [0, 1); that number picks a label by cumulative weight. The same
subject, salt and weights always give the same label, on every machine and Python version.

Labels are laid out in sorted order, not in the mapping's order, so two services that build
the weights differently (a literal, a JSON config) still agree. Changing the weights only
moves subjects whose number falls across a moved boundary; changing the salt reshuffles
everyone, which is how you start a fresh experiment.

The subject id is only hashed here: it is never put into baggage, spans or logs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

from promptstamp_contract.rollout_plan import subject_point

from ._validate import validate_label


def _unit_interval(subject_id: str, salt: str) -> float:
    return subject_point(subject_id, salt)  # one hash for the A/B split and rollouts


def _left_to_right_sum(values: Iterable[float]) -> float:
    """Plain float addition in order. Not ``sum()``: from Python 3.12 it compensates rounding, so
    a subject within rounding of a boundary would land differently on 3.11 and 3.12 (and in the
    TypeScript SDK, which adds left to right)."""
    total = 0.0
    for v in values:
        total += v
    return total


def _checked_weights(weights: Mapping[str, float]) -> list[tuple[str, float]]:
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping of label to weight, not {type(weights)!r}")
    if not weights:
        raise ValueError("weights must name at least one label")
    checked: list[tuple[str, float]] = []
    for label in sorted(weights):
        validate_label(label)
        weight = weights[label]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise ValueError(f"weight for label {label!r} must be a number, got {weight!r}")
        weight = float(weight)
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight for label {label!r} must be finite and >= 0, got {weight!r}")
        checked.append((label, weight))
    if sum(weight for _, weight in checked) <= 0:
        raise ValueError("weights must add up to more than 0")
    return checked


def label_for(subject_id: str, weights: Mapping[str, float], salt: str = "") -> str:
    """Pick the prompt label for ``subject_id``: deterministic, sticky, weighted.

    ``weights`` maps label to a non-negative weight (they need not sum to 1; ``{"prod-a": 1,
    "prod-b": 1}`` is a 50/50 split); a label with weight 0 is never picked. ``salt`` names the
    experiment: the same subject may land differently in two experiments with different salts.

    Raises ``ValueError`` for an empty mapping, a negative, NaN or infinite weight, weights
    summing to 0, or a label that could not go into baggage (see ``prompt()``).
    """
    if not isinstance(subject_id, str):
        raise TypeError(f"subject_id must be a str, not {type(subject_id)!r}")
    if not isinstance(salt, str):
        raise TypeError(f"salt must be a str, not {type(salt)!r}")
    checked = _checked_weights(weights)
    total = _left_to_right_sum(weight for _, weight in checked)
    point = _unit_interval(subject_id, salt) * total
    cumulative = 0.0
    chosen = ""
    for label, weight in checked:
        if weight <= 0:
            continue
        chosen = label
        cumulative += weight
        if point < cumulative:
            return label
    # Only reachable through float rounding at the very top of the range.
    return chosen
