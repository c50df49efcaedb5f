"""Where the stamping relay's time goes, per request, two ways.

1. **In-process breakdown** (``--breakdown``): the relay's own functions, called in the order the
   server calls them, on the benchmark's pre-encoded requests (one fetch-log request, one
   512-span trace request and the late fetch records per batch): decode + limits check, span
   count, marker scan, the processor (index, scan, stamp, splice, hold), gzip, the HTTP POST to
   a loopback sink, and the fetch-log path. Single thread, no gRPC: the sum is what one request
   costs with no contention; the live CPU per request minus this sum is gRPC, threads and locks.
   A cProfile pass over ``consume_traces`` splits the processor further.
2. **Processing cost against another checkout** (``--processing --against DIR``): the
   processor alone (``consume_logs`` / ``consume_traces`` / the late ``consume_logs``, decoding
   outside the measured region) on the same pre-encoded batches, in this checkout and in DIR
   (``--against`` repeatable; each checkout with its own ``.venv`` if it has one, else this
   interpreter with the checkout's ``processor/`` and ``sdk/`` first on ``sys.path``, so its own
   code and its own built ``_wirec`` load, checked per child; ``--skip-here`` leaves this
   checkout out), rounds interleaved and rotated; CPU µs (``thread_time``) per 512-span batch,
   median, with a plain upb parse of the same request as a reference for the machine's state,
   and, when valgrind is installed, instructions per whole batch (the three phases; callgrind:
   deterministic, unlike a shared machine's timings). ``--observer noop|rollouts``: with a do-nothing observer (the cost
   of building GenerationRecords) or the rollouts observer attached (this checkout only).
3. **py-spy on the live relay** (``--pyspy``): ``promptstamp-relay serve`` under the benchmark
   load (N clients), sampled by py-spy (``--gil``: only the thread holding the GIL, i.e. where
   the one core the Python code can use goes; and all non-idle threads), stacks folded into
   categories.

Run: ``python -m bench.profile_relay [--breakdown] [--pyspy] [--clients 4,16]``. Writes
``bench/results/profile.md`` and ``bench/results/raw-profile-<timestamp>.json``;
``--processing --against DIR`` writes ``bench/results/processing.md`` instead.
"""

from __future__ import annotations

import argparse
import cProfile
import gzip
import io
import json
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.procs import PY, Loadgen, SinkClient, env_without_proxies, start, stop, stop_all
from bench.workload import Workload, build, patch

RESULTS = Path(__file__).resolve().parent / "results"


