"""Long requests at the OTel SDK's default export timing: every generation linked at the
``trace`` tier to the version its scope was handed.

Requests of 5, 10, 30 and 120 s with several generations spread over each, the app exporting
with the OTel SDK's defaults (``BatchSpanProcessor``: 5 s schedule delay; no Logs SDK), over
gRPC and HTTP. Same with a ``LoggerProvider`` also set up: the fetch record then reaches the
relay twice (log record and span event) and counts once.

Each app is a subprocess (its OTel globals are its own) with the real OTel SDK, the real
``langfuse`` client behind ``promptstamp.install()`` and OpenLLMetry's ``OpenAIInstrumentor``;
its requests run concurrently in threads, each a request span with one ``promptstamp.prompt``
scope opened at its start. The relay runs on its default hold window, exporting to a loopback
:class:`~promptstamp.testing.LangfuseServer`; model calls go to
:class:`~promptstamp.testing.FakeOpenAI`.
"""

from __future__ import annotations

import json
import textwrap
from collections import Counter

import pytest

from promptstamp.testing import FakeOpenAI
from tests.e2e.trust_apps import (
    APP_SETUP,
    App,
    app_environment,
    assert_linked_as_handed,
    default_hold_seconds,
    default_relay,
    langfuse_server,
    wait_for_generations,
)

pytest.importorskip("opentelemetry.instrumentation.openai")

# Each request: its own thread (a fresh context: nothing leaks between requests), a request
# span, one scope opened at its start, and ``n`` generations spread evenly from its start to its
# end (the first right after the fetch, the last ``seconds`` later).
APP = APP_SETUP + textwrap.dedent(
    """
    plan = json.loads(os.environ["PLAN"])  # [[seconds, generations], ...]
    results = [None] * len(plan)


    def handle(i, seconds, n):
        start = time.monotonic()
        with tracer.start_as_current_span(f"request {seconds}s") as root:
            with promptstamp.prompt(PROMPT, label="production") as p:
                made = 0
                for g in range(n):
                    sleep_until(start + seconds * g / (n - 1))
                    generate(p, i, g)
                    made += 1
        results[i] = {"trace_id": hex_trace_id(root), "version": p.version, "generations": made,
                      "seconds": seconds, "took": round(time.monotonic() - start, 2)}


    threads = [threading.Thread(target=handle, args=(i, s, n), name=f"request-{i}")
               for i, (s, n) in enumerate(plan)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    shut_down()
    say(event="done", requests=results)
    """
)


def run_requests(plan: list[tuple[float, int]], *, protocol: str, logs: bool) -> None:
    """Run ``plan`` concurrently in one app and check what Langfuse and the relay saw."""
    total = sum(n for _, n in plan)
    with langfuse_server(production=2) as langfuse, default_relay(langfuse) as relay, FakeOpenAI() as model:
        assert relay.cfg.hold.seconds == default_hold_seconds()
        endpoint = f"http://{relay.address if protocol == 'grpc' else relay.http_address}"
        environment = app_environment(langfuse, endpoint, model.base_url, protocol=protocol,
                                      PLAN=json.dumps(plan), LOGS="1" if logs else "0")
        with App(APP, environment) as app:
            done = app.expect("done", timeout=max(s for s, _ in plan) + 60)
            app.finish(timeout=30)
        requests = done["requests"]
        assert all(r is not None for r in requests), requests
        assert [r["version"] for r in requests] == [2] * len(plan)
        assert [r["generations"] for r in requests] == [n for _, n in plan]
        assert len(model.requests) == total

        wait_for_generations(langfuse, total, timeout=30)
        assert relay.stop(timeout=15) == 0
        assert_linked_as_handed(langfuse.generations(), requests)
        assert langfuse.rejected() == []

        stats = relay.processor.stats
        # Every generation found its trace's record on arrival: none waited in the hold window.
        assert stats.stamped == Counter({"trace": total}), stats
        assert stats.spans_held == 0, stats
        # One record per scope, counted once; with a LoggerProvider its second form (the log
        # record or the span event, whichever came second) is a duplicate, not a new record.
        assert stats.fetch_records == len(plan), stats
        assert stats.fetch_duplicates == (len(plan) if logs else 0), stats
        assert stats.fetch_invalid == 0, stats


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_requests_of_5_10_30_and_120_s_at_the_otel_defaults_are_linked_at_the_trace_tier() -> None:
    """Four concurrent requests of 5, 10, 30 and 120 s (3 or 4 generations each, spread from the
    start to the end of the request), exporting OTLP/gRPC with the default ``BatchSpanProcessor``
    and no Logs SDK, through a relay on its default hold window: every generation, also those
    made two minutes after the fetch, is linked at the ``trace`` tier to the version its scope
    was handed; none had to be held."""
    run_requests([(5, 3), (10, 3), (30, 4), (120, 4)], protocol="grpc", logs=False)


@pytest.mark.parametrize("logs", [False, True], ids=["tracing-only", "with-logs-sdk"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_long_requests_over_each_protocol_with_and_without_a_logs_sdk(protocol: str, logs: bool) -> None:
    """Concurrent requests of 6 and 12 s (3 and 4 generations) at the default export timing,
    over OTLP/gRPC and OTLP/HTTP, with tracing only and with a ``LoggerProvider`` (default
    ``BatchLogRecordProcessor``, OTLP log exporter to the relay) as well: every generation is
    linked at the ``trace`` tier to the version handed out, and each fetch counts once (with
    the Logs SDK its second form is counted as a duplicate)."""
    run_requests([(6, 3), (12, 4)], protocol=protocol, logs=logs)
