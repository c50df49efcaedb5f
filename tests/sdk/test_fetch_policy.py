"""The runtime fallback policy, row by row, through the real ``langfuse`` client against a
loopback Langfuse — and the truthfulness of ``source`` that the policy rests on."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan

import promptstamp
from promptstamp import _fetch
from promptstamp.testing import LangfuseServer

from .conftest import PROMPT, Clock, Otel, label_requests, plan_requests

VARIABLES = {"query": "Where is my order?", "region": "eu"}


def _fetch_once(otel: Otel, **kwargs: Any) -> tuple[str, int | None, str | None]:
    """One ``prompt()`` inside a span; returns (source, version, error_type)."""
    with otel.tracer.start_as_current_span("compose_answer"), promptstamp.prompt(PROMPT, **kwargs) as p:
        p.compile(**VARIABLES)
        return p.source, p.version, p.error_type


def _span(otel: Otel, name: str = "compose_answer") -> ReadableSpan:
    spans = [s for s in otel.spans.get_finished_spans() if s.name == name]
    return spans[-1]


# -- the happy path and the cache that keeps it cheap -------------------------------------------


def test_fetch_from_langfuse(installed: Otel, server: LangfuseServer) -> None:
    with promptstamp.prompt(PROMPT, label="production") as p:
        assert (p.name, p.label, p.version, p.source, p.type) == (
            PROMPT,
            "production",
            1,
            "langfuse",
            "chat",
        )
        assert p.error_type is None
        assert p.config == {"model": "gpt-4o-mini"}
        assert p.compile(**VARIABLES) == [
            {"role": "system", "content": "You are a support assistant. Escalate when unsure."},
            {"role": "user", "content": "Question: Where is my order?\nRegion: eu"},
        ]
    # The prompt by its label, and beside it the label's rollout plan (none: a 404, cached too).
    assert [(r.name, r.label, r.version, r.status) for r in server.prompt_requests] == [
        (PROMPT, "production", None, 200),
        (f"promptstamp-rollout/production/{PROMPT}", "active", None, 404),
    ]


def test_fresh_copy_is_served_without_a_request_then_refetched(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    assert _fetch_once(installed, cache_ttl_seconds=60) == ("langfuse", 1, None)
    clock.advance(59)
    assert _fetch_once(installed, cache_ttl_seconds=60) == ("langfuse", 1, None)
    assert len(label_requests(server)) == 1
    assert len(plan_requests(server)) == 1

    server.create_prompt(
        PROMPT, [{"role": "user", "content": "v2 {{query}} {{region}}"}], labels=["production"]
    )
    clock.advance(2)
    assert _fetch_once(installed, cache_ttl_seconds=60) == ("langfuse", 2, None)
    assert len(label_requests(server)) == 2
    assert len(plan_requests(server)) == 2


def test_cache_ttl_zero_goes_to_langfuse_every_time(installed: Otel, server: LangfuseServer) -> None:
    """Langfuse's own client cache is never consulted: every fetch past our TTL is a request."""
    for _ in range(3):
        assert _fetch_once(installed, cache_ttl_seconds=0) == ("langfuse", 1, None)
    assert len(label_requests(server)) == 3
    assert len(plan_requests(server)) == 3  # the plan has the prompt's TTL


