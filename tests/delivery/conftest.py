"""Fixtures for the delivery tests: a programmable upstream, the relay (in-process or as a real
``promptstamp-relay serve`` process), and a sender that is the OTel SDK's own OTLP/gRPC exporter.

Everything binds 127.0.0.1 port 0; every wait is bounded; every server and process is stopped
in a ``finally``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import promptstamp_contract as c
from promptstamp_relay.config import Config, load_config
from tests.waiting import wait_until as wait_until  # the one wait_until, for the tests here

from .upstream import Upstream

_SCRIPT = Path(sys.executable).parent / "promptstamp-relay"
#: The installed console script when it is there, else the same entry point through the module.
RELAY_CMD = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "promptstamp_relay.cli"]
GEN = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini",
       c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    with Upstream() as u:
        yield u


def base_settings(base_url: str, **overrides: Any) -> dict[str, Any]:
    """Dotted settings for a relay exporting to ``base_url``, with fast retries."""
    s: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "receivers.http.listen": "127.0.0.1:0",  # never the fixed default port in tests
        "hold.seconds": 0.2,
        "exporter.type": "langfuse",
        "exporter.langfuse.base_url": base_url,
        "exporter.langfuse.public_key": "pk-lf-test",
        "exporter.langfuse.secret_key": "sk-lf-test",
        "exporter.langfuse.timeout_seconds": 5,
        "retry.initial_interval_seconds": 0.05,
        "retry.max_interval_seconds": 0.2,
        "retry.max_elapsed_seconds": 60,
        "queue.shutdown_timeout_seconds": 5,
    }
    s.update(overrides)
    return s


def config(base_url: str, **overrides: Any) -> Config:
    return load_config(None, env={}, overrides=base_settings(base_url, **overrides))


# -- the sender: the OTel SDK's own exporter ----------------------------------------------------
class Sender:
    """Makes real SDK spans and sends them in batches with ``OTLPSpanExporter`` (one request each)."""

    def __init__(self, endpoint: str, *, timeout: float = 10.0, instance: str = "agent-1") -> None:
        resource = Resource.create({"service.name": "order-status", "service.instance.id": instance})
        self._memory = InMemorySpanExporter()
        self._tp = TracerProvider(resource=resource)
        self._tp.add_span_processor(SimpleSpanProcessor(self._memory))
        self._tracer = self._tp.get_tracer("delivery-test")
        self.exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True, timeout=timeout)

    def make(self, n: int, *, pad: int = 0, attributes: dict[str, Any] | None = None) -> list[ReadableSpan]:
        self._memory.clear()
        attrs = dict(attributes or {})
        if pad:
            attrs["pad"] = "x" * pad
        for i in range(n):
            with self._tracer.start_as_current_span(f"op-{i}", attributes=attrs):
                pass
        spans = list(self._memory.get_finished_spans())
        self._memory.clear()
        return spans

    def send(self, spans: Sequence[ReadableSpan]) -> bool:
        return self.exporter.export(spans) == SpanExportResult.SUCCESS

    def close(self) -> None:
        self.exporter.shutdown()
        self._tp.shutdown()


def ids(spans: Sequence[ReadableSpan]) -> set[bytes]:
    return {s.context.span_id.to_bytes(8, "big") for s in spans}


# -- the relay as a process ---------------------------------------------------------------------
class RelayProcess:
    """``promptstamp-relay serve`` in a child process; stderr goes to a file for assertions."""

    def __init__(self, tmp: Path, settings: dict[str, Any], *, queue_dir: Path | None = None,
                 name: str = "relay") -> None:
        self.config_path = tmp / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(_nest(settings)))
        self.stderr_path = tmp / f"{name}.stderr"
        # --check-upstream=off: these tests start relays while the upstream fails on purpose.
        args = [*RELAY_CMD, "serve", "--config", str(self.config_path), "--metrics-listen", "127.0.0.1:0",
                "--check-upstream=off"]
        if queue_dir is not None:
            args += ["--queue-dir", str(queue_dir)]
        self._stderr = open(self.stderr_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGFUSE_", "PROMPTSTAMP_"))}
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        line = self._read_line(20.0)
        m = re.search(r"listening on (\S+) .*metrics on (\S+)", line)
        if not m:
            self.kill()
            raise RuntimeError(f"relay did not start: {line!r}\n{self.stderr()}")
        self.address, self.metrics = m[1], m[2]

    def _read_line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            return ""
        return self.proc.stdout.readline().decode()

    def metric(self, name: str, labels: str = "") -> float:
        """One sample from /metrics (0 when absent)."""
        text = urllib.request.urlopen(f"http://{self.metrics}/metrics", timeout=5).read().decode()
        return scrape(text, name, labels)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no chance to flush or clean up
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._stderr.close()


def scrape(text: str, name: str, labels: str = "") -> float:
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == want:
            return float(value)
    return 0.0


def _nest(dotted: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out
