"""``HOST:PORT`` parsed once: listen addresses, endpoints, the admin listener.

``host`` may be a name, an IPv4 address or a bracketed IPv6 address (``[::1]:4317``); the port
0..65535 (0: pick a free one, for listeners). Standard library only; every part of the relay that
reads a ``host:port`` calls :func:`parse` (or :func:`problem` to validate one).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["HostPort", "parse", "problem"]


class HostPort(NamedTuple):
    host: str  # without brackets: "::1", not "[::1]"
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse(value: str) -> HostPort:
    """``value`` as (host, port); ``ValueError`` saying what is wrong (``must be host:port, …``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"must be host:port, got {value!r}")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"must end in a port number 0..65535, got {value!r}")
    if host.startswith("[") != host.endswith("]"):
        raise ValueError(f"an IPv6 host goes in brackets, [::1]:4317, got {value!r}")
    return HostPort(host[1:-1] if host.startswith("[") else host, int(port))


def problem(value: str) -> str | None:
    """Why ``value`` is no ``host:port``, or None."""
    try:
        parse(value)
    except ValueError as e:
        return str(e)
    return None
