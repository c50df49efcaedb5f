"""OTLP/JSON lines (contract §5): the format of recordings, replay output and the file exporter.

One ``ExportTraceServiceRequest`` or ``ExportLogsServiceRequest`` per line, as the Collector's
``file`` exporter writes it: camelCase fields, enums as integers, 64-bit ints as strings, trace
and span ids in hex.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterator
from typing import Any, TextIO

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["OtlpJsonError", "Request", "decode_line", "encode_line", "read_lines"]

Request = ExportTraceServiceRequest | ExportLogsServiceRequest

_ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}


class OtlpJsonError(ValueError):
    """A line that is not one OTLP/JSON request; the message says what is wrong."""


def _ids(d: dict[str, Any], convert: Any) -> None:
    for name in _ID_LENGTHS:
        if name in d and d[name] != "":
            d[name] = convert(name, d[name])


def _walk_ids(doc: dict[str, Any], convert: Any) -> None:
    for rs in doc.get("resourceSpans", ()):
        for ss in rs.get("scopeSpans", ()):
            for span in ss.get("spans", ()):
                _ids(span, convert)
                for link in span.get("links", ()):
                    _ids(link, convert)
    for rl in doc.get("resourceLogs", ()):
        for sl in rl.get("scopeLogs", ()):
            for rec in sl.get("logRecords", ()):
                _ids(rec, convert)


def _b64_to_hex(_name: str, value: str) -> str:
    return base64.b64decode(value).hex()


def _hex_to_b64(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OtlpJsonError(f"{name} must be a hex string, got {type(value).__name__}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise OtlpJsonError(f"{name} is not hex: {value[:40]!r}") from None
    if len(raw) != _ID_LENGTHS[name]:
        raise OtlpJsonError(f"{name} must be {_ID_LENGTHS[name]} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode()


def encode_line(request: Request) -> str:
    """One JSON line (no newline). Deterministic: same message, same text."""
    doc = json_format.MessageToDict(request, use_integers_for_enums=True)
    _walk_ids(doc, _b64_to_hex)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


def decode_line(line: str) -> Request:
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise OtlpJsonError(f"not JSON: {e.msg} at column {e.colno}") from None
    if not isinstance(doc, dict):
        raise OtlpJsonError("expected a JSON object with resourceSpans or resourceLogs")
    message: Request
    if "resourceSpans" in doc:
        message = ExportTraceServiceRequest()
    elif "resourceLogs" in doc:
        message = ExportLogsServiceRequest()
    else:
        raise OtlpJsonError("expected a JSON object with resourceSpans or resourceLogs")
    try:
        _walk_ids(doc, _hex_to_b64)
        json_format.ParseDict(doc, message)
    except OtlpJsonError:
        raise
    except (json_format.ParseError, AttributeError, TypeError, binascii.Error) as e:
        raise OtlpJsonError(f"not OTLP/JSON: {e}") from None
    return message


def read_lines(stream: TextIO) -> Iterator[tuple[int, Request]]:
    """``(line number, request)`` for every non-blank line; raises :class:`OtlpJsonError`
    with the line number on the first bad one."""
    for n, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield n, decode_line(line)
        except OtlpJsonError as e:
            raise OtlpJsonError(f"line {n}: {e}") from None
