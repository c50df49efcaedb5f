"""Set-up checks: say once, loudly, when the app's OpenTelemetry set-up cannot work.

Two problems make every generation arrive at the relay unlinked without any error, so
``install()`` and the first ``prompt()`` hand-outs look for them:

* **No way to deliver the fetch record.** The record travels as a log record (needs a real
  ``LoggerProvider``: the OTel Logs SDK's, not the API's proxy or no-op) and as a span event on
  the span active at fetch time (needs a recording span). With neither, it reaches nobody.
* **Langfuse's own span processor exporting straight to Langfuse.** An app tracing with the
  Langfuse SDK (``@observe``, ``start_as_current_observation``) has a ``LangfuseSpanProcessor``
  on its tracer provider; unless it was given ``span_exporter=``, it sends spans to
  ``{base_url}/api/public/otel/v1/traces`` (the same ``base_url`` prompts are fetched from, so
  Langfuse itself), bypassing the relay. Details and the fix: ``docs/langfuse-sdk.md``.

Each problem is reported once per process, as a ``logging.WARNING`` on the ``promptstamp``
logger and a ``UserWarning``. Called from the app's threads (``install()``, ``prompt()``);
``warn_once`` takes a lock. The checks read the Langfuse SDK's objects through attribute
names that v4 and v5 share and never import ``langfuse`` themselves.
"""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["check_langfuse_processors", "logs_deliverable", "reset", "traces_deliverable", "warn_once"]

_log = logging.getLogger("promptstamp")
_lock = threading.Lock()
_warned: set[str] = set()

LANGFUSE_OTLP_PATH = "/api/public/otel/v1/traces"

NO_DELIVERY = (
    "promptstamp: a prompt was handed out with no OpenTelemetry SDK TracerProvider and no "
    "LoggerProvider set, so its fetch record (which version the app received) reaches nobody "
    "and the relay cannot link the generations that used it. Set up an SDK TracerProvider "
    "exporting OTLP to the relay before the first prompt() (or pass it as "
    "`promptstamp.install(tracer_provider=...)`); `promptstamp.configure()` sets one up."
)
NO_PROVIDERS = (
    "promptstamp.install(): there is no OpenTelemetry SDK TracerProvider and no LoggerProvider, "
    "so prompt fetches cannot be recorded anywhere and the relay will leave every generation "
    "unresolved. Set up an SDK TracerProvider (and preferably a LoggerProvider) exporting OTLP "
    "to the relay before calling install(), pass them as install(tracer_provider=..., "
    "logger_provider=...), or call promptstamp.configure() instead."
)


def warn_once(problem: str, message: str, *, stacklevel: int = 2, warn: bool = True) -> bool:
    """Report ``message`` unless ``problem`` was reported before; ``True`` when it was now.

    ``stacklevel`` as for ``warnings.warn`` seen from the caller: 1 is the caller itself.
    ``warn=False``: the log line only (from a finalizer, where a raised warning would be lost).
    """
    with _lock:
        if problem in _warned:
            return False
        _warned.add(problem)
    _log.warning("%s", message)
    if warn:
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)
    return True


def reset() -> None:
    """Forget what was reported (tests only)."""
    with _lock:
        _warned.clear()


def traces_deliverable(provider: Any) -> bool:
    """Whether spans started on ``provider`` can be recorded and exported.

    The API package's own providers (its no-op, and the proxy ``get_tracer_provider()`` returns
    until one is set) record nothing; anything else (the SDK's) is taken as real. A span that
    an SDK provider does not record was sampled out, and so were the generations of its trace.
    """
    return provider is not None and not type(provider).__module__.startswith("opentelemetry.trace")


def logs_deliverable(provider: Any) -> bool:
    """Whether log records emitted to ``provider`` go anywhere.

    The API package's own providers (its no-op, and the proxy ``get_logger_provider()`` returns
    until one is set) drop every record; anything else (the Logs SDK's) is taken as real.
    """
    return provider is not None and not type(provider).__module__.startswith("opentelemetry._logs")


# -- Langfuse's span processor ---------------------------------------------------------------


def _span_processors(tracer_provider: Any) -> tuple[Any, ...]:
    # opentelemetry-sdk's TracerProvider keeps them in its multi-span-processor (private, stable
    # since 1.0); any other provider simply has nothing we can inspect.
    multi = getattr(tracer_provider, "_active_span_processor", None)
    processors = getattr(multi, "_span_processors", ())
    return tuple(processors) if isinstance(processors, (tuple, list)) else ()


def _is_langfuse_processor(processor: Any) -> bool:
    return any(
        cls.__name__ == "LangfuseSpanProcessor" and cls.__module__.split(".")[0] == "langfuse"
        for cls in type(processor).__mro__
    )


def _exporter(processor: Any) -> Any:
    exporter = getattr(processor, "span_exporter", None)  # Simple/BatchSpanProcessor
    # Langfuse wraps the exporter for media upload and masking (LangfuseTransformingSpanExporter).
    for _ in range(3):
        inner = getattr(exporter, "_exporter", None)
        if inner is None or type(exporter).__module__.split(".")[0] != "langfuse":
            break
        exporter = inner
    return exporter


