"""OTLP/JSON lines (contract §5): the format of recordings, replay output and the file exporter.

One ``ExportTraceServiceRequest``, ``ExportLogsServiceRequest`` or ``ExportMetricsServiceRequest``
per line, as the Collector's ``file`` exporter writes it: camelCase fields, enums as integers,
64-bit ints as strings, trace and span ids in hex. Readers ignore fields they do not know (the
OTLP/JSON rule for receivers), so a file from a newer tool still reads.

:func:`read_documents` also reads a pretty-printed document spread over several lines (the
examples published with opentelemetry-proto are written that way); errors name the line and
column of the file where the problem is. Pure text in, messages out: opening (and decompressing)
files is :mod:`.replay`'s business.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf import json_format
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = [
    "Document",
    "OtlpJsonError",
    "Request",
    "Signal",
    "decode_line",
    "encode_line",
    "parse_document",
    "read_documents",
    "read_lines",
]

Request = ExportTraceServiceRequest | ExportLogsServiceRequest
Signal = Literal["traces", "logs", "metrics"]

_ID_LENGTHS = {"traceId": 16, "spanId": 8, "parentSpanId": 8}
_EXPECTED = "expected a JSON object with resourceSpans, resourceLogs or resourceMetrics"


class OtlpJsonError(ValueError):
    """Input that is not OTLP/JSON; the message says what is wrong and where (line, column)."""


@dataclass(frozen=True, slots=True)
class Document:
    """One request read from a recording.

    ``request`` is ``None`` for ``metrics``: those are passed through as ``text``, unchanged.
    ``line`` is where the document starts (1-based). ``max_time_ns`` is its largest timestamp
    (span end times, log record times, metric point times): the replay clock and the merge of
    several files use it.
    """

    signal: Signal
    request: Request | None
    text: str
    line: int
    max_time_ns: int


def _ids(d: dict[str, Any], convert: Any) -> None:
    for name in _ID_LENGTHS:
        if name in d and d[name] != "":
            d[name] = convert(name, d[name])


def _walk_ids(doc: dict[str, Any], convert: Any) -> None:
    for rs in _list(doc.get("resourceSpans")):
        for ss in _list(_dict(rs).get("scopeSpans")):
            for span in _list(_dict(ss).get("spans")):
                if isinstance(span, dict):
                    _ids(span, convert)
                    for link in _list(span.get("links")):
                        if isinstance(link, dict):
                            _ids(link, convert)
    for rl in _list(doc.get("resourceLogs")):
        for sl in _list(_dict(rl).get("scopeLogs")):
            for rec in _list(_dict(sl).get("logRecords")):
                if isinstance(rec, dict):
                    _ids(rec, convert)


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


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


_FAILED_FIELD = re.compile(r"Failed to parse (\w+) field: ")


def _parse_error(e: Exception) -> str:
    """json_format's nested "Failed to parse a field: Failed to parse b field: why" as "a.b: why"."""
    text = str(e)
    path: list[str] = []
    while (m := _FAILED_FIELD.match(text)) is not None:
        path.append(m.group(1))
        text = text[m.end():]
    text = text.rstrip(".")
    return f"{'.'.join(path)}: {text}" if path else text


def _int(value: object) -> int:
    """An OTLP/JSON uint64 (a string, or a number from lenient writers); 0 when unreadable."""
    if isinstance(value, bool):
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    return 0


def _metrics_max_time(node: object) -> int:
    """The largest ``timeUnixNano`` anywhere in a metrics document (its data points)."""
    latest = 0
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for k, v in item.items():
                if k == "timeUnixNano":
                    latest = max(latest, _int(v))
                elif isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(item, list):
            stack.extend(x for x in item if isinstance(x, (dict, list)))
    return latest


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


