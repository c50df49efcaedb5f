"""The fetch log as the relay sees it: one :class:`FetchRecord` per prompt an app was handed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from opentelemetry.proto.resource.v1.resource_pb2 import Resource

import promptstamp_contract as c

__all__ = [
    "DEFAULT_TENANT",
    "FetchRecord",
    "GenerationRecord",
    "UnresolvedReason",
    "resource_instance",
    "resource_service",
]

DEFAULT_TENANT = "default"


def resource_instance(resource: Resource) -> str:
    """``service.instance.id``, else ``service.name``, else ``""`` (contract §4)."""
    name = ""
    for kv in resource.attributes:
        if kv.key == c.SERVICE_INSTANCE_ID and kv.value.string_value:
            return str(kv.value.string_value)
        if kv.key == c.SERVICE_NAME:
            name = kv.value.string_value
    return name


def resource_service(resource: Resource) -> str:
    """``service.name``, else ``""``."""
    name = ""
    for kv in resource.attributes:
        if kv.key == c.SERVICE_NAME:
            name = kv.value.string_value
    return str(name)


# Not ``frozen``: a frozen dataclass sets every field through ``object.__setattr__`` (2.6 µs for
# 18 fields against 0.3 µs), and the relay builds one record per fetch and per generation on its
# hot path. Records are still values: nothing mutates one after it is built, and they hash by field.
@dataclass(slots=True, unsafe_hash=True)
class FetchRecord:
    """One ``app.prompt.fetch`` log record (contract §2), already validated.

    ``version`` is ``None`` only for ``fallback`` records, which resolve nothing.
    ``trace_id`` is empty when no span was active at fetch time. ``instance`` is the resource's
    ``service.instance.id``, else its ``service.name``, else ``""``; ``service`` its ``service.name``.
    The record came from a log record or from an ``app.prompt.fetch`` span event (contract §2).
    """

    key: str
    label: str
    version: int | None
    source: str
    time_ns: int
    trace_id: bytes
    span_id: bytes
    instance: str
    error_type: str | None = None
    service: str = ""


#: Why a generation ended unresolved (the metric ``promptstamp_unresolved_total{reason}``, the
#: replay summary and ``promptstamp.testing.assert_all_linked`` all use these words):
#: ``no_fetch_record``: no usable record for its key and label in its trace, instance or tenant;
#: ``fallback_only``: only records with source ``fallback`` (a code-embedded prompt, no version);
#: ``hold_expired``: it was held for its trace's record and released without one;
#: ``trace_record_missing``: its prompt's records arrive on fetch spans, so its trace's own record
#: is on its way or lost, and it could not be held for it (hold window full or off): the lower
#: tiers, which would guess from other traces, are not asked.
#: ``convention_version_not_int`` / ``convention_name_not_mapped``: a span with no prompt key whose
#: claim in another convention (``core/conventions.py``) cannot be linked: a version that is no
#: positive integer (a hash, ``v1``), an OpenInference ``prompt.id`` the config does not map.
UnresolvedReason = Literal["no_fetch_record", "fallback_only", "hold_expired", "trace_record_missing",
                           "convention_version_not_int", "convention_name_not_mapped"]


@dataclass(slots=True, unsafe_hash=True)
class GenerationRecord:
    """One generation span as the relay stamped it (contract §3), for observers: per-version
    metrics, the label timeline, replay summaries and test assertions."""

    tenant: str
    trace_id: bytes
    span_id: bytes
    span_name: str
    key: str
    label: str
    prompt_name: str
    version: int | None  # the resolved version; None when unresolved
    resolution: str  # the tier that answered, or ``unresolved``
    source: str | None  # the answering fetch record's ``app.prompt.fetch.source``
    reason: UnresolvedReason | None  # why unresolved; None when resolved
    instance: str
    service: str
    start_ns: int
    end_ns: int
    error: bool  # span status ERROR
    input_tokens: int | None
    output_tokens: int | None
