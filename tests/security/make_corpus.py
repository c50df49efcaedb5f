"""The hostile-payload corpus: what each payload is, how it is built, what the relay must answer.

Run ``python -m tests.security.make_corpus`` from the repository root to (re)write
``tests/security/corpus/`` (small files, checked in, plus ``MANIFEST.json``). The large
payloads are built at test time instead (``checked_in=False``): millions of empty attributes,
a million empty spans, a 20 MB string.

Every expectation holds for a relay configured with :data:`CORPUS_LIMITS`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.security.payloads import (
    field,
    kv,
    logs_request,
    nested_array,
    nested_kvlist,
    span_bytes,
    string_value,
    trace_request,
    varint,
)

CORPUS_DIR = Path(__file__).parent / "corpus"

#: The relay settings the expectations are written for (the rest are defaults).
CORPUS_LIMITS: dict[str, object] = {
    "limits.max_spans_per_request": 1000,
    "limits.max_attributes_per_span": 128,
    "limits.max_attribute_value_bytes": 4096,
    "limits.max_value_depth": 8,
}

OK, INVALID, TOO_LARGE = "OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"


@dataclass(frozen=True)
class Case:
    name: str
    signal: str  # traces | logs
    expect: str  # a gRPC status code name
    build: Callable[[], bytes]
    checked_in: bool = True
    why: str = ""

    @property
    def filename(self) -> str:
        return f"{self.name}.{self.signal}.binpb"


def attr(value: bytes, key: bytes = b"k") -> bytes:
    return field(9, kv(key, value))


def one_span(body: bytes = b"", **kw: bytes) -> bytes:
    return trace_request(span_bytes(body, **kw))


def log(body: bytes = b"", *attrs: bytes, trace_id: bytes = b"") -> bytes:
    rec = (field(5, body) if body else b"") + b"".join(field(6, a) for a in attrs)
    if trace_id:
        rec += field(9, trace_id)
    return rec


def fetch_log(version_value: bytes) -> bytes:
    attrs = [kv(b"app.prompt.key", string_value(b"order-status-answer")),
             kv(b"app.prompt.label", string_value(b"production")),
             kv(b"app.prompt.fetch.source", string_value(b"langfuse")),
             kv(b"app.prompt.version", version_value)]
    return logs_request(log(b"", *attrs) + field(12, b"app.prompt.fetch"))


BIG = 8 * 1024  # twice the corpus value limit

CASES: list[Case] = [
    # -- huge strings -----------------------------------------------------------------------
    Case("huge_string_value", "traces", TOO_LARGE, lambda: one_span(attr(string_value(b"v" * BIG)))),
    Case("huge_attribute_key", "traces", TOO_LARGE, lambda: one_span(attr(string_value(b"v"), key=b"k" * BIG))),
    Case("huge_span_name", "traces", TOO_LARGE, lambda: one_span(name=b"n" * BIG)),
    Case("huge_bytes_value", "traces", TOO_LARGE, lambda: one_span(attr(field(7, b"\x00" * BIG)))),
    Case("huge_string_nested_in_kvlist", "traces", TOO_LARGE,
         lambda: one_span(attr(nested_kvlist(3, leaf=b"v" * BIG)))),
    Case("huge_log_body", "logs", TOO_LARGE, lambda: logs_request(log(string_value(b"b" * BIG)))),
    Case("huge_fetch_log_key", "logs", TOO_LARGE,
         lambda: logs_request(log(b"", kv(b"app.prompt.key", string_value(b"k" * BIG))) + field(12, b"app.prompt.fetch"))),
    # -- deep values ------------------------------------------------------------------------
    Case("kvlist_100_deep", "traces", INVALID, lambda: one_span(attr(nested_kvlist(100)))),
    Case("array_100_deep", "traces", INVALID, lambda: one_span(attr(nested_array(100)))),
    Case("array_at_the_depth_limit", "traces", OK, lambda: one_span(attr(nested_array(8)))),
    Case("array_one_past_the_depth_limit", "traces", INVALID, lambda: one_span(attr(nested_array(9)))),
    Case("kvlist_past_the_depth_limit", "traces", INVALID, lambda: one_span(attr(nested_kvlist(9)))),
    Case("kvlist_100_deep_log_body", "logs", INVALID, lambda: logs_request(log(nested_kvlist(100)))),
    Case("array_past_the_limit_in_resource", "traces", INVALID,
         lambda: field(1, field(1, field(1, kv(b"k", nested_array(9)))) + field(2, field(2, span_bytes(b""))))),
    # -- counts -----------------------------------------------------------------------------
    Case("empty_attributes_over_the_limit", "traces", TOO_LARGE, lambda: one_span(b"\x4a\x00" * 129)),
    Case("empty_events_over_the_limit", "traces", TOO_LARGE, lambda: one_span(b"\x5a\x00" * 129)),
    Case("empty_spans_over_the_limit", "traces", TOO_LARGE, lambda: trace_request(*[b""] * 1001)),
    Case("empty_log_records_over_the_limit", "logs", TOO_LARGE, lambda: logs_request(*[b""] * 1001)),
    Case("empty_resources_and_scopes", "traces", OK, lambda: b"\x0a\x00" * 500 + field(1, b"\x12\x00" * 500)),
    # -- invalid UTF-8 in string fields -----------------------------------------------------
    Case("invalid_utf8_span_name", "traces", INVALID, lambda: one_span(name=b"\xff\xfe")),
    Case("invalid_utf8_attribute_key", "traces", INVALID, lambda: one_span(attr(string_value(b"v"), key=b"k\x80"))),
    Case("invalid_utf8_string_value", "traces", INVALID, lambda: one_span(attr(string_value(b"\xc3\x28")))),
    Case("overlong_utf8_encoding", "traces", INVALID, lambda: one_span(attr(string_value(b"\xc0\x80")))),
    Case("utf8_encoded_surrogate", "traces", INVALID, lambda: one_span(attr(string_value(b"\xed\xa0\x80")))),
    Case("invalid_utf8_log_body", "logs", INVALID, lambda: logs_request(log(string_value(b"\xff")))),
    Case("invalid_utf8_scope_name", "traces", INVALID,
         lambda: field(1, field(2, field(1, field(1, b"\xfe")) + field(2, span_bytes(b""))))),
    # -- ids --------------------------------------------------------------------------------
    Case("trace_id_15_bytes", "traces", INVALID, lambda: one_span(trace_id=b"\x01" * 15)),
    Case("trace_id_17_bytes", "traces", INVALID, lambda: one_span(trace_id=b"\x01" * 17)),
    Case("trace_id_missing", "traces", INVALID, lambda: one_span(trace_id=b"")),
    Case("trace_id_all_zero", "traces", INVALID, lambda: one_span(trace_id=bytes(16))),
    Case("span_id_7_bytes", "traces", INVALID, lambda: one_span(span_id=b"\x02" * 7)),
    Case("span_id_all_zero", "traces", INVALID, lambda: one_span(span_id=bytes(8))),
    Case("parent_span_id_3_bytes", "traces", INVALID, lambda: one_span(field(4, b"\x03" * 3))),
    Case("link_trace_id_15_bytes", "traces", INVALID,
         lambda: one_span(field(13, field(1, b"\x03" * 15) + field(2, b"\x04" * 8)))),
    Case("log_trace_id_8_bytes", "logs", INVALID, lambda: logs_request(log(b"", trace_id=b"\x01" * 8))),
    # -- malformed protobuf -----------------------------------------------------------------
    Case("garbage", "traces", INVALID, lambda: b"\xde\xad\xbe\xef" * 16),
    Case("truncated", "traces", INVALID, lambda: one_span(attr(string_value(b"value")))[:-4]),
    Case("length_past_the_end", "traces", INVALID, lambda: b"\x0a\x7f\x12\x00"),
    Case("huge_length_prefix", "traces", INVALID, lambda: b"\x0a" + varint(2**62) + b"\x00"),
    Case("endless_varint", "traces", INVALID, lambda: b"\x08" + b"\xff" * 11),
    Case("wire_type_7", "traces", INVALID, lambda: b"\x0f\x00"),
    Case("field_number_zero", "traces", INVALID, lambda: b"\x02\x00"),
    Case("garbage_logs", "logs", INVALID, lambda: b"\x0a\x05\x12\x03\x12\x01"),
    # -- odd but valid: served ---------------------------------------------------------------
    Case("empty_request", "traces", OK, lambda: b""),
    Case("empty_logs_request", "logs", OK, lambda: b""),
    Case("unknown_fields", "traces", OK, lambda: one_span(field(1000, b"from the future") + field(2047, b"x"))),
    Case("oneof_set_twice", "traces", OK, lambda: one_span(attr(string_value(b"s") + b"\x18\x07"))),
    Case("negative_and_max_times", "traces", OK,
         lambda: one_span(b"\x39" + b"\xff" * 8 + b"\x41" + b"\x00" * 8)),
    Case("fetch_log_with_a_string_version", "logs", OK, lambda: fetch_log(string_value(b"3"))),
    Case("fetch_log_with_a_negative_version", "logs", OK, lambda: fetch_log(b"\x18" + varint(2**64 - 1))),
    # -- large: built at test time, not checked in --------------------------------------------
    Case("two_million_empty_attributes_in_one_span", "traces", TOO_LARGE,
         lambda: one_span(b"\x4a\x00" * 2_000_000), checked_in=False, why="4 MB"),
    Case("two_million_empty_attributes_over_a_thousand_spans", "traces", TOO_LARGE,
         lambda: trace_request(*[span_bytes(b"\x4a\x00" * 2000, span_id=i.to_bytes(8, "big"))
                                 for i in range(1, 1001)]), checked_in=False, why="4 MB"),
    Case("a_million_empty_spans", "traces", TOO_LARGE, lambda: trace_request(*[b""] * 1_000_000),
         checked_in=False, why="2 MB, ~170 MB once parsed"),
    Case("a_twenty_megabyte_string", "traces", TOO_LARGE,
         lambda: one_span(attr(string_value(b"s" * 20_000_000))), checked_in=False,
         why="over limits.max_request_bytes: refused by gRPC before the relay sees it"),
]


def manifest() -> dict[str, dict[str, str]]:
    return {c.name: {"file": c.filename, "signal": c.signal, "expect": c.expect} for c in CASES if c.checked_in}


def main() -> None:
    CORPUS_DIR.mkdir(exist_ok=True)
    for old in CORPUS_DIR.glob("*.binpb"):
        old.unlink()
    for case in CASES:
        if case.checked_in:
            (CORPUS_DIR / case.filename).write_bytes(case.build())
    (CORPUS_DIR / "MANIFEST.json").write_text(json.dumps(manifest(), indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
