"""The relay's OTLP/HTTP receiver against its OTLP/gRPC receiver, same load, same run.

One relay process per repetition and transport (``exporter: langfuse`` to ``bench/sink.py``,
hold 2 s, defaults otherwise, both listeners on), the bench load of ``bench/run.py`` (512-span
trace requests with their fetch-log requests before and after, ``bench/workload.py``) sent by
``bench/loadgen.py`` over gRPC (raw-bytes unary calls) or over HTTP (``POST /v1/traces`` and
``/v1/logs``, ``application/x-protobuf``, one keep-alive connection per client), closed loop,
4 clients. Figure: spans delivered to the sink per relay CPU-second, from load start until
fully drained (as ``bench/run.py`` counts it). Repetitions alternate the order; the ratio is
computed per repetition, then the median.

    .venv/bin/python -m bench.http_vs_grpc            # ~1 minute
    .venv/bin/python -m bench.http_vs_grpc --reps 5 --duration 4

Target (issue 12): HTTP ≥ 0.8 × gRPC spans per server CPU-second, in one run.
"""

from __future__ import annotations

import argparse
import atexit
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.loadgen import cpu_seconds
from bench.procs import PY, Loadgen, SinkClient, env_without_proxies, start, stop, stop_all
from bench.run import PUBLIC_KEY, RELAY_BIN, SECRET_KEY

TARGET = 0.8


def relay_yaml(tmp: Path, sink_port: int) -> Path:
    path = tmp / f"relay-{time.monotonic_ns()}.yaml"
    path.write_text(
        "listen: 127.0.0.1:0\n"
        "receivers: {http: {listen: 127.0.0.1:0}}\n"  # free ports; the ready line says which
        "hold: {seconds: 2.0}\n"
        "exporter:\n  type: langfuse\n  langfuse:\n"
        f"    base_url: http://127.0.0.1:{sink_port}\n    public_key: {PUBLIC_KEY}\n    secret_key: {SECRET_KEY}\n",
        encoding="utf-8")
    return path


def run_one(tmp: Path, sink: SinkClient, sink_port: int, loadgen: Loadgen, transport: str,
            clients: int, warmup: float, duration: float) -> dict[str, Any]:
    sink.reset()
    proc = start("relay", [RELAY_BIN, "serve", "--config", str(relay_yaml(tmp, sink_port))],
                 log_dir=tmp, ready="promptstamp-relay listening on", env=env_without_proxies())
    try:
        time.sleep(0.2)
        http = re.search(r"(\S+) \(OTLP/HTTP\)", proc.ready_line)
        assert http is not None, proc.ready_line
        target = proc.address if transport == "grpc" else http.group(1)
        cpu0 = cpu_seconds(proc.pid)
        res = loadgen.call({"cmd": "run", "target": target, "workload": "mixed-512", "clients": clients,
                            "warmup": warmup, "duration": duration, "pids": [proc.pid],
                            "transport": transport}, timeout=warmup + duration + 120)
        st = sink.wait_spans(res["spans_accepted_total"], timeout=15.0)
        cpu1 = cpu_seconds(proc.pid)
    finally:
        stop(proc)
    return {
        "transport": transport,
        "spans_accepted": res["spans_accepted_total"],
        "spans_delivered": st["spans"],
        "stamped_delivered": st["stamped"],
        "server_cpu_s": cpu1 - cpu0,
        "spans_per_cpu_s": st["spans"] / max(1e-9, cpu1 - cpu0),
        "spans_per_s": res["spans_per_s"],
        "p50_ms": res["lat_ms"]["p50"], "p99_ms": res["lat_ms"]["p99"],
        "errors": res["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--duration", type=float, default=3.0)
    args = p.parse_args(argv)
    atexit.register(stop_all)
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="promptstamp-bench-http-") as tmpdir:
        tmp = Path(tmpdir)
        sink_proc = start("sink", [PY, "-m", "bench.sink"], log_dir=tmp, ready="sink listening on")
        loadgen = Loadgen(tmp)
        try:
            loadgen.call({"cmd": "build", "key": "mixed-512", "kind": "mixed", "batch": 512})
            sink = SinkClient(sink_proc.port)
            for rep in range(args.reps):
                order = ("grpc", "http") if rep % 2 == 0 else ("http", "grpc")
                for transport in order:
                    r = run_one(tmp, sink, sink_proc.port, loadgen, transport, args.clients, args.warmup,
                                args.duration)
                    r["rep"] = rep
                    runs.append(r)
                    print(f"rep {rep + 1} {transport:4s} {r['spans_per_cpu_s']:9,.0f} spans/CPU-s  "
                          f"{r['spans_per_s']:9,.0f} spans/s  p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  "
                          f"delivered {r['spans_delivered']}/{r['spans_accepted']}  errors {r['errors']}",
                          file=sys.stderr, flush=True)
        finally:
            loadgen.close()
            stop(sink_proc)
    by: dict[str, list[dict[str, Any]]] = {"grpc": [], "http": []}
    for r in runs:
        by[r["transport"]].append(r)
    ratios = [h["spans_per_cpu_s"] / g["spans_per_cpu_s"] for g, h in zip(by["grpc"], by["http"], strict=True)]
    ratio = statistics.median(ratios)

    def med(t: str, k: str) -> float:
        return statistics.median(float(r[k]) for r in by[t])

    print("| receiver | spans per server CPU-s | spans/s | RPC p50 / p99 ms (saturated) |")
    print("|---|---|---|---|")
    for t, name in (("grpc", "OTLP/gRPC (`listen`)"), ("http", "OTLP/HTTP protobuf (`receivers.http`)")):
        print(f"| {name} | {med(t, 'spans_per_cpu_s'):,.0f} | {med(t, 'spans_per_s'):,.0f} | "
              f"{med(t, 'p50_ms'):.1f} / {med(t, 'p99_ms'):.1f} |")
    print()
    print(f"HTTP / gRPC spans per server CPU-s: {ratio:.2f}× median of {len(ratios)} paired repetitions "
          f"({min(ratios):.2f}–{max(ratios):.2f}); target ≥ {TARGET}×: {'met' if ratio >= TARGET else 'NOT met'}")
    return 0 if ratio >= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
