"""Noisy neighbour: does one tenant's trouble reach another tenant's spans?

Two tenants, each with its own Langfuse project (``auth.tenants.<name>.langfuse_base_url`` and
keys), behind one relay. Tenant A is in trouble and sends at full speed; tenant B sends at a
steady rate. Per scenario:

- ``down``: A's upstream answers 503 (no Retry-After) for the whole window;
- ``throttled``: A's upstream answers 429 with ``Retry-After: 5``;
- ``hanging``: A's upstream takes each request and never answers (the relay's exporter timeout
  ends each attempt);
- ``flood``: A's upstream is healthy; A simply sends far more than B, faster than A's project
  takes it;
- ``crowd``: A's upstream is healthy; A sends with many more clients (``--crowd-clients``) and
  larger requests (``--crowd-spans``) of generation spans, which go through the processor (fair
  admission: turns at the processing).

After the window A's upstream recovers and the relay drains; then every span is counted by id at
its tenant's upstream. Reported for B: the share of its Export calls accepted, the Export call
latency, send → arrival at B's upstream (p50 / p99) and loss (accepted but never delivered);
for A: accepted, refused, and lost after its upstream recovered (accepted − delivered).

Every process is separate: the relay (``promptstamp-relay serve``, from ``--tree`` or from
``--before``'s checkout, with its own ``PYTHONPATH``), each upstream, A's flood. The relay runs
with its defaults (2 delivery workers, retries from 5 s, queue bounds 1000 requests / 256 MiB)
apart from auth, the tenants and a 2 s hold window.

Also measured (``--role headers`` alone): what a real exporter needs of the OTLP/HTTP
receiver's deadlines — the OTel Python OTLP/HTTP exporter against a raw loopback socket, each
export on a new connection and then one on the kept-alive one: connect → complete headers,
first byte → complete headers, complete headers → complete body.

And (``--role hotpath --before DIR``) the single-tenant hot path of both checkouts: the load
of ``bench/run.py`` (``bench/loadgen.py``, 4 clients, 512-span requests, pass-through and
stamping with their fetch-log requests) over gRPC or OTLP/HTTP (``--transport``) to a relay
with defaults exporting to ``bench/sink.py``, the checkouts alternating, paired per repetition:
spans delivered per relay CPU-second.

Run: ``python -m bench.noisy_neighbour [--before DIR] [--scenarios down,throttled,hanging,flood,crowd]
[--seconds 15]``. Writes ``bench/results/noisy_neighbour.md`` (``--out``) and
``bench/results/raw-noisy-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.procs import PY, ROOT, Proc, env_without_proxies, free_port, start, stop, stop_all

RESULTS = Path(__file__).resolve().parent / "results"
TRACES_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
TOKEN_A = "tenant-a-token-0123456789abcdef"
TOKEN_B = "tenant-b-token-0123456789abcdef"
SCENARIOS = ("down", "throttled", "hanging", "flood", "crowd")
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


# -- the requests -----------------------------------------------------------------------------------
def request(prefix: int, first: int, n: int, stamped: bool = False) -> tuple[bytes, list[int]]:
    """An encoded trace request of ``n`` spans with span ids ``prefix << 48 | first .. first + n
    - 1``: plain (nothing to stamp: no hold), or ``stamped``: generation spans with a prompt key
    (processed, held for their fetch record)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value=f"svc-{prefix}")))
    ss = rs.scope_spans.add()
    ss.scope.name = "noisy-neighbour"
    now = time.time_ns()
    ids = []
    for i in range(n):
        sid = prefix << 48 | (first + i)
        ids.append(sid)
        sp = ss.spans.add(trace_id=(sid + 1).to_bytes(16, "big"), span_id=sid.to_bytes(8, "big"),
                          name="work", start_time_unix_nano=now, end_time_unix_nano=now + 1000)
        sp.attributes.append(KeyValue(key="http.route", value=AnyValue(string_value="/orders/{id}" + "x" * 100)))
        if stamped:
            for k, v in (("gen_ai.operation.name", "chat"), ("gen_ai.request.model", "gpt-4o-mini"),
                         ("app.prompt.key", "order-status-answer"), ("app.prompt.label", "production")):
                sp.attributes.append(KeyValue(key=k, value=AnyValue(string_value=v)))
    return req.SerializeToString(), ids


