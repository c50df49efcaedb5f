"""The ``rollouts:`` section of the configuration, next to the component it configures.

Per-version generation metrics and the label timeline (docs/rollouts.md) read their bounds,
retention and webhook secrets from here, so each default is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["RolloutsConfig"]


@dataclass
class RolloutsConfig:
    """Per-version metrics and the label timeline.

    ``max_series``: generation metric series (tenant × prompt × version × label) kept apart; past
    it a new combination is counted under ``version="other"``. ``retention_days``: how long the
    timeline keeps a version, an instance or a move after it was last seen (independent of
    ``store.max_age_seconds``). ``webhook_secrets``: tenant -> the signing secret of a Langfuse
    prompt webhook (``default`` when auth is off); empty: no webhook endpoint.
    """

    enabled: bool = True
    max_series: int = 2000
    retention_days: float = 90.0
    flush_seconds: float = 5.0  # how often the timeline is written to SQLite / Redis
    max_timelines: int = 10_000  # tenant × prompt × label, all tenants together
    max_versions: int = 500  # per timeline (oldest forgotten first)
    max_instances: int = 2000  # instance × version entries per timeline (oldest forgotten first)
    webhook_secrets: dict[str, str] = field(default_factory=dict)
    webhook_tolerance_seconds: float = 300.0  # how old a signed webhook's timestamp may be

    @property
    def retention_ns(self) -> int:
        return round(self.retention_days * 86400 * 1e9)

    def validate(self, path: str = "rollouts") -> list[str]:
        """Every problem in this section, as ``'<path>.key' must …`` lines (never quoting a secret)."""
        errs: list[str] = []
        for k in ("max_series", "max_timelines", "max_versions", "max_instances"):
            if getattr(self, k) <= 0:
                errs.append(f"'{path}.{k}' must be > 0")
        for k in ("retention_days", "flush_seconds", "webhook_tolerance_seconds"):
            value = getattr(self, k)
            if not (math.isfinite(value) and value > 0):
                errs.append(f"'{path}.{k}' must be > 0")
        for tenant, secret in self.webhook_secrets.items():
            if not tenant:
                errs.append(f"'{path}.webhook_secrets' tenant names must not be empty")
            if len(secret) < 16:
                errs.append(f"'{path}.webhook_secrets.{tenant}' must be at least 16 characters "
                            "(Langfuse's are lf-whsec_ and 64 hex digits)")
        return errs
