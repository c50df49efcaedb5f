"""OTLP/JSON (contract §5): the one reader and writer of the relay's JSON.

Its users: recordings, replay output and the file exporter (JSON lines), and the OTLP/HTTP
receiver (``application/json`` request bodies of all three signals and its JSON answers).

The OTLP/JSON rules that differ from protobuf's canonical JSON mapping: trace and span ids are
hex strings (not base64); keys are lowerCamelCase (the proto field names are accepted too);
enums may be integers; 64-bit integers strings or numbers; unknown fields are ignored (the
receivers' rule, so a file or body from a newer tool still reads). Writing follows the
Collector's ``file`` exporter: one compact document per line, camelCase, enums as integers,
64-bit ints as strings, ids in hex.

:func:`read_documents` also reads a pretty-printed document spread over several lines (the
examples published with opentelemetry-proto are written that way); errors name the line and
column of the file where the problem is. Pure functions, text or bytes in, messages out (no
I/O): opening and decompressing files is :mod:`.replay`'s business. Called on replay's thread,
the HTTP receiver's request threads and delivery workers (the file exporter).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal, cast

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = [
    "REQUEST_TYPES",
    "Document",
    "OtlpJsonError",
    "Request",
    "Signal",
    "decode_line",
    "encode_line",
    "parse_document",
    "read_documents",
    "read_lines",
    "to_protobuf",
]

Request = ExportTraceServiceRequest | ExportLogsServiceRequest
Signal = Literal["traces", "logs", "metrics"]

REQUEST_TYPES: Mapping[Signal, type[Message]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_SIGNAL_OF: Mapping[type[Message], Signal] = {t: s for s, t in REQUEST_TYPES.items()}
# The top-level key that says which request a document is, in both spellings.
_ROOTS: dict[Signal, tuple[str, str]] = {
    "traces": ("resourceSpans", "resource_spans"),
    "logs": ("resourceLogs", "resource_logs"),
    "metrics": ("resourceMetrics", "resource_metrics"),
}
_ID_LENGTHS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8,
               "parentSpanId": 8, "parent_span_id": 8}
_METRIC_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram", "summary")
_EXPECTED = "expected a JSON object with resourceSpans, resourceLogs or resourceMetrics"


class OtlpJsonError(ValueError):
    """Input that is not OTLP/JSON; the message says what is wrong and where (line, column).

    The HTTP receiver sends it back as its 400 answer's ``Status.message``."""


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


# -- ids: the one place hex and base64 meet ---------------------------------------------------

def _items(node: Any, *keys: str) -> Iterator[dict[str, Any]]:
    """The dict elements of the list under the first of ``keys`` that ``node`` has."""
    if not isinstance(node, dict):
        return
    for key in keys:
        value = node.get(key)
        if isinstance(value, list):
            yield from (x for x in value if isinstance(x, dict))
            return


