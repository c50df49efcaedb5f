"""Langfuse's observation typing, mirrored as data, and which spans are generations (contract §3).

Pure, and standard library only (like the wire names beside it): looks only at what it is given
(a span's attributes, its scope, its name). Both sides use it: the relay's processing threads
(stamp) and ``promptstamp.testing.LangfuseServer``, so the relay and the loopback Langfuse cannot
disagree about a span's type, and the SDK's test helpers never import the relay to know it.

Mirrored from langfuse/langfuse at commit 62751446149b702b419a9292ddfc2280cdf74b8c:

- ``packages/shared/src/server/otel/ObservationTypeMapper.ts``: ``ObservationTypeMapperRegistry``
  (the rules, their priorities, ``hasMeaningfulValue``, ``matchesVercelAiSdkOperation``);
- ``packages/shared/src/server/otel/OtelIngestionProcessor.ts``: ``convertValueToPlainJavascript``
  (what an attribute value is when the mapper sees it) and the prompt link reads
  (``promptName``/``promptVersion``, ``parseLangfusePromptFromAISDK``).

How Langfuse evaluates the table: rules in priority order; a rule whose ``canMap`` holds and whose
mapping gives a known type answers; a value it does not know falls through to the next rule;
nothing answers → ``SPAN``. Values are looked up as JavaScript property keys: a non-string value
is looked up by its ``String()`` form (an array ``["chat"]`` is ``"chat"``), and a value naming an
``Object.prototype`` member (``constructor``, ``toString``, …) makes Langfuse's mapper *throw*,
which loses every span of that export request in Langfuse. Here such a value is no known type (it
falls through), and :func:`classify` reports the throw in :attr:`Typing.error`.

**Poison** (such a throw): :data:`POISON_KEYS` are the attributes a rule can throw on (each rule's
``throws``), :data:`OBJECT_PROTOTYPE` the names a lookup throws on, and :func:`poison` says what
keeps a poison span from costing the other spans of its request: ``langfuse.observation.type:
generation`` when the other rules type it GENERATION, the span has no type and adding it changes
nothing else (the one value contract §3 lets the relay write); else nothing is added, and the span
must travel in an export request of its own.

Attribute values, as callers pass them: ``str`` for string attributes; an OTLP ``AnyValue`` (the
relay's Python scan, the LangfuseServer); Python ``int``/``float``/``bool``/``list``; or ``True``
from the relay's C scan, meaning "present, not a string". ``True`` is judged as a boolean
attribute: that is exact for every scalar, and differs from Langfuse only for an array attribute
(``["chat"]`` on a key whose value the table looks up, or ``[]`` on a model key).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import promptstamp_contract as c

__all__ = [
    "GENERATION_MARKER_KEYS",
    "INPUT_SOURCES",
    "LINK_KEYS",
    "OBJECT_PROTOTYPE",
    "POISON_KEYS",
    "RULES",
    "TABLE_KEYS",
    "TYPE_VALUES",
    "GenerationRules",
    "Poison",
    "Rule",
    "Typing",
    "already_linked",
    "classify",
    "is_generation",
    "js_string",
    "js_value",
    "langfuse_input",
    "langfuse_type",
    "poison",
]

# Langfuse's ObservationType values (packages/shared/src/domain/observations.ts).
SPAN = "SPAN"
GENERATION = "GENERATION"
EVENT = "EVENT"
EMBEDDING = "EMBEDDING"
AGENT = "AGENT"
TOOL = "TOOL"
CHAIN = "CHAIN"
RETRIEVER = "RETRIEVER"
GUARDRAIL = "GUARDRAIL"
EVALUATOR = "EVALUATOR"

#: Every attribute key Langfuse reads a prompt link from (OtelIngestionProcessor: promptName =
#: observation.prompt.name ?? langfuse.prompt.name ?? AI SDK langfusePrompt.name, and the same
#: for the version). A span carrying any of them is left as it arrived: stamping would shadow it.
LINK_KEYS = frozenset(
    {
        c.LF_PROMPT_NAME,
        c.LF_PROMPT_VERSION,
        c.LF_LEGACY_PROMPT_NAME,
        c.LF_LEGACY_PROMPT_VERSION,
        c.AI_SDK_LANGFUSE_PROMPT,
    }
)

#: Object.prototype's own members (``Object.getOwnPropertyNames(Object.prototype)`` in Node):
#: looking one of them up in a mapping object gives a function (or Object.prototype itself), on
#: which Langfuse's ``SimpleAttributeMapper`` then calls ``.toUpperCase()``: a TypeError.
OBJECT_PROTOTYPE = _OBJECT_PROTOTYPE = frozenset(
    {
        "__defineGetter__",
        "__defineSetter__",
        "__lookupGetter__",
        "__lookupSetter__",
        "__proto__",
        "constructor",
        "hasOwnProperty",
        "isPrototypeOf",
        "propertyIsEnumerable",
        "toLocaleString",
        "toString",
        "valueOf",
    }
)

_ABSENT: Any = object()  # JavaScript's undefined: the attribute is not there


class _MapperThrows(Exception):
    """Where Langfuse's mapper would throw (and its whole export request be lost): on ``key``,
    whose value is ``value`` as the mapper uses it (its ``String()``)."""

    def __init__(self, key: str, value: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


# --------------------------------------------------------------------------------------------
# Values as Langfuse's mapper sees them
# --------------------------------------------------------------------------------------------
def js_value(value: object) -> object:
    """``value`` as ``convertValueToPlainJavascript`` makes it: str, bool, int/float (numbers),
    list, or a JSON text (str) for kvlist, bytes and empty values. ``None`` stays ``None``."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [js_value(v) for v in value]
    if isinstance(value, Mapping):
        return '{"kvlistValue":…}'  # JSON.stringify of the AnyValue: a string, no known value
    which = getattr(value, "WhichOneof", None)
    if which is None:
        return str(value)
    kind = which("value")
    if kind == "string_value":
        return str(value.string_value)  # type: ignore[attr-defined]
    if kind == "bool_value":
        return bool(value.bool_value)  # type: ignore[attr-defined]
    if kind == "int_value":
        return int(value.int_value)  # type: ignore[attr-defined]
    if kind == "double_value":
        return float(value.double_value)  # type: ignore[attr-defined]
    if kind == "array_value":
        return [js_value(v) for v in value.array_value.values]  # type: ignore[attr-defined]
    # kvlist_value, bytes_value, or nothing set: JSON.stringify(value), e.g. "{}".
    if kind is None:
        return "{}"
    return '{"kvlistValue":…}' if kind == "kvlist_value" else '{"bytesValue":…}'


