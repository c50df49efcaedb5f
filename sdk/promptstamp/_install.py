"""``install()``: wire promptstamp into the app's OpenTelemetry set-up, once.

Also runs the set-up checks (``_setup``) that warn when that set-up cannot work: at
``install()``, and again at the first prompt handed out (the app may build its Langfuse client,
with Langfuse's own span processor, after calling ``install()``).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

from . import _setup
from ._baggage import UntrustedPromptBaggage
from ._fetch import Fetcher, FetchSettings, check_seconds
from ._fetchlog import FetchLog

if TYPE_CHECKING:
    from langfuse import Langfuse
    from opentelemetry._logs import LoggerProvider
    from opentelemetry.trace import TracerProvider

_log = logging.getLogger("promptstamp")


class _Runtime:
    """Process-wide state: the fetcher (client + cache), the fetch log, where we installed."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetcher = Fetcher()
        self.fetch_log = FetchLog()
        self.providers: weakref.WeakSet[Any] = weakref.WeakSet()
        self.checked_at_hand_out = False
        self.explicit_tracer_provider = False  # install() was given one: fetch spans go there

    def check_at_first_hand_out(self) -> None:
        """The Langfuse check again, once, at the first prompt handed out."""
        with self.lock:
            if self.checked_at_hand_out:
                return
            self.checked_at_hand_out = True
            providers = list(self.providers)
        for provider in providers:
            # stacklevel: check <- here <- PromptScope._open <- __enter__ <- the app
            _setup.check_langfuse_processors(provider, stacklevel=4)


RUNTIME = _Runtime()


def _add_processor(tracer_provider: Any) -> bool:
    """Add the baggage processor to ``tracer_provider`` once; ``False`` if it cannot take one."""
    if tracer_provider in RUNTIME.providers:
        return True
    add = getattr(tracer_provider, "add_span_processor", None)
    if add is None:
        _log.warning(
            "promptstamp.install(): the tracer provider %r cannot take span processors (no "
            "OpenTelemetry SDK TracerProvider is set), so spans will not carry app.prompt.*; "
            "pass tracer_provider=, set a global SDK provider first, or use "
            "promptstamp.configure()",
            tracer_provider,
        )
        return False
    from ._processor import PromptBaggageSpanProcessor

    add(PromptBaggageSpanProcessor())
    RUNTIME.providers.add(tracer_provider)
    return True


def _langfuse_tracer_provider(client: Any) -> Any:
    """The tracer provider a Langfuse client (v4, v5) creates its spans on, if tracing is on."""
    resources = getattr(client, "_resources", None)
    return getattr(resources, "tracer_provider", None)


def _set_inbound_trust(trust: bool) -> None:
    from opentelemetry import propagate  # reads OTEL_PROPAGATORS entry points: not at import

    current = propagate.get_global_textmap()
    if trust and isinstance(current, UntrustedPromptBaggage):
        propagate.set_global_textmap(current.inner)
    elif not trust and not isinstance(current, UntrustedPromptBaggage):
        propagate.set_global_textmap(UntrustedPromptBaggage(current))


def install(
    tracer_provider: TracerProvider | None = None,
    logger_provider: LoggerProvider | None = None,
    langfuse: Langfuse | None = None,
    *,
    trust_inbound_baggage: bool | None = None,
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fetch_timeout_seconds: float | None = None,
    max_retries: int | None = None,
) -> None:
    """Wire promptstamp into the app's OpenTelemetry set-up. Call once at start; idempotent.

    * Adds the span processor that copies ``app.prompt.*`` baggage onto every span to
      ``tracer_provider`` (default: the global one, which must be an SDK ``TracerProvider``),
      and to the provider a tracing ``langfuse`` client uses, at most once per provider.
    * Sends the fetch log to ``logger_provider`` (default: the one an earlier call gave, else
      the global ``LoggerProvider``).
    * Fetches prompts with ``langfuse`` (a ``langfuse.Langfuse`` client); without one, a client
      is built on first use from the ``LANGFUSE_*`` environment with ``tracing_enabled=False``.
      Passing a different client than before forgets every cached prompt.
    * ``trust_inbound_baggage=False`` makes the global propagator ignore ``app.prompt.*``
      entries in inbound ``baggage`` headers (for services called by untrusted parties);
      ``True`` undoes that; ``None`` leaves it as it is (trusted unless told otherwise).
    * ``cache_ttl_seconds`` (default 60), ``max_stale_seconds`` (default 300),
      ``fetch_timeout_seconds`` (default: the Langfuse client's timeout, 5 s) and
      ``max_retries`` (``get_prompt`` retries, default 0) set the defaults of every
      ``prompt()``; an argument left ``None`` keeps its current value.

    Warns once (``logging`` and ``warnings``) when the set-up cannot link anything: no SDK
    tracer provider and no ``LoggerProvider``, or the Langfuse SDK's own span processor on the
    provider exporting straight to Langfuse (see ``docs/langfuse-sdk.md``).

    Calling it again with the same arguments changes nothing.
    """
    settings_update: dict[str, float | int] = {}
    if cache_ttl_seconds is not None:
        settings_update["cache_ttl_seconds"] = check_seconds("cache_ttl_seconds", cache_ttl_seconds)
    if max_stale_seconds is not None:
        settings_update["max_stale_seconds"] = check_seconds("max_stale_seconds", max_stale_seconds)
    if fetch_timeout_seconds is not None:
        timeout = check_seconds("fetch_timeout_seconds", fetch_timeout_seconds)
        if timeout <= 0:
            raise ValueError("fetch_timeout_seconds must be > 0")
        settings_update["fetch_timeout_seconds"] = timeout
    if max_retries is not None:
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an int >= 0, got {max_retries!r}")
        settings_update["max_retries"] = max_retries

    provider: Any = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
    providers = [provider]
    langfuse_provider = _langfuse_tracer_provider(langfuse)
    if langfuse_provider is not None and langfuse_provider is not provider:
        providers.append(langfuse_provider)
    with RUNTIME.lock:
        added = [_add_processor(p) for p in providers]
        traced = added[0]  # the app's own provider
        RUNTIME.fetch_log.use(logger_provider)
        if tracer_provider is not None or not RUNTIME.explicit_tracer_provider:
            RUNTIME.fetch_log.use_tracer_provider(tracer_provider, fallback=langfuse_provider)
            RUNTIME.explicit_tracer_provider = tracer_provider is not None
        if langfuse is not None:
            RUNTIME.fetcher.set_client(langfuse)
        settings = RUNTIME.fetcher.settings
        for name, value in settings_update.items():
            setattr(settings, name, value)
        if trust_inbound_baggage is not None:
            _set_inbound_trust(trust_inbound_baggage)
    if not traced and not RUNTIME.fetch_log.delivers():
        _setup.warn_once("no-delivery", _setup.NO_PROVIDERS, stacklevel=2)
    for checked in providers:
        _setup.check_langfuse_processors(checked, stacklevel=2)


def _reset_for_tests() -> None:
    """Forget the client, cache, settings, what was warned, and which providers were set up
    (their processors stay: a provider set up again gets a second, harmless one)."""
    with RUNTIME.lock:
        RUNTIME.fetcher = Fetcher(settings=FetchSettings())
        RUNTIME.fetch_log = FetchLog()
        RUNTIME.checked_at_hand_out = False
        RUNTIME.explicit_tracer_provider = False
        RUNTIME.providers = weakref.WeakSet()
        _set_inbound_trust(True)
    _setup.reset()
