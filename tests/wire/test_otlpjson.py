"""OTLP/JSON: lines and HTTP bodies, hex ids, errors that say where."""

from __future__ import annotations

import pytest

from promptstamp_relay.wire.otlpjson import (
    OtlpJsonError,
    decode_line,
    encode_line,
    read_documents,
    to_protobuf,
)
from tests.otlp_builders import fetch_record, gen_attrs, logs, span, traces


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
