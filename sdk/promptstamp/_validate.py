"""What may go into the two ``app.prompt.*`` baggage entries.

Baggage travels in an HTTP header to every instrumented downstream call, and the Python W3C
propagator silently drops entries that are not ASCII (see the field notes). So the prompt key
and label must be short, printable ASCII; anything else is rejected up front with a
``ValueError`` rather than vanishing somewhere between two services.
"""

from __future__ import annotations

from typing import Final

MAX_KEY_LENGTH: Final = 200
MAX_LABEL_LENGTH: Final = 100


def _check(what: str, value: object, max_length: int) -> str:
    if not isinstance(value, str):
        raise TypeError(f"prompt {what} must be a str, not {type(value)!r}")
    if not value:
        raise ValueError(f"prompt {what} must not be empty")
    if len(value) > max_length:
        raise ValueError(
            f"prompt {what} {value[:40]!r}... is {len(value)} characters; the limit is "
            f"{max_length} (it travels in the W3C baggage header)"
        )
    if not value.isascii() or not value.isprintable():
        raise ValueError(
            f"prompt {what} {value!r} must be printable ASCII (it travels in the W3C "
            "baggage header, which drops anything else)"
        )
    if value != value.strip():
        raise ValueError(f"prompt {what} {value!r} must not start or end with whitespace")
    return value


def validate_key(name: object) -> str:
    """Return ``name`` if it can be the ``app.prompt.key`` entry, else raise ``ValueError``."""
    return _check("name", name, MAX_KEY_LENGTH)


def validate_label(label: object) -> str:
    """Return ``label`` if it can be the ``app.prompt.label`` entry, else raise ``ValueError``."""
    return _check("label", label, MAX_LABEL_LENGTH)


def is_valid_entry(value: object, max_length: int) -> bool:
    """Whether a baggage value read back from a context is one we would have written."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= max_length
        and value.isascii()
        and value.isprintable()
        and value == value.strip()
    )
