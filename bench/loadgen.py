"""The load generator: a separate, long-lived process driven by JSON lines on stdin.

Requests are encoded once (``build``); a send only rewrites 4 bytes of each trace id (a per-send
counter, so every send is a new set of traces) and makes a raw-bytes gRPC unary call
(``/opentelemetry.proto.collector.{trace,logs}.v1.*Service/Export``). N clients are N threads,
each with its own channel and TCP connection.

Per batch a client sends its fetch-log request (if any), the trace request, then the late fetch
records (if any), in that order, each waiting for its answer. Closed loop (``rate`` null: as
fast as the server answers) or open loop (``rate``: trace requests per second, spread over the
clients on a fixed schedule).

The loadgen itself samples the server processes' CPU (``/proc/<pid>/stat``) at the exact
window edges, so the orchestrator never has to guess when the window began.

``transport`` "http" sends the same bytes as OTLP/HTTP protobuf (``POST /v1/traces`` and
``/v1/logs`` with ``http.client``, one keep-alive connection per client) to the relay's HTTP
receiver instead: ``bench/http_vs_grpc.py`` compares the two on one relay.

Commands (one JSON object per line in, one per line out):
  {"cmd": "build", "key": K, "kind": "mixed", "batch": 512, "n_batches": 8, "late_share": 0.05}
  {"cmd": "run", "target": "127.0.0.1:P", "workload": K, "clients": 4, "warmup": 1, "duration": 3,
   "rate": null, "pids": [..], "max_requests": null, "stop_after_refusals": null, "transport": "grpc"}
  {"cmd": "quit"}
"""

from __future__ import annotations

import http.client
import json
import os
import resource
import sys
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc

from bench.workload import PATCH_AT, Workload, build, patch

TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` so far, in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _HttpCallError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class _HttpCalls:
    """One client's keep-alive connection: ``traces(body)`` / ``logs(body)`` like the gRPC
    callables (raise on a non-2xx answer)."""

    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def _post(self, path: str, body: bytes) -> None:
        try:
            self.conn.request("POST", path, body, {"Content-Type": "application/x-protobuf"})
            r = self.conn.getresponse()
            r.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects on the next request
            raise _HttpCallError(0) from None
        if not 200 <= r.status < 300:
            raise _HttpCallError(r.status)

    def traces(self, body: bytes, timeout: float = 30) -> None:
        self._post("/v1/traces", body)

    def logs(self, body: bytes, timeout: float = 30) -> None:
        self._post("/v1/logs", body)

    def close(self) -> None:
        self.conn.close()


def _error_name(e: Exception) -> str:
    return e.code().name if isinstance(e, grpc.RpcError) else f"HTTP_{getattr(e, 'status', 0)}"


@dataclass
class _ClientLog:
    # trace calls: (t_scheduled, t_send, t_done, spans, ok, first trace id hex)
    traces: list[tuple[float, float, float, int, bool, str]] = field(default_factory=list)
    logs: list[tuple[float, float, bool]] = field(default_factory=list)  # (t_send, t_done, ok)
    errors: Counter[str] = field(default_factory=Counter)


class _Shared:
    def __init__(self, max_requests: int | None, stop_after_refusals: int | None) -> None:
        self.lock = threading.Lock()
        self.sent = 0
        self.max_requests = max_requests
        self.refusals_in_row = 0
        self.stop_after_refusals = stop_after_refusals
        self.stop = threading.Event()

    def take(self) -> bool:
        with self.lock:
            if self.max_requests is not None and self.sent >= self.max_requests:
                self.stop.set()
                return False
            self.sent += 1
            return True

    def result(self, ok: bool) -> None:
        if self.stop_after_refusals is None:
            return
        with self.lock:
            self.refusals_in_row = 0 if ok else self.refusals_in_row + 1
            if self.refusals_in_row >= self.stop_after_refusals:
                self.stop.set()


def _client(
    idx: int, channel: grpc.Channel | _HttpCalls, wl: Workload, clients: int, t_start: float, t_end: float,
    rate: float | None, shared: _Shared, log: _ClientLog,
) -> None:
    if isinstance(channel, _HttpCalls):
        traces: Any = channel.traces
        logs: Any = channel.logs
    else:
        traces = channel.unary_unary(TRACES_METHOD)
        logs = channel.unary_unary(LOGS_METHOD)
    n = len(wl.batches)
    interval = clients / rate if rate else 0.0
    seq = 0
    while not shared.stop.is_set():
        t_sched = t_start + (idx / clients) * interval + seq * interval if rate else time.monotonic()
        if rate:
            delay = t_sched - time.monotonic()
            if delay > 0 and shared.stop.wait(delay):
                break
        if time.monotonic() >= t_end or not shared.take():
            break
        b = wl.batches[(idx + seq * clients) % n]
        stamp = ((idx << 24) | (seq & 0xFFFFFF)).to_bytes(4, "big")
        seq += 1
        if b.logs_before:
            _send_logs(logs, patch(b.logs_before, b.before_offsets, stamp, b.before_time_offsets), log)
        body = patch(b.traces, b.trace_offsets, stamp)
        tid = b.first_trace_id
        first = (tid[:PATCH_AT] + stamp + tid[PATCH_AT + 4:]).hex()
        t0 = time.monotonic()
        ok = True
        try:
            traces(body, timeout=30)
        except (grpc.RpcError, _HttpCallError) as e:
            ok = False
            log.errors[f"traces:{_error_name(e)}"] += 1
        t1 = time.monotonic()
        log.traces.append((t_sched, t0, t1, b.spans, ok, first))
        shared.result(ok)
        if not ok and not rate:
            time.sleep(0.01)  # refused: do not spin
        if b.logs_after:
            _send_logs(logs, patch(b.logs_after, b.after_offsets, stamp, b.after_time_offsets), log)


def _send_logs(call: Any, body: bytes, log: _ClientLog) -> None:
    t0 = time.monotonic()
    try:
        call(body, timeout=30)
        log.logs.append((t0, time.monotonic(), True))
    except (grpc.RpcError, _HttpCallError) as e:
        log.logs.append((t0, time.monotonic(), False))
        log.errors[f"logs:{_error_name(e)}"] += 1


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    i = min(len(v) - 1, max(0, round(q * (len(v) - 1))))
    return v[i]


def run(cmd: dict[str, Any], workloads: dict[str, Workload]) -> dict[str, Any]:
    wl = workloads[cmd["workload"]]
    clients = int(cmd.get("clients", 4))
    warmup = float(cmd.get("warmup", 1.0))
    duration = float(cmd.get("duration", 3.0))
    rate = cmd.get("rate")
    rate = float(rate) if rate else None
    pids: list[int] = list(cmd.get("pids", []))
    shared = _Shared(cmd.get("max_requests"), cmd.get("stop_after_refusals"))
    options = [("grpc.max_send_message_length", 256 * 1024 * 1024),
               ("grpc.max_receive_message_length", 256 * 1024 * 1024),
               ("grpc.use_local_subchannel_pool", 1)]
    channels: list[Any]
    if cmd.get("transport", "grpc") == "http":
        channels = [_HttpCalls(cmd["target"]) for _ in range(clients)]
    else:
        channels = [grpc.insecure_channel(cmd["target"], options=options) for _ in range(clients)]
    try:
        for ch in channels:
            if isinstance(ch, grpc.Channel):
                grpc.channel_ready_future(ch).result(timeout=10)
        logs = [_ClientLog() for _ in range(clients)]
        t_start = time.monotonic() + 0.05
        t0 = t_start + warmup
        t1 = t0 + duration
        cpu_start = {p: cpu_seconds(p) for p in pids}
        threads = [threading.Thread(target=_client, args=(i, channels[i], wl, clients, t_start, t1, rate,
                                                          shared, logs[i]), daemon=True)
                   for i in range(clients)]
        for t in threads:
            t.start()
        marks: dict[str, Any] = {}

        def sample(name: str, at: float) -> None:
            delay = at - time.monotonic()
            if delay > 0 and shared.stop.wait(delay):
                pass
            marks[name] = (time.monotonic(), {p: cpu_seconds(p) for p in pids}, _self_cpu())

        sample("t0", t0)
        sample("t1", t1)
        for t in threads:
            t.join(timeout=duration + warmup + 60)
        t_end = time.monotonic()
        cpu_end = {p: cpu_seconds(p) for p in pids}
    finally:
        for ch in channels:
            ch.close()
    (m0, c0, s0), (m1, c1, s1) = marks["t0"], marks["t1"]
    window = max(1e-9, m1 - m0)
    all_traces = [r for lg in logs for r in lg.traces]
    in_win = [r for r in all_traces if m0 <= r[1] < m1]
    done_in_win = [r for r in all_traces if r[4] and m0 <= r[2] < m1]
    lat_ok = [(r[2] - r[1]) * 1000 for r in in_win if r[4]]
    late = [(r[1] - r[0]) * 1000 for r in in_win]
    log_lat = [(b - a) * 1000 for lg in logs for (a, b, ok) in lg.logs if ok and m0 <= a < m1]
    errors: Counter[str] = Counter()
    for lg in logs:
        errors.update(lg.errors)
    return {
        "ok": True,
        "window": [m0, m1],
        "window_seconds": window,
        "t_start": t_start, "t_end": t_end,
        "spans_done_window": sum(r[3] for r in done_in_win),
        "requests_done_window": len(done_in_win),
        "spans_accepted_total": sum(r[3] for r in all_traces if r[4]),
        "requests_total": len(all_traces),
        "requests_refused_total": sum(1 for r in all_traces if not r[4]),
        "spans_per_s": sum(r[3] for r in done_in_win) / window,
        "server_cpu_window": {str(p): c1[p] - c0[p] for p in pids},
        "server_cpu_total": {str(p): cpu_end[p] - cpu_start[p] for p in pids},
        "loadgen_cpu_window": s1 - s0,
        "lat_ms": {"p50": _pct(lat_ok, 0.5), "p90": _pct(lat_ok, 0.9), "p99": _pct(lat_ok, 0.99),
                   "max": max(lat_ok) if lat_ok else None, "n": len(lat_ok)},
        "logs_lat_ms": {"p50": _pct(log_lat, 0.5), "p99": _pct(log_lat, 0.99), "n": len(log_lat)},
        "send_lateness_ms": {"p50": _pct(late, 0.5), "p99": _pct(late, 0.99)},
        "errors": dict(errors),
        # for delivery latency: (t_send, t_done, first trace id) of the window's trace calls
        "sends": [(r[1], r[2], r[5]) for r in in_win if r[4]],
    }


def main() -> None:
    workloads: dict[str, Workload] = {}
    out = sys.stdout
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "build":
                wl = build(cmd.get("kind", "mixed"), int(cmd.get("batch", 512)),
                           int(cmd.get("n_batches", 8)), late_share=float(cmd.get("late_share", 0.05)))
                workloads[cmd["key"]] = wl
                reply: dict[str, Any] = {"ok": True, "describe": wl.describe()}
            elif cmd["cmd"] == "run":
                reply = run(cmd, workloads)
            else:
                reply = {"ok": False, "error": f"unknown command {cmd['cmd']!r}"}
        except Exception as e:
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
