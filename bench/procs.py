"""Starting, watching and always stopping the benchmark's processes (all on loopback)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable
_LIVE: list[subprocess.Popen[str]] = []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def closed_port() -> int:
    """A loopback port nothing listens on (connection refused): an upstream that is down."""
    return free_port()


def rss_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid`` in KiB."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    address: str = ""
    ready_line: str = ""  # the whole stdout line ``ready`` matched (other addresses are in it)
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    log_path: Path | None = None
    metrics: str = ""  # host:port of a /metrics endpoint, when there is one

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 15) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


def _pump(stream: IO[str], q: queue.Queue[str]) -> None:
    for line in stream:
        q.put(line.rstrip("\n"))


def start(name: str, argv: list[str], *, log_dir: Path, env: dict[str, str] | None = None,
          ready: str | None = None, ready_port: int | None = None, timeout: float = 20.0,
          stdin: bool = False) -> Proc:
    """Start ``argv``; wait for a stdout line containing ``ready`` (its last word is host:port)
    or for ``ready_port`` to accept TCP connections. stderr goes to ``log_dir/name.log``."""
    log_path = log_dir / f"{name}.log"
    errf = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 - owned by the child
    popen = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=errf, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
        text=True, bufsize=1, env=env, cwd=ROOT, start_new_session=True,
    )
    errf.close()
    _LIVE.append(popen)
    proc = Proc(name, popen, log_path=log_path)
    assert popen.stdout is not None
    threading.Thread(target=_pump, args=(popen.stdout, proc.lines), daemon=True).start()
    deadline = time.monotonic() + timeout
    try:
        while ready is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not proc.alive():
                raise RuntimeError(f"{name} did not start: {proc.log_tail()}")
            try:
                line = proc.lines.get(timeout=min(0.2, left))
            except queue.Empty:
                continue
            if ready in line:
                proc.ready_line = line
                for word in line.split():
                    if word.count(":") == 1 and word.rpartition(":")[2].isdigit():
                        proc.address = word
                        break
                break
        while ready_port is not None:
            if time.monotonic() > deadline or not proc.alive():
                raise RuntimeError(f"{name} did not start: {proc.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", ready_port), timeout=0.2):
                    proc.address = f"127.0.0.1:{ready_port}"
                    break
            except OSError:
                time.sleep(0.05)
    except BaseException:
        stop(proc)
        raise
    return proc


def stop(proc: Proc | None, timeout: float = 15.0) -> int | None:
    """SIGTERM, wait, then SIGKILL. Returns the exit code."""
    if proc is None:
        return None
    p = proc.popen
    if p.poll() is None:
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        except ProcessLookupError:
            pass
    if p in _LIVE:
        _LIVE.remove(p)
    for s in (p.stdin, p.stdout):
        if s is not None:
            with contextlib.suppress(OSError):
                s.close()
    return p.returncode


def stop_all() -> None:
    for p in list(_LIVE):
        if p.poll() is None:
            try:
                p.kill()
                p.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        _LIVE.remove(p)


class Loadgen:
    """The load generator process, one JSON command at a time."""

    def __init__(self, log_dir: Path) -> None:
        self.proc = start("loadgen", [PY, "-m", "bench.loadgen"], log_dir=log_dir, stdin=True,
                          env=env_without_proxies())

    def call(self, cmd: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        stdin = self.proc.popen.stdin
        assert stdin is not None
        stdin.write(json.dumps(cmd) + "\n")
        stdin.flush()
        try:
            line = self.proc.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"loadgen did not answer {cmd['cmd']} in {timeout}s: "
                               f"{self.proc.log_tail()}") from None
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise RuntimeError(f"loadgen {cmd['cmd']} failed: {reply.get('error')}\n{reply.get('trace', '')}")
        return reply

    def close(self) -> None:
        try:
            stdin = self.proc.popen.stdin
            if stdin is not None and self.proc.alive():
                stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                stdin.flush()
                self.proc.popen.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop(self.proc)


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class SinkClient:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def stats(self) -> dict[str, Any]:
        with _OPENER.open(self.base + "/stats", timeout=30) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def reset(self) -> None:
        req = urllib.request.Request(self.base + "/reset", data=b"", method="POST")
        with _OPENER.open(req, timeout=10) as r:
            r.read()

    def wait_spans(self, expected: int, timeout: float, settle: float = 0.5) -> dict[str, Any]:
        """Poll until ``expected`` spans arrived, or the count stops moving for ``settle`` s
        after ``timeout``. Returns the last stats."""
        deadline = time.monotonic() + timeout
        last = -1
        last_change = time.monotonic()
        while True:
            st = self.stats()
            if st["spans"] >= expected:
                return st
            if st["spans"] != last:
                last, last_change = st["spans"], time.monotonic()
            if time.monotonic() > deadline and time.monotonic() - last_change > settle:
                return st
            if time.monotonic() > deadline + 10:
                return st
            time.sleep(0.1)


def env_without_proxies() -> dict[str, str]:
    env = dict(os.environ)
    for k in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env["NO_PROXY"] = "127.0.0.1,localhost"
    return env
