"""The guarded rollout's controller: moves a new prompt version through the plan's steps, judges
each step on the relay's per-version data, and rolls back by itself (docs/rollouts.md).

Where things are:

- the **plan** is a Langfuse text prompt of its own (``promptstamp_contract.rollout_plan``): every
  change is a new version of it, the one in force carries the label ``active``. The apps read it
  through their Langfuse client; this module writes it through :class:`PlanBackend`.
- the **evidence** is the relay's label timeline with its sketches (``?sketches=1``), read through
  :class:`EvidenceSource`: cumulative per-version aggregates, so a step's window is the
  difference between the snapshot taken when the step began (kept in the plan) and now.
- the **judgement** is ``_guards.judge``: one-sided tests, new version against old, on that window.

Two controllers on one plan cannot both act: every write names the plan version it follows
(``previous``), and of the versions that follow one, only the first Langfuse created counts
(Langfuse numbers versions in creation order). The loser stops with :data:`EXIT_CONFLICT`;
a controller started on a running plan writes a ``resumed`` event first, so an older one still
running loses at its next write. A write is one POST and then a label move; a controller that
dies between the two leaves a version that the next one finds and labels.

Threads: one, the caller's. Time and sleep are passed in (tests run steps in seconds).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from promptstamp_contract.rollout_plan import (
    PLAN_FORMAT,
    PLAN_LABEL,
    STATE_ABORTED,
    STATE_BREACHED,
    STATE_RUNNING,
    STATE_SUCCEEDED,
    plan_prompt_name,
)

from ._guards import DEFAULT_GUARDS, Guard, GuardResult, SideWindow, judge, parse_guard, per_test_alpha
from ._model import duration_bucket_value_ms, rfc3339, token_bucket_value, window

__all__ = [
    "DEFAULT_STEPS",
    "EXIT_ABORTED",
    "EXIT_BREACHED",
    "EXIT_CONFLICT",
    "EXIT_INTERRUPTED",
    "Controller",
    "EvidenceSource",
    "PlanBackend",
    "PlanConflict",
    "PlanStore",
    "RolloutSpec",
    "StoredPlan",
]

DEFAULT_STEPS = (5.0, 25.0, 50.0, 100.0)
DEFAULT_STEP_MINUTES = 10.0
DEFAULT_MIN_GENERATIONS = 200
DEFAULT_CONFIDENCE = 0.95

EXIT_BREACHED = 17
EXIT_ABORTED = 18
EXIT_CONFLICT = 19
EXIT_INTERRUPTED = 20


class PlanBackend(Protocol):
    """Langfuse's prompts API, as the controller uses it. Errors are the caller's exceptions."""

    def get_prompt(self, name: str, *, label: str | None = None, version: int | None = None
                   ) -> Mapping[str, Any] | None:
        """``GET /api/public/v2/prompts/{name}?label=|version=``; None on 404."""

    def create_prompt(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """``POST /api/public/v2/prompts``: the created version."""

    def move_label(self, name: str, version: int, label: str) -> None:
        """``PATCH /api/public/v2/prompts/{name}/versions/{version}`` with ``newLabels``."""


class EvidenceSource(Protocol):
    def versions(self, name: str, label: str) -> Mapping[int, Mapping[str, Any]]:
        """Cumulative per-version entries under ``label`` with ``sketches`` (empty: none yet)."""


class PlanConflict(Exception):
    """Another controller wrote the plan first."""


@dataclass(frozen=True, slots=True)
class StoredPlan:
    version: int  # the plan prompt's version
    config: dict[str, Any]

    @property
    def state(self) -> str:
        return str(self.config.get("state"))


class PlanStore:
    """The plan prompt of one prompt and label, written with first-writer-wins."""

    def __init__(self, backend: PlanBackend, name: str, label: str) -> None:
        self.backend = backend
        self.name, self.label = name, label
        self.plan_name = plan_prompt_name(name, label)

    def _config(self, version: int) -> dict[str, Any] | None:
        got = self.backend.get_prompt(self.plan_name, version=version)
        config = None if got is None else got.get("config")
        return dict(config) if isinstance(config, Mapping) else None

    def _latest_version(self) -> int:
        got = self.backend.get_prompt(self.plan_name, label="latest")
        return 0 if got is None else int(got["version"])

    def _successor(self, version: int, upto: int) -> int | None:
        """The first version after ``version`` (up to ``upto``) that follows it, if any."""
        for v in range(version + 1, upto + 1):
            config = self._config(v)
            if config is not None and config.get("previous") == version:
                return v
        return None

    def load(self) -> StoredPlan | None:
        """The plan in force: the ``active`` version, moved on to any version that followed it but
        was never labelled (its writer stopped between the POST and the label move)."""
        got = self.backend.get_prompt(self.plan_name, label=PLAN_LABEL)
        if got is None:
            latest = self._latest_version()
            if latest == 0:
                return None
            version = self._successor(0, latest)
            if version is None:
                return None
            self.backend.move_label(self.plan_name, version, PLAN_LABEL)
            got = self.backend.get_prompt(self.plan_name, version=version)
            assert got is not None
        version = int(got["version"])
        latest = self._latest_version()
        while (following := self._successor(version, latest)) is not None:
            self.backend.move_label(self.plan_name, following, PLAN_LABEL)
            version = following
        config = self._config(version)
        return None if config is None else StoredPlan(version, config)

    def write(self, after: int, config: dict[str, Any], summary: str, commit: str) -> StoredPlan:
        """A new plan version following version ``after`` (0: none); :class:`PlanConflict` when
        another version followed ``after`` first."""
        config = {**config, "previous": after}
        created = self.backend.create_prompt({"name": self.plan_name, "type": "text", "prompt": summary,
                                              "config": config, "labels": [], "commitMessage": commit[:500]})
        version = int(created["version"])
        first = self._successor(after, version - 1)
        if first is not None:
            raise PlanConflict(f"plan version {first} already follows version {after}: another controller "
                               f"changed the plan (this one's write is version {version}, which counts for "
                               "nothing)")
        self.backend.move_label(self.plan_name, version, PLAN_LABEL)
        return StoredPlan(version, config)

    def history(self) -> list[StoredPlan]:
        """The plan's versions that counted, oldest first."""
        latest = self._latest_version()
        configs = {v: self._config(v) for v in range(1, latest + 1)}
        out: list[StoredPlan] = []
        at = 0
        for v in range(1, latest + 1):
            c = configs[v]
            if c is not None and c.get("previous") == at:
                out.append(StoredPlan(v, c))
                at = v
        return out


