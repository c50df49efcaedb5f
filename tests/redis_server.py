"""A real ``redis-server`` (Debian package ``redis-server``) on a free loopback port, for the tests
that need one (the ``redis_binary`` and ``redis_server`` fixtures in ``tests/conftest.py``).

Every test that takes ``redis_server`` NEEDS the ``redis-server`` binary. Without it the test is
skipped with a message saying so on a developer machine, and FAILS when the ``CI`` environment
variable is set: in CI (``scripts/test.sh`` installs the package) a missing binary is a broken
setup, never a silent skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from tests.relays import free_port, stop_process
from tests.waiting import wait_until

REDIS_SERVER = "redis-server"
MISSING = (
    "needs the redis-server binary (Debian package redis-server: apt-get install -y redis-server; "
    "scripts/test.sh installs it)"
)


def redis_binary_or_skip() -> str:
    """The ``redis-server`` binary; skips the test without it (fails it when ``CI`` is set)."""
    found = shutil.which(REDIS_SERVER)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set and this test {MISSING}")
        pytest.skip(f"this test {MISSING}")
    return found


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
            self.port = port or free_port()
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
            stop_process(self.proc)
            self.proc = None
            if port is not None:  # a fixed port (restart): wait for it to free up
                time.sleep(0.5)
        raise RuntimeError(f"redis-server did not answer PING; see {self.workdir}")

    def _wait_ping(self, timeout: float) -> bool:
        """Whether it answers PING within ``timeout`` s (False at once if it exited)."""

        def answered() -> str | None:
            if self.proc is not None and self.proc.poll() is not None:
                return "exited"
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                                 socket_connect_timeout=1) as c:
                    return "up" if c.ping() else None
            except redis.RedisError:
                return None

        try:
            return wait_until(answered, timeout, f"redis-server on port {self.port} to answer PING",
                              interval=0.05) == "up"
        except AssertionError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Start again on the same port (empty: no persistence)."""
        self.start(self.port)
