"""A Rotel Python processor doing promptstamp's stamping (configuration 4b, the peer with Python).

Loaded by Rotel's embedded interpreter (the system libpython3.11, not this venv) as both its
trace and its logs processor: ``--otlp-with-trace-processor`` / ``--otlp-with-logs-processor``.
Only the standard library and Rotel's built-in ``rotel_sdk`` are available there, so the
contract's names are spelled out below; ``bench/peers.py`` checks them against
``promptstamp.contract`` before starting Rotel.

The same work as the relay's processor, written the straightforward way a platform team would:
``process_logs`` indexes every ``app.prompt.fetch`` record by trace, instance and label;
``process_spans`` scans each span's attributes, picks generations by the default rules, resolves
trace → instance → latest and appends the contract §3 attributes. What it cannot do is *hold* a
span: Rotel's processor API transforms a batch in place and passes it on, so a generation whose
fetch record has not arrived yet is resolved at once by the instance or latest tier.
"""

from __future__ import annotations

import bisect
import sys
import types
from typing import Any

from rotel_sdk.open_telemetry.common.v1 import KeyValue

PROMPT_KEY = "app.prompt.key"
PROMPT_LABEL = "app.prompt.label"
PROMPT_VERSION = "app.prompt.version"
FETCH_EVENT_NAME = "app.prompt.fetch"
EVENT_NAME_ATTRIBUTE = "event.name"
FETCH_SOURCE = "app.prompt.fetch.source"
SERVICE_NAME = "service.name"
SERVICE_INSTANCE_ID = "service.instance.id"
LF_PROMPT_NAME = "langfuse.observation.prompt.name"
LF_PROMPT_VERSION = "langfuse.observation.prompt.version"
LF_OBSERVATION_TYPE = "langfuse.observation.type"
LF_META_PROMPT_NAME = "langfuse.observation.metadata.prompt_name"
LF_META_PROMPT_LABEL = "langfuse.observation.metadata.prompt_label"
LF_META_RESOLUTION = "langfuse.observation.metadata.prompt_resolution"
LF_META_SOURCE = "langfuse.observation.metadata.prompt_source"
GENERATION = "generation"
PRESENT = frozenset({"gen_ai.operation.name", "gen_ai.request.model", "llm.request.type"})
EQUALS = {"openinference.span.kind": "LLM", LF_OBSERVATION_TYPE: GENERATION}
SCAN = PRESENT | frozenset(EQUALS) | {PROMPT_KEY, PROMPT_LABEL, LF_PROMPT_NAME, LF_META_RESOLUTION}
STALENESS_NS = 3600 * 10**9
MAX_TRACES = 200_000
MAX_SERIES = 64

# One state for both pipelines, however many times Rotel loads this file.
_STATE_MODULE = "promptstamp_bench_rotel_state"
if _STATE_MODULE not in sys.modules:
    _m = types.ModuleType(_STATE_MODULE)
    _m.trace = {}  # type: ignore[attr-defined]  # (trace id, key, label) -> [(t, version, source)]
    _m.instance = {}  # type: ignore[attr-defined]  # (instance, key, label) -> sorted [(t, version, source)]
    _m.label = {}  # type: ignore[attr-defined]  # (key, label) -> sorted [(t, version, source)]
    sys.modules[_STATE_MODULE] = _m
_S: Any = sys.modules[_STATE_MODULE]


def _instance(resource: Any) -> str:
    name = ""
    if resource is None:
        return name
    for kv in resource.attributes:
        if kv.key == SERVICE_INSTANCE_ID:
            v = kv.value.value if kv.value is not None else None
            if isinstance(v, str) and v:
                return v
        elif kv.key == SERVICE_NAME and kv.value is not None:
            name = kv.value.value or ""
    return name


def _add_series(index: dict[Any, list[tuple[int, int, str]]], key: Any, entry: tuple[int, int, str]) -> None:
    series = index.get(key)
    if series is None:
        index[key] = [entry]
        return
    if entry[0] >= series[-1][0]:
        series.append(entry)
    else:
        bisect.insort(series, entry)
    if len(series) > MAX_SERIES:
        del series[0]


