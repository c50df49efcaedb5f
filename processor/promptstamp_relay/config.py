"""The relay's configuration: one dataclass tree with defaults, built from YAML + environment.

:func:`load_config` reports every problem at once (:class:`ConfigError` lists them all), so a
bad file fails at start-up with the whole list, never mid-traffic.

Environment variables (each overrides the file):

.. envvar:: PROMPTSTAMP_LISTEN        ``host:port`` of the OTLP/gRPC receiver
.. envvar:: PROMPTSTAMP_HOLD_SECONDS  hold window for unresolved generations
.. envvar:: PROMPTSTAMP_STORE         ``memory`` or ``redis://host:port/db``
.. envvar:: PROMPTSTAMP_METRICS_LISTEN ``host:port`` of the Prometheus endpoint ("" disables)
.. envvar:: LANGFUSE_BASE_URL, LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY
   (the names Langfuse's own SDK reads): with all three set and no exporter configured, the
   relay exports to Langfuse.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "ApiTierConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ExporterConfig",
    "GenerationConfig",
    "HoldConfig",
    "LangfuseConfig",
    "QueueConfig",
    "RetryConfig",
    "StoreConfig",
    "load_config",
]


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


@dataclass
class LangfuseConfig:
    base_url: str = ""
    public_key: str = ""
    secret_key: str = ""
    ingestion_version: int = 4
    gzip_level: int = 1  # 1 costs ~1.2 ms per 512-span request, 6 costs ~3.2 ms (field notes)
    timeout_seconds: float = 10.0


@dataclass
class OtlpGrpcConfig:
    endpoint: str = ""  # host:port
    insecure: bool = True
    headers: dict[str, str] = field(default_factory=dict)
    timeout_seconds: float = 10.0
    compression: str = "gzip"  # gzip | none


@dataclass
class ExporterConfig:
    """Where stamped traces go: ``langfuse``, ``otlp_grpc``, ``file`` or ``debug``."""

    type: str = ""  # "" = langfuse when LANGFUSE_* are set, else debug
    langfuse: LangfuseConfig = field(default_factory=LangfuseConfig)
    otlp_grpc: OtlpGrpcConfig = field(default_factory=OtlpGrpcConfig)
    file: str = ""


@dataclass
class LogsExporterConfig:
    """Where non-fetch-log records go: ``none`` (counted and dropped), ``otlp_grpc`` or ``file``."""

    type: str = "none"
    otlp_grpc: OtlpGrpcConfig = field(default_factory=OtlpGrpcConfig)
    file: str = ""


@dataclass
class HoldConfig:
    seconds: float = 2.0
    max_spans: int = 100_000
    max_spans_per_tenant: int = 25_000  # with auth or passthrough: one tenant's share


@dataclass
class ApiTierConfig:
    """Tier 4: ask the Langfuse prompts API what a label points to now (off by default)."""

    enabled: bool = False
    refresh_seconds: float = 30.0
    timeout_seconds: float = 5.0


@dataclass
class ResolutionConfig:
    latest_staleness_seconds: float = 3600.0
    api: ApiTierConfig = field(default_factory=ApiTierConfig)


@dataclass
class GenerationConfig:
    """Generation-detection rules (contract §3): presence of a key, or a key equal to a value."""

    present: list[str] = field(
        default_factory=lambda: ["gen_ai.operation.name", "gen_ai.request.model", "llm.request.type"]
    )
    equals: dict[str, str] = field(
        default_factory=lambda: {
            "openinference.span.kind": "LLM",
            "langfuse.observation.type": "generation",
        }
    )


@dataclass
class StoreConfig:
    backend: str = "memory"  # memory | redis
    url: str = ""  # redis://host:port/db
    max_entries: int = 200_000
    max_entries_per_tenant: int = 50_000
    max_age_seconds: float = 24 * 3600.0


@dataclass
class QueueConfig:
    """The delivery queue (docs/delivery.md). ``max_bytes`` bounds queued + in-flight + held
    bytes, both signals together; in persistent mode the queued bytes are on disk."""

    max_requests: int = 1000
    max_bytes: int = 256 * 1024 * 1024
    workers: int = 2
    directory: str = ""  # persistent queue when set
    synchronous: str = "full"  # persistent queue: full (fsync every commit) | normal
    shutdown_timeout_seconds: float = 10.0
    retry_after_seconds: float = 1.0  # RetryInfo delay suggested to senders refused when full


@dataclass
class RetryConfig:
    initial_interval_seconds: float = 5.0
    max_interval_seconds: float = 30.0
    max_elapsed_seconds: float = 300.0  # 0 = retry for ever
    multiplier: float = 1.5
    randomization: float = 0.5


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
class TlsConfig:
    cert_file: str = ""
    key_file: str = ""
    client_ca_file: str = ""  # mTLS when set


@dataclass
class LimitsConfig:
    # After decompression. The parser takes up to ~90x a request's size for adversarial
    # shapes (millions of empty messages): see receive/budget.py and SECURITY.md.
    max_request_bytes: int = 16 * 1024 * 1024
    max_inflight_request_bytes: int = 32 * 1024 * 1024  # being decoded at once, all callers
    max_spans_per_request: int = 100_000
    max_attributes_per_span: int = 1024
    max_attribute_value_bytes: int = 1024 * 1024
    max_value_depth: int = 32


@dataclass
class Config:
    listen: str = "127.0.0.1:4317"
    metrics_listen: str = ""  # host:port for /metrics; "" = off
    record: str = ""
    hold: HoldConfig = field(default_factory=HoldConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    prompt_names: dict[str, str] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    logs_exporter: LogsExporterConfig = field(default_factory=LogsExporterConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)

    def validate(self) -> list[str]:
        """Every semantic problem, as ``'dotted.key' must …`` lines."""
        errs: list[str] = []
        for name, value in (("listen", self.listen), ("metrics_listen", self.metrics_listen)):
            if value or name == "listen":
                why = _check_hostport(value)
                if why:
                    errs.append(f"'{name}' {why}")
        if not (math.isfinite(self.hold.seconds) and 0 <= self.hold.seconds <= 300):
            errs.append("'hold.seconds' must be between 0 and 300")
        if self.hold.max_spans < 0:
            errs.append("'hold.max_spans' must be >= 0")
        if self.resolution.latest_staleness_seconds < 0:
            errs.append("'resolution.latest_staleness_seconds' must be >= 0")
        if self.resolution.api.refresh_seconds <= 0:
            errs.append("'resolution.api.refresh_seconds' must be > 0")
        if self.store.backend not in ("memory", "redis"):
            errs.append(f"'store.backend' must be memory or redis, got {self.store.backend!r}")
        if self.store.backend == "redis" and not self.store.url.startswith(("redis://", "rediss://", "unix://")):
            errs.append("'store.url' must be a redis:// URL when store.backend is redis")
        for k in ("max_entries", "max_entries_per_tenant"):
            if getattr(self.store, k) <= 0:
                errs.append(f"'store.{k}' must be > 0")
        ex = self.exporter
        if ex.type not in ("", "langfuse", "otlp_grpc", "file", "debug"):
            errs.append(f"'exporter.type' must be langfuse, otlp_grpc, file or debug, got {ex.type!r}")
        if ex.type == "langfuse" or (ex.type == "" and ex.langfuse.base_url):
            lf = ex.langfuse
            if not lf.base_url.startswith(("http://", "https://")):
                errs.append("'exporter.langfuse.base_url' must be an http(s) URL (or set LANGFUSE_BASE_URL)")
            if not self.auth.passthrough_langfuse_credentials and not (lf.public_key and lf.secret_key):
                errs.append(
                    "'exporter.langfuse.public_key' and 'secret_key' are required "
                    "(or set LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY)"
                )
            if not 1 <= lf.ingestion_version <= 4:
                errs.append("'exporter.langfuse.ingestion_version' must be an integer from 1 to 4")
            if not 0 <= lf.gzip_level <= 9:
                errs.append("'exporter.langfuse.gzip_level' must be 0..9 (0 = no compression)")
        if ex.type == "otlp_grpc":
            why = _check_hostport(ex.otlp_grpc.endpoint)
            if why:
                errs.append(f"'exporter.otlp_grpc.endpoint' {why}")
        if ex.type == "file" and not ex.file:
            errs.append("'exporter.file' must name a file when exporter.type is file")
        lx = self.logs_exporter
        if lx.type not in ("none", "otlp_grpc", "file"):
            errs.append(f"'logs_exporter.type' must be none, otlp_grpc or file, got {lx.type!r}")
        if lx.type == "otlp_grpc":
            why = _check_hostport(lx.otlp_grpc.endpoint)
            if why:
                errs.append(f"'logs_exporter.otlp_grpc.endpoint' {why}")
        if lx.type == "file" and not lx.file:
            errs.append("'logs_exporter.file' must name a file when logs_exporter.type is file")
        q = self.queue
        for k in ("max_requests", "max_bytes", "workers"):
            if getattr(q, k) <= 0:
                errs.append(f"'queue.{k}' must be > 0")
        if q.synchronous not in ("full", "normal"):
            errs.append(f"'queue.synchronous' must be full or normal, got {q.synchronous!r}")
        if not (math.isfinite(q.shutdown_timeout_seconds) and q.shutdown_timeout_seconds >= 0):
            errs.append("'queue.shutdown_timeout_seconds' must be >= 0")
        if not (math.isfinite(q.retry_after_seconds) and 0 < q.retry_after_seconds <= 300):
            errs.append("'queue.retry_after_seconds' must be > 0 and <= 300")
        r = self.retry
        if not 0 < r.initial_interval_seconds <= r.max_interval_seconds:
            errs.append("'retry.initial_interval_seconds' must be > 0 and <= retry.max_interval_seconds")
        if r.max_elapsed_seconds < 0:
            errs.append("'retry.max_elapsed_seconds' must be >= 0")
        if r.multiplier < 1:
            errs.append("'retry.multiplier' must be >= 1")
        if not 0 <= r.randomization < 1:
            errs.append("'retry.randomization' must be in [0, 1)")
        if self.auth.enabled and not self.auth.tenants:
            errs.append("'auth.tenants' must list at least one tenant when auth.enabled is true")
        errs.extend(_auth_errors(self))
        if bool(self.tls.cert_file) != bool(self.tls.key_file):
            errs.append("'tls.cert_file' and 'tls.key_file' go together")
        for k in ("cert_file", "key_file", "client_ca_file"):
            path = getattr(self.tls, k)
            if path and not Path(path).is_file():
                errs.append(f"'tls.{k}' does not exist: {path}")
        if self.tls.client_ca_file and not self.tls.cert_file:
            errs.append("'tls.client_ca_file' (mTLS) needs tls.cert_file and tls.key_file")
        for k in ("max_request_bytes", "max_spans_per_request", "max_attributes_per_span",
                  "max_attribute_value_bytes", "max_value_depth", "max_inflight_request_bytes"):
            if getattr(self.limits, k) <= 0:
                errs.append(f"'limits.{k}' must be > 0")
        if self.limits.max_value_depth > 100:
            errs.append("'limits.max_value_depth' must be <= 100 (the protobuf parser's own limit)")
        if self.limits.max_inflight_request_bytes < self.limits.max_request_bytes:
            errs.append("'limits.max_inflight_request_bytes' must be >= limits.max_request_bytes")
        if self.hold.max_spans_per_tenant <= 0:
            errs.append("'hold.max_spans_per_tenant' must be > 0")
        return errs

    def exporter_type(self) -> str:
        """The effective trace exporter: the configured one, else langfuse if set, else debug."""
        if self.exporter.type:
            return self.exporter.type
        return "langfuse" if self.exporter.langfuse.base_url else "debug"


MIN_TOKEN_LENGTH = 16


def _auth_errors(cfg: Config) -> list[str]:
    """``auth.*`` problems. Never quotes a token or a key: config errors end up in logs."""
    errs: list[str] = []
    auth = cfg.auth
    if auth.tenants and not auth.enabled:
        errs.append("'auth.tenants' is set but auth.enabled is false (tenants need auth)")
    if auth.passthrough_langfuse_credentials and cfg.exporter_type() != "langfuse":
        errs.append("'auth.passthrough_langfuse_credentials' needs the langfuse exporter")
    seen_tokens: dict[str, str] = {}
    seen_keys: dict[str, str] = {}
    for name, t in auth.tenants.items():
        where = f"'auth.tenants.{name}"
        if not name or "#" in name:
            errs.append(f"{where}' is not a valid tenant name (non-empty, no '#')")
        if bool(t.langfuse_public_key) != bool(t.langfuse_secret_key):
            errs.append(f"{where}.langfuse_public_key' and 'langfuse_secret_key' go together")
        if not t.tokens and not t.langfuse_public_key:
            errs.append(f"{where}' needs tokens or langfuse_public_key + langfuse_secret_key")
        if t.langfuse_base_url and not t.langfuse_base_url.startswith(("http://", "https://")):
            errs.append(f"{where}.langfuse_base_url' must be an http(s) URL")
        for i, token in enumerate(t.tokens):
            if len(token) < MIN_TOKEN_LENGTH or token != token.strip() or not token.isprintable():
                errs.append(f"{where}.tokens[{i}]' must be at least {MIN_TOKEN_LENGTH} printable "
                            "characters without surrounding spaces")
            other = seen_tokens.setdefault(token, name)
            if other != name:
                errs.append(f"{where}.tokens[{i}]' is also a token of tenant '{other}'")
        if t.langfuse_public_key:
            other = seen_keys.setdefault(t.langfuse_public_key, name)
            if other != name:
                errs.append(f"{where}.langfuse_public_key' is also the public key of tenant '{other}'")
    return errs


def _check_hostport(value: str) -> str | None:
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        return f"must be host:port, got {value!r}"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"must end in a port number 0..65535, got {value!r}"
    return None


def _build(cls: type[Any], data: Any, path: str, errs: list[str]) -> Any:
    """Build dataclass ``cls`` from a mapping, collecting type errors and unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        errs.append(f"'{path or 'config'}' must be a mapping, got {type(data).__name__}")
        return cls()
    hints = get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            errs.append(f"'{dotted}' is not a known setting")
            continue
        kwargs[key] = _coerce(hints[key], value, dotted, errs)
    return cls(**{k: v for k, v in kwargs.items() if v is not _INVALID})


