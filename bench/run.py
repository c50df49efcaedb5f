"""The one command: every configuration, same load, same run; results table + raw JSON.

    .venv/bin/python -m bench.run --quick     # ~2 minutes, for development
    .venv/bin/python -m bench.run --full      # <= 10 minutes, the figures we quote

Writes ``bench/results/results.md`` (committed) and ``bench/results/raw-<timestamp>.json``
(gitignored). See ``bench/README.md`` for what each configuration and figure means.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import peers
from bench.loadgen import cpu_seconds
from bench.procs import (
    PY,
    Loadgen,
    Proc,
    SinkClient,
    closed_port,
    env_without_proxies,
    free_port,
    rss_kib,
    start,
    stop,
    stop_all,
)

RESULTS = Path(__file__).resolve().parent / "results"
PUBLIC_KEY, SECRET_KEY = "pk-lf-bench", "sk-lf-bench1"  # base64 of "pk:sk" has no '=' (Rotel)
RELAY_BIN = str(Path(PY).parent / "promptstamp-relay")


@dataclass
class Profile:
    name: str
    reps: int
    clients: int
    batch: int
    warmup: float
    duration: float
    half_duration: float
    scaling_batches: list[int]
    scaling_clients: list[int]
    scaling_servers: list[str]
    scaling_duration: float
    held_levels: list[int]
    down_seconds: float
    sdk_quick: bool


PROFILES = {
    "quick": Profile("quick", reps=2, clients=4, batch=512, warmup=0.5, duration=1.5, half_duration=1.5,
                     scaling_batches=[64, 512, 4096], scaling_clients=[1, 4, 16], scaling_servers=["relay"],
                     scaling_duration=1.2, held_levels=[0, 100_000], down_seconds=8.0,
                     sdk_quick=True),
    "full": Profile("full", reps=4, clients=4, batch=512, warmup=1.0, duration=4.0, half_duration=3.0,
                    scaling_batches=[64, 128, 256, 512, 1024, 2048, 4096], scaling_clients=[1, 2, 4, 8, 16],
                    scaling_servers=["relay", "floor"], scaling_duration=3.0,
                    held_levels=[0, 25_000, 50_000, 75_000, 100_000], down_seconds=40.0, sdk_quick=False),
}


@dataclass
class Config:
    name: str
    server: str  # null | floor | relay | rotel | rotel-py
    workload: str  # mixed | nokey
    title: str
    default: bool = True  # run unless --only names others


CONFIGS = [
    Config("null", "null", "mixed", "0. gRPC alone: a Python server that answers without parsing"),
    Config("floor", "floor", "mixed", "1. floor: bare gRPC parse + serialize (upb)"),
    Config("relay", "relay", "mixed", "2. promptstamp-relay, stamping → OTLP/HTTP"),
    Config("relay-passthrough", "relay", "nokey", "3. promptstamp-relay, no app.prompt.key (pass-through)"),
    Config("floor-nokey", "floor", "nokey", "1b. floor on the pass-through load"),
    Config("rotel", "rotel", "mixed", "4a. Rotel forwarding → OTLP/HTTP"),
    Config("rotel-py", "rotel-py", "mixed", "4b. Rotel + Python processor stamping"),
]


@dataclass
class Env:
    tmp: Path
    sink: Proc
    sink_client: SinkClient
    loadgen: Loadgen
    rotel_binary: Path | None
    rotel_error: str | None
    notes: list[str] = field(default_factory=list)


# -- servers --------------------------------------------------------------------------------------
def _hold_settings(hold_seconds: float, max_spans: int | None) -> str:
    """``hold:`` with the window; ``max_spans`` (and the per-tenant cap, where the relay has one)
    raised for the memory tests, so one tenant can fill the whole window."""
    from dataclasses import fields as dc_fields

    from promptstamp_relay.config import HoldConfig

    items = [f"seconds: {hold_seconds}"]
    if max_spans is not None:
        names = {f.name for f in dc_fields(HoldConfig)}
        items.append(f"max_spans: {max_spans}")
        if "max_spans_per_tenant" in names:
            items.append(f"max_spans_per_tenant: {max_spans}")
    return "hold: {" + ", ".join(items) + "}\n"


def relay_yaml(env: Env, *, hold_seconds: float = 2.0, upstream_port: int | None = None,
               extra: str = "", hold_max_spans: int | None = None) -> Path:
    port = upstream_port if upstream_port is not None else env.sink.port
    path = env.tmp / f"relay-{time.monotonic_ns()}.yaml"
    path.write_text(
        # Free ports for every listener (read back from the ready line), never the fixed defaults.
        "listen: 127.0.0.1:0\n"
        "receivers: {http: {listen: 127.0.0.1:0}}\n"
        "metrics_listen: 127.0.0.1:0\n"
        + _hold_settings(hold_seconds, hold_max_spans) +
        "exporter:\n  type: langfuse\n  langfuse:\n"
        f"    base_url: http://127.0.0.1:{port}\n    public_key: {PUBLIC_KEY}\n    secret_key: {SECRET_KEY}\n"
        + extra, encoding="utf-8")
    return path


def start_server(env: Env, kind: str, **relay_kw: Any) -> Proc:
    if kind in ("floor", "null"):
        return start(kind, [PY, "-m", "bench.floor", *(["--null"] if kind == "null" else [])], log_dir=env.tmp,
                     ready="floor listening on", env=env_without_proxies())
    if kind == "relay":
        cfg = relay_yaml(env, **relay_kw)
        argv = [RELAY_BIN, "serve", "--config", str(cfg)]
        if relay_kw.get("upstream_port") is not None:
            argv.append("--check-upstream=off")  # an upstream that is down on purpose; the sink answers it
        proc = start("relay", argv, log_dir=env.tmp,
                     ready="promptstamp-relay listening on", env=env_without_proxies())
        m = re.search(r"metrics on (\S+)", proc.ready_line)
        proc.metrics = m.group(1) if m else ""
        return proc
    if kind in ("rotel", "rotel-py"):
        if env.rotel_binary is None:
            raise RuntimeError(env.rotel_error or "rotel is not installed")
        grpc_port, http_port = free_port(), free_port()
        argv, renv = peers.rotel_command(env.rotel_binary, grpc_port, http_port, env.sink.port,
                                         python_processor=kind == "rotel-py",
                                         public_key=PUBLIC_KEY, secret_key=SECRET_KEY)
        return start(kind, argv, log_dir=env.tmp, env=renv, ready_port=grpc_port)
    raise ValueError(kind)


def relay_metrics(proc: Proc) -> dict[str, float]:
    addr = proc.metrics
    if not addr:
        return {}
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(f"http://{addr}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("promptstamp_") and " " in line:
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out


# -- one configuration, one repetition ----------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, round(q * (len(v) - 1))))]


def _delivery(sends: list[list[Any]], arrivals: list[list[Any]]) -> dict[str, Any]:
    """Send → arrival at the sink, matched by the first span's trace id (unique per send)."""
    first_arrival: dict[str, float] = {}
    for t, tid, _n, _st in arrivals:
        if tid and tid not in first_arrival:
            first_arrival[tid] = t
    lat = [(first_arrival[tid] - t_send) * 1000 for t_send, _t_done, tid in sends if tid in first_arrival]
    return {"p50": _pct(lat, 0.5), "p99": _pct(lat, 0.99), "matched": len(lat), "sends": len(sends)}


