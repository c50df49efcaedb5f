"""The pytest plugin and fixtures of ``promptstamp.testing``, used as a user's project uses them.

The plugin tests run pytest in a subprocess on a project made by ``pytester``: the plugin is
found through its ``pytest11`` entry point, as it is once promptstamp is installed. The live
relay tests use the fixture in this suite (the same entry point loaded it) with a real
OpenTelemetry SDK app: its own OTLP exporters, the real ``langfuse`` client, promptstamp.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import promptstamp
from promptstamp import _install
from promptstamp.testing import LiveRelay, assert_all_linked, reset_langfuse_clients
from tests.waiting import wait_until

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "replay" / "recordings" / "openllmetry.jsonl"

PASSING_AND_FAILING = '''
from pathlib import Path

from promptstamp.testing import assert_all_linked

HERE = Path(__file__).parent


def test_recording_links(promptstamp_replay):
    result = promptstamp_replay(HERE / "good.jsonl")
    assert_all_linked(result)
    assert sorted(g.resolution for g in result.generations) == ["instance", "trace", "trace", "trace"]


def test_fallback_recording_links(promptstamp_replay):
    assert_all_linked(promptstamp_replay(HERE / "fallback.jsonl"))
'''


def _project(pytester: pytest.Pytester) -> None:
    lines = RECORDING.read_text().splitlines()
    (pytester.path / "good.jsonl").write_text("\n".join(lines) + "\n")
    # The first fetch (trace 17fb8f63…, label production) served a code-embedded fallback.
    lines[0] = lines[0].replace('"stringValue":"langfuse"', '"stringValue":"fallback"', 1)
    lines[0] = lines[0].replace(',{"key":"app.prompt.version","value":{"intValue":"1"}}', '', 1)  # no version
    (pytester.path / "fallback.jsonl").write_text("\n".join(lines) + "\n")


def test_plugin_passing_and_failing_test_in_a_user_project(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makepyfile(test_links=PASSING_AND_FAILING)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "1 of 4 generation(s) not linked to a prompt version" in out
    assert ("trace 17fb8f63d8e5106924a62265985b74a1, span 'openai.chat', key 'order-status-answer', "
            "label 'production': a fetch record with source fallback") in out


def test_fixtures_work_without_the_plugin_imported_into_a_conftest(pytester: pytest.Pytester) -> None:
    _project(pytester)
    pytester.makeconftest("from promptstamp.testing import promptstamp_relay, promptstamp_replay  # noqa: F401\n")
    pytester.makepyfile(test_links='''
from pathlib import Path

from promptstamp.testing import assert_all_linked


def test_recording_links(promptstamp_replay):
    assert_all_linked(promptstamp_replay(Path(__file__).parent / "good.jsonl"))


def test_relay_starts(promptstamp_relay):
    assert promptstamp_relay.otlp_grpc_endpoint.startswith("http://127.0.0.1:")
''')
    result = pytester.runpytest_subprocess("-p", "no:promptstamp", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


def test_the_plugin_imports_neither_the_relay_nor_protobuf_at_start_up(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_startup='''
import sys


def test_nothing_heavy_loaded():
    assert "promptstamp.testing._plugin" in sys.modules  # the plugin is loaded
    heavy = [m for m in sys.modules if m.startswith(("promptstamp_relay", "opentelemetry.proto", "grpc"))]
    assert heavy == []
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_plugin_is_registered_in_this_suite(request: pytest.FixtureRequest) -> None:
    assert request.config.pluginmanager.has_plugin("promptstamp")


# -- promptstamp_relay with a real OpenTelemetry SDK app -------------------------------------------

GREETING = [{"role": "system", "content": "You greet {{name}}."}]


class App:
    """A small app: OTel SDK tracing (its own OTLP exporter), the fetch log as span events or log
    records, the real langfuse client, promptstamp installed."""

    def __init__(self, relay: LiveRelay, protocol: str, with_logs: bool) -> None:
        from langfuse import Langfuse

        resource = Resource.create({"service.name": "greeter", "service.instance.id": f"greeter-{uuid.uuid4().hex[:6]}"})
        self.tp = TracerProvider(resource=resource)
        self.lp: Any = None
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            span_exporter: Any = OTLPSpanExporter(endpoint=relay.otlp_grpc_endpoint, insecure=True)
            log_exporter: Any = OTLPLogExporter(endpoint=relay.otlp_grpc_endpoint, insecure=True)
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogs
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpans

            assert relay.otlp_http_endpoint is not None
            span_exporter = HttpSpans(endpoint=relay.otlp_http_endpoint + "/v1/traces")
            log_exporter = HttpLogs(endpoint=relay.otlp_http_endpoint + "/v1/logs")
        self.tp.add_span_processor(BatchSpanProcessor(span_exporter))
        if with_logs:
            from opentelemetry.sdk._logs import LoggerProvider
            from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

            self.lp = LoggerProvider(resource=resource)
            self.lp.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        self.langfuse = Langfuse(public_key=relay.langfuse.public_key, secret_key=relay.langfuse.secret_key,
                                 base_url=relay.langfuse.base_url, tracing_enabled=False)
        promptstamp.install(self.tp, self.lp, self.langfuse, fetch_timeout_seconds=5)
        self.tracer = self.tp.get_tracer("greeter")

    def answer(self, name: str, *, operation: str = "chat") -> None:
        with self.tracer.start_as_current_span(f"greet {name}"), \
                promptstamp.prompt("greeting", label="production") as p:
            p.compile(name=name)
            with self.tracer.start_as_current_span(
                    "model call", attributes={"gen_ai.operation.name": operation,
                                              "gen_ai.request.model": "gpt-4o-mini"}):
                pass

    def shutdown(self) -> None:
        self.tp.shutdown()
        if self.lp is not None:
            self.lp.shutdown()


@pytest.fixture
def app_factory(promptstamp_relay: LiveRelay) -> Iterator[Any]:
    apps: list[App] = []
    promptstamp_relay.langfuse.create_prompt("greeting", GREETING, labels=["production"])

    def make(protocol: str, with_logs: bool) -> App:
        app = App(promptstamp_relay, protocol, with_logs)
        apps.append(app)
        return app

    _install._reset_for_tests()
    yield make
    for app in apps:
        app.shutdown()
    _install._reset_for_tests()
    reset_langfuse_clients()


@pytest.mark.parametrize(("protocol", "with_logs"), [("grpc", True), ("grpc", False), ("http", False)])
def test_live_relay_links_a_real_apps_generations(
    protocol: str, with_logs: bool, promptstamp_relay: LiveRelay, app_factory: Any
) -> None:
    if protocol == "http" and promptstamp_relay.otlp_http_endpoint is None:
        pytest.fail("the relay has no OTLP/HTTP receiver")
    app = app_factory(protocol, with_logs)
    app.answer("Ada")
    app.answer("Grace")
    app.tp.force_flush()
    if app.lp is not None:
        app.lp.force_flush()
    generations = promptstamp_relay.generations(wait_for=2, timeout=15)
    assert [(g.span_name, g.prompt_name, g.version, g.label, g.resolution, g.source) for g in generations] == [
        ("model call", "greeting", 1, "production", "trace", "langfuse")] * 2
    assert_all_linked(promptstamp_relay, tier="trace")
    names = {o.name for o in promptstamp_relay.received_spans()}
    assert names == {"greet Ada", "greet Grace", "model call", "promptstamp.fetch"}


def test_live_relay_reports_a_span_langfuse_types_as_an_agent(promptstamp_relay: LiveRelay, app_factory: Any) -> None:
    app = app_factory("grpc", False)
    app.answer("Ada", operation="invoke_agent")  # a model attribute, but Langfuse types it AGENT
    app.tp.force_flush()
    wait_until(lambda: {o.name for o in promptstamp_relay.received_spans()} >= {"greet Ada", "model call"},
               what="both spans at the loopback Langfuse")
    assert promptstamp_relay.generations() == []
    with pytest.raises(AssertionError) as failed:
        assert_all_linked(promptstamp_relay)
    message = str(failed.value)
    assert "span 'model call', key 'greeting', label 'production': not a generation by Langfuse's rules" in message
    assert "Langfuse types it AGENT" in message
