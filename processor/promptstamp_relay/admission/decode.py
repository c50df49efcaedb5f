"""Per-request limits: decode an OTLP request and check it against ``limits.*``. Pure: bytes
and limits in, a request or a :class:`Violation` out. No I/O, no clock, no recursion.

Checked: spans (log records) per request; attributes, events and links per span (and per
event, link, log record, resource, scope); the UTF-8 length of keys, string and bytes values
and names; ``AnyValue`` nesting depth (log bodies included); span, link and log ids (Langfuse
rejects a whole batch with HTTP 400 for one malformed id); well-formed protobuf and UTF-8.
Messages name the limit and a count, never a value, a key or an id.

:func:`decode_traces` / :func:`decode_logs` are what admission (``admission/__init__.py``) uses; the depth
bound is the parser's own nesting limit, calibrated once per ``max_value_depth``, so ordinary
traffic costs a few length reads per span. :func:`check_request` is the same rules as an
all-Python walk over a request already decoded (tests). How and why, with measured costs:
docs/security.md, "Limits".
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, Literal

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .. import wire
from ..wire import encode_varint
from .settings import LimitsConfig

__all__ = [
    "Violation",
    "check_logs",
    "check_request",
    "check_traces",
    "decode_logs",
    "decode_traces",
]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_NESTED = frozenset({"array_value", "kvlist_value"})

Kind = Literal["too_large", "invalid"]


class Violation(Exception):
    """Why a request is refused. ``kind``: ``too_large`` (a size or count limit: gRPC
    RESOURCE_EXHAUSTED) or ``invalid`` (malformed, too deep, a bad id: INVALID_ARGUMENT)."""

    def __init__(self, kind: Kind, message: str) -> None:
        super().__init__(message)
        self.kind: Kind = kind
        self.message = message

    def __repr__(self) -> str:
        return f"Violation({self.kind!r}, {self.message!r})"


def _too_large(message: str) -> Violation:
    return Violation("too_large", message)


def _invalid(message: str) -> Violation:
    return Violation("invalid", message)


# --------------------------------------------------------------------------------------------
# The exact walk over attributes and values (explicit stack)
# --------------------------------------------------------------------------------------------
class _Walker:
    __slots__ = ("check_strings", "max_attrs", "max_bytes", "max_depth")

    def __init__(self, limits: LimitsConfig, check_strings: bool) -> None:
        self.max_attrs = limits.max_attributes_per_span
        self.max_bytes = limits.max_attribute_value_bytes
        self.max_depth = limits.max_value_depth
        self.check_strings = check_strings

    def too_long(self, s: str) -> bool:
        """UTF-8 length of ``s`` over the limit (encoded only when it might be)."""
        n = len(s)
        if n * 4 <= self.max_bytes:
            return False
        return n > self.max_bytes or len(s.encode("utf-8", "surrogatepass")) > self.max_bytes

    def attributes(self, attrs: Any, what: str, *, values: bool = True) -> None:
        """Check a ``repeated KeyValue``: its length, then (``values``) every key and value."""
        if len(attrs) > self.max_attrs:
            raise _too_large(f"a {what} has {len(attrs)} attributes, over "
                             f"limits.max_attributes_per_span ({self.max_attrs})")
        if values and attrs:
            self._walk([(kv.value, 1) for kv in attrs], what, [kv.key for kv in attrs])

    def value(self, v: Any, what: str) -> None:
        self._walk([(v, 1)], what, ())

    def name(self, s: str, what: str) -> None:
        if self.check_strings and self.too_long(s):
            raise _too_large(f"a {what} name is over limits.max_attribute_value_bytes "
                             f"({self.max_bytes} bytes)")

    def _walk(self, stack: list[tuple[Any, int]], what: str, keys: Iterable[str]) -> None:
        """Depth-first over values, iteratively. ``stack`` holds (AnyValue, its depth)."""
        check_strings = self.check_strings
        if check_strings:
            for k in keys:
                if self.too_long(k):
                    raise self._long(what)
        max_depth = self.max_depth
        while stack:
            v, depth = stack.pop()
            w = v.WhichOneof("value")
            if w is None:
                continue
            if w not in _NESTED:
                if check_strings and self._scalar_too_long(v, w):
                    raise self._long(what)
                continue
            if depth >= max_depth:
                raise _invalid(f"a {what} has a value nested deeper than limits.max_value_depth "
                               f"({max_depth})")
            if w == "array_value":
                stack.extend((child, depth + 1) for child in v.array_value.values)
            else:
                kvs = v.kvlist_value.values
                if check_strings:
                    for kv in kvs:
                        if self.too_long(kv.key):
                            raise self._long(what)
                stack.extend((kv.value, depth + 1) for kv in kvs)

    def _scalar_too_long(self, v: Any, w: str) -> bool:
        if w == "string_value":
            return self.too_long(v.string_value)
        if w == "bytes_value":
            return len(v.bytes_value) > self.max_bytes
        return False

    def _long(self, what: str) -> Violation:
        return _too_large(f"a {what} has an attribute key or value over "
                          f"limits.max_attribute_value_bytes ({self.max_bytes} bytes)")


# --------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------
def _check_span_ids(span: Any) -> None:
    trace_id = span.trace_id
    if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
        raise _invalid(f"a span has an invalid trace_id ({len(trace_id)} bytes; must be 16, "
                       "not all zero)")
    span_id = span.span_id
    if len(span_id) != 8 or span_id == _ZERO_SPAN:
        raise _invalid(f"a span has an invalid span_id ({len(span_id)} bytes; must be 8, "
                       "not all zero)")
    parent = len(span.parent_span_id)
    if parent and parent != 8:
        raise _invalid(f"a span has an invalid parent_span_id ({parent} bytes; must be empty or 8)")


def _traces(request: ExportTraceServiceRequest, limits: LimitsConfig, encoded_size: int | None,
            depth_checked: bool, encoded: bytes | None = None) -> None:
    max_spans = limits.max_spans_per_request
    total = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            total += len(ss.spans)
    if total > max_spans:
        raise _too_large(f"{total} spans, over limits.max_spans_per_request ({max_spans})")
    max_bytes = limits.max_attribute_value_bytes
    # A string cannot be longer than the request (or span) that holds it.
    strings = encoded_size is None or encoded_size > max_bytes
    exact = _Walker(limits, strings)
    max_attrs = exact.max_attrs
    # Per-span ids and counts in C over the bytes when possible (the Python loop below costs
    # ~1.5 µs a span); a False answer re-runs the exact loop for the precise message.
    spans_checked = (
        encoded is not None and depth_checked and not strings and wire.spans_ok(encoded, max_attrs) is True
    )
    for rs in request.resource_spans:
        exact.attributes(rs.resource.attributes, "resource")
        for ss in rs.scope_spans:
            scope = ss.scope
            exact.attributes(scope.attributes, "scope")
            exact.name(scope.name, "scope")
            if spans_checked:
                continue
            for span in ss.spans:
                _check_span_ids(span)
                # Every value of a span is walked only when it has to be: values not yet
                # depth-checked by the parser, or strings that might be too long.
                walk = not depth_checked or (strings and span.ByteSize() > max_bytes)
                exact.attributes(span.attributes, "span", values=walk)
                if walk:
                    exact.name(span.name, "span")
                events = span.events
                if events:
                    if len(events) > max_attrs:
                        raise _too_large(f"a span has {len(events)} events, over "
                                         f"limits.max_attributes_per_span ({max_attrs})")
                    for ev in events:
                        exact.attributes(ev.attributes, "span event", values=walk)
                        if walk:
                            exact.name(ev.name, "span event")
                links = span.links
                if links:
                    if len(links) > max_attrs:
                        raise _too_large(f"a span has {len(links)} links, over "
                                         f"limits.max_attributes_per_span ({max_attrs})")
                    for link in links:
                        if len(link.trace_id) != 16 or len(link.span_id) != 8:
                            raise _invalid("a span link has an id of the wrong length "
                                           "(trace_id must be 16 bytes, span_id 8)")
                        exact.attributes(link.attributes, "span link", values=walk)


def _logs(request: ExportLogsServiceRequest, limits: LimitsConfig, encoded_size: int | None,
          depth_checked: bool) -> None:
    max_items = limits.max_spans_per_request
    total = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            total += len(sl.log_records)
    if total > max_items:
        raise _too_large(f"{total} log records, over limits.max_spans_per_request ({max_items})")
    max_bytes = limits.max_attribute_value_bytes
    strings = encoded_size is None or encoded_size > max_bytes
    exact = _Walker(limits, strings)
    for rl in request.resource_logs:
        exact.attributes(rl.resource.attributes, "resource")
        for sl in rl.scope_logs:
            exact.attributes(sl.scope.attributes, "scope")
            exact.name(sl.scope.name, "scope")
            for rec in sl.log_records:
                t, s = len(rec.trace_id), len(rec.span_id)
                if t not in (0, 16) or s not in (0, 8):
                    raise _invalid("a log record has an id of the wrong length "
                                   "(trace_id must be empty or 16 bytes, span_id empty or 8)")
                walk = not depth_checked or (strings and rec.ByteSize() > max_bytes)
                exact.attributes(rec.attributes, "log record", values=walk)
                body = rec.body
                # The body sits one level above attributes: the parser's bound leaves it one
                # level of slack, so a nested body is always walked.
                if walk or body.WhichOneof("value") in _NESTED:
                    exact.value(body, "log record body")
                if walk:
                    exact.name(rec.event_name, "log record event")


def check_traces(
    request: ExportTraceServiceRequest, limits: LimitsConfig, *, encoded_size: int | None = None,
) -> Violation | None:
    """The first limit ``request`` breaks, or None; every value walked in Python.

    ``encoded_size``: the request's size in bytes, when known (string lengths need not be
    measured when it is within ``max_attribute_value_bytes``).
    """
    try:
        _traces(request, limits, encoded_size, depth_checked=False)
    except Violation as v:
        return v
    return None


def check_logs(
    request: ExportLogsServiceRequest, limits: LimitsConfig, *, encoded_size: int | None = None,
) -> Violation | None:
    """As :func:`check_traces`, for logs (log records count against ``max_spans_per_request``)."""
    try:
        _logs(request, limits, encoded_size, depth_checked=False)
    except Violation as v:
        return v
    return None


def check_request(
    request: ExportTraceServiceRequest | ExportLogsServiceRequest,
    limits: LimitsConfig,
    *,
    encoded_size: int | None = None,
) -> Violation | None:
    """:func:`check_traces` or :func:`check_logs`, by the request's type."""
    if isinstance(request, ExportTraceServiceRequest):
        return check_traces(request, limits, encoded_size=encoded_size)
    return check_logs(request, limits, encoded_size=encoded_size)