def _from_object(doc: object, text: str, line: int) -> Document:
    if not isinstance(doc, dict):
        raise OtlpJsonError(_EXPECTED)
    if "resourceMetrics" in doc and "resourceSpans" not in doc and "resourceLogs" not in doc:
        return Document("metrics", None, text, line, _metrics_max_time(doc.get("resourceMetrics")))
    message: Request
    signal: Signal
    if "resourceSpans" in doc:
        message, signal = ExportTraceServiceRequest(), "traces"
    elif "resourceLogs" in doc:
        message, signal = ExportLogsServiceRequest(), "logs"
    else:
        raise OtlpJsonError(_EXPECTED)
    try:
        _walk_ids(doc, _hex_to_b64)
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except OtlpJsonError:
        raise
    except (json_format.ParseError, AttributeError, TypeError, ValueError, binascii.Error) as e:
        raise OtlpJsonError(f"not OTLP/JSON: {_parse_error(e)}") from None
    return Document(signal, message, text, line, _max_time(message))


def _located(doc: object, text: str, line: int) -> Document:
    try:
        return _from_object(doc, text, line)
    except OtlpJsonError as e:
        raise OtlpJsonError(f"line {line}: {e}") from None


def _json_error(e: json.JSONDecodeError, line: int) -> OtlpJsonError:
    return OtlpJsonError(f"line {line + e.lineno - 1}, column {e.colno}: not JSON: {e.msg}")


def parse_document(text: str, line: int = 1) -> Document:
    """One OTLP/JSON document (one line, or a pretty-printed object) as a :class:`Document`.

    Errors say ``line L, column C: ...``, lines counted from ``line``.
    """
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(e, line) from None
    return _located(doc, text, line)


def decode_line(line: str) -> Request:
    """One OTLP/JSON trace or logs request (no line numbers in errors)."""
    try:
        doc = json.loads(line)
    except json.JSONDecodeError as e:
        raise OtlpJsonError(f"not JSON: {e.msg} at column {e.colno}") from None
    got = _from_object(doc, line, 1)
    if got.request is None:
        raise OtlpJsonError("expected a JSON object with resourceSpans or resourceLogs")
    return got.request


def _incomplete(e: json.JSONDecodeError, text: str) -> bool:
    """The text ended inside a JSON value (the start of a multi-line document)."""
    return e.pos >= len(text.rstrip())


def _multi_line(text: str, start: int, *, at_end: bool) -> Document | None:
    """The pending pretty-printed document, or None while it is still incomplete."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        if not _incomplete(e, text):
            raise _json_error(e, start) from None
        if at_end:
            raise OtlpJsonError(f"line {start}: not JSON: the input ends inside the document "
                                "that starts here") from None
        return None
    # Output is one line per document: a pretty-printed one passed through is compacted.
    return _located(doc, json.dumps(doc, separators=(",", ":"), ensure_ascii=False), start)


def read_documents(lines: Iterable[str]) -> Iterator[Document]:
    """Every document of a recording, in order; blank lines skipped.

    A line is a document of its own (JSON lines, as the Collector writes). A line that ends
    inside a JSON object starts a pretty-printed document, which runs until it parses (tried
    at each line that starts with ``}``). Raises :class:`OtlpJsonError` naming the line (and
    column) of the first problem.
    """
    pending: list[str] = []
    start = 0
    for n, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r\n")
        if n == 1:
            line = line.removeprefix("\ufeff")  # the byte-order mark some Windows tools write
        if pending:
            if line.startswith("{"):
                # A new top-level document: the pending one was cut short (a crash mid-write).
                raise OtlpJsonError(f"line {start}: not JSON: the document that starts here "
                                    f"ends before it is complete (line {n} starts another)")
            pending.append(line)
            if line.startswith("}"):
                got = _multi_line("\n".join(pending), start, at_end=False)
                if got is not None:
                    pending = []
                    yield got
            continue
        if not line.strip():
            continue
        try:
            doc = json.loads(line)
        except json.JSONDecodeError as e:
            if _incomplete(e, line) and line.lstrip().startswith("{"):
                pending, start = [line], n
                continue
            raise _json_error(e, n) from None
        yield _located(doc, line, n)
    if pending:
        got = _multi_line("\n".join(pending), start, at_end=True)
        if got is not None:
            yield got


def read_lines(stream: Iterable[str]) -> Iterator[tuple[int, Request]]:
    """``(line number, request)`` for every trace and logs document (metrics are skipped)."""
    for doc in read_documents(stream):
        if doc.request is not None:
            yield doc.line, doc.request
