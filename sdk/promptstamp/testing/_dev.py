"""``promptstamp-relay dev`` (also ``python -m promptstamp.testing dev``): a local Langfuse for an
app in any language.

One process runs, on loopback and free ports unless told otherwise:

* :class:`~promptstamp.testing.LangfuseServer`: Langfuse's prompts API and OTLP ingest, seeded
  with the prompts of ``--config`` (a YAML or JSON file, shape below);
* :class:`~promptstamp.testing.FakeOpenAI` and :class:`~promptstamp.testing.FakeAnthropic`, which
  share one :class:`~promptstamp.testing.PromptBehaviours`: every seeded version is registered by
  its text, so a request made with a version that has a ``behaviour`` is delayed, fails or gets
  its own answer (how a request is matched to a version: ``promptstamp.testing._openai``);
* the relay, in front of that Langfuse (OTLP/gRPC and OTLP/HTTP receivers).

It prints the environment the app needs as ``export`` lines, then one line per generation as it
lands at the Langfuse server (which prompt version it is linked to and by which tier, or why it
is not), until SIGINT (Ctrl-C) or SIGTERM: then the relay drains (held spans are released and
shown), every server stops, and the exit code is 0.

The config file::

    prompts:                      # or the list alone, at the top
      - name: order-status-answer
        type: chat                # chat (default) | text
        tags: [support]           # optional
        versions:                 # v1, v2, ... in this order
          - prompt:               # chat: a list of messages; text: a string
              - {role: system, content: "You are a support assistant."}
              - {role: user, content: "Where is order {{order}}?"}
            labels: [production]  # "latest" goes to the last version by itself
            config: {model: gpt-4o-mini}
          - prompt: [...]
            labels: [canary]
            behaviour:            # optional: how the fake model APIs answer this version
              delay_ms: 1500
              error: 503          # or {status: 429, message: "Rate limit reached"}
              answer: "Shipped."  # the assistant's text
    relay: {hold: {seconds: 2}}   # optional: relay settings, as in the relay's YAML

Exit codes: 0 stopped by a signal (everything stopped); 2 a bad config file or command line;
5 a port is in use; 7 ``--host`` is not an address of this machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from promptstamp.testing._openai import Behaviour

if TYPE_CHECKING:
    from promptstamp.testing._anthropic import FakeAnthropic
    from promptstamp.testing._langfuse import LangfuseServer, Observation
    from promptstamp.testing._openai import FakeOpenAI
    from promptstamp.testing._relay import _Reasons

__all__ = [
    "DevConfig",
    "DevConfigError",
    "DevStack",
    "GenerationLine",
    "PromptSpec",
    "PromptVersionSpec",
    "add_arguments",
    "load_dev_config",
    "main",
    "parse_dev_config",
    "run",
]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_LISTEN_IN_USE = 5
EXIT_LISTEN_HOST = 7

PUBLIC_KEY = "pk-lf-dev"
SECRET_KEY = "sk-lf-dev"
OPENAI_API_KEY = "sk-dev"
ANTHROPIC_API_KEY = "sk-ant-dev"

_PROMPT_KEYS = {"name", "type", "tags", "versions"}
_VERSION_KEYS = {"prompt", "labels", "config", "commit_message", "behaviour"}
_BEHAVIOUR_KEYS = {"delay_ms", "error", "answer"}


# --------------------------------------------------------------------------------------------
# The config file
# --------------------------------------------------------------------------------------------
class DevConfigError(ValueError):
    """The config file is unreadable or not of the documented shape (the message says where)."""


@dataclass(frozen=True)
class PromptVersionSpec:
    prompt: str | list[dict[str, Any]]
    labels: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    commit_message: str | None = None
    behaviour: Behaviour | None = None


@dataclass(frozen=True)
class PromptSpec:
    name: str
    type: str  # chat | text
    versions: list[PromptVersionSpec]
    tags: list[str] | None = None


@dataclass(frozen=True)
class DevConfig:
    prompts: list[PromptSpec] = field(default_factory=list)
    relay: dict[str, Any] = field(default_factory=dict)  # relay settings, shaped like its YAML


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise DevConfigError(f"{where}: a list of strings, got {value!r}")
    return list(value)


def _unknown(item: Mapping[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(item) - known)
    if extra:
        raise DevConfigError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; "
                             f"known: {', '.join(sorted(known))}")


def _behaviour(value: Any, where: str) -> Behaviour:
    if not isinstance(value, dict):
        raise DevConfigError(f"{where}: a mapping with delay_ms, error, answer; got {value!r}")
    _unknown(value, _BEHAVIOUR_KEYS, where)
    error = value.get("error")
    status: Any = error
    message: Any = None
    if isinstance(error, dict):
        _unknown(error, {"status", "message"}, f"{where}.error")
        status, message = error.get("status"), error.get("message")
        if status is None:
            raise DevConfigError(f"{where}.error: needs a status")
        if message is not None and not isinstance(message, str):
            raise DevConfigError(f"{where}.error.message: a string, got {message!r}")
    answer = value.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise DevConfigError(f"{where}.answer: a string, got {answer!r}")
    try:
        return Behaviour(delay_ms=value.get("delay_ms", 0), error_status=status, error_message=message,
                         answer=answer)
    except ValueError as e:
        raise DevConfigError(f"{where}: {e}") from None


def _version(value: Any, prompt_type: str, where: str) -> PromptVersionSpec:
    if not isinstance(value, dict):
        raise DevConfigError(f"{where}: a mapping with prompt, labels, config; got {value!r}")
    _unknown(value, _VERSION_KEYS, where)
    prompt = value.get("prompt")
    if prompt_type == "text":
        if not isinstance(prompt, str):
            raise DevConfigError(f"{where}.prompt: a string for a text prompt, got {prompt!r}")
    else:
        if not isinstance(prompt, list) or not prompt:
            raise DevConfigError(f"{where}.prompt: a list of messages for a chat prompt, got {prompt!r}")
        for i, m in enumerate(prompt):
            is_placeholder = isinstance(m, dict) and m.get("type") == "placeholder" and isinstance(
                m.get("name"), str)
            is_message = isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(
                m.get("content"), str)
            if not (is_placeholder or is_message):
                raise DevConfigError(f"{where}.prompt[{i}]: a message {{role, content}} or a placeholder "
                                     f"{{type: placeholder, name}}, got {m!r}")
    labels = _strings(value.get("labels", []), f"{where}.labels")
    if "latest" in labels:
        raise DevConfigError(f"{where}.labels: 'latest' is always on the last version")
    config = value.get("config", {})
    if not isinstance(config, dict):
        raise DevConfigError(f"{where}.config: a mapping, got {config!r}")
    commit = value.get("commit_message")
    if commit is not None and not isinstance(commit, str):
        raise DevConfigError(f"{where}.commit_message: a string, got {commit!r}")
    behaviour = value.get("behaviour")
    return PromptVersionSpec(
        prompt=prompt if isinstance(prompt, str) else [dict(m) for m in prompt],
        labels=labels, config=dict(config), commit_message=commit,
        behaviour=None if behaviour is None else _behaviour(behaviour, f"{where}.behaviour"),
    )


def parse_dev_config(data: Any, where: str = "config") -> DevConfig:
    """A :class:`DevConfig` from the parsed file (a list of prompts, or a mapping with
    ``prompts`` and ``relay``); :class:`DevConfigError` naming the first problem."""
    if data is None:
        return DevConfig()
    relay: Any = {}
    if isinstance(data, dict):
        _unknown(data, {"prompts", "relay"}, where)
        relay = data.get("relay") or {}
        if not isinstance(relay, dict):
            raise DevConfigError(f"{where}: relay: a mapping of relay settings, got {relay!r}")
        data = data.get("prompts") or []
    if not isinstance(data, list):
        raise DevConfigError(f"{where}: a list of prompts, or a mapping with 'prompts'")
    prompts: list[PromptSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(data):
        here = f"{where}: prompts[{i}]"
        if not isinstance(item, dict):
            raise DevConfigError(f"{here}: a mapping with name, type, versions; got {item!r}")
        _unknown(item, _PROMPT_KEYS, here)
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise DevConfigError(f"{here}.name: a non-empty string, got {name!r}")
        if name in seen:
            raise DevConfigError(f"{here}: prompt {name!r} is given twice; list its versions under one entry")
        seen.add(name)
        here = f"{where}: prompt {name!r}"
        prompt_type = item.get("type", "chat")
        if prompt_type not in ("chat", "text"):
            raise DevConfigError(f"{here}.type: chat or text, got {prompt_type!r}")
        versions = item.get("versions")
        if not isinstance(versions, list) or not versions:
            raise DevConfigError(f"{here}.versions: a non-empty list of versions")
        tags = item.get("tags")
        prompts.append(PromptSpec(
            name=name, type=prompt_type,
            versions=[_version(v, prompt_type, f"{here} version {n}") for n, v in enumerate(versions, 1)],
            tags=None if tags is None else _strings(tags, f"{here}.tags"),
        ))
    return DevConfig(prompts=prompts, relay=dict(relay))


def load_dev_config(path: str | os.PathLike[str]) -> DevConfig:
    """Read a YAML or JSON (``.json``) config file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise DevConfigError(f"cannot read {p}: {e.strerror}") from None
    try:
        if p.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except ValueError as e:  # json.JSONDecodeError and yaml.YAMLError's subclasses alike
        kind = "JSON" if p.suffix.lower() == ".json" else "YAML"
        raise DevConfigError(f"{p}: not valid {kind}: {e}") from None
    except Exception as e:  # yaml.YAMLError is no ValueError
        raise DevConfigError(f"{p}: not valid YAML: {e}") from None
    return parse_dev_config(data, str(p))