# -- 1. in-process ----------------------------------------------------------------------------------
def breakdown(n: int, sink_port: int) -> dict[str, Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    import promptstamp_contract as c
    from promptstamp_relay.admission.decode import decode_logs, decode_traces
    from promptstamp_relay.config import Config
    from promptstamp_relay.export import LangfuseExporter
    from promptstamp_relay.export import langfuse as lf_module
    from promptstamp_relay.server import build_processor

    compress = getattr(lf_module, "gzip_compress", lambda payload, level: gzip.compress(payload, level, mtime=0))
    cfg = Config()
    lf = cfg.exporter.langfuse
    processor = build_processor(cfg)
    exporter = LangfuseExporter(f"http://127.0.0.1:{sink_port}", "pk-lf-bench", "sk-lf-bench1",
                                gzip_level=lf.gzip_level)
    wl: Workload = build("mixed", 512, 8)
    key_marker = c.PROMPT_KEY.encode()
    t: dict[str, list[float]] = {k: [] for k in (
        "logs: decode + limits", "logs: consume (fetch records → store)", "traces: decode + limits",
        "traces: plain ParseFromString (reference)", "traces: SerializeToString (reference)",
        "traces: count spans", "traces: marker scan", "traces: processor.consume_traces",
        "late logs: decode + consume + release", f"gzip (level {lf.gzip_level})",
        "HTTP POST to sink (export minus gzip)", "outgoing requests")}
    pc = time.thread_time  # CPU of this thread: the HTTP wait for the sink is not relay CPU

    def one(i: int, record: bool) -> None:
        b = wl.batches[i % len(wl.batches)]
        stamp = (0x7F000000 | i).to_bytes(4, "big")
        logs = patch(b.logs_before, b.before_offsets, stamp, b.before_time_offsets)
        traces = patch(b.traces, b.trace_offsets, stamp)
        late = patch(b.logs_after, b.after_offsets, stamp, b.after_time_offsets) if b.logs_after else b""
        now = time.time_ns()
        m: dict[str, float] = {}
        t0 = pc()
        lreq = decode_logs(logs, cfg.limits)
        t1 = pc()
        processor.consume_logs(lreq, now)
        t2 = pc()
        req = decode_traces(traces, cfg.limits)
        t3 = pc()
        sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
        t4 = pc()
        _ = key_marker in traces
        t5 = pc()
        out = processor.consume_traces(req, now, encoded=traces)
        t6 = pc()
        if late:
            lr = decode_logs(late, cfg.limits)
            out += processor.consume_logs(lr, now).released
        t7 = pc()
        gz = 0.0
        http = 0.0
        for o in out:
            g0 = pc()
            compress(o.payload, lf.gzip_level)
            g1 = pc()
            res = exporter.export(o.payload)
            g2 = pc()
            if not res.ok:
                raise RuntimeError(res.message)
            gz += g1 - g0
            http += (g2 - g1) - (g1 - g0)
        p0 = pc()
        plain = ExportTraceServiceRequest.FromString(traces)
        p1 = pc()
        plain.SerializeToString()
        p2 = pc()
        m = {"logs: decode + limits": t1 - t0, "logs: consume (fetch records → store)": t2 - t1,
             "traces: decode + limits": t3 - t2, "traces: count spans": t4 - t3,
             "traces: marker scan": t5 - t4, "traces: processor.consume_traces": t6 - t5,
             "late logs: decode + consume + release": t7 - t6, f"gzip (level {lf.gzip_level})": gz,
             "HTTP POST to sink (export minus gzip)": http,
             "traces: plain ParseFromString (reference)": p1 - p0,
             "traces: SerializeToString (reference)": p2 - p1, "outgoing requests": len(out) / 1e6}
        if record:
            for k, v in m.items():
                t[k].append(v * 1e6)

    for i in range(20):
        one(i, False)
    for i in range(20, 20 + n):
        one(i, True)
    med = {k: statistics.median(v) for k, v in t.items()}
    relay_total = sum(v for k, v in med.items() if "reference" not in k and k != "outgoing requests")
    # cProfile of consume_traces alone, for the split inside the processor
    prof = cProfile.Profile()
    reqs = []
    for i in range(1000, 1000 + min(n, 100)):
        b = wl.batches[i % len(wl.batches)]
        stamp = (0x7E000000 | i).to_bytes(4, "big")
        processor.consume_logs(decode_logs(patch(b.logs_before, b.before_offsets, stamp,
                                                 b.before_time_offsets), cfg.limits), time.time_ns())
        data = patch(b.traces, b.trace_offsets, stamp)
        reqs.append((decode_traces(data, cfg.limits), data))
    prof.enable()
    for req, data in reqs:
        processor.consume_traces(req, time.time_ns(), encoded=data)
    prof.disable()
    logs_prof = cProfile.Profile()
    for i in range(3000, 3000 + min(n, 100)):
        b = wl.batches[i % len(wl.batches)]
        stamp = (0x7D000000 | i).to_bytes(4, "big")
        lreq = decode_logs(patch(b.logs_before, b.before_offsets, stamp, b.before_time_offsets), cfg.limits)
        logs_prof.enable()
        processor.consume_logs(lreq, time.time_ns())
        logs_prof.disable()
    # The pass-through path (no app.prompt.key): decode + limits, marker scan, gzip, HTTP.
    nk = build("nokey", 512, 8)
    pt: dict[str, list[float]] = {k: [] for k in (
        "decode + limits", "plain ParseFromString (reference)", "SerializeToString (reference)",
        "marker scan", f"gzip (level {lf.gzip_level})", "HTTP POST (export minus gzip)")}
    for i in range(n):
        data = nk.batches[i % len(nk.batches)].traces
        a = pc()
        decode_traces(data, cfg.limits)
        b_ = pc()
        _ = key_marker in data
        c_ = pc()
        compress(data, lf.gzip_level)
        d_ = pc()
        exporter.export(data)
        e_ = pc()
        plain = ExportTraceServiceRequest.FromString(data)
        f_ = pc()
        plain.SerializeToString()
        g_ = pc()
        for k, v in (("decode + limits", b_ - a), ("marker scan", c_ - b_), (f"gzip (level {lf.gzip_level})", d_ - c_),
                     ("HTTP POST (export minus gzip)", (e_ - d_) - (d_ - c_)),
                     ("plain ParseFromString (reference)", f_ - e_), ("SerializeToString (reference)", g_ - f_)):
            pt[k].append(v * 1e6)
    passthrough = {k: statistics.median(v) for k, v in pt.items()}
    return {"requests": n, "median_us": med, "relay_total_us": relay_total, "passthrough_us": passthrough,
            "spans_per_request": wl.batch_size, "cprofile_consume_traces": _top(prof, len(reqs)),
            "cprofile_consume_logs": _top(logs_prof, min(n, 100)),
            "outgoing_per_request": med["outgoing requests"]}


def _top(prof: cProfile.Profile, n: int, k: int = 14) -> list[dict[str, Any]]:
    st = pstats.Stats(prof, stream=io.StringIO())
    top: list[dict[str, Any]] = []
    items = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:k]  # type: ignore[attr-defined]
    for (file, line, fn), (_cc, nc, tt, ct, _callers) in items:
        top.append({"function": f"{Path(file).name}:{line}:{fn}", "calls_per_request": nc / n,
                    "tottime_us_per_request": tt / n * 1e6, "cumtime_us_per_request": ct / n * 1e6})
    return top


