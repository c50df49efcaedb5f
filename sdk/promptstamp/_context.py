"""``promptstamp.prompt()``: fetch a managed prompt and make every span inside say so.

::

    with promptstamp.prompt("order-status-answer", label=label) as p:
        messages = p.compile(query=query, region=region)
        answer = call_the_model(messages)   # its spans carry app.prompt.key / app.prompt.label

On entry the prompt is resolved (see ``_fetch`` for the cache and the fallback policy), one
fetch log record is emitted and the fetch is recorded on the active span; then the two
``app.prompt.*`` baggage entries are attached to the current context. On exit — also when the
block raises — they are detached again. The entries live in a ``contextvars`` context, so
threads and asyncio tasks each see their own: a label set in one task never leaks into another,
and nested ``prompt()`` blocks restore the outer prompt on exit.

``async with`` works the same; a fetch that needs the network then runs in a worker thread
(``asyncio.to_thread``) so the event loop is not blocked.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from contextvars import Token
from types import TracebackType
from typing import Generic, Literal, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry.context import Context

from ._baggage import with_prompt
from ._errors import PromptNotFoundError, PromptUnavailableError
from ._fetch import Resolution, check_seconds
from ._handle import ChatPrompt, TextPrompt, _Prompt
from ._install import RUNTIME
from ._template import PromptType, Template, from_fallback
from ._validate import validate_key, validate_label

_log = logging.getLogger("promptstamp")

P = TypeVar("P", bound=_Prompt)


class PromptScope(Generic[P]):
    """The context manager ``prompt()`` returns; enter it once (``with`` or ``async with``)."""

    def __init__(
        self,
        handle_type: type[P],
        name: str,
        label: str,
        type_: PromptType,
        cache_ttl_seconds: float | None,
        max_stale_seconds: float | None,
        fallback: Template | None,
    ) -> None:
        self._handle_type = handle_type
        self._name = name
        self._label = label
        self._type: PromptType = type_
        self._ttl = cache_ttl_seconds
        self._max_stale = max_stale_seconds
        self._fallback = fallback
        self._entered = False
        self._token: Token[Context] | None = None

    def _begin(self) -> None:
        if self._entered:
            raise RuntimeError("a promptstamp.prompt() scope can only be entered once")
        self._entered = True

    def _resolve(self) -> Resolution:
        return RUNTIME.fetcher.resolve(
            self._name,
            self._label,
            self._type,
            cache_ttl_seconds=self._ttl,
            max_stale_seconds=self._max_stale,
            fallback=self._fallback,
        )

    def _failed(self, error: PromptNotFoundError | PromptUnavailableError) -> None:
        try:
            RUNTIME.fetch_log.failed(error.error_type)
        except Exception:  # telemetry must not replace the app's real error
            _log.warning("promptstamp: could not record a failed fetch", exc_info=True)

    def _open(self, resolution: Resolution) -> P:
        try:
            RUNTIME.fetch_log.handed_out(self._name, self._label, resolution)
            RUNTIME.check_at_first_hand_out()
        except Exception:
            _log.warning("promptstamp: could not record the prompt fetch", exc_info=True)
        self._token = otel_context.attach(with_prompt(self._name, self._label))
        return self._handle_type(self._name, self._label, resolution)

    def _close(self) -> None:
        token, self._token = self._token, None
        if token is not None:
            otel_context.detach(token)

    def __enter__(self) -> P:
        self._begin()
        try:
            resolution = self._resolve()
        except (PromptNotFoundError, PromptUnavailableError) as error:
            self._failed(error)
            raise
        return self._open(resolution)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()

    async def __aenter__(self) -> P:
        self._begin()
        try:
            resolution = RUNTIME.fetcher.fresh(self._name, self._label, self._type, self._ttl)
            if resolution is None:
                resolution = await asyncio.to_thread(self._resolve)
        except (PromptNotFoundError, PromptUnavailableError) as error:
            self._failed(error)
            raise
        return self._open(resolution)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close()


@overload
def prompt(
    name: str,
    label: str = "production",
    *,
    type: Literal["chat"] = "chat",
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fallback: Sequence[Mapping[str, str]] | None = None,
) -> PromptScope[ChatPrompt]: ...


@overload
def prompt(
    name: str,
    label: str = "production",
    *,
    type: Literal["text"],
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fallback: str | None = None,
) -> PromptScope[TextPrompt]: ...


def prompt(
    name: str,
    label: str = "production",
    *,
    type: Literal["chat", "text"] = "chat",
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fallback: Sequence[Mapping[str, str]] | str | None = None,
) -> PromptScope[ChatPrompt] | PromptScope[TextPrompt]:
    """Fetch prompt ``name`` by ``label`` and stamp every span inside the block with it.

    Use as ``with promptstamp.prompt(...) as p:`` or ``async with``. ``p.compile(**variables)``
    renders it (a message list for ``type="chat"``, the default; a string for ``"text"``), and
    ``p.name``, ``p.label``, ``p.version``, ``p.source``, ``p.config``, ``p.prompt`` describe
    what was handed out.

    ``cache_ttl_seconds`` and ``max_stale_seconds`` override ``install()``'s defaults (60 s and
    300 s) for this call. ``fallback`` is an explicit code-embedded prompt (a message list, or a
    string for text prompts), used only when Langfuse cannot be reached and no cached copy is
    young enough; it has no version and is never linked. A 404 is never covered by it.

    Raises ``ValueError`` at once if ``name`` or ``label`` could not travel in baggage (not
    printable ASCII, or longer than 200/100 characters); on entry,
    ``PromptNotFoundError`` (404: fail closed) or ``PromptUnavailableError`` (fetch failed and
    nothing usable cached).
    """
    key = validate_key(name)
    checked_label = validate_label(label)
    if type not in ("chat", "text"):
        raise ValueError(f"type must be 'chat' or 'text', got {type!r}")
    if cache_ttl_seconds is not None:
        check_seconds("cache_ttl_seconds", cache_ttl_seconds)
    if max_stale_seconds is not None:
        check_seconds("max_stale_seconds", max_stale_seconds)
    fallback_template = None if fallback is None else from_fallback(key, type, fallback)
    if type == "text":
        return PromptScope(
            TextPrompt,
            key,
            checked_label,
            "text",
            cache_ttl_seconds,
            max_stale_seconds,
            fallback_template,
        )
    return PromptScope(
        ChatPrompt,
        key,
        checked_label,
        "chat",
        cache_ttl_seconds,
        max_stale_seconds,
        fallback_template,
    )
