"""Reading the fetch log (contract §2) out of OTLP log requests. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

import promptstamp_contract as c
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from .records import FetchRecord
from .stamp import resource_instance

__all__ = ["MARKER", "FetchLogBatch", "split_fetch_log"]

#: Bytes every encoded fetch-log record contains; a request without them needs no parsing.
MARKER = c.FETCH_EVENT_NAME.encode()

_KNOWN_SOURCES = frozenset({c.SOURCE_LANGFUSE, c.SOURCE_CACHE, c.SOURCE_FALLBACK})


@dataclass
class FetchLogBatch:
    records: list[FetchRecord] = field(default_factory=list)
    fallbacks: int = 0  # valid records that carry no version (source ``fallback``)
    invalid: list[str] = field(default_factory=list)  # why each rejected record was rejected
    other_logs: int = 0  # log records that are not the fetch log, left in the request


def _is_fetch(rec: LogRecord) -> bool:
    if rec.event_name == c.FETCH_EVENT_NAME:
        return True
    for kv in rec.attributes:
        if kv.key == c.EVENT_NAME_ATTRIBUTE:
            return bool(kv.value.string_value == c.FETCH_EVENT_NAME)
    return False


def _parse(rec: LogRecord, instance: str) -> FetchRecord | str:
    key = label = source = ""
    error_type: str | None = None
    version: int | None = None
    version_seen = False
    for kv in rec.attributes:
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
                return f"{c.PROMPT_VERSION} must be an int, got {v.WhichOneof('value')}"
            version = v.int_value
    if not key:
        return f"missing {c.PROMPT_KEY}"
    if not label:
        return f"missing {c.PROMPT_LABEL}"
    if source not in _KNOWN_SOURCES:
        # This reason is logged: quote at most a short prefix of what the caller sent.
        return f"{c.FETCH_SOURCE} must be one of {sorted(_KNOWN_SOURCES)}, got {source[:40]!r}"
    if source == c.SOURCE_FALLBACK:
        version = None  # a code-embedded prompt has no version, whatever it says
    elif not version_seen:
        return f"missing {c.PROMPT_VERSION}"
    elif version is None or version <= 0:
        return f"{c.PROMPT_VERSION} must be a positive int, got {version}"
    if len(rec.trace_id) not in (0, 16) or len(rec.span_id) not in (0, 8):
        return "trace_id/span_id of wrong length"
    return FetchRecord(
        key=key, label=label, version=version, source=source,
        time_ns=rec.time_unix_nano or rec.observed_time_unix_nano,
        trace_id=bytes(rec.trace_id), span_id=bytes(rec.span_id), instance=instance,
        error_type=error_type,
    )


def split_fetch_log(request: ExportLogsServiceRequest) -> FetchLogBatch:
    """Take the fetch-log records out of ``request`` (in place); the other logs stay in it."""
    out = FetchLogBatch()
    for rl in request.resource_logs:
        instance: str | None = None
        for sl in rl.scope_logs:
            take: list[int] = []
            for i, rec in enumerate(sl.log_records):
                if not _is_fetch(rec):
                    out.other_logs += 1
                    continue
                take.append(i)
                if instance is None:
                    instance = resource_instance(rl.resource)
                parsed = _parse(rec, instance)
                if isinstance(parsed, str):
                    out.invalid.append(parsed)
                elif parsed.version is None:
                    out.fallbacks += 1
                else:
                    out.records.append(parsed)
            for i in reversed(take):
                del sl.log_records[i]
    if out.records or out.invalid or out.fallbacks:
        for r in range(len(request.resource_logs) - 1, -1, -1):
            rl = request.resource_logs[r]
            for s in range(len(rl.scope_logs) - 1, -1, -1):
                if not rl.scope_logs[s].log_records:
                    del rl.scope_logs[s]
            if not rl.scope_logs:
                del request.resource_logs[r]
    return out
