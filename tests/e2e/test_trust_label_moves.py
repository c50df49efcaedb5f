"""Label moved between requests and during one: moves made through Langfuse's API while the app
runs (with promptstamp's default cache, and with ``cache_ttl_seconds=0``): every generation is
linked to the version its scope was handed, never to an earlier (or a later) one.

The app (a subprocess: real OTel SDK at its default export timing, the real ``langfuse`` client
behind ``promptstamp.install()``, OpenLLMetry's ``OpenAIInstrumentor``) runs one request at a
time when this test says so on its stdin: a request span, one ``promptstamp.prompt`` scope
lasting several seconds with its generations spread over it. It can stop after a request's first
generation until told to go on, so this test moves ``production`` (``PATCH`` on Langfuse's
prompts API, new versions by ``POST``) exactly while a scope is open, or between two scopes. The
relay runs on its default hold window.
"""

from __future__ import annotations

import textwrap
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from promptstamp.testing import FakeOpenAI, LangfuseServer
from tests.e2e.trust_apps import (
    APP_SETUP,
    App,
    app_environment,
    assert_linked_as_handed,
    create_version,
    default_relay,
    langfuse_server,
    move_label,
    wait_for_generations,
)
from tests.waiting import wait_until

pytest.importorskip("opentelemetry.instrumentation.openai")

CACHE_TTL_SECONDS = 60.0  # promptstamp's default (install(cache_ttl_seconds=...) unset)

# Commands on stdin, one JSON object a line: {"op": "request", "seconds", "generations",
# "pause"} runs a request (with "pause": stops after its first generation until {"op":
# "resume"}); end of input ends the app. Events on stdout: ready, opened (the scope is open: its
# trace id and p.version), paused, done.
APP = APP_SETUP + textwrap.dedent(
    """
    say(event="ready")
    i = 0
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        command = json.loads(line)
        seconds, n = command["seconds"], command["generations"]
        start = time.monotonic()
        with tracer.start_as_current_span("handle_request") as root:
            with promptstamp.prompt(PROMPT, label="production") as p:
                say(event="opened", trace_id=hex_trace_id(root), version=p.version)
                for g in range(n):
                    sleep_until(start + seconds * g / (n - 1))
                    generate(p, i, g)
                    if g == 0 and command.get("pause"):
                        say(event="paused")
                        resume = json.loads(sys.stdin.readline())
                        assert resume["op"] == "resume", resume
        say(event="done", trace_id=hex_trace_id(root), version=p.version, generations=n,
            took=round(time.monotonic() - start, 2))
        i += 1
    shut_down()
    """
)

Mover = Callable[[int], None]  # called with the version the open scope was handed


def request(app: App, seconds: float, generations: int, *, during: Mover | None = None) -> dict[str, Any]:
    """One request of ``seconds`` with ``generations`` spread over it; ``during`` runs after its
    first generation, while its scope is open. What the app reported."""
    app.send(op="request", seconds=seconds, generations=generations, pause=during is not None)
    opened = app.expect("opened", timeout=30)
    if during is not None:
        app.expect("paused", timeout=30)
        during(opened["version"])
        app.send(op="resume")
    done = app.expect("done", timeout=seconds + 30)
    assert (done["trace_id"], done["version"]) == (opened["trace_id"], opened["version"])
    return done


def run_with_no_cache(app: App, langfuse: LangfuseServer) -> list[dict[str, Any]]:
    """``cache_ttl_seconds=0``: every scope fetches, so each is handed where the label is now."""
    requests = []
    # production v1 -> v2 while a scope that was handed v1 is open
    requests.append(request(app, 4, 3, during=lambda _: move_label(langfuse, 2)))
    # the scenario: right after the move, a 9 s request with 3 generations
    requests.append(request(app, 9, 3))
    # a new version, production v2 -> v3 between two requests
    move_label(langfuse, create_version(langfuse))
    # and v3 -> v4 while a scope that was handed v3 is open
    requests.append(request(app, 4, 3, during=lambda _: move_label(langfuse, create_version(langfuse))))
    requests.append(request(app, 4, 3))
    assert [r["version"] for r in requests] == [1, 2, 3, 4]
    assert requests[1]["generations"] == 3 and requests[1]["took"] >= 9
    return requests


