"""A guarded rollout end to end: three real app instances (subprocesses: the OTel SDK's own
exporters over gRPC and HTTP, the real ``langfuse`` client, OpenLLMetry against the fake model
API) ask for ``production`` with a subject per request; the controller (``promptstamp-relay
labels rollout``) steps version 2 in, judging it on the relay's data. The apps learn each step
from the plan prompt in Langfuse through their own client, within their cache TTL (1 s here);
no app is restarted or told anything.

- a version whose model calls fail is caught at the first step, put back to 0 %, and the apps
  return to version 1; the label never moves;
- a healthy version reaches 100 %, the label moves, every generation is linked to the version
  its request was handed, and no subject ever went back from the new version to the old.
"""

from __future__ import annotations

import json
import textwrap
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest

from promptstamp.testing import Behaviour, FakeOpenAI, LangfuseServer, PromptBehaviours
from promptstamp_contract.rollout_plan import PLAN_LABEL, STATE_BREACHED, plan_prompt_name
from promptstamp_relay.cli import main
from promptstamp_relay.rollouts.controller import EXIT_BREACHED

from .trust_apps import (
    APP_SETUP,
    CHAT,
    MODEL_CONFIG,
    PROMPT,
    App,
    app_environment,
    default_relay,
    wait_for_generations,
)

NEW_CHAT = [{"role": "system", "content": "You are a support assistant. Answer in one sentence."},
            CHAT[1]]

APP = APP_SETUP + textwrap.dedent(
    """
    import random
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    rng = random.Random(os.environ["SERVICE_INSTANCE"])
    handed = []
    say(event="ready")
    n = 0
    while not stop.is_set() and n < 20000:
        subject = f"user-{rng.randrange(3000)}"
        with promptstamp.prompt(PROMPT, subject=subject) as p:
            with tracer.start_as_current_span("request") as span:
                try:
                    generate(p, n, 0)
                except Exception:
                    pass  # the generation span says ERROR; the request goes on
                handed.append([subject, p.version, hex_trace_id(span), round(time.time(), 3)])
        n += 1
        time.sleep(0.004)
    shut_down()
    say(event="done", handed=handed)
    """
)


@contextmanager
def world(new_fails: bool) -> Iterator[tuple[LangfuseServer, Any, list[App]]]:
    behaviours = PromptBehaviours()
    with ExitStack() as stack:
        langfuse = stack.enter_context(LangfuseServer(public_key="pk-lf-rollout", secret_key="sk-lf-test"))
        langfuse.create_prompt(PROMPT, CHAT, labels=["production"], config=MODEL_CONFIG)
        langfuse.create_prompt(PROMPT, NEW_CHAT, config=MODEL_CONFIG)
        behaviours.add(PROMPT, 1, CHAT)
        behaviours.add(PROMPT, 2, NEW_CHAT, Behaviour(error_status=400, error_message="the new prompt breaks it")
                       if new_fails else None)
        model = stack.enter_context(FakeOpenAI(behaviours=behaviours))
        relay = stack.enter_context(default_relay(langfuse, **{"hold.seconds": 2.0, "metrics_listen": "127.0.0.1:0"}))
        apps = []
        for i, protocol in enumerate(("grpc", "grpc", "http")):
            endpoint = relay.address if protocol == "grpc" else f"http://{relay.http_address}"
            env = app_environment(langfuse, endpoint, model.base_url, protocol=protocol,
                                  instance=f"order-status-{i}", CACHE_TTL="1", OTEL_BSP_SCHEDULE_DELAY="200")
            app = stack.enter_context(App(APP, env, name=f"app-{i}"))
            app.expect("ready", 60)
            apps.append(app)
        yield langfuse, relay, apps


def rollout(langfuse: LangfuseServer, relay: Any, tmp: Path, *extra: str) -> int:
    cfg = tmp / "relay.yaml"
    cfg.write_text(json.dumps({"exporter": {"langfuse": {"base_url": langfuse.base_url,
                                                         "public_key": langfuse.public_key,
                                                         "secret_key": langfuse.secret_key}}}), encoding="utf-8")
    return main(["labels", "rollout", PROMPT, "--label", "production", "--to", "2", "--config", str(cfg),
                 "--relay", f"http://127.0.0.1:{relay.metrics_port}", "--min-generations", "30",
                 "--step-minutes", "0.05", "--poll-seconds", "0.25", "--yes", *extra])


def finish(apps: list[App]) -> list[list[list[Any]]]:
    """Each app's hand-outs: [subject, version, trace id, time]."""
    handed = []
    for app in apps:
        app.finish(60)
        handed.append(app.expect("done", 10)["handed"])
    return handed


def never_back(per_app: list[list[list[Any]]], until: float) -> None:
    """In each app, no subject handed version 2 got version 1 later (before ``until``). Across
    apps a subject may meet both for up to a cache TTL after a step: each app learns the new
    share at its own time (docs/rollouts.md)."""
    for handed in per_app:
        on_new: set[str] = set()
        for subject, version, _trace, at in handed:
            if at >= until:
                break
            if version == 2:
                on_new.add(subject)
            else:
                assert subject not in on_new, f"{subject} went back from v2 to v1 at {at}"


@pytest.mark.timeout(240)
def test_a_failing_version_is_caught_at_the_first_step_and_the_apps_go_back(tmp_path: Path) -> None:
    with world(new_fails=True) as (langfuse, relay, apps):
        code = rollout(langfuse, relay, tmp_path, "--steps", "20,100")
        breached_at = time.time()
        plan = langfuse.get_prompt(plan_prompt_name(PROMPT, "production"), label=PLAN_LABEL)
        assert code == EXIT_BREACHED
        assert plan is not None and plan["config"]["state"] == STATE_BREACHED and plan["config"]["step"] == 0
        time.sleep(3)  # the apps' cache TTL (1 s) and a margin
        per_app = finish(apps)
    handed = [h for app in per_app for h in app]
    production = langfuse.get_prompt(PROMPT, label="production")
    assert production is not None and production["version"] == 1
    reason = plan["config"]["event"]["reason"]
    assert reason.startswith("error_rate:+2pp: BREACHED"), reason
    on_new = [h for h in handed if h[1] == 2]
    assert on_new, "no request was handed version 2"
    assert all(h[1] == 1 for h in handed if h[3] > breached_at + 2.5), "apps still on v2 after the breach"
    never_back(per_app, breached_at)


@pytest.mark.timeout(240)
def test_a_healthy_version_reaches_100_percent_with_every_generation_linked(tmp_path: Path) -> None:
    with world(new_fails=False) as (langfuse, relay, apps):
        code = rollout(langfuse, relay, tmp_path, "--steps", "20,60,100")
        per_app = finish(apps)
        handed = [h for app in per_app for h in app]
        production = langfuse.get_prompt(PROMPT, label="production")
        assert code == 0 and production is not None and production["version"] == 2
        by_trace = {h[2]: h[1] for h in handed}
        wait_for_generations(langfuse, len(by_trace), 60)
        linked = {o.trace_id: o.prompt_version for o in langfuse.generations()}
    wrong = {t: (v, linked.get(t)) for t, v in by_trace.items() if linked.get(t) != v}
    assert not wrong, f"{len(wrong)} of {len(by_trace)} generations not linked to their version: " \
                      f"{list(wrong.items())[:5]}"
    assert {1, 2} <= set(by_trace.values())
    never_back(per_app, float("inf"))