def test_text_prompts(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt("greeting", "Hello {{name}}!", type="text", labels=["production"])
    with promptstamp.prompt("greeting", type="text") as p:
        assert p.type == "text"
        assert p.prompt == "Hello {{name}}!"
        assert p.compile(name="Ada") == "Hello Ada!"


def test_asking_for_the_wrong_type_fails_closed(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt("greeting", "Hello {{name}}!", type="text", labels=["production"])
    with pytest.raises(promptstamp.PromptNotFoundError, match="text prompt"):
        promptstamp.prompt("greeting").__enter__()


# -- row 1: timeout, connection error, 5xx → last known good, source=cache -----------------------


def test_5xx_serves_last_known_good_from_cache(installed: Otel, server: LangfuseServer, clock: Clock) -> None:
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.fail_prompts(503)
    clock.advance(120)  # past the 60 s TTL: this prompt() must ask Langfuse

    assert _fetch_once(installed) == ("cache", 1, "ApiError")

    # The real client retried the 503 itself (its HTTP layer, twice) before giving up.
    assert [r.status for r in label_requests(server)] == [200, 503, 503, 503]
    # The rollout plan is not asked for while the prompt's own fetch fails: one timeout, not two.
    assert [r.status for r in plan_requests(server)] == [404]
    span = _span(installed)
    assert span.attributes is not None
    assert span.attributes["app.prompt.fetch.source"] == "cache"
    assert span.attributes["app.prompt.fetch.error_type"] == "ApiError"
    [event] = [e for e in span.events if e.name == "prompt.cache_fallback"]
    assert dict(event.attributes or {}) == {
        "app.prompt.key": PROMPT,
        "app.prompt.label": "production",
        "app.prompt.version": 1,
        "app.prompt.fetch.error_type": "ApiError",
    }
    record = installed.fetch_records()[-1].log_record
    assert dict(record.attributes or {}) == {
        "app.prompt.key": PROMPT,
        "app.prompt.label": "production",
        "app.prompt.version": 1,
        "app.prompt.fetch.source": "cache",
        "app.prompt.fetch.error_type": "ApiError",
    }


def test_timeout_serves_last_known_good_from_cache(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.delay_prompts(2.0)  # far beyond the client's 0.3 s fetch timeout
    clock.advance(120)
    assert _fetch_once(installed) == ("cache", 1, "ReadTimeout")
    assert _span(installed).attributes["app.prompt.fetch.error_type"] == "ReadTimeout"  # type: ignore[index]


def test_connection_error_serves_last_known_good_from_cache(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.stop()
    clock.advance(120)
    assert _fetch_once(installed) == ("cache", 1, "ConnectError")


def test_cache_is_preferred_to_an_explicit_fallback(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    fallback = [{"role": "user", "content": "{{query}} {{region}}"}]
    assert _fetch_once(installed, fallback=fallback) == ("langfuse", 1, None)
    server.fail_prompts(500)
    clock.advance(120)
    assert _fetch_once(installed, fallback=fallback) == ("cache", 1, "ApiError")


def test_after_a_failure_langfuse_is_not_asked_again_for_a_few_seconds(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    assert _fetch_once(installed, cache_ttl_seconds=0) == ("langfuse", 1, None)
    server.fail_prompts(503)
    assert _fetch_once(installed, cache_ttl_seconds=0) == ("cache", 1, "ApiError")
    asked = len(server.prompt_requests)

    clock.advance(_fetch.FAILURE_BACKOFF_SECONDS - 1)
    assert _fetch_once(installed, cache_ttl_seconds=0) == ("cache", 1, "ApiError")
    assert len(server.prompt_requests) == asked  # an outage costs one timeout, not one per call

    server.reset_faults()
    clock.advance(2)
    assert _fetch_once(installed, cache_ttl_seconds=0) == ("langfuse", 1, None)
    assert [r.status for r in server.prompt_requests[asked:]] == [200, 404]  # the prompt, its plan


# -- row 2: nothing cached, or the copy too old → PromptUnavailableError ------------------------


def test_nothing_cached_raises_unavailable(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with (
        installed.tracer.start_as_current_span("compose_answer"),
        pytest.raises(promptstamp.PromptUnavailableError) as raised,
    ):
        with promptstamp.prompt(PROMPT):
            pytest.fail("the block must not run")
    assert (raised.value.name, raised.value.label, raised.value.error_type) == (
        PROMPT,
        "production",
        "ApiError",
    )
    assert raised.value.stale_seconds is None
    attributes = _span(installed).attributes or {}
    assert attributes["app.prompt.fetch.source"] == "unavailable"
    assert attributes["app.prompt.fetch.error_type"] == "ApiError"
    assert "app.prompt.key" not in attributes
    assert installed.fetch_records() == []  # nothing was handed out: no fetch log record


def test_cache_older_than_max_stale_raises_unavailable(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.fail_prompts(503)

    clock.advance(299)  # default max_stale_seconds is 300
    assert _fetch_once(installed) == ("cache", 1, "ApiError")

    clock.advance(_fetch.FAILURE_BACKOFF_SECONDS + 1)  # 305 s old now
    with pytest.raises(promptstamp.PromptUnavailableError, match="too old") as raised:
        _fetch_once(installed)
    assert raised.value.stale_seconds == pytest.approx(305)
    assert (_span(installed).attributes or {})["app.prompt.fetch.source"] == "unavailable"


def test_max_stale_seconds_per_call(installed: Otel, server: LangfuseServer, clock: Clock) -> None:
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.fail_prompts(503)
    clock.advance(90)
    assert _fetch_once(installed, max_stale_seconds=600) == ("cache", 1, "ApiError")
    with pytest.raises(promptstamp.PromptUnavailableError):
        _fetch_once(installed, max_stale_seconds=60)


def test_max_stale_seconds_set_by_install(installed: Otel, server: LangfuseServer, clock: Clock) -> None:
    promptstamp.install(max_stale_seconds=30)
    assert _fetch_once(installed) == ("langfuse", 1, None)
    server.fail_prompts(503)
    clock.advance(61)
    with pytest.raises(promptstamp.PromptUnavailableError):
        _fetch_once(installed)


# -- row 3: 404 → fail closed --------------------------------------------------------------------


def test_missing_label_fails_closed(installed: Otel, server: LangfuseServer) -> None:
    with (
        installed.tracer.start_as_current_span("compose_answer"),
        pytest.raises(promptstamp.PromptNotFoundError) as raised,
    ):
        promptstamp.prompt(PROMPT, label="prod-b").__enter__()
    assert (raised.value.name, raised.value.label) == (PROMPT, "prod-b")
    attributes = _span(installed).attributes or {}
    assert attributes["app.prompt.fetch.source"] == "unavailable"
    assert attributes["app.prompt.fetch.error_type"] == "NotFoundError"
    # Never "latest": the request asked for the label, and nothing else was asked.
    assert [(r.label, r.status) for r in server.prompt_requests] == [("prod-b", 404)]


def test_404_fails_closed_even_with_a_cached_copy_and_a_fallback(
    installed: Otel, server: LangfuseServer, clock: Clock
) -> None:
    fallback = [{"role": "user", "content": "{{query}} {{region}}"}]
    assert _fetch_once(installed, fallback=fallback) == ("langfuse", 1, None)
    server.fail_prompts(404)
    clock.advance(120)
    with pytest.raises(promptstamp.PromptNotFoundError):
        _fetch_once(installed, fallback=fallback)

    # The cached copy was dropped with the 404: a later outage cannot resurrect it.
    server.fail_prompts(503)
    clock.advance(_fetch.FAILURE_BACKOFF_SECONDS + 1)
    with pytest.raises(promptstamp.PromptUnavailableError, match="nothing cached"):
        _fetch_once(installed)


# -- row 4: a missing variable --------------------------------------------------------------------


def test_missing_variables_raise_before_the_model_call(installed: Otel) -> None:
    model_called = False
    with pytest.raises(promptstamp.PromptVariableError) as raised, promptstamp.prompt(PROMPT) as p:
        p.compile(query="Where is my order?", unused="ignored")
        model_called = True
    assert not model_called
    assert raised.value.missing == ("region",)
    assert "region" in str(raised.value)


def test_missing_chat_placeholder_is_a_missing_variable(installed: Otel, server: LangfuseServer) -> None:
    server.create_prompt(
        "with-history",
        [
            {"role": "system", "content": "Be brief, {{name}}."},
            {"type": "placeholder", "name": "history"},
        ],
        labels=["production"],
    )
    with promptstamp.prompt("with-history") as p:
        assert p.variables == ("name", "history")
        with pytest.raises(promptstamp.PromptVariableError) as raised:
            p.compile()
        assert raised.value.missing == ("name", "history")
        history = [{"role": "user", "content": "literal {{not_a_variable}}"}]
        assert p.compile(name="Ada", history=history) == [
            {"role": "system", "content": "Be brief, Ada."},
            {"role": "user", "content": "literal {{not_a_variable}}"},
        ]


# -- row 5: an explicit code-embedded fallback ----------------------------------------------------


def test_explicit_fallback_when_nothing_is_cached(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    fallback = [
        {"role": "system", "content": "Answer from authorized context only."},
        {"role": "user", "content": "{{query}} ({{region}})"},
    ]
    with (
        installed.tracer.start_as_current_span("compose_answer"),
        promptstamp.prompt(PROMPT, fallback=fallback) as p,
    ):
        assert (p.source, p.version, p.error_type, p.config) == (
            "fallback",
            None,
            "ApiError",
            {},
        )
        assert p.compile(**VARIABLES)[1] == {"role": "user", "content": "Where is my order? (eu)"}
    record = installed.fetch_records()[-1].log_record
    assert dict(record.attributes or {}) == {
        "app.prompt.key": PROMPT,
        "app.prompt.label": "production",
        "app.prompt.fetch.source": "fallback",
        "app.prompt.fetch.error_type": "ApiError",
    }
    assert (_span(installed).attributes or {})["app.prompt.fetch.source"] == "fallback"


def test_explicit_fallback_is_never_used_when_langfuse_answers(installed: Otel) -> None:
    assert _fetch_once(installed, fallback=[{"role": "user", "content": "x"}]) == (
        "langfuse",
        1,
        None,
    )


def test_fallback_must_match_the_prompt_type() -> None:
    with pytest.raises(TypeError):
        promptstamp.prompt(PROMPT, type="text", fallback=[{"role": "user", "content": "x"}])  # type: ignore[call-overload]
    with pytest.raises(TypeError):
        promptstamp.prompt(PROMPT, fallback="plain text")  # type: ignore[arg-type]


# -- the client ------------------------------------------------------------------------------------


def test_client_built_lazily_from_langfuse_env(
    otel: Otel, server: LangfuseServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from promptstamp.testing import reset_langfuse_clients

    monkeypatch.setenv("LANGFUSE_PUBLIC_KEY", server.public_key)
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", server.secret_key)
    monkeypatch.setenv("LANGFUSE_BASE_URL", server.base_url)
    promptstamp.install(otel.tracer_provider, otel.logger_provider)
    try:
        assert server.prompt_requests == []
        with promptstamp.prompt(PROMPT) as p:
            assert (p.source, p.version) == ("langfuse", 1)
    finally:
        reset_langfuse_clients()


def test_async_fetch(installed: Otel, server: LangfuseServer, clock: Clock) -> None:
    async def main() -> list[tuple[str, int | None]]:
        seen = []
        for _ in range(2):
            async with promptstamp.prompt(PROMPT) as p:
                seen.append((p.source, p.version))
        server.fail_prompts(503)
        clock.advance(120)
        async with promptstamp.prompt(PROMPT) as p:
            seen.append((p.source, p.version))
        return seen

    assert asyncio.run(main()) == [("langfuse", 1), ("langfuse", 1), ("cache", 1)]
    assert len([r for r in server.prompt_requests if r.status == 200]) == 1
