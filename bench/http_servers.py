"""Which HTTP server library the OTLP/HTTP receiver uses: measured, not picked by habit.

Every candidate serves ``POST /v1/traces`` in its own process with the same handler: read the
body (a 512-span ``ExportTraceServiceRequest`` from ``bench/workload.py``, ~340 KB), parse and
re-serialize it with upb (the floor's work, ``bench/floor.py``) or do nothing (``null``), answer
200 ``application/x-protobuf`` with an empty ``ExportTraceServiceResponse``. The handler is
blocking code, as the relay's admission is (it may wait for the decode budget, the processing
lock, an fsync): asyncio servers run it in a thread pool (``run_in_executor``), which is how the
relay would have to use them; ``inline`` rows show what the hand-off costs.

The same load goes to the gRPC floor (``bench/floor.py``, raw-bytes unary calls): the reference.
Client: a separate process, 4 threads, one keep-alive connection each, a bounded number of
requests. Figure: spans per server CPU-second (``/proc`` utime+stime of the server's whole
process group, so servers with worker processes are counted whole), after a warm-up.

    .venv/bin/pip install -e '.[bench-http]'
    .venv/bin/python -m bench.http_servers             # ~2 minutes; prints a Markdown table
    .venv/bin/python -m bench.http_servers --requests 300 --reps 1 --only stdlib,uvicorn
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
CT = "application/x-protobuf"

# name -> (what it is, command-line flags of ``serve``)
CANDIDATES: dict[str, str] = {
    "stdlib": "http.server.ThreadingHTTPServer (stdlib), HTTP/1.1 keep-alive",
    "stdlib-pool": "http.server.HTTPServer + a fixed pool of 4 connection threads (stdlib)",
    "h11": "h11 over blocking sockets, one thread per connection",
    "werkzeug": "werkzeug.serving (threaded)",
    "waitress": "waitress WSGI (4 threads)",
    "cheroot": "cheroot WSGI (4 threads)",
    "uvicorn": "uvicorn + httptools + uvloop, raw ASGI, handler in a 4-thread executor",
    "uvicorn-inline": "uvicorn + httptools + uvloop, raw ASGI, handler on the event loop",
    "starlette": "starlette on uvicorn (httptools, uvloop), handler in a 4-thread executor",
    "hypercorn": "hypercorn ASGI (h11), handler in a 4-thread executor",
    "aiohttp": "aiohttp.web, handler in a 4-thread executor",
    "aiohttp-inline": "aiohttp.web, handler on the event loop",
    "tornado": "tornado.web, handler in a 4-thread executor",
    "granian": "granian WSGI (Rust HTTP, 1 worker process, 4 blocking threads)",
}


# -- the handler ---------------------------------------------------------------------------------
def make_work(null: bool) -> Callable[[bytes], bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    empty = ExportTraceServiceResponse().SerializeToString()

    def work(body: bytes) -> bytes:
        if not null:
            req = ExportTraceServiceRequest()
            req.ParseFromString(body)
            req.SerializeToString()
        return empty

    return work


WORK = make_work(os.environ.get("HTTP_BENCH_NULL") == "1")


def wsgi_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    n = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(n)
    out = WORK(body)
    start_response("200 OK", [("Content-Type", CT), ("Content-Length", str(len(out)))])
    return [out]


def _asgi_app(inline: bool) -> Any:
    pool = ThreadPoolExecutor(4)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while True:
                    msg = await receive()
                    if msg["type"] == "lifespan.startup":
                        await send({"type": "lifespan.startup.complete"})
                    elif msg["type"] == "lifespan.shutdown":
                        await send({"type": "lifespan.shutdown.complete"})
                        return
            return
        chunks = []
        more = True
        while more:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        out = WORK(body) if inline else await asyncio.get_running_loop().run_in_executor(pool, WORK, body)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", CT.encode()), (b"content-length", str(len(out)).encode())]})
        await send({"type": "http.response.body", "body": out})

    return app


# -- the servers ---------------------------------------------------------------------------------
def serve(lib: str, port: int) -> None:
    if lib in ("stdlib", "stdlib-pool"):
        from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                out = WORK(body)
                self.send_response(200)
                self.send_header("Content-Type", CT)
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *a: Any) -> None:
                pass

        if lib == "stdlib":
            ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
        else:
            class Pooled(HTTPServer):
                def __init__(self, *a: Any) -> None:
                    super().__init__(*a)
                    self.pool = ThreadPoolExecutor(4)

                def process_request(self, request: Any, client_address: Any) -> None:
                    self.pool.submit(self._one, request, client_address)

                def _one(self, request: Any, client_address: Any) -> None:
                    try:
                        self.finish_request(request, client_address)
                    finally:
                        self.shutdown_request(request)

            Pooled(("127.0.0.1", port), H).serve_forever()
    elif lib == "h11":
        _serve_h11(port)
    elif lib == "werkzeug":
        from werkzeug.serving import run_simple

        run_simple("127.0.0.1", port, wsgi_app, threaded=True)
    elif lib == "waitress":
        import waitress

        waitress.serve(wsgi_app, host="127.0.0.1", port=port, threads=4, _quiet=True)
    elif lib == "cheroot":
        from cheroot import wsgi

        wsgi.Server(("127.0.0.1", port), wsgi_app, numthreads=4).start()
    elif lib in ("uvicorn", "uvicorn-inline", "starlette"):
        import uvicorn

        app = _asgi_app(lib == "uvicorn-inline") if lib != "starlette" else _starlette_app()
        uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop",
                    log_level="warning", access_log=False, lifespan="off")
    elif lib == "hypercorn":
        from hypercorn.asyncio import serve as hserve
        from hypercorn.config import Config as HConfig

        hc = HConfig()
        hc.bind = [f"127.0.0.1:{port}"]
        hc.accesslog = None
        asyncio.run(hserve(_asgi_app(False), hc))
    elif lib in ("aiohttp", "aiohttp-inline"):
        from aiohttp import web

        pool = ThreadPoolExecutor(4)
        inline = lib == "aiohttp-inline"

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            out = WORK(body) if inline else await asyncio.get_running_loop().run_in_executor(pool, WORK, body)
            return web.Response(body=out, content_type=CT)

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/traces", handle)
        web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)
    elif lib == "tornado":
        import tornado.ioloop
        import tornado.web

        pool = ThreadPoolExecutor(4)

        class T(tornado.web.RequestHandler):
            async def post(self) -> None:
                out = await asyncio.get_running_loop().run_in_executor(pool, WORK, self.request.body)
                self.set_header("Content-Type", CT)
                self.write(out)

        async def main() -> None:
            tornado.web.Application([(r"/v1/traces", T)]).listen(port, "127.0.0.1",
                                                                 max_body_size=64 * 1024 * 1024)
            await asyncio.Event().wait()

        asyncio.run(main())
    elif lib == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        Granian("bench.http_servers:wsgi_app", address="127.0.0.1", port=port, interface=Interfaces.WSGI,
                workers=1, blocking_threads=4, log_enabled=False).serve()
    else:
        raise SystemExit(f"unknown library {lib!r}")


def _starlette_app() -> Any:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    pool = ThreadPoolExecutor(4)

    async def handle(request: Request) -> Response:
        body = await request.body()
        out = await asyncio.get_running_loop().run_in_executor(pool, WORK, body)
        return Response(out, media_type=CT)

    return Starlette(routes=[Route("/v1/traces", handle, methods=["POST"])])


def _serve_h11(port: int) -> None:
    import h11

    lsock = socket.create_server(("127.0.0.1", port))

    def conn(sock: socket.socket) -> None:
        c = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        with sock:
            while True:
                ev = c.next_event()
                if ev is h11.NEED_DATA:
                    data = sock.recv(262144)
                    c.receive_data(data)
                    if not data:
                        return
                    continue
                if isinstance(ev, h11.Request):
                    chunks = []
                    while True:
                        ev = c.next_event()
                        if ev is h11.NEED_DATA:
                            c.receive_data(sock.recv(262144))
                        elif isinstance(ev, h11.Data):
                            chunks.append(bytes(ev.data))
                        elif isinstance(ev, h11.EndOfMessage):
                            break
                    out = WORK(b"".join(chunks))
                    sock.sendall(c.send(h11.Response(status_code=200, headers=[
                        ("content-type", CT), ("content-length", str(len(out)))])) or b"")
                    sock.sendall(c.send(h11.Data(data=out)) or b"")
                    sock.sendall(c.send(h11.EndOfMessage()) or b"")
                    c.start_next_cycle()
                elif isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                    return

    while True:
        s, _ = lsock.accept()
        threading.Thread(target=conn, args=(s,), daemon=True).start()


# -- the driver ----------------------------------------------------------------------------------
def group_cpu(pgid: int) -> float:
    """utime + stime of every live process in process group ``pgid``."""
    total = 0.0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("server did not start")


def _http_client(port: int, bodies: list[bytes], n: int, path: str = "/v1/traces") -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for i in range(n):
            conn.request("POST", path, bodies[i % len(bodies)], {"Content-Type": CT})
            r = conn.getresponse()
            r.read()
            if r.status != 200:
                raise RuntimeError(f"HTTP {r.status}")
    finally:
        conn.close()


def _grpc_client(port: int, bodies: list[bytes], n: int) -> None:
    import grpc

    ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 1 << 28)])
    try:
        call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        for i in range(n):
            call(bodies[i % len(bodies)], timeout=30)
    finally:
        ch.close()


def measure(kind: str, lib: str, null: bool, bodies: list[bytes], spans: int, requests: int,
            clients: int = 4) -> float:
    """Spans per server CPU-second for ``requests`` requests (after 10 % warm-up)."""
    port = free_port()
    env = dict(os.environ, HTTP_BENCH_NULL="1" if null else "0")
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    if kind == "grpc":
        argv = [PY, "-m", "bench.floor", "--listen", f"127.0.0.1:{port}", *(["--null"] if null else [])]
        client: Callable[[int, list[bytes], int], None] = _grpc_client
    else:
        argv = [PY, "-m", "bench.http_servers", "serve", "--lib", lib, "--port", str(port)]
        client = _http_client
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        _wait_port(port, proc)
        per = max(1, requests // clients)
        warm = max(1, per // 10)
        for phase, n in (("warm", warm), ("run", per)):
            if phase == "run":
                cpu0 = group_cpu(proc.pid)
            threads = [threading.Thread(target=client, args=(port, bodies, n)) for _ in range(clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=300)
        cpu = group_cpu(proc.pid) - cpu0
        return per * clients * spans / max(cpu, 1e-9)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)


def compare(libs: list[str], requests: int, reps: int) -> str:
    from bench.workload import build

    wl = build("mixed", 512, 8)
    bodies = [b.traces for b in wl.batches]
    spans = wl.batches[0].spans
    rows: list[tuple[str, str, list[float], list[float]]] = []
    order = [("grpc", "grpc")] + [("http", lib) for lib in libs]
    results: dict[str, dict[bool, list[float]]] = {lib: {True: [], False: []} for _k, lib in order}
    for r in range(reps):
        rotated = order[r % len(order):] + order[:r % len(order)]
        for kind, lib in rotated:
            for null in (False, True):
                try:  # the null handler costs ~5x less: 5x the requests for the same CPU resolution
                    v = measure(kind, lib, null, bodies, spans, requests * (5 if null else 1))
                except Exception as e:
                    print(f"{lib}: {e}", file=sys.stderr)
                    v = float("nan")
                results[lib][null].append(v)
                print(f"rep {r + 1} {lib:15s} {'null ' if null else 'floor'} {v:10,.0f} spans/CPU-s",
                      file=sys.stderr, flush=True)
    for _kind, lib in order:
        rows.append((lib, "gRPC floor (bench/floor.py), grpcio, 4 threads" if lib == "grpc" else CANDIDATES[lib],
                     results[lib][False], results[lib][True]))
    g_floor = statistics.median(results["grpc"][False])
    g_null = statistics.median(results["grpc"][True])
    out = ["| server | what | parse + serialize: spans per server CPU-s | ÷ gRPC | null handler: spans per CPU-s | ÷ gRPC |",
           "|---|---|---|---|---|---|"]
    for lib, what, floor, null_ in rows:
        f, n = statistics.median(floor), statistics.median(null_)
        out.append(f"| {lib} | {what} | {f:,.0f} | {f / g_floor:.2f}× | {n:,.0f} | {n / g_null:.2f}× |")
    out.append("")
    out.append(f"{reps} repetitions (median), {requests} requests of {spans} spans "
               f"({len(bodies[0]):,} B) per measurement, 4 client threads, keep-alive.")
    return "\n".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd")
    s = sub.add_parser("serve")
    s.add_argument("--lib", required=True)
    s.add_argument("--port", type=int, required=True)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--only", default="")
    args = p.parse_args()
    if args.cmd == "serve":
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        serve(args.lib, args.port)
        return
    libs = [x for x in args.only.split(",") if x] or list(CANDIDATES)
    print(compare(libs, args.requests, args.reps))


if __name__ == "__main__":
    main()
