"""Which spans are generations (contract §3). Pure: looks only at the attributes it is given."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import promptstamp_contract as c

__all__ = ["GenerationRules", "is_generation"]


@dataclass(frozen=True)
class GenerationRules:
    """A span is a generation when any rule matches, unless its Langfuse type says otherwise.

    ``present``: attribute keys whose mere presence marks a generation.
    ``equals``: attribute key → string value that marks a generation.
    """

    present: frozenset[str] = frozenset(
        {c.GEN_AI_OPERATION_NAME, c.GEN_AI_REQUEST_MODEL, c.LLM_REQUEST_TYPE}
    )
    equals: Mapping[str, str] = field(
        default_factory=lambda: {
            c.OPENINFERENCE_SPAN_KIND: "LLM",
            c.LF_OBSERVATION_TYPE: c.OBSERVATION_TYPE_GENERATION,
        }
    )

    def keys(self) -> frozenset[str]:
        """Every attribute key a rule looks at (the scan collects only these)."""
        return self.present | frozenset(self.equals) | {c.LF_OBSERVATION_TYPE}


def is_generation(attrs: Mapping[str, object], rules: GenerationRules) -> bool:
    """``attrs`` maps attribute keys to their python values (strings for string attributes).

    A span whose ``langfuse.observation.type`` is set to anything but ``generation`` is never a
    generation: Langfuse would not link it, so stamping it would only mislead.
    """
    lf_type = attrs.get(c.LF_OBSERVATION_TYPE)
    if lf_type is not None:
        return lf_type == c.OBSERVATION_TYPE_GENERATION
    for key in rules.present:
        if key in attrs:
            return True
    for key, value in rules.equals.items():
        if attrs.get(key) == value:
            return True
    return False
