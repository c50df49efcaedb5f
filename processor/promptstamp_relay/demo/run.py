"""``promptstamp-relay demo``: the tutorial's order-status agent, end to end, on loopback.

What runs (all on 127.0.0.1, free ports, no Docker, no network):

* a Langfuse-compatible server (``promptstamp.testing.LangfuseServer``: prompts API + OTLP
  ingest + "what Langfuse would show");
* a fake OpenAI API (``promptstamp.testing.FakeOpenAI``);
* the relay (``RelayServer``), exporting to that server;
* the example app ``promptstamp_relay.demo.app`` (shipped in the wheel) as a **subprocess**
  (``python -m``), with its own OpenTelemetry SDK, a real OpenAI instrumentation and
  promptstamp, exporting OTLP/gRPC to the relay. It seeds the prompt (v1: ``production`` +
  ``prod-a``, v2: ``prod-b``) and runs the chapter's three scenarios.

The app talks to this driver over its stdout/stdin (``--control-stdio``): ``::scenario NAME``
lines become headers, and ``::outage-begin`` / ``::outage-end`` make the server stall every
prompts request (so the app's real Langfuse client times out) and recover. Everything else the
app prints is the scenarios' output, shown as is.

Then the driver waits (bounded) until every span the app reports having sent has reached the
server, stops the relay, prints the generations as Langfuse received them, and returns 0 only
if every generation is linked to the version the app was handed, with the right label and
source, and no span was lost or would be dropped by Langfuse's ingestion.

Environment: ``PROMPTSTAMP_DEMO_INSTRUMENTATION`` (``openllmetry`` by default, ``openinference``
or ``openai-v2``) picks the app's OpenAI instrumentation.

Works from a plain ``pip install 'promptstamp[relay,demo]'`` and in the Docker images: nothing
is looked up by path. Only ``promptstamp-relay demo`` imports this module (lazily): it imports
the SDK and its test fakes, which ``serve`` and ``replay`` never load.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from promptstamp.testing import FakeOpenAI, LangfuseServer, Observation, RejectedObservation

from ..config import Config, load_config
from ..server import RelayServer

__all__ = ["DemoResult", "GenerationRow", "run", "run_demo"]

PROMPT_NAME = "order-status-answer"
APP_MODULE = "promptstamp_relay.demo.app"
INSTRUMENTATION_ENV = "PROMPTSTAMP_DEMO_INSTRUMENTATION"
MODEL_ANSWER = "Your order ORDER-924 has shipped and is on its way."

# The app's prompt fetch timeout during the demo, and how long the "outage" stalls a prompts
# request: the stall must outlast the timeout so the fetch really times out.
FETCH_TIMEOUT_SECONDS = 0.5
OUTAGE_STALL_SECONDS = 10.0

# Modules the app imports that are not promptstamp's own dependencies: module -> package.
_APP_REQUIREMENTS = {
    "openai": "openai",
    "opentelemetry.exporter.otlp.proto.grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
# --instrumentation choice -> (module, package)
_INSTRUMENTATIONS = {
    "openllmetry": ("opentelemetry.instrumentation.openai", "opentelemetry-instrumentation-openai"),
    "openinference": ("openinference.instrumentation.openai", "openinference-instrumentation-openai"),
    "openai-v2": ("opentelemetry.instrumentation.openai_v2", "opentelemetry-instrumentation-openai-v2"),
}


@dataclass(frozen=True)
class GenerationRow:
    """One generation as Langfuse received it: a line of the demo's table."""

    trace_id: str
    trace_name: str
    span_name: str
    prompt_name: str | None  # the link Langfuse made (None: not linked)
    prompt_version: int | None
    label: str | None  # metadata written by the relay
    resolution: str | None
    source: str | None
    rejected: str | None = None  # why Langfuse's ingestion would drop it