def run_with_default_cache(app: App, langfuse: LangfuseServer) -> list[dict[str, Any]]:
    """The default cache (60 s): scopes are handed the cached version for a minute after each
    fetch, whatever the label points to meanwhile."""
    requests = []
    first_fetch = time.monotonic()
    requests.append(request(app, 4, 3, during=lambda _: move_label(langfuse, 2)))  # handed v1
    requests.append(request(app, 9, 3))  # right after the move: the cached v1
    moved_to: list[int] = []

    def move_once_handed_v2(version: int) -> None:
        if version == 2 and not moved_to:
            moved_to.append(create_version(langfuse))
            move_label(langfuse, moved_to[0])  # production v2 -> v3 while a v2 scope is open

    def another_request() -> bool:
        requests.append(request(app, 6, 3, during=move_once_handed_v2))
        return bool(moved_to)

    # 6 s requests until the cache runs out and a scope is handed v2 (bounded)
    wait_until(another_request, first_fetch + CACHE_TTL_SECONDS + 40 - time.monotonic(),
               lambda: f"a scope handed v2 (versions so far: {[r['version'] for r in requests]})", interval=0)
    requests.append(request(app, 4, 3))  # production is v3 now; the cache has v2
    versions = [r["version"] for r in requests]
    first_v2 = versions.index(2)
    assert versions == [1] * first_v2 + [2] * (len(versions) - first_v2), versions
    assert first_v2 >= 3, versions  # v1 was handed out after the move, from the cache
    return requests


@pytest.mark.timeout(300)
@pytest.mark.parametrize("cache", ["ttl-0", pytest.param("default-cache", marks=pytest.mark.slow)])
def test_label_moves_while_the_app_runs_link_each_generation_to_the_version_its_scope_was_handed(
    cache: str,
) -> None:
    """``production`` starts on v1 (v2 exists); while the app runs, the label is moved through
    Langfuse's API during open scopes and between requests (v1 -> v2, later to new versions).
    With ``cache_ttl_seconds=0`` each scope is handed where the label points when it opens
    (v1, v2, v3, v4; the second is the issue's scenario: right after the move to v2, a 9 s
    request with 3 generations, all linked to v2); with the default cache, scopes keep being
    handed the cached v1 for a minute after the move, then v2. Every generation is linked at
    the ``trace`` tier to exactly the version its scope was handed: a generation made after a
    move inside a scope handed the earlier version keeps that version, and one in a scope handed
    a cached copy is not linked to where the label points now."""
    extra = {"CACHE_TTL": "0"} if cache == "ttl-0" else {}
    with langfuse_server(production=1, versions=2) as langfuse, default_relay(langfuse) as relay, \
            FakeOpenAI() as model:
        environment = app_environment(langfuse, f"http://{relay.address}", model.base_url, **extra)
        with App(APP, environment) as app:
            app.expect("ready", timeout=60)
            if cache == "ttl-0":
                requests = run_with_no_cache(app, langfuse)
            else:
                requests = run_with_default_cache(app, langfuse)
            app.finish(timeout=30)
        versions = {r["version"] for r in requests}
        assert {1, 2} <= versions, versions  # the run really spans a move
        total = sum(r["generations"] for r in requests)
        assert len(model.requests) == total

        wait_for_generations(langfuse, total, timeout=30)
        assert relay.stop(timeout=15) == 0
        assert_linked_as_handed(langfuse.generations(), requests)
        assert langfuse.rejected() == []
        assert relay.processor.stats.stamped == Counter({"trace": total}), relay.processor.stats
