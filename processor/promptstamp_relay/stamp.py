"""Stamping generation spans (contract §3). Pure: an encoded request in, one out.

Nothing here does I/O or reads a clock: ``now_ns`` and the store are passed in, so the live
server, replay and the tests run exactly this code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import promptstamp_contract as c
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from . import wire
from .detect import GenerationRules, is_generation
from .resolve import ApiLookup, Resolution, SpanKey, has_trace_record, resolve_version
from .store import FetchLogStore

__all__ = [
    "HeldSpan",
    "StampOutcome",
    "StampSettings",
    "release_spans",
    "resource_instance",
    "stamp_bytes",
    "stamp_request",
    "stamp_span",
]

# A span with either is left exactly as it arrived: linked by the app, or stamped by a relay
# before (stamping twice must equal stamping once).
_ALREADY_LINKED = c.LF_PROMPT_NAME
_ALREADY_STAMPED = c.LF_META_RESOLUTION
_KEY_MARKER = c.PROMPT_KEY.encode()


@dataclass(frozen=True)
class StampSettings:
    rules: GenerationRules = field(default_factory=GenerationRules)
    prompt_names: Mapping[str, str] = field(default_factory=dict)
    staleness_ns: int = 3600 * 10**9
    hold_ns: int = 2 * 10**9

    def __post_init__(self) -> None:
        keys = self.rules.keys() | {c.PROMPT_KEY, c.PROMPT_LABEL, _ALREADY_LINKED, _ALREADY_STAMPED}
        object.__setattr__(self, "_scan_keys", frozenset(keys))
        ordered = sorted(keys)
        object.__setattr__(self, "_scan_key_pairs", (tuple(k.encode() for k in ordered), tuple(ordered)))
        markers = tuple(k.encode() for k in sorted(self.rules.keys()))
        object.__setattr__(self, "_generation_markers", markers)

    @property
    def scan_key_pairs(self) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        """:attr:`scan_keys` as (encoded, str) tuples, for the C attribute scan."""
        return self._scan_key_pairs  # type: ignore[attr-defined,no-any-return]

    @property
    def generation_markers(self) -> tuple[bytes, ...]:
        """Bytes any generation's encoding contains (one of them at least)."""
        return self._generation_markers  # type: ignore[attr-defined,no-any-return]

    @property
    def scan_keys(self) -> frozenset[str]:
        return self._scan_keys  # type: ignore[attr-defined,no-any-return]


@dataclass(slots=True)
class HeldSpan:
    """A generation span waiting for its fetch log, with what is needed to send it alone.

    The span is kept encoded (its bytes as they arrived): a decoded copy costs about four
    times as much memory (bench/README.md), and the hold window can be 100k spans deep.
    The resource and scope are decoded copies shared by every held span of one request.
    """

    span_bytes: bytes
    resource: Resource
    resource_schema_url: str
    scope: InstrumentationScope
    scope_schema_url: str
    key: SpanKey
    prompt_name: str
    has_type: bool
    arrival_ns: int

    @property
    def span(self) -> Span:
        """A decoded copy of the span (a new one each time)."""
        span = Span()
        span.ParseFromString(self.span_bytes)
        return span


@dataclass
class StampOutcome:
    """``payload``: the request to send now (encoded), None when every span in it was held."""

    payload: bytes | None = None
    held: list[HeldSpan] = field(default_factory=list)
    stamped: dict[str, int] = field(default_factory=dict)  # tier -> spans stamped now
    spans: int = 0


def resource_instance(resource: Resource) -> str:
    """``service.instance.id``, else ``service.name``, else ``""`` (contract §4)."""
    name = ""
    for kv in resource.attributes:
        if kv.key == c.SERVICE_INSTANCE_ID and kv.value.string_value:
            return str(kv.value.string_value)
        if kv.key == c.SERVICE_NAME:
            name = kv.value.string_value
    return name


def _scan(span: Span, keys: frozenset[str]) -> dict[str, object] | None:
    """The span's attributes that a rule looks at, or None when it carries no prompt key."""
    found: dict[str, object] = {}
    for kv in span.attributes:
        k = kv.key
        if k in keys:
            v = kv.value
            found[k] = v.string_value if v.WhichOneof("value") == "string_value" else v
    key = found.get(c.PROMPT_KEY)
    if not isinstance(key, str) or not key:
        return None
    return found


def _stamp_bytes(prompt_name: str, label: str, resolution: Resolution, has_type: bool) -> bytes:
    """The contract §3 attributes, encoded as a Span holding only them (field 9, repeated)."""
    extra = Span()
    attrs = extra.attributes

    def put(key: str, value: str) -> None:
        kv = attrs.add()
        kv.key = key
        kv.value.string_value = value

    put(c.LF_META_PROMPT_NAME, prompt_name)
    put(c.LF_META_PROMPT_LABEL, label)
    put(c.LF_META_RESOLUTION, resolution.tier)
    if resolution.source is not None:
        put(c.LF_META_SOURCE, resolution.source)
    if resolution.version is not None:
        put(c.LF_PROMPT_NAME, prompt_name)
        kv = attrs.add()
        kv.key = c.LF_PROMPT_VERSION
        kv.value.int_value = resolution.version
    if not has_type:
        put(c.LF_OBSERVATION_TYPE, c.OBSERVATION_TYPE_GENERATION)
    return bytes(extra.SerializeToString())


