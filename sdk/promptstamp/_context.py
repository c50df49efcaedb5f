"""``promptstamp.prompt()``: fetch a managed prompt and make every span inside say so.

::

    with promptstamp.prompt("order-status-answer", label=label) as p:
        messages = p.compile(query=query, region=region)
        answer = call_the_model(messages)   # its spans carry app.prompt.key / app.prompt.label

On entry, when no span is active, a ``promptstamp.prompt`` span is started for the scope; the
prompt is resolved inside a short ``promptstamp.fetch`` span (see ``_fetch`` for the cache and
the fallback policy), which records the version handed out and ends at once (``_fetchlog``);
then the two ``app.prompt.*`` baggage entries are attached to the current context. On exit —
also when the block raises — they are detached again and the scope span, if any, ends. The
entries live in a ``contextvars`` context: asyncio tasks and ``asyncio.to_thread`` see the
scope they were started in, nested ``prompt()`` blocks restore the outer prompt on exit, and a
label set in one task never leaks into another. Threads of a ``ThreadPoolExecutor`` (and
``loop.run_in_executor``) do **not** inherit it: submit
``contextvars.copy_context().run`` (see ``sdk/README.md``).

``async with`` works the same; a fetch that needs the network then runs in a worker thread
(``asyncio.to_thread``) so the event loop is not blocked.

While a guarded rollout of the label runs, the fetcher hands out its new version to the share of
subjects on the new side (``_rollout``): the subject is the app's ``subject=``, else the trace id
of the fetch span, read (only when a rollout applies) while the fetch span is current, after the
scope span (if any) was started: the trace of the span active at entry, or of the scope span
opened for this ``prompt()``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from types import TracebackType
from typing import Generic, Literal, TypeVar, overload

from ._fetch import Resolution, check_seconds
from ._fetchlog import Fetching
from ._handle import ChatPrompt, TextPrompt, _Prompt
from ._install import RUNTIME
from ._scope import Entered, Usage, enter, leave, open_span_if_none, trace_id_now
from ._template import PromptType, Template, from_fallback
from ._validate import validate_key, validate_label

_log = logging.getLogger("promptstamp")

P = TypeVar("P", bound=_Prompt)


def _trace_subject() -> str:
    """The current trace id as 32 hex digits: the rollout subject when the app gives none. With
    no recording tracer (no valid trace id) every ``prompt()`` is a subject of its own."""
    trace_id = trace_id_now()
    return format(trace_id, "032x") if trace_id else os.urandom(16).hex()


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
        subject: str | None = None,
    ) -> None:
        self._handle_type = handle_type
        self._name = name
        self._label = label
        self._type: PromptType = type_
        self._ttl = cache_ttl_seconds
        self._max_stale = max_stale_seconds
        self._fallback = fallback
        self._subject = subject
        # the subject a rollout splits on, read only when a rollout applies: the app's, else the
        # trace id of the fetch span (current from _begin until the hand-out is recorded)
        self._split_subject: str | Callable[[], str] = subject or _trace_subject
        self._entered = False
        self._scope: Entered | None = None

    def _begin(self) -> Fetching:
        if self._entered:
            raise RuntimeError("a promptstamp.prompt() scope can only be entered once")
        self._entered = True
        self._scope = open_span_if_none(RUNTIME.fetch_log.tracer(), self._name, self._label)
        return RUNTIME.fetch_log.begin(self._name, self._label)

    def _resolve(self) -> Resolution:
        return RUNTIME.fetcher.resolve(
            self._name,
            self._label,
            self._type,
            subject=self._split_subject,
            cache_ttl_seconds=self._ttl,
            max_stale_seconds=self._max_stale,
            fallback=self._fallback,
        )

    def _failed(self, error: BaseException, fetching: Fetching) -> None:
        error_type = getattr(error, "error_type", None) or type(error).__name__
        try:
            RUNTIME.fetch_log.failed(error_type, fetching)
        except Exception:  # telemetry must not replace the app's real error
            _log.warning("promptstamp: could not record a failed fetch", exc_info=True)
        if self._scope is not None:
            leave(self._scope, error)

    def _open(self, resolution: Resolution, fetching: Fetching) -> P:
        usage = Usage(self._name)
        try:
            RUNTIME.fetch_log.handed_out(self._name, self._label, resolution, fetching)
            usage.recorded_in.add(fetching.span.get_span_context().trace_id)
            RUNTIME.check_at_first_hand_out()
        except Exception:
            _log.warning("promptstamp: could not record the prompt fetch", exc_info=True)
        assert self._scope is not None
        enter(self._scope, self._name, self._label, usage)
        return self._handle_type(self._name, self._label, resolution, usage)

    def _close(self, exc: BaseException | None) -> None:
        scope, self._scope = self._scope, None
        if scope is not None:
            leave(scope, exc)

    def __enter__(self) -> P:
        fetching = self._begin()
        try:
            resolution = self._resolve()
        except BaseException as error:
            self._failed(error, fetching)
            raise
        return self._open(resolution, fetching)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc)

    async def __aenter__(self) -> P:
        fetching = self._begin()
        try:
            resolution = RUNTIME.fetcher.fresh(self._name, self._label, self._type, self._ttl,
                                               self._split_subject)
            if resolution is None:
                resolution = await asyncio.to_thread(self._resolve)
        except BaseException as error:
            self._failed(error, fetching)
            raise
        return self._open(resolution, fetching)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._close(exc)


@overload
def prompt(
    name: str,
    label: str = "production",
    *,
    type: Literal["chat"] = "chat",
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fallback: Sequence[Mapping[str, str]] | None = None,
    subject: str | None = None,
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
    subject: str | None = None,
) -> PromptScope[TextPrompt]: ...


def prompt(
    name: str,
    label: str = "production",
    *,
    type: Literal["chat", "text"] = "chat",
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fallback: Sequence[Mapping[str, str]] | str | None = None,
    subject: str | None = None,
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

    ``subject`` is who a guarded rollout splits on (``promptstamp-relay labels rollout``): a
    user or conversation id, so that one user stays on one version for the whole rollout. While
    a rollout of this label runs, the subjects on its new side (its ``share_percent``, by a hash
    of the subject and the rollout's salt) are handed its new version instead of the label's,
    still under this label; ``p.rollout`` says which side (``"new"``, ``"old"``, or ``None``
    when no rollout applies). Without a subject (or with ``""``) the trace id is the subject:
    of the span active at entry, or of the ``promptstamp.prompt`` span opened when none is, so
    every ``prompt()`` of one trace gets the same side. The subject is only hashed: it never
    goes into baggage, spans or logs. Nothing changes without a running rollout.

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
    if subject is not None and not isinstance(subject, str):
        raise TypeError(f"subject must be a str or None, not {subject.__class__!r}")  # `type` is the arg
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
            subject,
        )
    return PromptScope(
        ChatPrompt,
        key,
        checked_label,
        "chat",
        cache_ttl_seconds,
        max_stale_seconds,
        fallback_template,
        subject,
    )
