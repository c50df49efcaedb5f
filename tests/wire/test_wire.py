"""The byte-level span index and splice agree with protobuf's own decoder and encoder."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c
from promptstamp_relay import wire
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import T0, S, fetch_record, gen_attrs, kvs, logs, span


def build(shape: list[list[list[int]]]) -> ExportTraceServiceRequest:
    """shape[r][s] = kinds of spans: 0 plain, 1 generation resolvable now, 2 generation to hold,
    3 plain with a prompt key, 4 huge generation (> 16 KiB, 3-byte length)."""
    req = ExportTraceServiceRequest()
    n = 0
    for r, scopes in enumerate(shape):
        rs = req.resource_spans.add()
        rs.resource.attributes.extend(kvs({c.SERVICE_NAME: f"svc-{r}"}))
        rs.schema_url = f"https://schema/{r}"
        for s, kinds in enumerate(scopes):
            ss = rs.scope_spans.add()
            ss.scope.name = f"scope-{s}"
            for kind in kinds:
                n += 1
                attrs: dict[str, object] = {"n": n}
                if kind in (1, 4):
                    attrs.update(gen_attrs())
                elif kind == 2:
                    attrs.update(gen_attrs(label="late"))
                elif kind == 3:
                    attrs[c.PROMPT_KEY] = "order-status-answer"
                if kind == 4:
                    attrs["big"] = "x" * 20000
                ss.spans.append(span(f"s{n}", trace=1, span_id=n, start=T0, attrs=attrs))
    return req


shapes = st.lists(
    st.lists(st.lists(st.integers(0, 4), max_size=5), max_size=3), max_size=3
)


def reference_splice(req: ExportTraceServiceRequest, edits: dict[int, bytes]) -> ExportTraceServiceRequest:
    """The splice's semantics on decoded messages, written independently of wire.py: span ``i``
    gets ``edits[i]`` appended (encoded attributes) or is deleted; a scope whose spans were all
    deleted goes, and a resource whose scopes all went; containers that arrived empty stay."""
    out = ExportTraceServiceRequest()
    out.CopyFrom(req)
    flat = 0
    for r in range(len(out.resource_spans)):
        rs = out.resource_spans[r]
        for ss in rs.scope_spans:
            keep = []
            for sp in ss.spans:
                edit = edits.get(flat)
                flat += 1
                if edit is wire.DELETE:
                    continue
                if edit is not None:
                    sp.MergeFromString(edit)
                keep.append(sp)
            if len(keep) != len(ss.spans):
                copies = [type(sp)() for sp in keep]
                for dst, src in zip(copies, keep, strict=True):
                    dst.CopyFrom(src)
                del ss.spans[:]
                ss.spans.extend(copies)
    for r in range(len(out.resource_spans) - 1, -1, -1):
        rs = out.resource_spans[r]
        before = len(rs.scope_spans)
        for s in range(before - 1, -1, -1):
            if not rs.scope_spans[s].spans and req.resource_spans[r].scope_spans[s].spans:
                del rs.scope_spans[s]
        if before and not rs.scope_spans:
            del out.resource_spans[r]
    return out


STAMP = kvs({"added": "x"})[0].SerializeToString()
edit_kinds = st.sampled_from([None, "delete", "stamp"])


@settings(max_examples=200, deadline=None)
@given(shape=shapes, kinds=st.lists(edit_kinds, max_size=40))
def test_splice_matches_its_definition_and_the_c_twin_matches_python(
    shape: list[list[list[int]]], kinds: list[str | None]
) -> None:
    req = build(shape)
    data = req.SerializeToString()
    n = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
    edits = {i: (wire.DELETE if k == "delete" else b"\x4a" + bytes([len(STAMP)]) + STAMP)
             for i, k in enumerate(kinds[:n]) if k is not None}
    saved = wire._c
    wire._c = None
    try:
        python = wire.splice(data, wire.index_request(data), edits)
    finally:
        wire._c = saved
    assert ExportTraceServiceRequest.FromString(python) == reference_splice(req, edits)
    if wire.native():
        assert wire.splice(data, wire.index_request(data), edits) == python  # byte for byte


def run(req: ExportTraceServiceRequest, encoded: bytes | None, native: bool = True) -> tuple[list[bytes], int]:
    p = Processor(StampSettings(hold_ns=2 * S), MemoryStore(), early_release=False)
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    copy = ExportTraceServiceRequest()
    copy.CopyFrom(req)
    with pytest.MonkeyPatch.context() as mp:
        if not native:
            mp.setattr(wire, "_c", None)
        out = p.consume_traces(copy, T0, encoded=encoded)
    return [o.payload for o in out], len(p.hold)


@settings(max_examples=100, deadline=None)
@given(shape=shapes)
def test_bytes_the_walk_cannot_use_are_replaced_by_the_request_re_encoded(shape: list[list[list[int]]]) -> None:
    """One path: the output is the same whether the caller's bytes walk, do not walk, or do not
    match the decoded request (then the request is re-encoded and walked)."""
    req = build(shape)
    data = req.SerializeToString()
    expected = run(req, data)
    for bad in (None, b"\x0f", b"", b"\x0a\x00" * 3):
        assert run(req, bad) == expected, bad
    assert run(req, data, native=False) == expected


@pytest.fixture(params=["native", "python"])
def impl(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "native":
        if os.environ.get("PROMPTSTAMP_PURE_PYTHON"):
            pytest.skip("PROMPTSTAMP_PURE_PYTHON is set")
        if not wire.native():
            pytest.fail("the C extension promptstamp_relay.wire._wirec is not built (pip install -e . builds it)")
    else:
        monkeypatch.setattr(wire, "_c", None)
    return str(request.param)


def test_index_finds_every_span_in_decode_order(impl: str) -> None:
    req = build([[[0, 4, 1], []], [[3]], []])
    data = req.SerializeToString()
    idx = wire.index_request(data)
    decoded = [sp for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans]
    assert idx.span_count == len(decoded)
    for i, sp in enumerate(decoded):
        assert data[idx.span_starts[i]:idx.span_ends[i]] == sp.SerializeToString()
        r, s, k = idx.locate(i)
        assert req.resource_spans[r].scope_spans[s].spans[k] == sp


def test_unknown_fields_and_empty_containers_survive(impl: str) -> None:
    req = build([[[1]]])
    data = req.SerializeToString() + b"\xa2\x06\x03abc"  # an unknown length-delimited field 100
    idx = wire.index_request(data)
    out = wire.splice(data, idx, {0: b"\x4a\x00"})  # append an empty attribute
    assert out.endswith(b"\xa2\x06\x03abc")
    assert len(ExportTraceServiceRequest.FromString(out).resource_spans[0].scope_spans[0].spans[0].attributes) == \
        len(req.resource_spans[0].scope_spans[0].spans[0].attributes) + 1


@pytest.mark.parametrize("garbage", [b"\x0a\x05\x12", b"\x0a\xff", b"\x0f", b"\x0a\x02\x12\x05"])
def test_malformed_bytes_raise_wire_error(garbage: bytes, impl: str) -> None:
    with pytest.raises(wire.WireError):
        wire.index_request(garbage)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_native_walk_never_crashes_and_agrees_on_garbage(data: bytes) -> None:
    """Arbitrary bytes: both walks either fail or find the same spans."""
    if not wire.native():
        return
    try:
        native = wire.index_request(data)
    except wire.WireError:
        native = None
    saved = wire._c
    wire._c = None
    try:
        python = wire.index_request(data)
    except wire.WireError:
        python = None
    finally:
        wire._c = saved
    if native is not None and python is not None:
        assert (native.span_starts, native.span_ends, native.scope_counts) == (
            python.span_starts, python.span_ends, python.scope_counts)
        wire.splice(data, native, {i: wire.DELETE for i in range(native.span_count)})
        wire.spans_ok(data, 10)


def test_spans_ok_matches_the_exact_checks() -> None:
    if not wire.native():
        pytest.skip("pure-Python build: the exact checks run instead")
    good = build([[[0, 1]]])
    assert wire.spans_ok(good.SerializeToString(), 128) is True
    bad_id = build([[[0]]])
    bad_id.resource_spans[0].scope_spans[0].spans[0].trace_id = b"\x01" * 15
    assert wire.spans_ok(bad_id.SerializeToString(), 128) is False
    zero = build([[[0]]])
    zero.resource_spans[0].scope_spans[0].spans[0].span_id = b"\x00" * 8
    assert wire.spans_ok(zero.SerializeToString(), 128) is False
    many = build([[[1]]])
    assert wire.spans_ok(many.SerializeToString(), 3) is False  # gen spans carry 5 attributes
    link = build([[[0]]])
    link.resource_spans[0].scope_spans[0].spans[0].links.add(trace_id=b"\x01" * 16, span_id=b"\x01" * 7)
    assert wire.spans_ok(link.SerializeToString(), 128) is False


def test_native_scan_reads_attributes_like_the_decoder() -> None:
    if not wire.native():
        pytest.skip("pure-Python build")
    req = build([[[1]]])
    sp = req.resource_spans[0].scope_spans[0].spans[0]
    sp.attributes.extend(kvs({"gen_ai.request.model": 7}))  # a later, non-string duplicate wins
    data = req.SerializeToString()
    idx = wire.index_request(data)
    keys = ("gen_ai.request.model", c.PROMPT_KEY, c.PROMPT_LABEL, "absent")
    pairs = (tuple(k.encode() for k in keys), keys)
    found, trace_id, start, name = wire.scan_span(data, idx, 0, pairs)
    assert found == {"gen_ai.request.model": True, c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}
    assert (trace_id, start, name) == (sp.trace_id, sp.start_time_unix_nano, sp.name)
    saved = wire._c
    wire._c = None
    try:
        assert wire.scan_span(data, wire.index_request(data), 0, pairs) == (found, trace_id, start, name)
    finally:
        wire._c = saved


# An unknown field 100 as a group (wire type 3) holding a varint and a nested group: protobuf's
# decoder keeps it, so the walk must step over it wherever it is.
GROUP = bytes([0xA3, 0x06, 0x08, 0x01, 0xAB, 0x06, 0x10, 0x02, 0xAC, 0x06, 0xA4, 0x06])


@pytest.mark.parametrize("where", ["request", "resource", "scope", "span"])
def test_unknown_groups_are_walked_and_kept(where: str, impl: str) -> None:
    req = build([[[1, 2]]])
    if where == "span":
        sp = req.resource_spans[0].scope_spans[0].spans[0]
        sp.MergeFromString(GROUP)
    elif where == "scope":
        req.resource_spans[0].scope_spans[0].MergeFromString(GROUP)
    elif where == "resource":
        req.resource_spans[0].MergeFromString(GROUP)
    else:
        req.MergeFromString(GROUP)
    data = req.SerializeToString()
    assert GROUP in data
    idx = wire.index_request(data)
    assert idx.span_count == 2
    p = Processor(StampSettings(hold_ns=2 * S), MemoryStore(), early_release=False)
    p.consume_logs(logs([fetch_record(version=3)]), T0)
    out = p.consume_traces(ExportTraceServiceRequest.FromString(data), T0, encoded=data)
    assert len(p.hold) == 1 and GROUP in out[0].payload
