"""TLS and mutual TLS for the OTLP/gRPC listener, from ``tls.*`` in the config.

- ``tls.cert_file`` + ``tls.key_file`` (PEM): the listener speaks TLS only.
- ``tls.client_ca_file`` as well: mutual TLS; a client must present a certificate signed by
  that CA, or the handshake fails before any request is read.

The files are read once, at start. Without ``tls.cert_file`` the listener is plaintext (fine
on loopback, the default bind; see SECURITY.md for anything else).
"""

from __future__ import annotations

from pathlib import Path

import grpc

from ..config import TlsConfig

__all__ = ["server_credentials"]


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
