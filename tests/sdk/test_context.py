"""``prompt()`` as a context: baggage in, baggage out, per thread and per asyncio task."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from opentelemetry import baggage, context, propagate
from opentelemetry.baggage.propagation import W3CBaggagePropagator

import promptstamp
from promptstamp.testing import LangfuseServer

from .conftest import CHAT, PROMPT, Otel

KEY, LABEL = "app.prompt.key", "app.prompt.label"


def _current() -> tuple[object, object]:
    return baggage.get_baggage(KEY), baggage.get_baggage(LABEL)


@pytest.fixture
def ab_server(server: LangfuseServer) -> LangfuseServer:
    server.set_labels(PROMPT, 1, ["prod-a"])
    server.create_prompt(PROMPT, CHAT, labels=["prod-b"])
    return server


def test_baggage_is_set_inside_and_detached_on_exit(installed: Otel) -> None:
    assert _current() == (None, None)
    with promptstamp.prompt(PROMPT, label="production"):
        assert _current() == (PROMPT, "production")
    assert _current() == (None, None)


def test_exceptions_still_detach(installed: Otel) -> None:
    with pytest.raises(ZeroDivisionError), promptstamp.prompt(PROMPT):
        assert _current() == (PROMPT, "production")
        1 / 0  # noqa: B018
    assert _current() == (None, None)


def test_failed_fetch_attaches_nothing(installed: Otel, server: LangfuseServer) -> None:
    server.fail_prompts(503)
    with pytest.raises(promptstamp.PromptUnavailableError), promptstamp.prompt(PROMPT):
        pass
    assert _current() == (None, None)


def test_nested_prompts_restore_the_outer_one(installed: Otel, ab_server: LangfuseServer) -> None:
    with promptstamp.prompt(PROMPT, label="prod-a"):
        with promptstamp.prompt(PROMPT, label="prod-b") as inner:
            assert inner.version == 2
            assert _current() == (PROMPT, "prod-b")
        assert _current() == (PROMPT, "prod-a")


def test_a_scope_is_entered_once(installed: Otel) -> None:
    scope = promptstamp.prompt(PROMPT)
    with scope, pytest.raises(RuntimeError, match="once"), scope:
        pass


def test_threads_do_not_see_each_others_labels(installed: Otel, ab_server: LangfuseServer) -> None:
    labels = ["prod-a", "prod-b"] * 8
    barrier = threading.Barrier(len(labels))

    def work(label: str) -> tuple[str, object, object, str]:
        with promptstamp.prompt(PROMPT, label=label) as p:
            barrier.wait(timeout=5)  # every thread is inside its block at the same time
            seen = _current()
            with installed.tracer.start_as_current_span(f"llm-{label}-{threading.get_ident()}"):
                pass
            barrier.wait(timeout=5)
            return label, seen[0], seen[1], f"v{p.version}"

    with ThreadPoolExecutor(max_workers=len(labels)) as pool:
        results = list(pool.map(work, labels))
    for label, key, seen_label, version in results:
        assert (key, seen_label) == (PROMPT, label)
        assert version == {"prod-a": "v1", "prod-b": "v2"}[label]
    for span in installed.spans.get_finished_spans():
        stamped = (span.attributes or {}).get(LABEL)
        assert isinstance(stamped, str)
        if span.name.startswith("promptstamp."):  # the fetch and scope spans: their own label
            continue
        assert span.name.startswith(f"llm-{stamped}-")
    assert _current() == (None, None)


def test_asyncio_tasks_do_not_see_each_others_labels(installed: Otel, ab_server: LangfuseServer) -> None:
    async def work(label: str, fail: bool) -> tuple[object, object]:
        async with promptstamp.prompt(PROMPT, label=label):
            await asyncio.sleep(0)  # interleave with every other task
            seen = _current()
            with installed.tracer.start_as_current_span(f"llm-{label}"):
                await asyncio.sleep(0)
            if fail:
                raise ValueError(label)
            return seen

    async def main() -> list[tuple[object, object] | BaseException]:
        tasks = [work(label, fail=i % 3 == 0) for i, label in enumerate(["prod-a", "prod-b"] * 6)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert _current() == (None, None)  # nothing leaked into the parent task
        return results

    results = asyncio.run(main())
    for i, (label, result) in enumerate(zip(["prod-a", "prod-b"] * 6, results, strict=True)):
        if i % 3 == 0:
            assert isinstance(result, ValueError)
        else:
            assert result == (PROMPT, label)
    llm = [s for s in installed.spans.get_finished_spans() if not s.name.startswith("promptstamp.")]
    assert len(llm) == 12
    for span in llm:
        stamped = (span.attributes or {}).get(LABEL)
        assert isinstance(stamped, str)
        assert span.name == f"llm-{stamped}"


def test_baggage_goes_out_in_the_w3c_header(installed: Otel) -> None:
    propagator = W3CBaggagePropagator()
    carrier: dict[str, str] = {}
    with promptstamp.prompt(PROMPT, label="production"):
        propagator.inject(carrier)
    assert carrier == {"baggage": "app.prompt.key=order-status-answer,app.prompt.label=production"}

    after: dict[str, str] = {}
    propagator.inject(after)
    assert after == {}


def test_only_the_two_entries_travel_never_the_subject_id(installed: Otel, ab_server: LangfuseServer) -> None:
    subject = "usr_pseudo_4242"
    label = promptstamp.label_for(subject, {"prod-a": 0.5, "prod-b": 0.5}, salt="exp-1")
    carrier: dict[str, str] = {}
    with promptstamp.prompt(PROMPT, label=label):
        W3CBaggagePropagator().inject(carrier)
        assert set(baggage.get_all()) == {KEY, LABEL}
    assert subject not in carrier["baggage"]
    assert carrier["baggage"] == f"app.prompt.key={PROMPT},app.prompt.label={label}"


@pytest.mark.parametrize(
    ("name", "label"),
    [
        ("ordér-status", "production"),  # not ASCII: the propagator would drop it
        (PROMPT, "prodüction"),
        (PROMPT, "prod\nuction"),
        ("", "production"),
        (PROMPT, ""),
        ("x" * 201, "production"),
        (PROMPT, "l" * 101),
        (" order-status", "production"),
    ],
)
def test_key_and_label_must_be_short_ascii(name: str, label: str) -> None:
    with pytest.raises(ValueError, match=r"prompt (name|label)"):
        promptstamp.prompt(name, label=label)


def test_untrusted_inbound_prompt_baggage_is_ignored(installed: Otel) -> None:
    inbound = {
        "baggage": "app.prompt.key=evil,app.prompt.label=jailbreak,tenant=acme",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    }
    trusted = propagate.extract(inbound)
    assert baggage.get_baggage(KEY, trusted) == "evil"  # trusted by default (contract §1)

    promptstamp.install(trust_inbound_baggage=False)
    untrusted = propagate.extract(inbound)
    assert baggage.get_all(untrusted) == {"tenant": "acme"}
    token = context.attach(untrusted)
    try:
        with installed.tracer.start_as_current_span("handler") as span:
            assert span.get_span_context().trace_id == 0x0AF7651916CD43DD8448EB211C80319C
            # Locally set entries survive a later extract with no header of its own.
            with promptstamp.prompt(PROMPT):
                assert _current() == (PROMPT, "production")
                assert baggage.get_baggage(KEY, propagate.extract({})) == PROMPT
    finally:
        context.detach(token)
    assert KEY not in (installed.finished()["handler"].attributes or {})

    promptstamp.install(trust_inbound_baggage=True)
    assert baggage.get_baggage(KEY, propagate.extract(inbound)) == "evil"


def test_untrusted_extract_keeps_a_local_prompt_over_an_inbound_one(installed: Otel) -> None:
    promptstamp.install(trust_inbound_baggage=False)
    with promptstamp.prompt(PROMPT, label="production"):
        ctx = propagate.extract({"baggage": "app.prompt.key=evil,app.prompt.label=x"})
        assert baggage.get_baggage(KEY, ctx) == PROMPT
        assert baggage.get_baggage(LABEL, ctx) == "production"
