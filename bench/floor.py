"""The floor: a bare Python gRPC OTLP server that parses and re-serializes each request (upb).

Same grpcio server set-up as the relay's receiver (thread pool of 4, raw-bytes handlers for
``TraceService/Export`` and ``LogsService/Export``), and nothing else: no stamping, no queue, no
export. Whatever a Python relay does, it cannot cost less than this per request.

Run: ``python -m bench.floor [--listen 127.0.0.1:0]``; prints ``floor listening on HOST:PORT``.
"""

from __future__ import annotations

import argparse
import signal
import threading
from concurrent import futures

import grpc
from google.protobuf.internal import api_implementation
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

TRACE_SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
LOGS_SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


def _traces(data: bytes, context: grpc.ServicerContext) -> bytes:
    req = ExportTraceServiceRequest()
    req.ParseFromString(data)
    req.SerializeToString()
    return b""


def _logs(data: bytes, context: grpc.ServicerContext) -> bytes:
    req = ExportLogsServiceRequest()
    req.ParseFromString(data)
    req.SerializeToString()
    return b""


def _null(data: bytes, context: grpc.ServicerContext) -> bytes:
    return b""


def serve(listen: str, threads: int = 4, null: bool = False) -> tuple[grpc.Server, int]:
    """``null``: answer without parsing (what gRPC alone costs per request, for profiling)."""
    traces, logs = (_null, _null) if null else (_traces, _logs)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=threads),
        options=[("grpc.max_receive_message_length", 64 * 1024 * 1024), ("grpc.so_reuseport", 0)],
    )
    server.add_generic_rpc_handlers((
        grpc.method_handlers_generic_handler(
            TRACE_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(traces)}),
        grpc.method_handlers_generic_handler(
            LOGS_SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(logs)}),
    ))
    port = server.add_insecure_port(listen)
    server.start()
    return server, port


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--listen", default="127.0.0.1:0")
    p.add_argument("--null", action="store_true", help="answer without parsing (gRPC cost only)")
    args = p.parse_args()
    if api_implementation.Type() != "upb":
        raise SystemExit(f"protobuf backend is {api_implementation.Type()!r}, not upb")
    server, port = serve(args.listen, null=args.null)
    print(f"floor listening on {args.listen.rpartition(':')[0]}:{port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    server.stop(0.5).wait()


if __name__ == "__main__":
    main()
