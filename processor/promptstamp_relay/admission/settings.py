"""Admission's settings: authentication and tenants (``auth.*``), request limits (``limits.*``).
Defined here, next to what uses them; ``config`` assembles them into the relay's Config."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["AdmissionConfig", "AuthConfig", "LimitsConfig", "TenantConfig"]


@dataclass
class TenantConfig:
    """A tenant: who may send (tokens / Langfuse public key) and where its spans go."""

    tokens: list[str] = field(default_factory=list)
    langfuse_public_key: str = ""
    langfuse_secret_key: str = ""
    langfuse_base_url: str = ""  # "" = exporter.langfuse.base_url
    # Its share of the relay's processing and of the admission waiting room, against the other
    # tenants' (admission/fair.py); passthrough and the default tenant weigh 1.
    weight: float = 1.0


@dataclass
class AuthConfig:
    """Receiver authentication (off by default); see SECURITY.md."""

    enabled: bool = False
    tenants: dict[str, TenantConfig] = field(default_factory=dict)
    passthrough_langfuse_credentials: bool = False


@dataclass
class LimitsConfig:
    # After decompression. The parser takes up to ~90x a request's size for adversarial
    # shapes (millions of empty messages): see admission/budget.py and SECURITY.md.
    max_request_bytes: int = 16 * 1024 * 1024
    max_inflight_request_bytes: int = 32 * 1024 * 1024  # being decoded at once, all callers
    max_spans_per_request: int = 100_000
    max_attributes_per_span: int = 1024
    max_attribute_value_bytes: int = 1024 * 1024
    max_value_depth: int = 32

    def validate(self, path: str = "limits") -> list[str]:
        errs = [f"'{path}.{k}' must be > 0" for k in (
            "max_request_bytes", "max_spans_per_request", "max_attributes_per_span",
            "max_attribute_value_bytes", "max_value_depth", "max_inflight_request_bytes")
            if getattr(self, k) <= 0]
        if self.max_value_depth > 100:
            errs.append(f"'{path}.max_value_depth' must be <= 100 (the protobuf parser's own limit)")
        if self.max_inflight_request_bytes < self.max_request_bytes:
            errs.append(f"'{path}.max_inflight_request_bytes' must be >= {path}.max_request_bytes")
        return errs


@dataclass
class AdmissionConfig:
    """Turns at the relay's processing (``admission/fair.py``): how many requests are decoded
    and stamped at once, all transports and tenants together, and how many may wait for a turn.
    Tenants take turns by weight (``auth.tenants.<name>.weight``), counted in bytes; an idle
    tenant's request goes next. With tenants (auth or passthrough) the waiting room is bounded
    and each tenant holds its weight's share of it; beyond it, or after ``wait_seconds``, a
    request is refused with UNAVAILABLE + RetryInfo (HTTP 429 + Retry-After) and retried by its
    sender."""

    concurrency: int = 4  # requests processed at once (with tenants: one tenant all but one)
    max_waiting: int = 16  # requests waiting for a turn, all tenants (with tenants)
    wait_seconds: float = 2.0  # the longest a request waits for its turn

    def validate(self, path: str = "admission") -> list[str]:
        errs: list[str] = []
        if not 0 < self.concurrency <= 64:
            errs.append(f"'{path}.concurrency' must be 1..64")
        if not 0 < self.max_waiting <= 4096:
            errs.append(f"'{path}.max_waiting' must be 1..4096")
        if not (math.isfinite(self.wait_seconds) and 0 < self.wait_seconds <= 60):
            errs.append(f"'{path}.wait_seconds' must be > 0 and <= 60")
        return errs
