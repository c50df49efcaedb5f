"""The delivery pieces alone: the retry table, backoff, the queues' accounting, the journal."""

from __future__ import annotations

import random
from pathlib import Path

import grpc
import pytest

from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.deliver import DeliveryItem, MemoryQueue, PersistentQueue, QueueConfig
from promptstamp_relay.deliver.persistent import pending_rows
from promptstamp_relay.export import ExportResult
from promptstamp_relay.export.retry import (
    RETRYABLE_GRPC_CODES,
    RETRYABLE_HTTP_STATUSES,
    Backoff,
    grpc_retryable,
    parse_retry_after,
)
from promptstamp_relay.journal import Journal, JournalError
from promptstamp_relay.store.sqlite import SqliteStore
from tests.fakes import FakeExporter
from tests.waiting import wait_until

S = 10**9


# -- the one retry table, checked against the OTLP specification's -------------------------------
def test_retry_tables_match_the_otlp_spec() -> None:
    assert {429, 502, 503, 504} == RETRYABLE_HTTP_STATUSES
    G = grpc.StatusCode
    assert {G.CANCELLED, G.DEADLINE_EXCEEDED, G.ABORTED, G.OUT_OF_RANGE, G.UNAVAILABLE,
            G.DATA_LOSS} == RETRYABLE_GRPC_CODES
    assert grpc_retryable(G.RESOURCE_EXHAUSTED, has_retry_info=True)
    assert not grpc_retryable(G.RESOURCE_EXHAUSTED, has_retry_info=False)
    for code in (G.INVALID_ARGUMENT, G.UNAUTHENTICATED, G.PERMISSION_DENIED, G.NOT_FOUND, G.INTERNAL,
                 G.UNIMPLEMENTED, G.FAILED_PRECONDITION, G.ALREADY_EXISTS, G.UNKNOWN):
        assert not grpc_retryable(code, has_retry_info=True)


def test_retry_after_forms() -> None:
    assert parse_retry_after("2") == 2.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("inf") is None and parse_retry_after("") is None


def test_backoff_counts_wall_time_and_zero_means_for_ever() -> None:
    now = [0.0]
    b = Backoff(initial=1, maximum=1, max_elapsed=10, randomization=0, clock=lambda: now[0])
    run = b.delays()
    assert run.next_delay() == 1
    now[0] = 9.5  # slow attempts (timeouts) used the budget
    assert run.next_delay() is None
    forever = Backoff(initial=1, maximum=30, max_elapsed=0, rng=random.Random(3)).delays()
    delays = [forever.next_delay() for _ in range(100)]
    assert all(d is not None and 0.5 <= d <= 45 for d in delays)
    assert Backoff(initial=1, randomization=0).delays().next_delay(hint=0) == 0.01  # no hot loop


def test_jitter_stays_within_the_randomization_factor() -> None:
    run = Backoff(initial=4, maximum=4, max_elapsed=0, randomization=0.5, rng=random.Random(7)).delays()
    delays = [run.next_delay() or 0 for _ in range(200)]
    assert 2 <= min(delays) < 2.5 and 5.5 < max(delays) <= 6


# -- the queue ---------------------------------------------------------------------------------
FAST = Backoff(initial=0.01, maximum=0.01, max_elapsed=0.5, randomization=0)


def _wait(pred: object, timeout: float = 5) -> None:
    wait_until(pred, timeout, "the queue", interval=0.005)  # type: ignore[arg-type]


def test_bounds_count_in_flight_and_reservations() -> None:
    exp = FakeExporter().block()
    q = MemoryQueue(lambda t: exp, QueueConfig(max_requests=3, max_bytes=100, workers=1), backoff=FAST)
    q.start()
    try:
        q.put(DeliveryItem(b"a" * 40, 1))
        _wait(lambda: exp.payloads)  # in flight, still counted
        assert (q.depth, q.bytes) == (1, 40)
        assert q.try_reserve(50)
        assert not q.try_reserve(20)  # 40 + 50 + 20 > 100
        assert not q.try_reserve(5, extra_bytes=10)  # held spans share the bound
        assert q.try_reserve(5)
        assert not q.try_reserve(1)  # 1 in flight + 2 reserved = max_requests
        q.unreserve(50)
        q.unreserve(5)
        assert q.try_reserve(60)  # 40 in flight + 60 = 100: exactly full
        assert not q.try_reserve(1)
        q.unreserve(60)
    finally:
        exp.release()
        q.shutdown(2)


