"""Entering and leaving a prompt's scope: the scope span, the baggage, and what the scope saw.

Both ``with promptstamp.prompt(...)`` and a handle re-entered with ``with p:`` go through
:func:`enter` and :func:`leave`:

* When no span is active, a span named ``promptstamp.prompt`` is started and made current for
  the scope (contract §2), so the fetch span and every span started inside share one trace.
* The two ``app.prompt.*`` baggage entries are attached (contract §1), with a private context
  value pointing at the scope's :class:`Usage`, so the baggage span processor can count the
  spans started inside (a prompt compiled in a scope where no span ever started is almost
  always a model call made outside it: ``_usage_check`` says so, once per prompt name).

Called on the app's thread (or task) that enters and leaves; the tokens are that context's.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Status, StatusCode

import promptstamp_contract as contract

from . import _setup
from ._baggage import with_prompt

if TYPE_CHECKING:
    from contextvars import Token

__all__ = ["SCOPE_USAGE", "Entered", "Usage", "enter", "leave", "trace_id_now"]

#: The OTel context value under which a scope's :class:`Usage` travels (not baggage: it never
#: leaves the process).
SCOPE_USAGE = otel_context.create_key("promptstamp-scope-usage")


@dataclass(slots=True, eq=False)
class Usage:
    """What happened while one handed-out prompt was in scope (any of its scopes).

    ``spans`` is incremented by the span processor on whichever thread starts a span; a lost
    increment under a race cannot matter, only zero versus not zero is read.
    """

    name: str
    compiled: bool = False
    spans: int = 0
    #: trace ids in which a fetch record for this hand-out was emitted (its fetch span)
    recorded_in: set[int] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(slots=True)
class Entered:
    """Tokens to undo, innermost last, and the scope span if one was started."""

    scope_span: trace.Span | None
    scope_token: Token[Context] | None
    prompt_token: Token[Context] | None = None


def trace_id_now() -> int:
    """The trace id of the active span (0 when none)."""
    return trace.get_current_span().get_span_context().trace_id


def open_span_if_none(tracer: trace.Tracer, key: str, label: str) -> Entered:
    """Start and make current a ``promptstamp.prompt`` span when no span is active."""
    if trace.get_current_span().get_span_context().is_valid:
        return Entered(None, None)
    span = tracer.start_span(
        contract.SCOPE_SPAN_NAME, attributes={contract.PROMPT_KEY: key, contract.PROMPT_LABEL: label}
    )
    return Entered(span, otel_context.attach(trace.set_span_in_context(span)))


def enter(entered: Entered, key: str, label: str, usage: Usage) -> None:
    """Attach the baggage entries and the scope's usage to the current context."""
    ctx = otel_context.set_value(SCOPE_USAGE, usage, with_prompt(key, label))
    entered.prompt_token = otel_context.attach(ctx)


def leave(entered: Entered, exc: BaseException | None) -> None:
    """Detach what :func:`enter` and :func:`open_span_if_none` attached, end the scope span."""
    if entered.prompt_token is not None:
        otel_context.detach(entered.prompt_token)
        entered.prompt_token = None
    span, entered.scope_span = entered.scope_span, None
    if span is not None:
        if exc is not None:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        span.end()
    if entered.scope_token is not None:
        otel_context.detach(entered.scope_token)
        entered.scope_token = None


OUTSIDE_SCOPE = (
    "promptstamp: prompt {name!r} was compiled, but no span started while it was in scope, so "
    "the model call that used it was made outside `with promptstamp.prompt(...)` and its "
    "generation carries no app.prompt.key: the relay cannot link it (replay --check and "
    "assert_all_linked report it as outside_prompt_scope). Make the call inside the scope, or "
    "keep the handle and re-enter it around the call, without a second fetch: "
    "`with p: client.chat.completions.create(messages=messages, ...)`. In a thread pool, carry "
    "the context: `executor.submit(contextvars.copy_context().run, fn, *args)`."
)


def usage_check(usage: Usage) -> None:
    """Run when a compiled handle is collected: warn if no span ever started in its scopes."""
    if usage.compiled and usage.spans == 0:
        _setup.warn_once(f"outside-scope:{usage.name}", OUTSIDE_SCOPE.format(name=usage.name),
                         stacklevel=1, warn=False)
