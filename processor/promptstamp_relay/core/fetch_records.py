"""Reading the fetch record (contract §2) out of OTLP requests: log records and span events. Pure.

A fetch reaches the relay as an ``app.prompt.fetch`` log record, as an ``app.prompt.fetch``
event on the span active at fetch time, or both; :func:`parse_fetch` validates either the same
way. The processor deduplicates the two forms of one fetch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, fields

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c

from .. import wire
from .model import FetchRecord, resource_instance, resource_service

__all__ = [
    "CORRECT_RECORD",
    "EVENT_MARKER",
    "MARKER",
    "FetchLogBatch",
    "Invalid",
    "parse_fetch",
    "span_fetch_events",
    "split_fetch_log",
]

#: Bytes every encoded fetch record contains; a request without them needs no parsing.
MARKER = c.FETCH_EVENT_NAME.encode()
#: The encoded ``name`` field (Span.Event field 2) of an ``app.prompt.fetch`` span event: only
#: spans whose bytes contain it are decoded. (``app.prompt.fetch.source`` keys do not match it.)
EVENT_MARKER = b"\x12" + bytes([len(MARKER)]) + MARKER

_KNOWN_SOURCES = frozenset({c.SOURCE_LANGFUSE, c.SOURCE_CACHE, c.SOURCE_FALLBACK})
if tuple(f.name for f in fields(FetchRecord)) != (
    "key", "label", "version", "source", "time_ns", "trace_id", "span_id", "instance", "error_type", "service"
):
    raise ImportError("FetchRecord's fields changed: update fetch_records._parse")


#: What a correct fetch record looks like (quoted in the log line of a rejected one).
CORRECT_RECORD = (
    f"{c.PROMPT_KEY} (string), {c.PROMPT_LABEL} (string), {c.PROMPT_VERSION} (OTLP intValue > 0; "
    f"absent only when {c.FETCH_SOURCE} is fallback), {c.FETCH_SOURCE} "
    f"({c.SOURCE_LANGFUSE}|{c.SOURCE_CACHE}|{c.SOURCE_FALLBACK}), see docs/contract.md §2"
)


@dataclass(frozen=True, slots=True)
class Invalid:
    """A rejected fetch record: ``code`` is short and stable (a metric label), ``message`` says
    what was wrong (logged; it quotes at most a short prefix of what the sender wrote),
    ``service`` who sent it (its resource's ``service.name``)."""

    code: str
    message: str
    service: str = ""


@dataclass
class FetchLogBatch:
    records: list[FetchRecord] = field(default_factory=list)  # valid; ``fallback`` ones have no version
    invalid: list[Invalid] = field(default_factory=list)
    other_logs: int = 0  # log records that are not fetch records, left in the request
    #: prompt keys whose records came on a fetch span (``promptstamp.fetch``): the SDK that sent
    #: them puts every scope's record in the scope's own trace (contract §2)
    fetch_span_keys: set[str] = field(default_factory=set)


def parse_fetch(
    attributes: Iterable[KeyValue],
    *,
    time_ns: int,
    trace_id: bytes,
    span_id: bytes,
    instance: str,
    service: str,
) -> FetchRecord | Invalid:
    """One fetch record from its attributes, or why it is rejected."""
    return _parse(attributes, time_ns, trace_id, span_id, instance, service)


def _parse(attributes: Iterable[KeyValue], time_ns: int, trace_id: bytes, span_id: bytes, instance: str,
           service: str) -> FetchRecord | Invalid:
    key = label = source = ""
    error_type: str | None = None
    version: int | None = None
    version_seen = False
    for kv in attributes:
        k, v = kv.key, kv.value
        if k == c.PROMPT_KEY:
            key = v.string_value
        elif k == c.PROMPT_LABEL:
            label = v.string_value
        elif k == c.FETCH_SOURCE:
            source = v.string_value
        elif k == c.FETCH_ERROR_TYPE:
            error_type = v.string_value or None
        elif k == c.PROMPT_VERSION:
            version_seen = True
            if v.WhichOneof("value") != "int_value":
                got = v.WhichOneof("value")
                return Invalid("version_not_int", f"{c.PROMPT_VERSION} must be an int, got {got}", service)
            version = v.int_value
    if not key:
        return Invalid("missing_key", f"missing {c.PROMPT_KEY}", service)
    if not label:
        return Invalid("missing_label", f"missing {c.PROMPT_LABEL}", service)
    if source not in _KNOWN_SOURCES:
        return Invalid("unknown_source",
                       f"{c.FETCH_SOURCE} must be one of {sorted(_KNOWN_SOURCES)}, got {source[:40]!r}",
                       service)
    if source == c.SOURCE_FALLBACK:
        if version_seen:  # a code-embedded prompt has no version: which one is meant is unknown
            return Invalid("fallback_with_version",
                           f"{c.FETCH_SOURCE} is fallback but {c.PROMPT_VERSION} is set", service)
    elif not version_seen:
        return Invalid("missing_version", f"missing {c.PROMPT_VERSION}", service)
    elif version is None or version <= 0:
        return Invalid("version_not_positive", f"{c.PROMPT_VERSION} must be a positive int, got {version}",
                       service)
    if len(trace_id) not in (0, 16) or len(span_id) not in (0, 8):
        return Invalid("bad_ids", "trace_id/span_id of wrong length", service)
    # positional, in FetchRecord's field order (checked at import): once per fetch record
    return FetchRecord(key, label, version, source, time_ns, bytes(trace_id), bytes(span_id), instance,
                       error_type, service)


def _is_fetch(rec: LogRecord) -> bool:
    if rec.event_name == c.FETCH_EVENT_NAME:
        return True
    for kv in rec.attributes:
        if kv.key == c.EVENT_NAME_ATTRIBUTE:
            return bool(kv.value.string_value == c.FETCH_EVENT_NAME)
    return False


def _add(out: FetchLogBatch, parsed: FetchRecord | Invalid) -> None:
    if isinstance(parsed, Invalid):
        out.invalid.append(parsed)
    else:
        out.records.append(parsed)


def split_fetch_log(request: ExportLogsServiceRequest) -> FetchLogBatch:
    """Take the fetch records out of ``request`` (in place); the other logs stay in it."""
    out = FetchLogBatch()
    for rl in request.resource_logs:
        who: tuple[str, str] | None = None
        for sl in rl.scope_logs:
            take: list[int] = []
            for i, rec in enumerate(sl.log_records):
                if not _is_fetch(rec):
                    out.other_logs += 1
                    continue
                take.append(i)
                if who is None:
                    who = resource_instance(rl.resource), resource_service(rl.resource)
                parsed = _parse(rec.attributes, rec.time_unix_nano or rec.observed_time_unix_nano,
                                rec.trace_id, rec.span_id, who[0], who[1])
                if isinstance(parsed, Invalid):
                    out.invalid.append(parsed)
                else:
                    out.records.append(parsed)
            if len(take) == len(sl.log_records):
                del sl.log_records[:]  # all of them (the usual case): one call
            else:
                for i in reversed(take):
                    del sl.log_records[i]
    if out.records or out.invalid:
        for r in range(len(request.resource_logs) - 1, -1, -1):
            rl = request.resource_logs[r]
            for s in range(len(rl.scope_logs) - 1, -1, -1):
                if not rl.scope_logs[s].log_records:
                    del rl.scope_logs[s]
            if not rl.scope_logs:
                del request.resource_logs[r]
    return out


def span_fetch_events(
    data: bytes, index: wire.RequestIndex, request: ExportTraceServiceRequest,
    spans: Iterable[int] | None = None,
) -> FetchLogBatch:
    """The ``app.prompt.fetch`` span events of a trace request (``data`` is ``request`` encoded,
    ``index`` its walk). Only spans whose bytes carry the event's name are decoded — or only
    ``spans``, when the caller knows which carry such an event (``wire.scan_spans``); the
    request is left as it is (events are never removed from a span)."""
    out = FetchLogBatch()
    if spans is None:
        if MARKER not in data:  # a quick widening check first: the event marker's first bytes are common
            return out
        spans = sorted(index.marked(data, (EVENT_MARKER,)))
    who: dict[int, tuple[str, str]] = {}
    for i in spans:
        span = Span.FromString(data[index.span_starts[i]:index.span_ends[i]])
        on_fetch_span = span.name == c.FETCH_SPAN_NAME
        for ev in span.events:
            if ev.name != c.FETCH_EVENT_NAME:
                continue
            r = index.locate(i)[0]
            if r not in who:
                resource = request.resource_spans[r].resource
                who[r] = resource_instance(resource), resource_service(resource)
            parsed = parse_fetch(
                ev.attributes, time_ns=ev.time_unix_nano or span.start_time_unix_nano, trace_id=span.trace_id,
                span_id=span.span_id, instance=who[r][0], service=who[r][1],
            )
            _add(out, parsed)
            if on_fetch_span and isinstance(parsed, FetchRecord) and parsed.trace_id:
                out.fetch_span_keys.add(parsed.key)
    return out
