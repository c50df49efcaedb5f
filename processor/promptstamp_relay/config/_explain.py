"""``check-config --explain``: every effective setting, where it came from, secrets hidden."""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass
from typing import Any

from ._load import LoadedConfig

_SECRET_LEAVES = frozenset({"secret_key", "langfuse_secret_key", "tokens", "webhook_secrets"})


def _shown(dotted: str, value: Any) -> str:
    leaf = dotted.rpartition(".")[2]
    if leaf in _SECRET_LEAVES or ".headers" in dotted or dotted.endswith("headers"):
        if not value:
            return "(empty)"
        return f"(set, {len(value)} entries)" if isinstance(value, (list, dict)) else "(set)"
    if isinstance(value, str) and "://" in value and "@" in value:  # a URL with credentials
        scheme, _, rest = value.partition("://")
        return repr(f"{scheme}://***@{rest.rpartition('@')[2]}")
    return json.dumps(value) if not isinstance(value, str) else repr(value)


def explain(loaded: LoadedConfig) -> list[tuple[str, str, str]]:
    """Every effective setting as (dotted key, value as shown, where it came from). Secrets are
    never shown: only whether they are set."""
    rows: list[tuple[str, str, str]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in fields(obj):
            dotted = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            if is_dataclass(value):
                walk(value, dotted + ".")
            elif isinstance(value, dict) and value and all(is_dataclass(v) for v in value.values()):
                for k, v in value.items():
                    walk(v, f"{dotted}.{k}.")
            else:
                source = loaded.sources.get(dotted)
                if source is None:  # a file subtree (a mapping or list value)
                    inner = sorted({s for k, s in loaded.sources.items()
                                    if k.startswith((dotted + ".", dotted + "["))})
                    source = ", ".join(inner) if inner else "default"
                rows.append((dotted, _shown(dotted, value), source))

    walk(loaded.config, "")
    return rows
