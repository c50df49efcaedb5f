"""The encoded ``ExportTraceServiceRequest`` as byte ranges: find spans, splice edits in.

Why: decoding every attribute of every span into Python objects is the largest cost of a
naive relay, and re-encoding the whole request is the second. Here the request's bytes are
walked down to the span level only (resource_spans → scope_spans → spans); spans worth a
close look are found by one pass over their attribute keys (:func:`scan_spans`, C speed) or by
searching the bytes for marker strings; and the output is the input with a few spans' bytes
changed — appended attributes, or removed — and the enclosing length prefixes rewritten.
Unchanged parts are copied, never re-encoded.

A marker prefilter can only widen, never narrow: the decoded (or scanned) span is the judge,
and the scan reads keys and values exactly as the decoder does (merged fields included).
Protobuf semantics make the splice exact: appending encoded ``attributes`` entries to a span
appends to that repeated field and leaves every other field as it was.
"""

from __future__ import annotations

import bisect
import importlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

__all__ = [
    "DELETE",
    "Candidate",
    "Node",
    "RequestIndex",
    "Scan",
    "ScanKeys",
    "WireError",
    "index_request",
    "native",
    "scan_decoded",
    "scan_one",
    "scan_span",
    "scan_spans",
    "spans_ok",
    "splice",
    "suspect_value",
    "triage",
    "walk",
]

def _load_native() -> Any:
    """The C version of the walk, search and splice below (setup.py; optional)."""
    if os.environ.get("PROMPTSTAMP_PURE_PYTHON"):
        return None
    try:
        module = importlib.import_module("promptstamp_relay.wire._wirec")
    except ImportError:
        return None
    # A stale build from an older checkout lacks newer functions: use none of it then.
    names = ("walk", "marked", "splice", "spans_ok", "scan_span", "scan_spans", "triage")
    return module if all(hasattr(module, n) for n in names) else None


_c: Any = _load_native()


def native() -> bool:
    """Whether the C extension is in use (else the pure-Python walk: same results, slower)."""
    return _c is not None


class WireError(ValueError):
    pass


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    n = len(data)
    while True:
        if pos >= n:
            raise WireError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint too long")


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@dataclass(slots=True)
class Node:
    """One length-delimited field: ``data[head:start]`` is its tag and length, ``data[start:end]``
    its content; ``children`` are the nested nodes walked (scope_spans, spans)."""

    head: int
    start: int
    end: int
    children: list[Node]


def _fields(data: bytes, start: int, end: int, want: int) -> list[Node]:
    """Every length-delimited field number ``want`` in ``data[start:end]``, in order."""
    out: list[Node] = []
    pos = start
    while pos < end:
        head = pos
        tag = data[pos]
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = _varint(data, pos)
        field, wt = tag >> 3, tag & 7
        if wt == 2:
            b = data[pos]
            if b < 0x80:
                n = b
                pos += 1
            elif data[pos + 1] < 0x80:  # lengths up to 16 KiB: two bytes, inline
                n = (b & 0x7F) | (data[pos + 1] << 7)
                pos += 2
            else:
                n, pos = _varint(data, pos)
            if pos + n > end:
                raise WireError("field overruns its message")
            if field == want:
                out.append(Node(head, pos, pos + n, []))
            pos += n
        elif wt == 0:
            pos = _varint(data, pos)[1]
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 3:
            pos = _skip_group(data, pos, end, field)
        else:
            raise WireError(f"unsupported wire type {wt}")
    if pos != end:
        raise WireError("message overruns its bounds")
    return out


_MAX_GROUP_DEPTH = 128


def _skip_group(data: bytes, pos: int, end: int, field: int) -> int:
    """The position after the group (wire type 3) of ``field`` that starts at ``pos``.

    Protobuf's decoder keeps groups as unknown fields, so the walk must step over them too.
    """
    open_groups = [field]
    while open_groups:
        tag, pos = _varint(data, pos)
        f, wt = tag >> 3, tag & 7
        if wt == 0:
            pos = _varint(data, pos)[1]
        elif wt == 1:
            pos += 8
        elif wt == 5:
            pos += 4
        elif wt == 2:
            n, pos = _varint(data, pos)
            pos += n
        elif wt == 3:
            if len(open_groups) == _MAX_GROUP_DEPTH:
                raise WireError("groups nested too deep")
            open_groups.append(f)
        elif wt == 4:
            if open_groups.pop() != f:
                raise WireError("mismatched end of group")
        else:
            raise WireError(f"unsupported wire type {wt}")
        if pos > end:
            raise WireError("field overruns its message")
    return pos


