"""Stamping generation spans (contract §3). Pure: an encoded request in, one out.

Nothing here does I/O or reads a clock: ``now_ns`` and the resolver are passed in, so the live
server, replay and the tests run exactly this code (called by the processor, under the relay's
processing lock). The request's bytes are walked to its spans (:mod:`.wire`); only candidate
spans are scanned; the output is the input with stamps appended and held spans cut out
(:func:`.wire.splice`, the one definition of that edit).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import Literal, NamedTuple, TypeVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ScopeSpans, Span, Status

import promptstamp_contract as c
from promptstamp_contract.langfuse_typing import (
    LINK_KEYS,
    OBJECT_PROTOTYPE,
    POISON_KEYS,
    GenerationRules,
    Poison,
    is_generation,
    poison,
)

from .. import wire
from . import conventions
from .conventions import Claim
from .model import GenerationRecord, resource_instance, resource_service
from .resolve import Resolution, Resolver, SpanKey

__all__ = [
    "POISON_ACTIONS",
    "Conflict",
    "HeldSpan",
    "PoisonSpan",
    "StampOutcome",
    "StampSettings",
    "Stamped",
    "generation_record",
    "release_spans",
    "resource_instance",
    "span_id_of",
    "stamp_bytes",
    "stamp_request",
    "stamp_span",
]

# A span stamped by a relay before is left exactly as it arrived (stamping twice must equal
# stamping once), like one Langfuse already links (any of detect.LINK_KEYS: already_linked).
_ALREADY_STAMPED = c.LF_META_RESOLUTION
_TYPING_CACHE_MAX = 4096
_MISS = object()
#: What :meth:`StampSettings.judge` says of a span to stamp: prompt key, label, prompt name,
#: whether it has a ``langfuse.observation.type`` already, and whether it gets the portable link
#: (``stamp.semconv_link`` on and no ``gen_ai.prompt.*`` of its own).
Verdict = tuple[str, str, str, bool, bool]
#: What :meth:`StampSettings.convention_verdict` says of a span with no prompt key that claims a
#: prompt in another convention: the claim, has a type, gets the portable link.
ConventionVerdict = tuple[Claim, bool, bool]
_INPUT_TOKENS = (c.GEN_AI_USAGE_INPUT_TOKENS, c.GEN_AI_USAGE_PROMPT_TOKENS, c.LLM_TOKEN_COUNT_PROMPT)
_OUTPUT_TOKENS = (
    c.GEN_AI_USAGE_OUTPUT_TOKENS, c.GEN_AI_USAGE_COMPLETION_TOKENS, c.LLM_TOKEN_COUNT_COMPLETION
)
#: What a GenerationRecord reads of a span that was not scanned at arrival (a released one).
_RECORD_KEYS = wire.ScanKeys(frozenset({c.PROMPT_KEY}), frozenset(), (), (_INPUT_TOKENS, _OUTPUT_TOKENS))


@dataclass(frozen=True)
class StampSettings:
    rules: GenerationRules = field(default_factory=GenerationRules)
    prompt_names: Mapping[str, str] = field(default_factory=dict)
    staleness_ns: int = 3600 * 10**9
    hold_ns: int = 2 * 10**9
    #: OpenInference ``prompt.id`` → prompt name (``conventions.openinference_prompts``)
    convention_names: Mapping[str, str] = field(default_factory=dict)
    #: ``stamp.semconv_link``: also write ``gen_ai.prompt.name`` / ``.version`` (never to Langfuse)
    semconv_link: bool = False
    #: send a span on which Langfuse's type mapper throws, and that no added type defuses, in a
    #: request of its own (off only when exporting to a collector, which batches spans again)
    isolate_poison: bool = True

    def __post_init__(self) -> None:
        marker_keys = self.rules.marker_keys()
        keys = (self.rules.keys() | marker_keys | {c.PROMPT_KEY, c.PROMPT_LABEL, _ALREADY_STAMPED}
                | conventions.KEYS)
        ordered = tuple(sorted(keys))
        object.__setattr__(self, "_scan_key_pairs", (tuple(k.encode() for k in ordered), ordered))
        object.__setattr__(self, "_marker_keys", marker_keys)
        # Candidates: a prompt key (ours, or another convention's name key) and one of the keys
        # every generation carries (whole keys): one native pass finds both kinds.
        # And, in the same pass, the spans Langfuse's type mapper may throw on (poison).
        scan = wire.ScanKeys(frozenset({c.PROMPT_KEY}) | conventions.NAME_KEYS, marker_keys, ordered,
                             (_INPUT_TOKENS, _OUTPUT_TOKENS), c.FETCH_EVENT_NAME,
                             POISON_KEYS, OBJECT_PROTOTYPE)
        object.__setattr__(self, "_scan_keys", scan)
        object.__setattr__(self, "_typing", {})

    @property
    def scan_key_pairs(self) -> tuple[tuple[bytes, ...], tuple[str, ...]]:
        """Every attribute key stamping looks at, as (encoded, str) tuples for the scan."""
        return self._scan_key_pairs  # type: ignore[attr-defined,no-any-return]

    @property
    def scan_keys(self) -> wire.ScanKeys:
        """What :func:`.wire.scan_spans` looks for: candidate spans, their keys and token counts."""
        return self._scan_keys  # type: ignore[attr-defined,no-any-return]

    def judge(self, found: tuple[tuple[str, object], ...], scope: tuple[str, str], span_name: str,
              language: str) -> Verdict | None:
        """Whether to stamp a span with these scanned attributes (``found``, as
        :func:`.wire.scan_spans` gives them), in this scope, with this name, from an SDK of this
        language: (prompt key, label, prompt name, has a type already), or None. It must carry a
        prompt key, not be stamped or linked yet, and be a generation to Langfuse (§3)."""
        attrs = dict(found)
        key = attrs.get(c.PROMPT_KEY)
        if not isinstance(key, str) or not key or _ALREADY_STAMPED in attrs:
            return None  # no prompt key, or stamped by a relay before: left as it arrived
        if not LINK_KEYS.isdisjoint(attrs):
            return None  # already linked: left as it arrived
        if self._marker_keys.isdisjoint(attrs):  # type: ignore[attr-defined]
            return None  # every generation carries one of these keys
        if not is_generation(attrs, self.rules, scope_name=scope[0], scope_version=scope[1],
                             span_name=span_name, sdk_language=language):
            return None
        label = attrs.get(c.PROMPT_LABEL)
        return key, label if isinstance(label, str) else "", self.prompt_names.get(key, key), \
            c.LF_OBSERVATION_TYPE in attrs, self._portable(attrs)

    def _portable(self, attrs: Mapping[str, object]) -> bool:
        return self.semconv_link and c.GEN_AI_PROMPT_NAME not in attrs \
            and c.GEN_AI_PROMPT_VERSION not in attrs

    def convention_verdict(self, found: tuple[tuple[str, object], ...], scope: tuple[str, str],
                           span_name: str, language: str) -> ConventionVerdict | None:
        """For a span with no prompt key: the prompt it claims in another convention, if it is a
        generation to Langfuse, not linked and not stamped yet (remembered per distinct input)."""
        cache: dict[tuple[object, ...], ConventionVerdict | None] = self._typing  # type: ignore[attr-defined]
        k = ("convention", found, scope, span_name, language)
        got = cache.get(k, _MISS)
        if got is _MISS:
            got = None
            attrs = dict(found)
            if (c.PROMPT_KEY not in attrs and _ALREADY_STAMPED not in attrs and LINK_KEYS.isdisjoint(attrs)
                    and not self._marker_keys.isdisjoint(attrs)  # type: ignore[attr-defined]
                    and is_generation(attrs, self.rules, scope_name=scope[0], scope_version=scope[1],
                                      span_name=span_name, sdk_language=language)):
                found_claim = conventions.claim(attrs, self.convention_names)
                if found_claim is not None:
                    got = (found_claim, c.LF_OBSERVATION_TYPE in attrs, self._portable(attrs))
            if len(cache) >= _TYPING_CACHE_MAX:
                cache.clear()
            cache[k] = got
        return got  # type: ignore[return-value]

    def linked(self, found: tuple[tuple[str, object], ...]) -> tuple[str, str, str, object] | None:
        """(prompt key, label, linked prompt name, linked version) of a span that carries a
        prompt key and Langfuse's own link pair; None otherwise."""
        attrs = dict(found)
        key = attrs.get(c.PROMPT_KEY)
        name = attrs.get(c.LF_PROMPT_NAME, attrs.get(c.LF_LEGACY_PROMPT_NAME))
        if not isinstance(key, str) or not key or not isinstance(name, str):
            return None
        version = attrs.get(c.LF_PROMPT_VERSION, attrs.get(c.LF_LEGACY_PROMPT_VERSION))
        label = attrs.get(c.PROMPT_LABEL)
        return key, label if isinstance(label, str) else "", name, version

    def judged(self, found: tuple[tuple[str, object], ...], scope: tuple[str, str], span_name: str,
               language: str) -> Verdict | None:
        """:meth:`judge`, remembered per distinct input (spans of one instrumentation repeat it:
        the typing table runs once for them). Bounded."""
        cache: dict[tuple[object, ...], Verdict | None] = self._typing  # type: ignore[attr-defined]
        k = (found, scope, span_name, language)
        got = cache.get(k, _MISS)
        if got is _MISS:
            if len(cache) >= _TYPING_CACHE_MAX:
                cache.clear()
            got = cache[k] = self.judge(found, scope, span_name, language)
        return got  # type: ignore[return-value]


