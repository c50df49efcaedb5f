"""Admission's settings: authentication and tenants (``auth.*``), request limits (``limits.*``).
Defined here, next to what uses them; ``config`` assembles them into the relay's Config."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AuthConfig", "LimitsConfig", "TenantConfig"]


@dataclass
class TenantConfig:
    """A tenant: who may send (tokens / Langfuse public key) and where its spans go."""

    tokens: list[str] = field(default_factory=list)
    langfuse_public_key: str = ""
    langfuse_secret_key: str = ""
    langfuse_base_url: str = ""  # "" = exporter.langfuse.base_url


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
