"""What ``serve`` checks before it takes traffic, called once from the CLI's main thread.

* **Can the listen addresses be bound?** gRPC's own bind failure is a bare ``Failed to bind``
  and the metrics server's a traceback; :func:`probe_listen` turns the common causes into one
  line each, with what to do. A probe binds and closes a plain socket (no SO_REUSEPORT, as the
  receiver), so a port taken by another process (a local collector on 4317, say) is found. Port
  0 is always free.
* **Does the upstream answer?** (``--check-upstream``) Wrong keys, a wrong host or a TLS problem
  otherwise show up only at the first export, after the relay has already answered OK to its
  senders. :func:`check_upstream` makes one authenticated call; each failure comes back as one
  line naming the URL and what to fix; never a key.

  - Langfuse: ``GET {base}/api/public/projects`` with the exporter's Basic auth, the call
    Langfuse's own SDK makes in ``auth_check()``. Langfuse answers 200 with the keys' project, 401
    for unknown keys, 403 for an organisation key (web/src/pages/api/public/projects/index.ts).
  - OTLP/gRPC: DNS, TCP connect, the TLS handshake when TLS is on, then gRPC channel readiness.

Blocking, bounded by ``timeout``.
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import socket
import ssl
import urllib.parse
from dataclasses import dataclass
from typing import Protocol

from .. import hostport
from ..admission.settings import AuthConfig
from ..export.endpoints import grpc_target, langfuse_base_url
from ..export.settings import ExporterConfig

__all__ = [
    "ListenProblem",
    "UpstreamResult",
    "UpstreamSettings",
    "check_langfuse",
    "check_otlp_grpc",
    "check_upstream",
    "probe_listen",
]


class UpstreamSettings(Protocol):
    """What is read of the relay's Config: where spans go and the tenants' own keys."""

    exporter: ExporterConfig
    auth: AuthConfig


@dataclass(frozen=True)
class ListenProblem:
    kind: str  # "port" (in use, no permission) | "host" (does not resolve, not ours)
    message: str


def probe_listen(address: str, what: str, flag: str) -> ListenProblem | None:
    """``None`` when ``address`` (``host:port``) can be bound now, else why not. ``what`` names the
    listener ("the OTLP receiver"), ``flag`` the setting to change ("--listen / PROMPTSTAMP_LISTEN")."""
    host, port = hostport.parse(address)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return ListenProblem("host", f"cannot listen on {address} for {what}: host {host!r} does not "
                                         f"resolve ({e.strerror}); set {flag} to an address of this machine, "
                                         "e.g. 127.0.0.1 or 0.0.0.0")
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return ListenProblem("port", f"cannot listen on {address} for {what}: port {port} is already "
                                           "in use by another process (a local collector?); stop it or set "
                                           f"{flag} to a free port")
        if e.errno == errno.EADDRNOTAVAIL:
            return ListenProblem("host", f"cannot listen on {address} for {what}: {host!r} is not an "
                                             f"address of this machine; set {flag} to one, e.g. 127.0.0.1 "
                                             "or 0.0.0.0")
        if e.errno == errno.EACCES:
            return ListenProblem("port", f"cannot listen on {address} for {what}: permission denied "
                                           f"(ports below 1024 need privileges); set {flag} to a port "
                                           ">= 1024")
        return ListenProblem("host", f"cannot listen on {address} for {what}: {e.strerror}")
    finally:
        sock.close()
    return None


PROJECTS_PATH = "/api/public/projects"


@dataclass(frozen=True)
class UpstreamResult:
    ok: bool
    message: str  # one line; never a secret


def _key_hint(public_key: str) -> str:
    # Public keys are not secret, but a prefix is enough to tell two apart.
    return public_key[:12] + ("…" if len(public_key) > 12 else "")


def _network_failure(what: str, host: str, port: int, e: BaseException, timeout: float) -> str:
    """One line for a failure below HTTP/gRPC: DNS, refused, TLS, timeout."""
    if isinstance(e, socket.gaierror):
        return f"{what}: DNS: cannot resolve host {host!r} ({e.strerror}); check the host name"
    if isinstance(e, ConnectionRefusedError):
        return (f"{what}: connection refused by {host}:{port}: nothing listens there; check the port "
                "and that the upstream runs")
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"{what}: TLS: the certificate of {host}:{port} is not trusted ({e.verify_message})"
    if isinstance(e, ssl.SSLError):
        hint = "; is it plain http:// rather than https://?" if "WRONG_VERSION_NUMBER" in str(e) else ""
        return f"{what}: TLS handshake with {host}:{port} failed ({e.reason or e}){hint}"
    if isinstance(e, TimeoutError):
        return f"{what}: no answer from {host}:{port} within {timeout:g} s"
    if isinstance(e, http.client.HTTPException):
        hint = "; is it https:// rather than http://?" if isinstance(e, http.client.BadStatusLine) else ""
        return f"{what}: {host}:{port} did not answer HTTP ({type(e).__name__}){hint}"
    return f"{what}: cannot connect to {host}:{port}: {type(e).__name__}: {e}"


def check_langfuse(base_url: str, public_key: str, secret_key: str, *,
                   timeout: float = 10.0) -> UpstreamResult:
    """Do these keys open a project on this Langfuse?"""
    base = langfuse_base_url(base_url)
    url = urllib.parse.urlsplit(base)
    what = f"Langfuse at {base}"
    if url.scheme not in ("http", "https") or not url.hostname:
        return UpstreamResult(False, f"{what}: not an http(s) URL")
    https = url.scheme == "https"
    host, port = url.hostname, url.port or (443 if https else 80)
    cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
    conn = cls(host, port, timeout=timeout)
    token = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    try:
        conn.request("GET", url.path + PROJECTS_PATH,
                     headers={"Authorization": f"Basic {token}", "User-Agent": "promptstamp-relay"})
        resp = conn.getresponse()
        body = resp.read(64 * 1024)
    except (OSError, http.client.HTTPException) as e:
        return UpstreamResult(False, _network_failure(what, host, port, e, timeout))
    finally:
        conn.close()
    keys = f"public key {_key_hint(public_key)}"
    if resp.status == 401:
        return UpstreamResult(False, f"{what} refused the keys (HTTP 401, {keys}): check LANGFUSE_PUBLIC_KEY "
                                     "and LANGFUSE_SECRET_KEY, and that they belong to this Langfuse host")
    if resp.status == 403:
        return UpstreamResult(False, f"{what} forbids these keys (HTTP 403, {keys}): "
                                     f"{_message(body) or 'forbidden'}; use a project's API keys")
    if resp.status == 404:
        return UpstreamResult(False, f"{what}: HTTP 404 for {PROJECTS_PATH}: not a Langfuse API; the base "
                                     "URL must be Langfuse's root, e.g. https://cloud.langfuse.com")
    if resp.status != 200:
        return UpstreamResult(False, f"{what}: HTTP {resp.status} for {PROJECTS_PATH}: "
                                     f"{_message(body) or 'unexpected answer'}")
    try:
        projects = json.loads(body).get("data") or []
    except (ValueError, AttributeError):
        return UpstreamResult(False, f"{what}: HTTP 200 for {PROJECTS_PATH} but not Langfuse's JSON answer")
    if not projects:
        return UpstreamResult(False, f"{what}: the keys ({keys}) belong to no project")
    name = projects[0].get("name") if isinstance(projects[0], dict) else None
    return UpstreamResult(True, f"{what} accepted the keys ({keys}, project {name!r})")


def _message(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].decode("utf-8", "replace").strip()
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or "")[:200]
    return ""


def check_otlp_grpc(endpoint: str, *, insecure: bool = True, timeout: float = 10.0) -> UpstreamResult:
    """Can a gRPC channel to ``endpoint`` become ready (resolved, connected, TLS done)?"""
    import grpc

    target = grpc_target(endpoint, insecure)
    shown = ("https://" if target.tls else "http://") + target.target
    what = f"OTLP/gRPC upstream {shown}"
    host, port = hostport.parse(target.target)
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if target.tls:
                ctx = ssl.create_default_context()
                ctx.set_alpn_protocols(["h2"])
                with ctx.wrap_socket(sock, server_hostname=host):
                    pass
    except OSError as e:
        return UpstreamResult(False, _network_failure(what, host, port, e, timeout))
    channel = (grpc.secure_channel(target.target, grpc.ssl_channel_credentials()) if target.tls
               else grpc.insecure_channel(target.target))
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        return UpstreamResult(False, f"{what}: connected, but no gRPC (HTTP/2) answer within {timeout:g} s; "
                                     "is it an OTLP/gRPC port (4317), not OTLP/HTTP (4318)?")
    finally:
        channel.close()
    return UpstreamResult(True, f"{what} is reachable (gRPC channel ready)")


def check_upstream(cfg: UpstreamSettings, timeout: float | None = None) -> list[UpstreamResult]:
    """Every upstream the config sends traces to, checked once each. Empty: nothing to check
    (debug or file exporter)."""
    kind = cfg.exporter.effective_type()
    results: list[UpstreamResult] = []
    if kind == "langfuse":
        lf = cfg.exporter.langfuse
        t = lf.timeout_seconds if timeout is None else timeout
        seen: set[tuple[str, str]] = set()
        if lf.public_key and lf.secret_key:
            seen.add((lf.base_url, lf.public_key))
            results.append(check_langfuse(lf.base_url, lf.public_key, lf.secret_key, timeout=t))
        for name, tenant in cfg.auth.tenants.items():
            if not tenant.langfuse_public_key:
                continue
            base = tenant.langfuse_base_url or lf.base_url
            if (base, tenant.langfuse_public_key) in seen:
                continue
            seen.add((base, tenant.langfuse_public_key))
            r = check_langfuse(base, tenant.langfuse_public_key, tenant.langfuse_secret_key, timeout=t)
            results.append(UpstreamResult(r.ok, f"tenant {name!r}: {r.message}"))
        if not results:
            results.append(UpstreamResult(True, f"Langfuse at {lf.base_url}: no keys to check (the senders' "
                                                "own Langfuse credentials are passed through)"))
    elif kind == "otlp_grpc":
        g = cfg.exporter.otlp_grpc
        results.append(check_otlp_grpc(g.endpoint, insecure=g.insecure,
                                       timeout=g.timeout_seconds if timeout is None else timeout))
    return results
