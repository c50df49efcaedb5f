"""The names fixed by promptstamp's wire contract (``docs/contract.md``), defined once.

The SDK writes them and the relay reads and writes them; neither spells them anywhere else.
No imports, on purpose (like OpenTelemetry's semconv modules): the relay uses these names
without importing the SDK runtime or ``langfuse``, and the SDK without importing the relay.
"""

# §1 — baggage entries / span attributes the SDK puts on every span inside ``prompt()``.
PROMPT_KEY = "app.prompt.key"
PROMPT_LABEL = "app.prompt.label"

# §2 — the fetch log record.
FETCH_EVENT_NAME = "app.prompt.fetch"
EVENT_NAME_ATTRIBUTE = "event.name"  # older SDKs: event name as an attribute
PROMPT_VERSION = "app.prompt.version"
FETCH_SOURCE = "app.prompt.fetch.source"
FETCH_ERROR_TYPE = "app.prompt.fetch.error_type"
CACHE_FALLBACK_EVENT = "prompt.cache_fallback"
# §2 — the fetch record on a span of its own, and the span a scope opened with no active span gets.
FETCH_SPAN_NAME = "promptstamp.fetch"
SCOPE_SPAN_NAME = "promptstamp.prompt"

SOURCE_LANGFUSE = "langfuse"
SOURCE_CACHE = "cache"
SOURCE_FALLBACK = "fallback"
SOURCE_UNAVAILABLE = "unavailable"  # span attribute only: nothing was handed out

SERVICE_NAME = "service.name"
SERVICE_INSTANCE_ID = "service.instance.id"
TELEMETRY_SDK_LANGUAGE = "telemetry.sdk.language"  # resource: Langfuse types by it (§3)

# §3 — what the relay writes on a generation span.
LF_PROMPT_NAME = "langfuse.observation.prompt.name"
LF_PROMPT_VERSION = "langfuse.observation.prompt.version"
LF_OBSERVATION_TYPE = "langfuse.observation.type"
LF_META_PROMPT_NAME = "langfuse.observation.metadata.prompt_name"
LF_META_PROMPT_LABEL = "langfuse.observation.metadata.prompt_label"
LF_META_RESOLUTION = "langfuse.observation.metadata.prompt_resolution"
LF_META_SOURCE = "langfuse.observation.metadata.prompt_source"
# §3 — metadata the relay adds beside the table's (free-form Langfuse metadata): a convention's
# claim that its trace's fetch record contradicts, and why a claim could not be linked.
LF_META_CONFLICT = "langfuse.observation.metadata.prompt_conflict"
LF_META_REASON = "langfuse.observation.metadata.prompt_unresolved_reason"
OBSERVATION_TYPE_GENERATION = "generation"

# §4 — resolution tiers, in the order they are tried.
TIER_TRACE = "trace"
TIER_INSTANCE = "instance"
TIER_LATEST = "latest"
TIER_API = "api"
TIER_UNRESOLVED = "unresolved"
TIERS = (TIER_TRACE, TIER_INSTANCE, TIER_LATEST, TIER_API, TIER_UNRESOLVED)
# §3 — a link read from another convention's attributes (not one of §4's tiers).
TIER_CONVENTION = "convention"

# §3 — the GenAI semantic conventions' prompt link (read in, and written out when opted in).
GEN_AI_PROMPT_NAME = "gen_ai.prompt.name"
GEN_AI_PROMPT_VERSION = "gen_ai.prompt.version"

# §3 — every link form Langfuse reads: a span carrying one is left as it arrived.
LF_LEGACY_PROMPT_NAME = "langfuse.prompt.name"
LF_LEGACY_PROMPT_VERSION = "langfuse.prompt.version"
AI_SDK_LANGFUSE_PROMPT = "ai.telemetry.metadata.langfusePrompt"  # Vercel AI SDK: JSON {name, version}

# §3 — attributes Langfuse types generations by (its ObservationTypeMapper; the whole table is in
# the relay's detect.py).
GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_TOOL_NAME = "gen_ai.tool.name"
GEN_AI_TOOL_CALL_ID = "gen_ai.tool.call.id"
OPENINFERENCE_SPAN_KIND = "openinference.span.kind"
LLM_MODEL_NAME = "llm.model_name"
LF_OBSERVATION_MODEL = "langfuse.observation.model.name"
MODEL = "model"
LLM_REQUEST_TYPE = "llm.request.type"  # OpenLLMetry's older marker: not one of Langfuse's rules

# Token counts the relay reads off a stamped generation (for per-version metrics), first found wins.
GEN_AI_USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
GEN_AI_USAGE_PROMPT_TOKENS = "gen_ai.usage.prompt_tokens"
LLM_TOKEN_COUNT_PROMPT = "llm.token_count.prompt"
GEN_AI_USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
GEN_AI_USAGE_COMPLETION_TOKENS = "gen_ai.usage.completion_tokens"
LLM_TOKEN_COUNT_COMPLETION = "llm.token_count.completion"

__all__ = [
    "AI_SDK_LANGFUSE_PROMPT",
    "CACHE_FALLBACK_EVENT",
    "EVENT_NAME_ATTRIBUTE",
    "FETCH_ERROR_TYPE",
    "FETCH_EVENT_NAME",
    "FETCH_SOURCE",
    "FETCH_SPAN_NAME",
    "GEN_AI_OPERATION_NAME",
    "GEN_AI_PROMPT_NAME",
    "GEN_AI_PROMPT_VERSION",
    "GEN_AI_REQUEST_MODEL",
    "GEN_AI_RESPONSE_MODEL",
    "GEN_AI_TOOL_CALL_ID",
    "GEN_AI_TOOL_NAME",
    "GEN_AI_USAGE_COMPLETION_TOKENS",
    "GEN_AI_USAGE_INPUT_TOKENS",
    "GEN_AI_USAGE_OUTPUT_TOKENS",
    "GEN_AI_USAGE_PROMPT_TOKENS",
    "LF_LEGACY_PROMPT_NAME",
    "LF_LEGACY_PROMPT_VERSION",
    "LF_META_CONFLICT",
    "LF_META_PROMPT_LABEL",
    "LF_META_PROMPT_NAME",
    "LF_META_REASON",
    "LF_META_RESOLUTION",
    "LF_META_SOURCE",
    "LF_OBSERVATION_MODEL",
    "LF_OBSERVATION_TYPE",
    "LF_PROMPT_NAME",
    "LF_PROMPT_VERSION",
    "LLM_MODEL_NAME",
    "LLM_REQUEST_TYPE",
    "LLM_TOKEN_COUNT_COMPLETION",
    "LLM_TOKEN_COUNT_PROMPT",
    "MODEL",
    "OBSERVATION_TYPE_GENERATION",
    "OPENINFERENCE_SPAN_KIND",
    "PROMPT_KEY",
    "PROMPT_LABEL",
    "PROMPT_VERSION",
    "SCOPE_SPAN_NAME",
    "SERVICE_INSTANCE_ID",
    "SERVICE_NAME",
    "SOURCE_CACHE",
    "SOURCE_FALLBACK",
    "SOURCE_LANGFUSE",
    "SOURCE_UNAVAILABLE",
    "TELEMETRY_SDK_LANGUAGE",
    "TIERS",
    "TIER_API",
    "TIER_CONVENTION",
    "TIER_INSTANCE",
    "TIER_LATEST",
    "TIER_TRACE",
    "TIER_UNRESOLVED",
]
