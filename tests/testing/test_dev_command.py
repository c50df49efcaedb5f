"""``promptstamp-relay dev`` (and ``python -m promptstamp.testing dev``) as a process, with a real
app as another: the app takes the printed environment and nothing else (an OTel SDK with the
OTLP/HTTP exporter, ``promptstamp.install()``, the real ``openai`` client under OpenLLMetry's
instrumentation, the real ``anthropic`` client), and every generation it makes shows up in the
dev command's output, linked to the version it used. Per-version errors and delays reach the app;
SIGINT and SIGTERM stop everything with exit 0 and free every port.

In-process: the config file's validation and the start-up failures' exit codes.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptstamp.testing._dev import DevConfigError, load_dev_config, main, parse_dev_config
from tests.relays import clean_env, free_port, stop_process

pytest.importorskip("opentelemetry.instrumentation.openai")
pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
pytest.importorskip("anthropic")

PROMPT = "order-status-answer"
CONFIG = textwrap.dedent(
    """
    prompts:
      - name: order-status-answer
        type: chat
        versions:
          - prompt:
              - {role: system, content: "You are a support assistant."}
              - {role: user, content: "Where is order {{order}}?"}
            labels: [production]
            config: {model: gpt-4o-mini}
          - prompt:
              - {role: system, content: "You are a support assistant. Answer in one sentence."}
              - {role: user, content: "Where is order {{order}}?"}
            labels: [canary]
            config: {model: gpt-4o-mini}
            behaviour: {delay_ms: 300, error: {status: 503, message: "canary is down"}}
          - prompt:
              - {role: system, content: "You are a cheerful support assistant."}
              - {role: user, content: "Where is order {{order}}?"}
            labels: [cheerful]
            config: {model: gpt-4o-mini}
            behaviour: {answer: "It ships today!"}
    """
)

# The app: only the printed environment (OTLP/HTTP to the relay, Langfuse, the fake APIs).
APP = textwrap.dedent(
    """
    import json, os, sys, time
    import anthropic, openai
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import promptstamp

    assert os.environ["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    provider = TracerProvider(resource=Resource.create({"service.name": "dev-app"}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # OTEL_EXPORTER_OTLP_ENDPOINT
    trace.set_tracer_provider(provider)
    promptstamp.install()
    OpenAIInstrumentor().instrument()
    client = openai.OpenAI(max_retries=0)          # OPENAI_BASE_URL, OPENAI_API_KEY
    claude = anthropic.Anthropic(max_retries=0)    # ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY
    tracer = trace.get_tracer("dev-app")

    out = []
    for label in sys.argv[1:]:
        with tracer.start_as_current_span("handle_request") as root:
            with promptstamp.prompt("order-status-answer", label=label) as p:
                messages = p.compile(order="42")
                started = time.monotonic()
                row = {"label": label, "version": p.version,
                       "trace_id": format(root.get_span_context().trace_id, "032x")}
                try:
                    reply = client.chat.completions.create(model=p.config["model"], messages=messages)
                    row["answer"] = reply.choices[0].message.content
                except openai.APIStatusError as e:
                    row["status"] = e.status_code
                    row["message"] = e.body.get("message") if isinstance(e.body, dict) else e.body
                row["seconds"] = time.monotonic() - started
                if label == "production":  # Anthropic too, streaming (the SDK traces its own calls)
                    with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=100,
                                                system=messages[0]["content"], messages=messages[1:]) as stream:
                        row["claude"] = stream.get_final_text()
        out.append(row)
    provider.shutdown()
    print(json.dumps(out))
    """
)

LINE = re.compile(r"^(?P<time>\d\d:\d\d:\d\d\.\d{3})  (?P<trace>[0-9a-f]{8})  (?P<span>.+?)\s+"
                  r"(?:(?P<prompt>\S+)  v(?P<version>\d+)  (?P<label>\S+)  (?P<tier>\S+)|UNLINKED (?P<reason>.+))$")
READY = "# Generations as they land at Langfuse (Ctrl-C stops):"


def _dev_command() -> list[str]:
    script = Path(sys.executable).with_name("promptstamp-relay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "promptstamp_relay.cli"]


def _base_env() -> dict[str, str]:
    env = clean_env()
    return {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "ANTHROPIC_"))}


class DevProcess:
    """The dev command as a process: stdout read line by line in a thread, stderr in a file."""

    def __init__(self, args: list[str], tmp: Path, cmd: list[str] | None = None) -> None:
        self._stderr = (tmp / "dev-stderr.txt").open("w+")
        self.proc = subprocess.Popen([*(cmd or [*_dev_command(), "dev"]), *args], stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, env=_base_env())
        self.lines: list[str] = []
        self._new: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._new.put(line.rstrip("\n"))
        self._new.put(None)

    def wait_for(self, predicate: Any, timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if predicate(line):
                return line
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = self._new.get(timeout=max(0.01, remaining))
            except queue.Empty:
                line = ""
            if line is None or remaining <= 0:
                raise AssertionError(f"no {what} within {timeout} s; stdout:\n" + "\n".join(self.lines)
                                     + "\nstderr:\n" + self.stderr())
            self.lines.append(line)
            if predicate(line):
                return line

    def ready(self, timeout: float = 30) -> dict[str, str]:
        self.wait_for(lambda line: line == READY, timeout, "ready line")
        return {m[1]: m[2] for m in (re.match(r"^export (\w+)=(.*)$", line) for line in self.lines) if m}

    def grpc_env(self) -> dict[str, str]:
        return {m[1]: m[2] for m in (re.match(r"^# export (\w+)=(.*)$", line) for line in self.lines) if m}

    def generation(self, trace_id: str, timeout: float = 20, span: str = "openai.chat") -> re.Match[str]:
        line = self.wait_for(lambda line: (m := LINE.match(line)) is not None and m["trace"] == trace_id[:8]
                             and m["span"].strip() == span, timeout, f"{span} line for trace {trace_id[:8]}")
        match = LINE.match(line)
        assert match is not None
        return match

    def stderr(self) -> str:
        self._stderr.flush()
        self._stderr.seek(0)
        return self._stderr.read()

    def finish(self) -> list[str]:
        """Lines printed until the process ended (after a signal)."""
        self._reader.join(timeout=10)
        while True:
            try:
                line = self._new.get_nowait()
            except queue.Empty:
                return self.lines
            if line is not None:
                self.lines.append(line)

    def close(self) -> None:
        stop_process(self.proc, timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "prompts.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture
def dev(config_file: Path, tmp_path: Path) -> Iterator[DevProcess]:
    process = DevProcess(["--config", str(config_file)], tmp_path)
    try:
        yield process
    finally:
        process.close()


def _run_app(env: dict[str, str], *labels: str) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, "-c", APP, *labels], env={**_base_env(), **env},
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    rows: list[dict[str, Any]] = json.loads(proc.stdout)
    return rows


def _port_of(url: str) -> int:
    return int(url.rstrip("/").removesuffix("/v1").rpartition(":")[2])


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


# -- a real app against the dev command ------------------------------------------------------------
def test_an_app_with_only_the_printed_environment_is_linked_at_the_trace_tier(dev: DevProcess) -> None:
    env = dev.ready()
    assert env["LANGFUSE_PUBLIC_KEY"] and env["LANGFUSE_SECRET_KEY"]
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert dev.grpc_env()["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
    for key in ("LANGFUSE_BASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL"):
        assert env[key].startswith("http://127.0.0.1:"), env  # loopback by default
    assert "#   order-status-answer: v1 (production), v2 (canary) [delay 300 ms; error 503], " \
           "v3 (cheerful, latest) [own answer]" in dev.lines

    [production, cheerful] = _run_app(env, "production", "cheerful")
    assert (production["version"], production["answer"]) == (1, "This is the fake model's answer.")
    assert production["claude"] == "This is the fake model's answer."
    assert (cheerful["version"], cheerful["answer"]) == (3, "It ships today!")  # the version's answer

    for row in (production, cheerful):
        line = dev.generation(row["trace_id"])
        assert (line["prompt"], line["version"], line["label"], line["tier"]) == (
            PROMPT, str(row["version"]), row["label"], "trace"), line.string
    # the production request's other generation: the anthropic SDK's own span of the streamed call
    line = dev.generation(production["trace_id"], span="anthropic.messages.create")
    assert (line["prompt"], line["version"], line["label"], line["tier"]) == (PROMPT, "1", "production", "trace")
    spans = [m["span"].strip() for m in map(LINE.match, dev.lines) if m and m["trace"] == production["trace_id"][:8]]
    assert sorted(spans) == ["anthropic.messages.create", "openai.chat"]


def test_a_version_s_error_and_delay_reach_the_app(dev: DevProcess) -> None:
    env = dev.ready()
    [canary, production] = _run_app(env, "canary", "production")
    assert canary["version"] == 2
    assert (canary["status"], canary["message"]) == (503, "canary is down")
    assert canary["seconds"] >= 0.3
    assert production["version"] == 1 and "status" not in production  # other versions answer
    line = dev.generation(canary["trace_id"])  # the failed call is still a generation, linked
    assert (line["version"], line["label"], line["tier"]) == ("2", "canary", "trace")


def test_sigint_stops_everything_with_exit_0_and_frees_every_port(config_file: Path, tmp_path: Path) -> None:
    ports = {flag: free_port() for flag in ("--langfuse-port", "--openai-port", "--anthropic-port",
                                            "--otlp-grpc-port", "--otlp-http-port")}
    process = DevProcess(["--config", str(config_file), *(x for kv in ports.items() for x in (kv[0], str(kv[1])))],
                         tmp_path)
    try:
        env = process.ready()
        printed = {_port_of(env[k]) for k in ("LANGFUSE_BASE_URL", "OPENAI_BASE_URL", "ANTHROPIC_BASE_URL",
                                              "OTEL_EXPORTER_OTLP_ENDPOINT")}
        printed.add(_port_of(process.grpc_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]))
        assert printed == set(ports.values())  # the ports asked for
        assert not any(_bindable(p) for p in printed)
        started = time.monotonic()
        process.proc.send_signal(signal.SIGINT)
        assert process.proc.wait(timeout=10) == 0, process.stderr()
        assert time.monotonic() - started < 5
        assert process.finish()[-1] == "# stopped"
        assert [p for p in printed if not _bindable(p)] == []
        assert "Traceback" not in process.stderr()
    finally:
        process.close()


def test_python_m_promptstamp_testing_dev_and_sigterm(tmp_path: Path) -> None:
    process = DevProcess([], tmp_path, cmd=[sys.executable, "-m", "promptstamp.testing", "dev"])
    try:
        env = process.ready()
        assert "# No prompts seeded (--config FILE seeds them; the app may create its own)." in process.lines
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=10) == 0, process.stderr()
        assert _bindable(_port_of(env["LANGFUSE_BASE_URL"]))
    finally:
        process.close()


# -- in this process: the config file and start-up failures --------------------------------------
def test_config_json_and_list_shapes(tmp_path: Path) -> None:
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"name": "greet", "type": "text", "versions": [
        {"prompt": "Hi {{name}}", "labels": ["production"], "behaviour": {"delay_ms": 5, "error": 429}}]}]))
    config = load_dev_config(path)
    [prompt] = config.prompts
    assert (prompt.name, prompt.type, prompt.versions[0].prompt) == ("greet", "text", "Hi {{name}}")
    behaviour = prompt.versions[0].behaviour
    assert behaviour is not None and (behaviour.delay_ms, behaviour.error_status) == (5, 429)


@pytest.mark.parametrize(("data", "message"), [
    ({"prompts": [{"name": "p", "versions": [{"prompt": "x"}]}]}, "a list of messages for a chat prompt"),
    ({"prompts": [{"name": "p", "type": "text", "versions": [{"prompt": "x", "labels": ["latest"]}]}]},
     "'latest' is always on the last version"),
    ({"prompts": [{"name": "p", "type": "text", "versions": [{"prompt": "x", "behaviour": {"error": 200}}]}]},
     "an HTTP status 400..599"),
    ({"prompts": [{"name": "p", "type": "text", "versions": [{"prompt": "x", "behavior": {}}]}]},
     "unknown key(s) 'behavior'"),
    ({"prompts": [{"name": "p", "type": "text", "versions": [{"prompt": "x", "behaviour": {"delay_ms": -1}}]}]},
     "delay_ms"),
    ({"prompt": []}, "unknown key(s) 'prompt'"),
    ([{"name": "p", "type": "text", "versions": [{"prompt": "a"}]}, {"name": "p", "type": "text",
                                                                      "versions": [{"prompt": "b"}]}],
     "given twice"),
])
def test_config_errors_name_the_problem(data: Any, message: str) -> None:
    with pytest.raises(DevConfigError, match=re.escape(message)):
        parse_dev_config(data)


def test_a_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("prompts: [{name: p, type: text, versions: [{prompt: 3}]}]\n")
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "promptstamp-relay dev:" in err and "a string for a text prompt" in err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 2
    relay = tmp_path / "relay.yaml"
    relay.write_text("relay: {hold: {seconds: soon}}\n")
    assert main(["--config", str(relay)]) == 2  # the relay's own validation, named in the file
    assert f"{relay}: relay: 'hold.seconds' must be a number" in capsys.readouterr().err


def test_a_port_in_use_exits_5(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["--openai-port", str(busy.getsockname()[1])]) == 5
    assert "--openai-port" in capsys.readouterr().err


def test_dev_stack_in_process_shows_linked_and_unlinked_generations_with_why() -> None:
    """OTLP straight to the relay of a :class:`DevStack` (``relay`` settings from the config):
    a linked generation, one held and released unlinked, one outside the prompt's scope, one with
    no prompt key at all; a plain span is not shown."""
    from promptstamp.testing import DevStack
    from tests.otlp_builders import fetch_span, gen_attrs, span, traces
    from tests.relays import OtlpClient

    config = parse_dev_config({"prompts": [{"name": PROMPT, "type": "text", "versions": [
        {"prompt": "Where is order {{order}}?", "labels": ["production"]}]}],
        "relay": {"hold": {"seconds": 0.2}}})
    model = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}
    with DevStack(config) as stack:
        assert stack.relay.cfg.hold.seconds == 0.2
        assert stack.env("grpc")["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{stack.relay.address}"
        client = OtlpClient(stack.relay.address)
        try:
            now = time.time_ns()
            one, two, three = (n << 124 for n in (1, 2, 3))  # trace ids 10000000..., 20000000..., ...
            client.traces(traces([
                fetch_span(version=1, trace=one, time=now),
                span("linked", trace=one, span_id=1, start=now + 1, attrs=gen_attrs()),
                span("outside", trace=one, span_id=2, start=now + 2, attrs=model),
                span("held", trace=two, span_id=3, start=now + 3, attrs=gen_attrs(label="canary")),
                span("keyless", trace=three, span_id=4, start=now + 4, attrs=model),
                span("plain", trace=three, span_id=5, start=now + 5),
            ]), timeout=5)
        finally:
            client.close()
        shown: list[str] = []
        deadline = time.monotonic() + 10
        while len(shown) < 4 and time.monotonic() < deadline:
            shown += [g.format() for g in stack.new_generations()]
            time.sleep(0.02)
    assert stack.new_generations() == []  # each span once
    by_span = {line.split()[2]: (line.split()[1], line.split("  ", 3)[3].strip()) for line in shown}
    assert by_span == {
        "linked": ("10000000", f"{PROMPT}  v1  production  trace"),
        "outside": ("10000000", "UNLINKED outside_prompt_scope"),
        "held": ("20000000", f"UNLINKED hold_expired ({PROMPT}, label canary)"),
        "keyless": ("30000000", "UNLINKED no_prompt_key"),
    }, shown
    assert not any(s.running for s in (stack.langfuse, stack.openai, stack.anthropic))
