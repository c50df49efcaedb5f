"""OTLP/gRPC to another collector: encoded requests go out as they are, no re-encoding.

``endpoint`` as the OTel exporters take it: ``host:port`` (``insecure`` decides TLS), or
``http://host:port`` (plain) / ``https://host:port`` (TLS). Called from delivery worker threads;
UNAVAILABLE (refused, unreachable) is a retry and a rate-limited WARNING naming the endpoint.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import grpc

from ._base import OK, ExportResult
from .endpoints import grpc_target
from .langfuse import ConnectionWarnings
from .retry import grpc_retryable

__all__ = ["OtlpGrpcExporter", "partial_success", "retry_info_seconds"]

_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


def retry_info_seconds(metadata: Iterable[tuple[str, Any]] | None) -> float | None:
    """RetryInfo from ``grpc-status-details-bin`` or the ``google.rpc.retryinfo-bin`` trailer."""
    from google.rpc import error_details_pb2, status_pb2

    for key, value in metadata or ():
        try:
            if key == "google.rpc.retryinfo-bin":
                info = error_details_pb2.RetryInfo.FromString(value)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
            if key == "grpc-status-details-bin":
                status = status_pb2.Status.FromString(value)
                for detail in status.details:
                    if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                        info = error_details_pb2.RetryInfo()
                        detail.Unpack(info)
                        return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
        except Exception:
            continue
    return None


class OtlpGrpcExporter:
    signal: str

    def __init__(
        self,
        endpoint: str,
        *,
        signal: str = "traces",
        insecure: bool = True,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
        compression: str = "gzip",
    ) -> None:
        self.signal = signal
        target = grpc_target(endpoint, insecure)
        self.endpoint = ("https://" if target.tls else "http://") + target.target
        self._channel = (
            grpc.secure_channel(target.target, grpc.ssl_channel_credentials())
            if target.tls
            else grpc.insecure_channel(target.target)
        )
        self._warnings = ConnectionWarnings()
        # No serializers: the payload is already an encoded request.
        self._call = self._channel.unary_unary(_METHODS[signal])
        self._metadata = tuple((k.lower(), v) for k, v in (headers or {}).items())
        self._timeout = timeout
        self._compression = grpc.Compression.Gzip if compression == "gzip" else grpc.Compression.NoCompression

    def export(self, payload: bytes) -> ExportResult:
        try:
            response = self._call(
                payload, timeout=self._timeout, metadata=self._metadata, compression=self._compression
            )
        except grpc.RpcError as e:
            code = e.code()
            message = f"gRPC {code.name} from {self.endpoint}: {e.details()}"
            hint = retry_info_seconds(e.trailing_metadata())
            if code == grpc.StatusCode.UNAVAILABLE and hint is None:  # not the upstream's backpressure
                self._warnings.failed(message)
            if grpc_retryable(code, hint is not None):
                return ExportResult("retry", message, hint)
            return ExportResult("permanent", message)
        except ValueError as e:  # the channel was closed under us (shutdown)
            return ExportResult("retry", f"gRPC channel to {self.endpoint}: {e}")
        return partial_success(self.signal, response)

    def shutdown(self) -> None:
        self._channel.close()


def partial_success(signal: str, body: bytes | None) -> ExportResult:
    """OTLP partial success in an Export response: logged and counted by the queue, never retried."""
    if not body:
        return OK
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceResponse
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    try:
        if signal == "logs":
            lps = ExportLogsServiceResponse.FromString(body).partial_success
            rejected, message = int(lps.rejected_log_records), lps.error_message
        elif signal == "metrics":
            mps = ExportMetricsServiceResponse.FromString(body).partial_success
            rejected, message = int(mps.rejected_data_points), mps.error_message
        else:
            tps = ExportTraceServiceResponse.FromString(body).partial_success
            rejected, message = int(tps.rejected_spans), tps.error_message
    except Exception:  # an OK with an odd body is still accepted
        return OK
    if rejected or message:
        return ExportResult("ok", message, rejected=rejected)
    return OK
