"""An operator's first hour with ``promptstamp-relay``, as processes: every misconfiguration is
one line and a distinct exit code before any traffic, the upstream check catches wrong keys and
unreachable upstreams, and the last lines tell the truth about what was delivered.

Every server binds 127.0.0.1 port 0 and is stopped by its test; every wait is bounded.
"""

from __future__ import annotations

import logging
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from promptstamp.testing import LangfuseServer
from promptstamp_relay import cli
from promptstamp_relay.config import load_config
from promptstamp_relay.export import LangfuseExporter, OtlpGrpcExporter
from promptstamp_relay.ops.startup import check_langfuse, check_otlp_grpc
from tests.relays import RelayProcess, clean_env, free_port
from tests.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
RECORDING = ROOT / "tests" / "replay" / "recordings" / "openllmetry.jsonl"
SECRET = "sk-lf-very-secret"


def _langfuse_env(server: LangfuseServer, secret: str | None = None, **extra: str) -> dict[str, str]:
    return clean_env(**{"LANGFUSE_BASE_URL": server.base_url, "LANGFUSE_PUBLIC_KEY": server.public_key,
                   "LANGFUSE_SECRET_KEY": secret or server.secret_key, **extra})


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "promptstamp_relay.cli", *args], capture_output=True,
                          text=True, env=env or clean_env(), timeout=timeout)


def _one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("promptstamp-relay:")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-operator", secret_key=SECRET) as server:
        yield server


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port some other process listens on (a local collector on 4317, say)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# -- exit codes, --help, --version ---------------------------------------------------------------
def test_help_lists_every_exit_code() -> None:
    proc = _run("--help")
    assert proc.returncode == 0
    codes = {v for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)}
    listed = {int(m) for m in re.findall(r"^  (\d+)  ", proc.stdout, re.M)}
    assert codes <= listed, (codes, listed)
    assert listed == set(range(9))
    assert cli.EXIT_CODES in _run("serve", "--help").stdout


def test_version() -> None:
    from importlib.metadata import version

    proc = _run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"promptstamp-relay {version('promptstamp')}"


# -- listeners: one line, a distinct exit code ---------------------------------------------------
def test_otlp_port_in_use(busy_port: int) -> None:
    proc = _run("serve", "--listen", f"127.0.0.1:{busy_port}", "--http-listen", "")
    assert proc.returncode == cli.EXIT_LISTEN_IN_USE == 5
    line = _one_line_error(proc)
    assert f"127.0.0.1:{busy_port}" in line and "already in use" in line and "--listen" in line


def test_metrics_port_in_use(busy_port: int) -> None:
    proc = _run("serve", "--listen", "127.0.0.1:0", "--http-listen", "", "--metrics-listen", f"127.0.0.1:{busy_port}")
    assert proc.returncode == cli.EXIT_METRICS_IN_USE == 6
    line = _one_line_error(proc)
    assert "metrics" in line and "already in use" in line and "--metrics-listen" in line


@pytest.mark.parametrize(("listen", "why"), [("no-such-host.invalid:4317", "does not resolve"),
                                             ("192.0.2.1:0", "is not an address of this machine")])
def test_listen_host_invalid(listen: str, why: str) -> None:
    proc = _run("serve", "--listen", listen, "--http-listen", "")
    assert proc.returncode == cli.EXIT_LISTEN_HOST == 7
    assert why in _one_line_error(proc)


def test_unsupported_store_flag_is_a_config_error() -> None:
    proc = _run("serve", "--listen", "127.0.0.1:0", "--http-listen", "", "--store", "postgres://u:pw@db/relay")
    assert proc.returncode == cli.EXIT_CONFIG
    line = _one_line_error(proc)
    assert "--store='postgres://…'" in line and "redis://" in line and "pw@" not in line


