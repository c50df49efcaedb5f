"""An immutable snapshot of one prompt version, and how it compiles.

The snapshot is taken once, when a prompt arrives from Langfuse (or from the app's explicit
fallback), and it is what the last-known-good cache keeps — never compiled messages, so a
cached prompt cannot carry an earlier request's variables.

Compilation follows Langfuse's template rules — ``{{ name }}`` is replaced by ``str(value)``
(``None`` gives an empty string); a chat ``{"type": "placeholder", "name": ...}`` entry is
replaced by the list of messages passed under that name — with one deliberate difference:
Langfuse's ``compile()`` leaves an unknown ``{{var}}`` in place silently, this one raises
``PromptVariableError`` naming every missing variable and placeholder before rendering
anything.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import PromptVariableError

PromptType = Literal["chat", "text"]

_OPEN = "{{"
_CLOSE = "}}"


def _variables_in(text: str) -> Iterator[tuple[str, int, int]]:
    """Yield ``(name, start, end)`` for every ``{{ name }}`` in ``text``, left to right."""
    position = 0
    while True:
        start = text.find(_OPEN, position)
        if start < 0:
            return
        close = text.find(_CLOSE, start + len(_OPEN))
        if close < 0:
            return
        end = close + len(_CLOSE)
        yield text[start + len(_OPEN) : close].strip(), start, end
        position = end


def _render(text: str, values: Mapping[str, object]) -> str:
    out: list[str] = []
    position = 0
    for name, start, end in _variables_in(text):
        out.append(text[position:start])
        value = values[name]
        out.append("" if value is None else str(value))
        position = end
    out.append(text[position:])
    return "".join(out)


def _field(item: object, field: str) -> Any:
    if isinstance(item, Mapping):
        return item.get(field)
    return getattr(item, field, None)


@dataclass(frozen=True)
class ChatPart:
    """One entry of a chat template: a message, or a placeholder for a list of messages."""

    role: str | None
    content: str | None
    placeholder: str | None = None

    def as_dict(self) -> dict[str, str]:
        if self.placeholder is not None:
            return {"type": "placeholder", "name": self.placeholder}
        return {"type": "message", "role": self.role or "", "content": self.content or ""}


@dataclass(frozen=True)
class Template:
    """One prompt version as handed out: never mutated, safe to share between threads."""

    name: str
    type: PromptType
    version: int | None
    config: Mapping[str, Any]
    text: str = ""
    parts: tuple[ChatPart, ...] = ()

    @property
    def variables(self) -> tuple[str, ...]:
        """Variable and placeholder names the template needs, in order, without repeats."""
        seen: dict[str, None] = {}
        if self.type == "text":
            for name, _, _ in _variables_in(self.text):
                seen.setdefault(name)
        else:
            for part in self.parts:
                if part.placeholder is not None:
                    seen.setdefault(part.placeholder)
                else:
                    for name, _, _ in _variables_in(part.content or ""):
                        seen.setdefault(name)
        return tuple(seen)

    def raw(self) -> str | list[dict[str, str]]:
        """The uncompiled template, in Langfuse's shape (a fresh copy each time)."""
        if self.type == "text":
            return self.text
        return [part.as_dict() for part in self.parts]

    def check(self, values: Mapping[str, object]) -> None:
        missing = tuple(name for name in self.variables if name not in values)
        if missing:
            raise PromptVariableError(self.name, missing)

    def compile_text(self, values: Mapping[str, object]) -> str:
        self.check(values)
        return _render(self.text, values)

    def compile_chat(self, values: Mapping[str, object]) -> list[dict[str, Any]]:
        self.check(values)
        messages: list[dict[str, Any]] = []
        for part in self.parts:
            if part.placeholder is None:
                messages.append({"role": part.role or "", "content": _render(part.content or "", values)})
                continue
            inserted = values[part.placeholder]
            if isinstance(inserted, (str, bytes)) or not isinstance(inserted, Sequence):
                raise TypeError(
                    f"placeholder {part.placeholder!r} of prompt {self.name!r} takes a list of "
                    f"messages, got {type(inserted)!r}"
                )
            for message in inserted:
                if not isinstance(message, Mapping):
                    raise TypeError(
                        f"placeholder {part.placeholder!r} of prompt {self.name!r} takes a list "
                        f"of message mappings, got an item of type {type(message)!r}"
                    )
                # Inserted as given: their content is not a template (it may be user text).
                messages.append(copy.deepcopy(dict(message)))
        return messages


def _config_of(value: object) -> Mapping[str, Any]:
    return copy.deepcopy(dict(value)) if isinstance(value, Mapping) else {}


def _chat_parts(name: str, raw: object) -> tuple[ChatPart, ...]:
    if isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        raise TypeError(f"chat prompt {name!r} must be a list of messages, got {type(raw)!r}")
    parts: list[ChatPart] = []
    for item in raw:
        if _field(item, "type") == "placeholder":
            placeholder = _field(item, "name")
            if not isinstance(placeholder, str):
                raise TypeError(f"chat prompt {name!r} has a placeholder without a name")
            parts.append(ChatPart(role=None, content=None, placeholder=placeholder))
            continue
        role, content = _field(item, "role"), _field(item, "content")
        if not isinstance(role, str) or not isinstance(content, str):
            raise TypeError(f"chat prompt {name!r} has a message without a string role and content: {item!r}")
        parts.append(ChatPart(role=role, content=content))
    return tuple(parts)


def from_langfuse(fetched: Any) -> Template:
    """Snapshot a Langfuse ``TextPromptClient``/``ChatPromptClient`` (langfuse 4.x and 5.x).

    Only the public fields ``name``, ``version``, ``config`` and ``prompt`` are read. A prompt
    without a positive integer version is refused: it could never be linked, and the
    fetch log must carry the version the app actually received.
    """
    name = str(fetched.name)
    version = fetched.version
    if isinstance(version, bool) or not isinstance(version, int) or version <= 0:
        raise ValueError(f"Langfuse returned prompt {name!r} without a valid version: {version!r}")
    raw = fetched.prompt
    config = _config_of(fetched.config)
    if isinstance(raw, str):
        return Template(name=name, type="text", version=version, config=config, text=raw)
    return Template(name=name, type="chat", version=version, config=config, parts=_chat_parts(name, raw))


def from_fallback(name: str, type_: PromptType, fallback: object) -> Template:
    """Snapshot the app's explicit code-embedded fallback: no version, empty config."""
    if type_ == "text":
        if not isinstance(fallback, str):
            raise TypeError(f"the fallback for text prompt {name!r} must be a str")
        return Template(name=name, type="text", version=None, config={}, text=fallback)
    return Template(name=name, type="chat", version=None, config={}, parts=_chat_parts(name, fallback))
