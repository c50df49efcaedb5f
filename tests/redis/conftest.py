"""A real ``redis-server`` (Debian package ``redis-server``) per test, and relay processes around it.

Every test here that takes ``redis_server`` NEEDS the ``redis-server`` binary. Without it the test
is skipped with a message saying so on a developer machine, and FAILS when the ``CI`` environment
variable is set: in CI (``scripts/test.sh`` installs the package) a missing binary is a broken
setup, never a silent skip.

Everything is on loopback, every wait is bounded, and every process a fixture starts is stopped
(SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import redis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from tests.otlp_builders import attrs_of, line_spans

REDIS_SERVER = "redis-server"
MISSING = (
    "needs the redis-server binary (Debian package redis-server: apt-get install -y redis-server; "
    "scripts/test.sh installs it)"
)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop_process(proc: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class RedisServer:
    """One ``redis-server`` on a free loopback port, no persistence. Can be stopped and restarted
    on the same port (what a Redis restart looks like to the relays)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, socket_timeout=5)

    def start(self, port: int | None = None) -> RedisServer:
        for _attempt in range(5):
            self.port = port or _free_port()
            log = open(self.workdir / f"redis-{self.port}.log", "ab")  # noqa: SIM115 - closed below
            try:
                self.proc = subprocess.Popen(
                    [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--daemonize", "no", "--dir", str(self.workdir)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                )
            finally:
                log.close()
            if self._wait_ping(10.0):
                return self
            _stop_process(self.proc)
            self.proc = None
            if port is not None:  # a fixed port (restart): wait for it to free up
                time.sleep(0.5)
        raise RuntimeError(f"redis-server did not answer PING; see {self.workdir}")

    def _wait_ping(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                return False
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                                 socket_connect_timeout=1) as c:
                    if c.ping():
                        return True
            except redis.RedisError:
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            _stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Start again on the same port (empty: no persistence)."""
        self.start(self.port)


@pytest.fixture
def redis_binary() -> str:
    found = shutil.which(REDIS_SERVER)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test {MISSING}")
        pytest.skip(f"this test {MISSING}")
    return found


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_factory(redis_binary: str, tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """A ``RedisServer`` not yet started (tests that start Redis late)."""
    made: list[RedisServer] = []

    def make() -> RedisServer:
        s = RedisServer(redis_binary, tmp_path)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.stop()


# -- relay processes -----------------------------------------------------------------------------
class RelayProcess:
    """``promptstamp-relay serve`` in a subprocess, exporting to an OTLP/JSON file."""

    def __init__(self, name: str, workdir: Path, store_url: str | None, *, how: str = "flag",
                 hold_seconds: float = 1.0) -> None:
        self.name = name
        self.out = workdir / f"{name}.out.jsonl"
        self.err = workdir / f"{name}.stderr"
        cfg = workdir / f"{name}.yaml"
        lines = [f"hold: {{seconds: {hold_seconds}}}",
                 f"exporter: {{type: file, file: '{self.out}'}}",
                 "queue: {shutdown_timeout_seconds: 5}",
                 "receivers: {http: {listen: '127.0.0.1:0'}}"]  # several relays on one host
        args = [sys.executable, "-m", "promptstamp_relay.cli", "serve", "--config", str(cfg),
                "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PROMPTSTAMP_", "LANGFUSE_"))}
        if store_url is not None:
            if how == "flag":
                args += ["--store", store_url]
            elif how == "env":
                env["PROMPTSTAMP_STORE"] = store_url
            else:  # the config file
                lines.append(f"store: {{backend: redis, url: '{store_url}'}}")
        cfg.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._err = open(self.err, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, env=env, text=True)
        self.address, self.metrics_port = self._wait_listening(30.0)
        self._channel = grpc.insecure_channel(self.address)
        self._traces = self._channel.unary_unary(
            "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
            request_serializer=ExportTraceServiceRequest.SerializeToString,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )
        self._logs = self._channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString,
        )

    def _wait_listening(self, timeout: float) -> tuple[str, int]:
        lines: queue.Queue[str] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None

        def pump() -> None:
            for line in stdout:
                lines.put(line)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            m = re.search(r"listening on (\S+) .*metrics on \S+?:(\d+)", line)
            if m:
                return m.group(1), int(m.group(2))
        self.stop()
        raise RuntimeError(f"relay {self.name} did not start: {self.err.read_text(errors='replace')}")

    def send_logs(self, req: ExportLogsServiceRequest) -> None:
        self._logs(req, timeout=10)

    def send_traces(self, req: ExportTraceServiceRequest) -> None:
        self._traces(req, timeout=10)

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            m = re.match(r"^(promptstamp_[a-z_]+)(\{[^}]*\})? (\S+)$", line)
            if m:
                out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
        return out

    def wait_metric(self, name: str, ok: Callable[[float], bool], timeout: float) -> float:
        deadline = time.monotonic() + timeout
        value = float("nan")
        while time.monotonic() < deadline:
            value = self.metrics().get(name, float("nan"))
            if ok(value):
                return value
            time.sleep(0.1)
        raise AssertionError(f"relay {self.name}: {name} = {value} after {timeout}s")

    def spans(self) -> dict[bytes, dict[str, Any]]:
        """Every span exported so far: span id -> attributes."""
        if not self.out.exists():
            return {}
        return {bytes(sp.span_id): attrs_of(sp) for sp in line_spans(self.out.read_text(encoding="utf-8").splitlines())}

    def wait_spans(self, span_ids: set[bytes], timeout: float) -> dict[bytes, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        got: dict[bytes, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            got = self.spans()
            if span_ids <= got.keys():
                return got
            time.sleep(0.05)
        missing = sorted(s.hex() for s in span_ids - got.keys())
        raise AssertionError(f"relay {self.name}: spans {missing} not exported within {timeout}s")

    def stop(self) -> int | None:
        """SIGTERM (the relay drains), SIGKILL after 15 s; the exit code. Idempotent."""
        if hasattr(self, "_channel"):
            self._channel.close()
        _stop_process(self.proc, timeout=15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._err.close()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.err.read_text(errors="replace")


RedisProcessFactory = Callable[..., RelayProcess]


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[RedisProcessFactory]:
    """Start relay processes; all of them are stopped at teardown."""
    started: list[RelayProcess] = []

    def start(name: str, store_url: str | None, **kw: Any) -> RelayProcess:
        r = RelayProcess(name, tmp_path, store_url, **kw)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop()