# -- 2. processing cost against another checkout ---------------------------------------------------
# Run as ``python -c _CHILD <checkout> <observer> <phase> <batches>`` by the checkout's own venv: it
# uses only what every checkout since the native walk has (build_processor, decode_*, the workload).
_CHILD = r"""
import functools, json, statistics, sys, time
tree, observer, phase, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
# The checkout's own code first (its sources, not an editable install of another checkout):
sys.path[0:0] = [tree + "/processor", tree + "/sdk", tree]
from bench.workload import build, patch
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from promptstamp_relay.config import Config
try:
    from promptstamp_relay.admission.decode import decode_logs, decode_traces
except ImportError:  # before the re-layout (3ebb29f): limits.py
    from promptstamp_relay.limits import decode_logs, decode_traces
from promptstamp_relay.server import build_processor
import promptstamp_relay, promptstamp_relay.wire as _wire
_native = [m.__file__ for k, m in list(sys.modules.items()) if k.endswith("._wirec")]
print("LOADED", promptstamp_relay.__file__, _wire.native(), *_native, file=sys.stderr)
cfg = Config()
observers = []
if observer == "noop":
    class Noop:
        def on_fetch_records(self, tenant, records, now_ns): pass
        def on_generations(self, records, now_ns): pass
    observers = [Noop()]
elif observer == "rollouts":
    try:
        from promptstamp_relay.admission.auth import Authenticator
    except ImportError:  # before the re-layout
        from promptstamp_relay.receive.auth import Authenticator
    from promptstamp_relay.rollouts.component import Rollouts
    observers = [Rollouts(cfg.rollouts, prompt_names=cfg.prompt_names, journal=None, redis_url="",
                          authenticator=Authenticator(cfg.auth, default_has_keys=True), clock=time.time_ns).observer]
p = build_processor(cfg, observers=observers) if observers else build_processor(cfg)
wl = build("mixed", 512, 8)
toggle = lambda f: functools.reduce(lambda _, g: g(), [f], None)  # callgrind collects inside reduce only
pc = time.thread_time
t = {"logs": [], "traces": [], "late": [], "reference parse": []}
now0 = 1_764_000_000_000_000_000
prof = None
if phase == "cprofile":  # the three phases of every measured batch under cProfile
    import cProfile
    prof = cProfile.Profile()
    toggle = lambda f: (prof.enable(), f(), prof.disable())
    phase = "batch"
for i in range(20 + n):
    b = wl.batches[i % len(wl.batches)]
    stamp = (0x7F000000 | i).to_bytes(4, "big")
    now = now0 + i * 10_000_000
    logs = decode_logs(patch(b.logs_before, b.before_offsets, stamp, b.before_time_offsets, now_ns=now), cfg.limits)
    data = patch(b.traces, b.trace_offsets, stamp)
    traces = decode_traces(data, cfg.limits)
    late = b.logs_after and decode_logs(patch(b.logs_after, b.after_offsets, stamp, b.after_time_offsets, now_ns=now),
                                         cfg.limits)
    steps = [("logs", lambda: p.consume_logs(logs, now)),
             ("traces", lambda: p.consume_traces(traces, now, encoded=data)),
             ("late", (lambda: p.consume_logs(late, now)) if late else None),
             ("reference parse", lambda: ExportTraceServiceRequest.FromString(data))]
    for name, f in steps:
        if f is None:
            continue
        t0 = pc()
        counted = name == phase or (phase == "batch" and name != "reference parse")
        toggle(f) if i >= 20 and counted else f()
        if i >= 20:
            t[name].append((pc() - t0) * 1e6)
out = {k: statistics.median(v) for k, v in t.items() if v}
out["batch"] = (sum(t["logs"]) + sum(t["traces"]) + sum(t["late"])) / n
if prof is not None:
    import pstats, io, os
    st = pstats.Stats(prof, stream=io.StringIO())
    rows = sorted(st.stats.items(), key=lambda kv: -kv[1][2])[:40]
    out = {"cprofile": [{"function": f"{os.path.relpath(f, tree) if f.startswith(tree) else os.path.basename(f)}:{line}:{fn}",
                         "calls": nc / n, "tottime_us": tt / n * 1e6, "cumtime_us": ct / n * 1e6}
                        for (f, line, fn), (_cc, nc, tt, ct, _c) in rows],
           "total_us": sum(v[2] for v in st.stats.values()) / n * 1e6}
print(json.dumps(out))
"""


