"""The receivers' settings: ``receivers.http:`` (the OTLP/HTTP listener, ``receive/http.py``) and
``tls.*`` (one certificate for the gRPC and HTTP listeners); body and decode bounds are
``limits.*`` (admission's).

Standard library only (``config`` imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .. import hostport

__all__ = ["DEFAULT_HTTP_LISTEN", "GrpcReceiverConfig", "HttpReceiverConfig", "TlsConfig", "effective_listen"]

DEFAULT_HTTP_LISTEN = "127.0.0.1:4318"


@dataclass
class HttpReceiverConfig:
    """OTLP/HTTP on ``listen`` (``host:port``; "" = no HTTP listener)."""

    listen: str = DEFAULT_HTTP_LISTEN
    # Open connections at once. A connection waiting for a request (idle keep-alive, or headers
    # not complete yet) costs a socket and its buffer, no thread; at the limit the one waiting
    # longest is closed to make room, and only when every connection is busy with a request is
    # the new one answered 503 + Retry-After and closed.
    max_connections: int = 256
    # The same, per peer address (a peer at its limit closes its own waiting connections first).
    max_connections_per_peer: int = 64
    # Requests decompressed, converted and admitted at once from this listener, taking turns by
    # credential (an idle sender's request goes next). Not threads any more: a request gets a
    # thread (from a pool) once its headers are complete; admission.concurrency bounds the
    # processing across both listeners.
    threads: int = 4
    # A connection with no request for this long after its previous answer is closed
    # (keep-alive between exports: the OTel SDKs export every 5 s by default).
    idle_timeout_seconds: float = 60.0
    # From connecting (or from a kept-alive connection's first byte) to the blank line after
    # the headers. Measured: the OTel Python OTLP/HTTP exporter sends its request line and
    # headers in one write, 0.04 ms after connecting over loopback (1.4 ms at most): a real
    # exporter needs a round trip and a TLS handshake, a slow-headers client is cut after this.
    header_timeout_seconds: float = 5.0
    # From the end of the headers to the end of the body (Content-Length or chunked). The OTel
    # SDKs give a whole export 10 s and the Collector's otlphttp exporter 30 s: a body still
    # arriving later has been given up by its sender.
    body_timeout_seconds: float = 30.0

    def validate(self, path: str = "receivers.http") -> list[str]:
        """Every problem in this section, as ``'<path>.key' must …`` lines."""
        errs: list[str] = []
        if self.listen and hostport.problem(self.listen):
            errs.append(f"'{path}.listen' must be host:port (port 0..65535), or \"\" to turn "
                        f"the HTTP listener off, got {self.listen!r}")
        if self.max_connections <= 0:
            errs.append(f"'{path}.max_connections' must be > 0")
        if not 0 < self.threads <= 64:
            errs.append(f"'{path}.threads' must be 1..64")
        if not (math.isfinite(self.idle_timeout_seconds) and 0 < self.idle_timeout_seconds <= 3600):
            errs.append(f"'{path}.idle_timeout_seconds' must be > 0 and <= 3600")
        if not self.max_connections_per_peer > 0:
            errs.append(f"'{path}.max_connections_per_peer' must be > 0")
        for k in ("header_timeout_seconds", "body_timeout_seconds"):
            value = getattr(self, k)
            if not (math.isfinite(value) and 0 < value <= 600):
                errs.append(f"'{path}.{k}' must be > 0 and <= 600")
        return errs


@dataclass
class GrpcReceiverConfig:
    """The OTLP/gRPC listener's own bounds (grpcio server options, ``receive/grpc.py``)."""

    # Handler threads; 0 = admission.concurrency + admission.max_waiting + 4 with tenants (auth
    # or passthrough), so that requests wait for their turn in admission (fair between
    # tenants), not in grpcio's own FIFO; without tenants admission.concurrency + 1.
    threads: int = 0
    # Streams (calls) at once per HTTP/2 connection (grpc.max_concurrent_streams).
    max_concurrent_streams: int = 100
    # Connections at once (grpc.max_allowed_incoming_connections; gRPC has no per-peer limit).
    max_connections: int = 1024
    # TCP accepted -> TLS and HTTP/2 handshakes done (grpc.server_handshake_timeout_ms).
    handshake_timeout_seconds: float = 5.0
    # A connection without calls for this long is sent GOAWAY and closed (grpc.max_connection_idle_ms).
    max_connection_idle_seconds: float = 300.0
    # The server pings an idle connection this often and closes it when no answer comes in
    # keepalive_timeout_seconds (grpc.keepalive_time_ms / keepalive_timeout_ms): dead peers go.
    keepalive_time_seconds: float = 60.0
    keepalive_timeout_seconds: float = 20.0
    # Enforcement: a client pinging more often than this (without data) is sent GOAWAY after
    # two strikes (grpc.http2.min_ping_interval_without_data_ms, grpc.http2.max_ping_strikes).
    min_ping_interval_seconds: float = 10.0

    def validate(self, path: str = "receivers.grpc") -> list[str]:
        errs: list[str] = []
        if not 0 <= self.threads <= 1024:
            errs.append(f"'{path}.threads' must be 0 (automatic) .. 1024")
        for k in ("max_concurrent_streams", "max_connections"):
            if getattr(self, k) <= 0:
                errs.append(f"'{path}.{k}' must be > 0")
        for k in ("handshake_timeout_seconds", "max_connection_idle_seconds", "keepalive_time_seconds",
                  "keepalive_timeout_seconds", "min_ping_interval_seconds"):
            value = getattr(self, k)
            if not (math.isfinite(value) and 0 < value <= 86400):
                errs.append(f"'{path}.{k}' must be > 0 and <= 86400")
        return errs


def effective_listen(http: HttpReceiverConfig, grpc_listen: str) -> str:
    """Where the HTTP listener binds: ``http.listen``, except that the default follows an
    ephemeral gRPC port — ``listen: host:0`` (tests, benchmarks, several relays on one machine)
    gives the HTTP listener a free port on the same host instead of a fixed 4318."""
    if http.listen == DEFAULT_HTTP_LISTEN and hostport.parse(grpc_listen).port == 0:
        return str(hostport.HostPort(hostport.parse(grpc_listen).host, 0))
    return http.listen


@dataclass
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # mTLS when set

    def validate(self, path: str = "tls") -> list[str]:
        errs: list[str] = []
        if bool(self.cert_file) != bool(self.key_file):
            errs.append(f"'{path}.cert_file' and '{path}.key_file' go together")
        for k in ("cert_file", "key_file", "client_ca_file"):
            file = getattr(self, k)
            if file and not Path(file).is_file():
                errs.append(f"'{path}.{k}' does not exist: {file}")
        if self.client_ca_file and not self.cert_file:
            errs.append(f"'{path}.client_ca_file' (mTLS) needs {path}.cert_file and {path}.key_file")
        return errs