@dataclass
class DemoResult:
    """Everything a test needs to check a demo run; ``status`` is the CLI's exit code."""

    status: int
    app_returncode: int | None
    app_output: list[str]  # what the scenarios printed, without control lines
    app_stderr: str
    runs: list[dict[str, Any]]  # per agent run: scenario, trace_name, trace_id, label, version, source
    sent_spans: list[dict[str, str]]  # every span the app finished: trace_id, span_id, name
    observations: list[Observation]
    rejected: list[RejectedObservation]
    rows: list[GenerationRow]
    relay_lost: int
    prompt_versions: dict[int, list[str]]  # version -> labels, as the server holds them
    problems: list[str] = field(default_factory=list)

    def missing_spans(self) -> list[dict[str, str]]:
        arrived = _arrived_ids(self.observations, self.rejected)
        return [s for s in self.sent_spans if (s["trace_id"], s["span_id"]) not in arrived]


def _missing_requirements(instrumentation: str) -> list[str]:
    needed = dict(_APP_REQUIREMENTS)
    module, package = _INSTRUMENTATIONS[instrumentation]
    needed[module] = package
    missing = []
    for mod, pkg in needed.items():
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:  # a parent package is missing
            found = False
        if not found:
            missing.append(pkg)
    return sorted(missing)


