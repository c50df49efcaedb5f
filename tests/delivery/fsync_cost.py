"""Measure what the persistent queue costs per accepted request (not a test; run by hand).

    .venv/bin/python -m tests.delivery.fsync_cost [--requests 300]

An in-process relay with an upstream that answers at once; a raw gRPC client sends requests of
10 and 512 spans (~760 B each), sequentially and from 8 threads, in memory mode and with the
persistent queue at synchronous=FULL and NORMAL. Prints the client-seen latency per request.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from typing import Any

import grpc

from tests.delivery.conftest import Sender, config
from tests.fakes import FakeExporter
from tests.otlp_builders import TRACES_EXPORT
from tests.relays import running


def run(mode: str, body: bytes, n: int, threads: int) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as d:
        extra: dict[str, Any] = {"queue.max_requests": 100_000, "queue.max_bytes": 4 << 30}
        if mode != "memory":
            extra |= {"queue.directory": d, "queue.synchronous": mode}
        # An upstream that answers at once, and keeps nothing.
        with running(config("http://127.0.0.1:9", **extra), timeout=10,
                     trace_exporter=FakeExporter(record=False)) as relay:
            channel = grpc.insecure_channel(relay.address)
            call = channel.unary_unary(TRACES_EXPORT)
            call(body, timeout=10)
            lat: list[float] = []
            lock = threading.Lock()

            def worker(k: int) -> None:
                for _ in range(k):
                    t = time.perf_counter()
                    call(body, timeout=10)
                    with lock:
                        lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            ts = [threading.Thread(target=worker, args=(n // threads,)) for _ in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            wall = time.perf_counter() - t0
            channel.close()
        return statistics.median(lat) * 1e3, len(lat) / wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=400)
    args = ap.parse_args()
    sender = Sender("127.0.0.1:9")
    for spans in (10, 512):
        body = sender.exporter._translate_data(sender.make(spans, pad=600)).SerializeToString()
        for threads in (1, 8):
            for mode in ("memory", "normal", "full"):
                med, rps = run(mode, body, args.requests, threads)
                print(f"{spans:4} spans ({len(body) / 1024:6.1f} KiB) {threads} client thread(s) "
                      f"{mode:7}: median {med:6.2f} ms/request, {rps:7.0f} requests/s")
    sender.close()


if __name__ == "__main__":
    main()
