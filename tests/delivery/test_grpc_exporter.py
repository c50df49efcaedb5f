"""Relay → collector over OTLP/gRPC: the same retry table, RetryInfo read, partial success."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from promptstamp_relay.export.otlp_grpc import OtlpGrpcExporter

from .collector import Abort, Answer, FakeCollector


def _partial() -> bytes:
    r = ExportTraceServiceResponse()
    r.partial_success.rejected_spans = 3
    r.partial_success.error_message = "3 spans dropped"
    return r.SerializeToString()


def _answer(code: grpc.StatusCode, retry_after: float | None = None) -> Answer:
    def handler(data: bytes) -> bytes:
        raise Abort(code, f"told to answer {code.name}", retry_after)
    return handler


@pytest.mark.parametrize(("handler", "outcome", "hint", "rejected"), [
    (_answer(grpc.StatusCode.UNAVAILABLE), "retry", None, 0),
    (_answer(grpc.StatusCode.UNAVAILABLE, 0.25), "retry", 0.25, 0),
    (_answer(grpc.StatusCode.RESOURCE_EXHAUSTED, 0.5), "retry", 0.5, 0),
    (_answer(grpc.StatusCode.RESOURCE_EXHAUSTED), "permanent", None, 0),
    (_answer(grpc.StatusCode.DEADLINE_EXCEEDED), "retry", None, 0),
    (_answer(grpc.StatusCode.INVALID_ARGUMENT), "permanent", None, 0),
    (_answer(grpc.StatusCode.UNAUTHENTICATED), "permanent", None, 0),
    (lambda data: _partial(), "ok", None, 3),
])
def test_classification(handler: Answer, outcome: str, hint: float | None, rejected: int) -> None:
    collector = FakeCollector(handler)
    exporter = OtlpGrpcExporter(collector.address, timeout=5)
    try:
        result = exporter.export(b"")
        assert (result.outcome, result.retry_after, result.rejected) == (outcome, hint, rejected)
        if outcome != "ok":
            assert collector.address in result.message and "told to answer" in result.message
    finally:
        exporter.shutdown()
        collector.stop()


def test_collector_down_is_retryable() -> None:
    exporter = OtlpGrpcExporter("127.0.0.1:1", timeout=1)
    try:
        assert exporter.export(b"").outcome == "retry"
    finally:
        exporter.shutdown()
