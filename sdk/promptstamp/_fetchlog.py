"""The fetch log (contract §2): one OTLP log record per prompt handed out.

The record goes through the OTel Logs SDK of the app (whatever exporter its ``LoggerProvider``
has), with ``event_name = "app.prompt.fetch"`` in the LogRecord's own field (OTLP field 12),
the ``trace_id``/``span_id`` of the span active at fetch time, and the attributes
``app.prompt.key``, ``app.prompt.label``, ``app.prompt.version`` (int; absent for a
code-embedded fallback), ``app.prompt.fetch.source`` and, when the fetch failed,
``app.prompt.fetch.error_type``. The relay resolves generation spans to versions from these.

The same record also goes, as a span event named ``app.prompt.fetch`` with the same time and
attributes, onto the span active at fetch time: most apps set up tracing and no Logs SDK, and
the relay takes either (they count once). With neither a real ``LoggerProvider`` nor a
recording span the record reaches nobody, and the first such hand-out warns (``_setup``).

The fetch is also kept visible on the active span: ``app.prompt.fetch.source``,
``app.prompt.fetch.error_type``, and a ``prompt.cache_fallback`` event when a cached copy was
served; a fetch that handed nothing out sets ``app.prompt.fetch.source = "unavailable"``.

Called on the app's thread that enters ``prompt()``; the lock only guards the logger choice.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger, get_logger_provider

import promptstamp_contract as contract

from . import _setup
from ._version import VERSION

if TYPE_CHECKING:
    from opentelemetry._logs import Logger, LoggerProvider
    from opentelemetry.util.types import AttributeValue

    from ._fetch import Resolution

SCOPE_NAME = "promptstamp"


class FetchLog:
    """Emits fetch log records to a chosen ``LoggerProvider`` (default: the global one)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._logger: Logger | None = None
        self._explicit: LoggerProvider | None = None

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

    def handed_out(self, key: str, label: str, resolution: Resolution) -> None:
        """Record a prompt handed out: the log record, the span event, the fetch on the span."""
        ctx = otel_context.get_current()
        now_ns = time.time_ns()  # when the fetch resolved: one time for the record and the event
        attributes: dict[str, AttributeValue] = {
            contract.PROMPT_KEY: key,
            contract.PROMPT_LABEL: label,
            contract.FETCH_SOURCE: resolution.source,
        }
        version = resolution.template.version
        if version is not None:
            attributes[contract.PROMPT_VERSION] = int(version)
        if resolution.error_type:
            attributes[contract.FETCH_ERROR_TYPE] = resolution.error_type
        self._current().emit(
            LogRecord(
                timestamp=now_ns,
                context=ctx,
                severity_number=SeverityNumber.INFO,
                severity_text="INFO",
                attributes=attributes,
                event_name=contract.FETCH_EVENT_NAME,
            )
        )

        span = trace.get_current_span(ctx)
        if not span.is_recording():
            if not self.delivers():
                # stacklevel: here <- PromptScope._open <- __enter__ <- the app
                _setup.warn_once("no-delivery", _setup.NO_DELIVERY, stacklevel=4)
            return
        span.add_event(contract.FETCH_EVENT_NAME, attributes, timestamp=now_ns)
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

    @staticmethod
    def failed(error_type: str) -> None:
        """Record on the active span that nothing was handed out (no log record: no version)."""
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attribute(contract.FETCH_SOURCE, contract.SOURCE_UNAVAILABLE)
            span.set_attribute(contract.FETCH_ERROR_TYPE, error_type)
