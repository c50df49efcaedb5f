"""Upstream endpoint spellings, normalised once: used by the config loader (so ``check-config``
and ``--explain`` show the effective value) and by the exporters (so a directly built exporter
agrees). Pure functions, standard library only.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass

from .. import hostport

__all__ = [
    "LANGFUSE_OTLP_PATH",
    "GrpcTarget",
    "grpc_target",
    "langfuse_base_url",
]

# What the relay appends to a Langfuse base URL; ``{base}/api/public/otel`` is what OTel
# exporters and collectors are told (they append ``/v1/traces`` themselves).
LANGFUSE_OTLP_PATH = "/api/public/otel/v1/traces"
# Suffixes people paste from Langfuse's OTel docs, longest first.
_LANGFUSE_SUFFIXES = ("/api/public/otel/v1/traces", "/api/public/otel/v1", "/api/public/otel", "/api/public")


def langfuse_base_url(url: str) -> str:
    """``url`` without a trailing ``/`` and without the OTLP path Langfuse's docs give for OTel
    exporters, so ``https://x/api/public/otel`` and ``https://x`` both mean the Langfuse at ``x``.
    Anything else is returned as given (minus the trailing ``/``)."""
    base = url.strip().rstrip("/")
    for suffix in _LANGFUSE_SUFFIXES:
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


@dataclass(frozen=True)
class GrpcTarget:
    target: str  # host:port, what grpc.*_channel takes
    tls: bool


def grpc_target(endpoint: str, insecure: bool) -> GrpcTarget:
    """An OTLP/gRPC endpoint as the OTel exporters accept it: ``host:port``, or the URL form of
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (``http://host:port`` plain, ``https://host:port`` TLS).

    Without a scheme, ``insecure`` decides. Raises ValueError with a one-line reason.
    """
    value = endpoint.strip()
    if "://" not in value:
        _check_hostport(value)
        return GrpcTarget(value, tls=not insecure)
    url = urllib.parse.urlsplit(value)
    if url.scheme not in ("http", "https"):
        raise ValueError(f"must be host:port, http://host:port or https://host:port, got {endpoint!r}")
    if url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(f"a gRPC endpoint has no path (that is OTLP/HTTP's form), got {endpoint!r}")
    try:
        port = url.port
    except ValueError:
        raise ValueError(f"must end in a port number 0..65535, got {endpoint!r}") from None
    if not url.hostname or port is None:
        raise ValueError(f"must name a host and a port, got {endpoint!r}")
    host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
    return GrpcTarget(f"{host}:{port}", tls=url.scheme == "https")


def _check_hostport(value: str) -> None:
    why = hostport.problem(value)
    if why is not None:
        raise ValueError(why.replace("must be host:port,", "must be host:port, http://host:port or "
                                     "https://host:port,"))