def _child(tree: Path, observer: str, phase: str, n: int, callgrind: bool) -> dict[str, Any]:
    # The checkout's own .venv when it has one; otherwise this interpreter (same dependencies),
    # the child putting the checkout's processor/ and sdk/ first on sys.path either way.
    venv_py = tree / ".venv" / "bin" / "python"
    py = str(venv_py) if venv_py.exists() else sys.executable
    cmd = [py, "-c", _CHILD, str(tree), observer, phase, str(n)]
    if callgrind:
        cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--toggle-collect=functools_reduce",
               "--callgrind-out-file=/dev/null", *cmd]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, timeout=1800, check=False)
    if run.returncode != 0:
        raise RuntimeError(f"child in {tree} failed ({run.returncode}): {run.stderr[-3000:]}")
    loaded = [line.split()[1:] for line in run.stderr.splitlines() if line.startswith("LOADED ")]
    if not loaded or not loaded[-1][0].startswith(str(tree) + "/") or loaded[-1][1] != "True" or \
            not all(f.startswith(str(tree) + "/") for f in loaded[-1][2:]) or len(loaded[-1]) < 3:
        raise RuntimeError(f"child in {tree} did not load that checkout's code and extension: {loaded}")
    out: dict[str, Any] = json.loads(run.stdout.strip().splitlines()[-1])
    if callgrind:
        collected = [line for line in run.stderr.splitlines() if "Collected" in line]
        out = {"instructions": int(collected[-1].split()[-1].replace(",", "")) / n}
    return out


