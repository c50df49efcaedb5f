"""Shared pieces of the trust tests (``test_trust_*.py``): apps as subprocesses with the OTel
SDK's defaults, a relay on the product's default hold window, and the one assertion they share.

* :data:`APP_SETUP` is the head of every app: a ``TracerProvider`` with a default
  ``BatchSpanProcessor`` (no ``OTEL_BSP_*`` unless a test puts one in the app's environment)
  exporting OTLP/gRPC or OTLP/HTTP to the relay, optionally a ``LoggerProvider`` with a
  ``BatchLogRecordProcessor``, ``promptstamp.install()``, OpenLLMetry's ``OpenAIInstrumentor``
  and an ``OpenAI`` client pointed at :class:`~promptstamp.testing.FakeOpenAI`. Apps speak JSON
  lines on stdout (``say(event=..., ...)``) and read commands as JSON lines on stdin.
* :func:`default_relay` is a relay with ``hold.seconds`` at the product's default
  (``tests.relays.relay_config`` shortens it to 0.5 s for the rest of the suite).
* :func:`assert_linked_as_handed`: every generation of every request linked to exactly the
  version that request's scope was handed, at the ``trace`` tier.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import textwrap
import threading
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from promptstamp.testing import LangfuseServer, Observation
from promptstamp_relay.config import load_config
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running
from tests.waiting import wait_until

__all__ = [
    "APP_SETUP",
    "CHAT",
    "PROMPT",
    "App",
    "Handed",
    "app_environment",
    "assert_linked_as_handed",
    "create_version",
    "default_hold_seconds",
    "default_relay",
    "describe",
    "langfuse_server",
    "move_label",
    "wait_for_generations",
]

PROMPT = "order-status-answer"
CHAT = [
    {"role": "system", "content": "You are a support assistant."},
    {"role": "user", "content": "Question: {{query}}\nRegion: {{region}}"},
]
MODEL_CONFIG = {"model": "gpt-4o-mini"}

#: One request as an app reports it: ``trace_id`` (32 hex), ``version`` (``p.version``, what its
#: scope was handed) and ``generations`` (how many model calls it made inside the scope).
Handed = Mapping[str, Any]

APP_SETUP = textwrap.dedent(
    """
    import json, os, sys, threading, time, warnings
    warnings.simplefilter("error", UserWarning)  # a promptstamp set-up warning fails the app

    from openai import OpenAI
    from opentelemetry import trace
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    import promptstamp

    PROMPT = "order-status-answer"
    RELAY = os.environ["RELAY"]
    resource = Resource.create({"service.name": os.environ["SERVICE_NAME"],
                                "service.instance.id": os.environ["SERVICE_INSTANCE"]})
    if os.environ["PROTOCOL"] == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        span_exporter = OTLPSpanExporter(endpoint=RELAY, insecure=True)
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        span_exporter = OTLPSpanExporter(endpoint=RELAY + "/v1/traces")
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # the SDK's default timing
    trace.set_tracer_provider(provider)

    logger_provider = None
    if os.environ.get("LOGS") == "1":
        from opentelemetry._logs import set_logger_provider
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        if os.environ["PROTOCOL"] == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
            log_exporter = OTLPLogExporter(endpoint=RELAY, insecure=True)
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
            log_exporter = OTLPLogExporter(endpoint=RELAY + "/v1/logs")
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))
        set_logger_provider(logger_provider)

    if os.environ.get("CACHE_TTL"):
        promptstamp.install(cache_ttl_seconds=float(os.environ["CACHE_TTL"]))
    else:
        promptstamp.install()  # LANGFUSE_* from the environment, promptstamp's default cache
    OpenAIInstrumentor().instrument()
    client = OpenAI(base_url=os.environ["OPENAI_BASE_URL"], api_key="sk-test")
    tracer = trace.get_tracer("order_status")
    _say_lock = threading.Lock()


    def say(**event):
        with _say_lock:
            print(json.dumps(event), flush=True)


    def hex_trace_id(span):
        return format(span.get_span_context().trace_id, "032x")


    def generate(p, i, g):
        reply = client.chat.completions.create(
            model=p.config["model"], messages=p.compile(query=f"order {i}-{g}?", region="eu"))
        return reply.choices[0].message.content


    def sleep_until(deadline):
        time.sleep(max(0.0, deadline - time.monotonic()))


    def shut_down():
        provider.shutdown()  # exports what is left
        if logger_provider is not None:
            logger_provider.shutdown()
    """
)


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------
@contextmanager
def langfuse_server(production: int = 2, versions: int = 2) -> Iterator[LangfuseServer]:
    """A loopback Langfuse holding ``versions`` versions of :data:`PROMPT`, ``production`` on
    version ``production``; stopped on exit."""
    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-test") as server:
        for version in range(1, versions + 1):
            labels = ["production"] if version == production else []
            server.create_prompt(PROMPT, CHAT, labels=labels, config=MODEL_CONFIG)
        yield server


def default_hold_seconds() -> float:
    """The relay's hold window when nothing sets it (its embedded default)."""
    return load_config(None, env={}).hold.seconds


