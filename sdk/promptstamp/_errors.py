"""The errors an app sees from ``promptstamp.prompt()``: three kinds under one base.

``except promptstamp.PromptError`` catches all three; each also keeps the builtin base its
meaning suggests (``LookupError``, ``RuntimeError``, ``ValueError``). Each one carries the
prompt's name and label, and the fetch errors carry the class name of the underlying Langfuse
client error (also recorded on the active span), so a handler can log something useful
without digging through ``__cause__``.
"""

from __future__ import annotations


class PromptError(Exception):
    """Base of every error ``promptstamp.prompt()`` and ``compile()`` raise for a prompt.

    ``name`` is the prompt's name (``app.prompt.key``).
    """

    name: str


class PromptNotFoundError(PromptError, LookupError):
    """Langfuse says the prompt, or the label on it, does not exist (HTTP 404).

    promptstamp fails closed here: it never serves ``latest``, a cached copy or a code-embedded
    fallback instead, because a missing label means someone moved or deleted it and the app
    must not quietly run an unreviewed prompt.
    """

    def __init__(self, name: str, label: str, error_type: str = "NotFoundError", detail: str = "") -> None:
        self.name = name
        self.label = label
        self.error_type = error_type
        message = f"prompt {name!r} has no version labelled {label!r}"
        super().__init__(f"{message} ({detail})" if detail else message)


class PromptUnavailableError(PromptError, RuntimeError):
    """The prompt could not be fetched and nothing usable is cached.

    Raised after a timeout, connection error, 5xx (or any other fetch failure that is not a
    404) when there is no last-known-good copy of that name and label, or the copy is older
    than ``max_stale_seconds``, and the app passed no explicit ``fallback``.
    """

    def __init__(self, name: str, label: str, error_type: str, stale_seconds: float | None = None) -> None:
        self.name = name
        self.label = label
        self.error_type = error_type
        self.stale_seconds = stale_seconds
        if stale_seconds is None:
            why = "nothing cached"
        else:
            why = f"the last known good copy is {stale_seconds:.0f} s old, too old to serve"
        super().__init__(
            f"prompt {name!r} (label {label!r}) is unavailable: fetch failed with {error_type} and {why}"
        )


class PromptVariableError(PromptError, ValueError):
    """``compile()`` was not given every variable (or chat placeholder) the template needs.

    Raised before anything is rendered, so no half-filled prompt reaches the model.
    """

    def __init__(self, name: str, missing: tuple[str, ...]) -> None:
        self.name = name
        self.missing = missing
        super().__init__(f"prompt {name!r} needs variables that were not given: {', '.join(missing)}")