# --------------------------------------------------------------------------------------------
# The stack
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Ports:
    """Where each part listens; 0: a free port."""

    langfuse: int = 0
    openai: int = 0
    anthropic: int = 0
    otlp_grpc: int = 0
    otlp_http: int = 0


@dataclass(frozen=True)
class GenerationLine:
    """One generation as it landed at the Langfuse server."""

    time: datetime
    trace_id: str
    span_id: str
    span_name: str
    prompt_name: str | None
    version: int | None
    label: str | None
    resolution: str | None  # trace | instance | latest | api | convention | app (linked by the app)
    reason: str | None = None  # why not linked (UNLINKED <reason>)
    dropped: str | None = None  # why Langfuse's ingestion would drop it

    @property
    def linked(self) -> bool:
        return self.version is not None and self.dropped is None

    def format(self) -> str:
        head = f"{self.time.strftime('%H:%M:%S.%f')[:-3]}  {self.trace_id[:8]}  {self.span_name:<26}"
        if self.dropped is not None:
            return f"{head}  DROPPED {self.dropped}"
        if self.version is not None:
            return (f"{head}  {self.prompt_name}  v{self.version}  {self.label or '-'}  "
                    f"{self.resolution or '-'}")
        about = f" ({self.prompt_name}, label {self.label or '-'})" if self.prompt_name else ""
        return f"{head}  UNLINKED {self.reason or 'not_linked'}{about}"