def _meaningful(value: object) -> bool:
    """``hasMeaningfulValue``: not undefined, null, "" or an empty array/object."""
    if value is _ABSENT or value is None or (isinstance(value, str) and value == ""):
        return False
    if isinstance(value, (list, dict)):
        return len(value) > 0
    return True


def js_string(value: object) -> str:
    """JavaScript's ``String(value)`` of a :func:`js_value` (how it is used as a property key)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if value.is_integer() and abs(value) < 1e21:
            return str(int(value))
        return repr(value)
    if isinstance(value, list):
        return ",".join("" if v is None else js_string(v) for v in value)
    if value is None:
        return "null"
    return str(value)


_JS_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)")
_JS_PREFIXED = re.compile(r"0[xX][0-9a-fA-F]+|0[oO][0-7]+|0[bB][01]+")


def _js_number(text: str) -> float:
    """JavaScript's ``Number(text)`` for a string (NaN when it is not a number)."""
    s = text.strip()
    if s == "":
        return 0.0
    if _JS_DECIMAL.fullmatch(s):
        return float(s)
    if _JS_PREFIXED.fullmatch(s):
        return float(int(s, 0))
    if s in ("Infinity", "+Infinity"):
        return math.inf
    if s == "-Infinity":
        return -math.inf
    return math.nan


