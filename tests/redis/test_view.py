"""RedisStore's local view and member codec, without Redis: the store answers exactly like the
in-memory store, and breaks exact-time ties by member so every relay picks the same record."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.store import MemoryStore
from promptstamp_relay.store.redis import RedisStore, decode_member, encode_member, tenant_prefix

S = 10**9
NOW = 1_700_000_000 * S


@pytest.fixture
def offline() -> Iterator[RedisStore]:
    store = RedisStore("redis://127.0.0.1:9/0", start=False)  # threads never started: view only
    yield store
    store.close()


def rec(version: int, time_ns: int, instance: str = "agent-1", trace: bytes = b"",
        key: str = "k", label: str = "production", source: str = "langfuse") -> FetchRecord:
    return FetchRecord(key=key, label=label, version=version, source=source, time_ns=time_ns,
                       trace_id=trace, span_id=b"\x01" * 8 if trace else b"", instance=instance)


def test_member_round_trip_and_order() -> None:
    r = FetchRecord(key="ké:y{x}", label="prod\nb", version=12, source="cache", time_ns=NOW + 5,
                    trace_id=b"\x01" * 16, span_id=b"\x02" * 8, instance="i|1", error_type="Timeout")
    m = encode_member(r)
    assert decode_member(m) == r
    assert m.startswith(f"{NOW + 5:020d}|") and "\n" not in m  # stream entries join members by \n
    assert encode_member(rec(1, 9)) < encode_member(rec(1, 10))  # member order is time order
    t = f"{NOW:020d}"
    assert decode_member(f"{t}|k|production||1|langfuse|||") == rec(1, NOW, instance="")
    for bad in ("", "x|[]", f"{t}|k|l|i|0|s|||", f"{t}|k|l|i|x|s|||", f"{t}|k|l|i|1", "12|k|l|i|1|s|||",
                f"{t}|k|l|i|1|s|zz||", f"{t}||l|i|1|s|||", f"{t}|k|l|i|1||||", f"{t}|k|l|i|1|s||||"):
        with pytest.raises(ValueError):
            decode_member(bad)


def test_member_carries_the_service_and_reads_members_written_without_it() -> None:
    r = FetchRecord(key="k", label="production", version=3, source="langfuse", time_ns=NOW,
                    trace_id=b"", span_id=b"", instance="agent-1", service="order status|svc")
    m = encode_member(r)
    assert m.endswith("|order%20status%7Csvc") and decode_member(m) == r
    old = f"{NOW:020d}|k|production|agent-1|3|langfuse|||"  # written before records had a service
    assert decode_member(old) == rec(3, NOW) and decode_member(old).service == ""
    assert encode_member(rec(3, NOW)) == old  # no service: the member (the record's id) is unchanged


def test_a_flooding_tenant_never_evicts_another_tenants_records_from_the_view() -> None:
    red = RedisStore("redis://127.0.0.1:9/0", max_entries=50, start=False)
    try:
        quiet = rec(7, NOW, trace=b"\x07" * 16)
        red.add("quiet", [quiet], NOW)
        for v in range(1, 501):
            red.add("flood", [rec(v, NOW + v, instance="agent-9", trace=b"\x09" * 16)], NOW + 600 * S)
        assert len(red) == 50
        assert list(red.in_trace("quiet", b"\x07" * 16, "k", "production")) == [quiet]
        assert red.latest_for_instance("quiet", "agent-1", "k", "production", NOW) == quiet
        assert red.latest("flood", "k", "production", NOW + 1000, 0).version == 500  # type: ignore[union-attr]
    finally:
        red.close()


def test_tenant_prefix_is_a_hash_tag_and_escapes() -> None:
    assert tenant_prefix("acme") == "promptstamp:{acme}:"
    assert tenant_prefix("a:b{c}") == "promptstamp:{a%3Ab%7Bc%7D}:"


def test_exact_time_ties_resolve_by_member_whatever_the_arrival_order(offline: RedisStore) -> None:
    a, b = rec(3, NOW), rec(4, NOW, instance="agent-2")
    winner = max((encode_member(a), a), (encode_member(b), b))[1]
    other = RedisStore("redis://127.0.0.1:9/0", start=False)
    offline.add("t", [a], NOW)
    offline.add("t", [b], NOW)
    other.add("t", [b], NOW)
    other.add("t", [a], NOW)
    assert offline.latest("t", "k", "production", NOW, 0) == winner
    assert other.latest("t", "k", "production", NOW, 0) == winner
    other.close()


def test_duplicates_are_stored_once(offline: RedisStore) -> None:
    offline.add("t", [rec(3, NOW), rec(3, NOW)], NOW)
    offline.add("t", [rec(3, NOW)], NOW)
    assert len(offline) == 1 and offline.stats.pending == 1


def test_fallback_and_too_old_records_are_not_kept(offline: RedisStore) -> None:
    fallback = FetchRecord(key="k", label="production", version=None, source="fallback", time_ns=NOW,
                           trace_id=b"", span_id=b"", instance="agent-1")
    offline.add("t", [fallback, rec(1, NOW - 25 * 3600 * S)], NOW)
    assert len(offline) == 0 and offline.stats.pending == 0


_records = st.lists(
    st.tuples(st.integers(1, 50), st.integers(0, 40), st.sampled_from(["i1", "i2", ""]),
              st.sampled_from([b"", b"\x01" * 16, b"\x02" * 16]), st.sampled_from(["k", "j"])),
    max_size=40, unique_by=lambda t: t[1],  # distinct times: no ties, where arrival order decides
)


@settings(max_examples=200, deadline=None)
@given(records=_records, cap=st.integers(1, 30))
def test_answers_like_the_memory_store(records: list[tuple[int, int, str, bytes, str]], cap: int) -> None:
    mem = MemoryStore(max_entries_per_tenant=cap)
    red = RedisStore("redis://127.0.0.1:9/0", max_entries_per_tenant=cap, start=False)
    try:
        for v, t, inst, trace, key in records:
            r = rec(v, NOW + t * S, instance=inst, trace=trace, key=key)
            mem.add("t", [r], NOW + 40 * S)
            red.add("t", [r], NOW + 40 * S)
        assert len(red) == len(mem)
        for key in ("k", "j"):
            for trace in (b"\x01" * 16, b"\x02" * 16):
                assert list(red.in_trace("t", trace, key, "production")) == \
                    list(mem.in_trace("t", trace, key, "production"))
            for at in range(-1, 42, 3):
                at_ns = NOW + at * S
                assert red.latest("t", key, "production", at_ns, NOW + 5 * S) == \
                    mem.latest("t", key, "production", at_ns, NOW + 5 * S)
                for inst in ("i1", "i2"):
                    assert red.latest_for_instance("t", inst, key, "production", at_ns) == \
                        mem.latest_for_instance("t", inst, key, "production", at_ns)
    finally:
        red.close()