@dataclass(slots=True)
class HeldSpan:
    """A generation span waiting for its fetch log, with what is needed to send it alone.

    The span is kept encoded (its bytes as they arrived): a decoded copy costs about four
    times as much memory (bench/README.md), and the hold window can be 100k spans deep.
    The resource and scope are decoded copies shared by every held span of one container.
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
    service: str = ""
    portable: bool = False

    @property
    def span(self) -> Span:
        """A decoded copy of the span (a new one each time)."""
        span = Span()
        span.ParseFromString(self.span_bytes)
        return span


class Conflict(NamedTuple):
    """A generation that arrived already linked (left as it arrived, contract §3) while its
    trace's fetch record names another prompt version than its link."""

    tenant: str
    trace_id: bytes
    span_id: bytes
    key: str
    label: str
    linked_name: str
    linked_version: object
    evidence_version: int
    service: str


#: What the relay did with a poison span: added the type Langfuse gives it otherwise (``typed``),
#: sent it in an export request of its own (``isolated``), or, exporting to a collector, sent it
#: on as it came (``forwarded``).
PoisonAction = Literal["typed", "isolated", "forwarded"]
POISON_ACTIONS: tuple[PoisonAction, ...] = ("typed", "isolated", "forwarded")


class PoisonSpan(NamedTuple):
    """A span on which Langfuse's type mapper throws (:class:`~promptstamp_contract.langfuse_typing.Poison`),
    and what the relay did: ``action``, and ``added`` (the ``langfuse.observation.type`` value it
    added, for ``typed``: the stamp's ``generation`` on a generation it stamps)."""

    tenant: str
    trace_id: bytes
    span_id: bytes
    service: str
    span_name: str
    poison: Poison
    action: PoisonAction
    added: str | None