def process_logs(resource_logs: Any) -> None:
    instance = _instance(resource_logs.resource)
    for sl in resource_logs.scope_logs:
        for rec in sl.log_records:
            attrs = {kv.key: (kv.value.value if kv.value is not None else None) for kv in rec.attributes}
            if rec.event_name != FETCH_EVENT_NAME and attrs.get(EVENT_NAME_ATTRIBUTE) != FETCH_EVENT_NAME:
                continue
            key, label, version = attrs.get(PROMPT_KEY), attrs.get(PROMPT_LABEL), attrs.get(PROMPT_VERSION)
            source = attrs.get(FETCH_SOURCE) or ""
            if not key or not label or not isinstance(version, int) or isinstance(version, bool) or version <= 0:
                continue
            entry = (rec.time_unix_nano or rec.observed_time_unix_nano, version, source)
            tid = bytes(rec.trace_id)
            if tid:
                tr = _S.trace
                tr.setdefault((tid, key, label), []).append(entry)
                if len(tr) > MAX_TRACES:
                    del tr[next(iter(tr))]
            _add_series(_S.instance, (instance, key, label), entry)
            _add_series(_S.label, (key, label), entry)


def _latest(series: list[tuple[int, int, str]] | None, at: int) -> tuple[int, int, str] | None:
    if not series:
        return None
    i = bisect.bisect_right(series, (at, 1 << 62, ""))
    return series[i - 1] if i else None


def _resolve(tid: bytes, instance: str, key: str, label: str, start: int) -> tuple[str, int | None, str | None]:
    records = _S.trace.get((tid, key, label))
    if records:
        before = after = None
        for r in records:
            if r[0] <= start:
                before = r
            elif after is None:
                after = r
        r = before or after
        if r is not None:
            return "trace", r[1], r[2]
    if instance:
        r = _latest(_S.instance.get((instance, key, label)), start)
        if r is not None:
            return "instance", r[1], r[2]
    r = _latest(_S.label.get((key, label)), start)
    if r is not None and r[0] >= start - STALENESS_NS:
        return "latest", r[1], r[2]
    return "unresolved", None, None


def _is_generation(found: dict[str, Any]) -> bool:
    lf_type = found.get(LF_OBSERVATION_TYPE)
    if lf_type is not None:
        return bool(lf_type == GENERATION)
    if any(k in found for k in PRESENT):
        return True
    return any(found.get(k) == v for k, v in EQUALS.items())


def process_spans(resource_spans: Any) -> None:
    instance: str | None = None
    for ss in resource_spans.scope_spans:
        for span in ss.spans:
            attrs = span.attributes
            found: dict[str, Any] = {}
            for kv in attrs:
                k = kv.key
                if k in SCAN:
                    found[k] = kv.value.value if kv.value is not None else None
            key = found.get(PROMPT_KEY)
            if not isinstance(key, str) or not key:
                continue
            if LF_PROMPT_NAME in found or LF_META_RESOLUTION in found or not _is_generation(found):
                continue
            label = found.get(PROMPT_LABEL)
            label = label if isinstance(label, str) else ""
            if instance is None:
                instance = _instance(resource_spans.resource)
            tier, version, source = _resolve(bytes(span.trace_id), instance, key, label,
                                             span.start_time_unix_nano)
            attrs.append(KeyValue.new_string_value(LF_META_PROMPT_NAME, key))
            attrs.append(KeyValue.new_string_value(LF_META_PROMPT_LABEL, label))
            attrs.append(KeyValue.new_string_value(LF_META_RESOLUTION, tier))
            if source is not None:
                attrs.append(KeyValue.new_string_value(LF_META_SOURCE, source))
            if version is not None:
                attrs.append(KeyValue.new_string_value(LF_PROMPT_NAME, key))
                attrs.append(KeyValue.new_int_value(LF_PROMPT_VERSION, version))
            if LF_OBSERVATION_TYPE not in found:
                attrs.append(KeyValue.new_string_value(LF_OBSERVATION_TYPE, GENERATION))