def _id_holders(signal: Signal, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object of an OTLP/JSON request that may carry trace / span ids."""
    if signal == "traces":
        for rs in _items(doc, *_ROOTS["traces"]):
            for ss in _items(rs, "scopeSpans", "scope_spans"):
                for span in _items(ss, "spans"):
                    yield span
                    yield from _items(span, "links")
    elif signal == "logs":
        for rl in _items(doc, *_ROOTS["logs"]):
            for sl in _items(rl, "scopeLogs", "scope_logs"):
                yield from _items(sl, "logRecords", "log_records")
    else:
        for rm in _items(doc, *_ROOTS["metrics"]):
            for sm in _items(rm, "scopeMetrics", "scope_metrics"):
                for metric in _items(sm, "metrics"):
                    for kind in _METRIC_KINDS:
                        for point in _items(metric.get(kind), "dataPoints", "data_points"):
                            yield from _items(point, "exemplars")


def _hex_to_b64(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OtlpJsonError(f"{name} must be a hex string, got {type(value).__name__}")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise OtlpJsonError(f"{name} is not hex") from None
    if len(raw) != _ID_LENGTHS[name]:
        raise OtlpJsonError(f"{name} must be {_ID_LENGTHS[name]} bytes, got {len(raw)} "
                            f"({2 * _ID_LENGTHS[name]} hex digits expected)")
    return base64.b64encode(raw).decode("ascii")


def _ids_from_hex(signal: Signal, doc: dict[str, Any]) -> None:
    for holder in _id_holders(signal, doc):
        for name in _ID_LENGTHS:
            value = holder.get(name)
            if value is not None and value != "":
                holder[name] = _hex_to_b64(name, value)


def _ids_to_hex(signal: Signal, doc: dict[str, Any]) -> None:
    for holder in _id_holders(signal, doc):
        for name in _ID_LENGTHS:
            value = holder.get(name)
            if isinstance(value, str) and value:
                holder[name] = base64.b64decode(value).hex()


# -- writing ----------------------------------------------------------------------------------

def encode_line(message: Message) -> str:
    """One compact JSON document (no newline); deterministic: same message, same text.

    Ids of the three ``Export*ServiceRequest`` messages are written in hex; any other message
    (an ``Export*ServiceResponse``, a ``google.rpc.Status``) is plain canonical JSON.
    """
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    signal = _SIGNAL_OF.get(type(message))
    if signal is not None:
        _ids_to_hex(signal, doc)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# -- parsing: one path for bodies, lines and documents ----------------------------------------

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


def _parse(signal: Signal, doc: object) -> Message:
    """A decoded JSON value as the signal's ``Export*ServiceRequest`` (``doc``'s ids are rewritten)."""
    if not isinstance(doc, dict):
        raise OtlpJsonError("an OTLP/JSON request is a JSON object")
    message = REQUEST_TYPES[signal]()
    try:
        _ids_from_hex(signal, doc)
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except OtlpJsonError:
        raise
    except RecursionError:
        raise OtlpJsonError("not OTLP/JSON: nested too deeply") from None
    except (json_format.ParseError, AttributeError, TypeError, ValueError, binascii.Error) as e:
        raise OtlpJsonError(f"not OTLP/JSON: {_parse_error(e)}") from None
    return message


def _json_error(e: json.JSONDecodeError, line: int) -> OtlpJsonError:
    return OtlpJsonError(f"line {line + e.lineno - 1}, column {e.colno}: not JSON: {e.msg}")


def _loads(text: str | bytes, line: int = 1) -> object:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _json_error(e, line) from None
    except UnicodeDecodeError:
        raise OtlpJsonError("not JSON: not UTF-8") from None
    except RecursionError:
        raise OtlpJsonError("not JSON: nested too deeply") from None


def to_protobuf(signal: Signal, body: bytes) -> bytes:
    """An OTLP/JSON request body (the HTTP receiver's) as protobuf bytes of the signal's request."""
    return bytes(_parse(signal, _loads(body)).SerializeToString())


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


def _signal(doc: dict[str, Any]) -> Signal | None:
    """Which request a recorded document is (traces and logs win over metrics, as before)."""
    order: tuple[Signal, ...] = ("traces", "logs", "metrics")
    for signal in order:
        if any(key in doc for key in _ROOTS[signal]):
            return signal
    return None


def _from_object(doc: object, text: str, line: int) -> Document:
    signal = _signal(doc) if isinstance(doc, dict) else None
    if signal is None:
        raise OtlpJsonError(_EXPECTED)
    if signal == "metrics":
        return Document("metrics", None, text, line, _metrics_max_time(doc))
    request = cast(Request, _parse(signal, doc))
    return Document(signal, request, text, line, _max_time(request))


def _located(doc: object, text: str, line: int) -> Document:
    try:
        return _from_object(doc, text, line)
    except OtlpJsonError as e:
        raise OtlpJsonError(f"line {line}: {e}") from None


def parse_document(text: str, line: int = 1) -> Document:
    """One OTLP/JSON document (one line, or a pretty-printed object) as a :class:`Document`.

    Errors say ``line L, column C: ...``, lines counted from ``line``.
    """
    return _located(_loads(text, line), text, line)


def decode_line(line: str) -> Request:
    """One OTLP/JSON trace or logs request."""
    got = _from_object(_loads(line), line, 1)
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