# -- role: an upstream (a Langfuse project's ingest) -----------------------------------------------
def serve_upstream(port: int) -> None:
    """``POST /api/public/otel/v1/traces`` answered per the mode (``POST /_mode`` ok|503|429|hang);
    ``GET /_arrivals``: span id -> first arrival (monotonic) of every span answered 200."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    lock = threading.Lock()
    arrivals: dict[int, float] = {}
    state: dict[str, Any] = {"mode": "ok", "answered": 0, "refused": 0}
    recovered = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            with lock:
                body = json.dumps({"arrivals": {str(k): v for k, v in arrivals.items()}, **state}).encode()
            self._send(200, body)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/_mode":
                with lock:
                    state["mode"] = body.decode()
                if state["mode"] == "ok":
                    recovered.set()
                else:
                    recovered.clear()
                self._send(200, b"")
                return
            at = time.monotonic()
            mode = state["mode"]
            if mode == "hang":
                recovered.wait(60)
                self.close_connection = True
                return
            if mode in ("503", "429"):
                with lock:
                    state["refused"] += 1
                self._send(int(mode), b"injected", {"Retry-After": "5"} if mode == "429" else {})
                return
            if "gzip" in (self.headers.get("Content-Encoding") or ""):
                body = gzip.decompress(body)
            req = ExportTraceServiceRequest.FromString(body)
            with lock:
                state["answered"] += 1
                for rs in req.resource_spans:
                    for ss in rs.scope_spans:
                        for sp in ss.spans:
                            arrivals.setdefault(int.from_bytes(sp.span_id, "big"), at)
            self._send(200, b"")

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print(f"upstream listening on 127.0.0.1:{port}", flush=True)
    server.serve_forever(poll_interval=0.1)


class UpstreamClient:
    def __init__(self, proc: Proc) -> None:
        self.proc = proc
        self.base = f"http://{proc.address}"

    def mode(self, mode: str) -> None:
        req = urllib.request.Request(self.base + "/_mode", data=mode.encode(), method="POST")
        with _OPENER.open(req, timeout=10) as r:
            r.read()

    def state(self) -> dict[str, Any]:
        with _OPENER.open(self.base + "/_arrivals", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
        data["arrivals"] = {int(k): v for k, v in data["arrivals"].items()}
        return data


# -- role: what a real OTLP/HTTP exporter needs of the deadlines --------------------------------------
def measure_headers(rounds: int = 20) -> dict[str, Any]:
    """The OTel Python OTLP/HTTP exporter against a raw loopback socket: milliseconds from
    connect to complete headers (first request of a connection), from a request's first byte to
    its complete headers, and from complete headers to complete body."""
    import socket

    from opentelemetry.exporter.otlp.proto.http import Compression
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    got: dict[str, list[float]] = {"connect_to_headers": [], "first_byte_to_headers": [], "headers_to_body": []}
    sizes: list[int] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    port = srv.getsockname()[1]

    def serve(c: socket.socket) -> None:
        connected, first_request, buf = time.perf_counter(), True, b""
        with c:
            while True:
                first_byte = None
                while b"\r\n\r\n" not in buf:
                    data = c.recv(65536)
                    if not data:
                        return
                    first_byte = first_byte or time.perf_counter()
                    buf += data
                headers_done = time.perf_counter()
                head, _, buf = buf.partition(b"\r\n\r\n")
                n = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:")), 0)
                while len(buf) < n:
                    data = c.recv(65536)
                    if not data:
                        return
                    buf += data
                body_done = time.perf_counter()
                buf = buf[n:]
                if first_request:
                    got["connect_to_headers"].append(headers_done - connected)
                got["first_byte_to_headers"].append(headers_done - (first_byte or headers_done))
                got["headers_to_body"].append(body_done - headers_done)
                sizes.append(n)
                first_request = False
                c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                c, _ = srv.accept()
                threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("headers")
    for _ in range(512):
        with tracer.start_as_current_span("work", attributes={"a": "x" * 500, "b": 1}):
            pass
    spans = memory.get_finished_spans()
    for compression in (Compression.NoCompression, Compression.Gzip):
        for n in (1, 512):
            for _ in range(rounds):
                exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{port}/v1/traces", compression=compression)
                exporter.export(spans[:n])  # a new connection
                exporter.export(spans[:n])  # the kept-alive one
                exporter.shutdown()  # type: ignore[no-untyped-call]
    srv.close()
    return {k: {"median_ms": round(statistics.median(v) * 1e3, 3), "max_ms": round(max(v) * 1e3, 3), "n": len(v)}
            for k, v in got.items()} | {"body_bytes": [min(sizes), max(sizes)]}


# -- role: the single-tenant hot path, two checkouts -------------------------------------------------
def hotpath(trees: list[tuple[str, Path]], reps: int, transport: str) -> dict[str, Any]:
    """Spans per relay CPU-second at saturation, per workload and checkout, paired per repetition."""
    import re

    from bench.loadgen import cpu_seconds as proc_cpu
    from bench.procs import Loadgen, SinkClient
    from bench.run import PUBLIC_KEY, SECRET_KEY

    got: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmpd:
        tmp = Path(tmpd)
        sink = start("sink", [PY, "-m", "bench.sink"], log_dir=tmp, ready="sink listening on")
        loadgen = Loadgen(tmp)
        try:
            sink_client = SinkClient(sink.port)
            for kind in ("nokey", "mixed"):
                loadgen.call({"cmd": "build", "key": f"{kind}-512", "kind": kind, "batch": 512})
            for rep in range(reps):
                for kind in ("nokey", "mixed"):
                    for name, tree in (trees if rep % 2 == 0 else trees[::-1]):
                        config = tmp / f"relay-{name}-{rep}-{kind}.yaml"
                        config.write_text(
                            "listen: 127.0.0.1:0\nreceivers: {http: {listen: 127.0.0.1:0}}\n"
                            "metrics_listen: 127.0.0.1:0\nhold: {seconds: 2}\nexporter:\n  type: langfuse\n"
                            f"  langfuse:\n    base_url: http://127.0.0.1:{sink.port}\n"
                            f"    public_key: {PUBLIC_KEY}\n    secret_key: {SECRET_KEY}\n")
                        env = {k: v for k, v in env_without_proxies().items() if k != "PYTHONPATH"}
                        env["PYTHONPATH"] = f"{tree / 'processor'}:{tree / 'sdk'}"
                        sink_client.reset()
                        relay = start(f"relay-{name}", [PY, "-m", "promptstamp_relay.cli", "serve", "--config",
                                                        str(config)], log_dir=tmp, env=env,
                                      ready="promptstamp-relay listening on")
                        try:
                            http = re.search(r"(\S+) \(OTLP/HTTP\)", relay.ready_line)
                            target = relay.address if transport == "grpc" or http is None else http.group(1)
                            cpu0 = proc_cpu(relay.pid)
                            run = loadgen.call({"cmd": "run", "target": target, "workload": f"{kind}-512",
                                                "clients": 4, "warmup": 0.5, "duration": 4.0, "pids": [relay.pid],
                                                "transport": transport}, timeout=200)
                            st = sink_client.wait_spans(run["spans_accepted_total"], timeout=15)
                            per_cpu = st["spans"] / max(1e-9, proc_cpu(relay.pid) - cpu0)
                        finally:
                            stop(relay)
                        got.setdefault(kind, {}).setdefault(name, []).append(per_cpu)
                        print(f"hotpath {transport} {kind} {name} rep {rep + 1}: {per_cpu:,.0f} spans/CPU-s",
                              file=sys.stderr, flush=True)
        finally:
            loadgen.close()
            stop(sink)
    first, second = trees[0][0], trees[1][0]
    return {kind: {"medians": {n: statistics.median(v) for n, v in by.items()},
                   "ratios": [b / a for a, b in zip(by[first], by[second], strict=True)]}
            for kind, by in got.items()}


# -- role: tenant A's flood -----------------------------------------------------------------------
def flood(address: str, clients: int, seconds: float, spans: int, stamped: bool = False) -> dict[str, Any]:
    """``clients`` closed loops sending ``spans``-span requests as fast as the relay answers,
    refused or not, for ``seconds``."""
    import grpc

    stop_at = time.monotonic() + seconds
    counts = {"accepted_requests": 0, "accepted_spans": 0, "refused": 0, "errors": 0}
    accepted: list[int] = []
    lock = threading.Lock()

    def loop(k: int) -> None:
        channel = grpc.insecure_channel(address)
        call = channel.unary_unary(TRACES_EXPORT)
        next_id = k << 40
        try:
            while time.monotonic() < stop_at:
                payload, ids = request(0xA, next_id, spans, stamped)
                next_id += spans
                try:
                    call(payload, timeout=10, metadata=(("authorization", f"Bearer {TOKEN_A}"),))
                except grpc.RpcError as e:
                    with lock:
                        counts["refused" if e.code() == grpc.StatusCode.UNAVAILABLE else "errors"] += 1
                    continue
                with lock:
                    counts["accepted_requests"] += 1
                    counts["accepted_spans"] += len(ids)
                    accepted.extend(ids)
        finally:
            channel.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {**counts, "ids": accepted}


# -- role: tenant B, steady -----------------------------------------------------------------------
@dataclass
class Sent:
    at: float
    ok: bool
    rpc_seconds: float
    ids: list[int]
    code: str = "OK"


@dataclass
class Steady:
    """B: one ``spans``-span request every 1/``rate`` s, from a small pool (a slow answer does
    not delay the next send)."""

    address: str
    rate: float
    spans: int
    sent: list[Sent] = field(default_factory=list)

    def run(self, seconds: float) -> None:
        import grpc

        channel = grpc.insecure_channel(self.address)
        call = channel.unary_unary(TRACES_EXPORT)
        lock = threading.Lock()

        def one(n: int) -> None:
            payload, ids = request(0xB, n * self.spans, self.spans)
            t0 = time.monotonic()
            try:
                call(payload, timeout=10, metadata=(("authorization", f"Bearer {TOKEN_B}"),))
                result = Sent(t0, True, time.monotonic() - t0, ids)
            except grpc.RpcError as e:
                result = Sent(t0, False, time.monotonic() - t0, ids, f"{e.code().name}: {e.details()}")
            with lock:
                self.sent.append(result)

        try:
            with ThreadPoolExecutor(max_workers=16) as pool:
                t_start = time.monotonic()
                n = 0
                while True:
                    due = t_start + n / self.rate
                    if due - t_start >= seconds:
                        break
                    time.sleep(max(0.0, due - time.monotonic()))
                    pool.submit(one, n)
                    n += 1
        finally:
            channel.close()


# -- the relay --------------------------------------------------------------------------------------
def relay_yaml(upstream_a: str, upstream_b: str, upstream_r: str, settings: dict[str, Any] | None = None) -> str:
    """The relay's configuration; ``settings``: dotted keys over it (a variant)."""
    import yaml

    cfg = {
        "hold": {"seconds": 2},
        "auth": {"enabled": True, "tenants": {
            "a": {"tokens": [TOKEN_A], "langfuse_public_key": "pk-lf-a", "langfuse_secret_key": "sk-lf-a",
                  "langfuse_base_url": f"http://{upstream_a}"},
            "b": {"tokens": [TOKEN_B], "langfuse_public_key": "pk-lf-b", "langfuse_secret_key": "sk-lf-b",
                  "langfuse_base_url": f"http://{upstream_b}"},
        }},
        "exporter": {"type": "langfuse", "langfuse": {"base_url": f"http://{upstream_r}",
                                                      "public_key": "pk-lf-r", "secret_key": "sk-lf-r"}},
    }
    for key, value in (settings or {}).items():
        node: dict[str, Any] = cfg
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return str(yaml.safe_dump(cfg))


