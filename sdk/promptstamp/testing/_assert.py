"""``assert_all_linked``: fail a test, in words, when a generation is not linked to its prompt."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from promptstamp.testing._replay import Generation, generations_of
from promptstamp_contract import reasons
from promptstamp_contract.reasons import NOT_A_GENERATION

__all__ = ["REASONS", "assert_all_linked"]

#: Why a generation is not linked, by ``Generation.reason`` (the relay's own words).
REASONS: dict[str, str] = reasons.REASONS

Allowed = str | Callable[[Generation], bool]


def _why(g: Generation) -> str:
    text = REASONS.get(g.reason or "", g.reason or "not linked")
    if g.reason == NOT_A_GENERATION:
        text += f" (Langfuse types it {g.langfuse_type}, and links prompts only to generations)"
    return text


def _where(g: Generation) -> str:
    return f"trace {g.trace_id}, span {g.span_name!r}, key {g.key!r}, label {g.label!r}"


def _allowed(allow: Iterable[Allowed]) -> Callable[[Generation], bool]:
    reasons: set[str] = set()
    predicates: list[Callable[[Generation], bool]] = []
    for a in allow:
        if isinstance(a, str):
            if a not in REASONS:
                raise ValueError(f"allow: unknown reason {a!r}; known: {', '.join(sorted(REASONS))}")
            reasons.add(a)
        elif callable(a):
            predicates.append(a)
        else:
            raise TypeError(f"allow: expected reason names or predicates, got {type(a).__name__}")
    return lambda g: (g.reason in reasons) or any(p(g) for p in predicates)


def assert_all_linked(
    result_or_generations: Any,
    *,
    allow: Iterable[Allowed] | Allowed = (),
    tier: str | Iterable[str] | None = None,
    min_count: int = 1,
) -> None:
    """Fail unless every generation that carries a prompt key is linked to a prompt version.

    ``result_or_generations``: a ``ReplayResult`` (``promptstamp_replay``), the live relay
    (``promptstamp_relay``: what Langfuse has received so far), or an iterable of
    :class:`Generation`. With a result or the relay, spans that carry a prompt key and a model
    attribute but that Langfuse types as something else (an agent, a tool...) fail too, and so
    do generations with no prompt key in a trace that has a fetch record (a model call made
    outside the prompt's scope).

    ``allow``: reason names (``"fallback_only"``, ``"hold_expired"``, ``"no_fetch_record"``,
    ``"trace_record_missing"``, ``"not_a_generation"``, ``"outside_prompt_scope"``) or
    predicates ``Generation -> bool`` for unlinked ones to accept.
    ``tier``: the resolution tier(s) every linked generation must have (``"trace"``).
    ``min_count``: fail when fewer generations than this were found at all (a recording or app
    that produced none usually means the test is not testing what it says).

    The message lists each failing generation: trace, span name, key, label, and why.
    """
    generations, mistyped = generations_of(result_or_generations)
    if isinstance(allow, str) or callable(allow):
        allow = [allow]
    ok = _allowed(allow)
    tiers = None if tier is None else ({tier} if isinstance(tier, str) else set(tier))
    problems: list[str] = []
    unlinked = 0
    for g in [*generations, *mistyped]:
        if not g.linked:
            if not ok(g):
                unlinked += 1
                problems.append(f"  - {_where(g)}: {_why(g)}")
        elif tiers is not None and g.resolution not in tiers:
            problems.append(f"  - {_where(g)}: linked to version {g.version} at tier {g.resolution!r}, "
                            f"expected {' or '.join(repr(t) for t in sorted(tiers))}")
    total = len(generations) + len(mistyped)
    if total < min_count:
        raise AssertionError(
            f"expected at least {min_count} generation(s) with a prompt key, found {total} "
            "(pass min_count=0 if none is right)")
    if problems:
        head = (f"{unlinked} of {total} generation(s) not linked to a prompt version"
                if unlinked else f"{len(problems)} of {total} generation(s) linked at another tier")
        if unlinked and len(problems) > unlinked:
            head += f", {len(problems) - unlinked} linked at another tier"
        raise AssertionError(head + ":\n" + "\n".join(problems))