@dataclass(slots=True)
class RequestIndex:
    span_starts: list[int]  # content start of every span, in decode order
    span_ends: list[int]
    scope_counts: list[list[int]]  # per resource_spans, the span count of each scope_spans
    nodes: list[Node] | None = None  # the tree, from the pure-Python walk only
    _firsts: list[int] = field(default_factory=list)  # flat index of each non-empty scope's first span
    _where: list[tuple[int, int]] = field(default_factory=list)  # that scope's (resource, scope)

    def locate(self, flat: int) -> tuple[int, int, int]:
        """(resource_spans index, scope_spans index, spans index) of span number ``flat``."""
        if not 0 <= flat < len(self.span_starts):
            raise IndexError("span index out of range")
        if not self._firsts:
            n = 0
            for r, scopes in enumerate(self.scope_counts):
                for s, count in enumerate(scopes):
                    if count:
                        self._firsts.append(n)
                        self._where.append((r, s))
                        n += count
        k = bisect.bisect_right(self._firsts, flat) - 1
        r, s = self._where[k]
        return r, s, flat - self._firsts[k]

    @property
    def span_count(self) -> int:
        return len(self.span_starts)

    def marked(self, data: bytes, markers: Iterable[bytes], among: Iterable[int] | None = None) -> set[int]:
        """Indexes of the spans whose bytes contain any of ``markers``.

        With ``among``, only those spans are searched (each within its own bytes).
        """
        starts, ends = self.span_starts, self.span_ends
        if not starts:
            return set()
        if _c is not None:
            wanted = None if among is None else sorted(among)
            return set(_c.marked(data, starts, ends, tuple(markers), wanted))
        hits: set[int] = set()
        if among is not None:
            for i in among:
                s, e = starts[i], ends[i]
                for m in markers:
                    if data.find(m, s, e) != -1:
                        hits.add(i)
                        break
            return hits
        for m in markers:
            pos = data.find(m, starts[0])
            while pos != -1:
                i = bisect.bisect_right(starts, pos) - 1
                hits.add(i)
                # Jump to the next span: one hit per span is enough.
                nxt = starts[i + 1] if i + 1 < len(starts) else len(data)
                pos = data.find(m, max(nxt, pos + 1))
        return hits


def index_request(data: bytes) -> RequestIndex:
    """Walk ``data`` (an encoded ExportTraceServiceRequest) down to its spans."""
    if _c is not None:
        try:
            starts, ends, counts = _c.walk(data)
        except ValueError as e:
            raise WireError(str(e)) from None
        return RequestIndex(starts, ends, counts)
    try:
        rss = _fields(data, 0, len(data), 1)  # ExportTraceServiceRequest.resource_spans = 1
        starts = []
        ends = []
        counts = []
        for rs in rss:
            rs.children = _fields(data, rs.start, rs.end, 2)  # ResourceSpans.scope_spans = 2
            scopes = []
            for ss in rs.children:
                ss.children = spans = _fields(data, ss.start, ss.end, 2)  # ScopeSpans.spans = 2
                scopes.append(len(spans))
                for sp in spans:
                    starts.append(sp.start)
                    ends.append(sp.end)
            counts.append(scopes)
    except IndexError:
        raise WireError("truncated message") from None
    return RequestIndex(starts, ends, counts, rss)


def walk(encoded: bytes | None, request: ExportTraceServiceRequest) -> tuple[bytes, RequestIndex]:
    """The bytes to splice and their index: ``encoded`` when it walks to the spans ``request``
    has, else ``request`` re-encoded (one path for every request the decoder accepted)."""
    if encoded is not None:
        try:
            index = index_request(encoded)
        except WireError:
            pass
        else:
            decoded = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
            if index.span_count == decoded:
                return encoded, index
    data = request.SerializeToString()
    return data, index_request(data)  # the encoder's own output always walks


