"""Where the timeline lives: across a restart in persistent mode (the queue directory's SQLite
database), and shared by two relays through a real redis-server, where their counts and
sketches add up."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from promptstamp_relay.cli import main
from promptstamp_relay.rollouts._model import duration_bucket, token_bucket
from tests.otlp_builders import S
from tests.redis_server import RedisServer
from tests.waiting import wait_until

from .conftest import PROMPT, Relay

RelayFactory = Callable[..., Relay]


def timeline(relay: Relay) -> dict[str, Any]:
    status, body = relay.get(f"/api/v1/prompts/{PROMPT}/timeline")
    assert status == 200, body
    prod: dict[str, Any] = body["labels"]["production"]
    return prod


def test_the_timeline_survives_a_restart_in_persistent_mode(relays: RelayFactory, tmp_path: Path,
                                                            capsys: Any) -> None:
    queue = tmp_path / "queue"
    t0 = time.time_ns() - 600 * S
    first = relays("first", **{"queue.directory": str(queue)})
    for i in range(3):
        first.generation("pod-a", 13, at=t0 + i * S, duration_ms=800, error=(i == 0))
    first.generation("pod-b", 14, at=t0 + 10 * S, duration_ms=1200)
    before = timeline(first)
    first.stop()  # stop() flushes: nothing waits for the flusher's next round

    # Read straight from the directory, as an operator would with the relay down.
    assert main(["labels", "show", PROMPT, "--relay", str(queue), "--json"]) == 0
    out = capsys.readouterr().out
    assert '"current": 14' in out and '"generations": 3' in out

    second = relays("second", **{"queue.directory": str(queue)})
    assert timeline(second) == before
    second.generation("pod-a", 13, at=t0 + 20 * S)
    after = timeline(second)
    v13 = next(v for v in after["versions"] if v["version"] == 13)
    assert (v13["fetches"], v13["generations"], v13["errors"]) == (4, 4, 1)
    assert after["current"] == 13


def sketches(relay: Relay) -> dict[int, Any]:
    status, body = relay.get(f"/api/v1/prompts/{PROMPT}/timeline?label=production&sketches=1")
    assert status == 200, body
    return {v["version"]: v["sketches"] for v in body["labels"]["production"]["versions"]}


def test_the_sketches_survive_a_restart_in_persistent_mode(relays: RelayFactory, tmp_path: Path) -> None:
    queue = tmp_path / "queue"
    t0 = time.time_ns() - 600 * S
    first = relays("first", **{"queue.directory": str(queue)})
    first.generation("pod-a", 13, at=t0, duration_ms=800, tokens=(100, 20))
    first.generation("pod-a", 13, at=t0 + S, duration_ms=1200, tokens=(3, 0))
    before = sketches(first)
    assert before[13]["output_tokens"] == {"-1": 1, str(token_bucket(20)): 1}
    first.stop()

    second = relays("second", **{"queue.directory": str(queue)})
    assert sketches(second) == before
    second.generation("pod-a", 13, at=t0 + 2 * S, duration_ms=800, tokens=(100, 20))
    after = sketches(second)[13]
    assert after["duration_ms"][str(duration_bucket(800 * 10**6))] == 2
    assert after["input_tokens"] == {str(token_bucket(3)): 1, str(token_bucket(100)): 2}


def test_the_flusher_writes_while_the_relay_runs(relays: RelayFactory, tmp_path: Path, capsys: Any) -> None:
    queue = tmp_path / "queue"
    relay = relays(**{"queue.directory": str(queue), "rollouts.flush_seconds": 0.1})
    relay.generation("pod-a", 3)
    # The CLI beside a running relay (WAL: readers welcome), once the flusher has written.
    wait_until(lambda: main(["labels", "show", PROMPT, "--relay", str(queue)]) == 0,
               what="the flusher's first write")
    out = capsys.readouterr().out
    assert "current v3" in out and "pod-a (order-agent)  v3" in out


def test_two_relays_share_the_timeline_through_redis(relays: RelayFactory, redis_server: RedisServer,
                                                     capsys: Any) -> None:
    shared = {"store.backend": "redis", "store.url": redis_server.url, "rollouts.flush_seconds": 0.1}
    one, two = relays("one", **shared), relays("two", **shared)
    t0 = time.time_ns() - 600 * S
    for i in range(5):  # the same pod's requests land on either relay (a load balancer)
        one.generation("pod-a", 13, at=t0 + i * S, duration_ms=800)
        two.generation("pod-a", 13, at=t0 + i * S + S // 2, duration_ms=900, error=(i == 0), tokens=(9, 0))
    two.generation("pod-b", 14, at=t0 + 100 * S)
    one.generation("pod-a", 14, at=t0 + 110 * S)
    two.generation("pod-c", 13, at=t0 + 120 * S)  # still on 13 after the move: lagging

    def settled(relay: Relay) -> dict[str, Any]:
        """Both relays' deltas in (each reads its own pending delta plus what Redis has)."""
        def all_in() -> dict[str, Any] | None:
            got = timeline(relay)
            return got if sum(v["generations"] for v in got["versions"]) == 13 else None

        return wait_until(all_in, what="both relays' generations in the shared timeline")

    a, b = settled(one), settled(two)
    assert a == b  # every relay reads the sum
    v13, v14 = a["versions"]
    assert (v13["version"], v13["fetches"], v13["generations"], v13["errors"]) == (13, 11, 11, 1)
    assert (v14["version"], v14["fetches"], v14["generations"]) == (14, 2, 2)
    assert [i["instance"] for i in a["instances"]] == ["pod-b", "pod-a", "pod-c"]
    assert a["lagging"] == [{"instance": "pod-c", "service": "order-agent", "version": 13,
                             "behind_seconds": 20.0}]
    assert a["current"] == 13

    # The sketches add up like the counts: the same sums on both relays.
    sa, sb = sketches(one), sketches(two)
    assert sa == sb
    d800, d900 = str(duration_bucket(800 * 10**6)), str(duration_bucket(900 * 10**6))
    assert sa[13]["duration_ms"] == {d800: 5, d900: 5, str(duration_bucket(500 * 10**6)): 1}
    assert sa[13]["input_tokens"] == {str(token_bucket(100)): 6, str(token_bucket(9)): 5}
    assert sa[13]["output_tokens"] == {str(token_bucket(20)): 6, "-1": 5}
    assert sum(sa[14]["duration_ms"].values()) == sum(sa[14]["output_tokens"].values()) == 2

    # The command line reads the same from Redis directly.
    one.stop()
    two.stop()
    assert main(["labels", "compare", PROMPT, "--label", "production", "--relay", redis_server.url]) == 0
    out = capsys.readouterr().out
    assert "v13 -> v14: error rate -9.1 pp" in out
