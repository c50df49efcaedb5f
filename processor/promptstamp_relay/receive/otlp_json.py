"""OTLP/JSON request bodies ↔ protobuf, for all three signals (the OTLP/HTTP JSON encoding).

The OTLP/JSON rules that differ from protobuf's canonical JSON mapping: trace and span ids
are hex strings (not base64), keys are lowerCamelCase (the proto field names are accepted
too), enums may be integers, 64-bit integers strings or numbers, and unknown fields are
ignored. A request body becomes the protobuf bytes admission takes (:func:`to_protobuf`);
a response message becomes JSON (:func:`to_json`); :func:`ids_to_hex` turns the base64 ids of
``json_format.MessageToDict`` output into hex (the file exporter writes metrics with it).

Pure functions; called on receiver threads and delivery workers.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterator
from typing import Any, Literal

from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

__all__ = ["JsonBodyError", "Signal", "ids_to_hex", "to_json", "to_protobuf"]

Signal = Literal["traces", "logs", "metrics"]

_REQUESTS: dict[str, Callable[[], Message]] = {
    "traces": ExportTraceServiceRequest,
    "logs": ExportLogsServiceRequest,
    "metrics": ExportMetricsServiceRequest,
}
_ID_LENGTHS = {"traceId": 16, "trace_id": 16, "spanId": 8, "span_id": 8,
               "parentSpanId": 8, "parent_span_id": 8}
_METRIC_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram", "summary")


class JsonBodyError(ValueError):
    """A body that is not an OTLP/JSON request of its signal; the message says why (no values)."""


def _items(node: Any, *keys: str) -> Iterator[dict[str, Any]]:
    """The dict elements of the list under the first of ``keys`` that ``node`` has."""
    if not isinstance(node, dict):
        return
    for key in keys:
        value = node.get(key)
        if isinstance(value, list):
            yield from (x for x in value if isinstance(x, dict))
            return


def _id_holders(signal: str, doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every object of an OTLP/JSON request that may carry trace / span ids."""
    if signal == "traces":
        for rs in _items(doc, "resourceSpans", "resource_spans"):
            for ss in _items(rs, "scopeSpans", "scope_spans"):
                for span in _items(ss, "spans"):
                    yield span
                    yield from _items(span, "links")
    elif signal == "logs":
        for rl in _items(doc, "resourceLogs", "resource_logs"):
            for sl in _items(rl, "scopeLogs", "scope_logs"):
                yield from _items(sl, "logRecords", "log_records")
    else:
        for rm in _items(doc, "resourceMetrics", "resource_metrics"):
            for sm in _items(rm, "scopeMetrics", "scope_metrics"):
                for metric in _items(sm, "metrics"):
                    for kind in _METRIC_KINDS:
                        for point in _items(metric.get(kind), "dataPoints", "data_points"):
                            yield from _items(point, "exemplars")


def _hex_to_b64(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise JsonBodyError(f"{name} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise JsonBodyError(f"{name} is not a hex string") from None
    if len(raw) != _ID_LENGTHS[name]:
        raise JsonBodyError(f"{name} must be {_ID_LENGTHS[name]} bytes ({2 * _ID_LENGTHS[name]} hex digits), "
                            f"got {len(raw)}")
    return base64.b64encode(raw).decode("ascii")


def to_protobuf(signal: Signal, body: bytes) -> bytes:
    """An OTLP/JSON request body as protobuf bytes of the signal's Export*ServiceRequest."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise JsonBodyError(f"not JSON: {e}") from None
    except RecursionError:
        raise JsonBodyError("not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise JsonBodyError("an OTLP/JSON request is a JSON object")
    for holder in _id_holders(signal, doc):
        for name in _ID_LENGTHS:
            value = holder.get(name)
            if value is not None and value != "":
                holder[name] = _hex_to_b64(name, value)
    message = _REQUESTS[signal]()
    try:
        json_format.ParseDict(doc, message, ignore_unknown_fields=True)
    except RecursionError:
        raise JsonBodyError("not OTLP/JSON: nested too deeply") from None
    except (json_format.ParseError, AttributeError, TypeError, ValueError, binascii.Error) as e:
        raise JsonBodyError(f"not OTLP/JSON: {e}") from None
    return bytes(message.SerializeToString())


def ids_to_hex(signal: Signal, doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (``MessageToDict`` of a request, camelCase) with its base64 ids as hex, in place."""
    for holder in _id_holders(signal, doc):
        for name in _ID_LENGTHS:
            value = holder.get(name)
            if isinstance(value, str) and value:
                holder[name] = base64.b64decode(value).hex()
    return doc


def to_json(message: Message) -> bytes:
    """A response (``Export*ServiceResponse`` or ``google.rpc.Status``) as compact OTLP/JSON."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
