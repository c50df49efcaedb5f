"""What ``with promptstamp.prompt(...) as p`` gives the app: one prompt version, and its origin.

A handle can be re-entered, ``with p:``, around a model call made after the scope closed (the
tutorial's helper shape: fetch and compile in one function, call the model in another): the
spans inside carry the prompt again, and no second fetch is made. When the call runs in a trace
that has no record of this hand-out yet, re-entering records one there (a fetch span of no
duration with the same version), so the relay links it at the ``trace`` tier.
"""

from __future__ import annotations

import copy
import logging
import weakref
from contextvars import ContextVar
from types import TracebackType
from typing import Any, TypeVar

from ._fetch import Resolution
from ._scope import Entered, Usage, enter, leave, open_span_if_none, trace_id_now, usage_check

# The ``with p:`` scopes open in this context, innermost last (a handle may be re-entered by
# several threads or tasks at once: each context keeps its own).
_log = logging.getLogger("promptstamp")
_P = TypeVar("_P", bound="_Prompt")

_REENTERED: ContextVar[tuple[tuple[int, Entered], ...]] = ContextVar("promptstamp_reentered", default=())


class _Prompt:
    """A prompt handed out by ``promptstamp.prompt()``. Read-only; safe to pass around and to
    re-enter (``with p:``) from any thread or task."""

    __slots__ = ("__weakref__", "_label", "_name", "_resolution", "_usage")

    def __init__(self, name: str, label: str, resolution: Resolution, usage: Usage | None = None) -> None:
        self._name = name
        self._label = label
        self._resolution = resolution
        self._usage = usage if usage is not None else Usage(name)

    def _compiled(self) -> None:
        usage = self._usage
        if not usage.compiled:
            usage.compiled = True
            # checked when the handle is collected: by then any re-entry has happened
            weakref.finalize(self, usage_check, usage)

    def __enter__(self: _P) -> _P:
        """Put the prompt back in scope around a later call, without fetching again."""
        from ._install import RUNTIME

        fetch_log = RUNTIME.fetch_log
        entered = open_span_if_none(fetch_log.tracer(), self._name, self._label)
        try:
            trace_id = trace_id_now()
            with self._usage.lock:
                new_trace = trace_id not in self._usage.recorded_in
                self._usage.recorded_in.add(trace_id)
            if new_trace:
                fetch_log.reused(self._name, self._label, self._resolution)
        except Exception:  # telemetry must not break the app's call
            _log.warning("promptstamp: could not record the re-entered prompt", exc_info=True)
        enter(entered, self._name, self._label, self._usage)
        _REENTERED.set((*_REENTERED.get(), (id(self), entered)))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack = _REENTERED.get()
        for i in range(len(stack) - 1, -1, -1):
            if stack[i][0] == id(self):
                entered = stack[i][1]
                _REENTERED.set(stack[:i] + stack[i + 1:])
                leave(entered, exc)
                return

    @property
    def name(self) -> str:
        """The prompt name (``app.prompt.key``)."""
        return self._name

    @property
    def label(self) -> str:
        """The label it was fetched by (``app.prompt.label``)."""
        return self._label

    @property
    def version(self) -> int | None:
        """The Langfuse version handed out; ``None`` for a code-embedded fallback."""
        return self._resolution.template.version

    @property
    def source(self) -> str:
        """``"langfuse"`` (Langfuse or the fresh cache), ``"cache"`` (last known good after a
        failed fetch) or ``"fallback"`` (the app's code-embedded prompt)."""
        return self._resolution.source

    @property
    def rollout(self) -> str | None:
        """A guarded rollout's side: ``"new"`` (handed the rollout's new version, under this
        label), ``"old"`` (a running rollout applies to this label's version and this subject
        keeps it, or the new version could not be fetched), ``None`` (no rollout applies)."""
        return self._resolution.rollout

    @property
    def error_type(self) -> str | None:
        """Class name of the fetch error behind a ``cache`` or ``fallback`` hand-out."""
        return self._resolution.error_type

    @property
    def type(self) -> str:
        """``"chat"`` or ``"text"``."""
        return self._resolution.template.type

    @property
    def config(self) -> dict[str, Any]:
        """The version's Langfuse config (model, temperature, ...); a copy, ``{}`` if none."""
        return copy.deepcopy(dict(self._resolution.template.config))

    @property
    def variables(self) -> tuple[str, ...]:
        """The variables (and chat placeholders) ``compile()`` needs."""
        return self._resolution.template.variables

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self._name!r} label={self._label!r} "
            f"version={self.version!r} source={self.source!r}>"
        )


class ChatPrompt(_Prompt):
    """A chat prompt: ``compile()`` gives a list of ``{"role", "content"}`` messages."""

    __slots__ = ()

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The uncompiled messages, in Langfuse's shape (a copy)."""
        raw = self._resolution.template.raw()
        assert isinstance(raw, list)
        return raw

    def compile(self, **variables: object) -> list[dict[str, Any]]:
        """Fill the template. Raises ``PromptVariableError`` naming every missing variable.

        A chat placeholder takes a list of message dicts, inserted as given.
        """
        self._compiled()
        return self._resolution.template.compile_chat(variables)


class TextPrompt(_Prompt):
    """A text prompt: ``compile()`` gives a string."""

    __slots__ = ()

    @property
    def prompt(self) -> str:
        """The uncompiled template."""
        raw = self._resolution.template.raw()
        assert isinstance(raw, str)
        return raw

    def compile(self, **variables: object) -> str:
        """Fill the template. Raises ``PromptVariableError`` naming every missing variable."""
        self._compiled()
        return self._resolution.template.compile_text(variables)
