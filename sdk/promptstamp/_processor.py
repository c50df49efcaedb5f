"""The span processor that copies ``app.prompt.*`` baggage onto every span (contract §1)."""

from __future__ import annotations

import logging

from opentelemetry.context import Context, get_value
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from ._baggage import prompt_attributes
from ._scope import SCOPE_USAGE

_log = logging.getLogger("promptstamp")


class PromptBaggageSpanProcessor(SpanProcessor):
    """Sets ``app.prompt.key`` and ``app.prompt.label`` from baggage on each span as it starts.

    ``on_start`` is called synchronously by the OTel SDK on the thread that starts the span
    (inside ``Tracer.start_span``, before it returns), so it only reads the parent context's
    baggage and sets at most two attributes, and counts the span for the ``prompt()`` scope it
    starts in (a private context value; see ``_scope.Usage``): it never blocks, does no I/O,
    takes no lock and never raises into the app. Spans started outside any ``prompt()`` (and with
    no such inbound baggage) are left untouched. ``on_end``, ``shutdown`` and ``force_flush``
    have nothing to do.
    """

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        try:
            attributes = prompt_attributes(parent_context)
            if attributes:
                span.set_attributes(attributes)
                usage = get_value(SCOPE_USAGE, parent_context)
                if usage is not None:
                    usage.spans += 1  # type: ignore[attr-defined]
        except Exception:  # never let telemetry break the app
            _log.debug("promptstamp: could not copy prompt baggage onto a span", exc_info=True)

    def on_end(self, span: ReadableSpan) -> None:
        return None

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