def _langfuse_manager(public_key: Any) -> Any:
    """The Langfuse SDK's per-public-key resource manager, if the app has built one."""
    module = sys.modules.get("langfuse._client.resource_manager")
    manager_class = getattr(module, "LangfuseResourceManager", None)
    instances = getattr(manager_class, "_instances", None)
    return instances.get(public_key) if isinstance(instances, dict) else None


def _straight_to_langfuse(processor: Any) -> str | None:
    """The Langfuse endpoint ``processor`` exports to when Langfuse built the exporter itself."""
    manager = _langfuse_manager(getattr(processor, "public_key", None))
    endpoint = getattr(_exporter(processor), "_endpoint", None)
    if manager is not None:
        if getattr(manager, "span_exporter", None) is not None:
            return None  # the app passed span_exporter=: it chose where spans go
        base_url = str(getattr(manager, "base_url", "") or "").rstrip("/")
        return str(endpoint or f"{base_url}{LANGFUSE_OTLP_PATH}")
    if isinstance(endpoint, str) and endpoint.rstrip("/").endswith(LANGFUSE_OTLP_PATH):
        return endpoint
    return None


def _other_otlp_exporters(processors: tuple[Any, ...]) -> Iterator[Any]:
    for processor in processors:
        if _is_langfuse_processor(processor):
            continue
        exporter = getattr(processor, "span_exporter", None)
        if exporter is not None and type(exporter).__name__.startswith("OTLP"):
            yield exporter


def _drops_promptstamp_spans(processor: Any) -> bool:
    """Whether Langfuse's span filter on ``processor`` would drop promptstamp's fetch span
    (asked of the filter itself, with a span of promptstamp's instrumentation scope)."""
    decide = getattr(processor, "_should_export_span", None)
    if not callable(decide):
        return False
    try:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        probe = ReadableSpan(name="promptstamp.fetch",
                             instrumentation_scope=InstrumentationScope("promptstamp"))
        return not decide(probe)
    except Exception:  # a filter that cannot judge a bare span: nothing to say
        return False


FILTERED_OUT = (
    "promptstamp.install(): the Langfuse SDK's span processor on this TracerProvider exports only "
    "the spans its filter keeps (Langfuse's own, gen_ai.* and known LLM instrumentations), so "
    "promptstamp's fetch span, which carries the version each prompt() handed out, never "
    "leaves the app and the relay cannot link any generation. Pass promptstamp's filter, which "
    "keeps everything Langfuse's default keeps plus promptstamp's spans: "
    "`Langfuse(span_exporter=..., should_export_span=promptstamp.should_export_span)`. "
    "See docs/langfuse-sdk.md."
)


def check_langfuse_processors(tracer_provider: Any, *, stacklevel: int = 2) -> None:
    """Warn once if Langfuse's span processor on ``tracer_provider`` bypasses the relay, drops
    promptstamp's fetch spans, or shares the spans with another OTLP exporter."""
    processors = _span_processors(tracer_provider)
    langfuse = [p for p in processors if _is_langfuse_processor(p)]
    if not langfuse:
        return
    for processor in langfuse:
        endpoint = _straight_to_langfuse(processor)
        if endpoint is None:
            continue
        warn_once(
            "langfuse-bypass",
            "promptstamp.install(): the Langfuse SDK's span processor on this TracerProvider "
            f"exports spans straight to {endpoint}, bypassing the promptstamp relay, so they "
            "are never linked to prompt versions (that is Langfuse's base_url, where prompts "
            "are fetched from too: pointing it at the relay breaks prompt fetches; and with "
            "another exporter to the relay as well, each span is ingested twice and the link "
            "is lost whenever Langfuse's copy lands last). Route Langfuse's spans through the relay instead: "
            "`Langfuse(span_exporter=OTLPSpanExporter(endpoint='http://<relay>:4317', "
            "insecure=True))` (OTLP/gRPC; or the OTLP/HTTP exporter with "
            "endpoint='http://<relay>:4318/v1/traces'), keep base_url pointing at Langfuse "
            "(prompts are fetched from it), and add no second exporter for the same spans. "
            "See docs/langfuse-sdk.md.",
            stacklevel=stacklevel + 1,
        )
        return
    if any(_drops_promptstamp_spans(p) for p in langfuse):
        warn_once("langfuse-filter", FILTERED_OUT, stacklevel=stacklevel + 1)
    if any(True for _ in _other_otlp_exporters(processors)):
        warn_once(
            "langfuse-double-export",
            "promptstamp.install(): this TracerProvider has the Langfuse SDK's span processor "
            "and another OTLP span exporter: every span Langfuse's processor exports is exported "
            "twice, and ingested twice if both reach Langfuse. Keep one exporter for those "
            "spans: give Langfuse span_exporter= pointing at the relay and remove the other. "
            "See docs/langfuse-sdk.md.",
            stacklevel=stacklevel + 1,
        )
