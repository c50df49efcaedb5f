"""``labels rollout``: the controller against a live relay and the loopback LangfuseServer, with
traffic that follows the plan as the SDK does (each subject on the side ``RolloutPlan.new_side``
gives it, read from the plan prompt in Langfuse). Steps last a fraction of a second here; the
statistics are the product's own.

The SDK's side of the same (learning the plan through the real ``langfuse`` client, stickiness,
the share) is in tests/sdk; real apps end to end in tests/e2e/test_guarded_rollout.py.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_contract.rollout_plan import (
    PLAN_LABEL,
    STATE_ABORTED,
    STATE_BREACHED,
    STATE_RUNNING,
    STATE_SUCCEEDED,
    parse_plan,
    plan_prompt_name,
)
from promptstamp_relay.rollouts import controller as ctl
from tests.redis_server import RedisServer
from tests.waiting import wait_until

from .conftest import PROMPT, Relay
from .test_labels_cli import MESSAGES, config, production, run

RelayFactory = Callable[..., Relay]
PLAN = plan_prompt_name(PROMPT, "production")
FAST = ("--step-minutes", "0.005", "--min-generations", "40", "--poll-seconds", "0.1", "--yes")


@pytest.fixture
def two_versions(langfuse: LangfuseServer) -> LangfuseServer:
    langfuse.create_prompt(PROMPT, MESSAGES, labels=["production"])
    langfuse.create_prompt(PROMPT, MESSAGES)
    return langfuse


def plan_in_force(langfuse: LangfuseServer) -> dict[str, Any] | None:
    got = langfuse.get_prompt(PLAN, label=PLAN_LABEL)
    return None if got is None else {"plan_version": got["version"], **got["config"]}


class Traffic:
    """Apps following the plan: each round, 60 requests from random subjects of 2000, each on the
    side the plan in force gives it (the label's version otherwise), the new version failing
    with ``new_error_rate``. Records every hand-out (subject, version, plan share)."""

    def __init__(self, relay: Relay | list[Relay], langfuse: LangfuseServer, *, new_error_rate: float = 0.0,
                 old_error_rate: float = 0.0, seed: int = 7, label: str = "production",
                 by_side: bool = False) -> None:
        self.relays = relay if isinstance(relay, list) else [relay]
        self.langfuse, self.label = langfuse, label
        self.by_side = by_side  # the old side's requests to the first relay, the new side's to the last
        self.new_error_rate, self.old_error_rate = new_error_rate, old_error_rate
        self.random = random.Random(seed)
        self.handed: list[tuple[str, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)
        self.error: BaseException | None = None

    def _round(self) -> None:
        current = self.langfuse.get_prompt(PROMPT, label=self.label)
        assert current is not None
        label = int(current["version"])
        got = self.langfuse.get_prompt(plan_prompt_name(PROMPT, self.label), label=PLAN_LABEL)
        plan = None
        if got is not None:
            plan, why = parse_plan(got["config"], name=PROMPT, label=self.label, plan_version=got["version"])
            assert plan is not None, why
        for i in range(60):
            subject = f"user-{self.random.randrange(2000)}"
            version = label
            if plan is not None and plan.applies_to(label) and plan.new_side(subject):
                version = plan.to_version
            new = plan is not None and version == plan.to_version and version != label
            rate = self.new_error_rate if new else self.old_error_rate
            target = (self.relays[-1] if new else self.relays[0]) if self.by_side else self.relays[i % len(self.relays)]
            target.generation(
                "pod-a", version, label=self.label, duration_ms=400 + self.random.randrange(200),
                error=self.random.random() < rate)
            self.handed.append((subject, version, plan.share_percent if plan is not None and plan.running else 0.0))

    def _run(self) -> None:
        try:
            while not self._stop.wait(0.02):
                self._round()
        except BaseException as e:  # reported by stop()
            self.error = e

    @contextmanager
    def running(self) -> Iterator[Traffic]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)
            assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


def rollout(relay: Relay, cfg: str, *extra: str) -> int:
    return run("rollout", PROMPT, "--label", "production", "--relay", relay.url, "--config", cfg, *extra)


def history(langfuse: LangfuseServer) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for v in range(1, 1000):
        got = langfuse.get_prompt(PLAN, version=v)
        if got is None:
            return out
        out.append(got["config"])
    raise AssertionError("unbounded plan history")


def test_a_worse_version_is_rolled_back_at_the_first_step_with_the_reason(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    with Traffic(relay, two_versions, new_error_rate=0.5, old_error_rate=0.01).running():
        code = rollout(relay, cfg, "--to", "2", "--steps", "10,50,100", *FAST)
    out = capsys.readouterr().out
    assert code == ctl.EXIT_BREACHED, out
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_BREACHED and plan["share_percent"] == 0
    assert plan["step"] == 0  # caught at the first step
    judgement = plan["event"]["judgement"]
    breached = [r for r in judgement["results"] if r["breached"]]
    assert [r["guard"] for r in breached] == ["error_rate:+2pp"], judgement
    assert breached[0]["p_value"] < breached[0]["alpha"] and breached[0]["new"] > breached[0]["old"]
    assert "error_rate:+2pp: BREACHED" in plan["event"]["reason"]
    assert production(two_versions) == 1  # the label was left where it was
    assert "BREACHED at step 1" in out


def test_a_healthy_version_reaches_100_percent_and_the_label_moves(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    traffic = Traffic(relay, two_versions, new_error_rate=0.01, old_error_rate=0.01)
    with traffic.running():
        code = rollout(relay, cfg, "--to", "2", "--steps", "10,50,100", *FAST)
    out = capsys.readouterr().out
    assert code == 0, out
    assert production(two_versions) == 2
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_SUCCEEDED
    events = [c["event"]["what"] for c in history(two_versions)]
    assert events == ["started", "step", "step", "succeeded"], events
    for c in history(two_versions)[1:]:  # every judged step had its generations on both sides
        j = c["event"]["judgement"]
        if j["share_percent"] < 100:
            assert j["old"]["generations"] >= 40 and j["new"]["generations"] >= 40
            assert not any(r["breached"] for r in j["results"])
    # Sticky and monotone: a subject once on the new version never went back while it ran.
    on_new: set[str] = set()
    for subject, version, share in traffic.handed:
        if share and version == 1:
            assert subject not in on_new, subject
        if share and version == 2:
            on_new.add(subject)
    # The status shows the whole history.
    assert rollout(relay, cfg, "--status") == 0
    status = capsys.readouterr().out
    assert "succeeded" in status and "started by" in status and status.count("judged on") == 3


def test_abort_puts_the_share_to_0_and_the_running_controller_stops(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    codes: list[int] = []
    controller = threading.Thread(target=lambda: codes.append(rollout(
        relay, cfg, "--to", "2", "--steps", "10,100", "--step-minutes", "10", "--poll-seconds", "0.1", "--yes")))
    controller.start()
    try:
        wait_until(lambda: (plan_in_force(two_versions) or {}).get("state") == STATE_RUNNING, 10, "the rollout")
        assert rollout(relay, cfg, "--abort", "--yes") == 0
    finally:
        controller.join(15)
    assert codes == [ctl.EXIT_ABORTED]
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_ABORTED and plan["share_percent"] == 0
    assert production(two_versions) == 1
    assert "stopped: the plan was aborted" in capsys.readouterr().out


def cli(relay: Relay, cfg: str, *extra: str) -> subprocess.Popen[str]:
    """The command as its own process (to be killed or interrupted)."""
    return subprocess.Popen([str(Path(sys.executable).parent / "promptstamp-relay"), "labels", "rollout", PROMPT,
                             "--label", "production", "--relay", relay.url, "--config", cfg, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_the_cli_killed_mid_step_is_resumed_by_the_next_one(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    two_versions.create_prompt(PROMPT, MESSAGES)  # v3
    # No traffic yet: the step cannot be judged, so the process is surely killed mid-step.
    proc = cli(relay, cfg, "--to", "2", "--steps", "10,100", *FAST)
    try:
        wait_until(lambda: (plan_in_force(two_versions) or {}).get("state") == STATE_RUNNING, 20, "the rollout")
    finally:
        proc.kill()
        proc.communicate(timeout=10)
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_RUNNING and plan["share_percent"] == 10  # safe: as it was
    assert rollout(relay, cfg, "--to", "3", *FAST) == 16  # another version: refused
    assert "to v2 is running" in capsys.readouterr().err
    with Traffic(relay, two_versions).running():
        code = rollout(relay, cfg, *FAST)  # no --to: resume, on the plan's own steps and guards
    out = capsys.readouterr().out
    assert code == 0, out
    assert "resuming it" in out
    assert [c["event"]["what"] for c in history(two_versions)] == ["started", "resumed", "step", "succeeded"]
    assert history(two_versions)[1]["steps"] == [10, 100]
    assert production(two_versions) == 2


def test_ctrl_c_leaves_the_plan_at_its_step(relays: RelayFactory, two_versions: LangfuseServer,
                                            tmp_path: Path) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    proc = cli(relay, cfg, "--to", "2", "--steps", "10,100", "--step-minutes", "10", "--poll-seconds", "0.1",
               "--yes")
    try:
        wait_until(lambda: (plan_in_force(two_versions) or {}).get("state") == STATE_RUNNING, 20, "the rollout")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=10)
    assert proc.returncode == ctl.EXIT_INTERRUPTED, err
    assert "interrupted: the plan stays at its current step" in out
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_RUNNING and plan["share_percent"] == 10


def test_a_label_moved_by_hand_stops_the_rollout(relays: RelayFactory, two_versions: LangfuseServer,
                                                 tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    two_versions.create_prompt(PROMPT, MESSAGES)  # v3
    codes: list[int] = []
    controller = threading.Thread(target=lambda: codes.append(rollout(
        relay, cfg, "--to", "2", "--steps", "10,100", "--step-minutes", "10", "--poll-seconds", "0.1", "--yes")))
    controller.start()
    try:
        wait_until(lambda: (plan_in_force(two_versions) or {}).get("state") == STATE_RUNNING, 10, "the rollout")
        two_versions.set_labels(PROMPT, 3, ["production"])  # someone moves it in the UI
    finally:
        controller.join(15)
    assert codes == [ctl.EXIT_ABORTED]
    plan = plan_in_force(two_versions)
    assert plan is not None and plan["state"] == STATE_ABORTED and plan["share_percent"] == 0
    assert "moved outside the rollout, to v3" in plan["event"]["reason"]
    assert production(two_versions) == 3


def test_promote_guarded_rolls_staging_s_version_into_production(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    two_versions.set_labels(PROMPT, 2, ["staging"])
    for _ in range(3):  # the evidence rule: v2 served generations under staging
        relay.generation("pod-s", 2, label="staging")
    with Traffic(relay, two_versions).running():
        code = run("promote", PROMPT, "--from", "staging", "--to", "production", "--guarded", "--steps", "50,100",
                   "--relay", relay.url, "--config", cfg, *FAST)
    assert code == 0, capsys.readouterr()
    assert production(two_versions) == 2
    assert [c["event"]["what"] for c in history(two_versions)] == ["started", "step", "succeeded"]


def test_two_relays_behind_redis_give_the_controller_the_same_data(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path, redis_server: RedisServer,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The apps' requests land on either relay; the controller reads one; the window counts both."""
    shared = {"store.backend": "redis", "store.url": redis_server.url, "rollouts.flush_seconds": 0.1}
    one, two = relays("one", **shared), relays("two", **shared)
    cfg = config(tmp_path, two_versions.base_url)
    traffic = Traffic([one, two], two_versions, new_error_rate=0.5, by_side=True)
    with traffic.running():
        code = rollout(one, cfg, "--to", "2", "--steps", "10,100", *FAST)
    assert code == ctl.EXIT_BREACHED, capsys.readouterr()
    judged = (plan_in_force(two_versions) or {})["event"]["judgement"]
    # Relay one never received a generation of v2: the controller saw them through Redis.
    assert judged["new"]["generations"] >= 40 and judged["old"]["generations"] >= 40


def test_two_controllers_cannot_both_act(two_versions: LangfuseServer) -> None:
    store = ctl.PlanStore(_backend(two_versions), PROMPT, "production")
    first = ctl.Controller(store, _NoEvidence(), by="a", out=lambda _: None, now=lambda: 0.0, sleep=lambda _: None)
    plan = first.start(ctl.RolloutSpec(), 1, 2, None)
    first.resume(plan)  # a writes first after `plan` ...
    with pytest.raises(ctl.PlanConflict, match="another controller"):
        first.resume(plan)  # ... so b's write after the same version counts for nothing
    in_force = store.load()
    assert in_force is not None and in_force.config["event"]["what"] == "resumed"
    assert [p.config["event"]["what"] for p in store.history()] == ["started", "resumed"]


def test_a_version_written_but_never_labelled_is_found(two_versions: LangfuseServer) -> None:
    """The writer died between the POST and the label move: the next reader labels it."""
    store = ctl.PlanStore(_backend(two_versions), PROMPT, "production")
    c = ctl.Controller(store, _NoEvidence(), by="a", out=lambda _: None, now=lambda: 0.0, sleep=lambda _: None)
    plan = c.start(ctl.RolloutSpec(), 1, 2, None)
    two_versions.create_prompt(PLAN, "half-written", type="text",
                               config={**plan.config, "previous": plan.version, "share_percent": 25})
    loaded = store.load()
    assert loaded is not None and loaded.version == plan.version + 1 and loaded.config["share_percent"] == 25
    assert (plan_in_force(two_versions) or {}).get("plan_version") == plan.version + 1


def test_bad_options_are_reported_together(two_versions: LangfuseServer, relays: RelayFactory, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    code = rollout(relay, cfg, "--to", "2", "--steps", "50,25", "--guard", "latency:-3", "--yes")
    err = capsys.readouterr().err
    assert code == 2 and "--steps must grow" in err and "--guard 'latency:-3'" in err
    assert plan_in_force(two_versions) is None


def test_status_json_is_the_plan_history(relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    relay = relays()
    cfg = config(tmp_path, two_versions.base_url)
    store = ctl.PlanStore(_backend(two_versions), PROMPT, "production")
    ctl.Controller(store, _NoEvidence(), by="a", out=lambda _: None, now=lambda: 0.0,
                   sleep=lambda _: None).start(ctl.RolloutSpec(), 1, 2, None)
    capsys.readouterr()
    assert rollout(relay, cfg, "--status", "--json") == 0
    body = json.loads(capsys.readouterr().out)
    assert body["plan"] == PLAN and [h["state"] for h in body["history"]] == [STATE_RUNNING]


def test_the_prompt_page_shows_the_rollout_and_its_judgement(
        relays: RelayFactory, two_versions: LangfuseServer, tmp_path: Path) -> None:
    """The relay reads the plan with the tenant's Langfuse keys (here the exporter's) for the page."""
    relay = relays(**{"exporter.type": "langfuse", "exporter.langfuse.base_url": two_versions.base_url,
                      "exporter.langfuse.public_key": two_versions.public_key,
                      "exporter.langfuse.secret_key": two_versions.secret_key})
    cfg = config(tmp_path, two_versions.base_url)
    with Traffic(relay, two_versions, new_error_rate=0.5).running():
        assert rollout(relay, cfg, "--to", "2", "--steps", "10,100", *FAST) == ctl.EXIT_BREACHED
    status, html = relay.get(f"/prompts/{PROMPT}")
    assert status == 200
    assert '<div class="rollout" data-state="breached">' in html
    assert "Guarded rollout: v1 → v2, <b>breached</b>, 0 % on v2" in html
    assert '<tr data-guard="error_rate:+2pp"><td>error_rate:+2pp</td><td>BREACHED</td>' in html
    assert '<li class="now">10 %</li><li class="next">100 %</li>' in html


# -- helpers ------------------------------------------------------------------------------------
class _NoEvidence:
    def versions(self, name: str, label: str) -> dict[int, Any]:
        return {}


def _backend(langfuse: LangfuseServer) -> Any:
    from promptstamp_relay.labels_cli import _Langfuse

    return _Langfuse((langfuse.base_url, langfuse.public_key, langfuse.secret_key))
