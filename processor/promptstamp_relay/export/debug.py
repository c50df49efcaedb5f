"""A concise human summary per stamped span on stdout: the default with no upstream."""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c

from ._base import OK, ExportResult

__all__ = ["DebugExporter", "summarize"]


def summarize(request: ExportTraceServiceRequest) -> list[str]:
    lines = []
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            for span in ss.spans:
                a = {kv.key: kv.value for kv in span.attributes}
                tier = a.get(c.LF_META_RESOLUTION)
                if tier is None:
                    continue
                name = a[c.LF_META_PROMPT_NAME].string_value
                label = a[c.LF_META_PROMPT_LABEL].string_value
                version = a.get(c.LF_PROMPT_VERSION)
                src = a.get(c.LF_META_SOURCE)
                lines.append(
                    f"trace={span.trace_id.hex()} span={span.span_id.hex()} {span.name!r} "
                    f"prompt={name} version={version.int_value if version else '-'} label={label} "
                    f"resolution={tier.string_value} source={src.string_value if src else '-'}"
                )
    return lines


class DebugExporter:
    signal = "traces"

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stdout
        self._lock = threading.Lock()

    def export(self, payload: bytes) -> ExportResult:
        req = ExportTraceServiceRequest()
        req.ParseFromString(payload)
        lines = summarize(req)
        if lines:
            with self._lock:
                self._stream.write("\n".join(lines) + "\n")
                self._stream.flush()
        return OK

    def shutdown(self) -> None:
        return None
