"""The one-pass span scan (``wire.scan_spans``): the C scan reads exactly what the decoder reads.

Spans are built as concatenated encodings (protobuf merges them: duplicate attributes, several
``value`` fields in one KeyValue, a key written after its value, several status messages), so
the scan is checked against the decoder's merge rules, not only against what one encoder writes.
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

import promptstamp_contract as c
from promptstamp_relay import wire
from promptstamp_relay.core.stamp import StampSettings

KEYS = [c.PROMPT_KEY, c.PROMPT_LABEL, "model", "gen_ai.request.model", "retrieval.embedding.model",
        c.GEN_AI_OPERATION_NAME, c.GEN_AI_USAGE_INPUT_TOKENS, c.LLM_TOKEN_COUNT_COMPLETION, "other", "",
        c.LF_OBSERVATION_TYPE, "operation.name", "genkit:metadata:subtype", "gen_ai.prompt.name"]
SCAN = StampSettings().scan_keys
EVENTS = [c.FETCH_EVENT_NAME, "app.prompt.fetched", "exception"]
POISON = ["constructor", "__proto__", "toString", "constructo", "chat"]  # and two that are not


def _len(n: int) -> bytes:
    return wire.encode_varint(n)


def _field(tag: int, body: bytes) -> bytes:
    return bytes([tag]) + _len(len(body)) + body


values = st.one_of(
    st.text(max_size=6).map(lambda s: AnyValue(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.floats().map(lambda f: AnyValue(double_value=f)),
    st.sampled_from([5.0, -0.0, 3.5, 2.0**53 + 2, -(2.0**63), 1e300, float("inf"), float("nan")]).map(
        lambda f: AnyValue(double_value=f)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.just(AnyValue()),
    st.just(AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="chat")]))),
    st.sampled_from(POISON).map(lambda s: AnyValue(string_value=s)),
)


@st.composite
def key_values(draw: st.DrawFn) -> bytes:
    """One encoded KeyValue: the usual layout, the key after the value, or the value in parts."""
    key = _field(0x0A, draw(st.sampled_from(KEYS)).encode())
    parts = [_field(0x12, v.SerializeToString()) for v in draw(st.lists(values, min_size=0, max_size=3))]
    layout = draw(st.sampled_from(["key first", "key last", "two keys"]))
    if layout == "key first":
        body = key + b"".join(parts)
    elif layout == "key last":
        body = b"".join(parts) + key
    else:
        body = _field(0x0A, draw(st.sampled_from(KEYS)).encode()) + b"".join(parts) + key
    return _field(0x4A, body)


@st.composite
def span_bytes(draw: st.DrawFn) -> bytes:
    out = []
    for _ in range(draw(st.integers(1, 3))):  # pieces merged by the decoder
        piece = Span(trace_id=draw(st.binary(min_size=16, max_size=16)), span_id=draw(st.binary(min_size=8, max_size=8)),
                     name=draw(st.text(max_size=5)), start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                     end_time_unix_nano=draw(st.integers(0, 2**64 - 1)))
        if draw(st.booleans()):
            piece.status.code = draw(st.sampled_from([0, 1, 2]))
            piece.status.message = draw(st.text(max_size=3))
        raw = piece.SerializeToString()
        if draw(st.booleans()):  # a status code as a negative int32 varint (10 bytes)
            raw += _field(0x7A, b"\x18" + wire.encode_varint(2**64 - 5))
        events = b"".join(_field(0x5A, b"".join(_field(0x12, n.encode()) for n in names))  # last name wins
                          for names in draw(st.lists(st.lists(st.sampled_from(EVENTS), max_size=2), max_size=2)))
        out.append(raw + b"".join(draw(st.lists(key_values(), max_size=6))) + events)
    if draw(st.booleans()):
        out.append(struct.pack("<BQ", 0x41, draw(st.integers(0, 2**64 - 1))))  # end time alone, last
    return b"".join(out)


def request(spans: list[bytes]) -> bytes:
    return _field(0x0A, _field(0x12, b"".join(_field(0x12, s) for s in spans)))


def python_scan(data: bytes, keys: wire.ScanKeys = SCAN) -> wire.Scan:
    saved = wire._c
    wire._c = None
    try:
        return wire.scan_spans(data, wire.index_request(data), keys)
    finally:
        wire._c = saved


def python_triage(data: bytes, keys: wire.ScanKeys = SCAN) -> bool:
    saved = wire._c
    wire._c = None
    try:
        return wire.triage(data, keys)
    finally:
        wire._c = saved


@settings(max_examples=300, deadline=None)
@given(spans=st.lists(span_bytes(), max_size=5))
def test_the_c_scan_reads_what_the_decoder_reads(spans: list[bytes]) -> None:
    data = request(spans)
    req = ExportTraceServiceRequest.FromString(data)  # the relay only scans what decoded
    python = python_scan(data)
    decoded = [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    want = [i for i, sp in enumerate(decoded)
            if not SCAN.needs.isdisjoint(kv.key for kv in sp.attributes)
            and not SCAN.markers.isdisjoint(kv.key for kv in sp.attributes)]
    assert [x[0] for x in python.candidates] == want
    assert python.events == [i for i, sp in enumerate(decoded) if any(ev.name == c.FETCH_EVENT_NAME for ev in sp.events)]
    for x in python.candidates:
        assert x == wire.scan_decoded(x[0], 0, 0, decoded[x[0]], SCAN)
    assert python.suspects == [i for i, sp in enumerate(decoded)
                               if any(kv.key in SCAN.poison and wire.suspect_value(kv.value, SCAN.poison_values)
                                      for kv in sp.attributes)]
    wanted = bool(python.events or python.suspects) or any(
        not SCAN.needs.isdisjoint(kv.key for kv in sp.attributes) for sp in decoded)
    assert python_triage(data) is wanted
    if not wire.native():
        pytest.skip("pure-Python build")
    assert wire.scan_spans(data, wire.index_request(data), SCAN) == python
    assert wire.triage(data, SCAN) is wanted
    for i, sp in enumerate(decoded):  # one span alone, in either build
        one = sp.SerializeToString()
        assert wire.scan_one(one, SCAN) == (0, *wire.scan_decoded(i, 0, 0, sp, SCAN)[1:])
    every = wire.ScanKeys(frozenset(), frozenset(), SCAN.keys, SCAN.counts)  # no need key: every span
    assert [x[0] for x in python_scan(data, every).candidates] == list(range(len(decoded)))
    assert wire.scan_spans(data, wire.index_request(data), every) == python_scan(data, every)


def test_only_whole_keys_make_a_candidate() -> None:
    """``retrieval.embedding.model`` contains ``model`` but is not a generation marker key."""
    kv = [_field(0x4A, _field(0x0A, c.PROMPT_KEY.encode()) + _field(0x12, AnyValue(string_value="k").SerializeToString()))]
    other = _field(0x4A, _field(0x0A, b"retrieval.embedding.model") + _field(0x12, b"\x0a\x01x"))
    model = _field(0x4A, _field(0x0A, b"model") + _field(0x12, b"\x0a\x01x"))
    sid = _field(0x12, b"\x01" * 8)
    data = request([sid + kv[0] + other, sid + kv[0] + model])
    for got in (python_scan(data), wire.scan_spans(data, wire.index_request(data), SCAN)):
        assert [x[0] for x in got.candidates] == [1]
        assert dict(got.candidates[0][3]) == {c.PROMPT_KEY: "k", "model": "x"}


def test_candidates_say_where_they_are() -> None:
    """(resource_spans, scope_spans) of each candidate, empty containers included."""
    gen = _field(0x4A, _field(0x0A, c.PROMPT_KEY.encode()) + _field(0x12, b"\x0a\x01k")) + \
        _field(0x4A, _field(0x0A, b"model") + _field(0x12, b"\x0a\x01x"))
    scope = lambda *spans: _field(0x12, b"".join(_field(0x12, sp) for sp in spans))  # noqa: E731
    data = _field(0x0A, scope(b"", gen) + scope() + scope(gen)) + _field(0x0A, b"") + _field(0x0A, scope(gen))
    idx = wire.index_request(data)
    for got in (python_scan(data), wire.scan_spans(data, idx, SCAN)):
        assert [x[:3] for x in got.candidates] == [(1, 0, 0), (2, 0, 2), (3, 2, 0)]
        assert [idx.locate(x[0])[:2] for x in got.candidates] == [(0, 0), (0, 2), (2, 0)]


def test_suspects_are_poison_keys_with_a_poison_name_or_no_string_at_all() -> None:
    """What the scan hands to the exact judgement (``langfuse_typing.poison``): a value the mapper
    may throw on, under a key it looks up; nothing else (``constructo`` and ``chat`` are plain)."""
    def kv(key: str, value: AnyValue) -> bytes:
        return _field(0x4A, _field(0x0A, key.encode()) + _field(0x12, value.SerializeToString()))

    sid = _field(0x12, b"\x01" * 8)
    spans = [
        sid + kv(c.GEN_AI_OPERATION_NAME, AnyValue(string_value="constructor")),  # 0: suspect
        sid + kv(c.GEN_AI_OPERATION_NAME, AnyValue(string_value="constructo")),  # 1
        sid + kv("other", AnyValue(string_value="__proto__")),  # 2: not a key the mapper looks up
        sid + kv("operation.name", AnyValue(int_value=3)),  # 3: suspect (startsWith on a number)
        sid + kv(c.LF_OBSERVATION_TYPE, AnyValue()),  # 4: no value set: "{}" to Langfuse
        sid + kv(c.LF_OBSERVATION_TYPE, AnyValue(string_value="__proto__")),  # 5: suspect
    ]
    data = request(spans)
    for got in (python_scan(data), wire.scan_spans(data, wire.index_request(data), SCAN)):
        assert got.suspects == [0, 3, 5] and got.candidates == []
    for one, want in zip(spans, [True, False, False, True, False, True], strict=True):
        assert python_triage(request([one])) is want
        assert wire.triage(request([one]), SCAN) is want


def test_triage_finds_a_need_key_or_a_fetch_event_and_stops_at_the_first() -> None:
    sid = _field(0x12, b"\x01" * 8)
    key = _field(0x4A, _field(0x0A, c.PROMPT_KEY.encode()) + _field(0x12, b"\x0a\x01k"))
    event = _field(0x5A, _field(0x12, c.FETCH_EVENT_NAME.encode()))
    plain = sid + _field(0x4A, _field(0x0A, b"http.method") + _field(0x12, b"\x0a\x03GET"))
    for spans, want in (([plain] * 3, False), ([plain, sid + key], True), ([sid + event, plain], True),
                        ([], False)):
        data = request(spans)
        assert python_triage(data) is want
        assert wire.triage(data, SCAN) is want
    if wire.native():  # bytes that do not walk (the decoder refuses them too): the processor decides
        assert wire.triage(b"\x0a\x05\x12" + c.PROMPT_KEY.encode(), SCAN) is True
