from __future__ import annotations

from collections.abc import Iterator

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config, load_config
from promptstamp_relay.server import RelayServer


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-live", secret_key="sk-lf-live") as server:
        yield server


def relay_config(langfuse: LangfuseServer, **overrides: object) -> Config:
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "receivers.http.listen": "127.0.0.1:0",  # never the fixed default port in tests
        "hold.seconds": 0.5,
        "exporter.type": "langfuse",
        "exporter.langfuse.base_url": langfuse.base_url,
        "exporter.langfuse.public_key": langfuse.public_key,
        "exporter.langfuse.secret_key": langfuse.secret_key,
        "retry.initial_interval_seconds": 0.05,
        "retry.max_interval_seconds": 0.2,
        "retry.max_elapsed_seconds": 5,
    }
    base.update(overrides)
    return load_config(None, env={}, overrides=base)


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    server = RelayServer(relay_config(langfuse)).start()
    try:
        yield server
    finally:
        server.stop(timeout=5)
