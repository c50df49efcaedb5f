"""Prompt links in other conventions (contract §3, "Other conventions in"), as one table.

A generation span with no Langfuse link and no ``app.prompt.key`` may still say which prompt
produced it, in another convention. Each row of :data:`CONVENTIONS` is one such form: where the
prompt's name is, where its version is; the first row a span carries wins. Langfuse links none of
them (checked in its ingestion code); the relay turns them into Langfuse's link pair when the
version is a positive integer (an int, or a string of digits), with ``prompt_resolution:
convention``. A fetch record of the span's own trace for that prompt, where there is one,
decides (the app was handed that version), and a disagreement is recorded.

Pure: reads the attributes it is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "CONVENTIONS",
    "Claim",
    "Convention",
    "ConventionReason",
    "claim",
    "parse_version",
]


@dataclass(frozen=True)
class Convention:
    """One convention: ``name_key`` holds the prompt's name (or, when ``mapped``, an id the
    relay's config maps to a prompt name), ``version_key`` its version."""

    name: str
    name_key: str
    version_key: str
    mapped: bool = False
    source: str = ""  # where it comes from, for the docs table


#: In precedence order: the first row whose name key a span carries is the one read.
CONVENTIONS: tuple[Convention, ...] = (
    Convention("gen_ai", "gen_ai.prompt.name", "gen_ai.prompt.version",
               source="OpenTelemetry GenAI semantic conventions (development); version a string"),
    Convention("traceloop", "traceloop.prompt.key", "traceloop.prompt.version",
               source="OpenLLMetry (opentelemetry-semantic-conventions-ai), strings since 0.44"),
    Convention("langfuse_baggage", "langfuse_prompt_name", "langfuse_prompt_version",
               source="Langfuse SDK propagate_attributes(prompt=..., as_baggage=True), copied by a "
                      "baggage span processor"),
    Convention("openinference", "prompt.id", "llm.prompt_template.version", mapped=True,
               source="OpenInference: prompt.id, mapped to a prompt name by "
                      "conventions.openinference_prompts"),
    Convention("openinference_template", "llm.prompt_template.template", "llm.prompt_template.version",
               mapped=True, source="OpenInference using_prompt_template(): the template text, mapped "
                                   "to a prompt name by conventions.openinference_prompts"),
)

#: Every attribute key a convention is read from (the scan looks for them in the same pass).
NAME_KEYS: frozenset[str] = frozenset(c.name_key for c in CONVENTIONS)
KEYS: frozenset[str] = NAME_KEYS | frozenset(c.version_key for c in CONVENTIONS)

#: Why a convention's claim was not linked.
ConventionReason = Literal["convention_version_not_int", "convention_name_not_mapped"]


@dataclass(frozen=True, slots=True)
class Claim:
    """What a span claims in a convention: the prompt name, the version when it is a positive
    integer, else why it cannot be linked; ``raw_version`` as the span wrote it."""

    convention: Convention
    prompt_name: str
    version: int | None
    raw_version: object
    reason: ConventionReason | None


def parse_version(value: object) -> int | None:
    """A positive integer version from an int or a string of ASCII digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, str) and value.isascii() and value.isdigit():
        n = int(value)
        return n if n > 0 else None
    return None


def claim(attrs: Mapping[str, object], mapped_names: Mapping[str, str]) -> Claim | None:
    """The first convention ``attrs`` carry, read; None when they carry none. ``mapped_names``:
    the configured id → prompt name map (OpenInference's ``prompt.id``)."""
    for conv in CONVENTIONS:
        raw_name = attrs.get(conv.name_key)
        if not isinstance(raw_name, str) or not raw_name:
            continue
        raw_version = attrs.get(conv.version_key)
        if conv.mapped:
            name = mapped_names.get(raw_name)
            if name is None:
                return Claim(conv, raw_name, None, raw_version, "convention_name_not_mapped")
        else:
            name = raw_name
        version = parse_version(raw_version)
        reason: ConventionReason | None = None if version is not None else "convention_version_not_int"
        return Claim(conv, name, version, raw_version, reason)
    return None
