"""The in-memory fetch-record store: latest-not-after, its bounds, tenants kept apart."""

from __future__ import annotations

from promptstamp_relay.config import StoreConfig as ConfigStoreConfig
from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.store import MemoryStore
from promptstamp_relay.store._config import StoreConfig
from tests.otlp_builders import T0, S


def rec(version: int, t: int, instance: str = "i1", trace: bytes = b"") -> FetchRecord:
    return FetchRecord("k", "l", version, "langfuse", t, trace, b"", instance)


def test_memory_store_latest_not_after_and_bounds() -> None:
    st = MemoryStore(max_entries=3, max_age_ns=100 * S)
    st.add("t", [rec(1, T0), rec(2, T0 + 10 * S), rec(3, T0 + 5 * S)], T0)
    assert st.latest("t", "k", "l", T0 + 7 * S, 0).version == 3  # type: ignore[union-attr]
    assert st.latest("t", "k", "l", T0 + 20 * S, 0).version == 2  # type: ignore[union-attr]
    assert st.latest("t", "k", "l", T0 - 1, 0) is None
    st.add("t", [rec(4, T0 + 11 * S)], T0)  # over max_entries: the oldest arrival goes
    assert len(st) == 3
    assert st.latest("t", "k", "l", T0 + S, 0) is None
    st.prune(T0 + 200 * S)  # everything older than the age bound
    assert len(st) == 0


def test_memory_store_per_tenant_cap_leaves_other_tenants_alone() -> None:
    st = MemoryStore(max_entries=100, max_entries_per_tenant=2)
    st.add("a", [rec(1, T0)], T0)
    st.add("b", [rec(v, T0 + v) for v in range(1, 6)], T0)
    assert st.latest("a", "k", "l", T0, 0).version == 1  # type: ignore[union-attr]
    assert len(st) == 3


def test_a_flooding_tenant_evicts_its_own_records_never_another_tenants() -> None:
    st = MemoryStore(max_entries=50)
    quiet = FetchRecord("k", "l", 7, "langfuse", T0, b"\x07" * 16, b"\x01" * 8, "i1")
    st.add("quiet", [quiet], T0)
    for v in range(1, 1001):  # the store holds 50: the flood evicts 951 records, all its own
        st.add("flood", [rec(v, T0 + v, trace=b"\x09" * 16)], T0)
    assert len(st) == 50
    assert list(st.in_trace("quiet", b"\x07" * 16, "k", "l")) == [quiet]  # the trace tier still answers
    assert st.latest("flood", "k", "l", T0 + 2000, 0).version == 1000  # type: ignore[union-attr]
    assert st.latest("flood", "k", "l", T0 + 951, 0) is None  # its oldest went


def test_store_bounds_come_from_store_config_once() -> None:
    assert ConfigStoreConfig is StoreConfig  # config/ uses the stores' own section
    st = MemoryStore()
    assert (st.bounds.max_entries, st.bounds.max_per_tenant, st.bounds.max_age_ns) == (
        StoreConfig.max_entries, StoreConfig.max_entries_per_tenant, round(StoreConfig.max_age_seconds * 1e9))
    assert MemoryStore(StoreConfig(max_entries=10, max_entries_per_tenant=3)).bounds.max_per_tenant == 3
    assert MemoryStore(max_entries=2).bounds.max_per_tenant == 2  # never more than the whole store
    assert StoreConfig(max_entries=0, max_age_seconds=0, backend="x").validate("store") == [
        "'store.backend' must be memory or redis, got 'x'", "'store.max_entries' must be > 0",
        "'store.max_age_seconds' must be > 0"]
