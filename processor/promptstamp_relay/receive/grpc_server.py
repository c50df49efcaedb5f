"""The OTLP/gRPC receiver: ``TraceService/Export`` and ``LogsService/Export`` on raw bytes.

Handlers take the request bytes themselves (grpcio would answer a request it cannot parse with
INTERNAL), so a malformed body gets INVALID_ARGUMENT, an oversized one RESOURCE_EXHAUSTED and a
full relay UNAVAILABLE with RetryInfo — in the status details (Go clients) and in the
``google.rpc.retryinfo-bin`` trailer (Python clients). grpcio's own ``maximum_concurrent_rpcs``
is never used: its bare RESOURCE_EXHAUSTED makes clients drop data.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

__all__ = ["CallInfo", "LogsHandler", "OtlpGrpcReceiver", "Refusal", "TracesHandler"]

log = logging.getLogger("promptstamp_relay.receive")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


class Refusal(Exception):
    """Raised by a handler to answer with a precise status. Never carries a credential."""

    def __init__(self, code: grpc.StatusCode, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


@dataclass(frozen=True)
class CallInfo:
    metadata: Mapping[str, str]
    peer: str


#: ``handler(request bytes, call info) -> response bytes`` (b"" is an empty OK response).
TracesHandler = Callable[[bytes, CallInfo], bytes]
LogsHandler = Callable[[bytes, CallInfo], bytes]


def _status_trailers(
    code: grpc.StatusCode, message: str, retry_after: float | None
) -> list[tuple[str, bytes]]:
    if retry_after is None:
        return []
    secs = int(retry_after)
    info = error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=secs, nanos=int((retry_after - secs) * 1e9))
    )
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=[detail])
    return [
        ("grpc-status-details-bin", status.SerializeToString()),
        ("google.rpc.retryinfo-bin", info.SerializeToString()),
    ]


class OtlpGrpcReceiver:
    """Owns the grpc.Server; the handlers own the meaning."""

    def __init__(
        self,
        listen: str,
        traces: TracesHandler,
        logs: LogsHandler,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        threads: int = 4,
        credentials: grpc.ServerCredentials | None = None,
        extra_services: Callable[[grpc.Server], None] | None = None,
    ) -> None:
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="otlp-recv"),
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.so_reuseport", 0),
            ],
        )
        self._server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._wrap(traces))}
                ),
                grpc.method_handlers_generic_handler(
                    LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(self._wrap(logs))}
                ),
            )
        )
        if extra_services is not None:
            extra_services(self._server)
        if credentials is None:
            self.port = self._server.add_insecure_port(listen)
        else:
            self.port = self._server.add_secure_port(listen, credentials)
        if self.port == 0:
            raise OSError(f"cannot listen on {listen}")
        host = listen.rpartition(":")[0]
        self.address = f"{host}:{self.port}"

    @staticmethod
    def _wrap(handler: Callable[[bytes, CallInfo], bytes]) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            info = CallInfo({k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
                            context.peer())
            try:
                return handler(request, info)
            except Refusal as r:
                trailers = _status_trailers(r.code, r.message, r.retry_after)
                if trailers:
                    context.set_trailing_metadata(trailers)
                context.abort(r.code, r.message)
            except Exception:
                log.exception("receiver handler failed")
                context.abort(grpc.StatusCode.INTERNAL, "internal error in the relay")
            raise AssertionError("unreachable")

        return call

    def start(self) -> None:
        self._server.start()

    def stop(self, grace: float | None = None) -> None:
        self._server.stop(grace).wait()
