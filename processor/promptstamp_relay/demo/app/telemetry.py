"""OpenTelemetry for the example app: promptstamp's one-call set-up plus an OpenAI instrumentation.

Everything here is ordinary OpenTelemetry. ``promptstamp.configure()`` builds the tracer and
logger providers with OTLP exporters (configured by the standard ``OTEL_EXPORTER_OTLP_*``
variables: point them at your collector or at the relay) and installs promptstamp on them.
An app that already has OpenTelemetry set up calls ``promptstamp.install()`` instead.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from opentelemetry import _logs, trace
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

import promptstamp

INSTRUMENTATIONS = ("openllmetry", "openinference", "openai-v2")


def instrument_openai(which: str) -> None:
    """Turn on one real OpenAI-client instrumentation (each makes the model call a generation)."""
    instrumentor: Any
    if which == "openllmetry":  # opentelemetry-instrumentation-openai (Traceloop)
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        instrumentor = OpenAIInstrumentor()
    elif which == "openinference":  # openinference-instrumentation-openai (Arize)
        from openinference.instrumentation.openai import OpenAIInstrumentor as OIInstrumentor

        instrumentor = OIInstrumentor()
    elif which == "openai-v2":  # opentelemetry-instrumentation-openai-v2 (OpenTelemetry contrib)
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2Instrumentor

        instrumentor = V2Instrumentor()  # type: ignore[no-untyped-call]
    else:
        raise ValueError(f"instrumentation must be one of {', '.join(INSTRUMENTATIONS)}, got {which!r}")
    instrumentor.instrument()


class SpanLedger(SpanProcessor):
    """Remembers every span the app finished, so a run can prove none was lost on the way.

    Called by the SDK on the thread that ends a span; appends under a lock, never blocks long.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spans: list[dict[str, str]] = []

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        return None

    def on_end(self, span: ReadableSpan) -> None:
        ctx = span.get_span_context()
        if ctx is None:
            return
        with self._lock:
            self._spans.append({"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}",
                                "name": span.name})

    def spans(self) -> list[dict[str, str]]:
        with self._lock:
            return list(self._spans)

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def setup(service_name: str, instrumentation: str, *, langfuse: Any = None,
          fetch_timeout_seconds: float | None = None, ledger: SpanLedger | None = None) -> None:
    """OTLP tracing + logging with promptstamp installed, then the OpenAI instrumentation."""
    promptstamp.configure(service_name, langfuse=langfuse, fetch_timeout_seconds=fetch_timeout_seconds)
    if ledger is not None:
        provider: Any = trace.get_tracer_provider()
        provider.add_span_processor(ledger)
    instrument_openai(instrumentation)


def flush_and_shutdown(timeout_millis: int = 10_000) -> bool:
    """Export everything still buffered: the fetch log first, then the spans it resolves."""
    ok = True
    logger_provider: Any = _logs.get_logger_provider()
    tracer_provider: Any = trace.get_tracer_provider()
    for provider in (logger_provider, tracer_provider):
        flush = getattr(provider, "force_flush", None)
        if flush is not None:
            ok = bool(flush(timeout_millis)) and ok
    for provider in (tracer_provider, logger_provider):
        shutdown = getattr(provider, "shutdown", None)
        if shutdown is not None:
            shutdown()
    return ok


def write_report(path: str, ledger: SpanLedger, runs: list[dict[str, Any]], flushed: bool) -> None:
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"spans": ledger.spans(), "runs": runs, "flushed": flushed}, out, indent=1)