def _delivered_in(arrivals: list[list[Any]], window: list[float]) -> int:
    return sum(a[2] for a in arrivals if window[0] <= a[0] < window[1])


def run_config(env: Env, prof: Profile, cfg: Config, half_rate: float | None) -> dict[str, Any]:
    """Saturated window, drain, then (with ``half_rate`` trace requests/s, or half of this run's
    own saturated rate when it is 0) an open-loop window for latency; one server process."""
    wl_key = f"{cfg.workload}-{prof.batch}"
    forwards = cfg.server not in ("floor", "null")
    env.sink_client.reset()
    proc = start_server(env, cfg.server)
    try:
        time.sleep(0.2)
        cpu0 = cpu_seconds(proc.pid)
        sat = env.loadgen.call({"cmd": "run", "target": proc.address, "workload": wl_key,
                                "clients": prof.clients, "warmup": prof.warmup, "duration": prof.duration,
                                "pids": [proc.pid]}, timeout=prof.warmup + prof.duration + 120)
        accepted = sat["spans_accepted_total"]
        st = env.sink_client.wait_spans(accepted, timeout=15.0) if forwards else env.sink_client.stats()
        cpu1 = cpu_seconds(proc.pid)
        delivered = st["spans"] if forwards else accepted
        window_spans = _delivered_in(st["arrivals"], sat["window"]) if forwards else sat["spans_done_window"]
        out: dict[str, Any] = {
            "config": cfg.name, "pid": proc.pid,
            "spans_per_s": window_spans / sat["window_seconds"],
            "accepted_spans_per_s": sat["spans_per_s"],
            "spans_accepted": accepted, "spans_delivered": delivered,
            "stamped_delivered": st["stamped"] if forwards else None,
            "server_cpu_s": cpu1 - cpu0,
            "spans_per_cpu_s": delivered / max(1e-9, cpu1 - cpu0),
            "server_cores_window": sum(sat["server_cpu_window"].values()) / sat["window_seconds"],
            "loadgen_cores_window": sat["loadgen_cpu_window"] / sat["window_seconds"],
            "sat_latency_ms": sat["lat_ms"], "sat_errors": sat["errors"],
            "sat_refused": sat["requests_refused_total"],
        }
        if half_rate == 0:
            half_rate = 0.5 * out["spans_per_s"] / prof.batch
        if half_rate:
            env.sink_client.reset()
            half = env.loadgen.call({"cmd": "run", "target": proc.address, "workload": wl_key,
                                     "clients": prof.clients, "warmup": 0.3, "duration": prof.half_duration,
                                     "rate": half_rate, "pids": [proc.pid]},
                                    timeout=prof.half_duration + 120)
            hst = env.sink_client.wait_spans(half["spans_accepted_total"], 10.0) if forwards else None
            out["half"] = {
                "rate_requests_per_s": half_rate,
                "rpc_ms": half["lat_ms"], "logs_rpc_ms": half["logs_lat_ms"],
                "send_lateness_ms": half["send_lateness_ms"], "errors": half["errors"],
                "delivery_ms": _delivery(half["sends"], hst["arrivals"]) if hst else None,
                "server_cores": sum(half["server_cpu_window"].values()) / half["window_seconds"],
            }
        mem = rss_kib(proc.pid)
        out["peak_rss_mib"] = mem.get("VmHWM", 0) / 1024
        out["rss_mib"] = mem.get("VmRSS", 0) / 1024
        if cfg.server == "relay":
            m = relay_metrics(proc)
            out["relay_metrics"] = {k: v for k, v in m.items() if "stamped" in k or "held" in k
                                    or "refused" in k or "passthrough" in k or "exported" in k}
    finally:
        out_code = stop(proc)
    out["exit_code"] = out_code
    return out