class Stamped(NamedTuple):
    """One generation stamped: its key, what it was stamped with, and what observers are told
    of its span: the arrival scan (``scanned``), else its bytes (decoded only for observers)."""

    key: SpanKey
    resolution: Resolution
    prompt_name: str
    service: str
    scanned: wire.Candidate | None
    span_bytes: bytes = b""


@dataclass
class StampOutcome:
    """``payload``: the request to send now (encoded), None when every span in it was held."""

    spans: int
    payload: bytes | None = None
    held: list[HeldSpan] = field(default_factory=list)
    stamped: list[Stamped] = field(default_factory=list)
    overflow: int = 0  # generations stamped at once because the hold window was full
    conflicts: list[Conflict] = field(default_factory=list)  # linked already, evidence disagrees
    poison: list[PoisonSpan] = field(default_factory=list)
    #: requests of one poison span each (cut from ``payload``), to send on their own
    isolated: list[bytes] = field(default_factory=list)


def _stamp_bytes(prompt_name: str, label: str, resolution: Resolution, has_type: bool, portable: bool,
                 metadata: tuple[tuple[str, str], ...]) -> bytes:
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
    for key, value in metadata:
        put(key, value)
    if resolution.version is not None:
        put(c.LF_PROMPT_NAME, prompt_name)
        kv = attrs.add()
        kv.key = c.LF_PROMPT_VERSION
        kv.value.int_value = resolution.version
        if portable:  # the GenAI conventions' names: the version as a decimal string (contract §3)
            put(c.GEN_AI_PROMPT_NAME, prompt_name)
            put(c.GEN_AI_PROMPT_VERSION, str(resolution.version))
    if not has_type:
        put(c.LF_OBSERVATION_TYPE, c.OBSERVATION_TYPE_GENERATION)
    return bytes(extra.SerializeToString())