#: What :func:`scan_span` gives: the attributes found, trace id, start time and name.
Scanned = tuple[dict[str, object], bytes, int, str]


def scan_span(
    data: bytes, index: RequestIndex, i: int, keys: tuple[tuple[bytes, ...], tuple[str, ...]]
) -> Scanned:
    """Span ``i``'s attributes among ``keys`` (the last occurrence wins; a str value, or True for
    any other value), its trace id, start time and name, read from its bytes."""
    start, end = index.span_starts[i], index.span_ends[i]
    if _c is not None:
        found, trace_id, start_ns, name = _c.scan_span(data, start, end, *keys)
        return found, trace_id, start_ns, name
    span = Span.FromString(data[start:end])
    wanted = frozenset(keys[1])
    found = {}
    for kv in span.attributes:
        if kv.key in wanted:
            v = kv.value
            found[kv.key] = v.string_value if v.WhichOneof("value") == "string_value" else True
    return found, bytes(span.trace_id), span.start_time_unix_nano, span.name


@dataclass(frozen=True)
class ScanKeys:
    """What :func:`scan_spans` looks for: spans with an attribute keyed by any of ``needs`` and
    one keyed by any of ``markers`` (every span when ``needs`` is empty); of those, the values of
    ``keys`` and one count per group of ``counts`` (e.g. the keys an input token count may be
    under, in order of preference); the spans with an event named ``event`` (none when it is
    empty); and the spans with a :func:`suspect_value` under any of the ``poison`` keys (the
    values Langfuse's type mapper may throw on: ``poison_values``, or not a string)."""

    needs: frozenset[str]
    markers: frozenset[str]
    keys: tuple[str, ...]
    counts: tuple[tuple[str, ...], ...] = ()
    event: str = ""
    poison: frozenset[str] = frozenset()
    poison_values: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        flat = [k for group in self.counts for k in group]
        if len(set(flat)) != len(flat) or len(flat) > 32:
            raise ValueError("count keys: at most 32, each in one group only")
        enc = object.__setattr__
        enc(self, "_args", (tuple(sorted(k.encode() for k in self.needs)),
                            tuple(sorted(k.encode() for k in self.markers)),
                            tuple(k.encode() for k in self.keys), self.keys,
                            tuple(k.encode() for k in flat), tuple(len(g) for g in self.counts),
                            self.event.encode()))
        enc(self, "_poison_args", (tuple(sorted(k.encode() for k in self.poison)),
                                   tuple(sorted(v.encode() for v in self.poison_values))))
        # The pure-Python prefilter: a span holding a key holds its bytes (widens, never narrows).
        enc(self, "_needles", tuple(k.encode() for k in sorted(self.markers)))
        enc(self, "_need_needles", tuple(k.encode() for k in sorted(self.needs)))
        enc(self, "_poison_needles", self._poison_args[0])  # type: ignore[attr-defined]


#: One candidate span as :func:`scan_spans` gives it: (index, resource_spans index, scope_spans
#: index, found, trace id, start time, name, span id, end time, status code, counts).
Candidate = tuple[
    int, int, int, tuple[tuple[str, object], ...], bytes, int, str, bytes, int, int, tuple["int | None", ...]
]


class Scan(NamedTuple):
    candidates: list[Candidate]
    events: list[int]  # the spans with an event named ScanKeys.event, in order
    suspects: list[int]  # the spans with a suspect value under a ScanKeys.poison key, in order


def suspect_value(value: AnyValue, poison_values: frozenset[str]) -> bool:
    """Might this attribute value make Langfuse's type mapper throw, under a key it looks up? It
    is set, and is not a string outside ``poison_values`` (an array is looked up by its
    ``String()``; a number or boolean breaks a string method). Only a suspect: the judgement is
    ``promptstamp_contract.langfuse_typing``'s, on the decoded value."""
    which = value.WhichOneof("value")
    return which is not None and (which != "string_value" or value.string_value in poison_values)


def _suspect(span: Span, keys: ScanKeys) -> bool:
    poison, values = keys.poison, keys.poison_values
    return any(kv.key in poison and suspect_value(kv.value, values) for kv in span.attributes)


