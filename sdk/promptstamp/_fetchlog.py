"""The fetch record (contract §2): which version the app was handed, on a span of its own and
as one OTLP log record.

Every hand-out is recorded on the **fetch span**: named ``promptstamp.fetch``, a child of the
span active at fetch time, started when the fetch begins (it is the current span while the
Langfuse client runs, so an instrumented HTTP client's span nests under it) and ended as soon as
the fetch resolves. It carries one ``app.prompt.fetch`` event, at the time the fetch resolved,
and the same attributes: ``app.prompt.key``, ``app.prompt.label``, ``app.prompt.version`` (int;
absent for a code-embedded fallback), ``app.prompt.fetch.source`` and, when the fetch failed,
``app.prompt.fetch.error_type``. Because it ends before any span inside the scope starts, the
app's batch span processor exports it no later than the generations that used the prompt:
the relay links them at the ``trace`` tier however long the request runs.

The same record also goes through the OTel Logs SDK when the app has a ``LoggerProvider``, with
``event_name = "app.prompt.fetch"`` (OTLP field 12) and the fetch span's trace and span ids, so
the relay counts the two forms once. With neither an SDK ``TracerProvider`` nor a
``LoggerProvider`` the record reaches nobody, and the first such hand-out warns (``_setup``).

The fetch is also kept visible on the span active at fetch time: ``app.prompt.fetch.source``,
``app.prompt.fetch.error_type``, and a ``prompt.cache_fallback`` event when a cached copy was
served; a fetch that handed nothing out sets ``app.prompt.fetch.source = "unavailable"`` there
and ends the fetch span with an error status and no event.

Called on the app's thread that enters ``prompt()`` (``begin`` and the end of the fetch in the
same context); the lock only guards the choice of providers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger, get_logger_provider
from opentelemetry.trace import Status, StatusCode

import promptstamp_contract as contract

from . import _setup
from ._version import VERSION

if TYPE_CHECKING:
    from contextvars import Token

    from opentelemetry._logs import Logger, LoggerProvider
    from opentelemetry.context import Context
    from opentelemetry.trace import Tracer, TracerProvider
    from opentelemetry.util.types import AttributeValue

    from ._fetch import Resolution

SCOPE_NAME = "promptstamp"


@dataclass(slots=True)
class Fetching:
    """A fetch in progress: its span, the context it was started in, the token making it current."""

    span: trace.Span
    parent: Context
    token: Token[Context] | None


class FetchLog:
    """Emits fetch log records to a chosen ``LoggerProvider`` (default: the global one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logger: Logger | None = None
        self._explicit: LoggerProvider | None = None
        self._tracer_provider: TracerProvider | None = None
        self._fallback: TracerProvider | None = None
        self._tracer: Tracer | None = None

    def use_tracer_provider(self, tracer_provider: TracerProvider | None, *,
                            fallback: TracerProvider | None = None) -> None:
        """Start fetch and scope spans on ``tracer_provider``; ``None``: the global one, or
        ``fallback`` (a tracing Langfuse client's provider) while no global SDK provider is set."""
        with self._lock:
            self._tracer_provider = tracer_provider
            self._fallback = fallback
            self._tracer = None

    def _provider(self) -> tuple[Any, bool]:
        """The provider to use now, and whether that choice is final (may be cached)."""
        if self._tracer_provider is not None:
            return self._tracer_provider, True
        global_provider = trace.get_tracer_provider()
        if _setup.traces_deliverable(global_provider):
            return global_provider, True
        return (self._fallback, False) if self._fallback is not None else (None, False)

    def tracer(self) -> Tracer:
        """promptstamp's tracer (fetch and scope spans) on the provider chosen by ``install()``."""
        with self._lock:
            if self._tracer is not None:
                return self._tracer
            provider, final = self._provider()
            tracer = trace.get_tracer(SCOPE_NAME, VERSION, tracer_provider=provider)
            if final:
                self._tracer = tracer
            return tracer

    def traces_deliverable(self) -> bool:
        with self._lock:
            provider, _ = self._provider()
        return _setup.traces_deliverable(provider)

    def use(self, logger_provider: LoggerProvider | None) -> None:
        """Send records to ``logger_provider``.

        ``None`` keeps a provider given earlier, else means the global provider, which may be
        set after this call: OTel's proxy logger forwards to it once it exists (and drops
        records until then).
        """
        with self._lock:
            if logger_provider is None and self._explicit is not None:
                return
            self._logger = get_logger(SCOPE_NAME, VERSION, logger_provider=logger_provider)
            self._explicit = logger_provider

    def delivers(self) -> bool:
        """Whether a record emitted now reaches a real ``LoggerProvider``."""
        with self._lock:
            provider = self._explicit
        return _setup.logs_deliverable(provider if provider is not None else get_logger_provider())

    def _current(self) -> Logger:
        with self._lock:
            if self._logger is None:
                self._logger = get_logger(SCOPE_NAME, VERSION)
            return self._logger

    def begin(self, key: str, label: str) -> Fetching:
        """Start the fetch span as a child of the current span and make it current."""
        parent = otel_context.get_current()
        span = self.tracer().start_span(contract.FETCH_SPAN_NAME, context=parent)
        # set after the start: a baggage processor may have copied an outer prompt's entries
        span.set_attributes({contract.PROMPT_KEY: key, contract.PROMPT_LABEL: label})
        return Fetching(span, parent, otel_context.attach(trace.set_span_in_context(span, parent)))

    def _finish(self, fetching: Fetching) -> None:
        token, fetching.token = fetching.token, None
        if token is not None:
            otel_context.detach(token)

    def handed_out(self, key: str, label: str, resolution: Resolution, fetching: Fetching) -> None:
        """Record a prompt handed out: the fetch span's event, the log record, the active span."""
        self._finish(fetching)
        now_ns = time.time_ns()  # when the fetch resolved: one time for the record and the event
        self._record(fetching.span, fetching.parent, _record_attributes(key, label, resolution), now_ns)
        version = resolution.template.version

        span = trace.get_current_span(fetching.parent)
        if not span.is_recording():
            return
        span.set_attribute(contract.FETCH_SOURCE, resolution.source)
        if resolution.error_type:
            span.set_attribute(contract.FETCH_ERROR_TYPE, resolution.error_type)
        if resolution.source == contract.SOURCE_CACHE:
            event: dict[str, AttributeValue] = {
                contract.PROMPT_KEY: key,
                contract.PROMPT_LABEL: label,
                contract.FETCH_ERROR_TYPE: resolution.error_type or "",
            }
            if version is not None:
                event[contract.PROMPT_VERSION] = int(version)
            span.add_event(contract.CACHE_FALLBACK_EVENT, event, timestamp=now_ns)

    def reused(self, key: str, label: str, resolution: Resolution) -> int:
        """Record a handle re-entered (``with p:``) in a trace that has no record of it yet: a
        fetch span of no duration, now, saying the same version. No fetch is made. Returns the
        trace id it was recorded in."""
        now_ns = time.time_ns()
        parent = otel_context.get_current()
        span = self.tracer().start_span(contract.FETCH_SPAN_NAME, context=parent, start_time=now_ns)
        self._record(span, parent, _record_attributes(key, label, resolution), now_ns)
        return span.get_span_context().trace_id

    def _record(self, span: trace.Span, parent: Context, attributes: dict[str, AttributeValue],
                now_ns: int) -> None:
        """The record on the fetch span (which it ends) and as a log record with its ids."""
        span.set_attributes(attributes)  # key and label again: a re-entry's span did not get them
        span.add_event(contract.FETCH_EVENT_NAME, attributes, timestamp=now_ns)
        self._current().emit(
            LogRecord(
                timestamp=now_ns,
                context=trace.set_span_in_context(span, parent),
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                attributes=attributes,
                event_name=contract.FETCH_EVENT_NAME,
            )
        )
        recording = span.is_recording()
        span.end(end_time=now_ns)
        if not recording and not self.traces_deliverable() and not self.delivers():
            # stacklevel: here <- handed_out/reused <- PromptScope._open/_Prompt.__enter__ <- the app
            _setup.warn_once("no-delivery", _setup.NO_DELIVERY, stacklevel=5)

    def failed(self, error_type: str, fetching: Fetching) -> None:
        """Record that nothing was handed out: on the fetch span (error status, no event, so no
        record) and on the span active at fetch time."""
        self._finish(fetching)
        fetching.span.set_attribute(contract.FETCH_SOURCE, contract.SOURCE_UNAVAILABLE)
        fetching.span.set_attribute(contract.FETCH_ERROR_TYPE, error_type)
        fetching.span.set_status(Status(StatusCode.ERROR, error_type))
        fetching.span.end()
        span = trace.get_current_span(fetching.parent)
        if span.is_recording():
            span.set_attribute(contract.FETCH_SOURCE, contract.SOURCE_UNAVAILABLE)
            span.set_attribute(contract.FETCH_ERROR_TYPE, error_type)


def _record_attributes(key: str, label: str, resolution: Resolution) -> dict[str, AttributeValue]:
    """The fetch record's attributes (contract §2): the version an int, absent for a fallback."""
    attributes: dict[str, AttributeValue] = {
        contract.PROMPT_KEY: key,
        contract.PROMPT_LABEL: label,
        contract.FETCH_SOURCE: resolution.source,
    }
    if resolution.template.version is not None:
        attributes[contract.PROMPT_VERSION] = int(resolution.template.version)
    if resolution.error_type:
        attributes[contract.FETCH_ERROR_TYPE] = resolution.error_type
    return attributes
