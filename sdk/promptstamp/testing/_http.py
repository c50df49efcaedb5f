"""A small loopback HTTP server base: stdlib only, one daemon thread, port 0."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, TypeVar

_S = TypeVar("_S", bound="LoopbackServer")


class Request:
    """One HTTP request as the handler saw it (body already read)."""

    def __init__(self, handler: _Handler, body: bytes) -> None:
        self.handler = handler
        self.method: str = handler.command
        self.raw_path: str = handler.path
        self.headers: dict[str, str] = {k.lower(): v for k, v in handler.headers.items()}
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Response:
    """What a route returns: status, body bytes and extra headers."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.content_type = content_type
        self.headers = dict(headers or {})

    @classmethod
    def json(cls, status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(payload).encode(), "application/json", headers)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: LoopbackServer, host: str = "127.0.0.1", port: int = 0) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so stop() leaves no idle keep-alive sockets behind.
    protocol_version = "HTTP/1.0"
    server: _HTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        request = Request(self, body)
        try:
            response = self.server.owner._handle(request)
        except Exception as exc:  # a bug in a fake must still answer, visibly
            response = Response.json(500, {"message": f"{type(exc).__name__}: {exc}"})
        if response is None:  # the route wrote the response itself (streaming)
            return
        try:
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(response.body)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(response.body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass

    do_GET = _handle
    do_POST = _handle
    do_PUT = _handle
    do_PATCH = _handle
    do_DELETE = _handle


class LoopbackServer:
    """Base: a ThreadingHTTPServer on 127.0.0.1, port 0, served by a daemon thread.

    A context manager (``__enter__`` starts, ``__exit__`` stops and joins); ``start()`` and
    ``stop()`` are idempotent.
    """

    def __init__(self) -> None:
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()
        self._stopping = threading.Event()

    # -- lifecycle -------------------------------------------------------------------------
    def start(self: _S, host: str = "127.0.0.1", port: int = 0) -> _S:
        """Serve on ``host:port`` (default: loopback, a free port); a no-op when started."""
        with self._state_lock:
            if self._httpd is None:
                self._stopping.clear()
                httpd = _HTTPServer(self, host, port)
                thread = threading.Thread(
                    target=httpd.serve_forever,
                    kwargs={"poll_interval": 0.05},
                    name=f"{type(self).__name__}-{httpd.server_address[1]}",
                    daemon=True,
                )
                thread.start()
                self._httpd, self._thread = httpd, thread
        return self

    def stop(self) -> None:
        with self._state_lock:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            if httpd is None:
                return
            self._stopping.set()  # wakes any injected delay
            httpd.shutdown()
            httpd.server_close()
            if thread is not None:
                thread.join(timeout=5.0)

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        httpd = self._httpd
        if httpd is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return int(httpd.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _sleep(self, seconds: float) -> None:
        """Sleep that ends early when the server stops."""
        self._stopping.wait(seconds)

    # -- routing ---------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response | None:
        raise NotImplementedError
