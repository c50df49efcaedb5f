"""Peers a platform team could pick instead of promptstamp-relay: Rotel, from PyPI.

``rotel`` (``pip install --pre rotel``, a Rust OTLP collector shipped as a wheel with the
``rotel-agent`` binary inside; the binary links the system ``libpython3.11`` for Python
processors) and ``rotel-sdk`` (type stubs for those processors). Two configurations:

* ``rotel``: OTLP/gRPC receiver → OTLP/HTTP exporter (gzip, Rotel's default) to the sink at
  Langfuse's path with Langfuse's headers; logs go to Rotel's ``blackhole`` exporter, as the
  relay drops the fetch log after reading it. Rotel's own batching left at its defaults
  (8192 spans / 200 ms): that is what a user gets.
* ``rotel-py``: the same, with ``bench/rotel_processor.py`` as trace *and* logs processor doing
  promptstamp's stamping in Python inside Rotel.

Run in the foreground (no ``--daemon``), so the process we start is the one we measure and stop.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path

import promptstamp_contract as c

__all__ = ["PROCESSOR", "check_processor_names", "rotel_binary", "rotel_command", "rotel_version"]

PROCESSOR = Path(__file__).resolve().parent / "rotel_processor.py"


def rotel_binary() -> Path | None:
    """The ``rotel-agent`` binary of the installed ``rotel`` wheel, or None."""
    try:
        import rotel  # the pyrotel package
    except ImportError:
        found = shutil.which("rotel-agent") or shutil.which("rotel")
        return Path(found) if found else None
    path = Path(rotel.__file__).parent / "rotel-agent"
    return path if path.exists() else None


def rotel_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    if out.returncode != 0:
        raise RuntimeError(f"{binary} --version failed ({out.returncode}): {out.stderr.strip()[:500]}")
    return out.stdout.strip()


def check_processor_names() -> None:
    """The Rotel processor spells the contract's names out; they must match the contract."""
    import ast

    tree = ast.parse(PROCESSOR.read_text(encoding="utf-8"))
    consts: dict[str, str] = {}
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
            consts[node.targets[0].id] = node.value.value
    for name in ("PROMPT_KEY", "PROMPT_LABEL", "PROMPT_VERSION", "FETCH_EVENT_NAME", "EVENT_NAME_ATTRIBUTE",
                 "FETCH_SOURCE", "SERVICE_NAME", "SERVICE_INSTANCE_ID", "LF_PROMPT_NAME",
                 "LF_PROMPT_VERSION", "LF_OBSERVATION_TYPE", "LF_META_PROMPT_NAME", "LF_META_PROMPT_LABEL",
                 "LF_META_RESOLUTION", "LF_META_SOURCE"):
        if consts.get(name) != getattr(c, name):
            raise RuntimeError(f"bench/rotel_processor.py: {name} = {consts.get(name)!r}, "
                               f"contract says {getattr(c, name)!r}")


def rotel_command(
    binary: Path, grpc_port: int, http_port: int, sink_port: int, *, python_processor: bool,
    public_key: str, secret_key: str,
) -> tuple[list[str], dict[str, str]]:
    """argv and environment for a foreground Rotel forwarding to the sink as to Langfuse."""
    auth = base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()
    if "=" in auth:
        # Rotel splits custom headers on '=', so base64 padding would break the header.
        raise ValueError("choose keys whose base64 needs no '=' padding")
    argv = [
        str(binary), "start",
        "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint", f"127.0.0.1:{http_port}",
        "--otlp-grpc-max-recv-msg-size-mib", "64",
        "--exporters", "langfuse:otlp,drop:blackhole",
        "--exporters-traces", "langfuse",
        "--exporters-logs", "drop",
        "--exporters-metrics", "drop",
    ]
    if python_processor:
        argv += ["--otlp-with-trace-processor", str(PROCESSOR),
                 "--otlp-with-logs-processor", str(PROCESSOR)]
    env = dict(os.environ)
    env.update({
        "ROTEL_EXPORTER_LANGFUSE_ENDPOINT": f"http://127.0.0.1:{sink_port}/api/public/otel",
        "ROTEL_EXPORTER_LANGFUSE_PROTOCOL": "http",
        "ROTEL_EXPORTER_LANGFUSE_CUSTOM_HEADERS":
            f"Authorization=Basic {auth},x-langfuse-ingestion-version=4",
        "RUST_LOG": "warn",
    })
    return argv, env
