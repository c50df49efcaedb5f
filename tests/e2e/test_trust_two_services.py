"""Two services, one trace: A opens ``prompt()`` and calls B over instrumented HTTP; B's
generations are exported before A's spans (A's export delay longer than B's): B's generations
are linked to what A was handed.

Service A (a subprocess) handles each request in a request span: ``promptstamp.prompt(...)``,
then a client span and an HTTP call to B carrying W3C trace context and baggage
(``opentelemetry.propagate.inject``). Service B (another subprocess: its own
``TracerProvider``, ``service.name`` and instance id, ``promptstamp.install()`` so its baggage
span processor copies ``app.prompt.*`` onto its spans; it never fetches a prompt) extracts the
context (``opentelemetry.propagate.extract``), makes a model call through the OpenLLMetry-
instrumented OpenAI client and answers. A exports with the OTel SDK's default 5 s schedule
delay, B with 500 ms, so B's generations reach the relay up to ~5 s before A's fetch span.

On the relay's default hold window they wait for A's record and are linked at the ``trace``
tier. With a 1 s window the failure is not silent: what outlived the window goes to Langfuse
unresolved, and the relay counts it (and the record that came too late).
"""

from __future__ import annotations

import textwrap
from collections import Counter
from typing import Any

import pytest

from promptstamp.testing import FakeOpenAI, LangfuseServer, Observation
from promptstamp_relay.server import RelayServer
from tests.e2e.trust_apps import (
    APP_SETUP,
    PROMPT,
    App,
    app_environment,
    assert_linked_as_handed,
    default_hold_seconds,
    default_relay,
    describe,
    langfuse_server,
    wait_for_generations,
)

pytest.importorskip("opentelemetry.instrumentation.openai")

REQUESTS = 6
# A's requests start this far apart: over its 5 s export cycle, so their fetch spans wait for
# A's next export for different lengths of time (B's generations, 0.5 s, always go first).
SPACING_SECONDS = 1.1
SERVICE_A, SERVICE_B = "order-status", "answer-writer"

SERVICE_B_APP = APP_SETUP + textwrap.dedent(
    """
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from opentelemetry import context, propagate
    from opentelemetry.trace import SpanKind


    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token = context.attach(propagate.extract(self.headers))  # traceparent + baggage
            try:
                with tracer.start_as_current_span("POST /answer", kind=SpanKind.SERVER) as span:
                    reply = client.chat.completions.create(model=body["model"], messages=body["messages"])
                    answered = {"answer": reply.choices[0].message.content, "trace_id": hex_trace_id(span)}
            finally:
                context.detach(token)
            data = json.dumps(answered).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format, *args):
            pass


    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    say(event="listening", port=server.server_address[1])
    sys.stdin.readline()  # until the test closes stdin
    server.shutdown()
    server.server_close()
    shut_down()
    """
)

SERVICE_A_APP = APP_SETUP + textwrap.dedent(
    """
    import urllib.request

    from opentelemetry import propagate
    from opentelemetry.trace import SpanKind

    results = []
    start = time.monotonic()
    for i in range(int(os.environ["REQUESTS"])):
        sleep_until(start + i * float(os.environ["SPACING"]))
        with tracer.start_as_current_span("handle_request") as root:
            with promptstamp.prompt(PROMPT, label="production") as p:
                with tracer.start_as_current_span("POST answer-writer /answer", kind=SpanKind.CLIENT):
                    headers = {"Content-Type": "application/json"}
                    propagate.inject(headers)
                    body = {"model": p.config["model"], "messages": p.compile(query=f"order {i}?", region="eu")}
                    call = urllib.request.Request(os.environ["SERVICE_B_URL"], data=json.dumps(body).encode(),
                                                  headers=headers, method="POST")
                    with urllib.request.urlopen(call, timeout=30) as response:
                        answered = json.loads(response.read())
        results.append({"trace_id": hex_trace_id(root), "version": p.version, "generations": 1,
                        "b_trace_id": answered["trace_id"], "baggage": headers.get("baggage", "")})
    shut_down()
    say(event="done", requests=results)
    """
)