# -- the upstream check --------------------------------------------------------------------------
class _Answer(BaseHTTPRequestHandler):
    status = 403
    body = b'{"message": "Invalid API key. Are you using an organization key?"}'

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def forbidding() -> Iterator[str]:
    """Answers 403 as Langfuse does for an organisation key."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_langfuse_check_outcomes(langfuse: LangfuseServer, forbidding: str) -> None:
    ok = check_langfuse(langfuse.base_url + "/api/public/otel", langfuse.public_key, SECRET, timeout=5)
    assert ok.ok and "accepted the keys" in ok.message
    results = {
        "401": check_langfuse(langfuse.base_url, langfuse.public_key, "sk-lf-wrong", timeout=5),
        "403": check_langfuse(forbidding, "pk-lf-org", "sk-lf-org", timeout=5),
        "dns": check_langfuse("http://no-such-host.invalid:3000", "pk", "sk", timeout=5),
        "refused": check_langfuse(f"http://127.0.0.1:{free_port()}", "pk", "sk", timeout=5),
        "tls": check_langfuse(langfuse.base_url.replace("http://", "https://"), "pk", "sk", timeout=5),
    }
    assert not any(r.ok for r in results.values())
    assert "HTTP 401" in results["401"].message and "LANGFUSE_SECRET_KEY" in results["401"].message
    assert "HTTP 403" in results["403"].message and "organization key" in results["403"].message
    assert "DNS: cannot resolve host 'no-such-host.invalid'" in results["dns"].message
    assert "connection refused" in results["refused"].message
    assert "TLS handshake" in results["tls"].message and "plain http://" in results["tls"].message
    for r in results.values():
        assert "\n" not in r.message and SECRET not in r.message and "sk-lf-wrong" not in r.message


class _Grpc:
    def __init__(self) -> None:
        from concurrent import futures

        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def stop(self) -> None:
        self.server.stop(0).wait()


def test_otlp_grpc_check_outcomes(langfuse: LangfuseServer) -> None:
    upstream = _Grpc()
    try:
        assert check_otlp_grpc(f"http://127.0.0.1:{upstream.port}", timeout=5).ok
        tls = check_otlp_grpc(f"https://127.0.0.1:{upstream.port}", timeout=5)
        assert not tls.ok and "TLS handshake" in tls.message
    finally:
        upstream.stop()
    refused = check_otlp_grpc(f"127.0.0.1:{free_port()}", timeout=5)
    assert not refused.ok and "connection refused" in refused.message
    not_grpc = check_otlp_grpc(langfuse.base_url.removeprefix("http://"), timeout=1)  # an HTTP/1.1 server
    assert not not_grpc.ok and "no gRPC (HTTP/2) answer" in not_grpc.message


def test_check_config_check_upstream(langfuse: LangfuseServer) -> None:
    good = _run("check-config", "--check-upstream", env=_langfuse_env(langfuse))
    assert good.returncode == 0 and "upstream OK: Langfuse at" in good.stdout
    bad = _run("check-config", "--check-upstream", env=_langfuse_env(langfuse, secret="sk-lf-wrong"))
    assert bad.returncode == cli.EXIT_UPSTREAM == 8
    (line,) = [line for line in bad.stdout.splitlines() if line.startswith("upstream")]
    assert line.startswith("upstream FAILED:") and "HTTP 401" in line and "sk-lf-wrong" not in bad.stdout


def test_serve_refuses_to_start_when_langfuse_refuses_the_keys(langfuse: LangfuseServer) -> None:
    proc = _run("serve", "--listen", "127.0.0.1:0", "--http-listen", "", env=_langfuse_env(langfuse, secret="sk-lf-wrong"))
    assert proc.returncode == cli.EXIT_UPSTREAM
    assert "Traceback" not in proc.stderr and "sk-lf-wrong" not in proc.stderr
    assert re.search(r"upstream check failed: Langfuse at \S+ refused the keys \(HTTP 401", proc.stderr)
    assert "--check-upstream=warn starts anyway" in proc.stderr
    assert "listening on" not in proc.stdout


def test_serve_check_upstream_warn_starts_loudly(langfuse: LangfuseServer, tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, "--check-upstream=warn", env=_langfuse_env(langfuse, secret="sk-lf-wrong"))
    try:
        assert relay.address, relay.stderr()
        assert "WARNING" in relay.stderr() and "!!! upstream check FAILED, starting anyway" in relay.stderr()
        assert relay.terminate() == 0
    finally:
        relay.stop()


def test_serve_with_good_keys_checks_and_starts(langfuse: LangfuseServer, tmp_path: Path) -> None:
    relay = RelayProcess(tmp_path, env=_langfuse_env(langfuse, LANGFUSE_BASE_URL=langfuse.base_url + "/api/public/otel"))
    try:
        assert relay.address and "exporter langfuse" in relay.first_line, relay.stderr()
        err = relay.stderr()
        assert "upstream check: Langfuse at" in err and "accepted the keys" in err
        assert "ends in Langfuse's OTLP path" in err  # the normalised base URL is logged
        assert relay.terminate() == 0
    finally:
        relay.stop()


# -- messages that tell the truth ----------------------------------------------------------------
def test_shutdown_after_an_undelivered_item_does_not_claim_nothing_was_lost(
        langfuse: LangfuseServer, tmp_path: Path) -> None:
    """Wrong keys with the check off: the export gets 401 (permanent), the item is not delivered,
    and the last lines must say so."""
    relay = RelayProcess(tmp_path, "--check-upstream=off", env=_langfuse_env(langfuse, secret="sk-lf-wrong"))
    tp = TracerProvider(resource=Resource.create({"service.name": "operator-test"}))
    try:
        assert relay.address, relay.stderr()
        tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=relay.address, insecure=True)))
        with tp.get_tracer("t").start_as_current_span("work"):
            pass
        wait_until(lambda: "not delivered" in relay.stderr(), 30, "the permanent export failure")
        assert relay.terminate() == 0
        err = relay.stderr()
        assert "nothing lost" not in err
        assert "shutdown complete; during the run 1 item not delivered" in err
        assert "1 items" not in err.split("signal")[-1]  # the shutdown lines
        assert "sk-lf-wrong" not in err
    finally:
        tp.shutdown()
        relay.stop()


def _queue(failed: int = 0, rejected: int = 0, kept: int = 0) -> Any:
    return SimpleNamespace(stats=SimpleNamespace(failed_permanent_items=failed, rejected_items=rejected,
                                                 kept_items=kept))


def test_shutdown_report_wording(caplog: pytest.LogCaptureFixture) -> None:
    cfg = load_config(None, env={})
    caplog.set_level(logging.INFO, "promptstamp_relay")
    assert cli._shutdown_report(0, [_queue()], cfg) == cli.EXIT_OK
    assert caplog.messages[-1] == "shutdown complete, nothing lost"
    caplog.clear()
    assert cli._shutdown_report(1, [_queue(failed=2)], cfg) == cli.EXIT_LOST
    assert "shutdown: 1 item could not be delivered" in caplog.messages
    assert not any("nothing lost" in m for m in caplog.messages)
    assert any("2 items not delivered" in m for m in caplog.messages)
    caplog.clear()
    assert cli._shutdown_report(0, [_queue(rejected=1), _queue(kept=3)], cfg) == cli.EXIT_OK
    assert any("1 item rejected by the upstream" in m for m in caplog.messages)
    assert not any("nothing lost" in m for m in caplog.messages)


def test_connection_refused_is_a_warning_with_the_url_never_the_keys(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "promptstamp_relay")
    port = free_port()
    lf = LangfuseExporter(f"http://127.0.0.1:{port}/api/public/otel", "pk-lf-x", SECRET, timeout=5)
    try:
        assert lf.export(b"").outcome == "retry"
        assert lf.export(b"").outcome == "retry"  # within the interval: counted, not logged again
    finally:
        lf.shutdown()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert f"http://127.0.0.1:{port}/api/public/otel/v1/traces" in text and "ConnectionRefusedError" in text
    assert SECRET not in text and "pk-lf-x" not in text
    caplog.clear()
    g = OtlpGrpcExporter(f"http://127.0.0.1:{port}", timeout=5)
    try:
        assert g.export(b"").outcome == "retry"
    finally:
        g.shutdown()
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert f"http://127.0.0.1:{port}" in warning.getMessage() and "UNAVAILABLE" in warning.getMessage()


@pytest.mark.parametrize(("mode", "kept"), [(None, True), ("append", True), ("truncate", False)])
def test_record_mode(tmp_path: Path, mode: str | None, kept: bool) -> None:
    record = tmp_path / "record.jsonl"
    record.write_text('{"resourceSpans": []}\n')
    args = ["--record", str(record)] + (["--record-mode", mode] if mode else [])
    relay = RelayProcess(tmp_path, *args, env=clean_env())
    try:
        assert relay.address, relay.stderr()
        assert relay.terminate() == 0
    finally:
        relay.stop()
    assert (record.read_text() == '{"resourceSpans": []}\n') is kept
    if not kept:
        assert record.read_text() == ""


# -- the relay never imports the SDK runtime or langfuse ----------------------------------------
WRAPPER = """
import atexit, runpy, sys
out = sys.argv[1]
def dump():
    with open(out, "w") as f:
        f.write("\\n".join(sorted(sys.modules)))
