"""Where each tenant's spans go: the Langfuse keys (and exporter) per tenant.

- A tenant configured with ``langfuse_public_key`` / ``langfuse_secret_key`` exports with
  them (to its own ``langfuse_base_url`` when set, else ``exporter.langfuse.base_url``).
- The ``default`` tenant, and a configured tenant without keys, use the relay's exporter.
- A passthrough tenant exports with the key pair its requests carried. The pair is kept in
  memory only, here (never in a queued item, a journal row, a recording or a log), for the
  most recent :data:`MAX_PASSTHROUGH_TENANTS` tenants. After a restart, items of a passthrough
  tenant that a persistent queue kept wait (retryable) until the tenant sends again.
- With an exporter other than Langfuse (``otlp_grpc``, ``file``, ``debug``) every tenant goes
  to that one exporter: its destination has no per-tenant keys.

Per-tenant exporters share one HTTP exporter per base URL (its connections) and differ only
in the ``Authorization`` header they send.

Destinations (``destination_of``): the delivery queue keeps one FIFO, one share of its bounds
and one backoff per upstream destination, so that a project that is down, throttled or slow
holds only its own tenants' requests. A configured tenant with its own keys is its own
destination (named by the tenant); a passthrough tenant too (its public key and digest, or
``passthrough#<digest>`` when the "public key" does not look like one); everything the relay's
own exporter sends is ``relay``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from ..admission.auth import PASSTHROUGH_SEPARATOR
from ..admission.settings import AuthConfig
from ..core.model import DEFAULT_TENANT
from . import Exporter, ExportResult, LangfuseExporter
from .langfuse import basic_auth
from .settings import ExporterConfig

__all__ = ["MAX_PASSTHROUGH_TENANTS", "RELAY_DESTINATION", "TenantRouter"]

#: The destination of what the relay's own exporter sends (``deliver.RELAY_DESTINATION``).
RELAY_DESTINATION = "relay"
#: Destination names kept for the relay's own and for the metrics' overflow.
_RESERVED_DESTINATIONS = frozenset({RELAY_DESTINATION, "other"})


class UpstreamSettings(Protocol):
    """What is read of the relay's Config: where spans go and the tenants' own keys."""

    exporter: ExporterConfig
    auth: AuthConfig

#: Passthrough key pairs remembered (least recently seen forgotten first).
MAX_PASSTHROUGH_TENANTS = 10_000

MakeLangfuse = Callable[[str, str, str], LangfuseExporter]


class _KeyedExporter:
    """A shared Langfuse exporter, sending one tenant's ``Authorization`` header."""

    signal = "traces"

    def __init__(self, base: LangfuseExporter, public_key: str, secret_key: str) -> None:
        self._base = base
        self._headers = {"Authorization": basic_auth(public_key, secret_key)}

    def export(self, payload: bytes) -> ExportResult:
        return self._base.export(payload, headers=self._headers)

    def shutdown(self) -> None:
        """The shared exporter is shut down by the router, once."""

    def __repr__(self) -> str:
        return f"_KeyedExporter({self._base.endpoint})"


class _NoKeys:
    """A passthrough tenant whose keys are not known (yet): retry until they are."""

    signal = "traces"

    def export(self, payload: bytes) -> ExportResult:
        return ExportResult("retry", "no Langfuse keys known for this tenant since the relay "
                                     "started; waiting for its next request")

    def shutdown(self) -> None:
        return None


