"""Resolution tier ``api`` (off by default): what a label points to now, per the prompts API.

The stamping code never waits on the network: it reads :meth:`LabelPointers.lookup`, a dict
read. A miss registers interest; a background thread asks Langfuse
(``GET /api/public/v2/prompts/{name}?label=``) and keeps the answer fresh every
``refresh_seconds``. Held spans get the answer when their window ends.
"""

from __future__ import annotations

import json
import logging
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from ..counters import Counters, metric
from ..export.langfuse import basic_auth

__all__ = ["MAX_KEYS", "ApiStats", "LabelPointers"]

#: (tenant, prompt name, label) triples kept fresh at most; lookups beyond answer None.
MAX_KEYS = 10_000

log = logging.getLogger("promptstamp_relay.api")

#: tenant -> (base_url, public_key, secret_key), or None when the tenant has no API access.
Credentials = Callable[[str], "tuple[str, str, str] | None"]


@dataclass
class ApiStats(Counters):
    """The api tier's counters (exported as ``promptstamp_api_*_total``)."""

    fetches: int = metric("Prompts API calls made by the api tier", name="api_fetches")
    errors: int = metric("Prompts API calls that failed (answer kept from before)", name="api_errors")
    overflow: int = metric("api tier lookups not tracked: too many prompt/label keys", name="api_overflow")


class LabelPointers:
    """Threads: stamping calls :meth:`lookup` (a dict read under a lock); one background
    thread fetches."""

    def __init__(
        self,
        credentials: Credentials,
        *,
        refresh_seconds: float = 30.0,
        timeout: float = 5.0,
        max_keys: int | None = None,
    ) -> None:
        self._credentials = credentials
        self._refresh = refresh_seconds
        self._timeout = timeout
        self._known: dict[tuple[str, str, str], int | None] = {}
        self._wanted: set[tuple[str, str, str]] = set()
        self._max_keys = MAX_KEYS if max_keys is None else max_keys
        self.stats = ApiStats()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="api-tier", daemon=True)

    @property
    def overflow(self) -> int:
        return self.stats.overflow

    def lookup(self, tenant: str, name: str, label: str) -> int | None:
        """Never blocks. None until the first answer for (tenant, name, label) has arrived."""
        k = (tenant, name, label)
        with self._lock:
            if k in self._known:
                return self._known[k]
            if k not in self._wanted:
                if len(self._wanted) >= self._max_keys:
                    # Prompt keys and labels come from span attributes, which any caller can
                    # set: without a bound, invented names would grow this set and the
                    # requests made to Langfuse every refresh.
                    self.stats.add(overflow=1)
                    return None
                self._wanted.add(k)
                self._wake.set()
        return None

    def start(self) -> None:
        if not self._thread.is_alive() and not self._stop.is_set():
            self._thread.start()

    def stop(self) -> None:
        """Idempotent; fine before :meth:`start`."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self._timeout + 1)

    def refresh_once(self) -> None:
        with self._lock:
            keys = list(self._wanted)
        for k in keys:
            if self._stop.is_set():
                return
            version = self._fetch(*k)
            with self._lock:
                if version is not _ERROR:
                    self._known[k] = version  # type: ignore[assignment]

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh_once()
            self._wake.wait(self._refresh)
            self._wake.clear()

    def _fetch(self, tenant: str, name: str, label: str) -> int | object | None:
        creds = self._credentials(tenant)
        if creds is None:
            return None
        base_url, pk, sk = creds
        url = (f"{base_url.rstrip('/')}/api/public/v2/prompts/{urllib.parse.quote(name, safe='')}"
               f"?label={urllib.parse.quote(label, safe='')}")
        req = urllib.request.Request(url, headers={"Authorization": basic_auth(pk, sk)})
        self.stats.add(fetches=1)
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            if e.code == 404:
                return None  # the label points nowhere: nothing to link
            self.stats.add(errors=1)
            log.warning("prompts API answered %s for %r label %r", e.code, name, label)
            return _ERROR
        except (OSError, ValueError) as e:
            self.stats.add(errors=1)
            log.warning("prompts API unreachable for %r label %r: %s", name, label, e)
            return _ERROR
        version = body.get("version") if isinstance(body, dict) else None
        return version if isinstance(version, int) and version > 0 else None


_ERROR = object()