atexit.register(dump)
sys.argv = ["promptstamp-relay", *sys.argv[2:]]
runpy.run_module("promptstamp_relay.cli", run_name="__main__", alter_sys=True)
"""

FORBIDDEN = re.compile(r"^(langfuse|promptstamp)(\..*)?$")  # the SDK runtime and Langfuse's client


def _imported(path: Path) -> list[str]:
    return [m for m in path.read_text().splitlines() if FORBIDDEN.match(m)]


def test_serve_and_replay_import_neither_langfuse_nor_the_sdk(langfuse: LangfuseServer, tmp_path: Path) -> None:
    wrapper = tmp_path / "wrapper.py"
    wrapper.write_text(WRAPPER)
    serve_modules, replay_modules = tmp_path / "serve.txt", tmp_path / "replay.txt"
    # serve with the Langfuse exporter, its upstream check and metrics: the widest import set
    relay = RelayProcess(tmp_path, env=_langfuse_env(langfuse), metrics=True,
                         cmd=[sys.executable, str(wrapper), str(serve_modules)])
    try:
        assert relay.address, relay.stderr()
        assert relay.terminate() == 0
    finally:
        relay.stop()
    proc = subprocess.run([sys.executable, str(wrapper), str(replay_modules), "replay", str(RECORDING),
                           "-o", str(tmp_path / "out.jsonl")], capture_output=True, text=True, env=clean_env(),
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    for path in (serve_modules, replay_modules):
        modules = path.read_text().splitlines()
        assert "promptstamp_relay.config" in modules and "promptstamp_contract" in modules
        assert _imported(path) == [], path.name
        assert "promptstamp._install" not in modules and "langfuse" not in modules