def processing(trees: list[tuple[str, Path]], observers: list[str], rounds: int, n: int,
               callgrind_runs: int = 1, cprofile: bool = False) -> dict[str, Any]:
    """Each checkout in ``trees`` (label, dir) with each observer setting, rounds interleaved (the
    order rotated every round). The first setup is the reference of the ratios."""
    setups = [(f"{label}, observer {o}" if len(observers) > 1 else label, tree, o)
              for o in observers for label, tree in trees
              if o != "rollouts" or (tree / "processor/promptstamp_relay/rollouts").exists()]
    runs: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in setups}
    order: dict[str, list[str]] = {}
    for r in range(rounds):
        k = r % len(setups)
        for name, tree, obs in setups[k:] + setups[:k]:
            t0 = time.strftime("%H:%M:%S")
            runs[name].append(_child(tree, obs, "-", n, callgrind=False))
            order.setdefault(str(r), []).append(f"{t0} {name}")
            print(f"round {r + 1}/{rounds} {name}: batch {runs[name][-1]['batch']:,.0f} µs", file=sys.stderr,
                  flush=True)
    timings = {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}
    instructions: dict[str, dict[str, Any]] = {}
    if shutil.which("valgrind"):  # whole batches: one process per setup, not three
        for c in range(callgrind_runs):
            for name, tree, obs in setups:
                got = _child(tree, obs, "batch", min(n, 60), callgrind=True)["instructions"]
                instructions.setdefault(name, {"runs": []})["runs"].append(got)
                print(f"callgrind {c + 1}/{callgrind_runs} {name}: {got / 1e6:.2f} M", file=sys.stderr, flush=True)
        for m in instructions.values():
            m["batch"] = statistics.median(m["runs"])
    profiles: dict[str, Any] = {}
    if cprofile:
        for name, tree, obs in setups:
            profiles[name] = _child(tree, obs, "cprofile", min(n, 100), callgrind=False)
    return {"trees": {label: str(tree) for label, tree in trees}, "rounds": rounds, "batches": n,
            "timings_us": timings, "all_runs": runs, "order": order, "instructions": instructions,
            "cprofile": profiles}


def render_processing(raw: dict[str, Any]) -> str:
    pr = raw["processing"]
    trees = ", ".join(f"{k} ({v})" for k, v in pr["trees"].items())
    lines = [f"# Processing cost, interleaved: {trees} — {raw['started']} to {raw.get('finished', '?')}", "",
             f"Load average before / after: {' '.join(raw['loadavg_before'])} / {' '.join(raw['loadavg_after'])}.",
             "Per 512-span batch of the bench workload: the fetch-log request before it (`logs`, ~61 "
             "records), the trace request (`traces`), the late fetch-log request (`late`, ~3 records "
             "releasing held spans). Decoding is outside the measured region.", ""]
    names = list(pr["timings_us"])
    ref = pr["timings_us"][names[0]]
    lines += [f"CPU µs, median of {pr['rounds']} interleaved rounds of {pr['batches']} batches "
              "(reference: a plain upb parse of the same trace request, for the machine's state):", "",
              "| checkout | logs | traces | late | whole batch | batch / first | min–max of the rounds' batch | reference parse |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in pr["timings_us"].items():
        b = [r["batch"] for r in pr["all_runs"][name]]
        lines.append(f"| {name} | {m['logs']:,.0f} | {m['traces']:,.0f} | {m['late']:,.0f} | {m['batch']:,.0f} | "
                     f"{m['batch'] / ref['batch']:.2f}× | {min(b):,.0f}–{max(b):,.0f} | {m['reference parse']:,.0f} |")
    lines += ["", "The phases are medians; the whole batch is the mean of the three phases' sum."]
    if pr["instructions"]:
        b0 = pr["instructions"][names[0]]["batch"]
        lines += ["", "Instructions per whole batch (callgrind, deterministic; the three phases, over 60 "
                  "batches):", "",
                  "| checkout | instructions per batch | / first | runs |", "|---|---|---|---|"]
        for name, m in pr["instructions"].items():
            lines.append(f"| {name} | {m['batch'] / 1e6:.2f} M | {m['batch'] / b0:.3f}× | "
                         f"{', '.join(f'{x / 1e6:.3f} M' for x in m['runs'])} |")
    for name, p in pr.get("cprofile", {}).items():
        lines += ["", f"cProfile, {name} (per batch, the three phases; {p['total_us']:,.0f} µs of tottime "
                  "in all, inflated by cProfile):", "", "| function | calls | tottime µs | cumtime µs |",
                  "|---|---|---|---|"]
        lines += [f"| `{f['function']}` | {f['calls']:.1f} | {f['tottime_us']:,.1f} | {f['cumtime_us']:,.1f} |"
                  for f in p["cprofile"][:25]]
    return "\n".join(lines) + "\n"


# -- 3. py-spy on the live relay --------------------------------------------------------------------
CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    # first match from the leaf upwards wins; patterns are matched against "function (path:line)"
    ("gzip", ("gzip.py", "igzip", "zlib")),
    ("HTTP export (http.client, socket)", ("http/client.py", "/socket.py", "export/langfuse.py")),
    ("decode + limits (upb parse + checks)", ("promptstamp_relay/admission/decode.py",)),
    ("stamp: byte index + splice (wire/)", ("promptstamp_relay/wire/__init__.py",)),
    ("stamp: scan/resolve/stamp (stamp.py, resolve, detect)",
     ("promptstamp_relay/core/stamp.py", "promptstamp_relay/core/resolve.py", "promptstamp_contract/langfuse_typing.py")),
    ("hold window", ("promptstamp_relay/core/hold.py",)),
    ("fetch log (core/fetch_records.py, store)", ("promptstamp_relay/core/fetch_records.py", "promptstamp_relay/store/")),
    ("processor glue (core/pipeline.py)", ("promptstamp_relay/core/pipeline.py",)),
    ("delivery queue", ("promptstamp_relay/deliver/",)),
    ("relay receive path (server.py, receiver)",
     ("promptstamp_relay/server.py", "promptstamp_relay/receive/")),
    ("gRPC Python server (grpc/_server.py, thread pool)", ("grpc/", "concurrent/futures")),
    ("threading / locks", ("threading.py",)),
]


