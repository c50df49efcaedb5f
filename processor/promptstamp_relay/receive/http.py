"""The OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/logs``, ``/v1/metrics`` and Langfuse's own
``POST /api/public/otel/v1/traces``, into the same admission as the gRPC receiver.

Bodies are ``application/x-protobuf`` or ``application/json`` (OTLP/JSON, converted to protobuf
bytes first: ``wire/otlpjson.py``), optionally ``Content-Encoding: gzip`` (decompressed with a
bound: ``limits.max_request_bytes`` applies to the decompressed size, so a gzip bomb gets 413
after at most that many bytes of output), with ``Content-Length`` or chunked. Answers follow
OTLP/HTTP: 200 with an empty ``Export*ServiceResponse`` (in the request's encoding); 400 bad
data, 401 credentials, 413 too large, 415 unsupported content type or encoding, 405 wrong
method, 404 unknown path, 429 / 503 with ``Retry-After`` when refusing for load; error bodies
are a ``google.rpc.Status``. Headers become :class:`~promptstamp_relay.admission.CallInfo` metadata
(lower-case names), so ``Authorization: Basic base64(pk:sk)`` — what Langfuse's exporters send —
goes through ``admission/auth.py`` exactly as gRPC metadata does.

Server: the standard library's ``http.server`` (chosen by measurement, ``docs/http-receiver.md``)
with the bounds it lacks added here: at most ``max_connections`` connections (one more gets 503
and is closed), ``idle_timeout_seconds`` on every read, body bytes being read bounded by
``limits.max_inflight_request_bytes`` across connections, and at most ``threads`` requests in
admission at once. TLS / mTLS from ``tls.*`` (``tls.py``), the handshake on the connection's
own thread.

Threads: one accept thread; one thread per connection, which reads, admits (blocking, like a
gRPC handler thread) and answers its requests in turn.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import ssl
import threading
import types
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal

from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .. import hostport
from ..admission import Admitter, CallInfo, Refusal, RefusalReason
from ..admission.budget import ByteBudget
from ..errors import ReceiverListenError
from ..wire.otlpjson import OtlpJsonError, Signal, encode_line, to_protobuf
from .settings import HttpReceiverConfig, effective_listen

_inflate: types.ModuleType = zlib
with contextlib.suppress(ImportError):  # the relay extra has ISA-L: twice zlib's inflate speed
    from isal import isal_zlib as _isal

    _inflate = _isal

__all__ = ["LANGFUSE_TRACES_PATH", "ROUTES", "STATUS", "HttpReceiverConfig", "OtlpHttpReceiver",
           "effective_listen", "gunzip"]

log = logging.getLogger("promptstamp_relay.receive.http")

#: Langfuse's OTLP ingest path: an exporter pointed at Langfuse only changes its base URL.
LANGFUSE_TRACES_PATH = "/api/public/otel/v1/traces"
ROUTES: dict[str, Signal] = {
    "/v1/traces": "traces",
    "/v1/logs": "logs",
    "/v1/metrics": "metrics",
    LANGFUSE_TRACES_PATH: "traces",
}
#: Admission's refusal reasons as HTTP statuses (the gRPC table is in ``receive/grpc.py``).
STATUS: dict[RefusalReason, int] = {
    "unauthenticated": 401,
    "invalid": 400,
    "too_large": 413,
    "backpressure": 429,
    "unavailable": 503,
}
# google.rpc.Code of the Status body, by HTTP status.
_RPC_CODE = {400: 3, 401: 16, 404: 5, 405: 12, 408: 4, 411: 3, 413: 8, 415: 3, 429: 8, 500: 13, 501: 12,
             503: 14}
_RESPONSES: dict[Signal, Callable[[], Message]] = {
    "traces": ExportTraceServiceResponse,
    "logs": ExportLogsServiceResponse,
    "metrics": ExportMetricsServiceResponse,
}
Encoding = Literal["protobuf", "json"]
_MEDIA: dict[str, Encoding] = {"application/x-protobuf": "protobuf", "application/protobuf": "protobuf",
                               "application/json": "json"}
_CONTENT_TYPE: dict[Encoding, str] = {"protobuf": "application/x-protobuf", "json": "application/json"}
_DRAIN_MAX = 64 * 1024 * 1024  # an unread body up to this is read and dropped to keep the connection
_CHUNK_LINE_MAX = 1024
_SLOT_WAIT_SECONDS = 5.0


class _Reply(Exception):
    """An answer decided before admission (routing, media type, body framing, size)."""

    def __init__(self, status: int, message: str, *, close: bool = False, retry_after: float | None = None,
                 allow: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close
        self.retry_after = retry_after
        self.allow = allow


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip ``data`` (one or more members) to at most ``limit`` bytes.

    More output than ``limit`` raises ``_Reply(413)`` having produced at most ``limit + 1``
    bytes; a corrupt or truncated stream raises ``_Reply(400)``.
    """
    out: list[bytes] = []
    total = 0
    rest = data
    try:
        while rest:
            d = _inflate.decompressobj(16 + zlib.MAX_WBITS)
            chunk = d.decompress(rest, limit - total + 1)
            total += len(chunk)
            if total > limit:
                raise _Reply(413, f"decompressed body exceeds limits.max_request_bytes ({limit})")
            if not d.eof:
                raise _Reply(400, "gzip body is truncated")
            out.append(chunk)
            rest = d.unused_data
    except zlib.error as e:
        raise _Reply(400, f"gzip body is corrupt: {e}") from None
    except _Reply:
        raise
    except Exception as e:  # isal raises its own error type
        if type(e).__name__ == "IsalError" or isinstance(e, ValueError):
            raise _Reply(400, f"gzip body is corrupt: {e}") from None
        raise
    return b"".join(out)


