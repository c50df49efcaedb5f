"""OTLP/gRPC receivers: raw bytes in, precise gRPC statuses out."""

from .grpc_server import CallInfo, LogsHandler, OtlpGrpcReceiver, Refusal, TracesHandler

__all__ = ["CallInfo", "LogsHandler", "OtlpGrpcReceiver", "Refusal", "TracesHandler"]
