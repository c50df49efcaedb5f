"""Relays started by tests, in this process or as a ``promptstamp-relay serve`` process: free
loopback ports for every listener (never the fixed 4317/4318 defaults), fast retries, bounded
waits, and a stop that always runs.

In this process: ``relay_config(langfuse)`` exports to that loopback Langfuse-compatible server
(the ``debug`` exporter without one); ``running(cfg)`` is a started :class:`RelayServer`,
stopped on exit. A test that stops the relay itself (to check what ``stop`` returns, or to read
the stats a stop settles) calls ``relay.stop(...)`` inside the block: a second stop does
nothing, and the relay object can still be read after the block. A relay stopped and started
again is two ``running`` blocks over one config.

As a process: :class:`RelayProcess`, ready once it printed where it listens and its health
endpoint (or, without a metrics listener, its gRPC port) answers; stopped with SIGTERM, then
SIGKILL.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config, load_config
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import LOGS_EXPORT, TRACES_EXPORT, attrs_of, line_spans
from tests.waiting import wait_until

__all__ = [
    "RELAY_CMD", "OtlpClient", "RelayProcess", "clean_env", "free_port", "metrics_text", "relay_config",
    "running", "scrape", "stop_process",
]


# -- in this process ------------------------------------------------------------------------------
def relay_config(langfuse: LangfuseServer | None = None, **overrides: object) -> Config:
    """Dotted ``overrides`` over: port 0 for gRPC and HTTP, no metrics listener, hold 0.5 s,
    retries 0.05-0.2 s for at most 5 s, exporting to ``langfuse``."""
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "receivers.http.listen": "127.0.0.1:0",
        "metrics_listen": "",
        "hold.seconds": 0.5,
        "retry.initial_interval_seconds": 0.05,
        "retry.max_interval_seconds": 0.2,
        "retry.max_elapsed_seconds": 5,
    }
    if langfuse is not None:
        base.update({
            "exporter.type": "langfuse",
            "exporter.langfuse.base_url": langfuse.base_url,
            "exporter.langfuse.public_key": langfuse.public_key,
            "exporter.langfuse.secret_key": langfuse.secret_key,
        })
    else:
        base["exporter.type"] = "debug"
    base.update(overrides)
    return load_config(None, env={}, overrides=base)


@contextmanager
def running(cfg: Config, *, timeout: float | None = 5.0, **given: Any) -> Iterator[RelayServer]:
    """``cfg``'s relay, started; stopped (waiting up to ``timeout`` s to drain; None: the
    config's own drain timeout) however the block ends. ``given``: what :class:`RelayServer`
    takes besides the config (``trace_exporter=`` a fake, say)."""
    relay = RelayServer(cfg, **given).start()
    try:
        yield relay
    finally:
        relay.stop(timeout=timeout)


# -- small shared pieces ----------------------------------------------------------------------------
def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without ``LANGFUSE_*``, ``PROMPTSTAMP_*`` and ``OTEL_*`` (a
    developer's own settings never reach a test's process), unbuffered, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "PROMPTSTAMP_", "OTEL_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL when it has not ended after ``timeout`` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def metrics_text(text: str) -> dict[str, float]:
    """A Prometheus text scrape: ``name{labels}`` as written (or ``name``) -> value."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def scrape(text: str, name: str, labels: str = "") -> float:
    """One sample of a Prometheus text scrape (0 when absent)."""
    return metrics_text(text).get(f"{name}{{{labels}}}" if labels else name, 0.0)


class OtlpClient:
    """A gRPC channel to a relay and its trace and logs ``Export`` calls (messages in)."""

    def __init__(self, address: str) -> None:
        self.channel = grpc.insecure_channel(address)
        self.traces = self.channel.unary_unary(
            TRACES_EXPORT, request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString)
        self.logs = self.channel.unary_unary(
            LOGS_EXPORT, request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString)

    def close(self) -> None:
        self.channel.close()


# -- as a process -----------------------------------------------------------------------------------
_SCRIPT = Path(sys.executable).parent / "promptstamp-relay"
#: The installed console script when it is there, else the same entry point through the module.
RELAY_CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "promptstamp_relay.cli"]

#: The one line ``serve`` prints once every listener is bound.
_LISTENING = re.compile(r"listening on (?P<grpc>\S+) \(OTLP/gRPC\)(?:, (?P<http>\S+) \(OTLP/HTTP\))?"
                        r".*?(?:, metrics on (?P<metrics>\S+))?$")


