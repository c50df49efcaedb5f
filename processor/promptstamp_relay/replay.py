"""Replay a recording through the same processor as ``serve``, on a virtual clock (contract §5)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .otlpjson import Request
from .pipeline import Processor

__all__ = ["ReplaySummary", "replay_requests"]


def _max_time(request: Request) -> int:
    latest = 0
    if isinstance(request, ExportTraceServiceRequest):
        for rs in request.resource_spans:
            for ss in rs.scope_spans:
                for span in ss.spans:
                    latest = max(latest, span.end_time_unix_nano)
    else:
        for rl in request.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    latest = max(latest, rec.time_unix_nano or rec.observed_time_unix_nano)
    return latest


class ReplaySummary:
    def __init__(self) -> None:
        self.lines = 0
        self.trace_requests_out = 0
        self.invalid_fetch_records: list[tuple[int, str]] = []


def replay_requests(
    requests: Iterable[tuple[int, Request]],
    processor: Processor,
    emit: Callable[[ExportTraceServiceRequest], None],
) -> ReplaySummary:
    """Run ``(line number, request)`` pairs through ``processor`` in order.

    Per line: its fetch-log records are taken in first; then the clock advances to the largest
    timestamp seen so far and every held span whose window has passed is released; then the
    line's spans are processed. What is still held at the end is released then.
    """
    summary = ReplaySummary()
    clock = 0
    for n, request in requests:
        summary.lines += 1
        if isinstance(request, ExportLogsServiceRequest):
            result = processor.consume_logs(request, clock)
            summary.invalid_fetch_records.extend((n, why) for why in result.invalid)
            for out in result.released:
                emit(out.request)
        clock = max(clock, _max_time(request))
        for out in processor.release_due(clock):
            emit(out.request)
        if isinstance(request, ExportTraceServiceRequest):
            for out in processor.consume_traces(request, clock):
                emit(out.request)
    for out in processor.release_all():
        emit(out.request)
    return summary