# Stamps repeat (few prompts, labels, versions): encode each once. Bounded; cleared when full.
_STAMP_CACHE: dict[tuple[object, ...], bytes] = {}
_STAMP_CACHE_MAX = 4096


def stamp_bytes(prompt_name: str, label: str, resolution: Resolution, has_type: bool, portable: bool = False,
                extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The encoded attributes :func:`stamp_span` appends (cached: stamps repeat). ``portable``:
    add ``gen_ai.prompt.name`` / ``.version`` with the link; ``extra``: more metadata pairs."""
    k = (prompt_name, label, resolution.tier, resolution.version, resolution.source, has_type, portable,
         extra)
    encoded = _STAMP_CACHE.get(k)
    if encoded is None:
        if len(_STAMP_CACHE) >= _STAMP_CACHE_MAX:
            _STAMP_CACHE.clear()
        encoded = _STAMP_CACHE[k] = _stamp_bytes(prompt_name, label, resolution, has_type, portable, extra)
    return encoded


def _type_bytes(value: str) -> bytes:
    """``langfuse.observation.type: value``, encoded as a Span holding only it (a splice edit)."""
    extra = Span()
    kv = extra.attributes.add()
    kv.key = c.LF_OBSERVATION_TYPE
    kv.value.string_value = value
    return bytes(extra.SerializeToString())


def stamp_span(span: Span, *, prompt_name: str, label: str, resolution: Resolution, has_type: bool,
               portable: bool = False) -> None:
    """Add the contract §3 attributes. Only ever appends; the link pair goes together.

    Merging an encoded Span that holds only repeated ``attributes`` appends them after the
    span's own, in one call, leaving every other field as it was.
    """
    span.MergeFromString(stamp_bytes(prompt_name, label, resolution, has_type, portable))


_M = TypeVar("_M", Resource, InstrumentationScope)


class _Containers:
    """The decoded resources and scopes of one request, read once each when a span needs them."""

    def __init__(self, request: ExportTraceServiceRequest, index: wire.RequestIndex) -> None:
        self.request, self.index = request, index
        self._resources: dict[int, tuple[str, str, str]] = {}  # instance, service, SDK language
        self._copies: dict[tuple[int, int], Resource | InstrumentationScope] = {}  # (r, -1): resource
        self._scopes: dict[tuple[int, int], tuple[str, str]] = {}

    def who(self, r: int) -> tuple[str, str, str]:
        """(instance, service, ``telemetry.sdk.language``) of resource_spans ``r``."""
        got = self._resources.get(r)
        if got is None:
            res = self.request.resource_spans[r].resource
            language = next((kv.value.string_value for kv in res.attributes
                             if kv.key == c.TELEMETRY_SDK_LANGUAGE), "")
            got = self._resources[r] = (resource_instance(res), resource_service(res), str(language))
        return got

    def scope(self, r: int, s: int) -> tuple[str, str]:
        """(name, version) of the scope of scope_spans ``s`` of resource_spans ``r``."""
        got = self._scopes.get((r, s))
        if got is None:
            scope = self.request.resource_spans[r].scope_spans[s].scope
            got = self._scopes[(r, s)] = (str(scope.name), str(scope.version))
        return got

    def hold(self, data: bytes, i: int, key: SpanKey, name: str, has_type: bool, now_ns: int,
             portable: bool = False) -> HeldSpan:
        """Span ``i`` as a HeldSpan: its bytes, copies of its resource and scope (the decoded
        request is dropped once stamping returns)."""
        r, s, _ = self.index.locate(i)
        rs = self.request.resource_spans[r]
        ss: ScopeSpans = rs.scope_spans[s]
        resource = self._copy((r, -1), rs.resource, Resource)
        scope = self._copy((r, s), ss.scope, InstrumentationScope)
        span_bytes = data[self.index.span_starts[i]:self.index.span_ends[i]]
        return HeldSpan(span_bytes, resource, rs.schema_url, scope, ss.schema_url, key, name, has_type,
                        now_ns, self.who(r)[1], portable)

    def alone(self, data: bytes, i: int) -> bytes:
        """Span ``i`` in a request of its own, with its resource and scope (and schema URLs)."""
        r, s, _ = self.index.locate(i)
        rs = self.request.resource_spans[r]
        ss: ScopeSpans = rs.scope_spans[s]
        out = ExportTraceServiceRequest()
        ors = out.resource_spans.add()
        ors.resource.CopyFrom(rs.resource)
        ors.schema_url = rs.schema_url
        oss = ors.scope_spans.add()
        oss.scope.CopyFrom(ss.scope)
        oss.schema_url = ss.schema_url
        oss.spans.add().MergeFromString(data[self.index.span_starts[i]:self.index.span_ends[i]])
        return bytes(out.SerializeToString())

    def poison(self, data: bytes, i: int) -> tuple[Poison, Span] | None:
        """Span ``i``'s :class:`Poison` (judged on its decoded values, as Langfuse reads them:
        the last of a key wins), with the decoded span; None when Langfuse does not throw on it."""
        span = Span.FromString(data[self.index.span_starts[i]:self.index.span_ends[i]])
        r, s, _ = self.index.locate(i)
        scope_name, scope_version = self.scope(r, s)
        found = poison({kv.key: kv.value for kv in span.attributes}, scope_name=scope_name,
                       scope_version=scope_version, span_name=span.name, sdk_language=self.who(r)[2])
        return None if found is None else (found, span)

    def _copy(self, where: tuple[int, int], message: _M, kind: type[_M]) -> _M:
        """One copy per container, shared by its held spans."""
        got = self._copies.get(where)
        if got is None:
            got = self._copies[where] = kind()
            got.CopyFrom(message)
        assert isinstance(got, kind)
        return got


def _with_number(found_claim: Claim, span_bytes: bytes) -> Claim:
    """A claim whose version the scan saw only as "not a string" (an OTLP int): read it."""
    if found_claim.raw_version is not True:
        return found_claim
    value: object = None
    for kv in Span.FromString(span_bytes).attributes:
        if kv.key == found_claim.convention.version_key:
            which = kv.value.WhichOneof("value")
            value = getattr(kv.value, which) if which else None
    version = conventions.parse_version(value)
    reason = found_claim.reason if version is None else None
    return Claim(found_claim.convention, found_claim.prompt_name, version, value, reason)


def _resolve_claim(resolver: Resolver, key: SpanKey, found_claim: Claim
                   ) -> tuple[SpanKey, Resolution, tuple[tuple[str, str], ...]]:
    """A convention's claim, decided (contract §3): its trace's fetch record for that prompt,
    where there is one, decides (a different version is recorded as ``prompt_conflict``); else the
    claim's own positive integer version; else unresolved with why."""
    if found_claim.reason == "convention_name_not_mapped":
        return key, Resolution(c.TIER_UNRESOLVED, reason="convention_name_not_mapped"), (
            (c.LF_META_REASON, f"{found_claim.convention.name_key}={found_claim.prompt_name!s} is not mapped "
                               "to a prompt name (conventions.openinference_prompts)"),)
    evidence = resolver.convention_evidence(key)
    if evidence is not None:
        version, label, source = evidence
        key = key._replace(label=label)
        extra: tuple[tuple[str, str], ...] = ()
        if found_claim.version != version:
            extra = ((c.LF_META_CONFLICT,
                      f"{found_claim.convention.version_key}={found_claim.raw_version!s}; the trace's fetch "
                      f"record says {version}"),)
        return key, Resolution(c.TIER_CONVENTION, version, source), extra
    if found_claim.version is not None:
        return key, Resolution(c.TIER_CONVENTION, found_claim.version), ()
    return key, Resolution(c.TIER_UNRESOLVED, reason="convention_version_not_int"), (
        (c.LF_META_REASON, f"{found_claim.convention.version_key}={found_claim.raw_version!s} is not a "
                           "positive integer version"),)


