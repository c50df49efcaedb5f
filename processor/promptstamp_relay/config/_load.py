"""Building a :class:`~promptstamp_relay.config.Config` from YAML, the environment and flags:
type coercion with "did you mean" for unknown keys, file and line in every error, the
environment table, normalising (base URLs, an empty metrics listen), and the precedence flags >
environment > file > defaults."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from ..export.endpoints import LANGFUSE_OTLP_PATH, grpc_target, langfuse_base_url
from ._schema import Config, ConfigError


def _check_grpc_endpoint(value: str, insecure: bool) -> str | None:
    try:
        grpc_target(value, insecure)
    except ValueError as e:
        return str(e)
    return None


def _build(cls: type[Any], data: Any, path: str, errs: list[str], where: _Where) -> Any:
    """Build dataclass ``cls`` from a mapping, collecting type errors and unknown keys."""
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        errs.append(f"{where(path)}'{path or 'config'}' must be a mapping, got {type(data).__name__}")
        return cls()
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in names:
            hint = _did_you_mean(str(key), names, path)
            errs.append(f"{where(dotted)}'{dotted}' is not a known setting{hint}")
            continue
        kwargs[key] = _coerce(hints[key], value, dotted, errs, where)
    return cls(**{k: v for k, v in kwargs.items() if v is not _INVALID})


def _did_you_mean(key: str, names: Sequence[str], path: str) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if not close:
        return ""
    return f"; did you mean '{path + '.' if path else ''}{close[0]}'?"


_INVALID = object()


class _Where:
    """Prefixes an error about a dotted key with where the value came from."""

    def __init__(self, file: str = "", lines: Mapping[str, int] | None = None, label: str = "") -> None:
        self.file, self.lines, self.label = file, lines or {}, label

    def __call__(self, dotted: str) -> str:
        if self.label:
            return ""
        line = self.lines.get(dotted)
        if line is None:
            # a list item or a mapping value: the nearest key that has a line
            parent = dotted
            while line is None and ("." in parent or "[" in parent):
                parent = parent[: max(parent.rfind("."), parent.rfind("["))]
                line = self.lines.get(parent)
        return f"{self.file}:{line}: " if self.file and line is not None else ""

    def bad(self, dotted: str, why: str, value: Any) -> str:
        """``'hold.seconds' must be a number, got 'abc'``, or for a value from the environment
        ``PROMPTSTAMP_HOLD_SECONDS='abc': must be a number``."""
        if self.label:
            return f"{self.label}: {why}"
        return f"{self(dotted)}'{dotted}' {why}, got {value!r}"


def _coerce(tp: Any, value: Any, path: str, errs: list[str], where: _Where) -> Any:
    if is_dataclass(tp) and isinstance(tp, type):
        return _build(tp, value, path, errs, where)
    origin = get_origin(tp)
    if origin is list:
        (item,) = get_args(tp)
        if not isinstance(value, list):
            errs.append(where.bad(path, "must be a list", value))
            return _INVALID
        return [_coerce(item, v, f"{path}[{i}]", errs, where) for i, v in enumerate(value)]
    if origin is dict:
        _, val_t = get_args(tp)
        if not isinstance(value, Mapping):
            errs.append(where.bad(path, "must be a mapping", value))
            return _INVALID
        return {str(k): _coerce(val_t, v, f"{path}.{k}", errs, where) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        errs.append(where.bad(path, "must be true or false", value))
        return _INVALID
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        errs.append(where.bad(path, "must be an integer", value))
        return _INVALID
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            errs.append(where.bad(path, "must be a number", value))
            return _INVALID
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        errs.append(where.bad(path, "must be a string", value))
        return _INVALID
    return value


# -- YAML: duplicate keys are errors, every key's line is known ---------------------------------
class _Loader(yaml.SafeLoader):
    pass


def _read_yaml(path: str | os.PathLike[str]) -> tuple[Any, dict[str, int]]:
    """The file's data and the line of every dotted key; ConfigError naming file, line and
    column for a syntax error or a duplicate key (PyYAML alone keeps the last one silently)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([f"cannot read {path}: {e.strerror}"]) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"{path}: not UTF-8 text ({e.reason} at byte {e.start})"]) from None
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        lines: dict[str, int] = {}
        dups: list[str] = []
        if node is not None:
            _walk_keys(node, "", lines, dups, str(path))
        if dups:
            raise ConfigError(dups)
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(filter(None, [e.context, e.problem])) or "not valid YAML"
        raise ConfigError([f"{at}: not valid YAML: {what}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError([f"{path}: not valid YAML: {e}"]) from None
    finally:
        loader.dispose()
    return (data if data is not None else {}), lines


def _walk_keys(node: yaml.Node, prefix: str, lines: dict[str, int], dups: list[str], file: str) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[object, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<': merged keys may be overridden
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node.value)
            line = key_node.start_mark.line + 1
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key in first:
                dups.append(f"{file}:{line}:{key_node.start_mark.column + 1}: duplicate key '{dotted}' "
                            f"(first at line {first[key]}); YAML would silently keep the last one")
                continue
            first[key] = line
            lines[dotted] = line
            _walk_keys(value_node, dotted, lines, dups, file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            dotted = f"{prefix}[{i}]"
            lines[dotted] = item.start_mark.line + 1
            _walk_keys(item, dotted, lines, dups, file)


def _leaf_paths(data: Any, prefix: str = "") -> Iterator[str]:
    if isinstance(data, Mapping) and data:
        for k, v in data.items():
            yield from _leaf_paths(v, f"{prefix}.{k}" if prefix else str(k))
    elif prefix:
        yield prefix


# -- environment --------------------------------------------------------------------------------
STORE_SCHEMES = ("redis://", "rediss://", "unix://")
_STORE_HELP = ("memory, redis://HOST:PORT/DB, rediss://HOST:PORT/DB (TLS) or unix:///PATH/redis.sock")


def store_settings(value: str, label: str) -> dict[str, str]:
    """``memory`` or a Redis URL (``PROMPTSTAMP_STORE`` / ``--store``) as store.* settings.
    ValueError names ``label`` and the scheme only: a URL may carry a password."""
    value = value.strip()
    if value == "memory":
        return {"store.backend": "memory"}
    if value.startswith(STORE_SCHEMES):
        return {"store.backend": "redis", "store.url": value}
    scheme, sep, _ = value.partition("://")
    shown = f"{scheme}://…" if sep else value
    raise ValueError(f"{label}={shown!r}: not a supported store; supported: {_STORE_HELP}")


# Environment variables: name -> dotted key. LANGFUSE_* are the names Langfuse's own SDK reads.
ENVIRONMENT: dict[str, str] = {
    "PROMPTSTAMP_LISTEN": "listen",
    "PROMPTSTAMP_HOLD_SECONDS": "hold.seconds",
    "PROMPTSTAMP_METRICS_LISTEN": "metrics_listen",  # "" disables the endpoint
    "PROMPTSTAMP_STORE": "store.backend",  # and store.url
    "LANGFUSE_BASE_URL": "exporter.langfuse.base_url",
    "LANGFUSE_HOST": "exporter.langfuse.base_url",  # the older name, still read by Langfuse's SDK
    "LANGFUSE_PUBLIC_KEY": "exporter.langfuse.public_key",
    "LANGFUSE_SECRET_KEY": "exporter.langfuse.secret_key",
}
_EMPTY_MEANS_SET = frozenset({"PROMPTSTAMP_METRICS_LISTEN"})


@dataclass
class LoadedConfig:
    """A validated Config, where each setting came from, and what the loader decided for you.

    ``sources``: dotted key -> ``file PATH:LINE``, ``environment NAME`` or ``flag``; keys not in
    it have their defaults. ``notes``: one line each, for the operator (``serve`` logs them at
    WARNING, ``check-config`` prints them).
    """

    config: Config
    sources: dict[str, str]
    notes: list[str]


def load(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> LoadedConfig:
    """Defaults, then the file, then the environment, then ``overrides`` (command-line flags:
    dotted keys; ``None`` values are skipped). Raises ConfigError listing every problem."""
    env = os.environ if env is None else env
    errs: list[str] = []
    notes: list[str] = []
    sources: dict[str, str] = {}
    data: Any = {}
    lines: dict[str, int] = {}
    if path is not None:
        data, lines = _read_yaml(path)
    cfg: Config = _build(Config, data, "", errs, _Where(str(path or ""), lines))
    for leaf in _leaf_paths(data if isinstance(data, Mapping) else {}):
        line = lines.get(leaf)
        sources[leaf] = f"file {path}" + (f":{line}" if line is not None else "")

    def setting(dotted: str, value: Any, source: str, label: str = "") -> None:
        nonlocal cfg
        before = len(errs)
        cfg = _set(cfg, dotted.split("."), value, dotted, errs, _Where(label=label))
        if len(errs) == before:
            # a file subtree replaced by this value is no longer the file's
            for key in [k for k in sources if k.startswith(dotted + ".")]:
                del sources[key]
            sources[dotted] = source

    for var, dotted in ENVIRONMENT.items():
        value = env.get(var)
        if value is None or (value == "" and var not in _EMPTY_MEANS_SET):
            continue
        if var == "LANGFUSE_HOST" and env.get("LANGFUSE_BASE_URL"):
            if langfuse_base_url(env["LANGFUSE_BASE_URL"]) != langfuse_base_url(value):
                notes.append("LANGFUSE_BASE_URL and LANGFUSE_HOST are both set and differ: "
                             "using LANGFUSE_BASE_URL")
            continue
        source, label = f"environment {var}", f"{var}={value!r}"
        if var == "PROMPTSTAMP_STORE":
            try:
                for key, v in store_settings(value, var).items():
                    setting(key, v, source)
            except ValueError as e:
                errs.append(str(e))
            continue
        setting(dotted, value, source, "" if "SECRET" in var else label)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            setting(dotted, value, "flag")
    cfg = _normalise(cfg, sources, notes, errs)
    errs.extend(_blame(e, sources) for e in cfg.validate())
    if errs:
        raise ConfigError(errs)
    return LoadedConfig(cfg, sources, notes)


def load_config(
    path: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """:func:`load`'s Config alone."""
    return load(path, env, overrides).config


def _origin(sources: Mapping[str, str], dotted: str) -> str:
    return sources.get(dotted, "the default")


def _normalise(cfg: Config, sources: Mapping[str, str], notes: list[str], errs: list[str]) -> Config:
    """Accept the spellings operators copy from Langfuse's and OTel's docs, and say so."""
    lf = cfg.exporter.langfuse
    base = langfuse_base_url(lf.base_url) if lf.base_url else ""
    if base != lf.base_url.strip().rstrip("/"):
        origin = _origin(sources, "exporter.langfuse.base_url")
        notes.append(f"exporter.langfuse.base_url {lf.base_url!r} (from {origin}) "
                     f"ends in Langfuse's OTLP path; using {base!r}: the relay appends "
                     f"{LANGFUSE_OTLP_PATH} itself")
    cfg = replace(cfg, exporter=replace(cfg.exporter, langfuse=replace(lf, base_url=base)))
    tenants = {}
    for name, t in cfg.auth.tenants.items():
        t_base = langfuse_base_url(t.langfuse_base_url) if t.langfuse_base_url else ""
        if t_base != t.langfuse_base_url.strip().rstrip("/"):
            notes.append(f"auth.tenants.{name}.langfuse_base_url {t.langfuse_base_url!r} ends in Langfuse's "
                         f"OTLP path; using {t_base!r}")
        tenants[name] = replace(t, langfuse_base_url=t_base)
    cfg = replace(cfg, auth=replace(cfg.auth, tenants=tenants))
    for section in ("exporter", "logs_exporter", "metrics_exporter"):
        g = getattr(cfg, section).otlp_grpc
        scheme = g.endpoint.strip().partition("://")[0] if "://" in g.endpoint else ""
        explicit = f"{section}.otlp_grpc.insecure" in sources
        if scheme == "https" and explicit and g.insecure:
            errs.append(f"'{section}.otlp_grpc.insecure' is true but the endpoint {g.endpoint!r} is https:// "
                        "(TLS): drop insecure, or use http:// for plain gRPC")
        if scheme == "http" and explicit and not g.insecure:
            errs.append(f"'{section}.otlp_grpc.insecure' is false but the endpoint {g.endpoint!r} is http:// "
                        "(plain gRPC): use https:// for TLS")
    if (cfg.exporter.type == "" and not base and (lf.public_key or lf.secret_key)
            and not cfg.auth.passthrough_langfuse_credentials):
        given = " and ".join(_origin(sources, f"exporter.langfuse.{k}") for k in ("public_key", "secret_key")
                             if getattr(lf, k))
        notes.append(f"Langfuse keys are set ({given}) but no base URL (LANGFUSE_BASE_URL, LANGFUSE_HOST or "
                     "exporter.langfuse.base_url): using the debug exporter, which prints stamped spans "
                     "and sends nothing. Set LANGFUSE_BASE_URL (e.g. https://cloud.langfuse.com) to export "
                     "to Langfuse")
    return cfg


_QUOTED_KEY = re.compile(r"^'([A-Za-z0-9_.\[\]-]+)'")


def _blame(error: str, sources: Mapping[str, str]) -> str:
    """A validation error about a key set by the environment or a flag says so."""
    m = _QUOTED_KEY.match(error)
    if m:
        source = sources.get(m[1], "")
        if source.startswith("environment "):
            return f"{error} (set by {source.removeprefix('environment ')})"
        if source == "flag":
            return f"{error} (set by a command-line flag)"
        if source.startswith("file "):
            return f"{source.removeprefix('file ')}: {error}"
    return error


def _set(obj: Any, parts: list[str], value: Any, dotted: str, errs: list[str], where: _Where) -> Any:
    name = parts[0]
    hints = get_type_hints(type(obj))
    if name not in hints:
        known = [f.name for f in fields(obj)]
        hint = _did_you_mean(name, known, dotted.rpartition(".")[0])
        errs.append(f"'{dotted}' is not a known setting{hint}")
        return obj
    if len(parts) == 1:
        new = _coerce(hints[name], value, dotted, errs, where)
        return obj if new is _INVALID else replace(obj, **{name: new})
    child = getattr(obj, name)
    if not is_dataclass(child):
        errs.append(f"'{dotted}' is not a known setting")
        return obj
    return replace(obj, **{name: _set(child, parts[1:], value, dotted, errs, where)})


# -- explain ------------------------------------------------------------------------------------
