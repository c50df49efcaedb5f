"""TLS and mutual TLS for the OTLP listeners (gRPC and HTTP), from ``tls.*`` in the config.

- ``tls.cert_file`` + ``tls.key_file`` (PEM): the listener speaks TLS only.
- ``tls.client_ca_file`` as well: mutual TLS; a client must present a certificate signed by
  that CA, or the handshake fails before any request is read.

The files are read once, at start. Without ``tls.cert_file`` the listener is plaintext (fine
on loopback, the default bind; see SECURITY.md for anything else).
"""

from __future__ import annotations

import ssl
from pathlib import Path

import grpc

from .settings import TlsConfig

__all__ = ["server_credentials", "server_ssl_context"]


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials | None:
    """``grpc.ssl_server_credentials`` for ``tls``, or None for a plaintext listener."""
    if not tls.cert_file:
        return None
    key = Path(tls.key_file).read_bytes()
    cert = Path(tls.cert_file).read_bytes()
    client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The same certificate (and client CA) for the OTLP/HTTP listener, or None for plaintext.
    TLS 1.2 at least; with ``client_ca_file`` a client certificate is required."""
    if not tls.cert_file:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(cafile=tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
