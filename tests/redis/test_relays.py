"""Several ``promptstamp-relay serve`` processes sharing one real Redis, end to end over OTLP/gRPC.

What the Collector's loadbalancing exporter does in production (a trace and its fetch log on one
relay) is played here by sending each trace to one relay by hand; what crosses traces goes
through Redis. Needs the ``redis-server`` binary (see conftest: skipped locally without it,
FAILS in CI).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import promptstamp_contract as c
from tests.otlp_builders import S, fetch_record, gen_attrs, logs, sid, span, traces
from tests.redis.conftest import RedisProcessFactory
from tests.redis_server import RedisServer
from tests.relays import RelayProcess, free_port

pytestmark = [pytest.mark.redis, pytest.mark.slow]

AGENT1 = {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-1"}
AGENT2 = {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-2"}
AGENT3 = {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-3"}


def tier_version(a: dict[str, Any]) -> tuple[str, int | None]:
    return a[c.LF_META_RESOLUTION], a.get(c.LF_PROMPT_VERSION)


def test_a_fetch_log_on_relay_a_resolves_spans_on_relays_b_and_c(
    redis_server: RedisServer, relays: RedisProcessFactory
) -> None:
    """The store selected three ways (flag, env, config file); instance and latest tiers across
    relays; the trace tier stays local."""
    a = relays("a", redis_server.url, how="flag")
    b = relays("b", redis_server.url, how="env")
    cc = relays("c", redis_server.url, how="config")
    now = time.time_ns()
    t0 = now - 10 * S
    a.send_logs(logs([fetch_record(version=5, time=t0, trace=1)], resource=AGENT1))
    a.send_traces(traces([span(trace=1, span_id=1, start=t0 + S, attrs=gen_attrs())], resource=AGENT1))
    # Other traces, other relays, sent at once: held (no trace record), then resolved through Redis.
    b.send_traces(traces([span(trace=2, span_id=2, start=t0 + S, attrs=gen_attrs())], resource=AGENT1))
    cc.send_traces(traces([span(trace=3, span_id=3, start=t0 + S, attrs=gen_attrs())], resource=AGENT2))
    # Before the fetch: nothing to resolve with, on any tier.
    cc.send_traces(traces([span(trace=4, span_id=4, start=t0 - S, attrs=gen_attrs())], resource=AGENT2))
    # Trace 1 split across relays (what a resolver change does to a few traces): still exact.
    cc.send_traces(traces([span(trace=1, span_id=5, start=t0 + S, attrs=gen_attrs())], resource=AGENT2))
    assert tier_version(a.wait_spans({sid(1)}, 10)[sid(1)]) == ("trace", 5)
    assert tier_version(b.wait_spans({sid(2)}, 10)[sid(2)]) == ("instance", 5)
    got_c = cc.wait_spans({sid(3), sid(4), sid(5)}, 10)
    assert tier_version(got_c[sid(3)]) == ("latest", 5)
    assert tier_version(got_c[sid(4)]) == ("unresolved", None)
    assert tier_version(got_c[sid(5)]) == ("trace", 5)
    ma, mb = a.metrics(), b.metrics()
    assert ma["promptstamp_store_connected"] == 1 and ma["promptstamp_store_degraded"] == 0
    assert ma["promptstamp_store_flushed_total"] == 1
    assert mb["promptstamp_store_remote_records_total"] == 1
    assert mb['promptstamp_spans_stamped_total{tier="instance"}'] == 1


def test_label_moved_mid_stream_across_relays(
    redis_server: RedisServer, relays: RedisProcessFactory
) -> None:
    """The label moves from v1 to v2 while two relays take fetch logs (arriving in the reverse of
    fetch-time order); a third relay gives every span the latest fetch not after its start."""
    a = relays("a", redis_server.url)
    b = relays("b", redis_server.url)
    cc = relays("c", redis_server.url)
    now = time.time_ns()
    base = now - 120 * S
    # Label moved at base + 60 s; agent-2's fetches after the move reach relay B first.
    b.send_logs(logs([fetch_record(version=2, time=base + k * 10 * S, trace=None) for k in range(6, 10)],
                     resource=AGENT2))
    a.send_logs(logs([fetch_record(version=1, time=base + k * 10 * S, trace=None) for k in range(6)],
                     resource=AGENT1))
    probes = {  # span id -> (start, resource, expected)
        10: (base + 25 * S, AGENT3, ("latest", 1)),
        11: (base + 59 * S, AGENT3, ("latest", 1)),
        12: (base + 60 * S, AGENT3, ("latest", 2)),  # a fetch exactly at the start counts
        13: (base + 95 * S, AGENT3, ("latest", 2)),
        14: (base + 95 * S, AGENT1, ("instance", 1)),  # agent-1 never fetched v2
        15: (base + 65 * S, AGENT2, ("instance", 2)),
        16: (base + 55 * S, AGENT2, ("latest", 1)),  # agent-2's first fetch came later
    }
    for n, (start, resource, _) in probes.items():
        cc.send_traces(traces([span(trace=100 + n, span_id=n, start=start, attrs=gen_attrs())],
                              resource=resource))
    got = cc.wait_spans({sid(n) for n in probes}, 10)
    assert {n: tier_version(got[sid(n)]) for n in probes} == {n: p[2] for n, p in probes.items()}


def test_concurrent_writers_on_three_relays(
    redis_server: RedisServer, relays: RedisProcessFactory
) -> None:
    """Three relays take fetch logs for the same (key, label) at once, each from its own
    instance; spans on every relay then resolve to the latest fetch not after their start."""
    rs = [relays(name, redis_server.url) for name in ("a", "b", "c")]
    now = time.time_ns()
    base = now - 300 * S
    # writer w fetches at base + (3k + w) s with version 3k + w + 1: one global, interleaved order
    barrier = threading.Barrier(3)

    def write(w: int) -> None:
        barrier.wait()
        for k in range(0, 60, 6):
            rs[w].send_logs(logs([fetch_record(version=3 * j + w + 1, time=base + (3 * j + w) * S, trace=None)
                                  for j in range(k, k + 6)],
                                 resource={c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: f"w{w}"}))

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    expected: dict[int, tuple[int, int]] = {}  # span id -> (relay, expected version)
    n = 0
    for r in range(3):
        for at in (0, 1, 2, 50, 91, 178, 179, 500):  # seconds after base
            n += 1
            expected[n] = (r, min(at, 179) + 1)
            rs[r].send_traces(traces([span(trace=1000 + n, span_id=n, start=base + at * S + S // 2,
                                           attrs=gen_attrs())], resource=AGENT3))
    for r in range(3):
        want = {sid(k) for k, (rr, _) in expected.items() if rr == r}
        got = rs[r].wait_spans(want, 10)
        for k, (rr, v) in expected.items():
            if rr == r:
                assert tier_version(got[sid(k)]) == ("latest", v), (r, k)


def test_redis_stopped_and_restarted_mid_run_loses_no_span(
    redis_server: RedisServer, relays: RedisProcessFactory
) -> None:
    a = relays("a", redis_server.url)
    b = relays("b", redis_server.url)
    now = time.time_ns()
    t0 = now - 60 * S
    a.send_logs(logs([fetch_record(version=1, time=t0, trace=None)], resource=AGENT1))
    b.send_traces(traces([span(trace=1, span_id=1, start=t0 + S, attrs=gen_attrs())], resource=AGENT1))
    assert tier_version(b.wait_spans({sid(1)}, 10)[sid(1)]) == ("instance", 1)

    redis_server.stop()
    for r in (a, b):
        r.wait_metric("promptstamp_store_degraded", lambda v: v == 1, 10)
    # While Redis is down: the trace tier works, the local view answers, fetch logs are buffered.
    sent: dict[RelayProcess, set[bytes]] = {a: set(), b: {sid(1)}}
    a.send_logs(logs([fetch_record(version=2, time=t0 + 10 * S, trace=None)], resource=AGENT1))
    for k in range(2, 12):
        r = a if k % 2 else b
        r.send_logs(logs([fetch_record(version=7, time=t0 + 20 * S, trace=k)], resource=AGENT2))
        r.send_traces(traces([span(trace=k, span_id=k, start=t0 + 21 * S, attrs=gen_attrs())], resource=AGENT2))
        sent[r].add(sid(k))
    b.send_traces(traces([span(trace=20, span_id=20, start=t0 + 30 * S, attrs=gen_attrs())], resource=AGENT1))
    sent[b].add(sid(20))
    got_b = b.wait_spans(sent[b], 10)
    got_a = a.wait_spans(sent[a], 10)
    for k in range(2, 12):
        assert tier_version((got_a if k % 2 else got_b)[sid(k)]) == ("trace", 7)
    # B never saw v2 (Redis was down): its local view answers with v1, and says it was degraded.
    assert tier_version(got_b[sid(20)]) == ("instance", 1)
    mb = b.metrics()
    assert mb["promptstamp_store_errors_total"] >= 1
    assert mb["promptstamp_store_degraded_resolutions_total"] >= 1
    assert a.metrics()["promptstamp_store_pending"] >= 1

    redis_server.restart()
    for r in (a, b):
        r.wait_metric("promptstamp_store_degraded", lambda v: v == 0, 15)
        r.wait_metric("promptstamp_store_connected", lambda v: v == 1, 15)
    a.wait_metric("promptstamp_store_pending", lambda v: v == 0, 10)
    # What A buffered while Redis was down now reaches B: v2 resolves there.
    b.send_traces(traces([span(trace=30, span_id=30, start=t0 + 40 * S, attrs=gen_attrs())], resource=AGENT1))
    sent[b].add(sid(30))
    assert tier_version(b.wait_spans({sid(30)}, 10)[sid(30)]) == ("instance", 2)
    assert a.metrics()["promptstamp_store_dropped_total"] == 0
    # No span lost: every span sent came out, once, after a clean shutdown.
    for r in (a, b):
        assert r.stop() == 0, r.stderr()
        assert set(r.spans()) == sent[r]
    assert "DEGRADED" in a.stderr() and "reachable again" in a.stderr()


def test_a_relay_started_while_redis_is_down_serves_and_catches_up(
    redis_factory: Callable[[], RedisServer], relays: RedisProcessFactory
) -> None:
    server = redis_factory()
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a = relays("a", url)
    a.wait_metric("promptstamp_store_degraded", lambda v: v == 1, 10)
    now = time.time_ns()
    a.send_logs(logs([fetch_record(version=3, time=now - 5 * S, trace=1)], resource=AGENT1))
    a.send_traces(traces([span(trace=1, span_id=1, start=now - 4 * S, attrs=gen_attrs())], resource=AGENT1))
    assert tier_version(a.wait_spans({sid(1)}, 10)[sid(1)]) == ("trace", 3)
    server.start(port)
    b = relays("b", url)
    a.wait_metric("promptstamp_store_degraded", lambda v: v == 0, 15)
    b.send_traces(traces([span(trace=2, span_id=2, start=now - 3 * S, attrs=gen_attrs())], resource=AGENT1))
    assert tier_version(b.wait_spans({sid(2)}, 10)[sid(2)]) == ("instance", 3)
