"""``replay(...)``: recordings through the relay's processor, as a test sees them.

The same code path as ``promptstamp-relay replay`` (``promptstamp_relay.replay.run_inputs``):
the same processor, the same virtual clock, the same output lines. The relay is imported when
``replay`` is first called, not when this module is imported (pytest start-up stays cheap).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# ``Generation.reason`` words for spans Langfuse types otherwise, and for generations made
# outside the prompt's scope: one table for the relay and this package.
from promptstamp_contract.reasons import NOT_A_GENERATION, OUTSIDE_PROMPT_SCOPE

if TYPE_CHECKING:
    from promptstamp.testing._langfuse import Observation

__all__ = ["Generation", "ReplayResult", "load_relay_config", "replay"]

_PROMPT_KEY = "app.prompt.key"
_PROMPT_LABEL = "app.prompt.label"
_META = "langfuse.observation.metadata."
_MODEL_ATTRIBUTES = ("langfuse.observation.model.name", "gen_ai.request.model", "gen_ai.response.model",
                     "llm.model_name", "model", "ai.model.id")
_LINKED = ("langfuse.observation.prompt.name", "langfuse.prompt.name", "ai.telemetry.metadata.langfusePrompt")


@dataclass(frozen=True)
class Generation:
    """One generation span that carries a prompt key, and what it was linked to.

    ``version`` is ``None`` when it is not linked; ``reason`` then says why:
    ``no_fetch_record``, ``fallback_only``, ``hold_expired`` or ``not_a_generation``
    (see :data:`promptstamp.testing.REASONS` for the words). Ids are lower-case hex.
    """

    trace_id: str
    span_id: str
    span_name: str
    key: str
    label: str
    prompt_name: str
    version: int | None
    resolution: str  # trace | instance | latest | api | unresolved ("" when never stamped)
    source: str | None  # the answering fetch record's app.prompt.fetch.source
    reason: str | None = None
    service: str = ""
    langfuse_type: str = "GENERATION"

    @property
    def linked(self) -> bool:
        return self.version is not None


@dataclass
class ReplayResult:
    """What a replay gave: generations as stamped, every output span, the output lines."""

    generations: list[Generation]
    spans: list[Observation]
    lines: list[str]
    #: Spans with a prompt key and a model attribute that Langfuse types otherwise (never linked).
    not_generations: list[Generation] = field(default_factory=list)
    #: Generations with no prompt key in a trace with a fetch record (``outside_prompt_scope``).
    outside_scope: list[Generation] = field(default_factory=list)
    #: ``(input, line, reason)`` for every fetch record the relay rejected.
    invalid_fetch_records: list[tuple[str, int, str]] = field(default_factory=list)
    fetch_records: int = 0  # accepted ones, fallback included

    @property
    def unresolved(self) -> list[Generation]:
        """The generations left without a version."""
        return [g for g in self.generations if g.version is None]

    def by_tier(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for g in self.generations:
            counts[g.resolution] = counts.get(g.resolution, 0) + 1
        return counts


def load_relay_config(config: Any = None, *, overrides: Mapping[str, Any] | None = None) -> Any:
    """A relay ``Config`` from ``None`` (defaults), a path to a YAML file, a mapping shaped like
    that file, or a ``Config`` (then ``overrides`` are not applied). ``overrides``: dotted keys,
    applied last. The environment is not read: a test gives the same result on every machine."""
    from promptstamp_relay.config import Config, load_config

    if isinstance(config, Config):
        return config
    overrides = dict(overrides or {})
    if config is None or isinstance(config, (str, os.PathLike)):
        return load_config(config, env={}, overrides=overrides)
    if isinstance(config, Mapping):
        import yaml

        with tempfile.TemporaryDirectory(prefix="promptstamp-config-") as tmp:
            path = Path(tmp) / "relay.yaml"
            path.write_text(yaml.safe_dump(dict(config)), encoding="utf-8")
            return load_config(path, env={}, overrides=overrides)
    raise TypeError(f"config must be None, a path, a mapping or a Config, got {type(config).__name__}")


def _is_inline(item: object) -> bool:
    return (isinstance(item, str) and item.lstrip().startswith("{")) or isinstance(item, Mapping) or (
        hasattr(item, "SerializeToString") and hasattr(item, "DESCRIPTOR"))


def _inline_text(item: object) -> list[str]:
    if isinstance(item, str):
        return item.splitlines()
    if isinstance(item, Mapping):
        import json

        return [json.dumps(item)]
    from promptstamp_relay.wire.otlpjson import encode_line

    return [encode_line(item)]


def _hex(b: bytes) -> str:
    return b.hex()


def generation_from_record(record: Any) -> Generation:
    """A ``promptstamp_relay.core.model.GenerationRecord`` as a :class:`Generation`."""
    return Generation(
        trace_id=_hex(record.trace_id), span_id=_hex(record.span_id), span_name=record.span_name,
        key=record.key, label=record.label, prompt_name=record.prompt_name, version=record.version,
        resolution=record.resolution, source=record.source, reason=record.reason,
        service=record.service,
    )


def generation_from_observation(o: Observation, reason: str | None = None) -> Generation | None:
    """A generation as Langfuse received it (a stamped GENERATION observation), or, for a span
    with a prompt key and a model that Langfuse types otherwise, a ``not_a_generation`` entry.
    None for anything else."""
    key = o.attributes.get(_PROMPT_KEY)
    if not isinstance(key, str) or not key:
        return None
    meta = o.metadata
    label = meta.get("prompt_label", o.attributes.get(_PROMPT_LABEL, ""))
    service = o.service_name or ""
    if o.type != "GENERATION":
        if any(m in o.attributes for m in _MODEL_ATTRIBUTES) and not any(k in o.attributes for k in _LINKED):
            return Generation(o.trace_id, o.span_id, o.name, key, str(label), key, None, "", None,
                              NOT_A_GENERATION, service, o.type)
        return None
    resolution = meta.get("prompt_resolution")
    if resolution is None:
        return None  # linked by the app itself, or not stamped: not the relay's
    version = o.prompt_version
    if version is None and reason is None:
        reason = "no_fetch_record"
    source = meta.get("prompt_source")
    return Generation(
        o.trace_id, o.span_id, o.name, key, str(label), str(meta.get("prompt_name", key)), version,
        str(resolution), None if source is None else str(source), None if version is not None else reason,
        service, o.type,
    )


def _langfuse_type(attrs: Mapping[str, object], *, scope_name: str = "", scope_version: str = "",
                   span_name: str = "") -> str:
    """Langfuse's observation type: the relay's table when it has one, else this package's."""
    from promptstamp_contract import langfuse_typing as detect

    table = getattr(detect, "langfuse_type", None)
    if table is not None:
        return str(table(attrs, scope_name=scope_name, scope_version=scope_version, span_name=span_name))
    from promptstamp.testing._langfuse import observation_type

    return observation_type(attrs, None, scope_name or None, scope_version or None)


