"""Every limit and refusal: decode_traces / decode_logs alone, then live over gRPC."""

from __future__ import annotations

import threading
import time

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from promptstamp.testing import LangfuseServer
from promptstamp_relay.admission.budget import ByteBudget
from promptstamp_relay.admission.decode import (
    Violation,
    check_request,
    decode_logs,
    decode_traces,
    wrap_levels,
)
from promptstamp_relay.config import LimitsConfig
from tests.otlp_builders import LOGS_EXPORT, TRACES_EXPORT
from tests.relays import running

from .conftest import call, relay_config
from .payloads import (
    field,
    kv,
    logs_request,
    nested_array,
    nested_kvlist,
    realistic_request,
    span_bytes,
    string_value,
    trace_request,
)

SECRET = b"SECRET-VALUE-never-in-a-message"
LIM = LimitsConfig(max_spans_per_request=10, max_attributes_per_span=4, max_attribute_value_bytes=64,
                   max_value_depth=5)


def refusal(data: bytes, limits: LimitsConfig = LIM, *, logs: bool = False) -> Violation:
    with pytest.raises(Violation) as info:
        (decode_logs if logs else decode_traces)(data, limits)
    v = info.value
    assert SECRET.decode() not in v.message and len(v.message) < 200
    return v


def attr(value: bytes, key: bytes = b"k") -> bytes:
    """A span's attribute (Span.attributes = 9)."""
    return field(9, kv(key, value))


def event(*attrs: bytes, name: bytes = b"ev") -> bytes:
    return field(11, field(2, name) + b"".join(field(3, a) for a in attrs))


def link(*attrs: bytes, trace_id: bytes = b"\x03" * 16, span_id: bytes = b"\x04" * 8) -> bytes:
    return field(13, field(1, trace_id) + field(2, span_id) + b"".join(field(4, a) for a in attrs))


def log_record(body: bytes = b"", *attrs: bytes, trace_id: bytes = b"", span_id: bytes = b"") -> bytes:
    out = b""
    if body:
        out += field(5, body)
    out += b"".join(field(6, a) for a in attrs)
    if trace_id:
        out += field(9, trace_id)
    if span_id:
        out += field(10, span_id)
    return out


# --------------------------------------------------------------------------------------------
# Counts
# --------------------------------------------------------------------------------------------
def test_spans_and_log_records_per_request() -> None:
    assert decode_traces(trace_request(*[span_bytes(b"")] * 10), LIM)
    assert refusal(trace_request(*[span_bytes(b"")] * 11)).kind == "too_large"
    assert decode_logs(logs_request(*[log_record()] * 10), LIM)
    v = refusal(logs_request(*[log_record()] * 11), logs=True)
    assert v.kind == "too_large" and "11 log records" in v.message


@pytest.mark.parametrize("where", ["span", "event", "link", "resource", "scope", "log"])
def test_attributes_per_span_event_link_resource_scope_and_log_record(where: str) -> None:
    def build(n: int) -> tuple[bytes, bool]:
        attrs = [kv(b"k%d" % i, string_value(b"v")) for i in range(n)]
        if where == "span":
            return trace_request(span_bytes(b"".join(field(9, a) for a in attrs))), False
        if where == "event":
            return trace_request(span_bytes(event(*attrs))), False
        if where == "link":
            return trace_request(span_bytes(link(*attrs))), False
        if where == "resource":
            resource = field(1, b"".join(field(1, a) for a in attrs))
            return field(1, resource + field(2, field(2, span_bytes(b"")))), False
        if where == "scope":
            scope = field(1, b"".join(field(3, a) for a in attrs))
            return field(1, field(2, scope + field(2, span_bytes(b"")))), False
        return logs_request(log_record(b"", *attrs)), True

    ok, is_logs = build(4)
    (decode_logs if is_logs else decode_traces)(ok, LIM)
    bad, is_logs = build(5)
    v = refusal(bad, logs=is_logs)
    assert v.kind == "too_large" and "5 attributes" in v.message and "max_attributes_per_span" in v.message


