"""TLS and mTLS on the OTLP/HTTP listener (the same ``tls.*`` as gRPC), with the test CA, real
clients: httpx and the OTel SDK's OTLP/HTTP exporter."""

from __future__ import annotations

import ssl

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from promptstamp.testing import LangfuseServer
from tests.otlp_builders import span, traces
from tests.relays import running

from .conftest import Pki, relay_config

PAYLOAD = traces([span("tls-http")]).SerializeToString()
PB = {"Content-Type": "application/x-protobuf"}


def tls_overrides(pki: Pki, *, mutual: bool = False) -> dict[str, object]:
    o: dict[str, object] = {"tls.cert_file": str(pki.server_cert), "tls.key_file": str(pki.server_key)}
    if mutual:
        o["tls.client_ca_file"] = str(pki.ca)
    return o


def url(address: str | None, path: str = "/v1/traces") -> str:
    assert address is not None
    return f"https://{address.replace('127.0.0.1', 'localhost')}{path}"


def test_https_with_the_test_ca(pki: Pki, langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **tls_overrides(pki)), timeout=3) as relay:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki.ca)), trust_env=False, timeout=5) as c:
            assert c.post(url(relay.http_address), content=PAYLOAD, headers=PB).status_code == 200
        # Plain HTTP to a TLS listener gets no OTLP answer.
        assert relay.http_address is not None
        with httpx.Client(trust_env=False, timeout=3) as c, pytest.raises(httpx.HTTPError):
            c.post(f"http://{relay.http_address}/v1/traces", content=PAYLOAD, headers=PB)
        # A client trusting another CA refuses the relay's certificate.
        other = ssl.create_default_context(cafile=str(pki.rogue_client_cert))
        with httpx.Client(verify=other, trust_env=False, timeout=3) as c, pytest.raises(httpx.ConnectError):
            c.post(url(relay.http_address), content=PAYLOAD, headers=PB)
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "tls-http"
        assert relay.stats.spans_received == 1


def test_the_otel_sdk_http_exporter_over_tls(pki: Pki, langfuse: LangfuseServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # requests lets these variables override the exporter's own certificate_file (psf/requests#3829)
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    with running(relay_config(langfuse, **tls_overrides(pki)), timeout=3) as relay:
        tp = TracerProvider()
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(
            endpoint=url(relay.http_address), certificate_file=str(pki.ca), timeout=5)))
        with tp.get_tracer("t").start_as_current_span("over-https"):
            pass
        tp.shutdown()
        assert langfuse.wait_for_observations(1, timeout=10)[0].name == "over-https"


def test_mtls_needs_a_client_certificate_from_the_ca(pki: Pki, langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse, **tls_overrides(pki, mutual=True)), timeout=3) as relay:
        def client(cert: tuple[str, str] | None) -> httpx.Client:
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            if cert is not None:
                ctx.load_cert_chain(*cert)
            return httpx.Client(verify=ctx, trust_env=False, timeout=3)

        for cert in (None, (str(pki.rogue_client_cert), str(pki.rogue_client_key))):
            with client(cert) as c, pytest.raises(httpx.HTTPError):
                c.post(url(relay.http_address), content=PAYLOAD, headers=PB)
        assert relay.stats.spans_received == 0
        with client((str(pki.client_cert), str(pki.client_key))) as c:
            assert c.post(url(relay.http_address), content=PAYLOAD, headers=PB).status_code == 200
        assert relay.stats.spans_received == 1