def _categorize(stack: str) -> str:
    frames = stack.split(";")
    for frame in reversed(frames):
        for name, pats in CATEGORIES:
            if any(p in frame for p in pats):
                return name
    return "other"


def _leaf(stack: str) -> str:
    """The innermost frame of a folded stack, without the line number (``fn (file)``)."""
    frame = stack.split(";")[-1]
    name, _, where = frame.partition(" (")
    return f"{name} ({where.split(':')[0].rsplit('/', 2)[-1]})" if where else name


def pyspy(clients: list[int], seconds: float, tmp: Path) -> dict[str, Any]:
    spy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(spy).exists():
        return {"error": "py-spy not installed (pip install py-spy)"}
    out: dict[str, Any] = {}
    sink = start("sink", [PY, "-m", "bench.sink"], log_dir=tmp, ready="sink listening on")
    lg = Loadgen(tmp)
    try:
        lg.call({"cmd": "build", "key": "mixed-512", "kind": "mixed", "batch": 512})
        cfg = tmp / "relay.yaml"
        cfg.write_text("listen: 127.0.0.1:0\nreceivers: {http: {listen: 127.0.0.1:0}}\nhold: {seconds: 2.0}\nexporter:\n  type: langfuse\n  langfuse:\n"
                       f"    base_url: http://127.0.0.1:{sink.port}\n    public_key: pk-lf-bench\n"
                       "    secret_key: sk-lf-bench1\n")
        for n in clients:
            relay = start("relay", [str(Path(PY).parent / "promptstamp-relay"), "serve", "--config", str(cfg)],
                          log_dir=tmp, ready="promptstamp-relay listening on", env=env_without_proxies())
            try:
                res: dict[str, Any] = {}

                def load(n: int = n, relay_addr: str = relay.address, relay_pid: int = relay.pid,
                         res: dict[str, Any] = res) -> None:
                    res.update(lg.call({"cmd": "run", "target": relay_addr, "workload": "mixed-512",
                                        "clients": n, "warmup": 0.5, "duration": seconds * 2 + 1.5,
                                        "pids": [relay_pid]}, timeout=seconds * 2 + 120))

                th = threading.Thread(target=load, daemon=True)
                th.start()
                time.sleep(1.0)
                folded: dict[str, Counter[str]] = {}
                top_leaves: dict[str, Counter[str]] = {}
                for mode, extra in (("gil", ["--gil"]), ("active threads", [])):
                    path = tmp / f"stacks-{n}-{mode.replace(' ', '_')}.txt"
                    subprocess.run([spy, "record", "--pid", str(relay.pid), "--duration", str(int(seconds)),
                                    "--rate", "200", "--format", "raw", "--output", str(path), "--nonblocking",
                                    *extra], capture_output=True, timeout=seconds + 60, check=False)
                    cats: Counter[str] = Counter()
                    leaves: Counter[str] = Counter()
                    if path.exists():
                        for line in path.read_text(errors="replace").splitlines():
                            stack, _, count = line.rpartition(" ")
                            if count.isdigit():
                                cats[_categorize(stack)] += int(count)
                                leaves[_leaf(stack)] += int(count)
                    folded[mode] = cats
                    top_leaves[mode] = leaves
                th.join(timeout=seconds * 2 + 120)
                total_cpu = sum(res.get("server_cpu_window", {}).values())
                reqs = res.get("requests_done_window") or 1
                out[f"{n} clients"] = {
                    "spans_per_s": res.get("spans_per_s"),
                    "server_cores": total_cpu / res.get("window_seconds", 1),
                    "cpu_ms_per_trace_request": total_cpu / reqs * 1000,
                    "shares": {mode: {k: v / max(1, sum(c.values())) for k, v in c.most_common()}
                               for mode, c in folded.items()},
                    "samples": {mode: sum(c.values()) for mode, c in folded.items()},
                    "top_frames": {mode: [(k, v / max(1, sum(c.values()))) for k, v in c.most_common(12)]
                                   for mode, c in top_leaves.items()},
                }
            finally:
                stop(relay)
    finally:
        lg.close()
        stop(sink)
    return out