def test_retry_then_give_up_counts_failed_never_lost() -> None:
    exp = FakeExporter(then=ExportResult("retry", "503"))
    q = MemoryQueue(lambda t: exp, workers=1, backoff=FAST)
    q.start()
    q.put(DeliveryItem(b"x", 4))
    _wait(lambda: q.stats.failed_permanent_items == 4)
    assert q.shutdown(1) == 0
    assert q.stats.retries >= 10 and q.stats.lost_items == 0


def test_memory_shutdown_counts_lost_once_including_in_flight() -> None:
    exp = FakeExporter().block()
    q = MemoryQueue(lambda t: exp, workers=1, backoff=FAST)
    q.start()
    for _ in range(3):
        q.put(DeliveryItem(b"x", 2))
    _wait(lambda: exp.payloads)
    lost = q.shutdown(0.1)  # one stuck on the wire past the grace, two never taken
    assert lost == 6 and q.stats.lost_items == 6
    exp.release()  # the stuck export ends later: not counted twice, not counted exported
    _wait(lambda: not any(t.is_alive() for t in q._threads))
    assert q.stats.lost_items == 6 and q.stats.exported_items == 0


def test_persistent_rows_in_order_deleted_only_after_confirmation(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    exp = FakeExporter(ExportResult("permanent", "400")).block()
    q = PersistentQueue(lambda t: exp, j, workers=1, backoff=FAST)
    q.start()
    for i in range(4):
        q.put(DeliveryItem(f"req-{i}".encode(), 1))
    _wait(lambda: exp.payloads)
    assert len(pending_rows(j, "traces")) == 4  # nothing confirmed yet
    exp.release()
    _wait(lambda: q.stats.exported_items == 3)
    assert q.shutdown(1) == 0
    assert exp.payloads == [b"req-0", b"req-1", b"req-2", b"req-3"]  # in order
    assert pending_rows(j, "traces") == []  # confirmed or failed permanently: gone
    j.close()


def test_persistent_shutdown_keeps_rows_and_the_next_queue_sends_them_first(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    exp = FakeExporter(then=ExportResult("retry", "503"))
    q = PersistentQueue(lambda t: exp, j, workers=1,
                        backoff=Backoff(initial=0.01, maximum=0.01, max_elapsed=0))
    q.start()
    for i in range(3):
        q.put(DeliveryItem(f"old-{i}".encode(), 5))
    _wait(lambda: exp.payloads)
    assert q.shutdown(0.05) == 0 and q.stats.kept_items == 15
    j.close()
    j = Journal(tmp_path)
    ok = FakeExporter()
    q = PersistentQueue(lambda t: ok, j, workers=1, backoff=FAST)
    q.put(DeliveryItem(b"new", 1))  # before start: must still go after the old rows
    q.start()
    _wait(lambda: q.stats.exported_items == 16)
    assert q.stats.recovered_items == 15
    assert ok.payloads == [b"old-0", b"old-1", b"old-2", b"new"]
    q.shutdown(1)
    j.close()


# -- the journal -------------------------------------------------------------------------------
def test_journal_rolls_back_and_runs_callbacks_only_on_commit(tmp_path: Path) -> None:
    j = Journal(tmp_path, synchronous="normal")
    j.ensure_schema("CREATE TABLE IF NOT EXISTS t (v BLOB NOT NULL)")
    seen: list[str] = []
    with pytest.raises(RuntimeError), j.transaction():
        j.execute("INSERT INTO t (v) VALUES (?)", (b"a",))
        j.after_commit(lambda: seen.append("rolled back"))
        raise RuntimeError
    with j.transaction():
        with j.transaction():  # nested: joins
            j.execute("INSERT INTO t (v) VALUES (?)", (b"b",))
        j.after_commit(lambda: seen.append("committed"))
        assert seen == []
    assert seen == ["committed"]
    assert j.query("SELECT v FROM t") == [(b"b",)]
    j.close()
    j.close()  # idempotent


def test_one_relay_per_directory(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    with pytest.raises(JournalError, match="in use"):
        Journal(tmp_path)
    j.close()
    Journal(tmp_path).close()


def test_sqlite_store_survives_a_restart_and_prunes_by_age(tmp_path: Path) -> None:
    def rec(t: int, v: int, trace: bytes = b"") -> FetchRecord:
        return FetchRecord("k", "production", v, "langfuse", t, trace, b"", "agent-1")

    now = 1_000_000 * S
    j = Journal(tmp_path)
    st = SqliteStore(j, max_age_ns=3600 * S, now_ns=now)
    with j.transaction():
        st.add("default", [rec(now - 10 * S, 3, b"T" * 16), rec(now - 5 * S, 4)], now)
    st.add("other", [FetchRecord("k", "production", None, "fallback", now, b"", b"", "x")], now)
    j.close()
    j = Journal(tmp_path)
    st = SqliteStore(j, max_age_ns=3600 * S, now_ns=now + 60 * S)
    assert st.loaded == 2 and len(st) == 2
    assert [r.version for r in st.in_trace("default", b"T" * 16, "k", "production")] == [3]
    got = st.latest_for_instance("default", "agent-1", "k", "production", now)
    assert got is not None and got.version == 4
    assert st.latest("other", "k", "production", now, 0) is None
    st.prune(now + 7200 * S)  # past the age bound: gone from memory and disk
    assert len(st) == 0 and j.query("SELECT COUNT(*) FROM fetch_log")[0][0] == 0
    j.close()


def test_sqlite_store_prunes_the_table_as_records_arrive(tmp_path: Path) -> None:
    now = 1_000_000 * S
    j = Journal(tmp_path)
    st = SqliteStore(j, max_entries=3, max_age_ns=3600 * S, now_ns=now)
    for i in range(10):
        st.add("default", [FetchRecord("k", "production", i + 1, "langfuse", now + i * S, b"", b"", "a")],
               now + i * 61 * S)
    rows = j.query("SELECT version FROM fetch_log ORDER BY id")
    assert len(st) == 3 and len(rows) <= 4  # pruned to the newest max_entries once a minute
    j.close()


def test_sqlite_store_a_flooding_tenant_never_evicts_another_tenants_records_even_across_a_restart(
    tmp_path: Path,
) -> None:
    now = 1_000_000 * S
    quiet = FetchRecord("k", "production", 3, "langfuse", now, b"Q" * 16, b"\x01" * 8, "agent-q",
                        service="quiet-svc")
    j = Journal(tmp_path)
    st = SqliteStore(j, max_entries=50, max_age_ns=3600 * S, now_ns=now)
    st.add("quiet", [quiet], now)
    for i in range(500):  # past the bound, with the table pruned along the way (once a minute)
        st.add("flood", [FetchRecord("k", "production", i + 1, "langfuse", now + i, b"F" * 16, b"", "a")],
               now + i * S)
    st.prune(now + 500 * S)
    assert list(st.in_trace("quiet", b"Q" * 16, "k", "production")) == [quiet]
    tenants = dict(j.query("SELECT tenant, COUNT(*) FROM fetch_log GROUP BY tenant"))
    assert tenants == {"quiet": 1, "flood": 49}  # the table is cut like the memory index
    j.close()
    j = Journal(tmp_path)
    st = SqliteStore(j, max_entries=50, max_age_ns=3600 * S, now_ns=now + 501 * S)
    assert list(st.in_trace("quiet", b"Q" * 16, "k", "production")) == [quiet]  # service.name too
    assert len(st) == 50
    j.close()


def test_sqlite_store_reads_a_table_written_before_records_had_a_service(tmp_path: Path) -> None:
    now = 1_000_000 * S
    j = Journal(tmp_path)
    j.ensure_schema("""CREATE TABLE fetch_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT, tenant TEXT NOT NULL, key TEXT NOT NULL,
        label TEXT NOT NULL, version INTEGER NOT NULL, source TEXT NOT NULL, time_ns INTEGER NOT NULL,
        trace_id BLOB NOT NULL, span_id BLOB NOT NULL, instance TEXT NOT NULL, error_type TEXT)""")
    j.execute("INSERT INTO fetch_log (tenant, key, label, version, source, time_ns, trace_id, span_id, "
              "instance, error_type) VALUES ('default', 'k', 'production', 4, 'cache', ?, X'', X'', 'a', NULL)",
              (now,))
    st = SqliteStore(j, max_age_ns=3600 * S, now_ns=now)
    old = st.latest("default", "k", "production", now, 0)
    assert old is not None and (old.version, old.service) == (4, "")
    st.add("default", [FetchRecord("k", "production", 5, "langfuse", now + 1, b"", b"", "a", service="svc")],
           now + 1)
    j.close()
    j = Journal(tmp_path)
    st = SqliteStore(j, max_age_ns=3600 * S, now_ns=now + 2)
    new = st.latest("default", "k", "production", now + 1, 0)
    assert new is not None and (new.version, new.service) == (5, "svc")
    j.close()