# -- scaling curves -------------------------------------------------------------------------------
def scaling(env: Env, prof: Profile, server: str) -> dict[str, Any]:
    curves: dict[str, Any] = {"batch": [], "clients": []}
    proc = start_server(env, server)
    try:
        points: list[tuple[str, int, int]] = [("batch", b, prof.clients) for b in prof.scaling_batches]
        points += [("clients", prof.batch, n) for n in prof.scaling_clients]
        for curve, batch, clients in points:
            env.sink_client.reset()
            res = env.loadgen.call({"cmd": "run", "target": proc.address, "workload": f"mixed-{batch}",
                                    "clients": clients, "warmup": 0.4, "duration": prof.scaling_duration,
                                    "pids": [proc.pid]}, timeout=prof.scaling_duration + 120)
            if server not in ("floor", "null"):
                st = env.sink_client.wait_spans(res["spans_accepted_total"], 10.0)
                spans = _delivered_in(st["arrivals"], res["window"])
            else:
                spans = res["spans_done_window"]
            cpu = sum(res["server_cpu_window"].values())
            curves[curve].append({
                "batch": batch, "clients": clients, "spans_per_s": spans / res["window_seconds"],
                "spans_per_cpu_s": res["spans_done_window"] / max(1e-9, cpu),
                "p50_ms": res["lat_ms"]["p50"], "p99_ms": res["lat_ms"]["p99"],
                "server_cores": cpu / res["window_seconds"], "errors": res["errors"],
            })
    finally:
        stop(proc)
    return curves


