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

Server: the standard library's ``http.server`` request handler (chosen by measurement,
``docs/http-receiver.md``), driven by a connection loop of the receiver's own, with the bounds
a shared relay needs:

- a connection waiting for a request — idle keep-alive, TLS handshake, headers not complete —
  sits in one selector thread (:meth:`OtlpHttpReceiver._loop`) and costs a socket and its buffer, no
  thread; only a request whose headers are complete gets a thread (its body, admission, the
  answer), then the connection goes back to the selector;
- deadlines: the headers must be complete ``header_timeout_seconds`` after connecting (or after
  a kept-alive connection's first byte), the body ``body_timeout_seconds`` after the headers,
  and a kept-alive connection with no new request is closed after ``idle_timeout_seconds``;
- at most ``max_connections`` connections, ``max_connections_per_peer`` per peer address. At
  a limit, the connection that has waited longest without a complete request (for at least
  :data:`EVICT_AFTER_SECONDS`; the peer's own first, at its per-peer limit) is closed to make
  room; only when none has, the new one is answered 503 + Retry-After and closed;
- body bytes being read bounded by ``limits.max_inflight_request_bytes`` across connections,
  and at most ``threads`` requests decompressed and admitted at once, taking turns by sender
  credential (an idle sender's request goes next: ``admission/fair.py``).

TLS / mTLS from ``tls.*`` (``tls.py``), the handshake in the selector thread, non-blocking.

Threads: the selector thread accepts, reads headers and enforces the waiting deadlines; a
thread per request with complete headers (a pool, reused) reads the body, admits (blocking,
like a gRPC handler thread) and answers.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import selectors
import socket
import ssl
import threading
import time
import types
import zlib
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from typing import Any, Literal

from google.protobuf.message import Message
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from .. import hostport
from ..admission import Admitter, CallInfo, Refusal, RefusalReason
from ..admission.budget import ByteBudget
from ..admission.fair import FairGate, NoTurn
from ..counters import Counters, metric
from ..errors import ReceiverListenError
from ..wire.otlpjson import OtlpJsonError, Signal, encode_line, to_protobuf
from .settings import HttpReceiverConfig, effective_listen

_inflate: types.ModuleType = zlib
with contextlib.suppress(ImportError):  # the relay extra has ISA-L: twice zlib's inflate speed
    from isal import isal_zlib as _isal

    _inflate = _isal

__all__ = ["EVICT_AFTER_SECONDS", "LANGFUSE_TRACES_PATH", "ROUTES", "STATUS", "HttpReceiverConfig",
           "HttpReceiverStats", "OtlpHttpReceiver", "effective_listen", "gunzip"]

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
_PHRASES = {431: "Request Header Fields Too Large", 503: "Service Unavailable"}
_DRAIN_MAX = 64 * 1024 * 1024  # an unread body up to this is read and dropped to keep the connection
_CHUNK_LINE_MAX = 1024
_SLOT_WAIT_SECONDS = 5.0
#: Request line and headers, at most (an OTLP exporter's are well under 2 KiB).
_HEAD_MAX = 64 * 1024
#: How long answering may take (the answers are small; a peer that does not read is cut).
_SEND_TIMEOUT_SECONDS = 10.0
#: A waiting connection may be closed to make room for a new one only after this long (a client
#: that has just connected is about to send; one silent or half-way through its headers for a
#: second is not an OTLP exporter, which sends its request line and headers in one write).
EVICT_AFTER_SECONDS = 1.0
#: After an answer, how long the request thread waits for the connection's next request before
#: handing the connection back to the selector thread (a client sending back to back, such as a
#: Collector's exporter under load, then costs no hand-over per request).
LINGER_SECONDS = 0.005
#: The reasons a connection is closed by the relay (the metric's label values).
CLOSE_REASONS = ("header_timeout", "body_timeout", "idle_timeout", "evicted", "refused")


@dataclass
class HttpReceiverStats(Counters):
    """The OTLP/HTTP listener's counters (its connection loop's, under this object's lock)."""

    closed: Counter[str] = metric(
        "OTLP/HTTP connections the relay closed: headers or body not complete in time "
        "(header_timeout, body_timeout), idle keep-alive (idle_timeout), closed to make room for a "
        "new one (evicted), refused at a connection limit with 503 (refused)",
        name="http_connections_closed", label="reason", values=CLOSE_REASONS)

    def close(self, reason: str) -> None:
        with self._lock:
            self.closed[reason] += 1


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


class _ServerRef:
    """What the request handler sees as its ``server``: the receiver."""

    def __init__(self, receiver: OtlpHttpReceiver) -> None:
        self.receiver = receiver


class _Conn:
    """One accepted connection. ``buf``: bytes read but not consumed (the next request's start).
    Waiting (in the selector thread) or busy (a request thread has it)."""

    __slots__ = (
        "addr",
        "buf",
        "busy",
        "deadline",
        "evictable_at",
        "handshaking",
        "kept",
        "peer",
        "reader",
        "reason",
        "sock",
        "writer",
    )

    def __init__(self, sock: socket.socket, addr: Any, now: float, header_timeout: float) -> None:
        self.sock = sock
        self.addr = addr
        self.peer = str(addr[0])
        self.buf = bytearray()
        self.busy = False
        self.kept = False  # has answered a request: now an idle keep-alive connection
        self.handshaking = isinstance(sock, ssl.SSLSocket)
        self.deadline = now + header_timeout
        self.reason = "header_timeout"
        self.evictable_at = now + EVICT_AFTER_SECONDS
        self.reader: _Reader | None = None
        self.writer: _Writer | None = None


class _Reader:
    """A request's input: the bytes the selector thread already read, then the socket; every
    read bounded by the request's deadline (``TimeoutError`` past it)."""

    def __init__(self, sock: socket.socket, buffered: bytearray, deadline: float) -> None:
        self._sock = sock
        self._buf = buffered
        self.deadline = deadline

    def _wait(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("request not received within its deadline")
        self._sock.settimeout(left)

    def _fill(self) -> bool:
        self._wait()
        data = self._sock.recv(65536)
        if not data:
            return False
        self._buf += data
        return True

    def readline(self, limit: int = -1) -> bytes:
        while True:
            i = self._buf.find(b"\n")
            if i >= 0 and (limit < 0 or i < limit):
                n = i + 1
                break
            if 0 <= limit <= len(self._buf):
                n = limit
                break
            if not self._fill():
                n = len(self._buf)
                break
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            while self._fill():
                pass
            n = len(self._buf)
        if n <= len(self._buf):
            out = bytes(self._buf[:n])
            del self._buf[:n]
            return out
        body = bytearray(n)
        have = len(self._buf)
        body[:have] = self._buf
        self._buf.clear()
        view = memoryview(body)
        while have < n:
            self._wait()
            got = self._sock.recv_into(view[have:], min(n - have, 1 << 20))
            if not got:
                break
            have += got
        view.release()
        return bytes(body[:have]) if have < n else bytes(body)

    def rest(self) -> bytearray:
        """What was read beyond this request (a pipelined next one)."""
        return self._buf

    def close(self) -> None:
        return None


class _Writer:
    """A request's output: the socket, each write bounded in time."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def write(self, data: bytes) -> int:
        self._sock.settimeout(_SEND_TIMEOUT_SECONDS)
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


def _head_complete(buf: bytearray) -> bool:
    return buf.find(b"\r\n\r\n", 0, _HEAD_MAX) >= 0 or buf.find(b"\n\n", 0, _HEAD_MAX) >= 0


def _fairness_key(h: BaseHTTPRequestHandler) -> str:
    """Whose turn a request takes at the HTTP receiver: its credential's digest (the tenant is
    only known in admission; the credential stands for it here, and is never kept)."""
    auth = h.headers.get("Authorization") or ""
    return hashlib.blake2b(auth.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest() if auth else ""


class _Handler(BaseHTTPRequestHandler):
    """One request on a connection whose headers are complete (``handle`` serves exactly one)."""

    protocol_version = "HTTP/1.1"
    server_version = "promptstamp-relay"
    sys_version = ""
    server: _ServerRef  # type: ignore[assignment]
    request: _Conn

    def setup(self) -> None:
        conn = self.request
        assert conn.reader is not None and conn.writer is not None
        self.connection = conn.sock
        self.rfile = conn.reader  # type: ignore[assignment]
        self.wfile = conn.writer  # type: ignore[assignment]

    def handle(self) -> None:
        self.close_connection = True
        self.handle_one_request()

    def finish(self) -> None:
        return None

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
        # Requests decompressed and admitted at once, taking turns by credential.
        self._slots = FairGate(config.threads, max_waiting=max(1, config.max_connections),
                               wait_seconds=_SLOT_WAIT_SECONDS, per_tenant=False)
        self._ssl = ssl_context
        self._retry_after = retry_after
        self.stats = HttpReceiverStats()
        self._lock = threading.Lock()
        self._open: set[_Conn] = set()  # every connection, waiting or busy
        self._per_peer: Counter[str] = Counter()
        self._active = 0  # requests between headers read and answer written
        self._idle = threading.Condition(self._lock)
        self._closing = False
        self._loop_done = False  # the selector thread has ended: connections coming back close
        self._returns: deque[_Conn] = deque()  # kept-alive connections back from request threads
        self._waiting: OrderedDict[_Conn, None] = OrderedDict()  # selector thread only
        self._selector: selectors.BaseSelector | None = None
        self._listener: socket.socket | None = None
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._server = _ServerRef(self)
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
        listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, port))
            listener.listen(512)
        except OSError as e:
            listener.close()
            raise ReceiverListenError(
                self.config.listen, "OTLP/HTTP", str(e.strerror or e),
                "set --http-listen (receivers.http.listen) to a free port, or '' to turn the OTLP/HTTP "
                "receiver off") from None
        self.port = int(listener.getsockname()[1])
        if self._ssl is not None:
            listener = self._ssl.wrap_socket(listener, server_side=True, do_handshake_on_connect=False)
        listener.setblocking(False)
        self._listener = listener
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ, None)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.config.max_connections),
                                        thread_name_prefix="otlp-http")
        self._thread = threading.Thread(target=self._loop, name="otlp-http-connections", daemon=True)
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting; requests being admitted get ``grace`` seconds (default 1) to finish,
        then every connection is closed. Idempotent; fine before :meth:`start`."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        with self._lock:
            self._closing = True  # answers from now on say Connection: close
        self._wake()
        thread.join(timeout=5)  # it closes the listener and the waiting connections
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=1.0 if grace is None else grace)
            busy = list(self._open)
        for conn in busy:  # any still busy past the grace
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
        if self._pool is not None:
            self._pool.shutdown(wait=False)
        for s in (self._wake_r, self._wake_w):
            if s is not None:
                s.close()

    def _wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                self._wake_w.send(b"x")

    # -- the selector thread: accepting, handshakes, headers, waiting deadlines ----------------
    def _loop(self) -> None:
        sel, listener = self._selector, self._listener
        assert sel is not None and listener is not None
        next_sweep = 0.0
        try:
            while not self._closing:
                now = time.monotonic()
                timeout = max(0.0, min(0.25, next_sweep - now)) if self._waiting else 0.25
                for key, _ in sel.select(timeout):
                    if key.fileobj is listener:
                        self._accept(listener)
                    elif key.fileobj is self._wake_r:
                        with contextlib.suppress(OSError):
                            self._wake_r.recv(4096)
                    else:
                        self._readable(key.data)
                while self._returns:
                    self._back(self._returns.popleft())
                now = time.monotonic()
                if now >= next_sweep:
                    self._sweep(now)
                    next_sweep = now + 0.05
        except Exception:  # never expected: log it, and close what the loop holds
            log.exception("OTLP/HTTP connection loop failed")
        finally:
            with self._lock:
                self._loop_done = True
                returned = list(self._returns)
                self._returns.clear()
            for conn in (*self._waiting, *returned):
                self._close(conn)
            self._waiting.clear()
            with contextlib.suppress(OSError, KeyError, ValueError):
                sel.unregister(listener)
            listener.close()
            sel.close()

    def _accept(self, listener: socket.socket) -> None:
        for _ in range(64):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # out of file descriptors, a connection reset before accept
                log.debug("OTLP/HTTP accept failed: %r", e)
                return
            sock.setblocking(False)
            now = time.monotonic()
            conn = _Conn(sock, addr, now, self.config.header_timeout_seconds)
            if not self._room_for(conn.peer, now):
                self.stats.close("refused")
                self._refuse_connection(sock)
                continue
            with self._lock:
                self._open.add(conn)
                self._per_peer[conn.peer] += 1
            self._wait_for_request(conn)
            if not conn.handshaking:
                self._readable(conn)  # the request may already be there

    def _room_for(self, peer: str, now: float) -> bool:
        """Whether a new connection from ``peer`` fits, closing a waiting one to make room when
        at a limit (the peer's own at its per-peer limit; the longest waiting overall at the
        global one); False when none can go."""
        if self._closing:
            return False
        with self._lock:
            at_peer = self._per_peer[peer] >= self.config.max_connections_per_peer
            at_all = len(self._open) >= self.config.max_connections
        if not (at_peer or at_all):
            return True
        victim = next((c for c in self._waiting if c.evictable_at <= now and (not at_peer or c.peer == peer)),
                      None)
        if victim is None:
            return False
        self.stats.close("evicted")
        self._close(victim)
        return True

    def _wait_for_request(self, conn: _Conn) -> None:
        assert self._selector is not None
        self._waiting[conn] = None
        self._selector.register(conn.sock, selectors.EVENT_READ, conn)

    def _readable(self, conn: _Conn) -> None:
        """Handshake progress, or request bytes: the request goes to a thread once its headers
        are complete."""
        if conn.handshaking:
            try:
                conn.sock.do_handshake()  # type: ignore[attr-defined]
            except ssl.SSLWantReadError:
                return
            except ssl.SSLWantWriteError:
                self._watch(conn, selectors.EVENT_WRITE)
                return
            except (ssl.SSLError, OSError) as e:
                log.debug("OTLP/HTTP TLS handshake with %s failed: %r", conn.peer, e)
                self._close(conn)
                return
            conn.handshaking = False
            self._watch(conn, selectors.EVENT_READ)
        while True:
            try:
                data = conn.sock.recv(65536)
            except (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            except OSError:
                self._close(conn)
                return
            if not data:
                self._close(conn)
                return
            if conn.kept and not conn.buf:  # a kept-alive connection's next request begins
                conn.deadline = time.monotonic() + self.config.header_timeout_seconds
                conn.reason = "header_timeout"
            conn.buf += data
            if not (isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending()):
                break
        if _head_complete(conn.buf):
            self._dispatch(conn)
        elif len(conn.buf) > _HEAD_MAX:
            self._answer_and_close(conn, 431, "request line and headers exceed 64 KiB")

    def _watch(self, conn: _Conn, events: int) -> None:
        assert self._selector is not None
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.modify(conn.sock, events, conn)

    def _dispatch(self, conn: _Conn) -> None:
        assert self._selector is not None and self._pool is not None
        self._waiting.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(conn.sock)
        conn.busy = True
        try:
            self._pool.submit(self._request, conn)
        except RuntimeError:  # the pool is shut down: stopping
            self._close(conn)

    def _back(self, conn: _Conn) -> None:
        """A kept-alive connection back from its request thread: wait for its next request."""
        conn.busy = False
        now = time.monotonic()
        conn.kept = True
        conn.deadline = now + self.config.idle_timeout_seconds
        conn.reason = "idle_timeout"
        conn.evictable_at = now  # an idle keep-alive connection can go at once: its client reconnects
        try:
            conn.sock.setblocking(False)
            self._wait_for_request(conn)
        except (OSError, ValueError, KeyError):
            self._close(conn)
            return
        if conn.buf:  # pipelined, or its next request began before the answer was taken
            conn.deadline = now + self.config.header_timeout_seconds
            conn.reason = "header_timeout"
            if _head_complete(conn.buf):
                self._dispatch(conn)
                return
        if isinstance(conn.sock, ssl.SSLSocket) and conn.sock.pending():
            self._readable(conn)

    def _sweep(self, now: float) -> None:
        """Close the waiting connections past their deadline (headers too slow, or idle)."""
        late = [c for c in self._waiting if c.deadline <= now]
        for conn in late:
            self.stats.close(conn.reason)
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        """Close ``conn`` (selector thread for a waiting connection; its request thread for a
        busy one)."""
        if not conn.busy:
            self._waiting.pop(conn, None)
            if self._selector is not None:
                with contextlib.suppress(KeyError, ValueError, OSError):
                    self._selector.unregister(conn.sock)
        with contextlib.suppress(OSError):
            conn.sock.close()
        with self._lock:
            if conn in self._open:
                self._open.discard(conn)
                left = self._per_peer[conn.peer] - 1
                if left > 0:
                    self._per_peer[conn.peer] = left
                else:
                    del self._per_peer[conn.peer]

    def _answer_and_close(self, conn: _Conn, status: int, message: str) -> None:
        body, ctype = _status_body(None, status, message)
        head = (f"HTTP/1.1 {status} {_PHRASES.get(status, 'Error')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):
            conn.sock.send(head.encode("ascii") + body)
        self._close(conn)

    def _refuse_connection(self, sock: socket.socket) -> None:
        """At a connection limit with nothing to close (or stopping): 503 + Retry-After, then
        close, never blocking the selector thread. A TLS connection is closed without an answer
        (its handshake has not happened)."""
        try:
            if not isinstance(sock, ssl.SSLSocket):
                body, ctype = _status_body(None, 503, "relay has too many OTLP/HTTP connections, retry later")
                retry = _retry_after_header(self._retry_after)
                head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: {ctype}\r\n"
                        f"Content-Length: {len(body)}\r\nRetry-After: {retry}\r\nConnection: close\r\n\r\n")
                sock.send(head.encode("ascii") + body)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sock.close()

    # -- a request thread -----------------------------------------------------------------------
    def _request(self, conn: _Conn) -> None:
        """Requests whose headers are complete: body, admission, answer; the next one too when
        it follows within :data:`LINGER_SECONDS` (a client sending back to back keeps its
        thread); then the connection goes back to the selector thread, or is closed."""
        keep = False
        try:
            conn.sock.setblocking(True)
            body_timeout = self.config.body_timeout_seconds
            while True:
                conn.reader = _Reader(conn.sock, conn.buf, time.monotonic() + body_timeout)
                conn.writer = _Writer(conn.sock)
                conn.buf = bytearray()
                handler = _Handler(conn, conn.addr, self._server)  # type: ignore[arg-type]
                keep = not handler.close_connection and not self._closing
                conn.buf = conn.reader.rest()
                if not (keep and self._next_request(conn)):
                    break
        except Exception as e:  # a peer that went away mid-request: nothing to answer
            keep = False
            log.debug("OTLP/HTTP connection from %s ended: %r", conn.peer, e)
        finally:
            conn.reader = conn.writer = None
        with self._lock:
            keep = keep and not self._closing and not self._loop_done
            if keep:
                self._returns.append(conn)
        if keep:
            self._wake()
        else:
            self._close(conn)

    @staticmethod
    def _next_request(conn: _Conn) -> bool:
        """Whether the connection's next request has complete headers now or within
        :data:`LINGER_SECONDS` (read into ``conn.buf``); False: back to the selector thread with
        what came so far (its header deadline starts there). Raises when the peer is gone."""
        deadline = time.monotonic() + LINGER_SECONDS
        while not _head_complete(conn.buf):
            left = deadline - time.monotonic()
            if left <= 0 or len(conn.buf) > _HEAD_MAX:
                return False
            conn.sock.settimeout(left)
            try:
                data = conn.sock.recv(65536)
            except TimeoutError:
                return False
            if not data:
                raise ConnectionError("closed by the peer")
            conn.buf += data
        return True

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
                try:
                    self._slots.acquire(_fairness_key(h), len(body))
                except NoTurn:
                    raise _Reply(503, "relay is busy, retry later", retry_after=self._retry_after) from None
                try:
                    self._admit(h, signal, encoding, gzipped, body)
                finally:
                    self._slots.release(_fairness_key(h))
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
            if isinstance(e, TimeoutError):
                self.stats.close("body_timeout")
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