# --------------------------------------------------------------------------------------------
# Decoding with the parser's own nesting limit set to max_value_depth
# --------------------------------------------------------------------------------------------
_PROBE_PACKAGE = "promptstamp_relay.admission.decode"
_WRAP_FIELD, _TRACES_FIELD, _LOGS_FIELD = 1, 2, 3


def _wrap_class() -> type[Message]:
    """``Wrap { Wrap w = 1; ExportTraceServiceRequest traces = 2; ExportLogsServiceRequest
    logs = 3; }`` in the default pool (where the OTLP types live)."""
    pool = descriptor_pool.Default()
    name = f"{_PROBE_PACKAGE}.Wrap"
    try:
        desc = pool.FindMessageTypeByName(name)
    except KeyError:
        F = descriptor_pb2.FieldDescriptorProto
        fdp = descriptor_pb2.FileDescriptorProto(
            name="promptstamp_relay/limits_wrap.proto", package=_PROBE_PACKAGE, syntax="proto3",
            dependency=[trace_service_pb2.DESCRIPTOR.name, logs_service_pb2.DESCRIPTOR.name],
        )
        m = fdp.message_type.add(name="Wrap")
        for fname, num, tname in (
            ("w", _WRAP_FIELD, f".{name}"),
            ("traces", _TRACES_FIELD, ".opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest"),
            ("logs", _LOGS_FIELD, ".opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest"),
        ):
            m.field.add(name=fname, number=num, type=F.TYPE_MESSAGE, label=F.LABEL_OPTIONAL,
                        type_name=tname)
        pool.Add(fdp)
        desc = pool.FindMessageTypeByName(name)
    cls: type[Message] = message_factory.GetMessageClass(desc)
    return cls


_Wrap = _wrap_class()


def _field(num: int, payload_len: int) -> bytes:
    return encode_varint(num << 3 | 2) + encode_varint(payload_len)


def _wrapped(data: bytes, field: int, k: int) -> bytes:
    """``data`` as the ``field`` of the innermost of ``k + 1`` nested Wraps; one copy."""
    heads = [_field(field, len(data))]
    size = len(heads[0]) + len(data)
    for _ in range(k):
        head = _field(_WRAP_FIELD, size)
        heads.append(head)
        size += len(head)
    heads.reverse()
    return b"".join(heads) + data


def _nested_array_attr_event(depth: int) -> bytes:
    """An encoded ExportTraceServiceRequest whose one span event has one attribute: an array
    ``depth`` levels deep (depth 1: a string). The deepest place an attribute sits."""

    def fld(num: int, payload: bytes) -> bytes:
        return _field(num, len(payload)) + payload

    v = fld(1, b"x")  # AnyValue.string_value
    for _ in range(depth - 1):
        v = fld(5, fld(1, v))  # AnyValue.array_value → ArrayValue.values
    event = fld(3, fld(1, b"k") + fld(2, v))  # Span.Event.attributes → KeyValue
    span = fld(1, b"\x01" * 16) + fld(2, b"\x02" * 8) + fld(11, event)
    return fld(1, fld(2, fld(2, span)))  # resource_spans → scope_spans → spans


