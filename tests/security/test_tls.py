"""TLS and mTLS on the OTLP/gRPC listener, with a test CA made at test time, real gRPC clients."""

from __future__ import annotations

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import ConfigError, load_config
from tests.otlp_builders import span, traces
from tests.relays import running

from .conftest import Pki, call, relay_config

PAYLOAD = traces([span("tls")]).SerializeToString()


def tls_overrides(pki: Pki, *, mutual: bool = False) -> dict[str, object]:
    o: dict[str, object] = {"tls.cert_file": str(pki.server_cert), "tls.key_file": str(pki.server_key)}
    if mutual:
        o["tls.client_ca_file"] = str(pki.ca)
    return o


def test_tls_handshake_with_the_test_ca(pki: Pki, langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **tls_overrides(pki)), timeout=3) as relay:
        assert call(relay.address, PAYLOAD, credentials=pki.channel_credentials()) == (grpc.StatusCode.OK, "")
        # A plaintext client cannot talk to a TLS listener.
        code, _ = call(relay.address, PAYLOAD, timeout=3)
        assert code == grpc.StatusCode.UNAVAILABLE
        # A client trusting another CA refuses the relay's certificate.
        other = grpc.ssl_channel_credentials(pki.rogue_client_cert.read_bytes())
        code, _ = call(relay.address, PAYLOAD, credentials=other, timeout=3)
        assert code == grpc.StatusCode.UNAVAILABLE
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "tls"


def test_the_otel_sdk_exporter_over_tls(pki: Pki, langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **tls_overrides(pki)), timeout=3) as relay:
        host_port = relay.address.replace("127.0.0.1", "localhost")
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=host_port, credentials=pki.channel_credentials(), timeout=5)))
        with tp.get_tracer("t").start_as_current_span("over-tls"):
            pass
        tp.shutdown()
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "over-tls"


def test_mtls_refuses_a_client_without_a_certificate_or_with_a_foreign_one(
    pki: Pki, langfuse: LangfuseServer
) -> None:
    with running(relay_config(langfuse, **tls_overrides(pki, mutual=True)), timeout=3) as relay:
        code, _ = call(relay.address, PAYLOAD, credentials=pki.channel_credentials(), timeout=3)
        assert code == grpc.StatusCode.UNAVAILABLE  # handshake fails: no client certificate
        code, _ = call(relay.address, PAYLOAD, credentials=pki.channel_credentials(rogue=True), timeout=3)
        assert code == grpc.StatusCode.UNAVAILABLE  # signed by a CA the relay does not trust
        assert relay.stats.spans_received == 0
        ok = call(relay.address, PAYLOAD, credentials=pki.channel_credentials(client=True))
        assert ok == (grpc.StatusCode.OK, "")
        assert relay.stats.spans_received == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tls.cert_file": "/nonexistent/cert.pem", "tls.key_file": "/nonexistent/key.pem"}, "does not exist"),
        ({"tls.cert_file": "CERT"}, "go together"),
        ({"tls.client_ca_file": "CA"}, "needs tls.cert_file"),
    ],
)
def test_tls_config_errors_are_reported_at_start(pki: Pki, overrides: dict[str, str], message: str) -> None:
    resolved = {k: {"CERT": str(pki.server_cert), "CA": str(pki.ca)}.get(v, v) for k, v in overrides.items()}
    with pytest.raises(ConfigError, match=message):
        load_config(None, env={}, overrides=resolved)


def test_default_bind_is_loopback() -> None:
    assert load_config(None, env={}).listen.startswith("127.0.0.1:")
