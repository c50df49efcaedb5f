"""Why a generation ends unlinked, in words: the reason names the relay counts by
(``promptstamp_unresolved_total{reason}``), writes in replay summaries, and ``assert_all_linked``
reports. Defined once, standard library only, so the relay and ``promptstamp.testing`` say the
same thing without importing each other."""

from __future__ import annotations

__all__ = ["NOT_A_GENERATION", "OUTSIDE_PROMPT_SCOPE", "REASONS"]

#: A span with a prompt key and a model attribute that Langfuse types as something else.
NOT_A_GENERATION = "not_a_generation"
#: A generation with no prompt key in a trace that has a fetch record.
OUTSIDE_PROMPT_SCOPE = "outside_prompt_scope"

REASONS: dict[str, str] = {
    "no_fetch_record": "no fetch record for this key and label in the trace or tenant",
    "fallback_only": "a fetch record with source fallback (a code-embedded prompt has no version)",
    "hold_expired": "the hold window ended before its fetch record arrived",
    "trace_record_missing": "its trace's fetch record had not arrived and it could not be held for it "
                            "(hold window full or off); other traces' records are not used for it",
    "convention_version_not_int": "a prompt link in another convention whose version is no positive "
                                  "integer (a hash, v1): recorded, not linked",
    "convention_name_not_mapped": "an OpenInference prompt (prompt.id or template) that "
                                  "conventions.openinference_prompts does not map to a prompt name",
    NOT_A_GENERATION: "not a generation by Langfuse's rules",
    OUTSIDE_PROMPT_SCOPE: "a generation with no prompt key in a trace that has a fetch record: the "
                          "model call ran outside `with promptstamp.prompt(...)`, or in a thread the "
                          "context did not reach; re-enter the prompt around it (`with p:`)",
}