# --------------------------------------------------------------------------------------------
# The table
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Span:
    attrs: Mapping[str, object]
    scope_name: str
    scope_version: str
    span_name: str
    sdk_language: str

    def get(self, key: str) -> object:
        v = self.attrs.get(key, _ABSENT)
        return v if type(v) is str or v is _ABSENT else js_value(v)


@dataclass(frozen=True)
class Rule:
    """One of Langfuse's mappers.

    ``applies`` is its ``canMap``; ``maps`` gives the type, or None when the value is one it does
    not know (then the next rule is tried). ``keys``: the attribute keys it reads; ``context``:
    what else it reads (``scope_name``, ``scope_version``, ``span_name``, ``sdk_language`` = the
    resource's ``telemetry.sdk.language``). ``types``: the types it can give. ``throws``: the
    keys whose value can make it throw (a lookup: a name in :data:`OBJECT_PROTOTYPE`; a string
    method: a value that is not a string).
    """

    name: str
    priority: int
    keys: tuple[str, ...]
    types: tuple[str, ...]
    applies: Callable[[_Span], bool] = field(repr=False)
    maps: Callable[[_Span], str | None] = field(repr=False)
    context: tuple[str, ...] = ()
    mapping: Mapping[str, str] | None = None  # the value table, for rules that are one lookup
    throws: tuple[str, ...] = ()


def _lookup(name: str, priority: int, key: str, mapping: Mapping[str, str]) -> Rule:
    """``SimpleAttributeMapper``: the value of ``key``, looked up in ``mapping``."""

    def applies(s: _Span) -> bool:
        return _meaningful(s.get(key))

    def maps(s: _Span) -> str | None:
        prop = js_string(s.get(key))
        if prop in _OBJECT_PROTOTYPE:
            raise _MapperThrows(key, prop, f"{key}={prop!r} names an Object.prototype member "
                                           f"(mappedType.toUpperCase is not a function)")
        return mapping.get(prop)

    return Rule(name, priority, (key,), tuple(dict.fromkeys(mapping.values())), applies, maps,
                mapping=dict(mapping), throws=(key,))  # fmt: skip


def _custom(
    name: str,
    priority: int,
    keys: tuple[str, ...],
    types: tuple[str, ...],
    applies: Callable[[_Span], bool],
    maps: Callable[[_Span], str | None],
    context: tuple[str, ...] = (),
    throws: tuple[str, ...] = (),
) -> Rule:
    """``CustomAttributeMapper``."""
    return Rule(name, priority, keys, types, applies, maps, context, throws=throws)


# -- rule 0: Langfuse Python SDK <= 3.3 wrote type "span" on generations (langfuse#8682) --------
_SDK_GENERATION_KEYS = (
    c.LF_OBSERVATION_MODEL,
    "langfuse.observation.cost_details",
    "langfuse.observation.usage_details",
    "langfuse.observation.completion_start_time",
    "langfuse.observation.model.parameters",
    c.LF_PROMPT_NAME,
    c.LF_PROMPT_VERSION,
)


def _sdk330_applies(s: _Span) -> bool:
    return (
        s.get(c.LF_OBSERVATION_TYPE) == "span"
        and s.scope_name == "langfuse-sdk"
        and s.sdk_language == "python"
    )


def _sdk330_maps(s: _Span) -> str | None:
    if s.scope_version:
        parts = [_js_number(p) for p in s.scope_version.split(".")]
        major = parts[0]
        minor = parts[1] if len(parts) > 1 else math.nan  # undefined: every comparison false
        if major > 3 or (major == 3 and minor > 3):
            return None
    return GENERATION if any(k in s.attrs for k in _SDK_GENERATION_KEYS) else None


