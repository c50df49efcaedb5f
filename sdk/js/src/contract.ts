/**
 * The names fixed by promptstamp's wire contract (docs/contract.md §1–2), as the Python
 * package `promptstamp_contract` defines them. tests/js/test_js_sdk.py checks that the two agree.
 */

// §1 — baggage entries / span attributes on every span inside a prompt's scope.
export const PROMPT_KEY = "app.prompt.key";
export const PROMPT_LABEL = "app.prompt.label";

// §2 — the fetch record.
export const FETCH_EVENT_NAME = "app.prompt.fetch";
export const PROMPT_VERSION = "app.prompt.version";
export const FETCH_SOURCE = "app.prompt.fetch.source";
export const FETCH_ERROR_TYPE = "app.prompt.fetch.error_type";
export const CACHE_FALLBACK_EVENT = "prompt.cache_fallback";
export const FETCH_SPAN_NAME = "promptstamp.fetch";
export const SCOPE_SPAN_NAME = "promptstamp.prompt";

export const SOURCE_LANGFUSE = "langfuse";
export const SOURCE_CACHE = "cache";
export const SOURCE_FALLBACK = "fallback";
/** Span attribute only: nothing was handed out. */
export const SOURCE_UNAVAILABLE = "unavailable";

export type Source = typeof SOURCE_LANGFUSE | typeof SOURCE_CACHE | typeof SOURCE_FALLBACK;