def render(raw: dict[str, Any]) -> str:
    lines = [f"# Relay profile — {raw['started']}", ""]
    if raw.get("loaded"):
        lines += ["**Taken on a loaded, shared machine.**", ""]
    b = raw.get("breakdown")
    if b:
        lines += ["## In-process breakdown (one thread, no gRPC), µs per 512-span trace request "
                  "(+ its fetch-log requests), median", "", "| stage | µs | share of relay total |", "|---|---|---|"]
        tot = b["relay_total_us"]
        for k, v in b["median_us"].items():
            if k == "outgoing requests":
                continue
            share = "" if "reference" in k else f"{v / tot * 100:.0f} %"
            lines.append(f"| {k} | {v:,.0f} | {share} |")
        lines += [f"| **relay total (sum of the non-reference stages)** | **{tot:,.0f}** | 100 % |", ""]
        if b.get("passthrough_us"):
            lines += ["Pass-through request (512 spans, no `app.prompt.key`), µs:", "",
                      "| stage | µs |", "|---|---|"]
            lines += [f"| {k} | {v:,.0f} |" for k, v in b["passthrough_us"].items()]
            lines.append("")
        lines += [
                  f"= {b['spans_per_request'] / tot * 1e6:,.0f} spans per CPU-second with no gRPC and no "
                  f"contention; {b['outgoing_per_request']:.2f} outgoing requests per trace request.", "",
                  "cProfile of `consume_traces` (tottime, µs per request; cProfile inflates Python-heavy "
                  "code, read it as a split):", "", "| function | calls/request | tottime µs | cumtime µs |",
                  "|---|---|---|---|"]
        for f in b["cprofile_consume_traces"]:
            lines.append(f"| `{f['function']}` | {f['calls_per_request']:.1f} | {f['tottime_us_per_request']:,.0f} | "
                         f"{f['cumtime_us_per_request']:,.0f} |")
        lines += ["", "cProfile of `consume_logs` (one fetch-log request of ~61 records):", "",
                  "| function | calls/request | tottime µs | cumtime µs |", "|---|---|---|---|"]
        for f in b.get("cprofile_consume_logs", []):
            lines.append(f"| `{f['function']}` | {f['calls_per_request']:.1f} | {f['tottime_us_per_request']:,.0f} | "
                         f"{f['cumtime_us_per_request']:,.0f} |")
    p = raw.get("pyspy")
    if p and "error" not in p:
        for name, r in p.items():
            lines += ["", f"## py-spy, live relay, {name}: {r['spans_per_s'] or 0:,.0f} spans/s, "
                      f"{r['server_cores']:.2f} cores, {r['cpu_ms_per_trace_request']:.1f} ms CPU per trace request",
                      "", "| category | share of GIL-holding samples | share of active-thread samples |",
                      "|---|---|---|"]
            cats = sorted(set(r["shares"].get("gil", {})) | set(r["shares"].get("active threads", {})),
                          key=lambda k: -r["shares"].get("gil", {}).get(k, 0))
            for k in cats:
                lines.append(f"| {k} | {r['shares'].get('gil', {}).get(k, 0) * 100:.1f} % | "
                             f"{r['shares'].get('active threads', {}).get(k, 0) * 100:.1f} % |")
            lines.append(f"\nsamples: {r['samples']}")
            for mode, frames in r.get("top_frames", {}).items():
                lines += ["", f"Innermost frames, {mode}: " + "; ".join(
                    f"`{k}` {v * 100:.0f} %" for k, v in frames)]
    elif p:
        lines += ["", f"py-spy: {p['error']}"]
    return "\n".join(lines) + "\n"


