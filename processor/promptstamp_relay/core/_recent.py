"""A bounded, per-tenant memory of recently seen keys (what the processor remembers besides the store).

Used for the fetch records already taken in (a fetch arrives twice: as a log record and as a
span event) and for fallback fetches (they resolve nothing, but explain an unresolved span).
Each tenant keeps at most ``per_tenant`` keys, oldest first out, so a tenant that floods it
only forgets its own; at most ``tenants`` tenants are remembered, the first seen first out.
Not thread-safe: called with the relay's processing lock held.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["RecentKeys"]

K = TypeVar("K", bound=Hashable)


class RecentKeys(Generic[K]):
    def __init__(self, per_tenant: int = 4096, tenants: int = 1024) -> None:
        if per_tenant <= 0 or tenants <= 0:
            raise ValueError("bounds must be positive")
        self._per_tenant = per_tenant
        self._tenants = tenants
        # OrderedDict: dropping the oldest of a plain dict is O(n) once many were dropped before.
        self._keys: OrderedDict[str, OrderedDict[K, None]] = OrderedDict()

    def add(self, tenant: str, key: K) -> bool:
        """Remember ``key``; True when it was not remembered already."""
        keys = self._keys.get(tenant)
        if keys is None:
            if len(self._keys) >= self._tenants:
                self._keys.popitem(last=False)
            keys = self._keys[tenant] = OrderedDict()
        if key in keys:
            return False
        if len(keys) >= self._per_tenant:
            keys.popitem(last=False)
        keys[key] = None
        return True

    def add_all(self, tenant: str, keys: list[K]) -> list[bool]:
        """:meth:`add` for each of ``keys`` in order (one call for a request's worth)."""
        out: list[bool] = []
        seen = self._keys.get(tenant)
        limit = self._per_tenant
        for key in keys:
            if seen is not None and len(seen) < limit:  # the common case: no eviction
                if key in seen:
                    out.append(False)
                else:
                    seen[key] = None
                    out.append(True)
                continue
            out.append(self.add(tenant, key))  # a new tenant, or one at its bound
            seen = self._keys.get(tenant)
        return out

    def __contains__(self, item: tuple[str, K]) -> bool:
        tenant, key = item
        keys = self._keys.get(tenant)
        return keys is not None and key in keys

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys.values())