def test_events_and_links_per_span() -> None:
    assert refusal(trace_request(span_bytes(event() * 5))).kind == "too_large"
    assert refusal(trace_request(span_bytes(link() * 5))).kind == "too_large"
    decode_traces(trace_request(span_bytes(event() * 4 + link() * 4)), LIM)


def test_millions_of_empty_attributes_in_one_span_are_refused_quickly() -> None:
    data = trace_request(span_bytes(b"\x4a\x00" * 2_000_000))  # 2M empty KeyValues, 4 MB
    t0 = time.monotonic()
    v = refusal(data, LimitsConfig())
    assert v.kind == "too_large" and "2000000 attributes" in v.message
    assert time.monotonic() - t0 < 5


# --------------------------------------------------------------------------------------------
# Value sizes
# --------------------------------------------------------------------------------------------
#: A span of short strings that makes a request larger than LIM's 64-byte value limit (so
#: string lengths get measured) without breaking any limit itself.
PAD = span_bytes(b"".join(attr(string_value(b"pad-value")) for _ in range(4)), span_id=b"\x09" * 8)


def big(n: int = 65) -> bytes:
    return SECRET + b"x" * (n - len(SECRET))


@pytest.mark.parametrize(
    "span_body",
    [
        attr(string_value(big())),  # a string value
        attr(string_value(b"ok"), key=big()),  # a key
        attr(field(7, big())),  # a bytes value
        attr(nested_array(3, leaf=big())),  # a string nested in an array
        attr(field(6, field(1, kv(big(), string_value(b"v"))))),  # a key nested in a kvlist
        event(field(1, b"k") + field(2, string_value(big()))),  # an event attribute
        event(name=big()),  # an event name
    ],
)
def test_attribute_values_keys_and_names_over_the_byte_limit(span_body: bytes) -> None:
    # Padding makes the request larger than the limit, so string lengths are measured.
    data = trace_request(span_bytes(span_body), PAD)
    v = refusal(data)
    assert v.kind == "too_large" and "max_attribute_value_bytes" in v.message


def test_utf8_length_not_character_count() -> None:
    lim = LimitsConfig(max_attribute_value_bytes=64)
    fits = "é" * 32  # 32 characters, 64 bytes
    over = "é" * 33  # 33 characters, 66 bytes
    pad = PAD
    decode_traces(trace_request(span_bytes(attr(string_value(fits.encode()))), pad), lim)
    assert refusal(trace_request(span_bytes(attr(string_value(over.encode()))), pad), lim).kind == "too_large"


def test_span_name_and_log_body_over_the_limit() -> None:
    assert refusal(trace_request(span_bytes(b"", name=big()))).kind == "too_large"
    assert refusal(logs_request(log_record(string_value(big()))), logs=True).kind == "too_large"


# --------------------------------------------------------------------------------------------
# Depth
# --------------------------------------------------------------------------------------------
def placed(where: str, value: bytes) -> tuple[bytes, bool]:
    if where == "span":
        return trace_request(span_bytes(attr(value))), False
    if where == "event":
        return trace_request(span_bytes(event(kv(b"k", value)))), False
    if where == "link":
        return trace_request(span_bytes(link(kv(b"k", value)))), False
    if where == "resource":
        return field(1, field(1, field(1, kv(b"k", value))) + field(2, field(2, span_bytes(b"")))), False
    if where == "scope":
        return field(1, field(2, field(1, field(3, kv(b"k", value))) + field(2, span_bytes(b"")))), False
    if where == "log attribute":
        return logs_request(log_record(b"", kv(b"k", value))), True
    return logs_request(log_record(value)), True  # log body


WHERE = ["span", "event", "link", "resource", "scope", "log attribute", "log body"]