# -- memory ---------------------------------------------------------------------------------------
def memory_held(env: Env, prof: Profile) -> list[dict[str, Any]]:
    """RSS vs spans in the hold window (generations with no fetch log, hold 300 s)."""
    out: list[dict[str, Any]] = []
    proc = start_server(env, "relay", hold_seconds=300.0, hold_max_spans=100_000)
    try:
        sent = 0
        for level in prof.held_levels:
            need = (level - sent) // 512
            if need > 0:
                env.loadgen.call({"cmd": "run", "target": proc.address, "workload": "held-512", "clients": 2,
                                  "warmup": 0.0, "duration": 120.0, "max_requests": need, "pids": [proc.pid]},
                                 timeout=180)
                sent += need * 512
            time.sleep(0.5)
            m = relay_metrics(proc)
            mem = rss_kib(proc.pid)
            out.append({"target_held": level, "held_spans": m.get("promptstamp_held_spans"),
                        "held_bytes_mib": (m.get("promptstamp_held_bytes") or 0) / 2**20,
                        "rss_mib": mem["VmRSS"] / 1024, "peak_rss_mib": mem["VmHWM"] / 1024})
    finally:
        stop(proc)
    return out


def memory_down(env: Env, prof: Profile) -> dict[str, Any]:
    """Upstream down (connection refused): fill the hold window, then the queue, until refused."""
    proc = start_server(env, "relay", hold_seconds=60.0, upstream_port=closed_port(), hold_max_spans=100_000,
                        extra="queue: {shutdown_timeout_seconds: 1}\n")
    t0 = time.monotonic()
    try:
        env.loadgen.call({"cmd": "run", "target": proc.address, "workload": "held-512", "clients": 2,
                          "warmup": 0.0, "duration": prof.down_seconds / 2, "max_requests": 100_000 // 512,
                          "pids": [proc.pid]}, timeout=prof.down_seconds + 60)
        after_hold = {**rss_kib(proc.pid), **{k: v for k, v in relay_metrics(proc).items()
                                              if k.startswith(("promptstamp_held", "promptstamp_queue"))}}
        res = env.loadgen.call({"cmd": "run", "target": proc.address, "workload": "mixed-512", "clients": 4,
                                "warmup": 0.0, "duration": max(1.0, prof.down_seconds - (time.monotonic() - t0)),
                                "stop_after_refusals": 20, "pids": [proc.pid]}, timeout=prof.down_seconds + 60)
        time.sleep(0.5)
        m = relay_metrics(proc)
        mem = rss_kib(proc.pid)
        refused = res["requests_refused_total"]
        return {
            "seconds": time.monotonic() - t0,
            "after_hold_full": {"rss_mib": after_hold.get("VmRSS", 0) / 1024,
                                "held_spans": after_hold.get("promptstamp_held_spans"),
                                "held_bytes_mib": (after_hold.get("promptstamp_held_bytes") or 0) / 2**20},
            "queue_full": refused > 0,
            "refused_requests": refused, "refusal_codes": res["errors"],
            "held_spans": m.get("promptstamp_held_spans"),
            "held_bytes_mib": (m.get("promptstamp_held_bytes") or 0) / 2**20,
            "queue_bytes_mib": (m.get('promptstamp_queue_bytes{signal="traces"}') or 0) / 2**20,
            "queue_depth": m.get('promptstamp_queue_depth{signal="traces"}'),
            "queue_limit_mib": (m.get("promptstamp_queue_limit_bytes") or 0) / 2**20,
            "rss_mib": mem["VmRSS"] / 1024, "peak_rss_mib": mem["VmHWM"] / 1024,
        }
    finally:
        stop(proc)