@dataclass(frozen=True)
class RolloutSpec:
    steps: tuple[float, ...] = DEFAULT_STEPS
    step_seconds: float = DEFAULT_STEP_MINUTES * 60
    min_generations: int = DEFAULT_MIN_GENERATIONS
    guards: tuple[Guard, ...] = DEFAULT_GUARDS
    confidence: float = DEFAULT_CONFIDENCE

    def errors(self) -> list[str]:
        out = []
        if not self.steps:
            out.append("--steps needs at least one share")
        if any(not 0 < s <= 100 for s in self.steps):
            out.append(f"--steps: each share must be in (0, 100], got {list(self.steps)}")
        if list(self.steps) != sorted(set(self.steps)):
            out.append(f"--steps must grow, got {list(self.steps)}")
        if self.steps and self.steps[-1] != 100:
            out.append(f"--steps must end at 100, got {list(self.steps)}")
        if not self.step_seconds > 0:
            out.append("--step-minutes must be more than 0")
        if self.min_generations < 1:
            out.append("--min-generations must be at least 1")
        if not 0.5 <= self.confidence < 1:
            out.append("--confidence must be in [0.5, 1)")
        return out


def _side(version: int, after: Mapping[str, Any] | None, before: Mapping[str, Any] | None) -> SideWindow:
    diff = window(before, after)
    sk = diff.get("sketches", {})

    def values(buckets: Mapping[str, int], value: Callable[[int], float]) -> dict[float, int]:
        out: dict[float, int] = {}
        for b, n in buckets.items():
            if n > 0:
                v = value(int(b))
                out[v] = out.get(v, 0) + n
        return out

    return SideWindow(version=version, generations=int(diff.get("generations", 0)),
                      errors=int(diff.get("errors", 0)),
                      durations_ms=values(sk.get("duration_ms", {}), duration_bucket_value_ms),
                      output_tokens=values(sk.get("output_tokens", {}), token_bucket_value),
                      input_tokens=values(sk.get("input_tokens", {}), token_bucket_value))