def _label(tree: Path) -> str:
    """The checkout's short commit (``+`` when its tracked files differ from it)."""
    sha = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip() or tree.name
    dirty = subprocess.run(["git", "-C", str(tree), "diff", "--quiet", "HEAD", "--", "processor", "sdk"],
                           check=False).returncode
    return sha + ("+" if dirty else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--pyspy", action="store_true")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--clients", default="4,16")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--processing", action="store_true")
    ap.add_argument("--against", type=Path, action="append",
                    help="another checkout for --processing (repeatable; its own .venv if it has one, "
                         "else this interpreter with the checkout's sources first on sys.path)")
    ap.add_argument("--skip-here", action="store_true",
                    help="for --processing: only the --against checkouts (e.g. this tree has edits in progress)")
    ap.add_argument("--callgrind-runs", type=int, default=1)
    ap.add_argument("--cprofile", action="store_true", help="for --processing: cProfile each setup too")
    ap.add_argument("--out-name", default="processing.md", help="for --processing: the markdown file's name")
    ap.add_argument("--observer", default="none,noop", help="for --processing: none, noop, rollouts (comma-separated)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batches", type=int, default=250)
    args = ap.parse_args()
    if args.processing:
        if args.against is None:
            ap.error("--processing needs --against DIR")
        raw = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
               "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
        here = Path(__file__).resolve().parent.parent
        trees = [(_label(d.resolve()), d.resolve()) for d in args.against]
        if not args.skip_here:
            trees.append((_label(here), here))
        raw["processing"] = processing(trees, args.observer.split(","), args.rounds, args.batches,
                                       callgrind_runs=args.callgrind_runs, cprofile=args.cprofile)
        raw["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        raw["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"raw-processing-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(
            json.dumps(raw, indent=1), encoding="utf-8")
        md = render_processing(raw)
        (RESULTS / args.out_name).write_text(md, encoding="utf-8")
        print(md)
        return 0
    if not args.breakdown and not args.pyspy:
        args.breakdown = args.pyspy = True
    raw: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="promptstamp-profile-") as d:
            tmp = Path(d)
            if args.breakdown:
                sink = start("sink", [PY, "-m", "bench.sink"], log_dir=tmp, ready="sink listening on")
                try:
                    raw["breakdown"] = breakdown(args.requests, sink.port)
                    raw["breakdown"]["sink"] = {k: v for k, v in SinkClient(sink.port).stats().items()
                                                if k != "arrivals"}
                finally:
                    stop(sink)
            if args.pyspy:
                raw["pyspy"] = pyspy([int(x) for x in args.clients.split(",")], args.seconds, tmp)
    finally:
        stop_all()
    raw["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    raw["loaded"] = max(float(raw["loadavg_before"][0]), float(raw["loadavg_after"][0])) > 2.5
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS / f"raw-profile-{stamp}.json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    md = render(raw)
    (RESULTS / "profile.md").write_text(md, encoding="utf-8")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
