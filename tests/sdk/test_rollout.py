"""The SDK follows a guarded rollout's plan: ``promptstamp-rollout/<label>/<name>`` in Langfuse,
read through the real ``langfuse`` client against a loopback Langfuse, cached like the prompt,
splitting subjects by the plan's share and always failing safe to the label's own version."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import promptstamp
from promptstamp import _fetch
from promptstamp.testing import LangfuseServer
from promptstamp.testing._http import Response
from promptstamp_contract.rollout_plan import (
    PLAN_FORMAT,
    PLAN_LABEL,
    is_plan_name,
    plan_prompt_name,
    subject_point,
)

from .conftest import CHAT, FETCH_TIMEOUT, PROMPT, Clock, Otel, label_requests, plan_requests

PLAN = plan_prompt_name(PROMPT, "production")
SALT = "rollout-7f3a"
V2 = [{"role": "system", "content": "v2: be brief."}, {"role": "user", "content": "{{query}} {{region}}"}]
SUBJECTS = [f"user-{i}" for i in range(4000)]
#: two-sided 99.9 % normal quantile: a share outside mean ± Z·σ has < 0.1 % chance under the hash
Z_999 = 3.2905


def _bound(n: int, p: float) -> float:
    """Half-width of the 99.9 % band of a binomial(n, p) count (normal approximation)."""
    return Z_999 * math.sqrt(n * p * (1 - p))


def _new_side(subject: str, share: float, salt: str = SALT) -> bool:
    """The split as the plan module defines it, computed here independently of the SDK path."""
    return subject_point(subject, salt) * 100.0 < share


def _subject(new: bool, share: float = 25.0) -> str:
    return next(s for s in SUBJECTS if _new_side(s, share) is new)


class FaultyLangfuse(LangfuseServer):
    """The loopback Langfuse, able to fail only some prompts GETs (a plan lookup, one version)
    while the others answer; everything else is LangfuseServer's."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.failing: list[Callable[[str, str | None, str | None], bool]] = []

    def _answer_prompt(self, name: str, label: str | None, raw_version: str | None) -> Response:
        if any(fails(name, label, raw_version) for fails in self.failing):
            return Response.json(503, {"message": "Injected failure", "error": "ServiceUnavailableError"})
        return super()._answer_prompt(name, label, raw_version)


@pytest.fixture
def server() -> Iterator[LangfuseServer]:
    import uuid

    with FaultyLangfuse(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="sk-lf-test") as srv:
        srv.create_prompt(PROMPT, CHAT, labels=["production"], config={"model": "gpt-4o-mini"})
        yield srv


def _plan(
    server: LangfuseServer,
    *,
    share: float = 25.0,
    state: str = "running",
    from_version: int = 1,
    to_version: int = 2,
    salt: str = SALT,
    **changes: Any,
) -> int:
    """A new version of the plan prompt, labelled active (what the controller writes)."""
    config: dict[str, Any] = {
        "format": PLAN_FORMAT, "prompt": PROMPT, "label": "production", "from_version": from_version,
        "to_version": to_version, "state": state, "share_percent": share, "salt": salt,
        "guards": {"error_rate": 0.05},  # the controller's part of the config: not read here
    }
    config.update(changes)
    created = server.create_prompt(PLAN, f"rollout of {PROMPT}: {state} at {share} %", type="text",
                                   labels=[PLAN_LABEL], config=config)
    return int(created["version"])


def _hand_out(installed: Otel, subject: str | None = None, **kwargs: Any) -> tuple[int | None, str | None, str]:
    """One prompt() inside a request span: (version, rollout side, source)."""
    with installed.tracer.start_as_current_span("request"), \
            promptstamp.prompt(PROMPT, subject=subject, **kwargs) as p:
        assert p.label == "production"
        return p.version, p.rollout, p.source