# -- rules 5 and 6: the Vercel AI SDK -------------------------------------------------------------
_AI_OPERATION_NAME = "operation.name"
_AI_OPERATION_ID = "ai.operationId"
_AI_GENERATION_OPS = (
    "ai.generateText.doGenerate",
    "ai.streamText.doStream",
    "ai.generateObject.doGenerate",
    "ai.streamObject.doStream",
)
_AI_EMBEDDING_OPS = ("ai.embedMany.doEmbed", "ai.embed.doEmbed")
_AI_MODEL_KEYS = (c.LF_OBSERVATION_MODEL, "ai.model.id", c.GEN_AI_REQUEST_MODEL, c.GEN_AI_RESPONSE_MODEL)


def _vercel_matches(s: _Span, prefixes: tuple[str, ...]) -> bool:
    """``matchesVercelAiSdkOperation``: operation.name starts with, or ai.operationId equals."""
    op_name = s.get(_AI_OPERATION_NAME)
    if _meaningful(op_name):
        if not isinstance(op_name, str):
            raise _MapperThrows(_AI_OPERATION_NAME, js_string(op_name),
                                f"{_AI_OPERATION_NAME} is not a string (startsWith is not a function)")
        if any(op_name.startswith(p) for p in prefixes):
            return True
    op_id = s.get(_AI_OPERATION_ID)
    return _meaningful(op_id) and isinstance(op_id, str) and op_id in prefixes


def _vercel_generation_applies(s: _Span) -> bool:
    has_model = any(_meaningful(s.get(k)) for k in _AI_MODEL_KEYS)
    matches = _vercel_matches(s, _AI_GENERATION_OPS + _AI_EMBEDDING_OPS)  # evaluated either way
    return has_model and matches


def _vercel_generation_maps(s: _Span) -> str | None:
    if _vercel_matches(s, _AI_GENERATION_OPS):
        return GENERATION
    if _vercel_matches(s, _AI_EMBEDDING_OPS):
        return EMBEDDING
    return None


def _vercel_span_applies(s: _Span) -> bool:
    has_ai = False
    for key in (_AI_OPERATION_NAME, _AI_OPERATION_ID):  # `a || b`: b only when a is false
        v = s.get(key)
        if _meaningful(v):
            if not isinstance(v, str):
                raise _MapperThrows(key, js_string(v),
                                    f"{key} is not a string (startsWith is not a function)")
            if v.startswith("ai."):
                has_ai = True
                break
    return has_ai and not _vercel_matches(s, _AI_GENERATION_OPS + _AI_EMBEDDING_OPS)


def _vercel_span_maps(s: _Span) -> str | None:
    return TOOL if _vercel_matches(s, ("ai.toolCall",)) else None


# -- rules 7 to 10 --------------------------------------------------------------------------------
_TOOL_KEYS = (c.GEN_AI_TOOL_NAME, c.GEN_AI_TOOL_CALL_ID)
_FLUE_TOOL_KEYS = ("flue.tool.name", "flue.tool.call_id")
_FLUE_TASK_KEYS = ("flue.task.id", "flue.task.agent")
_LIVEKIT_SCOPE = "livekit-agents"
_LIVEKIT_TYPES = {"agent_turn": AGENT, "start_agent_activity": AGENT, "function_tool": TOOL}
_MODEL_KEYS = (
    c.LF_OBSERVATION_MODEL, c.GEN_AI_REQUEST_MODEL, c.GEN_AI_RESPONSE_MODEL, c.LLM_MODEL_NAME, c.MODEL,
)  # fmt: skip


def _any_meaningful(keys: tuple[str, ...]) -> Callable[[_Span], bool]:
    return lambda s: any(_meaningful(s.get(k)) for k in keys)


def _flue_maps(s: _Span) -> str | None:
    return TOOL if any(_meaningful(s.get(k)) for k in _FLUE_TOOL_KEYS) else AGENT


