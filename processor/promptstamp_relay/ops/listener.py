"""The relay's small HTTP listener (``metrics_listen``): ``/metrics`` and whatever else the
components register with :meth:`MetricsListener.route` (``/healthz``, ``/readyz``, APIs).

Threads: one accept thread, one thread per connection; handlers run on those threads and must
be thread-safe. Binds in :meth:`MetricsListener.start`; :meth:`stop` is safe in any state.
"""

from __future__ import annotations

import logging
import socket
import threading
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from .. import hostport
from ..errors import MetricsListenError

__all__ = ["HttpRequest", "HttpResponse", "MetricsListener", "RouteHandler"]

log = logging.getLogger("promptstamp_relay.ops.listener")

#: Request bodies larger than this are refused with 413 before they are read.
MAX_BODY_BYTES = 1024 * 1024


@dataclass(frozen=True)
class HttpRequest:
    method: str  # upper case
    path: str  # without the query string, percent-decoded
    query: Mapping[str, list[str]]  # urllib.parse.parse_qs of the query string
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    peer: str  # "127.0.0.1:5555"


@dataclass(frozen=True)
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


RouteHandler = Callable[[HttpRequest], HttpResponse]


class MetricsListener:
    """An HTTP/1.1 server on ``listen`` (``host:port``; port 0 picks one)."""

    def __init__(self, listen: str, registry: CollectorRegistry | None = None, *,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._host, self._port = hostport.parse(listen)
        self._max_body = max_body_bytes
        self._routes: dict[tuple[str, str], RouteHandler] = {}
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        if registry is not None:
            def metrics(_req: HttpRequest, reg: CollectorRegistry = registry) -> HttpResponse:
                return HttpResponse(200, generate_latest(reg), CONTENT_TYPE_LATEST)
            self.route("GET", "/metrics", metrics)

    def route(self, method: str, path_prefix: str, handler: RouteHandler) -> None:
        """Answer ``method`` requests for ``path_prefix`` and the paths below it
        (``/api/v1/prompts`` also takes ``/api/v1/prompts/x``); the longest prefix wins.
        May be called before or after :meth:`start`."""
        prefix = "/" + path_prefix.strip("/")
        with self._lock:
            self._routes[(method.upper(), prefix)] = handler

    def _find(self, method: str, path: str) -> tuple[RouteHandler | None, bool]:
        """(handler, whether the path is known under another method)."""
        with self._lock:
            routes = dict(self._routes)
        best: tuple[int, RouteHandler] | None = None
        other_method = False
        for (m, prefix), handler in routes.items():
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                if m != method:
                    other_method = True
                elif best is None or len(prefix) > best[0]:
                    best = (len(prefix), handler)
        return (best[1] if best else None), other_method

    # -- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind and serve in a background thread; OSError when the address cannot be bound."""
        listener = self

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in listener._host else socket.AF_INET

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                listener._handle(self)

            def do_POST(self) -> None:
                listener._handle(self)

            def do_PUT(self) -> None:
                listener._handle(self)

            def do_DELETE(self) -> None:
                listener._handle(self)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s " + format, self.address_string(), *args)

        try:
            self._server = Server((self._host, self._port), Handler)
        except OSError as e:
            raise MetricsListenError(f"{self._host}:{self._port}", "metrics", str(e.strerror or e),
                                     "set --metrics-listen to a free port") from None
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-listener",
                                        kwargs={"poll_interval": 0.2}, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket. Idempotent; fine before :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # -- one request ----------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        url = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(url.path) or "/"
        handler, other_method = self._find(h.command, path)
        length = int(h.headers.get("Content-Length") or 0)
        if length > self._max_body:
            self._send(h, HttpResponse(413, b"request body too large\n"), close=True)
            return
        body = h.rfile.read(length) if length > 0 else b""
        if handler is None:
            self._send(h, HttpResponse(405, b"method not allowed\n") if other_method
                       else HttpResponse(404, b"not found\n"))
            return
        request = HttpRequest(
            method=h.command, path=path, query=urllib.parse.parse_qs(url.query),
            headers={k.lower(): v for k, v in h.headers.items()}, body=body,
            peer=f"{h.client_address[0]}:{h.client_address[1]}",
        )
        try:
            response = handler(request)
        except Exception:
            log.exception("handler for %s %s failed", h.command, path)
            response = HttpResponse(500, b"internal error\n")
        self._send(h, response)

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, r: HttpResponse, *, close: bool = False) -> None:
        h.send_response(r.status)
        h.send_header("Content-Type", r.content_type)
        h.send_header("Content-Length", str(len(r.body)))
        for k, v in r.headers.items():
            h.send_header(k, v)
        if close:
            h.send_header("Connection", "close")
            h.close_connection = True
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(r.body)