class TenantRouter:
    """``exporter_for(tenant)`` for the delivery queue; ``api_credentials(tenant)`` for the api
    tier. Thread-safe (receiver threads remember, delivery workers look up)."""

    def __init__(self, cfg: UpstreamSettings, default: Exporter, *, make: MakeLangfuse | None = None) -> None:
        self._default = default
        self._langfuse = cfg.exporter.effective_type() == "langfuse"
        lf = cfg.exporter.langfuse
        self._base_url = lf.base_url
        self._default_keys = (lf.public_key, lf.secret_key) if lf.public_key and lf.secret_key else None
        self._make: MakeLangfuse = make or (
            lambda url, pk, sk: LangfuseExporter(
                url, pk, sk, ingestion_version=lf.ingestion_version, gzip_level=lf.gzip_level,
                timeout=lf.timeout_seconds,
            )
        )
        self._configured: dict[str, tuple[str, str, str]] = {}
        if cfg.auth.enabled:
            for name, t in cfg.auth.tenants.items():
                if t.langfuse_public_key and t.langfuse_secret_key:
                    url = t.langfuse_base_url or lf.base_url
                    self._configured[name] = (url, t.langfuse_public_key, t.langfuse_secret_key)
        self._pass_through = cfg.auth.passthrough_langfuse_credentials and self._langfuse
        self._passthrough: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._bases: dict[str, LangfuseExporter] = {}
        self._exporters: dict[str, Exporter] = {}
        self._lock = threading.Lock()

    @property
    def default_has_keys(self) -> bool:
        return not self._langfuse or self._default_keys is not None

    # -- destinations (the delivery queue's) --------------------------------------------------------
    @property
    def several_destinations(self) -> bool:
        """Whether tenants' spans can go to more than one upstream (then each destination gets
        its own share of the delivery queue)."""
        return self._langfuse and (bool(self._configured) or self._pass_through)

    def destinations(self) -> list[str]:
        """The destinations known from the configuration (their metrics start at 0)."""
        return [RELAY_DESTINATION, *(self.destination_of(t) for t in self._configured)]

    def destination_of(self, tenant: str) -> str:
        """The upstream destination of ``tenant``'s requests; no lock (the configured tenants do
        not change, and a passthrough tenant's destination is its name)."""
        if not self._langfuse or tenant == DEFAULT_TENANT:
            return RELAY_DESTINATION
        if tenant in self._configured:
            return f"tenant:{tenant}" if tenant in _RESERVED_DESTINATIONS else tenant
        if _is_configured_name(tenant):
            return RELAY_DESTINATION  # a configured tenant without keys: the relay's own
        public_key, _, digest = tenant.rpartition(PASSTHROUGH_SEPARATOR)
        if public_key.startswith("pk-") and public_key.isprintable() and len(public_key) <= 80:
            return tenant
        return f"passthrough{PASSTHROUGH_SEPARATOR}{digest}"

    def remember(self, tenant: str, keys: tuple[str, str]) -> None:
        """A passthrough tenant's key pair, from its latest request."""
        with self._lock:
            known = self._passthrough.get(tenant)
            if known is not None:
                self._passthrough.move_to_end(tenant)
                return
            self._passthrough[tenant] = keys
            while len(self._passthrough) > MAX_PASSTHROUGH_TENANTS:
                old, _ = self._passthrough.popitem(last=False)
                self._exporters.pop(old, None)

    def _base(self, url: str) -> LangfuseExporter:
        base = self._bases.get(url)
        if base is None:
            # Keys here are placeholders: every per-tenant call sends its own header.
            base = self._bases[url] = self._make(url, "", "")
        return base

    def exporter_for(self, tenant: str) -> Exporter:
        if not self._langfuse or tenant == DEFAULT_TENANT:
            return self._default
        with self._lock:
            exporter = self._exporters.get(tenant)
            if exporter is not None:
                return exporter
            configured = self._configured.get(tenant)
            if configured is not None:
                url, pk, sk = configured
                exporter = _KeyedExporter(self._base(url), pk, sk)
            else:
                keys = self._passthrough.get(tenant)
                if keys is None:
                    # A configured tenant without keys uses the relay's own; an unknown
                    # passthrough tenant (after a restart) waits for its keys.
                    return self._default if _is_configured_name(tenant) else _NoKeys()
                exporter = _KeyedExporter(self._base(self._base_url), *keys)
            self._exporters[tenant] = exporter
            return exporter

    def api_credentials(self, tenant: str) -> tuple[str, str, str] | None:
        """(base URL, public key, secret key) for the prompts API on ``tenant``'s behalf."""
        if not self._langfuse and not self._base_url:
            return None
        configured = self._configured.get(tenant)
        if configured is not None:
            return configured
        with self._lock:
            keys = self._passthrough.get(tenant)
        if keys is not None:
            return (self._base_url, *keys)
        if _is_configured_name(tenant) and self._default_keys is not None and self._base_url:
            return (self._base_url, *self._default_keys)
        return None

    def shutdown(self) -> None:
        with self._lock:
            bases = list(self._bases.values())
            self._bases.clear()
            self._exporters.clear()
        for base in bases:
            base.shutdown()


def _is_configured_name(tenant: str) -> bool:
    return PASSTHROUGH_SEPARATOR not in tenant
