"""Relays started by tests, in this process: free loopback ports for every listener (never the
fixed 4317/4318 defaults), fast retries, and a stop that always runs.

``relay_config(langfuse)`` exports to that loopback Langfuse-compatible server (the ``debug``
exporter without one); ``running(cfg)`` is a started :class:`RelayServer`, stopped on exit.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config, load_config
from promptstamp_relay.server import RelayServer

__all__ = ["relay_config", "running"]


def relay_config(langfuse: LangfuseServer | None = None, **overrides: object) -> Config:
    """Dotted ``overrides`` over: port 0 for gRPC and HTTP, no metrics listener, hold 0.5 s,
    retries 0.05-0.2 s for at most 5 s, exporting to ``langfuse``."""
    base: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "receivers.http.listen": "127.0.0.1:0",
        "metrics_listen": "",
        "hold.seconds": 0.5,
        "retry.initial_interval_seconds": 0.05,
        "retry.max_interval_seconds": 0.2,
        "retry.max_elapsed_seconds": 5,
    }
    if langfuse is not None:
        base.update({
            "exporter.type": "langfuse",
            "exporter.langfuse.base_url": langfuse.base_url,
            "exporter.langfuse.public_key": langfuse.public_key,
            "exporter.langfuse.secret_key": langfuse.secret_key,
        })
    else:
        base["exporter.type"] = "debug"
    base.update(overrides)
    return load_config(None, env={}, overrides=base)


@contextmanager
def running(cfg: Config, *, timeout: float = 5.0) -> Iterator[RelayServer]:
    """``cfg``'s relay, started; stopped (waiting up to ``timeout`` s to drain) however the block ends."""
    relay = RelayServer(cfg).start()
    try:
        yield relay
    finally:
        relay.stop(timeout=timeout)