@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("depth_limit", [1, 5, 32])
def test_arrays_are_accepted_up_to_the_depth_limit_exactly(where: str, depth_limit: int) -> None:
    lim = LimitsConfig(max_value_depth=depth_limit)
    ok, is_logs = placed(where, nested_array(depth_limit))
    (decode_logs if is_logs else decode_traces)(ok, lim)
    bad, is_logs = placed(where, nested_array(depth_limit + 1))
    v = refusal(bad, lim, logs=is_logs)
    assert v.kind == "invalid" and "max_value_depth" in v.message


@pytest.mark.parametrize("where", WHERE)
def test_kvlists_are_refused_past_the_limit_and_accepted_well_within_it(where: str) -> None:
    """A kvlist level costs the parser 3 levels to an array's 2: refused from about two thirds
    of the limit on (stricter, never looser)."""
    lim = LimitsConfig(max_value_depth=12)
    ok, is_logs = placed(where, nested_kvlist(8))
    (decode_logs if is_logs else decode_traces)(ok, lim)
    bad, is_logs = placed(where, nested_kvlist(13))
    assert refusal(bad, lim, logs=is_logs).kind == "invalid"


def test_a_hundred_deep_kvlist_is_invalid_argument_not_a_crash() -> None:
    for mk in (nested_kvlist, nested_array):
        data = trace_request(span_bytes(attr(mk(100))))
        assert refusal(data, LimitsConfig()).kind == "invalid"
        assert check_request(ExportTraceServiceRequest(), LimitsConfig()) is None


def test_wrap_levels_is_calibrated_per_limit() -> None:
    assert wrap_levels(5) > wrap_levels(32) >= 0
    assert wrap_levels(100) == 0  # beyond what the parser allows at all: the parser decides


# --------------------------------------------------------------------------------------------
# Ids, malformed protobuf, invalid UTF-8
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "span",
    [
        span_bytes(b"", trace_id=b"\x01" * 15),
        span_bytes(b"", trace_id=b"\x01" * 17),
        span_bytes(b"", trace_id=bytes(16)),
        span_bytes(b"", trace_id=b""),
        span_bytes(b"", span_id=b"\x02" * 7),
        span_bytes(b"", span_id=bytes(8)),
        span_bytes(field(4, b"\x05" * 4)),  # parent_span_id of 4 bytes
        span_bytes(link(trace_id=b"\x03" * 3)),
        span_bytes(link(span_id=b"")),
    ],
)
def test_ids_of_the_wrong_length_are_invalid(span: bytes) -> None:
    v = refusal(trace_request(span))
    assert v.kind == "invalid" and "bytes" in v.message


@pytest.mark.parametrize("rec", [log_record(trace_id=b"\x01" * 5), log_record(span_id=b"\x02" * 9)])
def test_log_record_ids_of_the_wrong_length_are_invalid(rec: bytes) -> None:
    assert refusal(logs_request(rec), logs=True).kind == "invalid"
    decode_logs(logs_request(log_record(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)), LIM)
    decode_logs(logs_request(log_record()), LIM)  # no ids at all: a log outside any span


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xff\xff not protobuf",
        b"\x0a\x05\x12",  # a length running past the end
        b"\x0a" + b"\xff" * 10,  # a varint that never ends
        b"\x0f\x00",  # wire type 7 does not exist
        trace_request(span_bytes(b""))[:-3],  # truncated
        trace_request(span_bytes(b"", name=b"\xff\xfe bad utf-8")),
        trace_request(span_bytes(attr(string_value(b"\xc3\x28")))),
        trace_request(span_bytes(attr(string_value(b"v"), key=b"\xed\xa0\x80"))),  # a surrogate
    ],
)
def test_malformed_protobuf_and_invalid_utf8_are_invalid(data: bytes) -> None:
    v = refusal(data)
    assert v.kind == "invalid" and v.message == "malformed ExportTraceServiceRequest"


def test_invalid_utf8_in_a_log_body_is_invalid() -> None:
    v = refusal(logs_request(log_record(string_value(b"\xff"))), logs=True)
    assert v.message == "malformed ExportLogsServiceRequest"


