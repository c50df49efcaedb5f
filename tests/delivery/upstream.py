"""A small loopback OTLP/HTTP trace ingest with programmable failures and delays.

It answers on Langfuse's ingest path (so the relay's Langfuse exporter can point at it) and
records every request: when it arrived, what it answered, and the span ids in it.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections import Counter
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.waiting import wait_until

INGEST_PATH = "/api/public/otel/v1/traces"


@dataclass(frozen=True)
class Received:
    at: float  # time.monotonic() when the body was read
    status: int
    span_ids: tuple[bytes, ...]
    request: ExportTraceServiceRequest


class Upstream:
    """``fail(status, times, retry_after)``, ``delay(seconds)``; ``accepted_span_ids()``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self._fail: tuple[int, int | None, float | None] | None = None
        self._delay = 0.0
        self._stopping = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, headers, payload = owner._answer(self.path, self.headers.get("Content-Encoding"), body)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    # -- lifecycle ----------------------------------------------------------------------------
    def __enter__(self) -> Upstream:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    # -- programming --------------------------------------------------------------------------
    def fail(self, status: int, times: int | None = None, retry_after: float | None = None) -> None:
        """Answer ``status`` to the next ``times`` requests (None: until ``recover()``)."""
        with self._lock:
            self._fail = (status, times, retry_after)

    def recover(self) -> None:
        with self._lock:
            self._fail = None
            self._delay = 0.0

    def delay(self, seconds: float) -> None:
        """Hold every answer ``seconds`` (after the body is read and recorded)."""
        with self._lock:
            self._delay = seconds

    # -- what arrived -------------------------------------------------------------------------
    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def accepted_span_ids(self) -> Counter[bytes]:
        """Span id -> how many times it arrived in a request answered 200."""
        return Counter(s for r in self.snapshot() if r.status == 200 for s in r.span_ids)

    def wait_for_spans(self, wanted: set[bytes], timeout: float) -> Counter[bytes]:
        """Span id -> how many times it arrived answered 200, once every one of ``wanted`` did."""
        got: Counter[bytes] = Counter()

        def arrived() -> bool:
            got.clear()
            got.update(self.accepted_span_ids())
            return wanted <= got.keys()

        wait_until(arrived, timeout, lambda: f"{len(wanted - got.keys())} of {len(wanted)} spans to arrive")
        return got

    # -- serving ------------------------------------------------------------------------------
    def _answer(self, path: str, encoding: str | None, body: bytes) -> tuple[int, dict[str, str], bytes]:
        at = time.monotonic()
        if path != INGEST_PATH:
            return 404, {}, b""
        if encoding and "gzip" in encoding:
            body = gzip.decompress(body)
        req = ExportTraceServiceRequest.FromString(body)
        ids = tuple(s.span_id for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans)
        headers: dict[str, str] = {}
        with self._lock:
            status = 200
            if self._fail is not None:
                code, times, retry_after = self._fail
                if times is None or times > 0:
                    status = code
                    if retry_after is not None:
                        headers["Retry-After"] = f"{retry_after:g}"
                    if times is not None:
                        self._fail = (code, times - 1, retry_after) if times > 1 else None
            delay = self._delay
            self.received.append(Received(at, status, ids, req))
        if delay:
            self._stopping.wait(delay)
        payload = ExportTraceServiceResponse().SerializeToString() if status == 200 else b"injected failure"
        return status, headers, payload
