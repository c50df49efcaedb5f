"""``should_export_span``: Langfuse's default span filter, plus promptstamp's own spans.

An app tracing with the Langfuse SDK exports through ``LangfuseSpanProcessor``, whose default
filter (``langfuse.span_filter.is_default_export_span``, v4 and v5) keeps only the Langfuse
SDK's spans, spans with a ``gen_ai.*`` attribute and known LLM instrumentation scopes. The fetch
span (``promptstamp.fetch``) and the scope span (``promptstamp.prompt``) are none of those, so
without this filter the fetch record never leaves the app::

    Langfuse(span_exporter=OTLPSpanExporter(endpoint=...),
             should_export_span=promptstamp.should_export_span)

Called by Langfuse's processor on the thread that ends a span; reads two attributes, no I/O.
"""

from __future__ import annotations

from typing import Any

from ._fetchlog import SCOPE_NAME

__all__ = ["is_promptstamp_span", "should_export_span"]


def is_promptstamp_span(span: Any) -> bool:
    """Whether ``span`` is one of promptstamp's own (its fetch or scope span)."""
    scope = getattr(span, "instrumentation_scope", None)
    return scope is not None and getattr(scope, "name", None) == SCOPE_NAME


def should_export_span(span: Any) -> bool:
    """Langfuse's default export decision, and ``True`` for promptstamp's fetch and scope spans."""
    if is_promptstamp_span(span):
        return True
    from langfuse.span_filter import is_default_export_span  # the app has langfuse: it passes this to it

    return bool(is_default_export_span(span))