#: Langfuse's ObservationTypeMapperRegistry, in its priority order.
RULES: tuple[Rule, ...] = (
    _custom("PythonSDKv330Override", 0, (c.LF_OBSERVATION_TYPE, *_SDK_GENERATION_KEYS), (GENERATION,),
            _sdk330_applies, _sdk330_maps, context=("scope_name", "scope_version", "sdk_language")),
    _lookup("LangfuseObservationTypeDirectMapping", 1, c.LF_OBSERVATION_TYPE, {
        "span": SPAN, "generation": GENERATION, "event": EVENT, "embedding": EMBEDDING,
        "agent": AGENT, "tool": TOOL, "chain": CHAIN, "retriever": RETRIEVER,
        "guardrail": GUARDRAIL, "evaluator": EVALUATOR,
    }),
    _lookup("OpenInference", 2, c.OPENINFERENCE_SPAN_KIND, {
        "CHAIN": CHAIN, "RETRIEVER": RETRIEVER, "LLM": GENERATION, "EMBEDDING": EMBEDDING,
        "AGENT": AGENT, "TOOL": TOOL, "GUARDRAIL": GUARDRAIL, "EVALUATOR": EVALUATOR,
    }),
    _lookup("OTel_GenAI_Operation", 3, c.GEN_AI_OPERATION_NAME, {
        "chat": GENERATION, "completion": GENERATION, "text_completion": GENERATION,
        "generate_content": GENERATION, "generate": GENERATION, "embeddings": EMBEDDING,
        "invoke_agent": AGENT, "create_agent": AGENT, "execute_tool": TOOL,
    }),
    _lookup("Genkit", 4, "genkit:metadata:subtype", {
        "background-model": GENERATION, "model": GENERATION, "embedder": EMBEDDING, "tool": TOOL,
        "tool.v2": TOOL, "retriever": RETRIEVER, "evaluator": EVALUATOR,
    }),
    _custom("Vercel_AI_SDK_Operation_Generation_Like", 5,
            (_AI_OPERATION_NAME, _AI_OPERATION_ID, *_AI_MODEL_KEYS), (GENERATION, EMBEDDING),
            _vercel_generation_applies, _vercel_generation_maps, throws=(_AI_OPERATION_NAME,)),
    _custom("Vercel_AI_SDK_Operation_Span_Like", 6, (_AI_OPERATION_NAME, _AI_OPERATION_ID), (TOOL,),
            _vercel_span_applies, _vercel_span_maps, throws=(_AI_OPERATION_NAME, _AI_OPERATION_ID)),
    _custom("GenAI_Tool_Call", 7, _TOOL_KEYS, (TOOL,), _any_meaningful(_TOOL_KEYS), lambda s: TOOL),
    _custom("Flue", 8, _FLUE_TOOL_KEYS + _FLUE_TASK_KEYS, (TOOL, AGENT),
            _any_meaningful(_FLUE_TOOL_KEYS + _FLUE_TASK_KEYS), _flue_maps),
    _custom("LiveKit_SpanName", 9, (), (AGENT, TOOL),
            lambda s: s.scope_name == _LIVEKIT_SCOPE and s.span_name in _LIVEKIT_TYPES,
            lambda s: _LIVEKIT_TYPES.get(s.span_name), context=("scope_name", "span_name")),
    _custom("ModelBased", 10, _MODEL_KEYS, (GENERATION,), _any_meaningful(_MODEL_KEYS), lambda s: GENERATION),
)  # fmt: skip

#: Every attribute key the table reads.
TABLE_KEYS = frozenset(k for rule in RULES for k in rule.keys)

#: Every attribute key whose value can make Langfuse's mapper throw (the rules' ``throws``):
#: what the relay's scan looks at for poison, in the same pass.
POISON_KEYS = frozenset(k for rule in RULES for k in rule.throws)

