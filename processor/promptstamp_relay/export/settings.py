"""The exporters' settings: ``exporter:``, ``logs_exporter:``, ``metrics_exporter:`` and ``retry:``.
Defined next to the exporters that read them; ``config`` assembles them. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .endpoints import grpc_target

__all__ = [
    "ExporterConfig",
    "LangfuseConfig",
    "LogsExporterConfig",
    "MetricsExporterConfig",
    "OtlpGrpcConfig",
    "RetryConfig",
]


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
    endpoint: str = ""  # host:port, http://host:port (plain) or https://host:port (TLS)
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

    def validate(self, path: str = "exporter", *, passthrough_credentials: bool = False) -> list[str]:
        """Every problem in this section. ``passthrough_credentials``: the senders' own Langfuse
        keys are passed through (``auth.passthrough_langfuse_credentials``), so none are needed here."""
        kinds = ("", "langfuse", "otlp_grpc", "file", "debug")
        errs = _choice(path, self.type, kinds, self.otlp_grpc, self.file)
        if self.effective_type() == "langfuse":
            lf = self.langfuse
            if not lf.base_url.startswith(("http://", "https://")):
                errs.append(f"'{path}.langfuse.base_url' must be an http(s) URL (or set LANGFUSE_BASE_URL)")
            if not passthrough_credentials and not (lf.public_key and lf.secret_key):
                errs.append(f"'{path}.langfuse.public_key' and 'secret_key' are required "
                            "(or set LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY)")
            if not 1 <= lf.ingestion_version <= 4:
                errs.append(f"'{path}.langfuse.ingestion_version' must be an integer from 1 to 4")
            if not 0 <= lf.gzip_level <= 9:
                errs.append(f"'{path}.langfuse.gzip_level' must be 0..9 (0 = no compression)")
        return errs

    def effective_type(self) -> str:
        """The configured type, else ``langfuse`` when a base URL is set, else ``debug``."""
        if self.type:
            return self.type
        return "langfuse" if self.langfuse.base_url else "debug"


@dataclass
class _PassOnExporterConfig:
    """Where a signal the relay passes on unchanged goes: ``none`` (counted and dropped),
    ``otlp_grpc`` or ``file``."""

    type: str = "none"
    otlp_grpc: OtlpGrpcConfig = field(default_factory=OtlpGrpcConfig)
    file: str = ""

    def validate(self, path: str) -> list[str]:
        return _choice(path, self.type, ("none", "otlp_grpc", "file"), self.otlp_grpc, self.file)


@dataclass
class LogsExporterConfig(_PassOnExporterConfig):
    """Where non-fetch-log records go."""


@dataclass
class MetricsExporterConfig(_PassOnExporterConfig):
    """Where OTLP metrics go, unchanged."""


@dataclass
class RetryConfig:
    """Exponential backoff between export attempts; the OpenTelemetry Collector's
    ``retry_on_failure`` defaults (5 s initial, x1.5, 30 s max interval, +/-50 % jitter, give up
    after 5 min)."""

    initial_interval_seconds: float = 5.0
    max_interval_seconds: float = 30.0
    max_elapsed_seconds: float = 300.0  # 0 = retry for ever
    multiplier: float = 1.5
    randomization: float = 0.5

    def validate(self, path: str = "retry") -> list[str]:
        errs: list[str] = []
        if not 0 < self.initial_interval_seconds <= self.max_interval_seconds:
            errs.append(f"'{path}.initial_interval_seconds' must be > 0 and <= {path}.max_interval_seconds")
        if self.max_elapsed_seconds < 0:
            errs.append(f"'{path}.max_elapsed_seconds' must be >= 0")
        if self.multiplier < 1:
            errs.append(f"'{path}.multiplier' must be >= 1")
        if not 0 <= self.randomization < 1:
            errs.append(f"'{path}.randomization' must be in [0, 1)")
        return errs


def _choice(path: str, kind: str, kinds: tuple[str, ...], grpc: OtlpGrpcConfig, file: str) -> list[str]:
    """An exporter section's type, and the settings that type needs (one check for all three)."""
    shown = [k for k in kinds if k]
    if kind not in kinds:
        return [f"'{path}.type' must be {', '.join(shown[:-1])} or {shown[-1]}, got {kind!r}"]
    errs: list[str] = []
    if kind == "otlp_grpc":
        try:
            grpc_target(grpc.endpoint, grpc.insecure)
        except ValueError as e:
            errs.append(f"'{path}.otlp_grpc.endpoint' {e}")
    if kind == "file" and not file:
        errs.append(f"'{path}.file' must name a file when {path}.type is file")
    return errs
