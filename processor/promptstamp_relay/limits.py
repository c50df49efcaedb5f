"""Per-request limits on decoded OTLP requests. Pure: a request and the limits in, a verdict out.

:func:`check_request` walks every span (or log record), every attribute list and every
``AnyValue`` once, with an explicit stack (never recursion), and answers with the first
:class:`Violation` it finds, or ``None``. Its messages name the limit and the count, never a
value, a key or an id: a refusal must not echo what a caller sent.

What is checked (``limits.*`` in the config):

- ``max_spans_per_request``: spans in a trace request, log records in a logs request;
- ``max_attributes_per_span``: attributes of a span, span event, span link, log record,
  resource or scope;
- ``max_attribute_value_bytes``: the UTF-8 length of an attribute key, of a string value
  (nested ones included), of a bytes value, and of span and event names;
- ``max_value_depth``: nesting of ``AnyValue`` (a scalar attribute value has depth 1, an array
  of scalars depth 2, …); log record bodies included;
- ids: a span's trace id is 16 bytes and its span id 8, neither all zero; a parent span id is
  empty or 8 bytes; a link's ids are 16 and 8 bytes; a log record's ids are empty or 16 / 8
  bytes. Langfuse rejects a whole batch with HTTP 400 for one malformed id, so the relay must
  not forward one.

Cost, for ordinary traffic: when the encoded request is no larger than
``max_attribute_value_bytes`` no string can exceed it and string lengths are not measured;
what remains is one ``WhichOneof`` per attribute value.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from .config import LimitsConfig

__all__ = ["Violation", "check_logs", "check_request", "check_traces"]

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_NESTED = frozenset({"array_value", "kvlist_value"})


@dataclass(frozen=True, slots=True)
class Violation:
    """Why a request is refused. ``kind``: ``too_large`` (a size or count limit: gRPC
    RESOURCE_EXHAUSTED) or ``invalid`` (too deep, a malformed id: gRPC INVALID_ARGUMENT)."""

    kind: Literal["too_large", "invalid"]
    message: str


def _too_large(message: str) -> Violation:
    return Violation("too_large", message)


def _invalid(message: str) -> Violation:
    return Violation("invalid", message)


class _Walker:
    """The attribute and value checks shared by both signals."""

    __slots__ = ("check_strings", "max_attrs", "max_bytes", "max_depth")

    def __init__(self, limits: LimitsConfig, encoded_size: int | None) -> None:
        self.max_attrs = limits.max_attributes_per_span
        self.max_bytes = limits.max_attribute_value_bytes
        self.max_depth = limits.max_value_depth
        # A string can't be longer than the request it came in.
        self.check_strings = encoded_size is None or encoded_size > self.max_bytes

    def too_long(self, s: str) -> bool:
        """UTF-8 length of ``s`` over the limit (measured only when it can be)."""
        n = len(s)
        if n * 4 <= self.max_bytes:
            return False
        return n > self.max_bytes or len(s.encode("utf-8", "surrogatepass")) > self.max_bytes

    def attributes(self, attrs: Any, what: str) -> Violation | None:
        """Check a ``repeated KeyValue``: its length, its keys, every value in it."""
        if len(attrs) > self.max_attrs:
            return _too_large(
                f"a {what} has {len(attrs)} attributes, over limits.max_attributes_per_span "
                f"({self.max_attrs})"
            )
        if not attrs:
            return None
        check_strings = self.check_strings
        stack: list[tuple[Any, int]] | None = None
        for kv in attrs:
            if check_strings and self.too_long(kv.key):
                return self._long(what)
            v = kv.value
            w = v.WhichOneof("value")
            if w is None:
                continue
            if w in _NESTED:
                if stack is None:
                    stack = []
                stack.append((v, 1))
            elif check_strings and self._scalar_too_long(v, w):
                return self._long(what)
        if stack:
            return self._walk(stack, what)
        return None

    def value(self, v: Any, what: str) -> Violation | None:
        """Check one ``AnyValue`` (a log record body)."""
        w = v.WhichOneof("value")
        if w is None:
            return None
        if w in _NESTED:
            return self._walk([(v, 1)], what)
        if self.check_strings and self._scalar_too_long(v, w):
            return self._long(what)
        return None

    def _scalar_too_long(self, v: Any, w: str) -> bool:
        if w == "string_value":
            return self.too_long(v.string_value)
        if w == "bytes_value":
            return len(v.bytes_value) > self.max_bytes
        return False

    def _walk(self, stack: list[tuple[Any, int]], what: str) -> Violation | None:
        """Depth-first over nested values, iteratively. ``stack`` holds (AnyValue, its depth)."""
        max_depth = self.max_depth
        max_attrs = self.max_attrs
        check_strings = self.check_strings
        while stack:
            v, depth = stack.pop()
            w = v.WhichOneof("value")
            if w is None:
                continue
            if w not in _NESTED:
                if check_strings and self._scalar_too_long(v, w):
                    return self._long(what)
                continue
            if depth + 1 > max_depth:
                return _invalid(
                    f"a {what} has an attribute value nested deeper than limits.max_value_depth "
                    f"({max_depth})"
                )
            children: Iterable[Any]
            if w == "array_value":
                children = v.array_value.values
            else:
                kvs = v.kvlist_value.values
                if len(kvs) > max_attrs:
                    return _too_large(
                        f"a {what} has an attribute value holding {len(kvs)} entries, over "
                        f"limits.max_attributes_per_span ({max_attrs})"
                    )
                if check_strings:
                    for kv in kvs:
                        if self.too_long(kv.key):
                            return self._long(what)
                children = [kv.value for kv in kvs]
            for child in children:
                stack.append((child, depth + 1))
        return None

    def _long(self, what: str) -> Violation:
        return _too_large(
            f"a {what} has an attribute key or value over limits.max_attribute_value_bytes "
            f"({self.max_bytes} bytes)"
        )

    def name(self, s: str, what: str) -> Violation | None:
        if self.check_strings and self.too_long(s):
            return _too_large(
                f"a {what} name is over limits.max_attribute_value_bytes ({self.max_bytes} bytes)"
            )
        return None


def check_traces(
    request: ExportTraceServiceRequest, limits: LimitsConfig, *, encoded_size: int | None = None
) -> Violation | None:
    """The first limit ``request`` breaks, or None. ``encoded_size``: its size in bytes, if
    known (lets the walk skip string lengths that cannot exceed the limit)."""
    walker = _Walker(limits, encoded_size)
    max_spans = limits.max_spans_per_request
    total = 0
    for rs in request.resource_spans:
        for ss in rs.scope_spans:
            total += len(ss.spans)
    if total > max_spans:
        return _too_large(f"{total} spans, over limits.max_spans_per_request ({max_spans})")
    max_attrs = walker.max_attrs
    for rs in request.resource_spans:
        bad = walker.attributes(rs.resource.attributes, "resource")
        if bad:
            return bad
        for ss in rs.scope_spans:
            scope = ss.scope
            bad = walker.attributes(scope.attributes, "scope") or walker.name(scope.name, "scope")
            if bad:
                return bad
            for span in ss.spans:
                trace_id = span.trace_id
                if len(trace_id) != 16 or trace_id == _ZERO_TRACE:
                    return _invalid(f"a span has an invalid trace_id ({len(trace_id)} bytes; "
                                    "must be 16, not all zero)")
                span_id = span.span_id
                if len(span_id) != 8 or span_id == _ZERO_SPAN:
                    return _invalid(f"a span has an invalid span_id ({len(span_id)} bytes; "
                                    "must be 8, not all zero)")
                parent = len(span.parent_span_id)
                if parent and parent != 8:
                    return _invalid(f"a span has an invalid parent_span_id ({parent} bytes; "
                                    "must be empty or 8)")
                attrs = span.attributes
                if len(attrs) > max_attrs:
                    return _too_large(
                        f"a span has {len(attrs)} attributes, over limits.max_attributes_per_span "
                        f"({max_attrs})"
                    )
                bad = walker.attributes(attrs, "span") or walker.name(span.name, "span")
                if bad:
                    return bad
                events = span.events
                if events:
                    if len(events) > max_attrs:
                        return _too_large(f"a span has {len(events)} events, over "
                                          f"limits.max_attributes_per_span ({max_attrs})")
                    for ev in events:
                        bad = walker.attributes(ev.attributes, "span event") or walker.name(
                            ev.name, "span event")
                        if bad:
                            return bad
                links = span.links
                if links:
                    if len(links) > max_attrs:
                        return _too_large(f"a span has {len(links)} links, over "
                                          f"limits.max_attributes_per_span ({max_attrs})")
                    for link in links:
                        if len(link.trace_id) != 16 or len(link.span_id) != 8:
                            return _invalid("a span link has an id of the wrong length "
                                            "(trace_id must be 16 bytes, span_id 8)")
                        bad = walker.attributes(link.attributes, "span link")
                        if bad:
                            return bad
    return None


def check_logs(
    request: ExportLogsServiceRequest, limits: LimitsConfig, *, encoded_size: int | None = None
) -> Violation | None:
    """The first limit ``request`` breaks, or None (log records count against
    ``max_spans_per_request``)."""
    walker = _Walker(limits, encoded_size)
    max_items = limits.max_spans_per_request
    total = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            total += len(sl.log_records)
    if total > max_items:
        return _too_large(f"{total} log records, over limits.max_spans_per_request ({max_items})")
    for rl in request.resource_logs:
        bad = walker.attributes(rl.resource.attributes, "resource")
        if bad:
            return bad
        for sl in rl.scope_logs:
            bad = walker.attributes(sl.scope.attributes, "scope") or walker.name(sl.scope.name, "scope")
            if bad:
                return bad
            for rec in sl.log_records:
                t, s = len(rec.trace_id), len(rec.span_id)
                if t not in (0, 16) or s not in (0, 8):
                    return _invalid("a log record has an id of the wrong length "
                                    "(trace_id must be empty or 16 bytes, span_id empty or 8)")
                bad = (
                    walker.attributes(rec.attributes, "log record")
                    or walker.value(rec.body, "log record body")
                    or walker.name(rec.event_name, "log record event")
                )
                if bad:
                    return bad
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