def _linked_version(span_bytes: bytes) -> object:
    """The version of a span's own Langfuse link (decoded: the scan notes only the key)."""
    value: object = None
    for kv in Span.FromString(span_bytes).attributes:
        if kv.key in (c.LF_PROMPT_VERSION, c.LF_LEGACY_PROMPT_VERSION) and value is None:
            which = kv.value.WhichOneof("value")
            value = getattr(kv.value, which) if which else None
    return value


def _has_link(found: tuple[tuple[str, object], ...]) -> bool:
    return any(k == c.LF_PROMPT_NAME or k == c.LF_LEGACY_PROMPT_NAME for k, _ in found)


def _generations(
    scan: wire.Scan, settings: StampSettings, spans: _Containers, tenant: str,
    linked: list[tuple[SpanKey, str, wire.Candidate, str, object]],
    claimed: list[tuple[int, SpanKey, ConventionVerdict, str, wire.Candidate]],
) -> Iterator[tuple[int, SpanKey, str, bool, bool, str, wire.Candidate]]:
    """(span index, key, prompt name, has a type already, service, its scan) of every span to
    stamp (:meth:`StampSettings.judge`). The candidates are the scan's (a prompt key and a
    generation marker key, whole keys); their scanned attributes decide. Candidates that carry
    a prompt key and Langfuse's link already go to ``linked`` (key, service, scan, linked name
    and version), to be checked against their trace's evidence."""
    context: dict[tuple[int, int], tuple[str, str, str, tuple[str, str]]] = {}
    judged = settings.judged
    for cand in scan.candidates:
        where = (cand[1], cand[2])
        ctx = context.get(where)
        if ctx is None:
            ctx = context[where] = (*spans.who(where[0]), spans.scope(*where))
        instance, service, language, scope = ctx
        verdict = judged(cand[3], scope, cand[6], language)
        if verdict is None:
            link = settings.linked(cand[3]) if _has_link(cand[3]) else None
            if link is not None:
                linked.append((SpanKey(tenant, link[0], link[1], cand[4], instance, cand[5]), service, cand,
                               link[2], link[3]))
                continue
            conv = settings.convention_verdict(cand[3], scope, cand[6], language)
            if conv is not None:
                claimed.append((cand[0], SpanKey(tenant, conv[0].prompt_name, "", cand[4], instance, cand[5]),
                                conv, service, cand))
        else:
            key, label, name, has_type, portable = verdict
            skey = SpanKey(tenant, key, label, cand[4], instance, cand[5])
            yield cand[0], skey, name, has_type, portable, service, cand


