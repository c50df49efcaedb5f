"""The relay's configuration: one dataclass tree with defaults, built from YAML + environment.

:func:`load_config` reports every problem at once (:class:`ConfigError` lists them all), so a
bad file fails at start-up with the whole list, never mid-traffic.

Precedence: command-line flags over environment variables over the file over the defaults,
for every variable below alike (:data:`ENVIRONMENT`). ``check-config --explain`` prints each
effective setting and where it came from.

.. envvar:: PROMPTSTAMP_LISTEN        ``host:port`` of the OTLP/gRPC receiver
.. envvar:: PROMPTSTAMP_HOLD_SECONDS  hold window for unresolved generations
.. envvar:: PROMPTSTAMP_STORE         ``memory`` or ``redis://host:port/db`` (``rediss://``, ``unix://``)
.. envvar:: PROMPTSTAMP_METRICS_LISTEN ``host:port`` of the Prometheus endpoint ("" disables)
.. envvar:: LANGFUSE_BASE_URL (or the older LANGFUSE_HOST), LANGFUSE_PUBLIC_KEY, LANGFUSE_SECRET_KEY
   (the names Langfuse's own SDK reads): with all three set and no exporter configured, the
   relay exports to Langfuse. A base URL ending in ``/api/public/otel`` (what OTel exporters are
   told) is accepted and shortened, with a note. Keys without a base URL leave the relay on the
   debug exporter, with a note saying so.

The file: duplicate keys are errors, unknown keys get a "did you mean", and every error names
the file and line (syntax errors also the column) or the environment variable it came from.
"""

from __future__ import annotations

from ..admission.settings import AuthConfig, LimitsConfig, TenantConfig
from ..deliver._config import QueueConfig
from ..export.settings import (
    ExporterConfig,
    LangfuseConfig,
    LogsExporterConfig,
    MetricsExporterConfig,
    OtlpGrpcConfig,
    RetryConfig,
)
from ..receive.settings import HttpReceiverConfig, TlsConfig
from ..rollouts._config import RolloutsConfig
from ..store._config import StoreConfig
from ._explain import explain
from ._load import ENVIRONMENT, STORE_SCHEMES, LoadedConfig, load, load_config, store_settings
from ._schema import (
    MIN_TOKEN_LENGTH,
    ApiTierConfig,
    Config,
    ConfigError,
    ConventionsConfig,
    GenerationConfig,
    HoldConfig,
    ReceiversConfig,
    ResolutionConfig,
    StampConfig,
)

__all__ = [
    "ENVIRONMENT",
    "MIN_TOKEN_LENGTH",
    "STORE_SCHEMES",
    "ApiTierConfig",
    "AuthConfig",
    "Config",
    "ConfigError",
    "ConventionsConfig",
    "ExporterConfig",
    "GenerationConfig",
    "HoldConfig",
    "HttpReceiverConfig",
    "LangfuseConfig",
    "LimitsConfig",
    "LoadedConfig",
    "LogsExporterConfig",
    "MetricsExporterConfig",
    "OtlpGrpcConfig",
    "QueueConfig",
    "ReceiversConfig",
    "ResolutionConfig",
    "RetryConfig",
    "RolloutsConfig",
    "StampConfig",
    "StoreConfig",
    "TenantConfig",
    "TlsConfig",
    "explain",
    "load",
    "load_config",
    "store_settings",
]
