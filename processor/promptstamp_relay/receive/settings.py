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

__all__ = ["DEFAULT_HTTP_LISTEN", "HttpReceiverConfig", "TlsConfig", "effective_listen"]

DEFAULT_HTTP_LISTEN = "127.0.0.1:4318"


@dataclass
class HttpReceiverConfig:
    """OTLP/HTTP on ``listen`` (``host:port``; "" = no HTTP listener)."""

    listen: str = DEFAULT_HTTP_LISTEN
    # Open connections at once; one more is answered 503 and closed. Each costs a thread that
    # mostly sleeps in recv (keep-alive).
    max_connections: int = 256
    # Requests admitted at once (decompress, decode, stamp), like the gRPC receiver's 4
    # handler threads: more only queue on the processing lock and the GIL.
    threads: int = 4
    # A connection with no complete request for this long is closed (idle keep-alive, or a
    # sender too slow to finish its headers or body).
    idle_timeout_seconds: float = 60.0

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