def stamp_request(
    data: bytes,
    index: wire.RequestIndex,
    request: ExportTraceServiceRequest,
    *,
    tenant: str,
    resolver: Resolver,
    settings: StampSettings,
    now_ns: int,
    hold_capacity: int,
    scan: wire.Scan | None = None,
) -> StampOutcome:
    """Stamp the generations of one request; take out those to hold. Bytes in, bytes out.

    ``data`` is ``request`` encoded and ``index`` its walk (:func:`.wire.walk`); ``request`` is
    only read; ``scan``: ``wire.scan_spans(data, index, settings.scan_keys)`` if already made.
    A generation with a ``trace``-tier record is stamped now. One without is held (cut from the
    payload, returned in ``held``) while the hold window is on and ``hold_capacity`` allows;
    past that it is stamped now (``overflow``) with what the other tiers know. Every other
    span, and the order of the spans left, is untouched.
    """
    out = StampOutcome(spans=index.span_count)
    spans = _Containers(request, index)
    edits: dict[int, bytes] = {}
    hold_on = settings.hold_ns > 0
    if scan is None:
        scan = wire.scan_spans(data, index, settings.scan_keys)
    poisoned = {i: got for i in scan.suspects if (got := spans.poison(data, i)) is not None}
    if any(p.add is None for p, _ in poisoned.values()):  # lost in Langfuse whatever is added:
        scan = scan._replace(candidates=[x for x in scan.candidates  # not stamped
                                         if x[0] not in poisoned or poisoned[x[0]][0].add is not None])
    linked: list[tuple[SpanKey, str, wire.Candidate, str, object]] = []
    claimed: list[tuple[int, SpanKey, ConventionVerdict, str, wire.Candidate]] = []
    for i, key, name, has_type, portable, service, scanned in _generations(
            scan, settings, spans, tenant, linked, claimed):
        res = resolver.at_arrival(key, name, may_hold=hold_on and len(out.held) < hold_capacity)
        if res is None:
            out.held.append(spans.hold(data, i, key, name, has_type, now_ns, portable))
            edits[i] = wire.DELETE
            continue
        if hold_on and res.tier != c.TIER_TRACE:
            out.overflow += 1  # it would have been held: the window is full
        edits[i] = stamp_bytes(name, key.label, res, has_type, portable)
        out.stamped.append(Stamped(key, res, name, service, scanned))
    for i, key, (found_claim, has_type, portable), service, scanned in claimed:
        found_claim = _with_number(found_claim, data[index.span_starts[i]:index.span_ends[i]])
        key, res, extra = _resolve_claim(resolver, key, found_claim)
        edits[i] = stamp_bytes(found_claim.prompt_name, key.label, res, has_type, portable, extra)
        out.stamped.append(Stamped(key, res, found_claim.prompt_name, service, scanned))
        if any(k == c.LF_META_CONFLICT for k, _ in extra):
            out.conflicts.append(Conflict(tenant, key.trace_id, scanned[7], key.key, key.label,
                                          f"{found_claim.convention.name}:{found_claim.prompt_name}",
                                          found_claim.raw_version, res.version or 0, service))
    for key, service, cand, linked_name, _ in linked:  # rare: spans an app linked itself
        evidence = resolver.trace_evidence(key)
        if evidence is None:
            continue
        linked_version = _linked_version(data[index.span_starts[cand[0]]:index.span_ends[cand[0]]])
        if evidence != linked_version or linked_name != settings.prompt_names.get(key.key, key.key):
            out.conflicts.append(Conflict(tenant, key.trace_id, cand[7], key.key, key.label, linked_name,
                                          linked_version, evidence, service))
    for i, (found, span) in poisoned.items():
        _defuse(out, edits, spans, data, i, found, span, tenant, settings.isolate_poison)
    if len(out.held) + len(out.isolated) < out.spans:
        out.payload = wire.splice(data, index, edits)
    return out