def test_unknown_fields_and_empty_requests_are_fine() -> None:
    assert decode_traces(b"", LIM) == ExportTraceServiceRequest()
    decode_traces(trace_request(span_bytes(field(1000, b"future field"))), LIM)


def test_realistic_traffic_passes_with_default_limits() -> None:
    req = realistic_request()
    assert decode_traces(req.SerializeToString(), LimitsConfig()) == req
    assert check_request(req, LimitsConfig()) is None


# --------------------------------------------------------------------------------------------
# The in-flight budget
# --------------------------------------------------------------------------------------------
def test_byte_budget_waits_then_refuses_and_admits_one_oversized_request_alone() -> None:
    b = ByteBudget(100, wait_seconds=0.1)
    assert b.acquire(60)
    t0 = time.monotonic()
    assert not b.acquire(50)  # no room within the wait
    assert time.monotonic() - t0 >= 0.09
    threading.Timer(0.02, b.release, args=(60,)).start()
    b.wait_seconds = 2
    assert b.acquire(50)  # room freed while waiting
    b.release(50)
    assert b.acquire(1000)  # larger than the whole budget: admitted when alone ...
    b.wait_seconds = 0
    assert not b.acquire(1)  # ... and then it holds the whole budget: nothing else gets in
    b.release(1000)
    assert b.acquire(10)
    assert not b.acquire(1000)  # not alone: it waits for the others (here: refused at once)
    b.release(10)
    assert b.used == 0