# -- summary --------------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float] | None:
    vals = [v for v in values if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(runs: list[dict[str, Any]], reps: int) -> dict[str, Any]:
    by: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by.setdefault(r["config"], []).append(r)
    summary: dict[str, Any] = {}
    for name, rs in by.items():
        ok = [r for r in rs if "error" not in r]
        halves = [r["half"] for r in ok if r.get("half")]
        summary[name] = {
            "n": len(ok), "errors": [r["error"] for r in rs if "error" in r],
            "spans_per_s": _stats([r["spans_per_s"] for r in ok]),
            "spans_per_cpu_s": _stats([r["spans_per_cpu_s"] for r in ok]),
            "server_cores": _stats([r["server_cores_window"] for r in ok]),
            "peak_rss_mib": _stats([r["peak_rss_mib"] for r in ok]),
            "half_rpc_p50": _stats([h["rpc_ms"]["p50"] for h in halves]),
            "half_rpc_p99": _stats([h["rpc_ms"]["p99"] for h in halves]),
            "half_delivery_p50": _stats([h["delivery_ms"]["p50"] for h in halves if h.get("delivery_ms")]),
            "half_delivery_p99": _stats([h["delivery_ms"]["p99"] for h in halves if h.get("delivery_ms")]),
            "half_lateness_p99": _stats([h["send_lateness_ms"]["p99"] for h in halves]),
            "delivered_ratio": _stats([r["spans_delivered"] / max(1, r["spans_accepted"]) for r in ok]),
            "stamped_share": _stats([(r["stamped_delivered"] or 0) / max(1, r["spans_delivered"])
                                     for r in ok if r.get("stamped_delivered") is not None]),
        }
    # Ratios per repetition (same rep = same machine state), then median and spread.
    ratios: dict[str, Any] = {}

    def ratio(name: str, a: str, b: str) -> None:
        vals = []
        for rep in range(reps):
            ra = [r for r in by.get(a, []) if r.get("rep") == rep and "error" not in r]
            rb = [r for r in by.get(b, []) if r.get("rep") == rep and "error" not in r]
            if ra and rb:
                vals.append(ra[0]["spans_per_cpu_s"] / rb[0]["spans_per_cpu_s"])
        ratios[name] = _stats(vals)

    ratio("relay / floor", "relay", "floor")
    ratio("relay / rotel", "relay", "rotel")
    ratio("relay / rotel-py", "relay", "rotel-py")
    ratio("passthrough / floor (pass-through load)", "relay-passthrough", "floor-nokey")
    ratio("passthrough / floor (mixed load)", "relay-passthrough", "floor")
    summary["_ratios"] = ratios
    return summary


def _f(s: dict[str, float] | None, fmt: str = "{:,.0f}", spread: bool = True) -> str:
    if not s:
        return "–"
    text = fmt.format(s["median"])
    if spread and s.get("n", 1) > 1:
        text += f" ({fmt.format(s['min'])}–{fmt.format(s['max'])})"
    return text


TARGETS = [
    ("relay / floor", "≥ 0.5× the floor, spans per server CPU-s", 0.5),
    ("relay / rotel", "≥ 1.5× Rotel forwarding", 1.5),
    ("relay / rotel-py", "≥ 4× Rotel + Python processor", 4.0),
    ("passthrough / floor (pass-through load)", "pass-through ≥ 0.9× the floor", 0.9),
]


def render(raw: dict[str, Any]) -> str:
    s = raw["summary"]
    meta = raw["meta"]
    lines = [
        f"# Benchmark results — `{meta['profile']}` run, {meta['started']}",
        "",
        f"Machine: {meta['cpus']} CPUs, load average before the run {meta['loadavg_before']}, "
        f"after {meta['loadavg_after']}; Python {meta['python']}; protobuf {meta['protobuf']}; "
        f"grpcio {meta['grpcio']}; {meta.get('rotel_version') or 'Rotel not available'}.",
        "",
        f"Load: {meta['workload']['mixed']['batch_size']}-span trace requests, "
        f"{meta['workload']['mixed']['avg_attributes_per_span']} attributes and "
        f"{meta['workload']['mixed']['avg_span_bytes']:.0f} B per span, "
        f"{meta['workload']['mixed']['generation_share'] * 100:.1f} % generation spans, one fetch-log "
        f"record per trace ({meta['late_share'] * 100:.0f} % of them after the spans); "
        f"{meta['clients']} concurrent gRPC clients (closed loop) from a separate process; "
        f"{meta['reps']} interleaved repetitions of {meta['duration']} s windows. "
        "Figures: median (min–max) over repetitions. Spans per CPU-s = spans delivered to the sink "
        "(accepted, for the floor) / server CPU seconds from load start to fully drained.",
        "",
    ]
    if meta.get("loaded_machine"):
        lines += ["**Taken on a loaded, shared machine: absolute numbers are noisy; quote ratios "
                  "(same repetition, paired) only.**", ""]
    lines += [
        "| configuration | spans/s (saturated) | spans per server CPU-s | server cores | RPC p50 / p99 ms at half load | "
        "delivery p50 / p99 ms at half load | peak RSS MiB | delivered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for cfg in CONFIGS:
        x = s.get(cfg.name)
        if not x:
            continue
        if not x["n"]:
            lines.append(f"| {cfg.title} | not run: {'; '.join(x['errors'])[:200]} | | | | | | |")
            continue
        rpc = f"{_f(x['half_rpc_p50'], '{:.1f}', False)} / {_f(x['half_rpc_p99'], '{:.1f}')}"
        dl = (f"{_f(x['half_delivery_p50'], '{:.1f}', False)} / {_f(x['half_delivery_p99'], '{:.1f}')}"
              if x["half_delivery_p50"] else "–")
        lines.append(
            f"| {cfg.title} | {_f(x['spans_per_s'])} | {_f(x['spans_per_cpu_s'])} | "
            f"{_f(x['server_cores'], '{:.2f}', False)} | {rpc} | {dl} | {_f(x['peak_rss_mib'], '{:.0f}', False)} | "
            f"{_f(x['delivered_ratio'], '{:.3f}', False) if cfg.server not in ('floor', 'null') else 'n/a'} |")
    half_rate = meta.get("half_rate")
    if half_rate:
        lines += ["", f"Half load = {half_rate:.1f} trace requests/s ({half_rate * meta['batch']:,.0f} spans/s) "
                  "for every configuration: half of the stamping relay's saturated throughput in the first "
                  "repetition. RPC = the client's Export call; delivery = send → arrival at the sink "
                  "(Langfuse), matched by trace id (Rotel batches requests, so only the first of each "
                  "batch matches)."]
    lines += ["", "## Targets (ratios of spans per server CPU-second, paired per repetition)", "",
              "| target | measured | met |", "|---|---|---|"]
    for key, text, goal in TARGETS:
        r = s["_ratios"].get(key)
        lines.append(f"| {text} | {_f(r, '{:.2f}×')} | {'yes' if r and r['median'] >= goal else 'NO'} |")
    relay = s.get("relay", {})
    p99 = relay.get("half_rpc_p99") if relay else None
    dp99 = relay.get("half_delivery_p99") if relay else None
    lines.append(f"| relay p99 added latency ≤ 5 ms at half load (RPC) | {_f(p99, '{:.1f} ms')} | "
                 f"{'yes' if p99 and p99['median'] <= 5 else 'NO'} |")
    lines.append(f"| … same, send → delivered to the sink | {_f(dp99, '{:.1f} ms')} | "
                 f"{'yes' if dp99 and dp99['median'] <= 5 else 'NO'} |")
    sdk = raw.get("sdk")
    if sdk and "span" in sdk:
        added = sdk["span"]["in_prompt_added_us"]["best_us"]
        cached = sdk["prompt"]["cached_prompt"]["best_us"]
        lines.append(f"| SDK span processor ≤ 5 µs per span | {added:.1f} µs | {'yes' if added <= 5 else 'NO'} |")
        lines.append(f"| cached `prompt()` ≤ 50 µs | {cached:.1f} µs | {'yes' if cached <= 50 else 'NO'} |")
    sc = raw.get("scaling") or {}
    for server, curves in sc.items():
        if "error" in curves:
            lines += ["", f"## Scaling ({server}): failed: {curves['error']}"]
            continue
        lines += ["", f"## Scaling: {server}", "", "| batch spans | clients | spans/s | spans per CPU-s | "
                  "p50 ms | p99 ms | server cores |", "|---|---|---|---|---|---|---|"]
        for curve in ("batch", "clients"):
            for p in curves[curve]:
                lines.append(f"| {p['batch']} | {p['clients']} | {p['spans_per_s']:,.0f} | "
                             f"{p['spans_per_cpu_s']:,.0f} | {p['p50_ms'] or 0:.1f} | {p['p99_ms'] or 0:.1f} | "
                             f"{p['server_cores']:.2f} |")
    held = raw.get("memory_held")
    if held and not isinstance(held, dict):
        lines += ["", "## Memory vs held spans (relay, hold 300 s, generations with no fetch log)", "",
                  "| held spans | held bytes MiB | RSS MiB |", "|---|---|---|"]
        for p in held:
            lines.append(f"| {p['held_spans'] or 0:,.0f} | {p['held_bytes_mib']:.0f} | {p['rss_mib']:.0f} |")
        if len(held) >= 2 and (held[-1]["held_spans"] or 0) > (held[0]["held_spans"] or 0):
            per = ((held[-1]["rss_mib"] - held[0]["rss_mib"]) * 2**20
                   / ((held[-1]["held_spans"] or 0) - (held[0]["held_spans"] or 0)))
            lines.append(f"\n≈ {per:,.0f} B of RSS per held generation span.")
    down = raw.get("memory_down")
    if down and "error" not in down:
        lines += ["", "## Upstream down (connection refused; hold 60 s, default queue bounds)", "",
                  f"After the hold window filled: {down['after_hold_full']['held_spans'] or 0:,.0f} held spans, "
                  f"RSS {down['after_hold_full']['rss_mib']:.0f} MiB. Then "
                  + (f"until refused ({down['refused_requests']} refusals, {down['refusal_codes']}): queue "
                     if down["queue_full"] else
                     f"for {down['seconds']:.0f} s in all (**queue not yet full**: this profile's time "
                     "bound; `--full` runs longer): queue ")
                  + f"{down['queue_bytes_mib']:.0f} MiB in {down['queue_depth'] or 0:.0f} requests + held "
                  f"{down['held_bytes_mib']:.0f} MiB (bound: queue.max_bytes = {down['queue_limit_mib']:.0f} MiB "
                  f"for both); **RSS {down['rss_mib']:.0f} MiB, peak {down['peak_rss_mib']:.0f} MiB**."]
    elif down:
        lines += ["", f"## Upstream down: failed: {down['error']}"]
    if sdk and "span" in sdk:
        sp = sdk["span"]
        pr = sdk["prompt"]
        def us(x: dict[str, float]) -> str:
            return f"{x['best_us']:.1f} (median {x['median_us']:.1f})"

        lines += ["", "## SDK cost (timeit; µs per call: best of interleaved rounds, median in brackets)", "",
                  "| what | µs |", "|---|---|",
                  f"| span start+end (13 attributes) inside `prompt()`, no promptstamp processor | "
                  f"{us(sp['in_prompt']['without'])} |",
                  f"| … with `PromptBaggageSpanProcessor` | {us(sp['in_prompt']['with'])} |",
                  f"| **added per span by the processor** | **{us(sp['in_prompt_added_us'])}** |",
                  f"| added per span outside any `prompt()` | {us(sp['outside_prompt_added_us'])} |",
                  f"| of which `prompt_attributes()` (baggage read) | {us(sp['parts']['prompt_attributes'])} |",
                  f"| of which `span.set_attributes()` (2 attributes) | {us(sp['parts']['span.set_attributes'])} |",
                  f"| **cached `prompt()` enter + exit** | **{us(pr['cached_prompt'])}** |",
                  f"| cached `prompt()` + `compile()` | {us(pr['cached_prompt_and_compile'])} |"]
    if raw["meta"].get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in raw["meta"]["notes"]]
    return "\n".join(lines) + "\n"


# -- main -----------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib.metadata import version

    out = {}
    for pkg in ("protobuf", "grpcio"):
        try:
            out[pkg] = version(pkg)
        except Exception:
            out[pkg] = "?"
    return out


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", action="store_true", help="~2 minutes (default)")
    g.add_argument("--full", action="store_true", help="<= 10 minutes")
    p.add_argument("--only", help="comma-separated configurations (default: all)")
    p.add_argument("--skip", default="", help="comma-separated parts to skip: scaling,memory,sdk")
    p.add_argument("--out", default=str(RESULTS), help="results directory")
    args = p.parse_args(argv)
    prof = PROFILES["full" if args.full else "quick"]
    skip = {s for s in args.skip.split(",") if s}
    configs = [c for c in CONFIGS if (c.name in args.only.split(",") if args.only else c.default)]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)

    def on_signal(signum: int, _frame: object) -> None:
        stop_all()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_all)
    t_begin = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    loadavg_before = _loadavg()
    raw: dict[str, Any] = {"meta": {"profile": prof.name, "started": started, "profile_settings": asdict(prof),
                                    "cpus": len(__import__("os").sched_getaffinity(0)),
                                    "python": platform.python_version(), **_versions(),
                                    "loadavg_before": loadavg_before, "reps": prof.reps,
                                    "clients": prof.clients, "batch": prof.batch, "duration": prof.duration,
                                    "late_share": 0.05, "notes": []}}
    notes: list[str] = raw["meta"]["notes"]
    rotel_bin = peers.rotel_binary()
    rotel_error = None
    if rotel_bin is None:
        rotel_error = "rotel is not installed (pip install --pre rotel rotel-sdk, or the bench extra)"
    else:
        try:
            raw["meta"]["rotel_version"] = peers.rotel_version(rotel_bin)
            peers.check_processor_names()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            rotel_error = f"rotel cannot run here: {e}"
    if rotel_error:
        notes.append(rotel_error)
    with tempfile.TemporaryDirectory(prefix="promptstamp-bench-") as tmpdir:
        tmp = Path(tmpdir)
        sink = start("sink", [PY, "-m", "bench.sink"], log_dir=tmp, ready="sink listening on")
        loadgen = Loadgen(tmp)
        env = Env(tmp, sink, SinkClient(sink.port), loadgen, rotel_bin, rotel_error)
        try:
            wl: dict[str, Any] = {}
            batches = sorted({prof.batch, *prof.scaling_batches})
            for kind in ("mixed", "nokey"):
                wl[kind] = loadgen.call({"cmd": "build", "key": f"{kind}-{prof.batch}", "kind": kind,
                                         "batch": prof.batch})["describe"]
            for b in batches:
                if b != prof.batch and "scaling" not in skip:
                    loadgen.call({"cmd": "build", "key": f"mixed-{b}", "kind": "mixed", "batch": b,
                                  "n_batches": 8 if b <= 1024 else 4})
            if "memory" not in skip:
                loadgen.call({"cmd": "build", "key": "held-512", "kind": "held", "batch": 512})
            raw["meta"]["workload"] = wl
            runs: list[dict[str, Any]] = []
            half_rate: float | None = None
            relay_first = sorted(configs, key=lambda c: c.name != "relay")
            for rep in range(prof.reps):
                order = relay_first if rep == 0 else relay_first[rep % len(relay_first):] + relay_first[
                    :rep % len(relay_first)]
                for cfg in order:
                    _progress(t_begin, f"rep {rep + 1}/{prof.reps}: {cfg.name}")
                    try:
                        if cfg.server.startswith("rotel") and env.rotel_binary is None:
                            raise RuntimeError(rotel_error or "rotel unavailable")
                        derive = half_rate is None and cfg.name == "relay"
                        r = run_config(env, prof, cfg, 0.0 if derive else half_rate)
                    except Exception as e:  # one configuration failing must not lose the rest
                        r = {"config": cfg.name, "error": f"{type(e).__name__}: {e}"}
                        _progress(t_begin, f"  failed: {r['error'][:300]}")
                    r["rep"] = rep
                    runs.append(r)
                    if half_rate is None and cfg.name == "relay" and r.get("half"):
                        half_rate = r["half"]["rate_requests_per_s"]
                        raw["meta"]["half_rate"] = half_rate
            raw["runs"] = runs
            raw["summary"] = summarize(runs, prof.reps)
            if "scaling" not in skip:
                raw["scaling"] = {}
                for server in prof.scaling_servers:
                    _progress(t_begin, f"scaling: {server}")
                    try:
                        raw["scaling"][server] = scaling(env, prof, server)
                    except Exception as e:
                        raw["scaling"][server] = {"error": f"{type(e).__name__}: {e}"}
            if "memory" not in skip:
                _progress(t_begin, "memory vs held spans")
                try:
                    raw["memory_held"] = memory_held(env, prof)
                except Exception as e:
                    raw["memory_held"] = {"error": f"{type(e).__name__}: {e}"}
                _progress(t_begin, "memory with the upstream down")
                try:
                    raw["memory_down"] = memory_down(env, prof)
                except Exception as e:
                    raw["memory_down"] = {"error": f"{type(e).__name__}: {e}"}
        finally:
            loadgen.close()
            stop(sink)
            stop_all()
    if "sdk" not in skip:
        _progress(t_begin, "SDK cost")
        raw["sdk"] = _sdk_cost(prof)
    raw["meta"]["loadavg_after"] = _loadavg()
    raw["meta"]["elapsed_s"] = time.monotonic() - t_begin
    load1 = max(float(loadavg_before.split()[0] or 0), float(raw["meta"]["loadavg_after"].split()[0] or 0))
    raw["meta"]["loaded_machine"] = _loaded(load1, raw["meta"]["cpus"])
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out_dir / f"raw-{stamp}.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    md = render(raw)
    (out_dir / "results.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"raw: {out_dir / f'raw-{stamp}.json'}; {raw['meta']['elapsed_s']:.0f} s")
    return 0


def _loaded(load1: float, cpus: int) -> bool:
    # The benchmark itself keeps ~2 cores busy; more than that means someone else was running.
    return load1 > cpus + 0.5


def _sdk_cost(prof: Profile) -> dict[str, Any]:
    argv = [PY, "-m", "bench.sdk_cost"] + (["--quick"] if prof.sdk_quick else [])
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                             cwd=Path(__file__).resolve().parent.parent, env=env_without_proxies())
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-2000:]}
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def _progress(t0: float, msg: str) -> None:
    print(f"[{time.monotonic() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
