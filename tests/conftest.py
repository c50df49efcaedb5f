"""Fixtures several test folders share: a real ``redis-server`` (``redis/``, ``rollouts/``) and the
loopback Langfuse with a relay in front of it (``core/``, ``receive/``, ``e2e/``).

A folder's own ``conftest.py`` or a test module may define a fixture of the same name (a Langfuse
with other keys, say); the closer one wins. Everything binds 127.0.0.1 port 0 and is stopped at
teardown.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.redis_server import RedisServer, redis_binary_or_skip
from tests.relays import relay_config, running


@pytest.fixture
def redis_binary() -> str:
    return redis_binary_or_skip()


@pytest.fixture
def redis_server(redis_binary: str, tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(redis_binary, tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-live", secret_key="sk-lf-live") as server:
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    with running(relay_config(langfuse)) as server:
        yield server