def _media(content_type: str | None) -> Encoding | None:
    if not content_type:
        return None
    return _MEDIA.get(content_type.split(";", 1)[0].strip().lower())


def _status_body(encoding: Encoding | None, status: int, message: str) -> tuple[bytes, str]:
    msg = status_pb2.Status(code=_RPC_CODE.get(status, 2), message=message)
    if encoding == "json":
        return encode_line(msg).encode(), _CONTENT_TYPE["json"]
    return bytes(msg.SerializeToString()), _CONTENT_TYPE["protobuf"]


def _retry_after_header(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    receiver: OtlpHttpReceiver

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.receiver._open_connection(request):
            self.receiver._refuse_connection(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.receiver._close_connection(request)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.receiver._close_connection(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A TLS handshake that fails, a peer that resets: one debug line, not a traceback.
        import sys

        err = sys.exc_info()[1]
        log.debug("OTLP/HTTP connection from %s:%s ended: %r", client_address[0], client_address[1], err)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "promptstamp-relay"
    sys_version = ""
    server: _Server
    timeout = 60.0  # socket timeout of every read; each receiver's subclass sets its own

    def setup(self) -> None:
        super().setup()
        if isinstance(self.request, ssl.SSLSocket):
            self.request.do_handshake()

    # -- dispatch -----------------------------------------------------------------------------
    def do_POST(self) -> None:
        self.server.receiver._serve(self)

    def _other(self) -> None:
        path = self.path.split("?", 1)[0]
        # A body we do not read would be taken for the next request: close after answering.
        close = bool(self.headers.get("Content-Length", "0").strip() not in ("", "0")
                     or self.headers.get("Transfer-Encoding"))
        if path in ROUTES:
            reply = _Reply(405, "only POST is allowed", allow="POST", close=close)
        else:
            reply = _Reply(404, f"no OTLP endpoint at {path[:200]}", close=close)
        self.server.receiver._reply_error(self, reply, None)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_HEAD = _other

    def handle_expect_100(self) -> bool:
        """``Expect: 100-continue``: refuse before the body is sent when the headers already say
        the request cannot be taken (size, path, media type)."""
        if self.command == "POST":
            receiver = self.server.receiver
            try:
                receiver._precheck(self, receiver._framing(self))
            except _Reply as r:
                r.close = True  # the body was never sent: nothing to drain
                self.server.receiver._reply_error(self, r, None)
                return False
        return super().handle_expect_100()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (malformed request line, headers too long...): plain text.
        self.close_connection = True
        body = f"{message or self.responses.get(code, ('error',))[0]}\n".encode("utf-8", "replace")
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would be the relay's busiest log

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("OTLP/HTTP %s: " + format, self.address_string(), *args)


class OtlpHttpReceiver:
    """OTLP/HTTP on ``config.listen``. Binds in :meth:`start`; :meth:`stop` is safe in any state.

    ``max_request_bytes``: ``limits.max_request_bytes`` (the body as sent and as decompressed);
    ``max_inflight_bytes``: ``limits.max_inflight_request_bytes`` (bodies being read at once);
    ``retry_after``: the delay suggested when refusing for load here (before admission).
    """

    def __init__(
        self,
        config: HttpReceiverConfig,
        admission: Admitter,
        *,
        max_request_bytes: int = 16 * 1024 * 1024,
        max_inflight_bytes: int = 32 * 1024 * 1024,
        ssl_context: ssl.SSLContext | None = None,
        retry_after: float = 1.0,
    ) -> None:
        self.config = config
        self._admission = admission
        self._handlers: dict[Signal, Callable[[bytes, CallInfo], None]] = {
            "traces": admission.traces, "logs": admission.logs, "metrics": admission.metrics,
        }
        self._max_request = max_request_bytes
        self._bodies = ByteBudget(max(max_inflight_bytes, max_request_bytes))
        self._slots = threading.BoundedSemaphore(config.threads)
        self._ssl = ssl_context
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._active = 0  # requests between headers read and answer written
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self.serving = False

    @property
    def address(self) -> str:
        """``host:port`` actually bound (after :meth:`start`)."""
        return f"{self.config.listen.rpartition(':')[0]}:{self.port}"

    # -- lifecycle ------------------------------------------------------------------------------
    def set_serving(self, serving: bool) -> None:
        """OTLP/HTTP has no health service of its own (``/readyz`` is on the metrics listener);
        while draining, admission itself answers 503 with Retry-After."""
        self.serving = serving

    def start(self) -> None:
        """Bind ``config.listen`` and serve in a background thread; :class:`ReceiverListenError`
        when it cannot bind."""
        host, port = hostport.parse(self.config.listen)
        handler = type("Handler", (_Handler,), {"timeout": self.config.idle_timeout_seconds})
        server_cls = type("Server", (_Server,), {
            "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET,
            "request_queue_size": 128,
        })
        try:
            server = server_cls((host, port), handler, bind_and_activate=True)
        except OSError as e:
            raise ReceiverListenError(
                self.config.listen, "OTLP/HTTP", str(e.strerror or e),
                "set --http-listen (receivers.http.listen) to a free port, or '' to turn the OTLP/HTTP "
                "receiver off") from None
        server.receiver = self
        if self._ssl is not None:
            server.socket = self._ssl.wrap_socket(server.socket, server_side=True,
                                                  do_handshake_on_connect=False)
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="otlp-http-accept",
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests being admitted get ``grace`` seconds (default 1) to finish,
        then every connection is closed. Idempotent; fine before :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        with self._lock:
            self._closing = True  # answers from now on say Connection: close
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=1.0 if grace is None else grace)
            sockets = list(self._open)
        for s in sockets:  # idle keep-alive connections (and any still busy past the grace)
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    # -- connections ----------------------------------------------------------------------------
    def _open_connection(self, sock: socket.socket) -> bool:
        with self._lock:
            if self._closing or len(self._open) >= self.config.max_connections:
                return False
            self._open.add(sock)
            return True

    def _close_connection(self, sock: socket.socket) -> None:
        with self._lock:
            self._open.discard(sock)

    def _refuse_connection(self, sock: socket.socket) -> None:
        """Over ``max_connections`` (or stopping): 503 + Retry-After, then close. Plaintext only:
        a TLS connection is closed without an answer (a handshake here would block accepting)."""
        try:
            if not isinstance(sock, ssl.SSLSocket):
                sock.settimeout(0.5)
                body, ctype = _status_body(None, 503, "relay has too many OTLP/HTTP connections, retry later")
                retry = _retry_after_header(self._retry_after)
                head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nRetry-After: {retry}\r\nConnection: close\r\n\r\n")
                sock.sendall(head.encode("ascii") + body)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    # -- one request ----------------------------------------------------------------------------
    @staticmethod
    def _framing(h: _Handler) -> int | None:
        """The body's length from ``Content-Length`` (0 without one), None when chunked; raise
        ``_Reply(400, close)`` when the framing is ambiguous (the connection cannot go on)."""
        te = h.headers.get_all("Transfer-Encoding") or []
        lengths = h.headers.get_all("Content-Length") or []
        if te:
            if lengths or ",".join(te).strip().lower() != "chunked":
                raise _Reply(400, "only Transfer-Encoding: chunked, without Content-Length", close=True)
            return None
        if len({v.strip() for v in lengths}) > 1 or any(not v.strip().isdigit() for v in lengths):
            raise _Reply(400, "invalid Content-Length", close=True)
        return int(lengths[0]) if lengths else 0

    def _precheck(self, h: _Handler, length: int | None) -> tuple[Signal, Encoding, bool]:
        """What the headers say: (signal, encoding, gzip); raise :class:`_Reply` when they
        already rule the request out."""
        path = h.path.split("?", 1)[0]
        signal = ROUTES.get(path)
        if signal is None:
            raise _Reply(404, f"no OTLP endpoint at {path[:200]}")
        encoding = _media(h.headers.get("Content-Type"))
        if encoding is None:
            raise _Reply(415, "Content-Type must be application/x-protobuf or application/json")
        coding = (h.headers.get("Content-Encoding") or "").strip().lower()
        if coding not in ("", "identity", "gzip", "x-gzip"):
            raise _Reply(415, "Content-Encoding must be gzip or none")
        if length is not None and length > self._max_request:
            raise _Reply(413, f"request of {length} bytes exceeds limits.max_request_bytes "
                              f"({self._max_request})")
        return signal, encoding, coding.endswith("gzip")

    def _serve(self, h: _Handler) -> None:
        with self._idle:
            self._active += 1
        try:
            self._serve_one(h)
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    def _serve_one(self, h: _Handler) -> None:
        encoding: Encoding | None = _media(h.headers.get("Content-Type"))
        length: int | None = None
        body_read = False
        try:
            length = self._framing(h)
            signal, encoding, gzipped = self._precheck(h, length)
            held = length if length is not None else 0
            if held and not self._bodies.acquire(held):
                raise _Reply(503, "relay is reading too many request bodies at once, retry later",
                             retry_after=self._retry_after)
            try:
                body = self._read_body(h, length)
                body_read = True
                if not self._slots.acquire(timeout=_SLOT_WAIT_SECONDS):
                    raise _Reply(503, "relay is busy, retry later", retry_after=self._retry_after)
                try:
                    self._admit(h, signal, encoding, gzipped, body)
                finally:
                    self._slots.release()
            finally:
                if held:
                    self._bodies.release(held)
        except _Reply as r:
            if not body_read and not r.close:
                r.close = not self._drain(h, length)
            self._reply_error(h, r, encoding)
        except Refusal as r:
            self._reply_error(h, _Reply(STATUS[r.reason], r.message, retry_after=r.retry_after
                                        if r.reason in ("backpressure", "unavailable") else None), encoding)
        except OSError as e:  # the peer went away or timed out mid-body: nothing to answer
            log.debug("OTLP/HTTP request from %s abandoned: %r", h.address_string(), e)
            h.close_connection = True
        except Exception:
            log.exception("OTLP/HTTP receiver failed on a request")
            self._reply_error(h, _Reply(500, "internal error in the relay", close=not body_read), encoding)

    def _admit(self, h: _Handler, signal: Signal, encoding: Encoding, gzipped: bool, body: bytes) -> None:
        data = gunzip(body, self._max_request) if gzipped else body
        if encoding == "json":
            try:
                data = to_protobuf(signal, data)
            except OtlpJsonError as e:
                raise _Reply(400, str(e)) from None
        metadata: dict[str, str] = {}
        for k, v in h.headers.items():
            metadata.setdefault(k.lower(), v)
        host, port = h.client_address[0], h.client_address[1]
        peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._handlers[signal](data, CallInfo(metadata, peer, "http"))
        response = _RESPONSES[signal]()
        if encoding == "json":
            self._send(h, 200, encode_line(response).encode(), _CONTENT_TYPE["json"])
        else:
            self._send(h, 200, bytes(response.SerializeToString()), _CONTENT_TYPE["protobuf"])

    def _read_body(self, h: _Handler, length: int | None) -> bytes:
        if length is None:
            return self._read_chunked(h)
        if length == 0:
            return b""
        body = h.rfile.read(length)
        if len(body) != length:
            raise ConnectionError("connection closed inside the request body")
        return bytes(body)

    def _read_chunked(self, h: _Handler) -> bytes:
        """A chunked body, at most ``max_request_bytes``; each chunk takes its size from the
        body budget as it arrives (released when the request ends)."""
        parts: list[bytes] = []
        total = 0
        held = 0
        try:
            while True:
                line = h.rfile.readline(_CHUNK_LINE_MAX + 1)
                if not line.endswith(b"\n"):
                    raise _Reply(400, "malformed chunked body", close=True)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise _Reply(400, "malformed chunked body", close=True) from None
                if size < 0:
                    raise _Reply(400, "malformed chunked body", close=True)
                if size == 0:
                    break
                total += size
                if total > self._max_request:
                    raise _Reply(413, f"request exceeds limits.max_request_bytes ({self._max_request})",
                                 close=True)
                if not self._bodies.acquire(size):
                    raise _Reply(503, "relay is reading too many request bodies at once, retry later",
                                 close=True, retry_after=self._retry_after)
                held += size
                chunk = h.rfile.read(size)
                if len(chunk) != size or h.rfile.readline(3) not in (b"\r\n", b"\n"):
                    raise ConnectionError("connection closed inside a chunk")
                parts.append(chunk)
            for _ in range(64):  # trailers, up to the blank line
                line = h.rfile.readline(_CHUNK_LINE_MAX + 1)
                if line in (b"\r\n", b"\n", b""):
                    break
            else:
                raise _Reply(400, "too many trailers", close=True)
        finally:
            if held:
                self._bodies.release(held)
        return b"".join(parts)

    @staticmethod
    def _drain(h: _Handler, length: int | None) -> bool:
        """Read and drop an unread body so the connection can serve the next request; False
        when it is too long or chunked (the connection is closed instead)."""
        if length is None or length > _DRAIN_MAX:
            return False
        left = length
        try:
            while left > 0:
                got = h.rfile.read(min(left, 65536))
                if not got:
                    return False
                left -= len(got)
        except OSError:
            return False
        return True

    def _reply_error(self, h: _Handler, r: _Reply, encoding: Encoding | None) -> None:
        body, ctype = _status_body(encoding, r.status, r.message)
        headers: dict[str, str] = {}
        if r.retry_after is not None:
            headers["Retry-After"] = _retry_after_header(r.retry_after)
        if r.allow:
            headers["Allow"] = r.allow
        if r.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="promptstamp-relay"'
        if r.close:
            h.close_connection = True
        self._send(h, r.status, body, ctype, headers)

    def _send(self, h: _Handler, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        with self._lock:
            if self._closing:
                h.close_connection = True
        try:
            h.send_response(status)
            h.send_header("Content-Type", ctype)
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            if h.close_connection:
                h.send_header("Connection", "close")
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(body)
        except OSError as e:
            log.debug("OTLP/HTTP answer to %s not delivered: %r", h.address_string(), e)
            h.close_connection = True
