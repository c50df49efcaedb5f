"""The OTLP/gRPC receiver: ``TraceService``, ``LogsService`` and ``MetricsService`` ``Export``
on raw bytes, plus the standard ``grpc.health.v1`` service.

Handlers take the request bytes themselves (grpcio would answer a request it cannot parse with
INTERNAL) and pass them to admission (``admission/``); a :class:`~promptstamp_relay.admission.Refusal`
becomes a precise status: INVALID_ARGUMENT, RESOURCE_EXHAUSTED, UNAUTHENTICATED, or UNAVAILABLE
with RetryInfo in the status details (Go clients) and in the ``google.rpc.retryinfo-bin``
trailer (Python clients). grpcio's own ``maximum_concurrent_rpcs`` is never used: its bare
RESOURCE_EXHAUSTED makes clients drop data.

Bounds (``receivers.grpc``, :func:`server_options`): streams per connection, connections at
once, a handshake deadline, idle connections closed, keepalive pings both ways (the server's to
find dead peers, and enforcement of the clients'). An idle connection costs grpcio's event
engine a socket and its buffers, no thread. Handler threads outnumber admission's turns
(``admission.concurrency``) so that requests wait for their turn in admission, where tenants
take turns, rather than in grpcio's own FIFO.

Threads: ``threads`` handler threads call admission concurrently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent import futures

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..admission import Admitter, CallInfo, Refusal, RefusalReason
from ..errors import ReceiverListenError
from .settings import GrpcReceiverConfig

__all__ = [
    "LOGS_SERVICE",
    "METRICS_SERVICE",
    "STATUS_CODES",
    "TRACE_SERVICE",
    "OtlpGrpcReceiver",
    "retry_info_trailers",
    "server_options",
]

log = logging.getLogger("promptstamp_relay.receive")

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"
METRICS_SERVICE = "opentelemetry.proto.collector.metrics.v1.MetricsService"

#: Admission's refusal reasons as gRPC status codes.
STATUS_CODES: dict[RefusalReason, grpc.StatusCode] = {
    "unauthenticated": grpc.StatusCode.UNAUTHENTICATED,
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "too_large": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "backpressure": grpc.StatusCode.UNAVAILABLE,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
}


def retry_info_trailers(code: grpc.StatusCode, message: str, retry_after: float) -> list[tuple[str, bytes]]:
    """Trailing metadata carrying RetryInfo both ways clients read it."""
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


def server_options(config: GrpcReceiverConfig, max_message_bytes: int) -> list[tuple[str, int]]:
    """The grpcio server options for ``receivers.grpc`` (each one a bound a client cannot
    stretch)."""

    def ms(seconds: float) -> int:
        return max(1, int(seconds * 1000))

    return [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.so_reuseport", 0),
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", config.max_connections),
        ("grpc.server_handshake_timeout_ms", ms(config.handshake_timeout_seconds)),
        ("grpc.max_connection_idle_ms", ms(config.max_connection_idle_seconds)),
        ("grpc.keepalive_time_ms", ms(config.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(config.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", ms(config.min_ping_interval_seconds)),
        ("grpc.http2.max_ping_strikes", 2),
    ]


class OtlpGrpcReceiver:
    """Owns the grpc.Server; admission owns the meaning. Binds in :meth:`start`;
    :meth:`stop` is safe in any state."""

    def __init__(
        self,
        listen: str,
        admission: Admitter,
        *,
        max_message_bytes: int = 64 * 1024 * 1024,
        threads: int = 4,
        credentials: grpc.ServerCredentials | None = None,
        config: GrpcReceiverConfig | None = None,
    ) -> None:
        self._listen = listen
        self._credentials = credentials
        self.options = server_options(config or GrpcReceiverConfig(), max_message_bytes)
        self.threads = threads
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="otlp-recv"),
            options=self.options,
        )
        self._server.add_generic_rpc_handlers(tuple(
            grpc.method_handlers_generic_handler(
                service, {"Export": grpc.unary_unary_rpc_method_handler(self._wrap(handler))}
            )
            for service, handler in (
                (TRACE_SERVICE, admission.traces),
                (LOGS_SERVICE, admission.logs),
                (METRICS_SERVICE, admission.metrics),
            )
        ))
        self._health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        self.set_serving(False)
        self.port = 0
        self._started = False

    @property
    def address(self) -> str:
        """``host:port`` actually bound (after :meth:`start`)."""
        return f"{self._listen.rpartition(':')[0]}:{self.port}"

    def set_serving(self, serving: bool) -> None:
        """The health status of ``""`` and of the three OTLP services."""
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for service in ("", TRACE_SERVICE, LOGS_SERVICE, METRICS_SERVICE):
            self._health.set(service, status)

    @staticmethod
    def _wrap(handler: Callable[[bytes, CallInfo], None]) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            info = CallInfo({k: v for k, v in context.invocation_metadata() if isinstance(v, str)},
                            context.peer(), "grpc")
            try:
                handler(request, info)
                return b""  # an empty Export*ServiceResponse: full success
            except Refusal as r:
                code = STATUS_CODES[r.reason]
                if r.retry_after is not None and code == grpc.StatusCode.UNAVAILABLE:
                    context.set_trailing_metadata(retry_info_trailers(code, r.message, r.retry_after))
                context.abort(code, r.message)
            except Exception:
                log.exception("receiver handler failed")
                context.abort(grpc.StatusCode.INTERNAL, "internal error in the relay")
            raise AssertionError("unreachable")

        return call

    def start(self) -> None:
        """Bind ``listen`` and serve; :class:`ReceiverListenError` when it cannot be bound."""
        try:
            if self._credentials is None:
                port = self._server.add_insecure_port(self._listen)
            else:
                port = self._server.add_secure_port(self._listen, self._credentials)
        except RuntimeError:  # grpcio's "Failed to bind": in use, or a host it cannot resolve
            port = 0
        if port == 0:
            raise ReceiverListenError(self._listen, "OTLP/gRPC", "address in use or not resolvable",
                                      "set --listen to a free port on an address of this machine")
        self.port = port
        self._server.start()
        self._started = True

    def stop(self, grace: float | None = None) -> None:
        """Stop serving (in-flight calls get ``grace`` seconds). Idempotent; fine before start."""
        self.set_serving(False)
        self._server.stop(grace).wait()