def run_services(langfuse: LangfuseServer, relay: RelayServer) -> tuple[list[dict[str, Any]], list[Observation]]:
    """Start B, run A's requests against it, stop both; A's requests and Langfuse's
    generations (all B's), once every one has arrived and the relay has stopped."""
    endpoint = f"http://{relay.address}"
    with FakeOpenAI() as model:
        b_environment = app_environment(langfuse, endpoint, model.base_url, service=SERVICE_B,
                                        instance=f"{SERVICE_B}-1", OTEL_BSP_SCHEDULE_DELAY="500")
        with App(SERVICE_B_APP, b_environment, name="service B") as service_b:
            port = service_b.expect("listening", timeout=60)["port"]
            a_environment = app_environment(langfuse, endpoint, model.base_url, service=SERVICE_A,
                                            instance=f"{SERVICE_A}-1", REQUESTS=str(REQUESTS),
                                            SPACING=str(SPACING_SECONDS),
                                            SERVICE_B_URL=f"http://127.0.0.1:{port}/answer")
            with App(SERVICE_A_APP, a_environment, name="service A") as service_a:
                requests: list[dict[str, Any]] = service_a.expect("done", timeout=90)["requests"]
                service_a.finish(timeout=30)
            service_b.finish(timeout=30)
        assert len(model.requests) == REQUESTS
    for r in requests:
        assert r["b_trace_id"] == r["trace_id"], r  # B's spans are in A's trace
        assert f"app.prompt.key={PROMPT}" in r["baggage"], r  # and the prompt key went along
    wait_for_generations(langfuse, REQUESTS, timeout=30)
    assert relay.stop(timeout=15) == 0
    generations = langfuse.generations()
    assert len(generations) == REQUESTS
    assert {g.service_name for g in generations} == {SERVICE_B}
    assert langfuse.rejected() == []
    return requests, generations


def test_b_generations_exported_before_a_fetch_span_are_linked_to_what_a_was_handed() -> None:
    """On the relay's default hold window, B's generations, which reach the relay before A's
    fetch span (A's 5 s export delay against B's 0.5 s), are held for A's record and then linked
    at the ``trace`` tier to the version A's scope was handed (v1: production; v2 is the newest
    version). ``spans_held > 0`` shows that they did arrive first."""
    with langfuse_server(production=1, versions=2) as langfuse, default_relay(langfuse) as relay:
        assert relay.cfg.hold.seconds == default_hold_seconds()
        requests, generations = run_services(langfuse, relay)
    assert [r["version"] for r in requests] == [1] * REQUESTS
    assert_linked_as_handed(generations, requests, service=SERVICE_B)
    stats = relay.processor.stats
    assert stats.spans_held >= 1, stats
    assert stats.stamped == Counter({"trace": REQUESTS}), stats
    assert stats.fetch_records == REQUESTS, stats


def test_with_a_1_s_hold_window_b_generations_that_outlive_it_are_unresolved_and_counted() -> None:
    """The same two services with the hold window cut to 1 s (shorter than A's export delay):
    the failure mode is not silent. B's generations whose trace's record came within the window
    are linked at the ``trace`` tier to what A was handed; the others reach Langfuse unresolved
    (metadata only, no link, never a guess from another trace), and the relay counts each as
    unresolved for ``hold_expired`` and, when A's record then arrives, as a late record of a
    generation sent unresolved."""
    with langfuse_server(production=1, versions=2) as langfuse, default_relay(langfuse, **{"hold.seconds": 1.0}) \
            as relay:
        requests, generations = run_services(langfuse, relay)
    handed = {r["trace_id"]: r["version"] for r in requests}
    late = [g for g in generations if g.metadata.get("prompt_resolution") != "trace"]
    on_time = [g for g in generations if g.metadata.get("prompt_resolution") == "trace"]
    assert late, "every generation was linked at the trace tier: the 1 s window did not expire"
    for gen in on_time:
        assert (gen.prompt_name, gen.prompt_version) == (PROMPT, handed[gen.trace_id]), describe(gen)
    for gen in late:
        assert gen.metadata.get("prompt_resolution") == "unresolved", describe(gen)
        assert (gen.prompt_name, gen.prompt_version) == (None, None), describe(gen)
        assert (gen.metadata.get("prompt_name"), gen.metadata.get("prompt_label")) == (PROMPT, "production")
    stats = relay.processor.stats
    assert stats.spans_held >= len(late), stats  # each of them waited its window out
    assert stats.stamped == Counter({"trace": len(on_time), "unresolved": len(late)}), stats
    assert stats.unresolved == Counter({"hold_expired": len(late)}), stats
    assert stats.late_records == Counter({"was_unresolved": len(late)}), stats
