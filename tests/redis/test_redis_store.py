"""RedisStore against a real redis-server: several stores (= several relays) sharing one Redis.

Needs the ``redis-server`` binary (see conftest: skipped without it locally, FAILS in CI).
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.store.redis import RedisStore, decode_member, encode_member, tenant_prefix
from tests.redis_server import RedisServer
from tests.relays import free_port
from tests.waiting import wait_until

pytestmark = pytest.mark.redis

S = 10**9
KEY, LABEL = "order-status-answer", "production"


def rec(version: int, time_ns: int, *, instance: str = "agent-1", trace: int | None = None,
        key: str = KEY, label: str = LABEL, source: str = "langfuse") -> FetchRecord:
    return FetchRecord(key=key, label=label, version=version, source=source, time_ns=time_ns,
                       trace_id=trace.to_bytes(16, "big") if trace else b"",
                       span_id=b"\x00" * 7 + b"\x01" if trace else b"", instance=instance)


@pytest.fixture
def make_store() -> Iterator[Callable[..., RedisStore]]:
    made: list[RedisStore] = []

    def make(url: str, **kw: Any) -> RedisStore:
        kw.setdefault("backoff_max_seconds", 0.5)
        s = RedisStore(url, **kw)
        made.append(s)
        return s

    try:
        yield make
    finally:
        for s in made:
            s.close(timeout=1.0)


def test_a_record_received_by_one_relay_resolves_on_another_within_a_second(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a, b = make_store(redis_server.url), make_store(redis_server.url)
    wait_until(lambda: a.stats.connected and b.stats.connected, 5, "both stores connected")
    now = time.time_ns()
    t = now - 5 * S
    t0 = time.monotonic()
    a.add("default", [rec(5, t, instance="agent-1", trace=7)], now)
    got = wait_until(lambda: b.latest_for_instance("default", "agent-1", KEY, LABEL, now), 1.0,
                     "the record in b's view")
    elapsed = time.monotonic() - t0
    assert got is not None and got.version == 5 and elapsed < 1.0
    assert b.latest("default", KEY, LABEL, now, now - 3600 * S) == got
    assert b.latest("default", KEY, LABEL, t - 1, 0) is None  # not after the span's start
    assert [r.version for r in b.in_trace("default", (7).to_bytes(16, "big"), KEY, LABEL)] == [5]
    assert b.stats.remote == 1 and a.stats.flushed == 1
    assert not (a.stats.degraded or b.stats.degraded or a.stats.errors or b.stats.errors)


def test_concurrent_writers_every_lookup_gets_the_latest_record_not_after_its_start(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    """Three relays write the same (key, label) at once, with interleaved fetch times, exact ties
    across writers, and out-of-order arrival. Every store, and Redis itself, then gives the same
    answer as a brute-force scan: the latest record not after the lookup time, ties by member."""
    stores = [make_store(redis_server.url) for _ in range(3)]
    wait_until(lambda: all(s.stats.connected for s in stores), 5, "stores connected")
    now = time.time_ns()
    base = now - 600 * S
    rng = random.Random(7)
    per_writer: list[list[FetchRecord]] = [[] for _ in stores]
    for w in range(3):
        for k in range(400):
            if k % 40 == 0:
                t = base + k * 1_000_000  # the same µs for every writer: a tie
            else:
                t = base + rng.randrange(0, 400) * 1_000_000 + rng.randrange(0, 1000) * 1000
            per_writer[w].append(rec(rng.randrange(1, 10_000), t, instance=f"agent-{w}"))
        rng.shuffle(per_writer[w])  # arrival order is not fetch-time order
    start = threading.Barrier(3)

    def write(w: int) -> None:
        start.wait()
        recs = per_writer[w]
        i = 0
        while i < len(recs):
            n = rng.randrange(1, 9)
            stores[w].add("default", recs[i:i + n], now)
            i += n

    threads = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    everything = [r for recs in per_writer for r in recs]
    distinct = {encode_member(r): r for r in everything}
    for s in stores:
        assert s.flush(10)
    wait_until(lambda: all(len(s) == len(distinct) for s in stores), 5, "every store has every record")

    def expected(at: int, instance: str | None) -> FetchRecord | None:
        cands = [(r.time_ns, m, r) for m, r in distinct.items()
                 if r.time_ns <= at and (instance is None or r.instance == instance)]
        return max(cands, key=lambda c: (c[0], c[1]))[2] if cands else None

    probes = [base - 1] + [r.time_ns for r in rng.sample(everything, 150)] + \
             [base + rng.randrange(0, 401 * 10**9) for _ in range(150)]
    redis = redis_server.client()
    series = tenant_prefix("default") + f"l:{KEY}:{LABEL}"
    for at in probes:
        want = expected(at, None)
        for s in stores:
            assert s.latest("default", KEY, LABEL, at, 0) == want
            for w in range(3):
                assert s.latest_for_instance("default", f"agent-{w}", KEY, LABEL, at) == \
                    expected(at, f"agent-{w}")
        if at % 1000 == 0:  # Redis scores are µs: exact for µs-aligned lookups
            top = redis.zrevrangebyscore(series, at // 1000, "-inf", start=0, num=1)
            assert (decode_member(top[0]) if top else None) == want
    assert sum(s.stats.flushed for s in stores) == len(everything)
    assert redis.zcard(tenant_prefix("default") + "idx") == len(distinct)


def test_every_key_is_namespaced_per_tenant_and_expires(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a = make_store(redis_server.url, max_age_ns=1 * S)
    now = time.time_ns()
    a.add("acme", [rec(1, now - S // 2, trace=1), rec(2, now - S // 4, instance="agent-2")], now)
    a.add("odd:{tenant}", [rec(3, now - S // 4)], now)
    assert a.flush(5)
    redis = redis_server.client()
    keys = sorted(redis.scan_iter("*"))
    assert keys, "nothing written"
    for k in keys:
        assert k == "promptstamp:tenants" or k.startswith(
            ("promptstamp:{acme}:", "promptstamp:{odd%3A%7Btenant%7D}:")), k
        assert 0 < redis.pttl(k) <= 1000, (k, redis.pttl(k))
    wait_until(lambda: redis.dbsize() == 0, 5, "every key expired")
    # A relay started now finds nothing (once it has seen a record written after it connected,
    # it has loaded what Redis held); the old view forgets by age too.
    b = make_store(redis_server.url, max_age_ns=1 * S)
    wait_until(lambda: b.stats.connected, 5, "b connected")
    later_now = time.time_ns()
    marker = rec(9, later_now, instance="agent-9")
    a.add("marker", [marker], later_now)
    wait_until(lambda: b.latest("marker", KEY, LABEL, later_now, 0), 5, "b following a's writes")
    assert len(b) == 1
    later = later_now + 2 * S
    a.prune(later)
    assert len(a) == 0
    assert a.latest("acme", KEY, LABEL, later, 0) is None


def test_a_cap_per_tenant_trims_redis_and_every_series(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a = make_store(redis_server.url, max_entries_per_tenant=50)
    now = time.time_ns()
    base = now - 1000 * S
    for i in range(0, 120, 10):
        a.add("acme", [rec(k + 1, base + k * S, instance=f"agent-{k % 3}") for k in range(i, i + 10)], now)
        assert a.flush(5)
    a.add("beta", [rec(1, base)], now)
    assert a.flush(5)
    redis = redis_server.client()
    p = tenant_prefix("acme")
    assert redis.zcard(p + "idx") == 50
    label_series = [decode_member(m) for m in redis.zrange(p + f"l:{KEY}:{LABEL}", 0, -1)]
    assert [r.version for r in label_series] == list(range(71, 121))  # the newest 50 kept
    inst = sum(redis.zcard(k) for k in redis.scan_iter(p + "i:*"))
    assert inst == 50
    assert redis.zcard(tenant_prefix("beta") + "idx") == 1  # another tenant's cap is its own
    assert len(a) == 51  # the view: 50 for acme (its own bound), 1 for beta


def test_a_flooding_tenant_never_evicts_another_tenants_records_from_another_relays_view(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a = make_store(redis_server.url)
    b = make_store(redis_server.url, max_entries=100)  # b's view holds 100 records, all tenants
    wait_until(lambda: a.stats.connected and b.stats.connected, 5, "both stores connected")
    now = time.time_ns()
    quiet = FetchRecord(key=KEY, label=LABEL, version=3, source="langfuse", time_ns=now - 600 * S,
                        trace_id=(7).to_bytes(16, "big"), span_id=b"\x01" * 8, instance="agent-q",
                        service="quiet-svc")
    a.add("quiet", [quiet], now)
    wait_until(lambda: b.in_trace("quiet", quiet.trace_id, KEY, LABEL), 5, "quiet's record on b")
    for i in range(0, 1000, 50):
        a.add("flood", [rec(k + 1, now - (500 - k // 2) * S, trace=k + 100) for k in range(i, i + 50)], now)
    wait_until(lambda: b.stats.remote >= 1001, 10, "b took in the flood")
    assert len(b) == 100
    assert list(b.in_trace("quiet", quiet.trace_id, KEY, LABEL)) == [quiet]  # service.name included
    assert b.latest_for_instance("quiet", "agent-q", KEY, LABEL, now) == quiet


def test_tenants_never_resolve_each_other(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a, b = make_store(redis_server.url), make_store(redis_server.url)
    now = time.time_ns()
    a.add("acme", [rec(4, now - S)], now)
    wait_until(lambda: b.latest("acme", KEY, LABEL, now, 0), 2, "acme's record on b")
    assert b.latest("beta", KEY, LABEL, now, 0) is None
    assert b.latest_for_instance("beta", "agent-1", KEY, LABEL, now) is None


def test_a_relay_joining_later_loads_the_shared_history(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a = make_store(redis_server.url)
    now = time.time_ns()
    a.add("default", [rec(k + 1, now - (100 - k) * S, instance=f"agent-{k % 4}") for k in range(30)], now)
    assert a.flush(5)
    c = make_store(redis_server.url)
    wait_until(lambda: len(c) == 30, 3, "c loaded the history")
    for at in range(now - 101 * S, now, 7 * S):
        assert c.latest("default", KEY, LABEL, at, 0) == a.latest("default", KEY, LABEL, at, 0)


def test_redis_unreachable_degrades_never_blocks_and_recovers(
    redis_factory: Callable[[], RedisServer], make_store: Callable[..., RedisStore]
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    a = make_store(url)
    now = time.time_ns()
    wait_until(lambda: a.stats.degraded, 5, "degraded while nothing listens")
    slowest = 0.0
    for k in range(200):
        t0 = time.perf_counter()
        a.add("default", [rec(k + 1, now - (300 - k) * S)], now)
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.05, f"add() took {slowest * 1000:.1f} ms with Redis down"
    assert a.latest("default", KEY, LABEL, now, 0).version == 200  # type: ignore[union-attr]
    assert a.stats.degraded_resolutions >= 1 and a.stats.errors >= 1
    assert a.stats.pending == 200 and not a.stats.connected
    server = redis_factory().start(port)
    wait_until(lambda: a.stats.connected and not a.stats.degraded, 5, "reconnected")
    assert a.flush(5)
    assert server.client().zcard(tenant_prefix("default") + "idx") == 200
    assert a.stats.reconnects >= 1 and a.stats.dropped == 0


def test_the_outbound_buffer_is_bounded_and_counts_what_it_drops(
    redis_factory: Callable[[], RedisServer], make_store: Callable[..., RedisStore]
) -> None:
    port = free_port()
    a = make_store(f"redis://127.0.0.1:{port}/0", max_pending=10)
    now = time.time_ns()
    for k in range(25):
        a.add("default", [rec(k + 1, now - (100 - k) * S)], now)
    assert (a.stats.dropped, a.stats.pending) == (15, 10)
    server = redis_factory().start(port)
    wait_until(lambda: a.stats.connected, 5, "reconnected")
    assert a.flush(5)
    kept = [decode_member(m).version
            for m in server.client().zrange(tenant_prefix("default") + "idx", 0, -1)]
    assert kept == list(range(16, 26))  # the newest records were kept
    assert len(a) == 25  # this relay's own view lost nothing


def test_redis_restarted_empty_gets_every_relays_records_back(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    a, b = make_store(redis_server.url), make_store(redis_server.url)
    now = time.time_ns()
    a.add("default", [rec(k + 1, now - (50 - k) * S, instance="agent-a") for k in range(20)], now)
    b.add("default", [rec(k + 100, now - (50 - k) * S, instance="agent-b") for k in range(5)], now)
    assert a.flush(5) and b.flush(5)
    redis_server.stop()
    wait_until(lambda: a.stats.degraded and b.stats.degraded, 5, "both degraded")
    redis_server.restart()
    wait_until(lambda: a.stats.connected and b.stats.connected, 10, "both reconnected")
    redis = redis_server.client()
    wait_until(lambda: redis.zcard(tenant_prefix("default") + "idx") == 25, 10, "records written back")
    c = make_store(redis_server.url)
    wait_until(lambda: len(c) == 25, 3, "a new relay sees all of them")
    assert a.stats.dropped == b.stats.dropped == 0


def test_a_hung_redis_is_detected_and_never_blocks_add(
    redis_server: RedisServer, make_store: Callable[..., RedisStore]
) -> None:
    """Redis frozen (SIGSTOP: connections accepted, nothing answered), not refused."""
    a = make_store(redis_server.url, socket_timeout_seconds=0.5)
    wait_until(lambda: a.stats.connected, 5, "connected")
    now = time.time_ns()
    assert redis_server.proc is not None
    os.kill(redis_server.proc.pid, signal.SIGSTOP)
    try:
        slowest = 0.0
        for k in range(50):
            t0 = time.perf_counter()
            a.add("default", [rec(k + 1, now - (100 - k) * S)], now)
            slowest = max(slowest, time.perf_counter() - t0)
            time.sleep(0.01)
        assert slowest < 0.05, f"add() took {slowest * 1000:.1f} ms with Redis frozen"
        wait_until(lambda: a.stats.degraded, 5, "degraded while Redis is frozen")
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    wait_until(lambda: a.stats.connected and not a.stats.degraded, 10, "recovered")
    assert a.flush(5)
    assert redis_server.client().zcard(tenant_prefix("default") + "idx") == 50