def start_relay(tree: Path, config: Path, log_dir: Path, name: str) -> Proc:
    env = env_without_proxies()
    env = {k: v for k, v in env.items() if not k.startswith(("LANGFUSE_", "PROMPTSTAMP_", "OTEL_"))}
    env["PYTHONPATH"] = f"{tree / 'processor'}:{tree / 'sdk'}"
    proc = start(name, [PY, "-m", "promptstamp_relay.cli", "serve", "--config", str(config),
                        "--listen", "127.0.0.1:0", "--http-listen", "", "--metrics-listen", "127.0.0.1:0",
                        "--check-upstream=off"],
                 log_dir=log_dir, env=env, ready="listening on", timeout=30)
    proc.metrics = proc.ready_line.rsplit("metrics on ", 1)[1].split()[0].rstrip(",") \
        if "metrics on " in proc.ready_line else ""
    return proc


def relay_metrics(proc: Proc) -> dict[str, float]:
    out: dict[str, float] = {}
    with _OPENER.open(f"http://{proc.metrics}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
    return out


def queued(proc: Proc) -> float:
    m = relay_metrics(proc)
    return sum(v for k, v in m.items() if k.startswith(("promptstamp_queue_depth{", "promptstamp_held_spans")))


# -- one run ----------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


@contextlib.contextmanager
def upstreams(log_dir: Path) -> Iterator[dict[str, UpstreamClient]]:
    procs: list[Proc] = []
    try:
        out = {}
        for name in ("a", "b", "r"):
            port = free_port()
            p = start(f"upstream-{name}", [PY, "-m", "bench.noisy_neighbour", "--role", "upstream",
                                           "--port", str(port)], log_dir=log_dir, env=env_without_proxies(),
                      ready="upstream listening on")
            procs.append(p)
            out[name] = UpstreamClient(p)
        yield out
    finally:
        for p in procs:
            stop(p)


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


def run_one(tree: Path, version: str, scenario: str, args: argparse.Namespace, log_dir: Path,
            settings: dict[str, Any] | None = None) -> dict[str, Any]:
    mode = {"down": "503", "throttled": "429", "hanging": "hang", "flood": "ok", "crowd": "ok"}[scenario]
    crowd = scenario == "crowd"
    with upstreams(log_dir) as ups:
        config = log_dir / f"relay-{version}-{scenario}.yaml"
        config.write_text(relay_yaml(ups["a"].proc.address, ups["b"].proc.address, ups["r"].proc.address, settings))
        relay = start_relay(tree, config, log_dir, f"relay-{version}-{scenario}")
        flood_proc: Proc | None = None
        try:
            ups["a"].mode(mode)
            cpu0 = cpu_seconds(relay.pid)
            flood_out = log_dir / f"flood-{version}-{scenario}.json"
            flood_proc = start(f"flood-{version}-{scenario}",
                               [PY, "-m", "bench.noisy_neighbour", "--role", "flood", "--address", relay.address,
                                "--clients", str(args.crowd_clients if crowd else args.a_clients),
                                "--seconds", str(args.seconds),
                                "--spans", str(args.crowd_spans if crowd else args.a_spans),
                                "--json-out", str(flood_out), *(["--stamped"] if crowd else [])],
                               log_dir=log_dir, env=env_without_proxies())
            b = Steady(relay.address, args.b_rate, args.b_spans)
            b.run(args.seconds)
            flood_proc.popen.wait(timeout=args.seconds + 60)
            cpu_window = cpu_seconds(relay.pid) - cpu0
            a = json.loads(flood_out.read_text())
            peak = relay_metrics(relay)
            ups["a"].mode("ok")
            recovered_at = time.monotonic()
            drained = False
            while time.monotonic() - recovered_at < args.drain:
                if queued(relay) == 0:
                    drained = True
                    break
                time.sleep(0.5)
            drain_seconds = time.monotonic() - recovered_at
            time.sleep(0.5)
            got_b = ups["b"].state()["arrivals"]
            got_a = ups["a"].state()["arrivals"]
            final = relay_metrics(relay)
        finally:
            if flood_proc is not None:
                stop(flood_proc)
            stop(relay)
    ok = [s for s in b.sent if s.ok]
    b_accepted_ids = [i for s in ok for i in s.ids]
    delivered = [got_b[i] - s.at for s in ok for i in s.ids[:1] if i in got_b]
    b_lost = sum(1 for i in b_accepted_ids if i not in got_b)
    a_ids = set(a.pop("ids"))
    a_lost = sum(1 for i in a_ids if i not in got_a)
    codes: dict[str, int] = {}
    for s in b.sent:
        codes[s.code] = codes.get(s.code, 0) + 1

    def m(metrics: dict[str, float], prefix: str) -> float:
        return sum(v for k, v in metrics.items() if k.startswith(prefix))

    return {
        "version": version, "scenario": scenario, "seconds": args.seconds,
        "b": {
            "sent": len(b.sent), "accepted": len(ok), "accepted_share": len(ok) / max(1, len(b.sent)),
            "codes": codes, "accepted_spans": len(b_accepted_ids), "lost_spans": b_lost,
            "delivered_requests": len(delivered),
            "delivery_p50_ms": _ms(pct(delivered, 0.5)), "delivery_p99_ms": _ms(pct(delivered, 0.99)),
            "delivery_max_ms": _ms(max(delivered) if delivered else None),
            "rpc_p50_ms": _ms(pct([s.rpc_seconds for s in b.sent], 0.5)),
            "rpc_p99_ms": _ms(pct([s.rpc_seconds for s in b.sent], 0.99)),
        },
        "a": {**a, "delivered_spans": len(a_ids) - a_lost, "lost_spans": a_lost},
        "relay": {
            "cpu_seconds_window": round(cpu_window, 2), "drained": drained, "drain_seconds": round(drain_seconds, 1),
            "refused_at_window_end": m(peak, "promptstamp_requests_refused_backpressure_total"),
            "failed_items": m(final, "promptstamp_export_failed_items_total"),
            "exported_items": m(final, "promptstamp_exported_items_total{"),
        },
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# -- the report -------------------------------------------------------------------------------------
def render(runs: list[dict[str, Any]], args: argparse.Namespace, headers: dict[str, Any] | None = None) -> str:
    def f(v: Any, unit: str = "") -> str:
        return "–" if v is None else f"{v:,}{unit}" if isinstance(v, int) else f"{v:,.1f}{unit}"

    lines = [
        "# Noisy neighbour: tenant A in trouble, tenant B at a steady rate",
        "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python -m bench.noisy_neighbour"
        f" --seconds {args.seconds:g}` on this machine ({os.cpu_count()} CPUs, Python "
        f"{sys.version.split()[0]}), one run per row; every process separate, loopback.",
        "",
        f"Load: A = {args.a_clients} gRPC clients in closed loops, {args.a_spans}-span requests as fast as the relay "
        f"answers (refused or not, no pause), for {args.seconds:g} s; B = one {args.b_spans}-span request every "
        f"{1000 / args.b_rate:g} ms ({args.b_rate:g}/s), no retry (a refusal counts against B's acceptance). "
        "Relay: each checkout's defaults (2 delivery workers, retries from 5 s, 1000 requests / 256 MiB of "
        "queue; before: 4 gRPC handler threads; after: 4 turns at the processing, 24 handler threads, a share of the "
        "queue per destination) plus two tenants with their own Langfuse projects and a 2 s hold window. After the window "
        "A's upstream recovers and the relay drains "
        f"(at most {args.drain:g} s); then every span is looked up by id at its tenant's upstream.",
        "",
        "Scenarios: **down** A's upstream answers 503; **throttled** 429 with `Retry-After: 5`; **hanging** "
        "takes each request and never answers (the exporter's 10 s timeout ends each attempt); **flood** A's "
        "upstream is healthy and A just sends far more than B (faster than A's project takes it); **crowd** A's "
        f"upstream is healthy and A sends from {args.crowd_clients} clients, {args.crowd_spans}-span requests of "
        "generation spans that go through the processor (turns at the processing).",
        "",
        "| scenario | relay | B accepted | B Export p50 / p99 ms | B send → delivered p50 / p99 ms | B lost | "
        "A accepted / refused requests | A lost after recovery | drained |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        b, a, rl = r["b"], r["a"], r["relay"]
        lines.append(
            f"| {r['scenario']} | {r['version']} | {b['accepted']}/{b['sent']} ({100 * b['accepted_share']:.0f} %) | "
            f"{f(b['rpc_p50_ms'])} / {f(b['rpc_p99_ms'])} | {f(b['delivery_p50_ms'])} / {f(b['delivery_p99_ms'])} | "
            f"{b['lost_spans']} of {b['accepted_spans']} spans | {a['accepted_requests']:,} / {a['refused']:,} | "
            f"{a['lost_spans']} of {a['accepted_spans']:,} spans | "
            f"{'yes' if rl['drained'] else 'NO'} ({rl['drain_seconds']:g} s) |")
    lines += ["", "B's refusals by status: " + "; ".join(
        f"{r['scenario']} {r['version']}: {r['b']['codes']}" for r in runs), ""]
    if headers:
        lines += [
            "## What a real OTLP/HTTP exporter needs of the receiver's deadlines", "",
            "The OTel Python OTLP/HTTP exporter against a raw loopback socket (`--role headers`): each export on a "
            "new connection, then one on the kept-alive connection; 1 and 512 spans, gzip and not "
            f"(bodies of {headers['body_bytes'][0]:,}–{headers['body_bytes'][1]:,} bytes).", "",
            "| | median ms | max ms | n |", "|---|---|---|---|",
            *(f"| {k.replace('_', ' ')} | {v['median_ms']} | {v['max_ms']} | {v['n']} |"
              for k, v in headers.items() if k != "body_bytes"),
            "", "The receiver's defaults (`docs/security.md`): 5 s for the headers, 30 s for the body.", ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=("main", "upstream", "flood", "headers", "hotpath"), default="main")
    ap.add_argument("--transport", choices=("grpc", "http"), default="grpc", help="hotpath: the receiver")
    ap.add_argument("--reps", type=int, default=5, help="hotpath: paired repetitions")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--address", default="")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--tree", default=str(ROOT), help="the checkout whose relay is measured as 'after'")
    ap.add_argument("--before", default="", help="another checkout (e.g. a worktree of the old HEAD), measured first")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--drain", type=float, default=90.0)
    ap.add_argument("--a-clients", "--clients", dest="a_clients", type=int, default=4)
    ap.add_argument("--a-spans", "--spans", dest="a_spans", type=int, default=100)
    ap.add_argument("--crowd-clients", type=int, default=32)
    ap.add_argument("--crowd-spans", type=int, default=500)
    ap.add_argument("--stamped", action="store_true", help="flood role: generation spans")
    ap.add_argument("--b-rate", type=float, default=20.0)
    ap.add_argument("--b-spans", type=int, default=10)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="also run --tree with these dotted settings, e.g. 'c1={\"admission.concurrency\": 1}'")
    ap.add_argument("--out", default=str(RESULTS / "noisy_neighbour.md"))
    args = ap.parse_args(argv)
    if args.role == "upstream":
        serve_upstream(args.port)
        return 0
    if args.role == "hotpath":
        if not args.before:
            ap.error("--role hotpath needs --before DIR")
        out = hotpath([("before", Path(args.before)), ("after", Path(args.tree))], args.reps, args.transport)
        for kind, r in out.items():
            ratios = sorted(r["ratios"])
            print(f"{args.transport} {kind}: before {r['medians']['before']:,.0f}, after {r['medians']['after']:,.0f} "
                  f"spans/CPU-s; after/before per repetition {', '.join(f'{x:.3f}' for x in r['ratios'])}, "
                  f"median {statistics.median(ratios):.3f}")
        return 0
    if args.role == "headers":
        print(json.dumps(measure_headers(), indent=1))
        return 0
    if args.role == "flood":
        out = flood(args.address, args.a_clients, args.seconds, args.a_spans, args.stamped)
        Path(args.json_out).write_text(json.dumps(out))
        return 0
    trees: list[tuple[str, Path, dict[str, Any] | None]] = [
        *([("before", Path(args.before), None)] if args.before else []), ("after", Path(args.tree), None)]
    for variant in args.variant:
        name, _, settings = variant.partition("=")
        trees.append((f"after, {name}", Path(args.tree), json.loads(settings)))
    headers = measure_headers()
    runs: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="noisy-") as tmp:
            for scenario in args.scenarios.split(","):
                for version, tree, settings in trees:
                    print(f"{scenario} / {version} ...", file=sys.stderr, flush=True)
                    r = run_one(tree, version, scenario, args, Path(tmp), settings)
                    print(json.dumps(r), file=sys.stderr, flush=True)
                    runs.append(r)
    finally:
        stop_all()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"raw-noisy-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(runs, indent=1))
    Path(args.out).write_text(render(runs, args, headers), encoding="utf-8")
    print(render(runs, args, headers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