def _app_env(relay_address: str, langfuse: LangfuseServer, model: FakeOpenAI) -> dict[str, str]:
    """The app's environment: the parent's, minus any OTel/Langfuse/OpenAI settings, plus ours."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_", "TRACELOOP_"))}
    env.update({
        "PYTHONUNBUFFERED": "1",
        "OTEL_SERVICE_NAME": "order-status-agent",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{relay_address}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "LANGFUSE_BASE_URL": langfuse.base_url,
        "LANGFUSE_PUBLIC_KEY": langfuse.public_key,
        "LANGFUSE_SECRET_KEY": langfuse.secret_key,
        "OPENAI_BASE_URL": model.base_url,
        "OPENAI_API_KEY": "sk-promptstamp-demo",
    })
    return env


def _arrived_ids(
    observations: Sequence[Observation], rejected: Sequence[RejectedObservation]
) -> set[tuple[str, str]]:
    ids = {(o.trace_id, o.span_id) for o in observations}
    ids.update((r.observation.trace_id, r.observation.span_id) for r in rejected)
    return ids


def _trace_names(observations: Sequence[Observation]) -> dict[str, str]:
    names: dict[str, str] = {}
    for o in observations:
        name = o.attributes.get("langfuse.trace.name")
        if isinstance(name, str):
            names[o.trace_id] = name
    return names


def _meta(metadata: Mapping[str, Any], key: str) -> str | None:
    value = metadata.get(key)
    return None if value is None else str(value)


def generation_rows(
    observations: Sequence[Observation], rejected: Sequence[RejectedObservation]
) -> list[GenerationRow]:
    """The generations (and would-be generations Langfuse drops), oldest first."""
    names = _trace_names(observations)
    items: list[tuple[Observation, str | None]] = [(o, None) for o in observations if o.type == "GENERATION"]
    items += [(r.observation, r.reason) for r in rejected if r.observation.type == "GENERATION"]
    items.sort(key=lambda item: (item[0].start_time_unix_nano, item[0].span_id))
    return [
        GenerationRow(
            trace_id=o.trace_id,
            trace_name=names.get(o.trace_id, o.trace_id[:16]),
            span_name=o.name,
            prompt_name=o.prompt_name,
            prompt_version=o.prompt_version,
            label=_meta(o.metadata, "prompt_label"),
            resolution=_meta(o.metadata, "prompt_resolution"),
            source=_meta(o.metadata, "prompt_source"),
            rejected=reason,
        )
        for o, reason in items
    ]


def format_table(rows: Sequence[GenerationRow]) -> str:
    header = ("TRACE", "PROMPT NAME", "VERSION", "LABEL", "RESOLUTION", "SOURCE")
    lines = [header]
    for r in rows:
        lines.append((
            r.trace_name,
            r.prompt_name or ("DROPPED: " + r.rejected if r.rejected else "(not linked)"),
            "-" if r.prompt_version is None else str(r.prompt_version),
            r.label or "-",
            r.resolution or "-",
            r.source or "-",
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def check(result: DemoResult) -> list[str]:
    """Every way the run falls short of "each generation linked to the version it used"."""
    problems: list[str] = []
    if result.app_returncode != 0:
        problems.append(f"the app exited with status {result.app_returncode}")
    if not result.runs:
        problems.append("the app reported no agent runs")
    missing = result.missing_spans()
    if missing:
        problems.append(f"{len(missing)} of {len(result.sent_spans)} spans the app sent never reached "
                        f"Langfuse: {', '.join(sorted({s['name'] for s in missing}))}")
    if result.relay_lost:
        problems.append(f"the relay could not deliver {result.relay_lost} items at shutdown")
    for r in result.rejected:
        problems.append(f"Langfuse's ingestion would drop span {r.observation.name!r} "
                        f"({r.observation.span_id}): {r.reason}")
    by_trace: dict[str, list[GenerationRow]] = {}
    for row in result.rows:
        by_trace.setdefault(row.trace_id, []).append(row)
    for run in result.runs:
        rows = by_trace.pop(run["trace_id"], [])
        where = f"{run['trace_name']} ({run['trace_id']})"
        if len(rows) != 1:
            problems.append(f"{where}: expected 1 generation, Langfuse received {len(rows)}")
            continue
        row = rows[0]
        if row.prompt_name != PROMPT_NAME or row.prompt_version is None:
            problems.append(f"{where}: generation {row.span_name!r} arrived unlinked "
                            f"(resolution {row.resolution or 'none'})")
            continue
        expected = (run["version"], run["label"], run["source"])
        got = (row.prompt_version, row.label, row.source)
        if expected != got:
            problems.append(f"{where}: linked as version/label/source {got}, the app used {expected}")
    for rows in by_trace.values():
        for row in rows:
            if row.prompt_name is None:
                problems.append(f"{row.trace_name}: generation {row.span_name!r} arrived unlinked")
    return problems


@contextmanager
def _quiet_relay_logs() -> Iterator[None]:
    """The relay's INFO lines would interleave with the scenarios' output; keep WARNING+."""
    relay_log = logging.getLogger("promptstamp_relay")
    before = relay_log.level
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        relay_log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        relay_log.setLevel(before)


@dataclass
class _AppRun:
    """What the app subprocess did."""

    returncode: int | None = None
    output: list[str] = field(default_factory=list)
    stderr: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    killed: bool = False


def _reply(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(text + "\n")
        proc.stdin.flush()
    except (BrokenPipeError, OSError):  # the app is gone; its exit status tells the story
        pass


def _drive_app(proc: subprocess.Popen[str], langfuse: LangfuseServer, out: IO[str],
               on_first_scenario: Callable[[], None]) -> list[str]:
    """Show the app's stdout; answer its control lines. Returns the scenario output lines."""
    assert proc.stdout is not None
    printed: list[str] = []
    first = True
    for raw in proc.stdout:
        line = raw.rstrip("\n")
        if line.startswith("::scenario "):
            if first:
                on_first_scenario()
                first = False
            out.write(f"\n$ {line.removeprefix('::scenario ')}\n")
        elif line == "::outage-begin":
            langfuse.delay_prompts(OUTAGE_STALL_SECONDS)
            out.write(f"  (Langfuse's prompts API stops answering; the app's {FETCH_TIMEOUT_SECONDS:g} s "
                      "fetch timeout will fire)\n")
            _reply(proc, "ok")
        elif line == "::outage-end":
            langfuse.reset_faults()
            _reply(proc, "ok")
        else:
            printed.append(line)
            out.write(line + "\n")
        out.flush()
    return printed


