"""Fuzzing the receivers' decode path on raw bytes.

The target is :func:`receive_both`: the very handlers the gRPC receiver calls, with the bytes a
caller sent. The only outcomes allowed are an answer or a :class:`Refusal` with a precise
status; anything else (an exception, INTERNAL) is a finding. Inputs are random bytes and
mutations of valid requests (bit flips, truncation, splices, duplicated fields), so that the
fuzzer spends its time past the first byte.

The same target runs under atheris if it is installed (not a dependency)::

    python -c "import atheris, sys; from tests.security.test_fuzz_decode import atheris_main; atheris_main()"
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptstamp_relay.admission import CallInfo, Refusal
from promptstamp_relay.admission.decode import Violation, decode_logs, decode_traces
from promptstamp_relay.config import LimitsConfig
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import fetch_record, gen_attrs, logs, span, traces
from tests.relays import running

from .conftest import relay_config
from .payloads import field, kv, nested_array, nested_kvlist, span_bytes, string_value, trace_request

ALLOWED = {"invalid", "too_large"}
FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))

SEEDS = [
    traces([span(attrs=gen_attrs()), span(span_id=2, attrs={"x": 1, "y": 2.5, "z": True})]).SerializeToString(),
    logs([fetch_record(), fetch_record(version=None, source="fallback")]).SerializeToString(),
    trace_request(span_bytes(field(9, kv(b"a", nested_array(4))) + field(9, kv(b"b", nested_kvlist(4))))),
    trace_request(span_bytes(field(9, kv(b"k", string_value(b"v"))) * 3)),
]
SMALL = LimitsConfig(max_spans_per_request=50, max_attributes_per_span=20, max_attribute_value_bytes=256,
                     max_value_depth=6)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.integers(0, 5))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == 0 and data:  # flip a bit
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == 1:  # truncate
            del data[pos:]
        elif op == 2:  # insert random bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == 3 and data:  # overwrite one byte with a boundary value
            data[pos] = draw(st.sampled_from([0x00, 0x7F, 0x80, 0xFF, 0x0A, 0x12, 0x2A, 0x32]))
        elif op == 4:  # duplicate a slice (repeated fields, oneofs set twice)
            end = draw(st.integers(pos, len(data)))
            data[end:end] = data[pos:end]
        else:  # splice in another seed
            data[pos:pos] = draw(st.sampled_from(SEEDS))
    return bytes(data)


raw = st.one_of(st.binary(max_size=256), mutated())


@FUZZ
@given(data=raw)
def test_decoders_answer_or_raise_a_violation(data: bytes) -> None:
    for decode in (decode_traces, decode_logs):
        try:
            decode(data, SMALL)
        except Violation as v:
            assert v.kind in ("too_large", "invalid") and len(v.message) < 200


@pytest.fixture(scope="module")
def relay() -> Iterator[RelayServer]:
    with running(relay_config(None, **{"limits.max_spans_per_request": 50, "limits.max_attributes_per_span": 20,
                                       "limits.max_attribute_value_bytes": 256,
                                       "limits.max_value_depth": 6, "hold.seconds": 0.05}), timeout=3) as server:
        yield server


INFO = CallInfo({}, "ipv4:127.0.0.1:1")


def receive_both(relay: RelayServer, data: bytes) -> None:
    """The fuzz target: admission of every signal, as the receivers call it."""
    for admit in (relay.admission.traces, relay.admission.logs, relay.admission.metrics):
        try:
            admit(data, INFO)
        except Refusal as r:
            assert r.reason in ALLOWED, (r.reason, r.message)


@FUZZ
@given(data=raw)
def test_receive_handlers_answer_or_refuse_precisely(relay: RelayServer, data: bytes) -> None:
    t0 = time.monotonic()
    receive_both(relay, data)
    assert time.monotonic() - t0 < 2


def atheris_main() -> None:  # pragma: no cover - only with atheris installed
    import sys

    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]

    with running(relay_config(), timeout=3) as server:

        def one(data: bytes) -> None:
            receive_both(server, data)

        atheris.Setup(sys.argv, one)
        atheris.Fuzz()