def _defuse(out: StampOutcome, edits: dict[int, bytes], spans: _Containers, data: bytes, i: int,
            found: Poison, span: Span, tenant: str, isolate: bool) -> None:
    """Keep poison span ``i`` from costing the other spans of its request (it only adds, or moves
    the span to a request of its own): the type Langfuse gives it otherwise, added; a span stamped
    (or held) already gets the stamp's ``generation`` type, which does the same."""
    action: PoisonAction
    added: str | None = None
    if found.add is not None:
        action = "typed"
        if i in edits:
            added = c.OBSERVATION_TYPE_GENERATION  # a stamp (now or at release) adds it: no span has one
        else:
            added = found.add
            edits[i] = _type_bytes(found.add)
    elif isolate:
        action = "isolated"
        edits[i] = wire.DELETE
        out.isolated.append(spans.alone(data, i))
    else:
        action = "forwarded"
    service = spans.who(spans.index.locate(i)[0])[1]
    out.poison.append(PoisonSpan(tenant, bytes(span.trace_id), bytes(span.span_id), service, span.name,
                                 found, action, added))


def release_spans(
    held: Iterable[HeldSpan], *, resolver: Resolver
) -> tuple[ExportTraceServiceRequest, list[Stamped]]:
    """Resolve held spans with every tier now and pack them into one request.

    Spans keep their arrival order; those that shared a resource and scope share them again.
    """
    request = ExportTraceServiceRequest()
    stamped: list[Stamped] = []
    groups: dict[tuple[bytes, str, bytes, str], ScopeSpans] = {}
    encoded: dict[int, bytes] = {}  # id -> encoding of the resources and scopes seen (alive meanwhile)
    for h in held:
        res = resolver.resolve(h.key, h.prompt_name, held=True)
        span = h.span
        stamp_span(span, prompt_name=h.prompt_name, label=h.key.label, resolution=res, has_type=h.has_type,
                   portable=h.portable)
        stamped.append(Stamped(h.key, res, h.prompt_name, h.service, None, h.span_bytes))
        r_enc = encoded.get(id(h.resource))
        if r_enc is None:  # spans held from one container share its resource and scope objects
            r_enc = encoded[id(h.resource)] = h.resource.SerializeToString(deterministic=True)
        s_enc = encoded.get(id(h.scope))
        if s_enc is None:
            s_enc = encoded[id(h.scope)] = h.scope.SerializeToString(deterministic=True)
        gk = (r_enc, h.resource_schema_url, s_enc, h.scope_schema_url)
        ss = groups.get(gk)
        if ss is None:
            rs = request.resource_spans.add()
            rs.resource.CopyFrom(h.resource)
            rs.schema_url = h.resource_schema_url
            ss = groups[gk] = rs.scope_spans.add()
            ss.scope.CopyFrom(h.scope)
            ss.schema_url = h.scope_schema_url
        ss.spans.append(span)
    return request, stamped


