"""The guarded rollout of a prompt and label as the pages show it: the plan in force, read from
Langfuse with the tenant's own keys (``promptstamp_contract.rollout_plan``; the controller writes
it, see ``controller.py``).

Threads: admin-listener threads call :meth:`PlanReader.plan`; answers (a plan, no plan, or the
error) are cached for ``ttl`` seconds per (tenant, prompt, label), so a page view costs at most
one prompts-API request per label per ``ttl``, made by the viewing thread, bounded by ``timeout``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote

from promptstamp_contract.rollout_plan import PLAN_LABEL, plan_prompt_name

__all__ = ["PlanReader"]

Credentials = Callable[[str], "tuple[str, str, str] | None"]
_MAX_CACHED = 1000


class PlanReader:
    """``plan(tenant, name, label)``: the plan in force (its ``config`` plus ``plan_version``),
    None when there is none or no Langfuse keys for the tenant, ``{"error": ...}`` when Langfuse
    could not be asked."""

    def __init__(self, credentials: Credentials, *, ttl: float = 10.0, timeout: float = 2.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._credentials = credentials
        self._ttl, self._timeout, self._clock = ttl, timeout, clock
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, Any] | None]] = {}

    def plan(self, tenant: str, name: str, label: str) -> dict[str, Any] | None:
        key = (tenant, name, label)
        now = self._clock()
        with self._lock:
            got = self._cache.get(key)
        if got is not None and now - got[0] < self._ttl:
            return got[1]
        answer = self._ask(tenant, name, label)
        with self._lock:
            if len(self._cache) >= _MAX_CACHED:
                self._cache.clear()
            self._cache[key] = (now, answer)
        return answer

    def _ask(self, tenant: str, name: str, label: str) -> dict[str, Any] | None:
        creds = self._credentials(tenant)
        if creds is None or not all(creds):
            return None
        base, public_key, secret_key = creds
        url = (f"{base.rstrip('/')}/api/public/v2/prompts/{quote(plan_prompt_name(name, label), safe='')}"
               f"?label={PLAN_LABEL}")
        auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
        req = urllib.request.Request(url, headers={"Authorization": auth, "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self._timeout) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            return None if e.code == 404 else {"error": f"Langfuse answered HTTP {e.code}"}
        except (OSError, ValueError) as e:
            return {"error": f"Langfuse could not be asked: {type(e).__name__}"}
        config = body.get("config") if isinstance(body, Mapping) else None
        if not isinstance(config, Mapping):
            return {"error": "the plan prompt has no config object"}
        return {**config, "plan_version": body.get("version")}
