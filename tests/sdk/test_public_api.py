"""The public surface: exactly these names, a cheap import, and ``configure()`` end to end.

``configure()`` sets process-global OpenTelemetry providers, which can be set only once per
process, so those tests run in a fresh interpreter.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import promptstamp
from promptstamp.testing import LangfuseServer

from .conftest import PROMPT, Otel

SDK_DIR = str(Path(promptstamp.__file__).resolve().parent.parent)


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_"))}
    environment["PYTHONPATH"] = os.pathsep.join([SDK_DIR, *filter(None, [os.environ.get("PYTHONPATH")])])
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )


def test_exported_names() -> None:
    assert sorted(promptstamp.__all__) == [
        "ChatPrompt",
        "PromptError",
        "PromptNotFoundError",
        "PromptScope",
        "PromptUnavailableError",
        "PromptVariableError",
        "TextPrompt",
        "__version__",
        "configure",
        "install",
        "label_for",
        "prompt",
        "should_export_span",
    ]
    for name in promptstamp.__all__:
        assert getattr(promptstamp, name) is not None
    public = {name for name in dir(promptstamp) if not name.startswith("_")}
    assert public - set(promptstamp.__all__) <= {"contract", "testing"}  # submodules only


def test_public_names_say_promptstamp_wherever_they_are_defined() -> None:
    for name in promptstamp.__all__:
        if not name.startswith("__"):
            assert getattr(promptstamp, name).__module__ == "promptstamp", name
    assert repr(promptstamp.PromptScope) == "<class 'promptstamp.PromptScope'>"


def test_the_types_users_annotate_with_are_what_prompt_returns(
    installed: Otel, server: LangfuseServer
) -> None:
    server.create_prompt("greeting", "Hello {{name}}", type="text", labels=["production"])
    chat_scope: promptstamp.PromptScope[promptstamp.ChatPrompt] = promptstamp.prompt(PROMPT)
    assert isinstance(chat_scope, promptstamp.PromptScope)
    with chat_scope as chat:
        assert isinstance(chat, promptstamp.ChatPrompt)
    text_scope: promptstamp.PromptScope[promptstamp.TextPrompt] = promptstamp.prompt("greeting", type="text")
    with text_scope as text:
        assert isinstance(text, promptstamp.TextPrompt)
        assert text.compile(name="Ada") == "Hello Ada"


def test_errors_are_ordinary_exception_kinds_under_one_base() -> None:
    assert issubclass(promptstamp.PromptNotFoundError, LookupError)
    assert issubclass(promptstamp.PromptUnavailableError, RuntimeError)
    assert issubclass(promptstamp.PromptVariableError, ValueError)
    for error in (promptstamp.PromptNotFoundError, promptstamp.PromptUnavailableError,
                  promptstamp.PromptVariableError):
        assert issubclass(error, promptstamp.PromptError)
    assert issubclass(promptstamp.PromptError, Exception)
    assert not issubclass(promptstamp.PromptError, (LookupError, RuntimeError, ValueError))
    with pytest.raises(promptstamp.PromptError) as info:
        raise promptstamp.PromptNotFoundError("order-status-answer", "production")
    assert info.value.name == "order-status-answer"


def test_version_is_the_installed_distributions() -> None:
    assert promptstamp.__version__ == importlib.metadata.version("promptstamp")


def test_version_without_distribution_metadata_is_a_placeholder() -> None:
    result = _run(
        """
        import importlib.metadata as md
        def missing(name):
            raise md.PackageNotFoundError(name)
        md.version = missing
        import promptstamp
        print(promptstamp.__version__)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0+unknown"


def test_import_is_cheap() -> None:
    result = _run(
        """
        import sys
        import promptstamp
        heavy = [m for m in sys.modules if m.split(".")[0] in {"langfuse", "httpx", "grpc", "pydantic"}
                 or m.startswith(("opentelemetry.sdk", "opentelemetry.exporter"))]
        print(heavy)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_configure_exports_spans_and_the_fetch_log_over_otlp_http() -> None:
    result = _run(
        """
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        from opentelemetry import _logs, trace
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        import promptstamp

        received = {}

        class Collector(BaseHTTPRequestHandler):
            def do_POST(self):
                received[self.path] = self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Collector)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        import os
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{httpd.server_address[1]}"

        promptstamp.configure("order-agent")
        tracer_provider = trace.get_tracer_provider()
        promptstamp.configure("order-agent")  # idempotent: the providers are reused
        assert trace.get_tracer_provider() is tracer_provider
        resource = tracer_provider.resource.attributes
        assert resource["service.name"] == "order-agent"
        assert resource["service.instance.id"]

        # No LANGFUSE_* keys here: the fetch fails and the explicit fallback is served.
        tracer = trace.get_tracer("app")
        with tracer.start_as_current_span("compose_answer"):
            with promptstamp.prompt("order-status-answer",
                                    fallback=[{"role": "user", "content": "{{q}}"}]) as p:
                assert p.source == "fallback", p.source
                with tracer.start_as_current_span("llm"):
                    pass
        assert tracer_provider.force_flush()
        assert _logs.get_logger_provider().force_flush()

        assert "/v1/traces" in received, received
        logs = ExportLogsServiceRequest.FromString(received["/v1/logs"])
        [record] = logs.resource_logs[0].scope_logs[0].log_records
        attributes = {kv.key: kv.value.string_value for kv in record.attributes}
        resource = {kv.key: kv.value.string_value for kv in logs.resource_logs[0].resource.attributes}
        print(record.event_name, attributes["app.prompt.fetch.source"], resource["service.name"],
              "app.prompt.version" in attributes)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["app.prompt.fetch", "fallback", "order-agent", "False"]


def test_configure_names_the_missing_exporter_package() -> None:
    result = _run(
        """
        import sys
        sys.modules["opentelemetry.exporter.otlp.proto.grpc"] = None
        import promptstamp
        try:
            promptstamp.configure("svc")
        except ImportError as error:
            print(error)
        """,
        OTEL_EXPORTER_OTLP_PROTOCOL="grpc",
    )
    assert result.returncode == 0, result.stderr
    assert "pip install opentelemetry-exporter-otlp-proto-grpc" in result.stdout


def test_configure_rejects_an_unknown_protocol() -> None:
    result = _run(
        """
        import promptstamp
        try:
            promptstamp.configure("svc")
        except ValueError as error:
            print(error)
        """,
        OTEL_EXPORTER_OTLP_PROTOCOL="http/json",
    )
    assert result.returncode == 0, result.stderr
    assert "http/json" in result.stdout