def result_json(r: GuardResult) -> dict[str, Any]:
    return {"guard": r.guard.text, "breached": r.breached, "p_value": r.p_value, "alpha": r.alpha,
            "old": r.old_figure, "new": r.new_figure, "test": r.test, "enough_data": r.enough_data,
            "detail": r.detail}


def describe_result(r: GuardResult, old: int, new: int) -> str:
    metric = r.guard.metric
    unit = " %" if metric == "error_rate" else " ms" if metric.endswith("_ms") else " tokens"

    def fig(x: float | None) -> str:
        return "-" if x is None else f"{x:.4g}{unit}"
    verdict = "BREACHED" if r.breached else ("ok" if r.enough_data else "not enough data")
    return (f"{r.guard.text}: {verdict}: v{old} {fig(r.old_figure)}, v{new} {fig(r.new_figure)}; "
            + (f"{r.test}, p = {r.p_value:.3g} (alpha {r.alpha:.3g})" if r.p_value is not None else r.detail))


class Controller:
    """Runs one rollout of ``name`` under ``label`` to its end (or until stopped)."""

    def __init__(self, plans: PlanStore, evidence: EvidenceSource, *, by: str,
                 out: Callable[[str], None], now: Callable[[], float], sleep: Callable[[float], None],
                 poll_seconds: float = 15.0) -> None:
        self.plans, self.evidence = plans, evidence
        self.name, self.label = plans.name, plans.label
        self.by, self.out, self.now, self.sleep = by, out, now, sleep
        self.poll_seconds = poll_seconds

    # -- writing --------------------------------------------------------------------------------
    def _summary(self, c: Mapping[str, Any]) -> str:
        steps = c.get("steps") or []
        step = int(c.get("step", 0))
        return (f"{self.name} {self.label}: v{c.get('from_version')} -> v{c.get('to_version')}, "
                f"{c.get('state')}, step {step + 1}/{len(steps)}, {c.get('share_percent')} % on "
                f"v{c.get('to_version')}")

    def _write(self, plan: StoredPlan | None, config: dict[str, Any], what: str, **detail: Any) -> StoredPlan:
        event = {"what": what, "at": rfc3339(int(self.now() * 1e9)), "by": self.by, **detail}
        config = {**config, "event": event}
        return self.plans.write(0 if plan is None else plan.version, config, self._summary(config),
                                f"{what} by {self.by}")

    def _snapshot(self, from_version: int, to_version: int) -> dict[str, Any]:
        versions = self.evidence.versions(self.name, self.label)
        return {"old": versions.get(from_version), "new": versions.get(to_version)}

    def start(self, spec: RolloutSpec, from_version: int, to_version: int,
              previous: StoredPlan | None) -> StoredPlan:
        now = self.now()
        config: dict[str, Any] = {
            "format": PLAN_FORMAT, "prompt": self.name, "label": self.label,
            "from_version": from_version, "to_version": to_version,
            "state": STATE_RUNNING, "share_percent": spec.steps[0], "salt": secrets.token_hex(8),
            "steps": list(spec.steps), "step": 0, "step_seconds": spec.step_seconds,
            "min_generations": spec.min_generations, "guards": [g.text for g in spec.guards],
            "confidence": spec.confidence,
            # The budget is spent where tests run: every step but a final 100 % one (a soak with no
            # old side left to compare against).
            "alpha": per_test_alpha(spec.confidence, max(1, sum(1 for x in spec.steps if x < 100)),
                                    max(1, len(spec.guards))),
            "started_by": self.by, "started_at": rfc3339(int(now * 1e9)),
            "step_started_at": now, "baseline": self._snapshot(from_version, to_version),
        }
        plan = self._write(previous, config, "started")
        self.out(f"started: {self._summary(plan.config)} (plan {self.plans.plan_name} v{plan.version})")
        return plan

    def resume(self, plan: StoredPlan) -> StoredPlan:
        plan = self._write(plan, plan.config, "resumed")
        self.out(f"resumed: {self._summary(plan.config)}")
        return plan

    def stop(self, plan: StoredPlan, state: str, what: str, **detail: Any) -> StoredPlan:
        config = {**plan.config, "state": state, "share_percent": 0}
        return self._write(plan, config, what, **detail)

    # -- judging --------------------------------------------------------------------------------
    def windows(self, plan: StoredPlan) -> tuple[SideWindow, SideWindow]:
        c = plan.config
        old_v, new_v = int(c["from_version"]), int(c["to_version"])
        versions = self.evidence.versions(self.name, self.label)
        base = c.get("baseline") or {}
        return (_side(old_v, versions.get(old_v), base.get("old")),
                _side(new_v, versions.get(new_v), base.get("new")))

    def judge(self, plan: StoredPlan, old: SideWindow, new: SideWindow) -> list[GuardResult]:
        c = plan.config
        guards = [parse_guard(g) for g in c.get("guards", [])]
        return judge(guards, old, new, alpha=float(c["alpha"]), min_generations=int(c["min_generations"]))

    def run(self, plan: StoredPlan, *, label_version: Callable[[], int | None],
            move_label: Callable[[int], None]) -> tuple[int, StoredPlan]:
        """Poll, judge and step until the plan ends; (exit code, the last plan version)."""
        while plan.state == STATE_RUNNING:
            c = plan.config
            old_v, new_v = int(c["from_version"]), int(c["to_version"])
            in_force = self.plans.load()
            if in_force is None or in_force.version != plan.version:
                what = "gone" if in_force is None else (
                    f"{(in_force.config.get('event') or {}).get('what', 'changed')} by "
                    f"{(in_force.config.get('event') or {}).get('by', '?')} (plan v{in_force.version}, "
                    f"{in_force.state})")
                self.out(f"stopped: the plan was {what}; this controller no longer acts on it")
                return EXIT_CONFLICT if in_force is not None and in_force.state == STATE_RUNNING \
                    else EXIT_ABORTED, in_force or plan
            now_label = label_version()
            if now_label != old_v:
                plan = self.stop(plan, STATE_ABORTED, "stopped",
                                 reason=f"label {self.label} was moved outside the rollout, to "
                                        f"{'nothing' if now_label is None else f'v{now_label}'}")
                self.out(f"stopped: {plan.config['event']['reason']}; the plan is closed with v{new_v} "
                         "at 0 %")
                return EXIT_ABORTED, plan
            try:
                old, new = self.windows(plan)
            except ValueError as e:
                plan = self._write(plan, {**c, "step_started_at": self.now(),
                                          "baseline": self._snapshot(old_v, new_v)},
                                   "rebaselined", reason=str(e))
                self.out(f"the relay's counts went down ({e}): this step's window starts again now")
                continue
            step, steps = int(c["step"]), list(c["steps"])
            elapsed = self.now() - float(c["step_started_at"])
            need = int(c["min_generations"])
            self.out(f"step {step + 1}/{len(steps)}: {c['share_percent']} % on v{new_v}; "
                     f"v{old_v} {old.generations} generations, v{new_v} {new.generations} "
                     f"(judged at {need} each); {elapsed:.0f} s of {float(c['step_seconds']):.0f} s")
            last_step = step == len(steps) - 1
            soak = last_step and float(c["share_percent"]) >= 100  # no old side left to compare
            enough = new.generations >= need and (old.generations >= need or soak)
            if elapsed < float(c["step_seconds"]) or not enough:
                self.sleep(self.poll_seconds)
                continue
            if soak:
                # At 100 % the old side has no traffic of its own (only apps yet to learn the
                # share): the step is a soak on time and generations, not a comparison.
                results: list[GuardResult] = []
            else:
                results = self.judge(plan, old, new)
            for r in results:
                self.out("  " + describe_result(r, old_v, new_v))
            judged = {"step": step, "share_percent": c["share_percent"],
                      "results": [result_json(r) for r in results],
                      "old": {"version": old_v, "generations": old.generations, "errors": old.errors},
                      "new": {"version": new_v, "generations": new.generations, "errors": new.errors}}
            breached = [r for r in results if r.breached]
            if breached:
                plan = self.stop(plan, STATE_BREACHED, "breached", judgement=judged,
                                 reason="; ".join(describe_result(r, old_v, new_v) for r in breached))
                self.out(f"BREACHED at step {step + 1}: v{new_v} is back to 0 %, {self.label} stays on "
                         f"v{old_v}")
                for r in breached:
                    self.out("  " + describe_result(r, old_v, new_v))
                return EXIT_BREACHED, plan
            if last_step:
                move_label(new_v)
                plan = self._write(plan, {**c, "state": STATE_SUCCEEDED, "share_percent": 100},
                                   "succeeded", judgement=judged)
                self.out(f"succeeded: {self.label} of {self.name} now points to v{new_v} (verified)")
                return 0, plan
            nxt = step + 1
            plan = self._write(plan, {**c, "step": nxt, "share_percent": steps[nxt],
                                      "step_started_at": self.now(),
                                      "baseline": self._snapshot(old_v, new_v)},
                               "step", judgement=judged)
            self.out(f"step {step + 1} passed: v{new_v} now gets {steps[nxt]} %")
        return (0 if plan.state == STATE_SUCCEEDED else EXIT_BREACHED if plan.state == STATE_BREACHED
                else EXIT_ABORTED), plan


