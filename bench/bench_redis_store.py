"""Benchmark the Redis store against a real local redis-server. Not part of the tests.

    .venv/bin/python bench/bench_redis_store.py [--records 200000] [--batch 8]

Starts its own ``redis-server`` (Debian package) on a free loopback port, and measures:

* ``add()`` on the receive path (what the relay's processing lock waits for), against the
  in-memory store: records/s;
* the writer: records/s written to Redis, and the round trip of one pipelined batch (p50/p99);
* propagation: from ``add()`` on one store (relay A) until the record answers a lookup on
  another (relay B), p50/p99 — what must stay well inside the 2 s hold window.

Prints one markdown table (docs/scaling.md quotes it).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis

from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.store import MemoryStore
from promptstamp_relay.store.redis import RedisStore

S = 10**9


@contextmanager
def redis_server() -> Iterator[str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found (apt-get install -y redis-server)")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--dir", tmp],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if redis.Redis(port=port, socket_timeout=1).ping():
                        break
                except redis.RedisError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(10)


def records(n: int, now: int, instances: int = 50, keys: int = 20) -> list[FetchRecord]:
    return [
        FetchRecord(key=f"prompt-{i % keys}", label="production", version=1 + i % 7, source="langfuse",
                    time_ns=now - (n - i) * 1000, trace_id=(i + 1).to_bytes(16, "big"),
                    span_id=(i + 1).to_bytes(8, "big"), instance=f"agent-{i % instances}")
        for i in range(n)
    ]


def wait(cond: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.01)


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))] if s else float("nan")


def bench_add(store: MemoryStore | RedisStore, recs: list[FetchRecord], batch: int, now: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(recs), batch):
        store.add("default", recs[i:i + batch], now)
    return len(recs) / (time.perf_counter() - t0)


def propagation(a: RedisStore, b: RedisStore, now: int, probes: int, load: int) -> list[float]:
    stop = threading.Event()

    def loader() -> None:
        i, t0 = 0, time.perf_counter()
        while not stop.is_set():
            batch = [FetchRecord(key=f"load-{(i + j) % 20}", label="production", version=1,
                                 source="langfuse", time_ns=now - 10**9 + i + j, trace_id=b"", span_id=b"",
                                 instance=f"agent-{(i + j) % 50}") for j in range(8)]
            a.add("default", batch, now)
            i += 8
            ahead = i / load - (time.perf_counter() - t0)
            if ahead > 0:
                time.sleep(ahead)

    th = threading.Thread(target=loader, daemon=True)
    if load:
        th.start()
        time.sleep(0.5)
    samples: list[float] = []
    try:
        for i in range(probes):
            key = f"probe-{load}-{i}"
            r = FetchRecord(key=key, label="production", version=1, source="langfuse", time_ns=now,
                            trace_id=b"", span_id=b"", instance="agent-probe")
            t0 = time.perf_counter()
            a.add("default", [r], now)
            while b.latest("default", key, "production", now, 0) is None:
                if time.perf_counter() - t0 > 5:
                    raise SystemExit("propagation took over 5 s")
                time.sleep(0.0002)
            samples.append(time.perf_counter() - t0)
            time.sleep(0.002)
    finally:
        stop.set()
        if load:
            th.join(5)
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--batch", type=int, default=8, help="records per add() (one fetch-log request)")
    ap.add_argument("--probes", type=int, default=300, help="propagation samples")
    ap.add_argument("--load", type=int, default=5000, help="records/s on A while measuring propagation")
    args = ap.parse_args()
    now = time.time_ns()
    recs = records(args.records, now)
    rows: list[tuple[str, str]] = []
    cap = dict(max_entries=args.records * 2, max_entries_per_tenant=args.records * 2)

    mem_rate = bench_add(MemoryStore(**cap), recs, args.batch, now)
    rows.append((f"MemoryStore.add(), {args.batch} records per call", f"{mem_rate:,.0f} records/s"))

    with redis_server() as url:
        a = RedisStore(url, max_pending=args.records * 2, **cap)
        wait(lambda: a.stats.connected, 10)
        # 1. add() on the receive path, while the writer flushes behind it (A alone).
        t0 = time.perf_counter()
        rate = bench_add(a, recs, args.batch, now)
        if not a.flush(120):
            raise SystemExit("flush did not finish")
        total = time.perf_counter() - t0
        lat = list(a.flush_latencies)
        st = a.stats
        rows += [
            (f"RedisStore.add(), {args.batch} records per call (receive path)", f"{rate:,.0f} records/s"),
            ("written to Redis, first add() to last flush done", f"{args.records / total:,.0f} records/s"),
            ("pipelined batches (mean records per batch)",
             f"{st.flush_batches:,} ({st.flushed / max(1, st.flush_batches):,.0f})"),
            ("batch flush round trip p50 / p99",
             f"{pct(lat, 50) * 1000:.1f} ms / {pct(lat, 99) * 1000:.1f} ms"),
        ]
        # 2. A relay joining: loads everything from Redis.
        t0 = time.perf_counter()
        b = RedisStore(url, **cap)
        wait(lambda: len(b) >= args.records, 120)
        rows.append(("a new relay loads the shared state",
                     f"{args.records:,} records in {time.perf_counter() - t0:.1f} s"))
        # 3. small steady writes (the flush latency a lone fetch sees).
        a.flush_latencies.clear()
        for i in range(args.probes):
            a.add("default", [FetchRecord(key=f"steady-{i % 20}", label="production", version=1,
                                          source="langfuse", time_ns=now - 1000 + i, trace_id=b"",
                                          span_id=b"", instance=f"agent-{i % 50}")], now)
            a.flush(5)
        lat = list(a.flush_latencies)
        rows.append(("flush round trip of a lone record p50 / p99",
                     f"{pct(lat, 50) * 1000:.2f} ms / {pct(lat, 99) * 1000:.2f} ms"))
        # 4. propagation: one record on A until B answers with it; idle, then with A taking
        # --load records/s besides (A and B share this process's GIL: pessimistic).
        for load in (0, args.load):
            samples = propagation(a, b, now, args.probes, load)
            rows.append((f"propagation A.add() → answers on B, p50 / p99 / max, "
                         f"{'idle' if not load else f'A taking {load:,} records/s'}",
                         f"{pct(samples, 50) * 1000:.2f} ms / {pct(samples, 99) * 1000:.2f} ms / "
                         f"{max(samples) * 1000:.2f} ms"))
        used = int(redis.Redis.from_url(url).info("memory")["used_memory"])
        rows.append(("Redis memory", f"{used / 2**20:,.0f} MiB (~{used / args.records:,.0f} B/record)"))
        a.close()
        b.close()

    print(f"{args.records:,} records, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"redis-server {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}\n")
    print("| measure | value |")
    print("|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
