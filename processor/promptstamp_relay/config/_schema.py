"""The Config tree: the sections the relay assembles (each component's own settings, imported
from beside it, and the few that belong to no single component), and their validation, every
problem reported as a ``'dotted.key' must …`` line."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .. import hostport
from ..admission.settings import AdmissionConfig, AuthConfig, LimitsConfig
from ..deliver._config import QueueConfig
from ..export.settings import (
    ExporterConfig,
    LogsExporterConfig,
    MetricsExporterConfig,
    RetryConfig,
)
from ..receive.settings import GrpcReceiverConfig, HttpReceiverConfig, TlsConfig
from ..rollouts._config import RolloutsConfig
from ..store._config import StoreConfig


class ConfigError(ValueError):
    """Every problem found in a configuration, one per line."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {e}" for e in errors))


@dataclass
class ReceiversConfig:
    """Listeners besides the OTLP/gRPC one (``listen``), and the gRPC listener's own bounds."""

    http: HttpReceiverConfig = field(default_factory=HttpReceiverConfig)
    grpc: GrpcReceiverConfig = field(default_factory=GrpcReceiverConfig)


@dataclass
class HoldConfig:
    # covers an OTel SDK's default 5 s export delay across services (bench/hold_window.py)
    seconds: float = 8.0
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


# A span with an explicit type or a link is left to Langfuse: an extra rule on these never acts.
_NEVER_MATCHED = frozenset({
    "langfuse.observation.type", "langfuse.observation.prompt.name", "langfuse.observation.prompt.version",
    "langfuse.prompt.name", "langfuse.prompt.version", "ai.telemetry.metadata.langfusePrompt",
})  # fmt: skip


@dataclass
class GenerationConfig:
    """Extra generation rules for in-house conventions (contract §3): a key's presence, or a key
    equal to a string. None by default: Langfuse's own typing (``promptstamp_contract.langfuse_typing``)
    decides, and these only add generations Langfuse would type SPAN (``llm.request.type`` alone,
    for one, is no rule of Langfuse's: add ``present: [llm.request.type]`` to stamp such spans)."""

    present: list[str] = field(default_factory=list)
    equals: dict[str, str] = field(default_factory=dict)

    def validate(self, path: str) -> list[str]:
        errs: list[str] = []
        keys = [("present", k) for k in self.present] + [("equals", k) for k in self.equals]
        for where, key in keys:
            if not key:
                errs.append(f"'{path}.{where}' keys must not be empty")
            elif key.startswith("app.prompt."):
                errs.append(
                    f"'{path}.{where}' must not use {key!r}: every span inside prompt() carries it, "
                    "so every one of them would be stamped as a generation"
                )
            elif key in _NEVER_MATCHED:
                errs.append(
                    f"'{path}.{where}' must not use {key!r}: a span carrying it is never stamped "
                    "by an extra rule (Langfuse's own type or link on it decides)"
                )
        return errs


@dataclass
class StampConfig:
    """What the relay writes beside Langfuse's link (contract §3)."""

    # Also write the GenAI conventions' gen_ai.prompt.name / gen_ai.prompt.version with every link,
    # for backends that are not Langfuse (Tempo, Datadog, Phoenix behind a collector). Refused
    # with the Langfuse exporter: Langfuse reads any gen_ai.prompt* key as the generation's input.
    semconv_link: bool = False


@dataclass
class ConventionsConfig:
    """Prompt links in other conventions (contract §3, ``core/conventions.py``)."""

    # OpenInference spans carry llm.prompt_template.version and no prompt name: a prompt.id, or
    # the template text itself (llm.prompt_template.template, using_prompt_template()), mapped to
    # the Langfuse prompt name to link.
    openinference_prompts: dict[str, str] = field(default_factory=dict)


