"""What ``serve`` checks before it binds anything: can the listen addresses be bound?

gRPC's own bind failure is a bare ``Failed to bind`` and the metrics server's a traceback; this
turns the common causes into one line each, with what to do. Called from the CLI's main thread;
a probe binds and closes a plain socket (no SO_REUSEPORT, as the receiver), so a port taken by
another process (a local collector on 4317, say) is found. Port 0 is always free.
"""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

__all__ = ["ListenProblem", "probe_listen"]


@dataclass(frozen=True)
class ListenProblem:
    kind: str  # "port" (in use, no permission) | "host" (does not resolve, not ours)
    message: str


def probe_listen(hostport: str, what: str, flag: str) -> ListenProblem | None:
    """``None`` when ``hostport`` can be bound now, else why not. ``what`` names the listener
    ("the OTLP receiver"), ``flag`` the setting to change ("--listen / PROMPTSTAMP_LISTEN")."""
    host, _, port_s = hostport.rpartition(":")
    host = host.strip("[]")
    port = int(port_s)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return ListenProblem("host", f"cannot listen on {hostport} for {what}: host {host!r} does not "
                                         f"resolve ({e.strerror}); set {flag} to an address of this machine, "
                                         "e.g. 127.0.0.1 or 0.0.0.0")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return ListenProblem("port", f"cannot listen on {hostport} for {what}: port {port} is already "
                                           "in use by another process (a local collector?); stop it or set "
                                           f"{flag} to a free port")
        if e.errno == errno.EADDRNOTAVAIL:
            return ListenProblem("host", f"cannot listen on {hostport} for {what}: {host!r} is not an "
                                             f"address of this machine; set {flag} to one, e.g. 127.0.0.1 "
                                             "or 0.0.0.0")
        if e.errno == errno.EACCES:
            return ListenProblem("port", f"cannot listen on {hostport} for {what}: permission denied "
                                           f"(ports below 1024 need privileges); set {flag} to a port "
                                           ">= 1024")
        return ListenProblem("host", f"cannot listen on {hostport} for {what}: {e.strerror}")
    finally:
        sock.close()
    return None