_ERROR = Status.STATUS_CODE_ERROR
_RECORD_FIELDS = ("tenant", "trace_id", "span_id", "span_name", "key", "label", "prompt_name", "version",
                  "resolution", "source", "reason", "instance", "service", "start_ns", "end_ns", "error",
                  "input_tokens", "output_tokens")
if tuple(f.name for f in fields(GenerationRecord)) != _RECORD_FIELDS:  # passed positionally below
    raise ImportError("GenerationRecord's fields changed: update stamp.generation_record")


def span_id_of(g: Stamped) -> bytes:
    """The stamped generation's span id (from its arrival scan, or a scan of its bytes)."""
    scanned = g.scanned if g.scanned is not None else wire.scan_one(g.span_bytes, _RECORD_KEYS)
    return scanned[7]


def generation_record(g: Stamped) -> GenerationRecord:
    """What observers are told about one stamped generation: read from its arrival scan, or
    (a released span) from a scan of its bytes."""
    scanned = g.scanned
    if scanned is None:
        scanned = wire.scan_one(g.span_bytes, _RECORD_KEYS)
    trace_id, start_ns, name, span_id, end_ns, status, (input_tokens, output_tokens) = scanned[4:]
    res, key = g.resolution, g.key
    return GenerationRecord(
        key.tenant, trace_id, span_id, name, key.key, key.label, g.prompt_name, res.version, res.tier,
        res.source, res.reason, key.instance, g.service, start_ns, end_ns, status == _ERROR,
        input_tokens, output_tokens,
    )  # positional: in GenerationRecord's field order (the cheapest call, once per generation)