@dataclass
class Config:
    listen: str = "127.0.0.1:4317"
    metrics_listen: str = ""  # host:port for /metrics; "" = off
    record: str = ""
    record_mode: str = "append"  # append | truncate: what --record does to an existing file
    hold: HoldConfig = field(default_factory=HoldConfig)
    resolution: ResolutionConfig = field(default_factory=ResolutionConfig)
    prompt_names: dict[str, str] = field(default_factory=dict)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    stamp: StampConfig = field(default_factory=StampConfig)
    conventions: ConventionsConfig = field(default_factory=ConventionsConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    exporter: ExporterConfig = field(default_factory=ExporterConfig)
    logs_exporter: LogsExporterConfig = field(default_factory=LogsExporterConfig)
    metrics_exporter: MetricsExporterConfig = field(default_factory=MetricsExporterConfig)
    receivers: ReceiversConfig = field(default_factory=ReceiversConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)

    def validate(self) -> list[str]:
        """Every semantic problem, as ``'dotted.key' must …`` lines."""
        errs: list[str] = []
        for name, value in (("listen", self.listen), ("metrics_listen", self.metrics_listen)):
            if value or name == "listen":
                why = hostport.problem(value)
                if why:
                    errs.append(f"'{name}' {why}")
        if self.record_mode not in ("append", "truncate"):
            errs.append(f"'record_mode' must be append or truncate, got {self.record_mode!r}")
        if not (math.isfinite(self.hold.seconds) and 0 <= self.hold.seconds <= 300):
            errs.append("'hold.seconds' must be between 0 and 300")
        if self.hold.max_spans < 0:
            errs.append("'hold.max_spans' must be >= 0")
        if self.resolution.latest_staleness_seconds < 0:
            errs.append("'resolution.latest_staleness_seconds' must be >= 0")
        if self.resolution.api.refresh_seconds <= 0:
            errs.append("'resolution.api.refresh_seconds' must be > 0")
        errs.extend(self.store.validate("store"))
        errs.extend(self.exporter.validate(
            "exporter", passthrough_credentials=self.auth.passthrough_langfuse_credentials))
        errs.extend(self.logs_exporter.validate("logs_exporter"))
        if self.stamp.semconv_link and self.exporter_type() == "langfuse":
            errs.append(SEMCONV_WITH_LANGFUSE)
        errs.extend(self.metrics_exporter.validate("metrics_exporter"))
        errs.extend(self.receivers.http.validate("receivers.http"))
        errs.extend(self.receivers.grpc.validate("receivers.grpc"))
        errs.extend(self.admission.validate("admission"))
        if self.receivers.grpc.threads and self.receivers.grpc.threads <= self.admission.concurrency:
            errs.append("'receivers.grpc.threads' must be more than admission.concurrency (or 0: automatic), "
                        "so that requests wait for their turn in the relay, tenant by tenant")
        if (self.receivers.http.listen and self.receivers.http.listen == self.listen
                and not self.listen.endswith(":0")):  # two port-0 listeners get two free ports
            errs.append("'receivers.http.listen' must differ from 'listen' (the OTLP/gRPC listener)")
        errs.extend(self.queue.validate("queue"))
        errs.extend(self.retry.validate("retry"))
        if self.auth.enabled and not self.auth.tenants:
            errs.append("'auth.tenants' must list at least one tenant when auth.enabled is true")
        errs.extend(_auth_errors(self))
        errs.extend(self.generation.validate("generation"))
        errs.extend(self.rollouts.validate("rollouts"))
        for tenant in self.rollouts.webhook_secrets:
            if self.auth.enabled and tenant not in self.auth.tenants:
                errs.append(f"'rollouts.webhook_secrets.{tenant}' names no tenant in auth.tenants")
        errs.extend(self.tls.validate("tls"))
        errs.extend(self.limits.validate("limits"))
        if self.hold.max_spans_per_tenant <= 0:
            errs.append("'hold.max_spans_per_tenant' must be > 0")
        return errs

    def exporter_type(self) -> str:
        """The effective trace exporter: the configured one, else langfuse if set, else debug."""
        return self.exporter.effective_type()


MIN_TOKEN_LENGTH = 16

SEMCONV_WITH_LANGFUSE = (
    "'stamp.semconv_link' cannot be used with the Langfuse exporter: Langfuse's ingestion reads any "
    "attribute whose key starts with gen_ai.prompt as OpenLLMetry's prompt messages, before "
    "OpenInference's llm.input_messages, so every linked generation would show {name, version} as "
    "its input. Turn it on only for exports that do not reach Langfuse (exporter.type otlp_grpc to a "
    "collector that does not forward to Langfuse either)")


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
        if not (math.isfinite(t.weight) and 0 < t.weight <= 1000):
            errs.append(f"{where}.weight' must be > 0 and <= 1000")
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
