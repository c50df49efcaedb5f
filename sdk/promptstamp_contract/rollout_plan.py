"""A guarded rollout's plan as the apps read it: where it lives in Langfuse, what it says, and
which side of the split a subject is on. Standard library only, shared by the SDK (which hands
out versions by it) and the relay's controller (which writes it), so both read one definition.

Where the plan lives: a Langfuse **text prompt** of its own, named
``promptstamp-rollout/<label>/<prompt name>`` (a folder in Langfuse's UI). Every change of the
plan is a new version of that prompt, so its history is the prompt's version list, readable in
Langfuse; the plan in force is the version carrying the label :data:`PLAN_LABEL`. The apps read
it with the Langfuse client they already have, cached like any prompt; no plan prompt (404) means
no rollout.

What the apps use of it (the rest of ``config`` is the controller's, see ``docs/rollouts.md``):

- ``format``: :data:`PLAN_FORMAT`;
- ``prompt``, ``label``: what is rolled out (must match the prompt name and label asked for);
- ``from_version``, ``to_version``: the label's version when the rollout started, and the new one;
- ``state``: :data:`STATE_RUNNING` hands out the new version to the share, :data:`STATE_SUCCEEDED`
  to everyone still handed ``from_version`` by a cached label, the others to no one;
- ``share_percent``: the share of subjects (0–100) on the new version now;
- ``salt``: chosen when the rollout starts, so each rollout splits subjects afresh.

A subject (the id passed as ``subject=``, else the trace id) is on the new side when its point in
[0, 1) (the same hash as ``label_for``) times 100 is below the share: it stays on one side for the
whole rollout and only moves from old to new as the share grows.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "PLAN_FORMAT",
    "PLAN_LABEL",
    "PLAN_PREFIX",
    "STATES",
    "STATE_ABORTED",
    "STATE_BREACHED",
    "STATE_RUNNING",
    "STATE_SUCCEEDED",
    "RolloutPlan",
    "is_plan_name",
    "parse_plan",
    "plan_prompt_name",
    "subject_point",
]

PLAN_FORMAT = "promptstamp.rollout/1"
PLAN_PREFIX = "promptstamp-rollout/"
#: The label on the plan version in force (Langfuse labels: lowercase, digits, ``_-.``).
PLAN_LABEL = "active"

STATE_RUNNING = "running"  # the share in force
STATE_BREACHED = "breached"  # a guard was breached: share 0, the label left where it was
STATE_ABORTED = "aborted"  # stopped by a person: share 0, the label left where it was
STATE_SUCCEEDED = "succeeded"  # the label was moved to to_version; the plan is closed
STATES = (STATE_RUNNING, STATE_BREACHED, STATE_ABORTED, STATE_SUCCEEDED)

_SCALE = float(2**64)


def plan_prompt_name(name: str, label: str) -> str:
    """The Langfuse prompt that holds the rollout plan of ``name`` under ``label``."""
    return f"{PLAN_PREFIX}{label}/{name}"


def is_plan_name(name: str) -> bool:
    return name.startswith(PLAN_PREFIX)


def subject_point(subject: str, salt: str) -> float:
    """A uniform point in [0, 1) for ``subject`` under ``salt``: the same on every machine, Python
    version and language (the TypeScript SDK computes the same bytes)."""
    salt_bytes = salt.encode("utf-8")
    # Length-prefix the salt so ("ab", "c") and ("a", "bc") never hash alike.
    material = str(len(salt_bytes)).encode("ascii") + b":" + salt_bytes + subject.encode("utf-8")
    digest = hashlib.blake2b(material, digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True, slots=True)
class RolloutPlan:
    """The part of a plan the apps act on."""

    prompt: str
    label: str
    from_version: int
    to_version: int
    state: str
    share_percent: float
    salt: str
    plan_version: int  # the plan prompt's version this was read from

    @property
    def running(self) -> bool:
        return self.state == STATE_RUNNING

    def new_side(self, subject: str) -> bool:
        """Whether ``subject`` gets ``to_version`` now: by the share while running; everyone once
        succeeded (an app whose cached label still says ``from_version`` must not send subjects
        back to it); no one after a breach or an abort."""
        if self.state == STATE_SUCCEEDED:
            return True
        if not self.running or self.share_percent <= 0:
            return False
        if self.share_percent >= 100:
            return True
        return subject_point(subject, self.salt) * 100.0 < self.share_percent

    def applies_to(self, current_version: int | None) -> bool:
        """Whether the plan acts on a hand-out of the label's ``current_version``: only while the
        label still points where the rollout started (a label moved by hand ends the plan's say),
        and only while running or just succeeded (the label was moved to ``to_version``, which an
        app's cached copy of the label may not show yet)."""
        return self.state in (STATE_RUNNING, STATE_SUCCEEDED) and current_version == self.from_version


def _positive_int(config: Mapping[str, Any], key: str, errors: list[str]) -> int:
    value = config.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        errors.append(f"{key} must be a positive integer, got {value!r}")
        return 0
    return value


def parse_plan(config: Any, *, name: str, label: str, plan_version: int) -> tuple[RolloutPlan | None, str]:
    """The plan in a plan prompt's ``config``, checked; ``(None, why)`` when it is not usable."""
    if not isinstance(config, Mapping):
        return None, f"config is {type(config).__name__}, not an object"
    if config.get("format") != PLAN_FORMAT:
        return None, f"format is {config.get('format')!r}, not {PLAN_FORMAT!r}"
    errors: list[str] = []
    if config.get("prompt") != name:
        errors.append(f"prompt is {config.get('prompt')!r}, not {name!r}")
    if config.get("label") != label:
        errors.append(f"label is {config.get('label')!r}, not {label!r}")
    from_version = _positive_int(config, "from_version", errors)
    to_version = _positive_int(config, "to_version", errors)
    state = config.get("state")
    if state not in STATES:
        errors.append(f"state is {state!r}, not one of {', '.join(STATES)}")
    share = config.get("share_percent")
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not math.isfinite(share) \
            or not 0 <= share <= 100:
        errors.append(f"share_percent must be a number from 0 to 100, got {share!r}")
        share = 0
    salt = config.get("salt")
    if not isinstance(salt, str) or not salt:
        errors.append(f"salt must be a non-empty string, got {salt!r}")
    if errors:
        return None, "; ".join(errors)
    assert isinstance(salt, str) and isinstance(state, str)
    return RolloutPlan(name, label, from_version, to_version, state, float(share), salt, plan_version), ""