def _run_app(env: dict[str, str], instrumentation: str, langfuse: LangfuseServer,
             out: IO[str], timeout: float) -> _AppRun:
    """Run the example app once, driving it; kill it after ``timeout`` seconds."""
    result = _AppRun()

    def describe_prompt() -> None:  # once the app has seeded the prompt
        versions = _prompt_versions(langfuse)
        shown = "; ".join(f"v{v}: {', '.join(labels)}" for v, labels in sorted(versions.items()))
        out.write(f"  prompt {PROMPT_NAME:<20} {shown}\n")

    with tempfile.TemporaryDirectory(prefix="promptstamp-demo-") as tmp:
        report_path, stderr_path = Path(tmp) / "report.json", Path(tmp) / "app-stderr.txt"
        cmd = [sys.executable, "-m", APP_MODULE, "all", "--control-stdio", "--seed-prompts",
               "--instrumentation", instrumentation, "--fetch-timeout", str(FETCH_TIMEOUT_SECONDS),
               "--report", str(report_path)]
        with open(stderr_path, "w", encoding="utf-8") as stderr_file, subprocess.Popen(
            cmd, cwd=tmp, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr_file, text=True,
        ) as proc:

            def kill() -> None:
                if proc.poll() is None:
                    result.killed = True
                    proc.kill()

            watchdog = threading.Timer(timeout, kill)
            watchdog.start()
            try:
                result.output = _drive_app(proc, langfuse, out, describe_prompt)
                result.returncode = proc.wait()
            finally:
                watchdog.cancel()
                kill()  # only if still running: an exception above
        result.stderr = stderr_path.read_text(encoding="utf-8", errors="replace")
        if report_path.is_file():
            result.report = json.loads(report_path.read_text(encoding="utf-8"))
    return result


def _wait_for_spans(langfuse: LangfuseServer, sent: Sequence[Mapping[str, str]], timeout: float) -> None:
    wanted = {(s["trace_id"], s["span_id"]) for s in sent}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if wanted <= _arrived_ids(langfuse.observations(), langfuse.rejected()):
            return
        time.sleep(0.05)


def _relay_config(langfuse: LangfuseServer, hold_seconds: float,
                  overrides: Mapping[str, Any] | None) -> Config:
    return load_config(None, env={}, overrides={
        "listen": "127.0.0.1:0",  # free ports, never the fixed defaults: the demo runs anywhere
        "receivers.http.listen": "127.0.0.1:0",
        "metrics_listen": "",
        "hold.seconds": hold_seconds,
        "exporter.type": "langfuse",
        "exporter.langfuse.base_url": langfuse.base_url,
        "exporter.langfuse.public_key": langfuse.public_key,
        "exporter.langfuse.secret_key": langfuse.secret_key,
        "retry.initial_interval_seconds": 0.2,
        "retry.max_interval_seconds": 1.0,
        **(overrides or {}),
    })


