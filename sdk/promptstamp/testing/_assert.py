"""``assert_all_linked``: fail a test, in words, when a generation is not linked to its prompt."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from promptstamp.testing._replay import NOT_A_GENERATION, OUTSIDE_PROMPT_SCOPE, Generation, generations_of

__all__ = ["REASONS", "assert_all_linked"]

#: Why a generation is not linked, by ``Generation.reason``.
REASONS: dict[str, str] = {
    "no_fetch_record": "no fetch record for this key and label in the trace or tenant",
    "fallback_only": "a fetch record with source fallback (a code-embedded prompt has no version)",
    "hold_expired": "the hold window ended before its fetch record arrived",
    "trace_record_missing": "its trace's fetch record had not arrived and it could not be held for it "
                            "(hold window full or off); other traces' records are not used for it",
    "convention_version_not_int": "a prompt link in another convention whose version is no positive integer "
                                  "(a hash, v1): recorded, not linked",
    "convention_name_not_mapped": "an OpenInference prompt (prompt.id or template) that "
                                  "conventions.openinference_prompts does not map to a prompt name",
    NOT_A_GENERATION: "not a generation by Langfuse's rules",
    OUTSIDE_PROMPT_SCOPE: "a generation with no prompt key in a trace that has a fetch record: the "
                          "model call ran outside `with promptstamp.prompt(...)`, or in a thread the "
                          "context did not reach; re-enter the prompt around it (`with p:`)",
}

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