class RelayProcess:
    """``promptstamp-relay serve`` as a child process.

    Its settings (dotted keys, as :func:`relay_config` takes) become a YAML file in ``workdir``;
    both receivers and (``metrics=True``) the metrics listener bind port 0; ``args`` come last on
    the command line (so they win); ``env`` defaults to :func:`clean_env`; ``cmd`` replaces the
    ``promptstamp-relay`` command (a wrapper script). Stdout is read as it comes (``first_line``:
    where it listens; :meth:`read_line`: what it prints after), stderr goes to a file
    (:meth:`stderr`, in every failure message). Start-up is bounded by ``timeout``; a relay that
    does not come up is stopped and the error says why. :meth:`stop` (also on leaving a ``with``
    block) always ends the process: SIGTERM, then SIGKILL.
    """

    def __init__(self, workdir: Path, *args: str, settings: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None, cmd: Sequence[str] | None = None,
                 name: str = "relay", metrics: bool = True, timeout: float = 30.0) -> None:
        self.name = name
        self.settings = dict(settings or {})
        self.stderr_path = _unused(workdir / f"{name}.stderr")
        argv = [*(cmd or RELAY_CMD), "serve"]
        if settings is not None:
            self.config_path = _unused(workdir / f"{name}.yaml")
            self.config_path.write_text(yaml.safe_dump(nest(self.settings)), encoding="utf-8")
            argv += ["--config", str(self.config_path)]
        argv += ["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
        if metrics:
            argv += ["--metrics-listen", "127.0.0.1:0"]
        argv += args
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self._stderr, stdin=subprocess.DEVNULL,
                                     env=dict(env) if env is not None else clean_env(), text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._pump = threading.Thread(target=self._read_stdout, name=f"{name}-stdout", daemon=True)
        self._pump.start()
        self._client: OtlpClient | None = None
        self._stopped = False
        self.address = self.first_line = ""
        self.http_address: str | None = None
        self.metrics_address: str | None = None  # host:port of /metrics, /healthz, /readyz
        self.metrics_port: int | None = None
        try:
            listening = wait_until(self._listening_line, timeout, f"relay {name} to say where it listens")
            self.first_line = listening.string
            self.address, self.http_address = listening["grpc"], listening["http"]
            self.metrics_address = listening["metrics"]
            self.metrics_port = int(self.metrics_address.rpartition(":")[2]) if self.metrics_address else None
            wait_until(self._answers, timeout, f"relay {name} to answer on {self.metrics_address or self.address}")
        except (AssertionError, RuntimeError) as e:
            self.stop()
            raise RuntimeError(f"relay {name} did not start (exit {self.proc.returncode}): {e}\n"
                               f"--- stderr ---\n{self.stderr()}") from None

    # -- start-up -------------------------------------------------------------------------------
    def _read_stdout(self) -> None:
        stdout = self.proc.stdout
        assert stdout is not None
        for line in stdout:
            self._lines.put(line)
        self._lines.put(None)  # end of output

    def _listening_line(self) -> re.Match[str] | None:
        line = self.read_line(0.1)
        if line is None:
            raise RuntimeError("it ended before saying where it listens")
        return _LISTENING.search(line.strip()) if "listening on" in line else None

    def _answers(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError("it ended right after starting")
        try:
            if self.metrics_address:
                with urllib.request.urlopen(f"http://{self.metrics_address}/healthz", timeout=2) as r:
                    return bool(r.status == 200)
            host, _, port = self.address.rpartition(":")
            with socket.create_connection((host.strip("[]"), int(port)), timeout=2):
                return True
        except (OSError, urllib.error.URLError):
            return False

    # -- talking to it --------------------------------------------------------------------------
    def read_line(self, timeout: float) -> str | None:
        """The next line it printed on stdout: ``""`` when none came within ``timeout`` s, None
        once its output has ended."""
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            return ""
        if line is None:
            self._lines.put(None)  # and for every later call
        return line

    @property
    def client(self) -> OtlpClient:
        if self._client is None:
            self._client = OtlpClient(self.address)
        return self._client

    def send_traces(self, req: ExportTraceServiceRequest) -> None:
        self.client.traces(req, timeout=10)

    def send_logs(self, req: ExportLogsServiceRequest) -> None:
        self.client.logs(req, timeout=10)

    def metrics(self) -> dict[str, float]:
        """Every sample of one /metrics scrape: ``name{labels}`` as written -> value."""
        assert self.metrics_address, "started with metrics=False"
        with urllib.request.urlopen(f"http://{self.metrics_address}/metrics", timeout=5) as r:
            return metrics_text(r.read().decode())

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from /metrics (0 when absent)."""
        return self.metrics().get(f"{name}{{{labels}}}" if labels else name, 0.0)

    def wait_metric(self, name: str, ok: Callable[[float], bool], timeout: float) -> float:
        """The sample ``name`` (``name{labels}`` as written) once ``ok`` says yes."""
        last = [float("nan")]

        def good() -> bool:
            last[0] = self.metrics().get(name, float("nan"))
            return ok(last[0])

        wait_until(good, timeout, lambda: f"relay {self.name}: {name} (now {last[0]})", interval=0.1)
        return last[0]

    def spans(self) -> dict[bytes, dict[str, Any]]:
        """Every span its file exporter (settings ``exporter.file``) wrote so far: id -> attributes."""
        out = Path(self.settings["exporter.file"])
        if not out.exists():
            return {}
        return {bytes(sp.span_id): attrs_of(sp) for sp in line_spans(out.read_text(encoding="utf-8").splitlines())}

    def wait_spans(self, span_ids: set[bytes], timeout: float) -> dict[bytes, dict[str, Any]]:
        """:meth:`spans` once every one of ``span_ids`` is there."""
        got: dict[bytes, dict[str, Any]] = {}

        def arrived() -> bool:
            got.clear()
            got.update(self.spans())
            return span_ids <= got.keys()

        wait_until(arrived, timeout, lambda: f"relay {self.name} to export spans "
                   f"{sorted(s.hex() for s in span_ids - got.keys())}", interval=0.05)
        return got

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    # -- ending it ------------------------------------------------------------------------------
    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM (the relay drains) and its exit code, waiting at most ``timeout`` s."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL: no chance to flush or clean up (a crash)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, SIGKILL after ``timeout`` s; the exit code. Safe to call again."""
        if self._client is not None:
            self._client.close()
            self._client = None
        stop_process(self.proc, timeout=timeout)
        if not self._stopped:
            self._stopped = True
            self._pump.join(timeout=5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self._stderr.close()
        return self.proc.returncode

    def __enter__(self) -> RelayProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def nest(dotted: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (a config file's shape)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _unused(path: Path) -> Path:
    """``path``, or ``name-2.ext``, ``name-3.ext``... when it exists (several runs in one test)."""
    n = 1
    candidate = path
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate
