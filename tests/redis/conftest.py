"""Relay processes around a real ``redis-server`` (the ``redis_binary`` and ``redis_server``
fixtures are in ``tests/conftest.py``: the rollouts tests use them too; see
:mod:`tests.redis_server` for what happens without the binary).

Everything is on loopback, every wait is bounded, and every process a fixture starts is stopped
(SIGTERM, then SIGKILL) at teardown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.redis_server import RedisServer
from tests.relays import RelayProcess, clean_env


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
def redis_relay(name: str, workdir: Path, store_url: str | None, *, how: str = "flag",
                hold_seconds: float = 1.0) -> RelayProcess:
    """``promptstamp-relay serve`` exporting to an OTLP/JSON file, its store ``store_url`` given
    ``how``: the ``--store`` flag, ``PROMPTSTAMP_STORE`` or the config file."""
    settings: dict[str, Any] = {
        "hold.seconds": hold_seconds,
        "exporter.type": "file", "exporter.file": str(workdir / f"{name}.out.jsonl"),
        "queue.shutdown_timeout_seconds": 5,
    }
    args: list[str] = []
    env = clean_env()
    if store_url is not None:
        if how == "flag":
            args += ["--store", store_url]
        elif how == "env":
            env["PROMPTSTAMP_STORE"] = store_url
        else:  # the config file
            settings.update({"store.backend": "redis", "store.url": store_url})
    return RelayProcess(workdir, *args, settings=settings, env=env, name=name)


RedisProcessFactory = Callable[..., RelayProcess]


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[RedisProcessFactory]:
    """Start relay processes; all of them are stopped at teardown."""
    started: list[RelayProcess] = []

    def start(name: str, store_url: str | None, **kw: Any) -> RelayProcess:
        r = redis_relay(name, tmp_path, store_url, **kw)
        started.append(r)
        return r

    try:
        yield start
    finally:
        for r in started:
            r.stop()
