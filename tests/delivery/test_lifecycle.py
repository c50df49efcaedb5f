"""The relay's lifecycle: construction takes nothing, start() takes everything, stop() in any
state releases everything (the port, the persistent queue's lock)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from promptstamp_relay.journal import Journal, JournalError
from promptstamp_relay.server import RelayServer
from tests.relays import free_port, running

from .conftest import config
from .upstream import Upstream


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _lock_free(directory: Path) -> bool:
    try:
        Journal(directory).close()
    except JournalError:
        return False
    return True


def test_construction_binds_no_port_and_takes_no_lock_and_stop_before_start_is_fine(
        upstream: Upstream, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    qdir = tmp_path / "q"
    cfg = config(upstream.base_url, **{"listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}",
                                       "queue.directory": str(qdir)})
    relay = RelayServer(cfg)
    assert _bindable(port) and _bindable(metrics)
    qdir.mkdir()
    assert _lock_free(qdir)
    assert relay.stop() == 0
    assert relay.stop() == 0  # twice
    with pytest.raises(RuntimeError):
        relay.start()  # a stopped relay does not come back


def test_start_takes_the_port_and_the_lock_and_stop_releases_them_twice(upstream: Upstream, tmp_path: Path) -> None:
    port, metrics = free_port(), free_port()
    qdir = tmp_path / "q"
    with running(config(upstream.base_url, **{
            "listen": f"127.0.0.1:{port}", "metrics_listen": f"127.0.0.1:{metrics}", "queue.directory": str(qdir)}),
            timeout=2) as relay:
        assert not _bindable(port) and not _bindable(metrics)
        assert not _lock_free(qdir)
        assert relay.stop(timeout=2) == 0
    assert relay.stop() == 0
    assert _bindable(port) and _bindable(metrics) and _lock_free(qdir)


def test_a_start_that_fails_releases_what_it_took(upstream: Upstream, tmp_path: Path) -> None:
    qdir = tmp_path / "q"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        relay = RelayServer(config(upstream.base_url, **{"listen": f"127.0.0.1:{port}",
                                                         "queue.directory": str(qdir)}))
        with pytest.raises(OSError, match="cannot listen"):
            relay.start()
    assert _lock_free(qdir)
    assert relay.stop() == 0