def scan_spans(data: bytes, index: RequestIndex, keys: ScanKeys) -> Scan:
    """One pass over every span's attribute keys and event names (C speed; the fallback decodes).

    ``candidates``: every span (in order) with an attribute keyed by any of ``keys.needs`` and one
    keyed by any of ``keys.markers`` — whole keys, as the decoder reads them — with what stamping reads of
    it (:func:`scan_decoded` is the definition). ``events``: the spans with an event named
    ``keys.event``. ``suspects``: the spans with an attribute keyed by any of ``keys.poison``
    whose value is a :func:`suspect_value` (any of its occurrences, whatever else the span carries).
    """
    starts, ends = index.span_starts, index.span_ends
    if not starts:
        return Scan([], [], [])
    if _c is not None:
        return Scan(*_c.scan_spans(data, starts, ends, index.scope_counts,
                                   *keys._args, *keys._poison_args))  # type: ignore[attr-defined]
    needs: tuple[bytes, ...] = keys._need_needles  # type: ignore[attr-defined]
    event: bytes = keys._args[-1]  # type: ignore[attr-defined]
    needles: tuple[bytes, ...] = keys._needles  # type: ignore[attr-defined]
    poison: tuple[bytes, ...] = keys._poison_needles  # type: ignore[attr-defined]
    out = Scan([], [], [])
    for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
        may_event = bool(event) and data.find(event, s, e) != -1
        may_stamp = not needs or (
            any(data.find(n, s, e) != -1 for n in needs) and any(data.find(m, s, e) != -1 for m in needles))
        may_throw = any(data.find(p, s, e) != -1 for p in poison)
        if not (may_event or may_stamp or may_throw):
            continue
        span = Span.FromString(data[s:e])
        if may_event and any(ev.name == keys.event for ev in span.events):
            out.events.append(i)
        if may_throw and _suspect(span, keys):
            out.suspects.append(i)
        present = {kv.key for kv in span.attributes}
        if may_stamp and (not needs or (not keys.needs.isdisjoint(present)
                                        and not keys.markers.isdisjoint(present))):
            r, sc, _ = index.locate(i)
            out.candidates.append(scan_decoded(i, r, sc, span, keys))
    return out


def triage(data: bytes, keys: ScanKeys) -> bool:
    """Would :func:`scan_spans` find anything in the encoded request ``data``: a span with an
    attribute keyed by any of ``keys.needs`` (a candidate needs one), an event named
    ``keys.event``, or a suspect? One walk over the bytes that builds nothing and stops at the
    first such span (C); True when the bytes do not walk (the processor re-encodes those). What
    the relay asks of a request before forwarding it as it came: the pass-through path's one
    pass (no index, no scan)."""
    if _c is not None:
        try:
            return bool(_c.triage(data, keys._need_needles, keys._args[-1], *keys._poison_args))  # type: ignore[attr-defined]
        except ValueError:
            return True
    needles = keys._need_needles + keys._poison_needles + ((keys._args[-1],) if keys.event else ())  # type: ignore[attr-defined]
    if not any(n in data for n in needles):  # a key or name in a span holds its bytes
        return False
    try:
        request = ExportTraceServiceRequest.FromString(data)
    except Exception:  # the decoder's own errors: the processor decides
        return True
    return any(not keys.needs.isdisjoint(kv.key for kv in span.attributes)
               or (keys.event and any(ev.name == keys.event for ev in span.events))
               or _suspect(span, keys)
               for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans)


def scan_one(span: bytes, keys: ScanKeys) -> Candidate:
    """What :func:`scan_spans` gives for one encoded span alone (index, resource and scope 0),
    whatever ``keys.needs`` and ``keys.markers`` say."""
    if _c is not None:
        args = ((), (), *keys._args[2:])  # type: ignore[attr-defined]
        candidates, _ = _c.scan_spans(span, [0], [len(span)], [[1]], *args)
        return candidates[0]  # type: ignore[no-any-return]
    return scan_decoded(0, 0, 0, Span.FromString(span), keys)


