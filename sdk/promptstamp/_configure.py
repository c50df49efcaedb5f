"""``configure()``: an OTLP set-up for apps that have none, then ``install()``.

The OTLP exporters are optional dependencies and are imported only here, only when needed:
``opentelemetry-exporter-otlp-proto-http`` for the default ``http/protobuf`` protocol,
``opentelemetry-exporter-otlp-proto-grpc`` for ``grpc``. They read the standard
``OTEL_EXPORTER_OTLP_*`` variables (endpoint, headers, timeout, compression) themselves.
"""

from __future__ import annotations

import os
import threading
import uuid
from typing import TYPE_CHECKING, Any

from opentelemetry import trace

import promptstamp_contract as contract

from ._install import install

if TYPE_CHECKING:
    from langfuse import Langfuse
    from opentelemetry.sdk.resources import Resource

_PACKAGES = {
    "http/protobuf": "opentelemetry-exporter-otlp-proto-http",
    "grpc": "opentelemetry-exporter-otlp-proto-grpc",
}
_lock = threading.Lock()


def _protocol(signal: str) -> str:
    protocol = (
        os.environ.get(f"OTEL_EXPORTER_OTLP_{signal}_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol not in _PACKAGES:
        raise ValueError(
            f"promptstamp.configure() supports OTLP protocols {sorted(_PACKAGES)}, got "
            f"{protocol!r} (OTEL_EXPORTER_OTLP_{signal}_PROTOCOL / OTEL_EXPORTER_OTLP_PROTOCOL)"
        )
    return protocol


def _missing(protocol: str, error: ImportError) -> ImportError:
    package = _PACKAGES[protocol]
    return ImportError(
        f"promptstamp.configure() exports OTLP over {protocol} and needs the package "
        f"{package!r}: pip install {package} (or set up OpenTelemetry yourself and call "
        "promptstamp.install())"
    )


def _span_exporter() -> Any:
    protocol = _protocol("TRACES")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
    except ImportError as error:
        raise _missing(protocol, error) from error
    return OTLPSpanExporter()


def _log_exporter() -> Any:
    protocol = _protocol("LOGS")
    try:
        if protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        else:
            from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # type: ignore[assignment]
                OTLPLogExporter,
            )
    except ImportError as error:
        raise _missing(protocol, error) from error
    return OTLPLogExporter()


def _resource(service_name: str | None) -> Resource:
    from opentelemetry.sdk.resources import Resource

    attributes: dict[str, str] = {}
    if service_name:
        attributes[contract.SERVICE_NAME] = service_name
    resource = Resource.create(attributes)
    if contract.SERVICE_INSTANCE_ID not in resource.attributes:
        # The relay's "instance" tier needs it (contract §4); one per process.
        resource = resource.merge(Resource({contract.SERVICE_INSTANCE_ID: str(uuid.uuid4())}))
    return resource


def configure(
    service_name: str | None = None,
    *,
    langfuse: Langfuse | None = None,
    trust_inbound_baggage: bool | None = None,
    cache_ttl_seconds: float | None = None,
    max_stale_seconds: float | None = None,
    fetch_timeout_seconds: float | None = None,
    max_retries: int | None = None,
) -> None:
    """Set up OpenTelemetry for an app that has none, exporting OTLP, then ``install()``.

    Creates a ``TracerProvider`` with a batch OTLP span exporter and a ``LoggerProvider`` with
    a batch OTLP log exporter (for the fetch log), sharing one resource (``service_name``, or
    ``OTEL_SERVICE_NAME``; a random ``service.instance.id`` unless ``OTEL_RESOURCE_ATTRIBUTES``
    sets one), and makes them the global providers. Exporters go to the standard
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` (per-signal variables and ``OTEL_EXPORTER_OTLP_PROTOCOL``
    = ``http/protobuf`` (default) or ``grpc`` are honoured).

    A global SDK provider that already exists is reused rather than replaced, so calling this
    twice, or after the app set up tracing, is safe. The keyword arguments go to ``install()``.

    Raises ``ImportError`` naming the package to install when the OTLP exporter is missing.
    """
    from opentelemetry import _logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    with _lock:
        tracer_provider = trace.get_tracer_provider()
        logger_provider = _logs.get_logger_provider()
        resource: Resource | None = None
        if not isinstance(tracer_provider, TracerProvider):
            resource = _resource(service_name)
            new_tracer_provider = TracerProvider(resource=resource)
            new_tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter()))
            trace.set_tracer_provider(new_tracer_provider)
            tracer_provider = new_tracer_provider
        if not isinstance(logger_provider, LoggerProvider):
            if resource is None:
                resource = getattr(tracer_provider, "resource", None) or _resource(service_name)
            new_logger_provider = LoggerProvider(resource=resource)
            new_logger_provider.add_log_record_processor(BatchLogRecordProcessor(_log_exporter()))
            _logs.set_logger_provider(new_logger_provider)
            logger_provider = new_logger_provider

    install(
        tracer_provider,
        logger_provider,
        langfuse,
        trust_inbound_baggage=trust_inbound_baggage,
        cache_ttl_seconds=cache_ttl_seconds,
        max_stale_seconds=max_stale_seconds,
        fetch_timeout_seconds=fetch_timeout_seconds,
        max_retries=max_retries,
    )
