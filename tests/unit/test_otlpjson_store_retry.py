from __future__ import annotations

import random

import pytest

from promptstamp_relay.config import StoreConfig as ConfigStoreConfig
from promptstamp_relay.core.model import FetchRecord
from promptstamp_relay.export.retry import Backoff, parse_retry_after
from promptstamp_relay.export.settings import RetryConfig
from promptstamp_relay.store import MemoryStore
from promptstamp_relay.store._config import StoreConfig
from promptstamp_relay.wire.otlpjson import (
    OtlpJsonError,
    decode_line,
    encode_line,
    read_documents,
    to_protobuf,
)
from tests.otlp_builders import T0, S, fetch_record, gen_attrs, logs, span, traces


def test_otlp_json_round_trip_with_hex_ids() -> None:
    req = traces([span(attrs=gen_attrs(n=3, f=1.5, b=True))])
    req.resource_spans[0].scope_spans[0].spans[0].links.add(trace_id=b"\x02" * 16, span_id=b"\x03" * 8)
    line = encode_line(req)
    assert '"traceId":"00000000000000000000000000000001"' in line
    assert '"spanId":"0303030303030303"' in line
    assert decode_line(line) == req
    log_req = logs([fetch_record()])
    assert decode_line(encode_line(log_req)) == log_req


def test_a_recorded_line_and_an_http_body_read_the_same() -> None:
    req = traces([span(attrs=gen_attrs())])
    line = encode_line(req)
    assert to_protobuf("traces", line.encode()) == req.SerializeToString()
    # The proto field names are OTLP/JSON too: ids under them are hex in a body and in a file.
    snake = '{"resource_spans":[{"scope_spans":[{"spans":[{"trace_id":"%s","name":"s"}]}]}]}' % ("01" * 16)
    (doc,) = read_documents([snake])
    assert doc.request is not None and to_protobuf("traces", snake.encode()) == doc.request.SerializeToString()
    bad = '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"0102"}]}]}]}'
    with pytest.raises(OtlpJsonError, match="traceId must be 16 bytes, got 2") as body_error:
        to_protobuf("logs", bad.encode())
    with pytest.raises(OtlpJsonError) as line_error:
        list(read_documents([bad]))
    assert str(line_error.value) == f"line 1: {body_error.value}"


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


def test_backoff_defaults_are_the_retry_section_defaults() -> None:
    b, r = Backoff(), RetryConfig()
    assert (b.initial, b.maximum, b.max_elapsed, b.multiplier, b.randomization) == (
        r.initial_interval_seconds, r.max_interval_seconds, r.max_elapsed_seconds, r.multiplier, r.randomization)
    custom = Backoff.from_config(RetryConfig(initial_interval_seconds=0.5, max_elapsed_seconds=0))
    assert (custom.initial, custom.max_elapsed, custom.maximum) == (0.5, 0, r.max_interval_seconds)


def test_backoff_is_bounded_and_honours_the_hint() -> None:
    b = Backoff(initial=1, maximum=4, max_elapsed=10, multiplier=2, randomization=0, rng=random.Random(1))
    run = b.delays()
    assert [run.next_delay() for _ in range(3)] == [1, 2, 4]
    assert run.next_delay(hint=0.5) == 0.5
    assert run.next_delay() is None  # 1+2+4+0.5+4 > 10


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0) == 0.0