@contextmanager
def default_relay(langfuse: LangfuseServer, **overrides: object) -> Iterator[RelayServer]:
    """A relay exporting to ``langfuse`` with the product's default hold window (free loopback
    ports, gRPC and HTTP receivers); ``overrides`` as in ``relay_config``. Stopped on exit."""
    settings: dict[str, object] = {"hold.seconds": default_hold_seconds()}
    settings.update(overrides)
    with running(relay_config(langfuse, **settings), timeout=15) as relay:
        yield relay


def app_environment(langfuse: LangfuseServer, relay_endpoint: str, openai_base_url: str, *,
                    protocol: str = "grpc", service: str = "order-status", instance: str = "order-status-1",
                    **extra: str) -> dict[str, str]:
    """An app's environment: this one without any ``OTEL_*`` (so the SDK's defaults hold),
    ``LANGFUSE_*`` or ``OPENAI_*``, plus the Langfuse keys, the relay and the fake model API."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_"))}
    environment.update({
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
        "LANGFUSE_BASE_URL": langfuse.base_url,
        "OPENAI_BASE_URL": openai_base_url,
        "RELAY": relay_endpoint,
        "PROTOCOL": protocol,
        "SERVICE_NAME": service,
        "SERVICE_INSTANCE": instance,
        "PYTHONUNBUFFERED": "1",
    })
    environment.update(extra)
    return environment


# --------------------------------------------------------------------------------------------
# Apps
# --------------------------------------------------------------------------------------------
class App:
    """An app subprocess speaking JSON lines: events on stdout, commands on stdin.

    Its stderr goes to a temporary file (shown when something fails). Leaving the ``with`` block
    kills it if it is still running.
    """

    def __init__(self, source: str, environment: Mapping[str, str], *, name: str = "app") -> None:
        self.name = name
        self._stderr = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (closed in __exit__)
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.noise: list[str] = []  # stdout lines that were not JSON events
        self.proc = subprocess.Popen(
            [sys.executable, "-c", source], env=dict(environment), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=self._stderr, text=True, bufsize=1,
        )
        self._reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                self.noise.append(line)
                continue
            if isinstance(event, dict):
                self._events.put(event)
            else:
                self.noise.append(line)
        self._events.put(None)  # end of output

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def _fail(self, message: str) -> AssertionError:
        return AssertionError(f"{self.name}: {message}\n--- stderr ---\n{self.stderr()[-6000:]}"
                              f"\n--- other stdout ---\n{''.join(self.noise)[-2000:]}")

    def expect(self, event: str, timeout: float) -> dict[str, Any]:
        """The next event, which must be ``event``; fails after ``timeout`` seconds or if the app
        ends first or says something else."""
        try:
            got = self._events.get(timeout=timeout)
        except queue.Empty:
            raise self._fail(f"no {event!r} event within {timeout:.0f} s") from None
        if got is None:
            self._events.put(None)
            raise self._fail(f"ended (exit {self.proc.wait(5)}) before saying {event!r}")
        if got.get("event") != event:
            raise self._fail(f"said {got!r}, expected {event!r}")
        return got

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float) -> None:
        """Close its stdin and wait for a clean exit."""
        assert self.proc.stdin is not None
        if not self.proc.stdin.closed:
            self.proc.stdin.close()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise self._fail(f"did not exit within {timeout:.0f} s") from None
        if code != 0:
            raise self._fail(f"exited with {code}")

    def __enter__(self) -> App:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None and not stream.closed:
                stream.close()
        self._reader.join(5)
        self._stderr.close()


# --------------------------------------------------------------------------------------------
# Langfuse's prompts API, from the outside (as an operator's tooling or the UI calls it)
# --------------------------------------------------------------------------------------------
def _call(langfuse: LangfuseServer, method: str, path: str, body: object) -> dict[str, Any]:
    request = urllib.request.Request(
        langfuse.base_url + path, data=json.dumps(body).encode(), method=method,
        headers={"Content-Type": "application/json", "Authorization": langfuse.auth_header},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
    return answer


def move_label(langfuse: LangfuseServer, version: int, label: str = "production") -> None:
    """``PATCH /api/public/v2/prompts/{name}/versions/{version}``: move ``label`` to ``version``."""
    moved = _call(langfuse, "PATCH", f"/api/public/v2/prompts/{PROMPT}/versions/{version}",
                  {"newLabels": [label]})
    assert label in moved["labels"], moved
    current = langfuse.get_prompt(PROMPT, label=label)
    assert current is not None and current["version"] == version


def create_version(langfuse: LangfuseServer) -> int:
    """``POST /api/public/v2/prompts``: a new version of :data:`PROMPT` with no label; its number."""
    created = _call(langfuse, "POST", "/api/public/v2/prompts",
                    {"name": PROMPT, "type": "chat", "prompt": CHAT, "labels": [], "config": MODEL_CONFIG})
    return int(created["version"])


# --------------------------------------------------------------------------------------------
# What Langfuse shows
# --------------------------------------------------------------------------------------------
def wait_for_generations(langfuse: LangfuseServer, count: int, timeout: float) -> list[Observation]:
    """Langfuse's generations once there are at least ``count`` of them (bounded)."""

    def enough() -> list[Observation]:
        found = langfuse.generations()
        return found if len(found) >= count else []

    return wait_until(enough, timeout=timeout, interval=0.1,
                      what=f"{count} generations at Langfuse (have {len(langfuse.generations())})")