def status_lines(name: str, label: str, history: Sequence[StoredPlan]) -> list[str]:
    """The plan and its history, for ``--status``."""
    if not history:
        return [f"{name} {label}: no guarded rollout recorded"]
    c = history[-1].config
    steps = c.get("steps") or []
    lines = [f"{name} label {label}: v{c.get('from_version')} -> v{c.get('to_version')}  {c.get('state')}  "
             f"step {int(c.get('step', 0)) + 1}/{len(steps)} ({c.get('share_percent')} % on "
             f"v{c.get('to_version')})",
             f"  started by {c.get('started_by')} at {c.get('started_at')}; steps {steps}, "
             f"{float(c.get('step_seconds', 0)) / 60:g} min each, judged at {c.get('min_generations')} "
             f"generations per side; guards {', '.join(c.get('guards', []))}; alpha per test "
             f"{float(c.get('alpha', 0)):.3g}",
             "  history:"]
    for p in history:
        e = p.config.get("event") or {}
        tail = ""
        if e.get("reason"):
            tail = f": {e['reason']}"
        elif e.get("judgement"):
            j = e["judgement"]
            tail = (f": step {j['step'] + 1} judged on v{j['old']['version']} {j['old']['generations']} / "
                    f"v{j['new']['version']} {j['new']['generations']} generations")
        lines.append(f"    v{p.version}  {e.get('at', '?')}  {e.get('what', '?')} by {e.get('by', '?')}  "
                     f"({p.config.get('share_percent')} %){tail}")
    return lines
