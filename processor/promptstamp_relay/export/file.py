"""OTLP/JSON lines (contract §5) to a file: what ``--record`` and the ``file`` exporter write."""

from __future__ import annotations

import json
import threading
from typing import TextIO

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from ..otlpjson import Request, encode_line
from ..receive.otlp_json import ids_to_hex
from ._base import OK, ExportResult

__all__ = ["FileExporter", "JsonLinesWriter"]


class JsonLinesWriter:
    """Appends one request per line; thread-safe; flushes every line (a crash loses at most one)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._f: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        self._lock = threading.Lock()

    def write(self, request: Request) -> None:
        self.write_line(encode_line(request))

    def write_line(self, line: str) -> None:
        """One already encoded OTLP/JSON document (no newline in it)."""
        with self._lock:
            self._f.write(line + "\n")
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.close()


class FileExporter:
    def __init__(self, path: str, signal: str = "traces") -> None:
        self.signal = signal
        self._writer = JsonLinesWriter(path)

    def export(self, payload: bytes) -> ExportResult:
        if self.signal == "metrics":
            self._writer.write_line(metrics_line(payload))
            return OK
        msg: Request = ExportTraceServiceRequest() if self.signal == "traces" else ExportLogsServiceRequest()
        msg.ParseFromString(payload)
        self._writer.write(msg)
        return OK

    def shutdown(self) -> None:
        self._writer.close()


def metrics_line(payload: bytes) -> str:
    """An encoded ExportMetricsServiceRequest as one OTLP/JSON line (exemplar ids in hex)."""
    doc = json_format.MessageToDict(ExportMetricsServiceRequest.FromString(payload),
                                    use_integers_for_enums=True)
    return json.dumps(ids_to_hex("metrics", doc), separators=(",", ":"), ensure_ascii=False)
