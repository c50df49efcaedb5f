from __future__ import annotations

from collections.abc import Iterator

import pytest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.relays import relay_config, running

__all__ = ["relay_config"]  # the live tests build their own relays with it


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-live", secret_key="sk-lf-live") as server:
        yield server


@pytest.fixture
def relay(langfuse: LangfuseServer) -> Iterator[RelayServer]:
    with running(relay_config(langfuse)) as server:
        yield server