def _sides(installed: Otel, subjects: list[str]) -> dict[str, bool]:
    """Each subject's side (True: new), checking the version and label handed out on the way."""
    sides = {}
    with installed.tracer.start_as_current_span("request"):
        for subject in subjects:
            with promptstamp.prompt(PROMPT, subject=subject) as p:
                assert (p.label, p.source) == ("production", "langfuse")
                assert (p.version, p.rollout) in ((1, "old"), (2, "new"))
                sides[subject] = p.rollout == "new"
    installed.spans.clear()
    installed.logs.clear()
    return sides


def _rollout_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "promptstamp" and r.levelno == logging.WARNING and "rollout" in r.getMessage()]


# -- where the plan lives ------------------------------------------------------------------------


def test_a_plan_name_with_slashes_is_one_prompt_for_the_real_client(
    langfuse_client: Any, server: LangfuseServer
) -> None:
    """Langfuse's client sends the name percent-encoded (``/`` as ``%2F``) and Langfuse reads it
    back as one name (a prompt in folder ``promptstamp-rollout/production``)."""
    from langfuse.api import NotFoundError

    with pytest.raises(NotFoundError):
        langfuse_client.get_prompt(PLAN, label=PLAN_LABEL, type="text", cache_ttl_seconds=0, max_retries=0)
    _plan(server)
    fetched = langfuse_client.get_prompt(PLAN, label=PLAN_LABEL, type="text", cache_ttl_seconds=0,
                                         max_retries=0)
    assert (fetched.name, fetched.version, fetched.config["share_percent"]) == (PLAN, 1, 25.0)
    assert [(r.name, r.label, r.status) for r in server.prompt_requests] == [
        (PLAN, PLAN_LABEL, 404), (PLAN, PLAN_LABEL, 200)]
    assert server.get_prompt(PROMPT, label=PLAN_LABEL) is None  # no clash with the prompt itself


# -- no plan: the common case, and what it costs -----------------------------------------------