def run(
    *,
    instrumentation: str = "openllmetry",
    hold_seconds: float = 1.0,
    app_timeout: float = 120.0,
    arrival_timeout: float = 15.0,
    out: IO[str] | None = None,
    relay_overrides: Mapping[str, Any] | None = None,
) -> DemoResult:
    """Run the whole demo once; print as it goes to ``out``; return what happened.

    ``relay_overrides`` are extra relay settings as dotted keys (``{"hold.seconds": 2}``).
    Every server is stopped before this returns, also when it raises.
    """
    out = out if out is not None else sys.stdout
    if instrumentation not in _INSTRUMENTATIONS:
        raise ValueError(f"instrumentation must be one of {', '.join(_INSTRUMENTATIONS)}, "
                         f"got {instrumentation!r}")
    missing = _missing_requirements(instrumentation)
    if missing:
        raise RuntimeError("the demo app needs " + ", ".join(missing)
                           + ": pip install 'promptstamp[relay,demo]'")

    # A key of its own: the real langfuse client keeps one state per public key per process.
    langfuse = LangfuseServer(public_key=f"pk-lf-demo-{uuid.uuid4().hex[:12]}", secret_key="sk-lf-demo")
    model = FakeOpenAI(MODEL_ANSWER)
    relay: RelayServer | None = None
    relay_lost = 0
    with _quiet_relay_logs():
        try:
            langfuse.start()
            model.start()
            relay = RelayServer(_relay_config(langfuse, hold_seconds, relay_overrides)).start()
            out.write(
                "promptstamp demo: the tutorial's order-status agent and its three prompt scenarios\n"
                f"  Langfuse-compatible server  {langfuse.base_url}  (prompts API, OTLP ingest)\n"
                f"  promptstamp relay           {relay.address}  (OTLP/gRPC in, OTLP/HTTP to Langfuse, "
                f"hold {hold_seconds:g} s)\n"
                f"  model API (fake OpenAI)     {model.base_url}\n"
                f"  app                         python -m {APP_MODULE} ({instrumentation} instrumentation, "
                "OTLP/gRPC to the relay)\n"
            )
            out.flush()
            app = _run_app(_app_env(relay.address, langfuse, model), instrumentation, langfuse, out,
                           app_timeout)
            _wait_for_spans(langfuse, app.report.get("spans", []), arrival_timeout)
            relay_lost = relay.stop()  # releases anything still held, drains the queue
        finally:
            if relay is not None:
                relay_lost += relay.stop()  # a no-op after the stop above
            model.stop()
            langfuse.stop()

    observations, rejected = langfuse.observations(), langfuse.rejected()
    result = DemoResult(
        status=0,
        app_returncode=app.returncode,
        app_output=app.output,
        app_stderr=app.stderr,
        runs=list(app.report.get("runs", [])),
        sent_spans=list(app.report.get("spans", [])),
        observations=observations,
        rejected=rejected,
        rows=generation_rows(observations, rejected),
        relay_lost=relay_lost,
        prompt_versions=_prompt_versions(langfuse),
    )
    result.problems = check(result)
    if app.killed:
        result.problems.insert(0, f"the app did not finish within {app_timeout:g} s and was killed")
    result.status = 1 if result.problems else 0
    _print_summary(result, out)
    return result


def _prompt_versions(langfuse: LangfuseServer) -> dict[int, list[str]]:
    versions: dict[int, list[str]] = {}
    for v in range(1, 100):
        found = langfuse.get_prompt(PROMPT_NAME, version=v)
        if found is None:
            break
        versions[v] = list(found["labels"])
    return versions


def _print_summary(result: DemoResult, out: IO[str]) -> None:
    out.write(f"\nGenerations as Langfuse received them ({len(result.rows)}):\n")
    out.write(format_table(result.rows) + "\n\n")
    arrived = len(result.sent_spans) - len(result.missing_spans())
    out.write(f"Spans: {len(result.sent_spans)} sent by the app, {arrived} received by Langfuse, "
              f"{len(result.rejected)} that its ingestion would drop.\n")
    if result.problems:
        out.write("FAILED:\n" + "".join(f"  - {p}\n" for p in result.problems))
        if result.app_stderr.strip():
            tail = result.app_stderr.strip().splitlines()[-30:]
            out.write("app stderr (last lines):\n" + "".join(f"  | {line}\n" for line in tail))
    else:
        linked = sum(1 for r in result.rows if r.prompt_name)
        out.write(f"OK: {linked} of {len(result.rows)} generations linked to the prompt version that "
                  "produced them, with its label and source.\n")
    out.flush()


def run_demo() -> int:
    """The ``promptstamp-relay demo`` command: 0 when every generation arrived linked.

    ``$PROMPTSTAMP_DEMO_INSTRUMENTATION`` picks the app's OpenAI instrumentation: ``openllmetry``
    (default), ``openinference`` or ``openai-v2``.
    """
    instrumentation = os.environ.get(INSTRUMENTATION_ENV) or "openllmetry"
    try:
        return run(instrumentation=instrumentation).status
    except (ValueError, RuntimeError, OSError) as e:  # FileNotFoundError is an OSError
        print(f"promptstamp-relay demo: {e}", file=sys.stderr)
        return 1
