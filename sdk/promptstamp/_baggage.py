"""The two ``app.prompt.*`` baggage entries: writing, reading, and refusing them from outside.

Only ``app.prompt.key`` and ``app.prompt.label`` are ever written (contract §1). Baggage is
propagated by every instrumented HTTP client to every host it calls, third parties included —
see ``docs/baggage.md`` for which clients send it and how to keep it from the model provider.

A service that accepts requests from callers it does not trust should not let them choose which
prompt its spans claim: ``install(trust_inbound_baggage=False)`` wraps the global propagator in
``UntrustedPromptBaggage``, which drops ``app.prompt.*`` entries arriving in a request's
``baggage`` header while leaving every other entry, and every entry set locally, alone.
"""

from __future__ import annotations

from collections.abc import Mapping

from opentelemetry import baggage
from opentelemetry.context import Context, get_current
from opentelemetry.propagators import textmap

import promptstamp_contract as contract

from ._validate import MAX_KEY_LENGTH, MAX_LABEL_LENGTH, is_valid_entry

_ENTRIES: tuple[tuple[str, int], ...] = (
    (contract.PROMPT_KEY, MAX_KEY_LENGTH),
    (contract.PROMPT_LABEL, MAX_LABEL_LENGTH),
)


def with_prompt(key: str, label: str, context: Context | None = None) -> Context:
    """``context`` (default: current) plus the two entries. Callers validate key and label."""
    ctx = baggage.set_baggage(contract.PROMPT_KEY, key, context)
    return baggage.set_baggage(contract.PROMPT_LABEL, label, ctx)


def prompt_attributes(context: Context | None = None) -> dict[str, str]:
    """The entries present in ``context`` that look like ones promptstamp writes.

    Anything else under those names (too long, not printable ASCII, not a string) is ignored
    rather than copied onto spans.
    """
    entries: Mapping[str, object] = baggage.get_all(context)
    found: dict[str, str] = {}
    for name, max_length in _ENTRIES:
        value = entries.get(name)
        if is_valid_entry(value, max_length):
            found[name] = str(value)
    return found


def strip_inbound(before: Context, after: Context) -> Context:
    """``after`` with each ``app.prompt.*`` entry put back to what it was in ``before``."""
    ctx = after
    for name, _ in _ENTRIES:
        old = baggage.get_baggage(name, before)
        if baggage.get_baggage(name, ctx) == old:
            continue
        ctx = baggage.remove_baggage(name, ctx) if old is None else baggage.set_baggage(name, old, ctx)
    return ctx


class UntrustedPromptBaggage(textmap.TextMapPropagator):
    """A propagator wrapper whose ``extract`` ignores inbound ``app.prompt.*`` baggage.

    Injection, and extraction of everything else (trace context, other baggage), is the
    wrapped propagator's.
    """

    def __init__(self, inner: textmap.TextMapPropagator) -> None:
        self.inner = inner

    def extract(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        getter: textmap.Getter[textmap.CarrierT] = textmap.default_getter,
    ) -> Context:
        before = context if context is not None else get_current()
        return strip_inbound(before, self.inner.extract(carrier, before, getter))

    def inject(
        self,
        carrier: textmap.CarrierT,
        context: Context | None = None,
        setter: textmap.Setter[textmap.CarrierT] = textmap.default_setter,
    ) -> None:
        self.inner.inject(carrier, context, setter)

    @property
    def fields(self) -> set[str]:
        return self.inner.fields