def _connect_host(host: str) -> str:
    """The host an app on this machine connects to for a server bound to ``host``."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "::1"
    return host


def _url(host: str, port: int) -> str:
    h = _connect_host(host)
    return f"http://[{h}]:{port}" if ":" in h else f"http://{h}:{port}"


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class DevStack:
    """LangfuseServer, FakeOpenAI, FakeAnthropic and the relay, wired together and seeded.

    ``with DevStack(config) as stack: stack.env() ...``; :meth:`new_generations` gives the
    generations that landed since the last call. The relay is imported on :meth:`start`.
    """

    def __init__(self, config: DevConfig | None = None, *, host: str = "127.0.0.1",
                 ports: Ports | None = None) -> None:
        from promptstamp.testing._anthropic import FakeAnthropic
        from promptstamp.testing._langfuse import LangfuseServer
        from promptstamp.testing._openai import FakeOpenAI, PromptBehaviours

        self.config = config or DevConfig()
        self.host = host
        self.ports = ports or Ports()
        self.behaviours = PromptBehaviours()
        self.langfuse: LangfuseServer = LangfuseServer(PUBLIC_KEY, SECRET_KEY, project_id="promptstamp-dev")
        self.openai: FakeOpenAI = FakeOpenAI("This is the fake model's answer.", behaviours=self.behaviours)
        self.anthropic: FakeAnthropic = FakeAnthropic("This is the fake model's answer.",
                                                      behaviours=self.behaviours)
        self.relay: Any = None  # promptstamp_relay.server.RelayServer once started
        self.seeded: list[dict[str, Any]] = []  # the versions as created: name, version, labels, ...
        self.lost = 0
        self._reasons: _Reasons | None = None
        self._seen_requests = 0
        self._shown: set[tuple[str, str]] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> DevStack:
        from promptstamp.testing._relay import _Reasons
        from promptstamp.testing._replay import load_relay_config
        from promptstamp_relay.server import RelayServer

        try:
            self.langfuse.start(self.host, self.ports.langfuse)
            self.openai.start(self.host, self.ports.openai)
            self.anthropic.start(self.host, self.ports.anthropic)
            self._seed()
            cfg = load_relay_config(self.config.relay or None, overrides={
                "listen": _hostport(self.host, self.ports.otlp_grpc),
                "receivers.http.listen": _hostport(self.host, self.ports.otlp_http),
                "metrics_listen": _hostport(self.host, 0),  # the timeline the `labels` commands read
                "exporter.type": "langfuse",
                "exporter.langfuse.base_url": self.langfuse_url,
                "exporter.langfuse.public_key": PUBLIC_KEY,
                "exporter.langfuse.secret_key": SECRET_KEY,
                "retry.initial_interval_seconds": 0.1,
                "retry.max_interval_seconds": 0.5,
            })
            self._reasons = _Reasons()
            self.relay = RelayServer(cfg, observers=(self._reasons,)).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _seed(self) -> None:
        for spec in self.config.prompts:
            for v in spec.versions:
                created = self.langfuse.create_prompt(
                    spec.name, v.prompt, type=spec.type, labels=v.labels, config=v.config,
                    tags=spec.tags, commit_message=v.commit_message)
                self.behaviours.add(spec.name, created["version"], v.prompt, v.behaviour)
                self.seeded.append({"name": spec.name, "version": created["version"],
                                    "behaviour": v.behaviour})

    def stop_relay(self, timeout: float = 10.0) -> int:
        """Drain the relay into the Langfuse server (held spans released) and stop it."""
        relay, self.relay = self.relay, None
        if relay is not None:
            self.lost += relay.stop(timeout=timeout)
        return self.lost

    def stop(self) -> int:
        """Stop everything (the relay first, so what it holds still lands). Idempotent."""
        try:
            self.stop_relay()
        finally:
            for server in (self.openai, self.anthropic, self.langfuse):
                server.stop()
        return self.lost

    def __enter__(self) -> DevStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses and the environment -----------------------------------------------------------
    @property
    def langfuse_url(self) -> str:
        return _url(self.host, self.langfuse.port)

    @property
    def openai_url(self) -> str:
        return _url(self.host, self.openai.port) + "/v1"

    @property
    def anthropic_url(self) -> str:
        return _url(self.host, self.anthropic.port)

    @property
    def otlp_grpc_endpoint(self) -> str:
        return _url(self.host, int(self.relay.address.rpartition(":")[2]))

    @property
    def otlp_http_endpoint(self) -> str:
        address = self.relay.http_address
        return _url(self.host, int(address.rpartition(":")[2]))

    @property
    def metrics_listen(self) -> str:
        """The relay's admin listener (``/metrics``, the timeline, the pages), ``host:port``."""
        return _hostport(self.host, self.relay.metrics_port or 0)

    def env(self, protocol: str = "http/protobuf") -> dict[str, str]:
        """What an app needs: Langfuse keys and URL, OTLP to the relay (``http/protobuf`` or
        ``grpc``), the fake model APIs' base URLs and keys."""
        if protocol not in ("http/protobuf", "grpc"):
            raise ValueError("protocol: 'http/protobuf' or 'grpc'")
        return {
            "LANGFUSE_PUBLIC_KEY": PUBLIC_KEY,
            "LANGFUSE_SECRET_KEY": SECRET_KEY,
            "LANGFUSE_BASE_URL": self.langfuse_url,
            "LANGFUSE_HOST": self.langfuse_url,
            "OTEL_EXPORTER_OTLP_ENDPOINT": self.otlp_grpc_endpoint if protocol == "grpc"
            else self.otlp_http_endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            "OPENAI_BASE_URL": self.openai_url,
            "OPENAI_API_KEY": OPENAI_API_KEY,
            "ANTHROPIC_BASE_URL": self.anthropic_url,
            "ANTHROPIC_API_KEY": ANTHROPIC_API_KEY,
        }

    def export_lines(self) -> list[str]:
        """The env as shell ``export`` lines: OTLP/HTTP active, OTLP/gRPC commented out below."""
        lines = [f"export {k}={v}" for k, v in self.env().items()]
        lines.append("# the relay's admin listener (/metrics, /prompts, the timeline): the")
        lines.append("# `promptstamp-relay labels` commands find it by this")
        lines.append(f"export PROMPTSTAMP_METRICS_LISTEN={self.metrics_listen}")
        grpc = self.env("grpc")
        lines.append("# OTLP/gRPC instead of OTLP/HTTP:")
        lines += [f"# export {k}={grpc[k]}"
                  for k in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_PROTOCOL")]
        return lines

    # -- what landed -------------------------------------------------------------------------------
    def new_generations(self) -> list[GenerationLine]:
        """Generations (and would-be generations) that landed at the Langfuse server since the
        last call, each span once; those of one call in the order they started."""
        from promptstamp.testing._langfuse import RejectedObservation, _map_request

        requests = self.langfuse.ingest_requests
        fresh, self._seen_requests = requests[self._seen_requests:], len(requests)
        lines: list[tuple[int, GenerationLine]] = []
        now = datetime.now()
        for r in fresh:
            if r.status != 200 or r.request is None:
                continue
            for item in _map_request(r.request):
                if isinstance(item, RejectedObservation):
                    obs, dropped = item.observation, item.reason
                else:
                    obs, dropped = item, None
                key = (obs.trace_id, obs.span_id)
                if key in self._shown:
                    continue
                line = self._line(obs, dropped, now)
                if line is not None:
                    self._shown.add(key)
                    lines.append((obs.start_time_unix_nano, line))
        return [line for _, line in sorted(lines, key=lambda item: item[0])]

    def _line(self, o: Observation, dropped: str | None, now: datetime) -> GenerationLine | None:
        from promptstamp.testing._replay import generation_from_observation

        reason = self._reasons.get(o.trace_id, o.span_id) if self._reasons is not None else None
        g = generation_from_observation(o, reason)
        meta = o.metadata
        if o.type != "GENERATION":
            if g is None:
                return None  # a span, a tool, an agent step: not a generation
            return GenerationLine(now, o.trace_id, o.span_id, o.name, g.prompt_name, None, g.label or None,
                                  None, f"{g.reason} (Langfuse types it {o.type})")
        if g is not None:
            label = g.label or None
            if dropped is not None:
                return GenerationLine(now, o.trace_id, o.span_id, o.name, g.prompt_name, None, label,
                                      g.resolution, dropped=dropped)
            return GenerationLine(now, o.trace_id, o.span_id, o.name, o.prompt_name or g.prompt_name,
                                  o.prompt_version, label, g.resolution, g.reason)
        if o.prompt_name is not None and o.prompt_version is not None:  # the app linked it itself
            label = meta.get("prompt_label")
            return GenerationLine(now, o.trace_id, o.span_id, o.name, o.prompt_name, o.prompt_version,
                                  None if label is None else str(label), "app", dropped=dropped)
        if "app.prompt.key" in o.attributes:
            why = "not_stamped"
        elif self._reasons is not None and self._reasons.has_fetch_record(o.trace_id):
            why = "outside_prompt_scope"
        else:
            why = "no_prompt_key"
        return GenerationLine(now, o.trace_id, o.span_id, o.name, None, None, None, None, why, dropped)


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------
def _port(value: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a port number 0..65535, got {value!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port number 0..65535, got {value!r}")
    return port


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``dev`` command's options (shared by ``promptstamp-relay dev`` and ``python -m
    promptstamp.testing dev``)."""
    parser.add_argument("--config", metavar="FILE",
                        help="prompts to seed (YAML, or JSON for *.json): see the README, 'A local Langfuse "
                             "for any language'")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address every server listens on (default 127.0.0.1: this machine only)")
    for flag, what in (("--langfuse-port", "the Langfuse API (prompts, OTLP ingest)"),
                       ("--openai-port", "the fake OpenAI API"),
                       ("--anthropic-port", "the fake Anthropic API"),
                       ("--otlp-grpc-port", "the relay's OTLP/gRPC receiver"),
                       ("--otlp-http-port", "the relay's OTLP/HTTP receiver")):
        parser.add_argument(flag, type=_port, default=0, metavar="N",
                            help=f"port of {what} (default: a free one)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="the relay's info and debug logs on stderr")


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="A local Langfuse (prompts API + OTLP ingest), fake OpenAI and Anthropic APIs and "
                    "the relay, wired together on loopback: prints the environment an app needs, then "
                    "each generation as it lands. Ctrl-C stops.",
        epilog="exit codes:\n  0  stopped by SIGINT or SIGTERM\n  2  invalid config file or command line\n"
               "  5  a port is in use\n  7  --host is not an address of this machine",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    return parser


def _preflight(host: str, ports: Ports) -> tuple[int, str] | None:
    from promptstamp_relay.ops.startup import probe_listen

    problem = probe_listen(_hostport(host, 0), "the dev servers", "--host")
    if problem is not None:
        return (EXIT_LISTEN_IN_USE if problem.kind == "port" else EXIT_LISTEN_HOST), problem.message
    for port, what, flag in ((ports.langfuse, "the Langfuse API", "--langfuse-port"),
                             (ports.openai, "the fake OpenAI API", "--openai-port"),
                             (ports.anthropic, "the fake Anthropic API", "--anthropic-port"),
                             (ports.otlp_grpc, "the OTLP/gRPC receiver", "--otlp-grpc-port"),
                             (ports.otlp_http, "the OTLP/HTTP receiver", "--otlp-http-port")):
        problem = probe_listen(_hostport(host, port), what, flag) if port else None
        if problem is not None:
            return (EXIT_LISTEN_IN_USE if problem.kind == "port" else EXIT_LISTEN_HOST), problem.message
    return None


def _write(out: TextIO, text: str) -> None:
    out.write(text + "\n")
    out.flush()


def run(args: argparse.Namespace, *, out: TextIO | None = None, stop: threading.Event | None = None,
        prog: str = "promptstamp-relay dev") -> int:
    """Run until ``stop`` is set, or (``stop`` None, in the main thread) SIGINT / SIGTERM."""
    relay_log = logging.getLogger("promptstamp_relay")
    level = relay_log.level
    if not getattr(args, "verbose", False):
        relay_log.setLevel(logging.WARNING)  # the relay's start-up notes would bury the lines
    try:
        return _run(args, out or sys.stdout, stop, prog)
    finally:
        relay_log.setLevel(level)


def _run(args: argparse.Namespace, out: TextIO, stop: threading.Event | None, prog: str) -> int:
    def fail(message: str, code: int) -> int:
        print(f"{prog}: {message}", file=sys.stderr, flush=True)
        return code

    try:
        config = load_dev_config(args.config) if args.config else DevConfig()
    except DevConfigError as e:
        return fail(str(e), EXIT_CONFIG)
    ports = Ports(args.langfuse_port, args.openai_port, args.anthropic_port, args.otlp_grpc_port,
                  args.otlp_http_port)
    problem = _preflight(args.host, ports)
    if problem is not None:
        return fail(problem[1], problem[0])

    stopping = stop or threading.Event()
    previous: dict[signal.Signals, Any] = {}
    if stop is None and threading.current_thread() is threading.main_thread():
        def on_signal(signum: int, _frame: object) -> None:
            if stopping.is_set():  # a second Ctrl-C while draining: give up at once
                os._exit(130)
            stopping.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    stack = DevStack(config, host=args.host, ports=ports)
    try:
        try:
            stack.start()
        except Exception as e:
            from promptstamp_relay.config import ConfigError

            if isinstance(e, ConfigError):  # the settings went through a temporary file: name the file
                temporary = r"\S*promptstamp-config-[^/\s]+/relay\.yaml(:\d+)?"
                return fail(re.sub(temporary, f"{args.config}: relay", str(e)), EXIT_CONFIG)
            if isinstance(e, OSError):
                return fail(f"cannot start: {e}", EXIT_LISTEN_IN_USE)
            raise
        try:
            _show_start(stack, args.config, out)
            while not stopping.wait(0.1):
                for line in stack.new_generations():
                    _write(out, line.format())
            stack.stop_relay()  # what the relay holds lands now, and is shown
            for line in stack.new_generations():
                _write(out, line.format())
            _write(out, "# stopped" + (f"; the relay could not deliver {stack.lost} item(s)"
                                       if stack.lost else ""))
        except BrokenPipeError:  # stdout closed (| head): stop quietly
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), out.fileno())
        return EXIT_OK
    finally:
        stack.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _show_start(stack: DevStack, config_path: str | None, out: TextIO) -> None:
    _write(out, "# promptstamp dev: a local Langfuse, fake OpenAI and Anthropic APIs and the relay.")
    _write(out, "# The app's environment (paste into its shell):")
    for line in stack.export_lines():
        _write(out, line)
    if _connect_host(stack.host) != stack.host:
        _write(out, f"# Listening on every interface ({stack.host}): from a container or another machine, "
                    "use this machine's address in place of " + _connect_host(stack.host) + ".")
    if stack.seeded:
        _write(out, f"# Prompts from {config_path}:")
        for name in dict.fromkeys(s["name"] for s in stack.seeded):
            versions = []
            for s in stack.seeded:
                if s["name"] != name:
                    continue
                record = stack.langfuse.get_prompt(name, version=s["version"]) or {}
                labels = ", ".join(record.get("labels", []))
                b: Behaviour | None = s["behaviour"]
                extra = []
                if b is not None and b.delay_ms:
                    extra.append(f"delay {b.delay_ms} ms")
                if b is not None and b.error_status is not None:
                    extra.append(f"error {b.error_status}")
                if b is not None and b.answer is not None:
                    extra.append("own answer")
                versions.append(f"v{s['version']} ({labels})" + (f" [{'; '.join(extra)}]" if extra else ""))
            _write(out, f"#   {name}: {', '.join(versions)}")
    else:
        _write(out, "# No prompts seeded (--config FILE seeds them; the app may create its own).")
    _write(out, "# Generations as they land at Langfuse (Ctrl-C stops):")


def main(argv: Sequence[str] | None = None, *, prog: str = "promptstamp-relay dev",
         verbose: bool = False) -> int:
    args = _parser(prog).parse_args(argv)
    args.verbose = args.verbose or verbose
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return run(args, prog=prog)
