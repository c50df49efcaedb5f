"""The names fixed by promptstamp's wire contract (``contract.md``), defined once.

The SDK writes them and the relay reads and writes them; neither spells them anywhere else.
"""

from __future__ import annotations

from typing import Final

# §1 — baggage entries / span attributes the SDK puts on every span inside ``prompt()``.
PROMPT_KEY: Final = "app.prompt.key"
PROMPT_LABEL: Final = "app.prompt.label"

# §2 — the fetch log record.
FETCH_EVENT_NAME: Final = "app.prompt.fetch"
EVENT_NAME_ATTRIBUTE: Final = "event.name"  # older SDKs: event name as an attribute
PROMPT_VERSION: Final = "app.prompt.version"
FETCH_SOURCE: Final = "app.prompt.fetch.source"
FETCH_ERROR_TYPE: Final = "app.prompt.fetch.error_type"
CACHE_FALLBACK_EVENT: Final = "prompt.cache_fallback"

SOURCE_LANGFUSE: Final = "langfuse"
SOURCE_CACHE: Final = "cache"
SOURCE_FALLBACK: Final = "fallback"
SOURCE_UNAVAILABLE: Final = "unavailable"  # span attribute only: nothing was handed out

SERVICE_NAME: Final = "service.name"
SERVICE_INSTANCE_ID: Final = "service.instance.id"

# §3 — what the relay writes on a generation span.
LF_PROMPT_NAME: Final = "langfuse.observation.prompt.name"
LF_PROMPT_VERSION: Final = "langfuse.observation.prompt.version"
LF_OBSERVATION_TYPE: Final = "langfuse.observation.type"
LF_META_PROMPT_NAME: Final = "langfuse.observation.metadata.prompt_name"
LF_META_PROMPT_LABEL: Final = "langfuse.observation.metadata.prompt_label"
LF_META_RESOLUTION: Final = "langfuse.observation.metadata.prompt_resolution"
LF_META_SOURCE: Final = "langfuse.observation.metadata.prompt_source"
OBSERVATION_TYPE_GENERATION: Final = "generation"

# §4 — resolution tiers, in the order they are tried.
TIER_TRACE: Final = "trace"
TIER_INSTANCE: Final = "instance"
TIER_LATEST: Final = "latest"
TIER_API: Final = "api"
TIER_UNRESOLVED: Final = "unresolved"
TIERS: Final = (TIER_TRACE, TIER_INSTANCE, TIER_LATEST, TIER_API, TIER_UNRESOLVED)

# Default generation-detection rules (§3).
GEN_AI_OPERATION_NAME: Final = "gen_ai.operation.name"
GEN_AI_REQUEST_MODEL: Final = "gen_ai.request.model"
OPENINFERENCE_SPAN_KIND: Final = "openinference.span.kind"
LLM_REQUEST_TYPE: Final = "llm.request.type"