#: Each of Langfuse's types and the explicit ``langfuse.observation.type`` value that gives it
#: (the direct mapping's table, inverted): what the relay adds to defuse a poison span.
TYPE_VALUES: Mapping[str, str] = {
    t: v for rule in RULES if rule.name == "LangfuseObservationTypeDirectMapping" and rule.mapping
    for v, t in rule.mapping.items()
}

#: Keys at least one of which every span Langfuse types GENERATION carries: the type (rules 0
#: and 1), the lookups that give GENERATION (2 to 4), a model key (5 and 10).
GENERATION_MARKER_KEYS = frozenset(
    {c.LF_OBSERVATION_TYPE, c.OPENINFERENCE_SPAN_KIND, c.GEN_AI_OPERATION_NAME, "genkit:metadata:subtype"}
) | frozenset(_AI_MODEL_KEYS) | frozenset(_MODEL_KEYS)


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Typing:
    """The type Langfuse gives a span, the rule that gave it (None: the SPAN default), and where
    Langfuse's mapper would throw on it instead (the whole export request is then lost there):
    ``error`` in words, ``thrown`` as (rule, attribute key, its value as the mapper used it)."""

    type: str
    rule: str | None = None
    error: str | None = None
    thrown: tuple[str, str, str] | None = None


_PLAIN_SPAN = Typing(SPAN)


def classify(
    attrs: Mapping[str, object],
    *,
    scope_name: str = "",
    scope_version: str = "",
    span_name: str = "",
    sdk_language: str = "",
) -> Typing:
    """Langfuse's ``mapToObservationType`` for one span, with a mapper throw reported, not raised.

    A throwing rule is treated as not answering and the rest are still tried, so :attr:`type`
    is always one of Langfuse's types (and never a generation because of a poison value).
    """
    present = TABLE_KEYS.intersection(attrs)
    if not present and scope_name != _LIVEKIT_SCOPE:
        return _PLAIN_SPAN  # the common case inside prompt(): no rule can apply
    s = _Span(attrs, scope_name, scope_version, span_name, sdk_language)
    error: str | None = None
    thrown: tuple[str, str, str] | None = None
    for rule in RULES:
        if rule.keys and present.isdisjoint(rule.keys):
            continue  # every rule with keys needs one of them to apply
        try:
            if rule.applies(s):
                result = rule.maps(s)
                if result is not None:
                    return Typing(result, rule.name, error, thrown)
        except _MapperThrows as exc:
            if error is None:
                error = f"{rule.name}: {exc}"
                thrown = (rule.name, exc.key, exc.value)
    return Typing(SPAN, None, error, thrown)


def langfuse_type(
    attrs: Mapping[str, object],
    *,
    scope_name: str = "",
    scope_version: str = "",
    span_name: str = "",
    sdk_language: str = "",
) -> str:
    """The observation type Langfuse gives a span: ``GENERATION``, ``SPAN``, ``TOOL``, …"""
    return classify(
        attrs, scope_name=scope_name, scope_version=scope_version, span_name=span_name,
        sdk_language=sdk_language,
    ).type  # fmt: skip


@dataclass(frozen=True, slots=True)
class Poison:
    """A span on which Langfuse's type mapper throws (so Langfuse loses its whole export request),
    and what keeps it from costing the request's other spans.

    ``rule``, ``key``, ``value``: where it throws (the attribute, its value as the mapper used it).
    ``type``: the type the other rules give the span (what Langfuse would show had that lookup
    not thrown). ``add``: the ``langfuse.observation.type`` value that defuses it, to add (the span
    has none, ``type`` is GENERATION, and with ``generation`` added Langfuse gives exactly that,
    throwing nowhere: the one value contract §3 lets the relay write); None otherwise (the poison
    is in ``langfuse.observation.type`` itself, the span has one Langfuse does not know, or its
    type is another one): only sending it in an export request of its own keeps it from the other
    spans.
    """

    rule: str
    key: str
    value: str
    type: str
    add: str | None