# Stamps repeat (few prompts, labels, versions): encode each once. Bounded; cleared when full.
_STAMP_CACHE: dict[tuple[str, str, Resolution, bool], bytes] = {}
_STAMP_CACHE_MAX = 4096


def stamp_bytes(prompt_name: str, label: str, resolution: Resolution, has_type: bool) -> bytes:
    """The encoded attributes :func:`stamp_span` appends (cached: stamps repeat)."""
    k = (prompt_name, label, resolution, has_type)
    encoded = _STAMP_CACHE.get(k)
    if encoded is None:
        if len(_STAMP_CACHE) >= _STAMP_CACHE_MAX:
            _STAMP_CACHE.clear()
        encoded = _STAMP_CACHE[k] = _stamp_bytes(prompt_name, label, resolution, has_type)
    return encoded


def stamp_span(
    span: Span, *, prompt_name: str, label: str, resolution: Resolution, has_type: bool
) -> None:
    """Add the contract §3 attributes. Only ever appends; the link pair goes together.

    Merging an encoded Span that holds only repeated ``attributes`` appends them after the
    span's own, in one call, leaving every other field as it was.
    """
    span.MergeFromString(stamp_bytes(prompt_name, label, resolution, has_type))


def stamp_request(
    encoded: bytes,
    request: ExportTraceServiceRequest,
    *,
    tenant: str,
    store: FetchLogStore,
    settings: StampSettings,
    now_ns: int,
    hold_capacity: int,
    api: ApiLookup | None = None,
) -> StampOutcome:
    """Stamp the generations of one request; take out those to hold. Bytes in, bytes out.

    ``request`` is ``encoded`` decoded (the caller validated it that way); it is only read.
    A generation with a ``trace``-tier record is stamped now. One without is held (removed
    from the payload, returned in ``held``) while ``hold_capacity`` allows and the hold window
    is not zero; otherwise it is stamped now with what the other tiers know. Every other span,
    and the order of the spans left, is untouched: the payload is ``encoded`` with stamped
    attributes appended to some spans and held spans cut out (see :mod:`.wire`).
    """
    out = StampOutcome()
    index: wire.RequestIndex | None
    try:
        index = wire.index_request(encoded)
    except wire.WireError:
        index = None
    flat: list[tuple[ResourceSpans, ScopeSpans, Span]] | None = None
    if index is not None:
        total = index.span_count
        # Generation markers first (a minority of spans), then the key within those only.
        generations = index.marked(encoded, settings.generation_markers)
        candidates = sorted(index.marked(encoded, (_KEY_MARKER,), among=generations))
    else:
        flat = _flatten(request)
        total = len(flat)
        candidates = list(range(total))
    out.spans = total
    if not candidates:
        out.payload = encoded
        return out
    native = False
    if index is not None:
        decoded = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
        if decoded != total:  # the walk and the decoder disagree: trust the decoder
            index = None
            flat = _flatten(request)
            out.spans = total = len(flat)
            candidates = list(range(total))
        else:
            native = wire.native()
    located: dict[int, tuple[ResourceSpans, ScopeSpans, Span]] = dict(enumerate(flat or ()))

    def locate(i: int) -> tuple[ResourceSpans, ScopeSpans, Span]:
        """The decoded span ``i`` (a wrapper per span is not free: only when needed)."""
        got = located.get(i)
        if got is None:
            assert index is not None
            r, sc, k = index.locate(i)
            rs = request.resource_spans[r]
            ss = rs.scope_spans[sc]
            got = located[i] = (rs, ss, ss.spans[k])
        return got

    keys = settings.scan_keys
    key_pairs = settings.scan_key_pairs
    rules = settings.rules
    edits: dict[int, bytes] = {}
    instances: dict[int, str] = {}
    resources: dict[int, Resource] = {}
    scopes: dict[int, InstrumentationScope] = {}
    for i in candidates:
        scanned = wire.scan_span(encoded, index, i, key_pairs) if native and index is not None else None
        if scanned is not None:
            # Read from the span's bytes in C: no decoded wrappers for spans that are stamped.
            found_raw, trace_id, start_ns = scanned
            key_v = found_raw.get(c.PROMPT_KEY)
            found = found_raw if isinstance(key_v, str) and key_v else None
            r_index = index.locate(i)[0] if index is not None else 0
        else:
            rs, _ss, span = locate(i)
            found = _scan(span, keys)
            trace_id, start_ns = span.trace_id, span.start_time_unix_nano
            r_index = -1 - id(rs)  # a key for the instance cache that cannot clash with an index
        if (
            found is None
            or _ALREADY_LINKED in found
            or _ALREADY_STAMPED in found
            or not is_generation(found, rules)
        ):
            continue
        key = str(found[c.PROMPT_KEY])
        label_v = found.get(c.PROMPT_LABEL)
        label = label_v if isinstance(label_v, str) else ""
        instance = instances.get(r_index)
        if instance is None:
            rs = request.resource_spans[r_index] if r_index >= 0 else locate(i)[0]
            instance = instances[r_index] = resource_instance(rs.resource)
        skey = SpanKey(tenant, key, label, trace_id, instance, start_ns)
        name = settings.prompt_names.get(key, key)
        has_type = c.LF_OBSERVATION_TYPE in found
        if settings.hold_ns > 0 and len(out.held) < hold_capacity and not has_trace_record(store, skey):
            # Copies: the decoded request is dropped once this call returns.
            rs, ss, span = locate(i)
            held = (
                encoded[index.span_starts[i]:index.span_ends[i]]
                if index is not None
                else span.SerializeToString()
            )
            resource = resources.get(id(rs))
            if resource is None:
                resource = resources[id(rs)] = Resource()
                resource.CopyFrom(rs.resource)
            scope = scopes.get(id(ss))
            if scope is None:
                scope = scopes[id(ss)] = InstrumentationScope()
                scope.CopyFrom(ss.scope)
            out.held.append(
                HeldSpan(held, resource, rs.schema_url, scope, ss.schema_url, skey, name, has_type, now_ns)
            )
            edits[i] = wire.DELETE
            continue
        res = resolve_version(store, skey, prompt_name=name, staleness_ns=settings.staleness_ns, api=api)
        edits[i] = stamp_bytes(name, label, res, has_type)
        out.stamped[res.tier] = out.stamped.get(res.tier, 0) + 1
    if len(out.held) == total:
        return out  # everything held: nothing to send now
    if index is not None:
        out.payload = wire.splice(encoded, index, edits)
        return out
    # Fallback (the byte walk failed where the decoder did not): edit the decoded message.
    if not edits:
        out.payload = encoded
        return out
    emptied: set[int] = set()
    for i in sorted(edits, reverse=True):
        _rs, ss, span = located[i]
        if edits[i] is wire.DELETE:
            for j in range(len(ss.spans)):
                if ss.spans[j] == span:
                    del ss.spans[j]
                    break
            if not ss.spans:
                emptied.add(id(ss))
        else:
            span.MergeFromString(edits[i])
    _drop_emptied(request, emptied)
    out.payload = request.SerializeToString()
    return out


