"""Langfuse's OTLP ingest: OTLP/HTTP protobuf, Basic auth, gzip (Langfuse accepts no gRPC).

Called from delivery worker threads. A connection-level failure (refused, DNS, TLS, timeout) is
a retry for the queue and a WARNING here naming the upstream URL, never the keys; repeated
failures are summarised at most once per :data:`WARN_INTERVAL_SECONDS`.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import http.client
import logging
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from ._base import OK, ExportResult
from .endpoints import LANGFUSE_OTLP_PATH, langfuse_base_url
from .retry import RETRYABLE_HTTP_STATUSES, parse_retry_after

__all__ = ["LangfuseExporter", "basic_auth"]

log = logging.getLogger("promptstamp_relay.export")

def _pick_compressor() -> Callable[[bytes, int], bytes]:
    # ISA-L's gzip: the same format and ratio at level 1 for ~5x less CPU than zlib's level 1
    # (measured on 512-span requests); zlib when the isal wheel is not installed.
    try:
        from isal import igzip
    except ImportError:  # pragma: no cover - isal is in the relay extra
        return lambda payload, level: gzip.compress(payload, level, mtime=0)
    return lambda payload, level: bytes(igzip.compress(payload, min(level, 3)))


gzip_compress = _pick_compressor()

INGEST_PATH = LANGFUSE_OTLP_PATH
WARN_INTERVAL_SECONDS = 5.0


class ConnectionWarnings:
    """One WARNING per connection failure, at most one per interval; the rest are counted and
    reported with the next one. Thread-safe (delivery workers share an exporter)."""

    def __init__(self, interval: float = WARN_INTERVAL_SECONDS) -> None:
        self._interval = interval
        self._lock = threading.Lock()
        self._last = -float("inf")
        self._suppressed = 0

    def failed(self, message: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last < self._interval:
                self._suppressed += 1
                return
            self._last, suppressed, self._suppressed = now, self._suppressed, 0
        more = f" ({suppressed} more since the last warning)" if suppressed else ""
        log.warning("%s; the delivery queue retries with backoff%s", message, more)


def basic_auth(public_key: str, secret_key: str) -> str:
    return "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()


class LangfuseExporter:
    """``POST {base_url}/api/public/otel/v1/traces`` with the headers Langfuse expects.

    One keep-alive connection per worker thread. A 200 means "queued" on Langfuse's side.
    """

    signal = "traces"

    def __init__(
        self,
        base_url: str,
        public_key: str,
        secret_key: str,
        *,
        ingestion_version: int = 4,
        gzip_level: int = 1,
        timeout: float = 10.0,
    ) -> None:
        url = urllib.parse.urlsplit(langfuse_base_url(base_url))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self._https = url.scheme == "https"
        self._host = url.hostname
        self._port = url.port or (443 if self._https else 80)
        self._path = url.path + INGEST_PATH
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "Authorization": basic_auth(public_key, secret_key),
            "x-langfuse-ingestion-version": str(ingestion_version),
            "User-Agent": "promptstamp-relay",
        }
        if gzip_level:
            self._headers["Content-Encoding"] = "gzip"
        self._gzip_level = gzip_level
        self._timeout = timeout
        self._local = threading.local()
        self._all_conns: set[http.client.HTTPConnection] = set()
        self._conns_lock = threading.Lock()
        self._closed = False
        self.endpoint = f"{url.scheme}://{self._host}:{self._port}{self._path}"
        self._warnings = ConnectionWarnings()

    def _conn(self) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self._timeout)
            self._local.conn = conn
            with self._conns_lock:
                self._all_conns.add(conn)
        return conn

    def _drop_conn(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            with self._conns_lock:
                self._all_conns.discard(conn)

    def export(self, payload: bytes, headers: dict[str, str] | None = None) -> ExportResult:
        body = gzip_compress(payload, self._gzip_level) if self._gzip_level else payload
        send_headers = self._headers if not headers else {**self._headers, **headers}
        if self._closed:
            return ExportResult("retry", f"exporter to {self.endpoint} is shut down")
        try:
            conn = self._conn()
            conn.request("POST", self._path, body=body, headers=send_headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as e:
            self._drop_conn()
            message = f"cannot export to {self.endpoint}: {type(e).__name__}: {e}"
            if not self._closed:
                self._warnings.failed(message)
            return ExportResult("retry", message)
        if resp.getheader("Connection", "").lower() == "close":
            self._drop_conn()
        status = resp.status
        if 200 <= status < 300:
            return _partial_success(data, resp.getheader("Content-Type", ""))
        message = f"HTTP {status} from {self.endpoint}: {data[:300].decode('utf-8', 'replace')}"
        if status in RETRYABLE_HTTP_STATUSES:
            return ExportResult("retry", message, parse_retry_after(resp.getheader("Retry-After")))
        return ExportResult("permanent", message)

    def shutdown(self) -> None:
        """Close every worker's connection, interrupting an export still waiting for an answer
        (its worker sees a connection error; the delivery queue has already accounted for it)."""
        self._closed = True
        with self._conns_lock:
            conns = list(self._all_conns)
            self._all_conns.clear()
        for conn in conns:
            sock = conn.sock
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            conn.close()


def _partial_success(body: bytes, content_type: str) -> ExportResult:
    if not body or "protobuf" not in content_type:
        return OK
    resp = ExportTraceServiceResponse()
    try:
        resp.ParseFromString(body)
    except Exception:  # a 2xx with an odd body is still accepted
        return OK
    ps = resp.partial_success
    if ps.rejected_spans or ps.error_message:
        return ExportResult("ok", ps.error_message, rejected=int(ps.rejected_spans))
    return OK