def poison(
    attrs: Mapping[str, object],
    *,
    scope_name: str = "",
    scope_version: str = "",
    span_name: str = "",
    sdk_language: str = "",
) -> Poison | None:
    """The span's :class:`Poison`, or None when Langfuse's mapper does not throw on it.

    Pass the decoded values (an OTLP ``AnyValue`` or plain Python values), not the C scan's
    ``True``: an array is looked up by its ``String()``."""
    context = {"scope_name": scope_name, "scope_version": scope_version, "span_name": span_name,
               "sdk_language": sdk_language}
    t = classify(attrs, **context)
    if t.thrown is None:
        return None
    # The wire contract (§3) lets the relay write one langfuse.observation.type: ``generation``.
    # So only a span Langfuse would type GENERATION is defused by adding it; any other is sent
    # alone (it is still lost at Langfuse, but costs no other span).
    add = _defusing(attrs, t.type, context) if t.type == GENERATION else None
    return Poison(t.thrown[0], t.thrown[1], t.thrown[2], t.type, add)


def _defusing(attrs: Mapping[str, object], wanted: str, context: Mapping[str, str]) -> str | None:
    """The ``langfuse.observation.type`` value that, added to ``attrs``, makes Langfuse give
    ``wanted`` without throwing; None when the span has that key already (adding would shadow
    it) or no value does."""
    if c.LF_OBSERVATION_TYPE in attrs:
        return None
    value = TYPE_VALUES.get(wanted)
    if value is None:
        return None
    again = classify({**attrs, c.LF_OBSERVATION_TYPE: value}, **context)
    return value if again.error is None and again.type == wanted else None


def already_linked(attrs: Mapping[str, object]) -> bool:
    """Does the span carry any attribute Langfuse reads a prompt link from (contract §3)?"""
    return any(k in attrs for k in LINK_KEYS)


@dataclass(frozen=True)
class GenerationRules:
    """In-house conventions on top of Langfuse's table (config ``generation.*``).

    ``present``: attribute keys whose presence marks a generation; ``equals``: key → string
    value that marks one. They only ever add generations Langfuse would type SPAN and that carry
    no ``langfuse.observation.type`` (the stamp's ``type: generation`` then makes Langfuse agree).
    """

    present: frozenset[str] = frozenset()
    equals: Mapping[str, str] = field(default_factory=dict)

    def keys(self) -> frozenset[str]:
        """Every attribute key the table, the link check and these rules look at."""
        return TABLE_KEYS | LINK_KEYS | self.present | frozenset(self.equals)

    def marker_keys(self) -> frozenset[str]:
        """Keys at least one of which every generation carries (a pre-filter on raw bytes)."""
        return GENERATION_MARKER_KEYS | self.present | frozenset(self.equals)

    def matches(self, attrs: Mapping[str, object]) -> bool:
        """Does an extra rule mark this span (whatever Langfuse makes of it)?"""
        return any(k in attrs for k in self.present) or any(
            attrs.get(k) == v for k, v in self.equals.items()
        )


_NO_RULES = GenerationRules()


def is_generation(
    attrs: Mapping[str, object],
    rules: GenerationRules = _NO_RULES,
    *,
    scope_name: str = "",
    scope_version: str = "",
    span_name: str = "",
    sdk_language: str = "",
) -> bool:
    """Would Langfuse type this span GENERATION (or an extra rule make it one Langfuse agrees with),
    once the relay's ``langfuse.observation.type: generation`` is on it?

    A span on which Langfuse's mapper throws (:attr:`Typing.error`) is one when the type the
    other rules give it is (and the added type defuses the throw, :func:`poison`); not when the
    type cannot be added (Langfuse loses such a span whatever the relay adds). Does not look
    at links: a caller leaves :func:`already_linked` spans alone.
    """
    context = {"scope_name": scope_name, "scope_version": scope_version, "span_name": span_name,
               "sdk_language": sdk_language}
    t = classify(attrs, **context)
    if t.type == GENERATION:
        return t.error is None or _defusing(attrs, GENERATION, context) is not None
    if t.type != SPAN or c.LF_OBSERVATION_TYPE in attrs or not rules.matches(attrs):
        return False
    # An extra rule: the stamp's type makes Langfuse agree (and defuses a throw, if there is one).
    return t.error is None or classify({**attrs, c.LF_OBSERVATION_TYPE: TYPE_VALUES[GENERATION]},
                                       **context).error is None