def _flatten(request: ExportTraceServiceRequest) -> list[tuple[ResourceSpans, ScopeSpans, Span]]:
    return [(rs, ss, sp) for rs in request.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def _drop_emptied(request: ExportTraceServiceRequest, emptied: set[int]) -> None:
    """Remove the scopes this call emptied, and resources left with none (as ``wire.splice``)."""
    if not emptied:
        return
    for r in range(len(request.resource_spans) - 1, -1, -1):
        rs = request.resource_spans[r]
        had = len(rs.scope_spans)
        for s in range(had - 1, -1, -1):
            if id(rs.scope_spans[s]) in emptied:
                del rs.scope_spans[s]
        if had and not rs.scope_spans:
            del request.resource_spans[r]


def release_spans(
    held: Iterable[HeldSpan],
    *,
    store: FetchLogStore,
    settings: StampSettings,
    api: ApiLookup | None = None,
    stamped: dict[str, int] | None = None,
) -> ExportTraceServiceRequest:
    """Resolve held spans with every tier now and pack them into one request.

    Spans keep their arrival order; those that shared a resource and scope share them again.
    """
    request = ExportTraceServiceRequest()
    groups: dict[tuple[bytes, str, bytes, str], ScopeSpans] = {}
    for h in held:
        res = resolve_version(
            store, h.key, prompt_name=h.prompt_name, staleness_ns=settings.staleness_ns, api=api
        )
        span = h.span
        stamp_span(
            span, prompt_name=h.prompt_name, label=h.key.label, resolution=res,
            has_type=h.has_type,
        )
        if stamped is not None:
            stamped[res.tier] = stamped.get(res.tier, 0) + 1
        gk = (
            h.resource.SerializeToString(deterministic=True), h.resource_schema_url,
            h.scope.SerializeToString(deterministic=True), h.scope_schema_url,
        )
        ss = groups.get(gk)
        if ss is None:
            rs = request.resource_spans.add()
            rs.resource.CopyFrom(h.resource)
            rs.schema_url = h.resource_schema_url
            ss = groups[gk] = rs.scope_spans.add()
            ss.scope.CopyFrom(h.scope)
            ss.schema_url = h.scope_schema_url
        ss.spans.append(span)
    return request