def describe(gen: Observation) -> str:
    return (f"{gen.service_name} trace {gen.trace_id} span {gen.span_id} {gen.name}: "
            f"prompt {gen.prompt_name} v{gen.prompt_version}, "
            f"resolution {gen.metadata.get('prompt_resolution')}, source {gen.metadata.get('prompt_source')}")


def assert_linked_as_handed(generations: Sequence[Observation], requests: Sequence[Handed], *,
                            service: str | None = None) -> None:
    """Every generation (of ``service``, when given) belongs to one of ``requests`` and is linked
    to :data:`PROMPT` at exactly the version that request's scope was handed, at the ``trace``
    tier; each request has exactly its number of generations."""
    by_trace: dict[str, list[Observation]] = defaultdict(list)
    for gen in generations:
        if service is None or gen.service_name == service:
            by_trace[gen.trace_id].append(gen)
    handed = {r["trace_id"]: r for r in requests}
    assert set(by_trace) == set(handed), (sorted(by_trace), sorted(handed))
    wrong: list[str] = []
    for trace_id, request in handed.items():
        gens = by_trace[trace_id]
        if len(gens) != request["generations"]:
            wrong.append(f"trace {trace_id}: {len(gens)} generations, the app made {request['generations']}")
        for gen in gens:
            linked = (gen.prompt_name, gen.prompt_version, gen.metadata.get("prompt_resolution"))
            if linked != (PROMPT, request["version"], "trace"):
                wrong.append(f"{describe(gen)}; its scope was handed v{request['version']}")
    assert not wrong, "\n".join(wrong)

