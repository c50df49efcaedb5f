"""docs/rollouts.md's worked example, run as a user would: ``promptstamp-relay dev`` with
examples/rollout/dev.yaml, examples/rollout/app.py with the environment it printed, and the
``labels rollout`` command exactly as the page shows it (read from the page, so the two cannot
drift apart). Each is a process of its own, on loopback and free ports."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def documented_command() -> list[str]:
    """The ``labels rollout`` command of the worked example, continuation lines joined."""
    text = (ROOT / "docs" / "rollouts.md").read_text(encoding="utf-8")
    example = text[text.index("### A worked example"):]
    match = re.search(r"^\$ (promptstamp-relay labels rollout .*?\\\n.*?)$", example, re.M)
    assert match, "the worked example's rollout command"
    return shlex.split(match.group(1).replace("\\\n", " "))


def exports(dev: subprocess.Popen[str]) -> dict[str, str]:
    """The ``export`` lines ``dev`` prints, up to the admin listener's."""
    assert dev.stdout is not None
    env: dict[str, str] = {}
    deadline = time.monotonic() + 60
    while "PROMPTSTAMP_METRICS_LISTEN" not in env and time.monotonic() < deadline:
        line = dev.stdout.readline()
        if not line:
            raise AssertionError(f"dev ended (exit {dev.poll()}) before printing its environment")
        if line.startswith("export "):
            key, _, value = line[len("export "):].strip().partition("=")
            env[key] = value
    assert "PROMPTSTAMP_METRICS_LISTEN" in env, env
    return env


@pytest.mark.timeout(180)
def test_the_worked_example_catches_the_failing_version_at_the_first_step() -> None:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "LANGFUSE_", "OPENAI_",
                                                                     "PROMPTSTAMP_"))}
    dev = subprocess.Popen([str(BIN / "promptstamp-relay"), "dev", "--config", "examples/rollout/dev.yaml"],
                           cwd=ROOT, env=clean, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    app = None
    try:
        env = {**clean, **exports(dev), "PATH": f"{BIN}{os.pathsep}{clean.get('PATH', '')}"}
        app = subprocess.Popen([sys.executable, "examples/rollout/app.py", "--seconds", "120", "--cache-ttl", "1"],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        command = documented_command()
        rollout = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        time.sleep(6)  # the app's cache TTL (1 s), then two of its 2 s reports
    finally:
        if app is not None:
            app.send_signal(signal.SIGTERM)
            app_out = app.communicate(timeout=30)[0]
        dev.send_signal(signal.SIGINT)
        dev.communicate(timeout=30)
    assert rollout.returncode == 17, rollout.stdout + rollout.stderr
    out = rollout.stdout
    assert "BREACHED at step 1: v2 is back to 0 %, production stays on v1" in out, out
    assert re.search(r"error_rate:\+2pp: BREACHED: v1 0 %, v2 100 %; skewness-corrected score test", out), out
    # The app stopped getting version 2: its last two reports show the same count for it.
    reports = [line for line in app_out.splitlines() if line.startswith("v1:")]
    v2 = [int(m.group(1)) for line in reports[-2:] if (m := re.search(r"v2: (\d+) requests", line))]
    assert len(v2) == 2 and v2[0] == v2[1] > 0, reports[-4:]