def test_no_plan_is_one_404_per_ttl_not_per_call(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        for _ in range(50):
            assert _hand_out(installed, cache_ttl_seconds=60) == (1, None, "langfuse")
        assert [(r.name, r.label, r.status) for r in plan_requests(server)] == [(PLAN, PLAN_LABEL, 404)]
        clock.advance(59)
        for _ in range(50):
            assert _hand_out(installed, cache_ttl_seconds=60) == (1, None, "langfuse")
        assert len(plan_requests(server)) == 1
        clock.advance(2)
        for _ in range(50):
            assert _hand_out(installed, cache_ttl_seconds=60) == (1, None, "langfuse")
    assert [r.status for r in plan_requests(server)] == [404, 404]
    assert [r.status for r in label_requests(server)] == [200, 200]
    # Nothing logged for it: promptstamp says nothing, and Langfuse's client's own WARNING for
    # the plan's 404 ("not found during refresh") is filtered out ...
    assert _rollout_warnings(caplog) == []
    assert [r.getMessage() for r in caplog.records if "promptstamp-rollout" in r.getMessage()] == []


def test_langfuses_not_found_warning_stays_for_other_prompts(
    installed: Otel, server: LangfuseServer, caplog: pytest.LogCaptureFixture
) -> None:
    """... and only that line: a 404 for a real prompt is still logged by Langfuse's client."""
    with caplog.at_level(logging.WARNING), pytest.raises(promptstamp.PromptNotFoundError):
        _hand_out(installed)  # looks the plan up: the filter is in place
        promptstamp.prompt(PROMPT, label="prod-b").__enter__()
    assert [r.getMessage() for r in caplog.records if r.name == "langfuse"] == [
        f"Prompt '{PROMPT}-label:prod-b' not found during refresh, evicting from cache."]


# -- a running plan ------------------------------------------------------------------------------


def test_a_running_plan_hands_the_new_version_to_its_share_sticky_per_subject(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    server.create_prompt(PROMPT, V2, config={"model": "gpt-4o"})  # v2: no label yet
    _plan(server, share=25)
    sides = _sides(installed, SUBJECTS)

    new = sum(sides.values())
    expected = 0.25 * len(SUBJECTS)
    assert abs(new - expected) <= _bound(len(SUBJECTS), 0.25), (new, expected)  # 1000 ± 90
    assert sides == {s: _new_side(s, 25) for s in SUBJECTS}  # the plan module's split, exactly
    # The prompt by label, its plan, and the new version by version: once each, not per call.
    assert [(r.name, r.label, r.version) for r in server.prompt_requests] == [
        (PROMPT, "production", None), (PLAN, PLAN_LABEL, None), (PROMPT, None, "2")]

    clock.advance(30)
    assert _sides(installed, SUBJECTS) == sides  # sticky: every subject keeps its side
    clock.advance(31)  # past the TTL: the prompt, the plan and the version asked again, once
    assert _sides(installed, SUBJECTS) == sides
    assert len(server.prompt_requests) == 6


def test_a_growing_share_only_moves_subjects_from_old_to_new(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=25)
    at_25 = _sides(installed, SUBJECTS)
    _plan(server, share=50)  # the controller's next step: a new plan version, same salt
    clock.advance(61)
    at_50 = _sides(installed, SUBJECTS)

    assert [s for s in SUBJECTS if at_25[s] and not at_50[s]] == []  # nobody moves new -> old
    new = sum(at_50.values())
    assert abs(new - 2000) <= _bound(len(SUBJECTS), 0.5), new  # 2000 ± 104
    moved = sum(at_50[s] and not at_25[s] for s in SUBJECTS)
    assert abs(moved - 1000) <= _bound(len(SUBJECTS), 0.25), moved


def test_the_fetch_record_carries_the_version_handed_out_under_the_label(
    installed: Otel, server: LangfuseServer
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=25)
    new_subject, old_subject = _subject(True), _subject(False)
    with installed.tracer.start_as_current_span("request"):
        for subject in (new_subject, old_subject):
            with promptstamp.prompt(PROMPT, subject=subject), installed.tracer.start_as_current_span("llm"):
                pass
    spans = installed.spans.get_finished_spans()
    fetches = [s for s in spans if s.name == "promptstamp.fetch"]
    # Only the contract's attributes (§2): the version is the side.
    assert [dict(s.attributes or {}) for s in fetches] == [
        {"app.prompt.key": PROMPT, "app.prompt.label": "production", "app.prompt.version": v,
         "app.prompt.fetch.source": "langfuse"} for v in (2, 1)]
    assert [dict(r.log_record.attributes or {})["app.prompt.version"] for r in installed.fetch_records()] == [2, 1]
    # The subject is only hashed: in no span, event, log record or baggage-stamped attribute.
    seen = [str(dict(s.attributes or {})) + str([dict(e.attributes or {}) for e in s.events]) for s in spans]
    seen += [str(dict(r.log_record.attributes or {})) + str(r.log_record.body) for r in installed.logs.records]
    assert not any(subject in text for text in seen for subject in (new_subject, old_subject))


def test_without_a_subject_the_trace_id_splits(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=50)
    seen = set()
    for _ in range(40):
        with installed.tracer.start_as_current_span("request") as request:
            trace_hex = format(request.get_span_context().trace_id, "032x")
            versions = []
            for _ in range(3):
                with promptstamp.prompt(PROMPT) as p:
                    versions.append((p.version, p.rollout))
        expected = (2, "new") if _new_side(trace_hex, 50) else (1, "old")
        assert versions == [expected] * 3  # one trace, one side
        seen.add(expected)
    assert seen == {(1, "old"), (2, "new")}

    # No span active: the scope span the SDK opens gives the trace (known before the plan applies);
    # an empty subject counts as none.
    installed.spans.clear()
    for _ in range(20):
        with promptstamp.prompt(PROMPT, subject="") as p:
            handed = p.version
        [scope] = [s for s in installed.spans.get_finished_spans() if s.name == "promptstamp.prompt"]
        assert scope.context is not None
        assert handed == (2 if _new_side(format(scope.context.trace_id, "032x"), 50) else 1)
        installed.spans.clear()


@pytest.mark.parametrize("state", ["breached", "aborted"])
def test_a_stopped_plan_hands_out_the_label_version(installed: Otel, server: LangfuseServer, state: str) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100, state=state)
    for subject in SUBJECTS[:50]:
        assert _hand_out(installed, subject) == (1, None, "langfuse")
    assert [r.version for r in server.prompt_requests if r.version is not None] == []  # v2 never fetched


def test_a_succeeded_plan_leaves_the_version_to_the_label(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
    _plan(server, share=100, state="succeeded")
    server.set_labels(PROMPT, 2, ["production"])  # what the controller does on success
    clock.advance(61)
    for subject in SUBJECTS[:50]:
        assert _hand_out(installed, subject) == (2, None, "langfuse")  # the label's version now


def test_a_succeeded_plan_seen_before_the_labels_refresh_follows_the_plan_module(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    """The label's cached copy still says from_version while the plan already says succeeded:
    the SDK does what ``RolloutPlan.applies_to`` / ``new_side`` decide for that plan."""
    from promptstamp_contract.rollout_plan import parse_plan

    server.create_prompt(PROMPT, V2)
    _fail_plans(server)
    assert _hand_out(installed, "user-1") == (1, None, "langfuse")  # label v1 cached; plan lookup failed
    assert isinstance(server, FaultyLangfuse)
    server.failing.clear()
    _plan(server, share=100, state="succeeded")
    server.set_labels(PROMPT, 2, ["production"])
    clock.advance(_fetch.FAILURE_BACKOFF_SECONDS)  # the plan is asked again; the label copy is fresh
    found = server.get_prompt(PLAN, label=PLAN_LABEL)
    assert found is not None
    plan, _ = parse_plan(found["config"], name=PROMPT, label="production", plan_version=1)
    assert plan is not None
    for subject in SUBJECTS[:20]:
        new = plan.applies_to(1) and plan.new_side(subject)
        assert _hand_out(installed, subject) == ((2, "new", "langfuse") if new else (1, None, "langfuse"))


def test_a_label_moved_by_hand_ends_the_plans_say(installed: Otel, server: LangfuseServer, clock: Clock) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
    server.create_prompt(PROMPT, [{"role": "user", "content": "v3 {{query}}"}], labels=["production"])
    clock.advance(61)
    assert _hand_out(installed, "user-1") == (3, None, "langfuse")  # from_version is 1: not ours
    server.set_labels(PROMPT, 2, ["production"])  # moved by hand to the rollout's own to_version
    clock.advance(61)
    assert _hand_out(installed, "user-1") == (2, None, "langfuse")


def test_a_new_plan_is_learned_within_the_ttl_without_restart(installed: Otel, server: LangfuseServer) -> None:
    ttl = 0.3
    assert _hand_out(installed, "user-1", cache_ttl_seconds=ttl) == (1, None, "langfuse")
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    started = time.monotonic()
    while _hand_out(installed, "user-1", cache_ttl_seconds=ttl)[0] == 1:
        assert time.monotonic() - started < ttl + 0.5
        time.sleep(0.02)
    assert _hand_out(installed, "user-1", cache_ttl_seconds=ttl) == (2, "new", "langfuse")
    _plan(server, share=0, state="aborted")  # and the abort, the same way
    started = time.monotonic()
    while _hand_out(installed, "user-1", cache_ttl_seconds=ttl)[0] == 2:
        assert time.monotonic() - started < ttl + 0.5
        time.sleep(0.02)
    assert _hand_out(installed, "user-1", cache_ttl_seconds=ttl) == (1, None, "langfuse")


def test_async_with_follows_the_plan(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=25)
    new_subject, old_subject = _subject(True), _subject(False)

    async def main() -> list[tuple[int | None, str | None]]:
        out = []
        for subject in (new_subject, old_subject, new_subject, old_subject):
            async with promptstamp.prompt(PROMPT, subject=subject) as p:
                out.append((p.version, p.rollout))
        return out

    assert asyncio.run(main()) == [(2, "new"), (1, "old"), (2, "new"), (1, "old")]
    assert len(server.prompt_requests) == 3


def test_concurrent_first_calls_look_the_plan_up_once(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=50)
    server.delay_prompts(0.05)
    barrier = threading.Barrier(16)
    got: dict[str, int | None] = {}

    def call(subject: str) -> None:
        barrier.wait()
        with promptstamp.prompt(PROMPT, subject=subject) as p:
            got[subject] = p.version

    threads = [threading.Thread(target=call, args=(s,)) for s in SUBJECTS[:16]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {s: 2 if _new_side(s, 50) else 1 for s in SUBJECTS[:16]}
    assert sorted((r.name, r.version or "") for r in server.prompt_requests) == [
        (PROMPT, ""), (PROMPT, "2"), (PLAN, "")]


def test_subject_must_be_a_string() -> None:
    with pytest.raises(TypeError, match="subject"):
        promptstamp.prompt(PROMPT, subject=42)  # type: ignore[call-overload]


# -- failing safe ----------------------------------------------------------------------------


def _fail_plans(server: LangfuseServer) -> None:
    assert isinstance(server, FaultyLangfuse)
    server.failing.append(lambda name, label, version: is_plan_name(name))


def test_failed_plan_lookups_hand_out_the_label_version_with_one_warning(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    _fail_plans(server)
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        for _ in range(3):
            for subject in SUBJECTS[:20]:
                assert _hand_out(installed, subject) == (1, None, "langfuse")
            clock.advance(61)
    [warning] = _rollout_warnings(caplog)  # once for the whole outage
    assert PROMPT in warning and "'production'" in warning and "ApiError" in warning
    assert "the label's own version" in warning
    # The outage costs one lookup per backoff at most, not one per call (3 per lookup: Langfuse's
    # HTTP layer retries a 503 twice by itself).
    assert len(plan_requests(server)) == 3 * 3

    assert isinstance(server, FaultyLangfuse)
    server.failing.clear()  # Langfuse answers again: the plan is followed, the outage is over
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
    _fail_plans(server)
    clock.advance(61)
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")  # the last known plan, ...
    assert len(_rollout_warnings(caplog)) == 2  # ... a new outage: warned again
    assert "following the last known plan (version 1, running at 100 %)" in _rollout_warnings(caplog)[1]
    clock.advance(300)  # the plan's last answer is now older than max_stale_seconds (300 s)
    assert _hand_out(installed, "user-1") == (1, None, "langfuse")
    assert len(_rollout_warnings(caplog)) == 2


def test_while_the_prompt_fetch_fails_the_plan_is_not_asked_for(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
    asked = len(server.prompt_requests)
    server.fail_prompts(503)
    clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        # The label from cache; the plan and v2 as last known: one failed fetch, not three.
        assert _hand_out(installed, "user-1") == (2, "new", "cache")
        assert _hand_out(installed, "user-2") == (2, "new", "cache")
    assert [(r.name, r.status) for r in server.prompt_requests[asked:]] == [(PROMPT, 503)] * 3
    assert len(_rollout_warnings(caplog)) == 1


def test_an_outage_after_a_recent_no_plan_adds_no_rollout_warning(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """No rollout at the last lookup: during an outage the app goes on exactly as before (the
    label's cached copy), and the prompt's own failure is the only thing to say."""
    assert _hand_out(installed, "user-1") == (1, None, "langfuse")  # the plan: a 404, no rollout
    server.fail_prompts(503)
    clock.advance(61)
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        for subject in SUBJECTS[:5]:
            assert _hand_out(installed, subject) == (1, None, "cache")
        clock.advance(61)
        assert _hand_out(installed, "user-1") == (1, None, "cache")
    assert _rollout_warnings(caplog) == []


def test_a_broken_plan_is_no_plan_with_one_warning_per_plan_version(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server.create_prompt(PROMPT, V2)
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        _plan(server, share=100, format="promptstamp.rollout/9")
        for _ in range(3):
            assert _hand_out(installed, "user-1") == (1, None, "langfuse")
            clock.advance(61)
        assert len(_rollout_warnings(caplog)) == 1
        _plan(server, share=150)
        for _ in range(3):
            assert _hand_out(installed, "user-1") == (1, None, "langfuse")
            clock.advance(61)
        _plan(server, share=100)
        assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
    first, second = _rollout_warnings(caplog)
    assert f"{PLAN} version 1" in first and "format is 'promptstamp.rollout/9'" in first
    assert f"{PLAN} version 2" in second and "share_percent must be a number from 0 to 100" in second


def test_a_missing_new_version_keeps_the_old_side_with_one_warning(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    _plan(server, share=100)  # to_version 2, which does not exist yet
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        for _ in range(3):
            for subject in SUBJECTS[:20]:
                assert _hand_out(installed, subject) == (1, "old", "langfuse")
            clock.advance(61)
    [warning] = _rollout_warnings(caplog)
    assert "version 2" in warning and "NotFoundError" in warning and "label's version 1" in warning
    assert [r.status for r in server.prompt_requests if r.version == "2"] == [404] * 3  # one per TTL

    server.create_prompt(PROMPT, V2)
    assert _hand_out(installed, "user-1") == (2, "new", "langfuse")


def test_a_failing_new_version_is_served_from_cache_else_the_old_side(
    installed: Otel, server: LangfuseServer, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    server.create_prompt(PROMPT, V2)
    _plan(server, share=100)
    assert isinstance(server, FaultyLangfuse)
    server.failing.append(lambda name, label, version: version == "2")
    with caplog.at_level(logging.WARNING, logger="promptstamp"):
        assert _hand_out(installed, "user-1") == (1, "old", "langfuse")  # nothing cached: old side
        assert _hand_out(installed, "user-2") == (1, "old", "langfuse")
        server.failing.clear()
        clock.advance(_fetch.FAILURE_BACKOFF_SECONDS)
        assert _hand_out(installed, "user-1") == (2, "new", "langfuse")
        server.failing.append(lambda name, label, version: version == "2")
        clock.advance(61)  # the copy of v2 is past its TTL, its refresh fails: the copy, as for labels
        assert _hand_out(installed, "user-1") == (2, "new", "cache")
    [warning] = _rollout_warnings(caplog)
    assert "version 2" in warning and "ApiError" in warning


def test_the_plan_lookup_never_waits_out_get_prompts_retries(
    otel: Otel, langfuse_client: Any, server: LangfuseServer
) -> None:
    """Even when the app lets ``get_prompt`` retry its prompts (``max_retries=2``, 1 s apart),
    the plan is asked for once per lookup (``max_retries=0``)."""
    promptstamp.install(otel.tracer_provider, otel.logger_provider, langfuse_client,
                        fetch_timeout_seconds=FETCH_TIMEOUT, max_retries=2)
    _plan(server, share=100)
    _fail_plans(server)
    started = time.monotonic()
    with promptstamp.prompt(PROMPT, subject="user-1") as p:
        assert (p.version, p.rollout) == (1, None)
    assert time.monotonic() - started < 1.0
    # one get_prompt: 3 requests, Langfuse's HTTP layer retrying the 503 twice by itself
    assert [r.status for r in plan_requests(server)] == [503] * 3


def test_with_no_trace_id_each_prompt_is_a_subject_of_its_own() -> None:
    """No recording tracer at all (no valid trace id): a random subject per ``prompt()``, so the
    share still holds across calls; never one fixed subject for the whole process."""
    from promptstamp._context import _trace_subject

    first, second = _trace_subject(), _trace_subject()
    assert len(first) == 32 and int(first, 16) >= 0 and first != second