def replay(*inputs: Any, config: Any = None) -> ReplayResult:
    """Run recordings through the relay's processor, deterministically (contract §5).

    Each input is a path (``str`` or ``os.PathLike``; plain, gzip or zstd), or inline data: an
    OTLP/JSON line (a ``str`` starting with ``{``, several lines allowed), a ``dict`` shaped like
    one, or an ``ExportTraceServiceRequest`` / ``ExportLogsServiceRequest``. Consecutive inline
    items form one input, in the order given; each path is an input of its own; several inputs
    are merged by timestamp as ``promptstamp-relay replay`` merges files.

    ``config``: ``None`` (the relay's defaults), a YAML path, a mapping shaped like the YAML file
    (``{"hold": {"seconds": 5}}``) or a relay ``Config``. Exporter settings are not needed.
    """
    import contextlib

    from promptstamp.testing._langfuse import RejectedObservation, _map_request
    from promptstamp_relay.replay import (
        REPLAY_OVERRIDES,
        OutsideScope,
        keyless_generations,
        mistyped_spans,
        open_input,
        outside_prompt_scope,
        run_inputs,
    )

    cfg = load_relay_config(config, overrides=REPLAY_OVERRIDES)
    if not inputs:
        raise TypeError("replay() needs at least one recording (a path or OTLP/JSON lines)")
    lines: list[str] = []
    spans: list[Observation] = []
    mistyped: list[Generation] = []
    keyless: list[OutsideScope] = []

    def emitted(request: Any) -> None:
        keyless.extend(keyless_generations(request, _langfuse_type))
        for item in _map_request(request):
            spans.append(item.observation if isinstance(item, RejectedObservation) else item)
        for m in mistyped_spans(request, _langfuse_type):
            mistyped.append(Generation(
                _hex(m.trace_id), _hex(m.span_id), m.span_name, m.key, m.label, m.key, None, "", None,
                NOT_A_GENERATION, "", m.langfuse_type))

    with contextlib.ExitStack() as stack:
        sources: list[tuple[str, Iterable[str]]] = []
        inline: list[str] = []
        for item in inputs:
            if _is_inline(item):
                inline.extend(_inline_text(item))
                continue
            if inline:
                sources.append((f"<lines {len(sources) + 1}>", inline))
                inline = []
            path = os.fspath(item)
            sources.append((path, stack.enter_context(open_input(path))))
        if inline:
            sources.append((f"<lines {len(sources) + 1}>", inline))
        run = run_inputs(cfg, sources, lines.append, emitted=emitted)
    summary = run.summary
    return ReplayResult(
        generations=[generation_from_record(g) for g in summary.generations],
        spans=spans,
        lines=lines,
        not_generations=mistyped,
        outside_scope=[outside_generation(o.trace_id.hex(), o.span_id.hex(), o.span_name)
                       for o in outside_prompt_scope(keyless, summary.fetch_records)],
        invalid_fetch_records=[(b.source, b.line, b.reason) for b in summary.invalid_fetch_records],
        fetch_records=len(summary.fetch_records),
    )


def outside_generation(trace_id: str, span_id: str, span_name: str, service: str = "") -> Generation:
    """A generation made outside any prompt's scope (no key, never linked)."""
    return Generation(trace_id, span_id, span_name, "", "", "", None, "", None, OUTSIDE_PROMPT_SCOPE, service)


def generations_of(result_or_generations: Any) -> tuple[Sequence[Generation], Sequence[Generation]]:
    """``(generations, the others that cannot link)`` of a :class:`ReplayResult`, a live relay
    (what Langfuse received so far), or an iterable of :class:`Generation`: the others are spans
    Langfuse does not type as generations (``not_a_generation``) and generations made outside
    the prompt's scope (``outside_prompt_scope``)."""
    if isinstance(result_or_generations, ReplayResult):
        r = result_or_generations
        return r.generations, [*r.not_generations, *r.outside_scope]
    getter = getattr(result_or_generations, "generations", None)
    if callable(getter):  # a LiveRelay
        others = list(result_or_generations.not_generations())
        outside = getattr(result_or_generations, "outside_scope", None)
        if callable(outside):
            others += outside()
        return list(getter()), others
    gens = list(result_or_generations)
    for g in gens:
        if not isinstance(g, Generation):
            raise TypeError(f"expected a ReplayResult, a relay or Generation items, got {type(g).__name__}")
    other = (NOT_A_GENERATION, OUTSIDE_PROMPT_SCOPE)
    return [g for g in gens if g.reason not in other], [g for g in gens if g.reason in other]
