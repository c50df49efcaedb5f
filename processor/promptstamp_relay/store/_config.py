"""The ``store:`` section of the configuration, next to the stores it configures.

Every store (memory, SQLite, Redis) reads its bounds from here, so each default is written once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["BACKENDS", "StoreBounds", "StoreConfig"]

BACKENDS = ("memory", "redis")


@dataclass
class StoreConfig:
    """Where fetch-log records live and how many of them. ``max_entries`` bounds all tenants
    together, ``max_entries_per_tenant`` each one (a tenant never holds more than either)."""

    backend: str = "memory"  # memory | redis
    url: str = ""  # redis://host:port/db
    max_entries: int = 200_000
    max_entries_per_tenant: int = 50_000
    max_age_seconds: float = 24 * 3600.0

    def validate(self, path: str = "store") -> list[str]:
        """Every problem in this section, as ``'<path>.key' must …`` lines."""
        errs: list[str] = []
        if self.backend not in BACKENDS:
            errs.append(f"'{path}.backend' must be memory or redis, got {self.backend!r}")
        if self.backend == "redis" and not self.url.startswith(("redis://", "rediss://", "unix://")):
            errs.append(f"'{path}.url' must be a redis:// URL when {path}.backend is redis")
        for k in ("max_entries", "max_entries_per_tenant"):
            if getattr(self, k) <= 0:
                errs.append(f"'{path}.{k}' must be > 0")
        if not (math.isfinite(self.max_age_seconds) and self.max_age_seconds > 0):
            errs.append(f"'{path}.max_age_seconds' must be > 0")
        return errs


@dataclass(frozen=True, slots=True)
class StoreBounds:
    """A store's bounds in the units the stores use (records, nanoseconds)."""

    max_entries: int
    max_per_tenant: int
    max_age_ns: int

    @classmethod
    def of(cls, config: StoreConfig | None = None, *, max_entries: int | None = None,
           max_entries_per_tenant: int | None = None, max_age_ns: int | None = None) -> StoreBounds:
        """``config`` (default: :class:`StoreConfig`'s defaults), each keyword overriding its field.
        Raises ``ValueError`` on a bound that is not positive."""
        cfg = config or StoreConfig()
        total = cfg.max_entries if max_entries is None else max_entries
        per_tenant = cfg.max_entries_per_tenant if max_entries_per_tenant is None else max_entries_per_tenant
        age = round(cfg.max_age_seconds * 1e9) if max_age_ns is None else max_age_ns
        if total <= 0 or per_tenant <= 0:
            raise ValueError("max_entries and max_entries_per_tenant must be positive")
        if age <= 0:
            raise ValueError("max_age_ns must be positive")
        return cls(total, min(per_tenant, total), age)
