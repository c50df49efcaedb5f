"""What ``with promptstamp.prompt(...) as p`` gives the app: one prompt version, and its origin."""

from __future__ import annotations

import copy
from typing import Any

from ._fetch import Resolution


class _Prompt:
    """A prompt handed out by ``promptstamp.prompt()``. Read-only; safe to pass around."""

    __slots__ = ("_label", "_name", "_resolution")

    def __init__(self, name: str, label: str, resolution: Resolution) -> None:
        self._name = name
        self._label = label
        self._resolution = resolution

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
        return self._resolution.template.compile_text(variables)