_INVALID = object()


def _coerce(tp: Any, value: Any, path: str, errs: list[str]) -> Any:
    if is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, path, errs)
    origin = get_origin(tp)
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            errs.append(f"'{path}' must be a list")
            return _INVALID
        return [_coerce(item, v, f"{path}[{i}]", errs) for i, v in enumerate(value)]
    if origin is dict:
        _, val_t = get_args(tp)
        if not isinstance(value, Mapping):
            errs.append(f"'{path}' must be a mapping")
            return _INVALID
        return {str(k): _coerce(val_t, v, f"{path}.{k}", errs) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        errs.append(f"'{path}' must be true or false, got {value!r}")
        return _INVALID
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        errs.append(f"'{path}' must be an integer, got {value!r}")
        return _INVALID
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            errs.append(f"'{path}' must be a number, got {value!r}")
            return _INVALID
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        errs.append(f"'{path}' must be a string, got {value!r}")
        return _INVALID
    return value


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """File, then environment, then ``overrides`` (command-line flags: dotted keys)."""
    env = os.environ if env is None else env
    errs: list[str] = []
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError([f"cannot read {path}: {e.strerror}"]) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    cfg: Config = _build(Config, data, "", errs)

    def setting(dotted: str, value: Any) -> None:
        nonlocal cfg
        cfg = _set(cfg, dotted.split("."), value, dotted, errs)

    if env.get("PROMPTSTAMP_LISTEN"):
        setting("listen", env["PROMPTSTAMP_LISTEN"])
    if env.get("PROMPTSTAMP_HOLD_SECONDS"):
        setting("hold.seconds", env["PROMPTSTAMP_HOLD_SECONDS"])
    if "PROMPTSTAMP_METRICS_LISTEN" in env:
        setting("metrics_listen", env["PROMPTSTAMP_METRICS_LISTEN"])
    if env.get("PROMPTSTAMP_STORE"):
        setting_store = env["PROMPTSTAMP_STORE"]
        if setting_store == "memory":
            setting("store.backend", "memory")
        else:
            setting("store.backend", "redis")
            setting("store.url", setting_store)
    lf = cfg.exporter.langfuse
    for var, key in (("LANGFUSE_BASE_URL", "base_url"), ("LANGFUSE_PUBLIC_KEY", "public_key"),
                     ("LANGFUSE_SECRET_KEY", "secret_key")):
        if env.get(var) and not getattr(lf, key):
            setting(f"exporter.langfuse.{key}", env[var])
    for dotted, value in (overrides or {}).items():
        if value is not None:
            setting(dotted, value)
    errs.extend(cfg.validate())
    if errs:
        raise ConfigError(errs)
    return cfg


def _set(obj: Any, parts: list[str], value: Any, dotted: str, errs: list[str]) -> Any:
    name = parts[0]
    hints = get_type_hints(type(obj))
    if name not in hints:
        errs.append(f"'{dotted}' is not a known setting")
        return obj
    if len(parts) == 1:
        new = _coerce(hints[name], value, dotted, errs)
        return obj if new is _INVALID else replace(obj, **{name: new})
    return replace(obj, **{name: _set(getattr(obj, name), parts[1:], value, dotted, errs)})