_NO_PARSER_LIMIT = -1
_CALIBRATED: dict[int, int] = {}
_CALIBRATION_LOCK = threading.Lock()


def _parses(data: bytes) -> bool:
    try:
        _Wrap().ParseFromString(data)
    except DecodeError:
        return False
    return True


def wrap_levels(max_depth: int) -> int:
    """How many Wrap levels put the parser's nesting limit just past ``max_depth`` array levels
    in a span event's attribute: the largest ``k`` for which that still parses.

    0 when even no wrapping refuses it (the parser is stricter than the config);
    ``-1`` when the parser shows no nesting limit (the exact Python walk is used instead).
    """
    with _CALIBRATION_LOCK:
        known = _CALIBRATED.get(max_depth)
        if known is not None:
            return known
        probe = _nested_array_attr_event(max_depth)
        if not _parses(_wrapped(probe, _TRACES_FIELD, 0)):
            k = 0
        elif _parses(_wrapped(probe, _TRACES_FIELD, 2000)):
            k = _NO_PARSER_LIMIT
        else:
            lo, hi = 0, 2000  # parses at lo, not at hi
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if _parses(_wrapped(probe, _TRACES_FIELD, mid)):
                    lo = mid
                else:
                    hi = mid
            k = lo
        _CALIBRATED[max_depth] = k
        return k


def _unwrap(msg: Any, k: int, field: str) -> Any:
    for _ in range(k):
        msg = msg.w
    return getattr(msg, field)


def _decode(data: bytes, limits: LimitsConfig, field_num: int, field: str, cls: type[Message]) -> Any:
    k = wrap_levels(limits.max_value_depth)
    if k < 0:  # a parser without a nesting limit: decode plainly, walk every value
        request = cls()
        try:
            request.ParseFromString(data)
        except DecodeError:
            raise _invalid(f"malformed {cls.__name__}") from None
        return request, False
    wrap = _Wrap()
    try:
        wrap.ParseFromString(_wrapped(data, field_num, k))
    except DecodeError:
        # Malformed, or nested too deep? Only the error path pays for a second look.
        try:
            cls().ParseFromString(data)
        except DecodeError:
            raise _invalid(f"malformed {cls.__name__}") from None
        raise _invalid(f"a value is nested deeper than limits.max_value_depth "
                       f"({limits.max_value_depth})") from None
    return _unwrap(wrap, k, field), True


def decode_traces(data: bytes, limits: LimitsConfig) -> ExportTraceServiceRequest:
    """Decode and check a trace request; raise :class:`Violation` for the first limit broken.

    ``len(data)`` itself is the caller's to check (before decoding, against
    ``max_request_bytes``).
    """
    request, depth_checked = _decode(data, limits, _TRACES_FIELD, "traces", ExportTraceServiceRequest)
    _traces(request, limits, len(data), depth_checked, data)
    return request  # type: ignore[no-any-return]


def decode_logs(data: bytes, limits: LimitsConfig) -> ExportLogsServiceRequest:
    """As :func:`decode_traces`, for logs."""
    request, depth_checked = _decode(data, limits, _LOGS_FIELD, "logs", ExportLogsServiceRequest)
    _logs(request, limits, len(data), depth_checked)
    return request  # type: ignore[no-any-return]
