"""How long must the relay hold a generation span for a fetch record exported by another service?

Two services, each a separate process with its own ``TracerProvider``, ``BatchSpanProcessor`` at the
SDK's defaults (no ``OTEL_*`` variable reaches the children unless a case sets one) and
``OTLPSpanExporter`` (OTLP/HTTP, protobuf) to one loopback OTLP/HTTP receiver run here:

* **A** starts a request span, ends a child span ``promptstamp.fetch`` at once, calls B over HTTP
  with the W3C trace context injected (``opentelemetry.propagate.inject``), ends its request span.
  Several streams per A process, each waiting ``uniform(0, 2)`` s between requests.
* **B** extracts the context, starts its own server span and ends a generation child span
  (``gen_ai.operation.name=chat``), answers.

Per trace, ``lead = arrival(A's promptstamp.fetch) - arrival(B's generation)``; positive means the
generation arrived first and the relay must hold it that long.

Within one A/B pair the two batch processors' timers keep a fixed relative phase (the worker sleeps
``schedule_delay`` in a loop that starts when the processor is built), so random request times
alone do not vary it. The benchmark runs several pairs per case, in rounds of fresh processes, and
sets each pair's phase offset (A's processor built ``offset`` seconds after B's, on the shared
``CLOCK_MONOTONIC``) stratified over ``[0, 5 s)``; every pair's offset is in the results.

Cases (run concurrently, distinguished by ``service.name``): ``default`` (A and B at 5000 ms) and
``b_faster`` (A at 5000 ms, B with ``OTEL_BSP_SCHEDULE_DELAY=1000``). A one-span probe process
checks how the worker schedules exports (fixed timer or ``schedule_delay`` after the first span).

Run: ``python -m bench.hold_window [--minutes M] [--quick]``; prints the JSON and writes
``bench/results/hold_window.json``. Default ≈ 3.3 minutes (3 rounds of 45 s traffic, 6 pairs per case),
``--quick`` ≈ 50 s (one round of 30 s).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import importlib.metadata
import inspect
import itertools
import json
import math
import os
import platform
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "bench" / "results" / "hold_window.json"
SDK_DEFAULT_DELAY_MS = 5000.0  # OTEL_BSP_SCHEDULE_DELAY's default (opentelemetry.sdk.environment_variables)
FETCH_SPAN = "promptstamp.fetch"
GEN_OP = "chat"
PHASE_WINDOW_S = 5.0  # offsets of A's processor after B's are stratified over [0, PHASE_WINDOW_S)
MAX_INTERVAL_S = 2.0  # each A stream waits uniform(0, MAX_INTERVAL_S) between requests
# Recommended default hold window: the default schedule delay of the fetch record's exporter, plus
# margin for its export round trip, one retried export (first backoff 1 s ± 20 %) and a busy process.
RECOMMENDED_HOLD_S = 8.0


@dataclass(frozen=True)
class Case:
    name: str
    a_delay_ms: float | None  # None: no env override (the SDK's default)
    b_delay_ms: float | None
    description: str

    def delay_a(self) -> float:
        return (self.a_delay_ms or SDK_DEFAULT_DELAY_MS) / 1e3

    def delay_b(self) -> float:
        return (self.b_delay_ms or SDK_DEFAULT_DELAY_MS) / 1e3


CASES = (
    Case("default", None, None, "A and B at the SDK defaults (OTEL_BSP_SCHEDULE_DELAY unset: 5000 ms each)"),
    Case("b_faster", None, 1000.0,
         "A at the default 5000 ms, B with OTEL_BSP_SCHEDULE_DELAY=1000 (A's export delay longer than B's)"),
)


# --------------------------------------------------------------------------------------------
# The receiver (parent process)


@dataclass
class Arrival:
    service: str
    name: str
    trace_id: str
    mono: float
    wall: float
    end_ns: int
    size: int  # Span.ByteSize(): the encoded span, without its field tag and length prefix
    is_generation: bool


@dataclass
class Receiver:
    arrivals: list[Arrival] = field(default_factory=list)
    requests: int = 0
    request_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, body: bytes, mono: float, wall: float) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        req = ExportTraceServiceRequest()
        req.ParseFromString(body)
        got: list[Arrival] = []
        for rs in req.resource_spans:
            service = ""
            for kv in rs.resource.attributes:
                if kv.key == "service.name":
                    service = kv.value.string_value
            for ss in rs.scope_spans:
                for span in ss.spans:
                    gen = any(kv.key == "gen_ai.operation.name" and kv.value.string_value == GEN_OP
                              for kv in span.attributes)
                    got.append(Arrival(service, span.name, span.trace_id.hex(), mono, wall,
                                       int(span.end_time_unix_nano), int(span.ByteSize()), gen))
        with self.lock:
            self.arrivals.extend(got)
            self.requests += 1
            self.request_bytes += len(body)

    def snapshot(self) -> list[Arrival]:
        with self.lock:
            return list(self.arrivals)


def start_receiver(rec: Receiver) -> tuple[ThreadingHTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(n)
            mono, wall = time.monotonic(), time.time()
            enc = (self.headers.get("Content-Encoding") or "").lower()
            if self.path != "/v1/traces":
                self._answer(404, b"")
                return
            try:
                if enc == "gzip":
                    body = gzip.decompress(body)
                elif enc == "deflate":
                    body = zlib.decompress(body)
                rec.record(body, mono, wall)
            except Exception as e:
                self._answer(400, str(e).encode())
                return
            self._answer(200, b"")  # an empty ExportTraceServiceResponse encodes to zero bytes

        def _answer(self, code: int, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="receiver", daemon=True).start()
    return server, int(server.server_address[1])


# --------------------------------------------------------------------------------------------
# The services (child processes)


def _provider(service: str, endpoint: str) -> tuple[Any, float]:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint))  # the SDK's defaults
    provider.add_span_processor(processor)
    # The schedule delay the processor actually uses (after OTEL_BSP_SCHEDULE_DELAY, if any).
    delay_ms = float(getattr(getattr(processor, "_batch_processor", None), "_schedule_delay_millis", "nan"))
    return provider, delay_ms


def _preload() -> None:
    """Import what ``_provider`` imports, so building the processor at its set time takes no import."""
    import opentelemetry.exporter.otlp.proto.http.trace_exporter
    import opentelemetry.sdk.resources
    import opentelemetry.sdk.trace
    import opentelemetry.sdk.trace.export  # noqa: F401


def _say(msg: str) -> None:
    sys.stdout.write(msg + "\n")
    sys.stdout.flush()


def _sleep_until(t: float) -> None:
    while (left := t - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))


def _stdin_lines() -> queue.Queue[str]:
    """stdin read by a daemon thread; '' on EOF (the parent went away)."""
    q: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in sys.stdin:
            q.put(line.strip())
        q.put("")

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_line(q: queue.Queue[str], timeout: float) -> str:
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        return ""


def run_service_b(args: argparse.Namespace) -> int:
    from opentelemetry import propagate, trace

    tracer: list[Any] = []
    rnd = random.Random(args.seed)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if not tracer:
                self.send_error(503)
                return
            ctx = propagate.extract({k.lower(): v for k, v in self.headers.items()})
            t = tracer[0]
            with (
                t.start_as_current_span("b.handle", context=ctx, kind=trace.SpanKind.SERVER),
                t.start_as_current_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT) as gen,
            ):
                gen.set_attributes({
                    "gen_ai.operation.name": GEN_OP,
                    "gen_ai.system": "openai",
                    "gen_ai.provider.name": "openai",
                    "gen_ai.request.model": "gpt-4o-mini",
                    "gen_ai.request.temperature": 0.2,
                    "gen_ai.request.max_tokens": 512,
                    "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                    "gen_ai.response.id": "chatcmpl-" + "".join(
                        rnd.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
                        for _ in range(29)),
                    "gen_ai.response.finish_reasons": ("stop",),
                    "gen_ai.usage.input_tokens": rnd.randint(200, 2000),
                    "gen_ai.usage.output_tokens": rnd.randint(20, 400),
                    "server.address": "api.openai.com",
                    "server.port": 443,
                })
            body = b"ok"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    _preload()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    lines = _stdin_lines()
    _say(f"ready {server.server_address[1]}")
    go = _wait_line(lines, 120.0).split()
    if not go or go[0] != "go":
        return 1
    _sleep_until(float(go[1]))
    provider, delay_ms = _provider(args.service, args.endpoint)
    started = time.monotonic()
    tracer.append(provider.get_tracer("bench.hold_window"))
    _say(f"started {started:.6f} {delay_ms:.0f}")
    _wait_line(lines, args.max_life)  # "quit", EOF, or the self-imposed deadline
    server.shutdown()
    provider.shutdown()
    return 0


def run_service_a(args: argparse.Namespace) -> int:
    from opentelemetry import propagate, trace

    lines = _stdin_lines()
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
    url = f"http://127.0.0.1:{args.target_port}/chat"
    _preload()
    _say("loaded")
    go = _wait_line(lines, 120.0).split()
    if not go or go[0] != "go":
        return 1
    t_provider, t_start, t_stop, t_done = (float(x) for x in go[1:5])
    _sleep_until(t_provider)
    provider, delay_ms = _provider(args.service, args.endpoint)
    started = time.monotonic()
    tracer = provider.get_tracer("bench.hold_window")
    _say(f"started {started:.6f} {delay_ms:.0f}")
    issued = [0] * args.streams
    errors = [0] * args.streams

    def stream(k: int) -> None:
        rnd = random.Random(args.seed * 1000 + k)
        _sleep_until(t_start)
        while True:
            nxt = time.monotonic() + rnd.uniform(0.0, MAX_INTERVAL_S)
            if nxt >= t_stop:
                return
            _sleep_until(nxt)
            with tracer.start_as_current_span("a.request", kind=trace.SpanKind.SERVER):
                with tracer.start_as_current_span(FETCH_SPAN):
                    pass
                headers: dict[str, str] = {}
                propagate.inject(headers)
                try:
                    with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as resp:
                        resp.read()
                    issued[k] += 1
                except OSError:
                    errors[k] += 1

    threads = [threading.Thread(target=stream, args=(k,), daemon=True) for k in range(args.streams)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(1.0, t_stop - time.monotonic() + 15.0))
    _sleep_until(t_done)  # every span ended by now has had its scheduled export
    _say("done " + json.dumps({"issued": sum(issued), "errors": sum(errors)}))
    _wait_line(lines, args.max_life)
    provider.shutdown()
    return 0


def run_probe(args: argparse.Namespace) -> int:
    """Build a processor, end one span ``args.probe_after`` s later, then idle: the arrival time
    tells a fixed timer (arrives at start + delay) from 'delay after the first span' (at end + delay)."""
    lines = _stdin_lines()
    provider, delay_ms = _provider(args.service, args.endpoint)
    started = time.monotonic()
    tracer = provider.get_tracer("bench.hold_window")
    _say(f"started {started:.6f} {delay_ms:.0f}")
    time.sleep(args.probe_after)
    with tracer.start_as_current_span("probe"):
        pass
    ended = time.monotonic()
    _say(f"ended {ended:.6f}")
    _wait_line(lines, args.max_life)
    provider.shutdown()
    return 0


# --------------------------------------------------------------------------------------------
# Orchestration (parent process)


class Child:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        errf = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 - owned by the child
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "bench.hold_window", *argv], cwd=ROOT, env=env, text=True, bufsize=1,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errf, start_new_session=True,
        )
        errf.close()
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.popen.stdout is not None
        threading.Thread(target=self._pump, args=(self.popen.stdout,), daemon=True).start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line.rstrip("\n"))
        self.lines.put("")

    def expect(self, word: str, timeout: float) -> list[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            parts = line.split(maxsplit=1)
            if parts and parts[0] == word:
                return parts
            if line == "" and self.popen.poll() is not None:
                break
        raise RuntimeError(f"{self.name}: no {word!r} line within {timeout:.0f}s; log:\n{self.log_tail()}")

    def send(self, line: str) -> None:
        stdin = self.popen.stdin
        if stdin is not None and self.popen.poll() is None:
            with contextlib.suppress(OSError):
                stdin.write(line + "\n")
                stdin.flush()

    def log_tail(self, n: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        return ""

    def stop(self, grace: float) -> int | None:
        """quit (already sent, or EOF), wait, SIGTERM, wait, SIGKILL."""
        p = self.popen
        with contextlib.suppress(OSError):
            if p.stdin is not None:
                p.stdin.close()
        for step in (None, p.terminate, p.kill):
            if step is not None:
                with contextlib.suppress(ProcessLookupError):
                    step()
            try:
                p.wait(timeout=grace if step is None else 5.0)
                break
            except subprocess.TimeoutExpired:
                continue
        if p.stdout is not None:
            with contextlib.suppress(OSError):
                p.stdout.close()
        return p.returncode


def child_env(delay_ms: float | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OTEL_") and k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PYTHONUNBUFFERED"] = "1"
    if delay_ms is not None:
        env["OTEL_BSP_SCHEDULE_DELAY"] = str(int(delay_ms))
    return env


@dataclass
class Pair:
    case: Case
    round: int
    index: int
    offset_s: float
    a: str
    b: str
    started_a: float = 0.0
    started_b: float = 0.0
    effective_delay_a_ms: float = 0.0
    effective_delay_b_ms: float = 0.0
    issued: int = 0
    errors: int = 0


def run_round(rnd_i: int, pairs: list[Pair], endpoint: str, run_s: float, streams: int, log_dir: Path,
              children: list[Child], probe: bool, seed: int) -> dict[str, Any]:
    """One round: fresh processes for every pair of every case, traffic for run_s seconds."""
    b_children: dict[str, Child] = {}
    a_children: dict[str, Child] = {}
    probe_child: Child | None = None
    max_life = run_s + 120.0
    for p in pairs:
        c = Child(p.b, ["--role", "b", "--service", p.b, "--endpoint", endpoint, "--seed", str(seed + p.index),
                        "--max-life", f"{max_life:.0f}"], child_env(p.case.b_delay_ms), log_dir)
        children.append(c)
        b_children[p.b] = c
    for p in pairs:
        port = b_children[p.b].expect("ready", 60.0)[1]
        c = Child(p.a, ["--role", "a", "--service", p.a, "--endpoint", endpoint, "--target-port", port,
                        "--streams", str(streams), "--seed", str(seed * 100 + rnd_i * 10 + p.index),
                        "--max-life", f"{max_life:.0f}"], child_env(p.case.a_delay_ms), log_dir)
        children.append(c)
        a_children[p.a] = c
    for c in a_children.values():
        c.expect("loaded", 60.0)
    if probe:
        probe_child = Child("probe", ["--role", "probe", "--service", "probe", "--endpoint", endpoint,
                                      "--probe-after", "2.0", "--max-life", f"{max_life:.0f}"],
                            child_env(None), log_dir)
        children.append(probe_child)
    max_delay = max(max(p.case.delay_a(), p.case.delay_b()) for p in pairs)
    t_base = time.monotonic() + 0.5
    t_start = t_base + PHASE_WINDOW_S + 0.3
    t_stop = t_start + run_s
    t_done = t_stop + max_delay + 2.0
    for p in pairs:
        b_children[p.b].send(f"go {t_base:.6f}")
        a_children[p.a].send(f"go {t_base + p.offset_s:.6f} {t_start:.6f} {t_stop:.6f} {t_done:.6f}")
    for p in pairs:
        parts = b_children[p.b].expect("started", 30.0)[1].split()
        p.started_b, p.effective_delay_b_ms = float(parts[0]), float(parts[1])
        parts = a_children[p.a].expect("started", 30.0 + PHASE_WINDOW_S)[1].split()
        p.started_a, p.effective_delay_a_ms = float(parts[0]), float(parts[1])
    probe_info: dict[str, Any] = {}
    if probe_child is not None:
        parts = probe_child.expect("started", 60.0)[1].split()
        probe_info = {"started": float(parts[0]), "delay_ms": float(parts[1])}
        probe_info["ended"] = float(probe_child.expect("ended", 30.0)[1])
    for p in pairs:
        done = json.loads(a_children[p.a].expect("done", t_done - time.monotonic() + 30.0)[1])
        p.issued, p.errors = int(done["issued"]), int(done["errors"])
    cutoff = time.monotonic()
    for c in [*a_children.values(), *b_children.values(), *([probe_child] if probe_child else [])]:
        c.send("quit")
    for c in [*a_children.values(), *b_children.values(), *([probe_child] if probe_child else [])]:
        c.stop(grace=10.0)
    return {"cutoff": cutoff, "t_start": t_start, "t_stop": t_stop, "probe": probe_info}


# --------------------------------------------------------------------------------------------
# Analysis


def quantile(xs: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default); xs sorted."""
    if not xs:
        return math.nan
    pos = q * (len(xs) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def distribution(values: list[float]) -> dict[str, Any]:
    xs = sorted(values)
    if not xs:
        return {"count": 0}
    return {
        "count": len(xs),
        "fraction_positive": round(sum(1 for x in xs if x > 0) / len(xs), 4),
        "min": round(xs[0], 4),
        "p50": round(quantile(xs, 0.50), 4),
        "p90": round(quantile(xs, 0.90), 4),
        "p99": round(quantile(xs, 0.99), 4),
        "p99.9": round(quantile(xs, 0.999), 4),
        "max": round(xs[-1], 4),
        "mean": round(sum(xs) / len(xs), 4),
    }


def exceed(values: list[float], thresholds: tuple[float, ...]) -> dict[str, float]:
    n = len(values) or 1
    return {f"{t:g}s": round(sum(1 for x in values if x > t) / n, 4) for t in thresholds}


def model(delay_a: float, delay_b: float, n: int = 200_000) -> dict[str, Any]:
    """lead = U(0, delay_a) - U(0, delay_b), independent: uniformly distributed timer phases,
    export round trips ignored."""
    r = random.Random(0)
    return distribution([r.uniform(0, delay_a) - r.uniform(0, delay_b) for _ in range(n)])


def analyse_case(case: Case, pairs: list[Pair], arrivals: list[Arrival],
                 rounds: list[dict[str, Any]]) -> dict[str, Any]:
    mine = [p for p in pairs if p.case is case]
    services = {p.a for p in mine} | {p.b for p in mine}
    cutoff_of = {p.a: rounds[p.round]["cutoff"] for p in mine} | {p.b: rounds[p.round]["cutoff"] for p in mine}
    fetch: dict[str, Arrival] = {}
    gen: dict[str, Arrival] = {}
    late = 0
    for a in arrivals:
        if a.service not in services:
            continue
        if a.mono > cutoff_of[a.service]:
            late += 1
            continue
        if a.name == FETCH_SPAN:
            fetch[a.trace_id] = a
        elif a.is_generation:
            gen[a.trace_id] = a
    pair_of = {p.a: p for p in mine}
    leads: list[float] = []
    by_pair: dict[str, list[float]] = {p.a: [] for p in mine}
    for tid, f in fetch.items():
        g = gen.get(tid)
        if g is None:
            continue
        lead = f.mono - g.mono
        leads.append(lead)
        by_pair[f.service].append(lead)
    wait_a = [f.wall - f.end_ns / 1e9 for f in fetch.values()]
    wait_b = [g.wall - g.end_ns / 1e9 for g in gen.values()]
    issued = sum(p.issued for p in mine)
    per_pair = []
    for a_name, xs in by_pair.items():
        p = pair_of[a_name]
        xs.sort()
        per_pair.append({
            "round": p.round, "pair": p.index,
            "offset_set_s": round(p.offset_s, 3),
            "offset_measured_s": round(p.started_a - p.started_b, 4),
            "effective_delay_ms": {"a": p.effective_delay_a_ms, "b": p.effective_delay_b_ms},
            "traces": len(xs), "errors": p.errors,
            "fraction_positive": round(sum(1 for x in xs if x > 0) / len(xs), 3) if xs else None,
            "max_lead_s": round(xs[-1], 3) if xs else None,
        })
    return {
        "description": case.description,
        "schedule_delay_ms": {"a": case.delay_a() * 1e3, "b": case.delay_b() * 1e3},
        "env_override": {"a": case.a_delay_ms, "b": case.b_delay_ms},
        "traces_issued": issued,
        "traces_with_both_spans": len(leads),
        "fetch_spans_received": len(fetch),
        "generation_spans_received": len(gen),
        "spans_after_cutoff_ignored": late,
        "lead_s": distribution(leads),
        "fraction_lead_above": exceed(leads, (1.0, 2.0, 3.0, 4.0, 5.0, 5.5, 6.0)),
        "model_lead_s": model(case.delay_a(), case.delay_b()),
        "export_wait_s": {
            "a_fetch_span": distribution(wait_a),
            "b_generation_span": distribution(wait_b),
            "note": "receiver arrival (time.time) minus the span's end_time_unix_nano: how long the span sat in "
                    "its service's batch processor plus the export round trip",
        },
        "pairs": per_pair,
    }


def export_periods(arrivals: list[Arrival], service_prefix: str) -> dict[str, Any]:
    """Gaps between successive export requests of each process (one request per distinct arrival time)."""
    per: dict[str, set[float]] = {}
    for a in arrivals:
        if a.service.startswith(service_prefix):
            per.setdefault(a.service, set()).add(a.mono)
    gaps: list[float] = []
    for times in per.values():
        ts = sorted(times)
        gaps.extend(b - a for a, b in itertools.pairwise(ts))
    return distribution(gaps)


def theory() -> dict[str, Any]:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    def where(obj: Any) -> str:
        try:
            path = Path(inspect.getsourcefile(obj) or "?")
            line = inspect.getsourcelines(obj)[1]
        except (OSError, TypeError):
            return "?"
        parts = path.parts
        short = "/".join(parts[parts.index("opentelemetry"):]) if "opentelemetry" in parts else str(path)
        return f"{short}:{line}"

    out: dict[str, Any] = {
        "batch_span_processor": f"{where(BatchSpanProcessor)} BatchSpanProcessor.__init__ reads "
                                "OTEL_BSP_SCHEDULE_DELAY (default 5000 ms) and delegates to the shared BatchProcessor; "
                                "on_end() only calls BatchProcessor.emit()",
    }
    try:
        from opentelemetry.sdk._shared_internal import BatchProcessor

        out["worker"] = (
            f"{where(BatchProcessor.worker)} BatchProcessor.worker: `while not shutdown: "
            "sleep_interrupted = self._worker_awaken.wait(self._schedule_delay); self._export(...); "
            "self._worker_awaken.clear()`. A free-running timer started with the processor's thread: it "
            "sleeps schedule_delay, exports whatever is queued (nothing if empty), sleeps again; the next "
            "wait starts after the export returns, so the period is schedule_delay + export time. It is "
            "NOT 'schedule_delay after the first span in an empty queue'.")
        out["emit"] = (
            f"{where(BatchProcessor.emit)} BatchProcessor.emit: appends to the deque and wakes the worker "
            "early only when the queue holds >= max_export_batch_size (512) items; otherwise a span waits "
            "for the next tick.")
        out["export"] = (
            f"{where(BatchProcessor._export)} BatchProcessor._export: under the export lock, pops up to 512 "
            "spans per exporter.export() call; a span ended while an export is in flight waits for the "
            "next tick.")
    except ImportError:
        out["worker"] = "opentelemetry.sdk._shared_internal.BatchProcessor not present in this SDK"
    try:
        from opentelemetry.exporter.otlp.common import http as otlp_http

        client = getattr(otlp_http, "_OTLPHTTPClient", None)
        out["exporter_retry"] = (
            f"{where(client.export) if client is not None else where(otlp_http)} _OTLPHTTPClient.export: "
            f"_MAX_RETRIES = {getattr(otlp_http, '_MAX_RETRIES', '?')}, "
            f"_DEFAULT_TIMEOUT = {getattr(otlp_http, '_DEFAULT_TIMEOUT', '?')} s, backoff 2**retry * "
            "uniform(0.8, 1.2): a failed or slow export of A's batch keeps the worker busy up to the "
            "exporter timeout (OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) before the next tick.")
    except ImportError:
        pass
    out["worst_case_lead"] = (
        "Span waits in a process are in [0, schedule_delay + export time) (uniform over the timer phase). "
        "lead = wait_A(fetch) + rtt_A - wait_B(generation) - rtt_B - (gen end - fetch end). Worst case: the "
        "fetch span ends just after A's worker popped the queue (waits a full schedule_delay_A plus its "
        "export round trip) while B's timer fires just after the generation ends: lead_max ≈ "
        "schedule_delay_A + A's export time = 5 s + a few ms on loopback at the defaults; independent of "
        "B's delay. With A's collector failing transiently, add the exporter's retries (bounded by its "
        "10 s timeout): ≈ 15 s. Most negative lead ≈ -schedule_delay_B.")
    return out


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for d in ("opentelemetry-sdk", "opentelemetry-exporter-otlp-proto-http", "opentelemetry-proto"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[d] = importlib.metadata.version(d)
    return out


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.hold_window", description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=None,
                    help="traffic minutes per case, split over the rounds (default 2.25; --quick 0.5)")
    ap.add_argument("--quick", action="store_true", help="one short round (< 1 minute in all)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds of fresh processes (default 3; --quick 1)")
    ap.add_argument("--pairs", type=int, default=6, help="A/B pairs per case and round")
    ap.add_argument("--streams", type=int, default=4, help="request streams per A process")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    # child processes
    ap.add_argument("--role", choices=("a", "b", "probe"), help=argparse.SUPPRESS)
    ap.add_argument("--service", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    ap.add_argument("--target-port", help=argparse.SUPPRESS)
    ap.add_argument("--max-life", type=float, default=600.0, help=argparse.SUPPRESS)
    ap.add_argument("--probe-after", type=float, default=2.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "a":
        return run_service_a(args)
    if args.role == "b":
        return run_service_b(args)
    if args.role == "probe":
        return run_probe(args)

    minutes = args.minutes if args.minutes is not None else (0.5 if args.quick else 2.25)
    n_rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if minutes <= 0 or n_rounds < 1 or args.pairs < 1 or args.streams < 1:
        ap.error("--minutes, --rounds, --pairs and --streams must be positive")
    run_s = minutes * 60.0 / n_rounds
    rng = random.Random(args.seed)

    pairs: list[Pair] = []
    for case in CASES:
        k = n_rounds * args.pairs
        offsets = [(i + rng.random()) / k * PHASE_WINDOW_S for i in range(k)]
        rng.shuffle(offsets)
        for r in range(n_rounds):
            for i in range(args.pairs):
                pairs.append(Pair(case, r, i, offsets[r * args.pairs + i],
                                  a=f"a-{case.name}-r{r}-p{i}", b=f"b-{case.name}-r{r}-p{i}"))

    rec = Receiver()
    server, port = start_receiver(rec)
    endpoint = f"http://127.0.0.1:{port}/v1/traces"
    children: list[Child] = []
    rounds: list[dict[str, Any]] = []
    t0 = time.monotonic()
    log_dir = Path(tempfile.mkdtemp(prefix="hold_window-"))
    try:
        for r in range(n_rounds):
            sys.stderr.write(f"hold_window: round {r + 1}/{n_rounds}, {run_s:.0f} s of traffic, "
                             f"{len(CASES) * args.pairs} A/B pairs (logs in {log_dir})\n")
            rounds.append(run_round(r, [p for p in pairs if p.round == r], endpoint, run_s, args.streams,
                                    log_dir, children, probe=(r == 0), seed=args.seed))
    finally:
        for c in children:
            if c.popen.poll() is None:
                c.stop(grace=2.0)
        server.shutdown()
        server.server_close()
    elapsed = time.monotonic() - t0

    arrivals = rec.snapshot()
    gen_sizes = [a.size for a in arrivals if a.is_generation and a.service.startswith("b-")]
    probe_info = rounds[0]["probe"]
    probe_arr = [a for a in arrivals if a.service == "probe"]
    probe_out: dict[str, Any] = {}
    if probe_info and probe_arr:
        arr = probe_arr[0].mono
        d = probe_info["delay_ms"] / 1e3
        probe_out = {
            "what": "one span ended 2.0 s after the processor was built, nothing else; a fixed timer exports "
                    "it at build + delay, 'delay after the first span' would export it at end + delay",
            "delay_s": d,
            "span_ended_after_build_s": round(probe_info["ended"] - probe_info["started"], 4),
            "arrival_after_build_s": round(arr - probe_info["started"], 4),
            "arrival_after_span_end_s": round(arr - probe_info["ended"], 4),
            "verdict": ("fixed timer from the processor's start"
                        if abs(arr - probe_info["started"] - d) < abs(arr - probe_info["ended"] - d)
                        else "delay counted from the first span"),
        }
    cases = {c.name: analyse_case(c, pairs, arrivals, rounds) for c in CASES}
    default_max = cases["default"]["lead_s"].get("max", math.nan)
    result: dict[str, Any] = {
        "benchmark": "hold_window",
        "question": "lead = arrival(A's promptstamp.fetch span) - arrival(B's generation span), seconds; "
                    "positive: the generation arrived first and the relay must hold it that long",
        "versions": versions(),
        "settings": {
            "minutes_traffic_per_case": minutes, "rounds": n_rounds, "pairs_per_case_per_round": args.pairs,
            "streams_per_a": args.streams, "request_interval_s": f"uniform(0, {MAX_INTERVAL_S:g}) per stream",
            "phase_offsets": f"A's processor built offset s after B's, offsets stratified over "
                             f"[0, {PHASE_WINDOW_S:g}) across pairs and rounds",
            "bsp": "BatchSpanProcessor() with no arguments; no OTEL_* env in the children except the case's "
                   "OTEL_BSP_SCHEDULE_DELAY",
            "exporter": "OTLPSpanExporter(endpoint=loopback /v1/traces), HTTP/protobuf, no compression",
            "cpus": os.cpu_count(), "elapsed_s": round(elapsed, 1),
        },
        "cases": cases,
        "export_period_s": {
            "default_a": export_periods(arrivals, "a-default-"),
            "b_faster_b": export_periods(arrivals, "b-b_faster-"),
            "note": "gaps between one process's successive export requests: schedule_delay + export time",
        },
        "probe": probe_out,
        "theory": theory(),
        "generation_span_bytes": {
            "count": len(gen_sizes),
            "mean": round(sum(gen_sizes) / len(gen_sizes), 1) if gen_sizes else None,
            "min": min(gen_sizes, default=None), "max": max(gen_sizes, default=None),
            "what": "Span.ByteSize() of B's generation span as received (OTel gen_ai semconv attributes, 13 of "
                    "them, no prompt/completion content); + ~3 B field tag and length prefix in the request",
        },
        "receiver": {"requests": rec.requests, "request_bytes": rec.request_bytes},
        "recommendation": {
            "hold_seconds": RECOMMENDED_HOLD_S,
            "covers_measured_default_max": bool(default_max < RECOMMENDED_HOLD_S),
            "reasoning": "The lead is bounded by the fetch record's service's schedule_delay (5 s by default) "
                         "plus its export time, whatever B's delay is. 8 s = 5 s + 3 s margin: the export round "
                         "trip through a collector, one retried export (first backoff 1 s +- 20 %) and a "
                         "GIL-busy process delaying the worker thread. It does not cover an A whose collector "
                         "is down for the exporter's full 10 s timeout (~15 s).",
        },
    }
    text = json.dumps(result, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
