"""A programmable OTLP/gRPC collector on loopback, for the relay's gRPC exporter tests.

``answer(request bytes)`` returns the response bytes, or raises :class:`Abort` with any gRPC
status (and RetryInfo when ``retry_after`` is given) — codes the relay's own receiver never
sends, which is why this is not the relay's receiver.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent import futures

import grpc

from promptstamp_relay.receive.grpc import LOGS_SERVICE, TRACE_SERVICE, retry_info_trailers


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code, self.message, self.retry_after = code, message, retry_after


Answer = Callable[[bytes], bytes]


class FakeCollector:
    """Trace and logs ``Export`` on 127.0.0.1, port 0; a context manager (stopped on exit)."""

    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))

        def export(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                return self._answer(request)
            except Abort as a:
                if a.retry_after is not None:
                    context.set_trailing_metadata(retry_info_trailers(a.code, a.message, a.retry_after))
                context.abort(a.code, a.message)
            raise AssertionError("unreachable")

        handler = grpc.unary_unary_rpc_method_handler(export)
        self._server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(service, {"Export": handler})
            for service in (TRACE_SERVICE, LOGS_SERVICE)
        ))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{self.port}"
        self._server.start()

    def stop(self) -> None:
        self._server.stop(0).wait()

    def __enter__(self) -> FakeCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