def scan_decoded(i: int, r: int, s: int, span: Span, keys: ScanKeys) -> Candidate:
    """What :func:`scan_spans` gives for span ``i`` of scope ``s`` of resource ``r``, from the
    decoded span: the definition the C scan is checked against (``needs``, ``markers`` and
    ``event`` are not looked at here). ``found``: (key, value) for each of ``keys.keys``
    present, in that order: its str value, or True for any other value (the last occurrence
    wins); the same attributes give the same tuple (hashable: a cache key). ``counts``: per group of
    ``keys.counts``, the first key whose last int or double value is an int, or a float with
    an integral value (as an int); None when no key of the group has one."""
    wanted = frozenset(keys.keys)
    numeric = {k for group in keys.counts for k in group}
    found: dict[str, object] = {}
    numbers: dict[str, int | float] = {}
    for kv in span.attributes:
        v = kv.value
        which = v.WhichOneof("value")
        if kv.key in wanted:
            found[kv.key] = v.string_value if which == "string_value" else True
        if kv.key in numeric and which in ("int_value", "double_value"):
            numbers[kv.key] = getattr(v, which)
    items = tuple((k, found[k]) for k in keys.keys if k in found)
    return (i, r, s, items, bytes(span.trace_id), span.start_time_unix_nano, span.name, bytes(span.span_id),
            span.end_time_unix_nano, int(span.status.code), tuple(_count(numbers, g) for g in keys.counts))


def _count(numbers: Mapping[str, int | float], group: tuple[str, ...]) -> int | None:
    for k in group:
        v = numbers.get(k)
        if isinstance(v, int):
            return v
        if isinstance(v, float) and v.is_integer():
            return int(v)
    return None


def spans_ok(data: bytes, max_attributes: int) -> bool | None:
    """Every span's ids well-formed and its attribute/event/link counts within
    ``max_attributes``? None when only the slow, exact check can tell (no C extension)."""
    if _c is None:
        return None
    return bool(_c.spans_ok(data, max_attributes))


#: An edit that removes a span (it is being held).
DELETE = b"\x00delete"

_TAG_RESOURCE_SPANS = b"\x0a"  # field 1, length-delimited
_TAG_SCOPE_SPANS = b"\x12"  # field 2
_TAG_SPAN = b"\x12"  # field 2


def splice(data: bytes, index: RequestIndex, edits: Mapping[int, bytes]) -> bytes:
    """``data`` with span ``i`` extended by ``edits[i]`` (encoded attributes) or removed
    (``DELETE``). A scope whose spans were all removed goes too, and so does a resource whose
    scopes all went; containers that arrived empty stay as they were."""
    if not edits:
        return data
    if index.nodes is None:
        assert _c is not None
        try:
            return bytes(_c.splice(data, dict(edits), DELETE))
        except ValueError as e:
            raise WireError(str(e)) from None
    out: list[bytes] = []
    pos = 0
    flat = 0
    for rs in index.nodes:
        n_rs = sum(len(ss.children) for ss in rs.children)
        if not any(flat <= i < flat + n_rs for i in edits):
            flat += n_rs
            continue  # copied below with the gap
        out.append(data[pos:rs.head])
        rs_parts: list[bytes] = []
        rs_pos = rs.start
        kept_scopes = 0
        for ss in rs.children:
            ss_parts: list[bytes] = []
            ss_pos = ss.start
            kept_spans = 0
            for sp in ss.children:
                edit = edits.get(flat)
                flat += 1
                if edit is None:
                    kept_spans += 1
                    continue
                ss_parts.append(data[ss_pos:sp.head])
                ss_pos = sp.end
                if edit is DELETE:
                    continue
                kept_spans += 1
                body_len = sp.end - sp.start + len(edit)
                ss_parts.append(_TAG_SPAN + encode_varint(body_len))
                ss_parts.append(data[sp.start:sp.end])
                ss_parts.append(edit)
            rs_parts.append(data[rs_pos:ss.head])
            rs_pos = ss.end
            if kept_spans == 0 and ss.children:
                continue
            kept_scopes += 1
            ss_parts.append(data[ss_pos:ss.end])
            body = b"".join(ss_parts)
            rs_parts.append(_TAG_SCOPE_SPANS + encode_varint(len(body)))
            rs_parts.append(body)
        pos = rs.end
        if kept_scopes == 0 and rs.children:
            continue
        rs_parts.append(data[rs_pos:rs.end])
        body = b"".join(rs_parts)
        out.append(_TAG_RESOURCE_SPANS + encode_varint(len(body)))
        out.append(body)
    out.append(data[pos:])
    return b"".join(out)