# -- the observation's input, as Langfuse extracts it ------------------------------------------------
#
# ``OtelIngestionProcessor.extractInputAndOutput`` (langfuse/langfuse at commit 0030ed8f): the first
# source that yields an input wins. Mirrored for span attributes (and the GenAI message events), in
# its order, as data: ("key", input key) reads one attribute; ("prefix", p) collects every attribute
# whose key starts with ``p`` into a nested object (its ``convertKeyPathToNestedObject``); ("scope",
# name, keys...) applies only to that instrumentation scope; ("events", names) reads events.
# The consequence the relay must respect: any key starting with ``gen_ai.prompt`` (``gen_ai.prompt.name``
# included) feeds the OpenLLMetry branch, which runs before OpenInference's ``llm.input_messages``.
INPUT_SOURCES: tuple[tuple[str, ...], ...] = (
    ("key", "langfuse.observation.input"),
    ("scope", "ai", "ai.prompt.messages", "ai.prompt", "ai.toolCall.args"),
    ("events", "gen_ai.system.message", "gen_ai.user.message", "gen_ai.assistant.message",
     "gen_ai.tool.message"),
    ("key", "gcp.vertex.agent.llm_request"),
    ("key", "gcp.vertex.agent.tool_call_args"),
    ("key", "prompt"),
    ("key", "lk.input_text"),
    ("key", "lk.user_transcript"),
    ("key", "lk.chat_ctx"),
    ("key", "mlflow.spanInputs"),
    ("key", "traceloop.entity.input"),
    ("key", "input.value"),
    ("key", "input"),
    ("scope", "pydantic-ai", "pydantic_ai.all_messages"),
    ("key", "tool_arguments"),
    ("prefix", "gen_ai.prompt"),
    ("prefix", "llm.input_messages"),
    ("key", "gen_ai.input.messages"),
    ("key", "gen_ai.tool.call.arguments"),
)


def _nested(attrs: Mapping[str, object], prefix: str) -> dict[str, object]:
    """``convertKeyPathToNestedObject``: ``prefix.a.b = v`` becomes ``{"a": {"b": v}}``."""
    out: dict[str, object] = {}
    for key, value in attrs.items():
        if not key.startswith(prefix):
            continue
        path = key[len(prefix):].lstrip(".").split(".") if key != prefix else [""]
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {"": child}
            node = child
        node[path[-1]] = value
    return out


def langfuse_input(attrs: Mapping[str, object], *, scope_name: str = "",
                   event_names: tuple[str, ...] = ()) -> object:
    """The input Langfuse would show for a span (None when no source yields one): the first of
    :data:`INPUT_SOURCES` that gives something. ``event_names``: the span's event names (the
    GenAI message events are shown as a list of their roles)."""
    for source in INPUT_SOURCES:
        kind = source[0]
        if kind == "key":
            value = attrs.get(source[1])
            if value:
                return value
        elif kind == "scope":
            if scope_name == source[1]:
                for key in source[2:]:
                    if key in attrs:
                        return attrs[key]
        elif kind == "events":
            roles = [n.replace("gen_ai.", "").replace(".message", "") for n in event_names if n in source[1:]]
            if roles:
                return [{"role": r} for r in roles]
        elif kind == "prefix" and any(k.startswith(source[1]) for k in attrs):
            return _nested(attrs, source[1])
    return None