# --------------------------------------------------------------------------------------------
# Live: the precise status over gRPC, and the relay keeps serving
# --------------------------------------------------------------------------------------------
def test_every_refusal_live_then_a_normal_request_is_served(langfuse: LangfuseServer) -> None:
    overrides = {"limits.max_spans_per_request": 10, "limits.max_attributes_per_span": 4,
                 "limits.max_attribute_value_bytes": 64, "limits.max_value_depth": 5,
                 "limits.max_request_bytes": 64 * 1024, "limits.max_inflight_request_bytes": 64 * 1024}
    cases: list[tuple[bytes, str, grpc.StatusCode]] = [
        (trace_request(*[span_bytes(b"")] * 11), "traces", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (trace_request(span_bytes(b"".join(attr(string_value(b"v")) for _ in range(5)))), "traces",
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        (trace_request(span_bytes(attr(string_value(big()))), PAD), "traces",
         grpc.StatusCode.RESOURCE_EXHAUSTED),
        (trace_request(span_bytes(attr(nested_array(6)))), "traces", grpc.StatusCode.INVALID_ARGUMENT),
        (trace_request(span_bytes(b"", trace_id=b"\x01" * 15)), "traces", grpc.StatusCode.INVALID_ARGUMENT),
        (trace_request(span_bytes(b"", name=b"\xff")), "traces", grpc.StatusCode.INVALID_ARGUMENT),
        (b"\xff\xff garbage", "traces", grpc.StatusCode.INVALID_ARGUMENT),
        (trace_request(span_bytes(attr(string_value(b"x" * 70_000)))), "traces",
         grpc.StatusCode.RESOURCE_EXHAUSTED),  # over max_request_bytes
        (logs_request(*[log_record()] * 11), "logs", grpc.StatusCode.RESOURCE_EXHAUSTED),
        (logs_request(log_record(nested_kvlist(40))), "logs", grpc.StatusCode.INVALID_ARGUMENT),
    ]
    with running(relay_config(langfuse, **overrides), timeout=3) as relay:
        for i, (data, signal, expected) in enumerate(cases):
            t0 = time.monotonic()
            code, details = call(relay.address, data, method=LOGS_EXPORT if signal == "logs" else TRACES_EXPORT)
            assert code == expected, details
            assert SECRET.decode() not in details and "x" * 100 not in details
            assert time.monotonic() - t0 < 5
            ok_span = span_bytes(attr(string_value(b"fine")), name=b"normal", span_id=bytes([1 + i]) * 8)
            assert call(relay.address, trace_request(ok_span))[0] == grpc.StatusCode.OK
        assert relay.stats.invalid == 5 and relay.stats.refused >= 4
        assert len(langfuse.wait_for_observations(len(cases), timeout=10)) == len(cases)
        assert langfuse.rejected() == []


def test_gzip_bomb_is_refused_after_decompression(langfuse: LangfuseServer) -> None:
    bomb = trace_request(span_bytes(attr(string_value(b"\x00" * (3 << 20)))))  # 3 MB, ~3 KB gzipped
    with running(relay_config(langfuse, **{"limits.max_request_bytes": 1 << 20,
                                           "limits.max_inflight_request_bytes": 1 << 20}), timeout=3) as relay:
        code, _ = call(relay.address, bomb, compression=grpc.Compression.Gzip)
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert call(relay.address, trace_request(span_bytes(b"")), compression=grpc.Compression.Gzip)[0] \
            == grpc.StatusCode.OK


def test_a_full_decode_budget_refuses_with_a_retryable_status(langfuse: LangfuseServer) -> None:
    with running(relay_config(langfuse), timeout=3) as relay:
        budget = relay.admission.decode_budget
        budget.wait_seconds = 0.2
        assert budget.acquire(budget.max_bytes)  # as if a huge request were being decoded
        try:
            code, details = call(relay.address, trace_request(span_bytes(b"")))
            assert code == grpc.StatusCode.UNAVAILABLE and "retry later" in details
        finally:
            budget.release(budget.max_bytes)
        assert call(relay.address, trace_request(span_bytes(b"")))[0] == grpc.StatusCode.OK


# --------------------------------------------------------------------------------------------
# Cost: the check must not double the processing of ordinary traffic
# --------------------------------------------------------------------------------------------
def _best(f: object, n: int = 60) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()  # type: ignore[operator]
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 10]


def test_cost_of_the_checks_on_a_512_span_request(capsys: pytest.CaptureFixture[str]) -> None:
    import gzip

    from promptstamp_relay.core.pipeline import Processor
    from promptstamp_relay.store import MemoryStore
    from tests.otlp_builders import T0, fetch_record, logs

    data = realistic_request(512).SerializeToString()
    limits = LimitsConfig()
    p = Processor(None, MemoryStore())
    p.consume_logs(logs([fetch_record(trace=1000 + j, time=T0) for j in range(64)]), T0)

    def parse() -> ExportTraceServiceRequest:
        r = ExportTraceServiceRequest()
        r.ParseFromString(data)
        return r

    def process(r: ExportTraceServiceRequest) -> None:
        for o in p.consume_traces(r, T0 + 10**9, "default", encoded=data):
            gzip.compress(o.payload, 1, mtime=0)

    plain = _best(parse)
    checked = _best(lambda: decode_traces(data, limits))
    whole = _best(lambda: process(parse()))
    extra = checked - plain
    with capsys.disabled():
        print(f"\n512 spans, {len(data)} bytes: parse {plain * 1e3:.2f} ms, decode+limits "
              f"{checked * 1e3:.2f} ms (+{extra * 1e3:.2f} ms), whole processing {whole * 1e3:.2f} ms "
              f"(+{100 * extra / whole:.0f}%)")
    assert extra < whole  # does not double the processing cost


def test_the_api_tier_keeps_a_bounded_number_of_names_fresh() -> None:
    """Prompt names and labels come from span attributes: invented ones must not grow the set
    of names the relay keeps asking Langfuse about."""
    from promptstamp_relay.store.label_pointers import LabelPointers

    pointers = LabelPointers(lambda tenant: None, max_keys=3)
    for i in range(10):
        assert pointers.lookup("t", f"invented-{i}", "production") is None
    assert len(pointers._wanted) == 3 and pointers.overflow == 7
