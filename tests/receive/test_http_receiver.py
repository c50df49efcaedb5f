"""The OTLP/HTTP receiver against a fake admission: routing, media types, framing, gzip bounds,
the OTLP/HTTP status rules and what admission is handed. Real clients (httpx, raw sockets)."""

from __future__ import annotations

import base64
import gzip
import json
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.metrics.v1.metrics_pb2 import Exemplar

from promptstamp_relay.admission import CallInfo, Refusal, RefusalReason
from promptstamp_relay.receive.http import HttpReceiverConfig, OtlpHttpReceiver, gunzip
from promptstamp_relay.wire.otlpjson import OtlpJsonError, encode_line, to_protobuf
from tests.otlp_builders import fetch_record, logs, sid, span, tid, traces
from tests.waiting import wait_until

PB = {"Content-Type": "application/x-protobuf"}
JS = {"Content-Type": "application/json"}
LIMIT = 64 * 1024


@dataclass
class FakeAdmission:
    """Records what it is handed; ``refuse`` makes every call raise that refusal."""

    calls: list[tuple[str, bytes, CallInfo]] = field(default_factory=list)
    refuse: Refusal | None = None
    gate: threading.Event | None = None  # set: calls wait for it (a slow admission)

    def _take(self, signal: str, data: bytes, call: CallInfo) -> None:
        if self.gate is not None:
            self.gate.wait(10)
        if self.refuse is not None:
            raise self.refuse
        self.calls.append((signal, data, call))

    def traces(self, data: bytes, call: CallInfo) -> None:
        self._take("traces", data, call)

    def logs(self, data: bytes, call: CallInfo) -> None:
        self._take("logs", data, call)

    def metrics(self, data: bytes, call: CallInfo) -> None:
        self._take("metrics", data, call)


@pytest.fixture
def admission() -> FakeAdmission:
    return FakeAdmission()


@pytest.fixture
def receiver(admission: FakeAdmission) -> Iterator[OtlpHttpReceiver]:
    r = OtlpHttpReceiver(HttpReceiverConfig(listen="127.0.0.1:0", max_connections=8),
                         admission, max_request_bytes=LIMIT, max_inflight_bytes=4 * LIMIT, retry_after=2.5)
    r.start()
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def client(receiver: OtlpHttpReceiver) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=f"http://{receiver.address}", timeout=10, trust_env=False) as c:
        yield c


TRACES = traces([span("chat", trace=7, span_id=3)]).SerializeToString()


def status_of(r: httpx.Response) -> status_pb2.Status:
    if r.headers["content-type"].startswith("application/json"):
        return json_format.Parse(r.text, status_pb2.Status())
    return status_pb2.Status.FromString(r.content)


# -- success paths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("path, signal", [("/v1/traces", "traces"), ("/v1/logs", "logs"),
                                          ("/v1/metrics", "metrics"), ("/api/public/otel/v1/traces", "traces")])
def test_each_path_reaches_its_signal_with_headers_as_metadata(
    client: httpx.Client, admission: FakeAdmission, path: str, signal: str
) -> None:
    auth = "Basic " + base64.b64encode(b"pk-lf-1:sk-lf-1").decode()
    r = client.post(path, content=b"\x0a\x00", headers={**PB, "Authorization": auth, "X-Tenant-Hint": "a"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/x-protobuf"
    assert r.content == b""  # an empty Export*ServiceResponse: full success
    (got_signal, data, call), = admission.calls
    assert (got_signal, data) == (signal, b"\x0a\x00")
    assert call.transport == "http"
    assert call.metadata["authorization"] == auth  # lower-case names, as admission/auth.py reads them
    assert call.metadata["x-tenant-hint"] == "a"
    assert call.peer.startswith("127.0.0.1:")


def test_json_body_becomes_the_same_protobuf_and_the_answer_is_json(
    client: httpx.Client, admission: FakeAdmission
) -> None:
    req = traces([span("chat", trace=7, span_id=3)])
    req.resource_spans[0].scope_spans[0].spans[0].parent_span_id = sid(9)
    doc = json.loads(encode_line(req))
    assert doc["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] == tid(7).hex()
    doc["someFutureField"] = {"x": 1}  # unknown fields are ignored (OTLP/JSON receivers' rule)
    r = client.post("/v1/traces", content=json.dumps(doc).encode(), headers=JS)
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}
    (_, data, _), = admission.calls
    assert ExportTraceServiceRequest.FromString(data) == req


def test_json_metrics_exemplar_ids_are_hex(client: httpx.Client, admission: FakeAdmission) -> None:
    req = ExportMetricsServiceRequest()
    m = req.resource_metrics.add().scope_metrics.add().metrics.add()
    m.name = "tokens"
    p = m.sum.data_points.add()
    p.as_int = 5
    p.exemplars.append(Exemplar(trace_id=tid(1), span_id=sid(2), as_int=5))
    doc = json.loads(encode_line(req))
    assert doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["sum"]["dataPoints"][0]["exemplars"][0][
        "spanId"] == sid(2).hex()
    r = client.post("/v1/metrics", content=json.dumps(doc).encode(), headers=JS)
    assert r.status_code == 200
    assert ExportMetricsServiceRequest.FromString(admission.calls[0][1]) == req


def test_json_logs_and_enum_integers(client: httpx.Client, admission: FakeAdmission) -> None:
    req = logs([fetch_record(trace=5)])
    doc = json.loads(encode_line(req))
    r = client.post("/v1/logs", content=json.dumps(doc).encode(), headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200
    assert ExportLogsServiceRequest.FromString(admission.calls[0][1]) == req


def test_gzip_bodies_are_decompressed(client: httpx.Client, admission: FakeAdmission) -> None:
    r = client.post("/v1/traces", content=gzip.compress(TRACES), headers={**PB, "Content-Encoding": "gzip"})
    assert r.status_code == 200
    # Two gzip members (what concatenating writers produce) are one body.
    two = gzip.compress(TRACES[:10]) + gzip.compress(TRACES[10:])
    r = client.post("/v1/traces", content=two, headers={**PB, "Content-Encoding": "gzip"})
    assert r.status_code == 200
    assert [d for _, d, _ in admission.calls] == [TRACES, TRACES]


def test_chunked_bodies_are_read(client: httpx.Client, admission: FakeAdmission) -> None:
    def parts() -> Iterator[bytes]:
        yield TRACES[:5]
        yield TRACES[5:]

    r = client.post("/v1/traces", content=parts(), headers=PB)  # httpx sends an iterator chunked
    assert r.status_code == 200
    assert admission.calls[0][1] == TRACES


def test_keep_alive_survives_error_answers(receiver: OtlpHttpReceiver, admission: FakeAdmission) -> None:
    """An error answered before the body was read must not leave the body to be taken for the
    next request on the same connection."""
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
        f = s.makefile("rb")
        for path, ctype, body in (("/nope", "application/x-protobuf", b"x" * 100),
                                  ("/v1/traces", "text/plain", b"y" * 100),
                                  ("/v1/traces", "application/x-protobuf", b"z" * (LIMIT + 1)),
                                  ("/v1/traces", "application/x-protobuf", TRACES)):
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
                      f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            status_line = f.readline()
            length = 0
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            f.read(length)
            code = int(status_line.split()[1])
            assert code == {"/nope": 404}.get(path, {"text/plain": 415}.get(ctype, 413 if len(body) > LIMIT else 200))
    assert [d for _, d, _ in admission.calls] == [TRACES]


# -- the status rules ------------------------------------------------------------------------------
@pytest.mark.parametrize("reason, status", [("unauthenticated", 401), ("invalid", 400), ("too_large", 413),
                                            ("backpressure", 429), ("unavailable", 503)])
@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_refusals_map_to_otlp_http_statuses(
    client: httpx.Client, admission: FakeAdmission, reason: RefusalReason, status: int, encoding: str
) -> None:
    admission.refuse = Refusal(reason, f"refused: {reason}", retry_after=2.5)
    body = TRACES if encoding == "protobuf" else b"{}"
    r = client.post("/v1/traces", content=body, headers=PB if encoding == "protobuf" else JS)
    assert r.status_code == status
    assert r.headers["content-type"] == ("application/x-protobuf" if encoding == "protobuf" else "application/json")
    assert status_of(r).message == f"refused: {reason}"
    if status in (429, 503):
        assert r.headers["retry-after"] == "3"  # whole seconds, rounded up
    else:
        assert "retry-after" not in r.headers
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Basic")


def test_request_errors(client: httpx.Client, admission: FakeAdmission) -> None:
    assert client.post("/v1/spans", content=TRACES, headers=PB).status_code == 404
    r = client.get("/v1/traces")
    assert (r.status_code, r.headers["allow"]) == (405, "POST")
    assert client.put("/v1/logs", content=b"x", headers=PB).status_code == 405
    assert client.post("/v1/traces", content=TRACES, headers={"Content-Type": "text/plain"}).status_code == 415
    assert client.post("/v1/traces", content=TRACES).status_code == 415  # no Content-Type
    r = client.post("/v1/traces", content=TRACES, headers={**PB, "Content-Encoding": "br"})
    assert r.status_code == 415
    r = client.post("/v1/traces", content=b"x" * (LIMIT + 1), headers=PB)
    assert r.status_code == 413
    assert "limits.max_request_bytes" in status_of(r).message
    # Bad OTLP/JSON: 400, in JSON.
    for bad in (b"not json", b"[1]", json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [
            {"traceId": "zz", "spanId": "0102030405060708"}]}]}]}).encode(),
            json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "0102"}]}]}]}).encode(),
            json.dumps({"resourceSpans": 5}).encode(), b"[" * 50_000):
        r = client.post("/v1/traces", content=bad, headers=JS)
        assert r.status_code == 400, bad[:40]
        assert r.headers["content-type"] == "application/json"
        assert status_of(r).code == 3
    # Corrupt and truncated gzip.
    for bad in (b"\x1f\x8b\x08\x00garbage", gzip.compress(TRACES)[:-8]):
        r = client.post("/v1/traces", content=bad, headers={**PB, "Content-Encoding": "gzip"})
        assert r.status_code == 400
    assert admission.calls == []


def test_a_gzip_bomb_is_refused_413_without_unbounded_output(client: httpx.Client, admission: FakeAdmission) -> None:
    bomb = gzip.compress(b"\0" * (200 * LIMIT), 9)  # 12.8 MiB out of ~13 KiB
    assert len(bomb) < LIMIT
    r = client.post("/v1/traces", content=bomb, headers={**PB, "Content-Encoding": "gzip"})
    assert r.status_code == 413
    assert "decompressed" in status_of(r).message
    assert admission.calls == []


def test_gunzip_stops_at_the_limit() -> None:
    data = gzip.compress(b"a" * 1000)
    assert gunzip(data, 1000) == b"a" * 1000
    with pytest.raises(Exception, match="exceeds"):
        gunzip(data, 999)


def test_ambiguous_framing_is_refused_and_closed(receiver: OtlpHttpReceiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
        s.sendall(b"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"Connection: close" in answer


def test_expect_100_continue_is_refused_before_the_body(receiver: OtlpHttpReceiver) -> None:
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
        s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  f"Content-Length: {LIMIT * 10}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 413")
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
        s.sendall(f"POST /v1/traces HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n"
                  f"Content-Length: {len(TRACES)}\r\nExpect: 100-continue\r\n\r\n".encode())
        assert s.recv(65536).startswith(b"HTTP/1.1 100")
        s.sendall(TRACES)
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_connections_over_the_cap_get_503(receiver: OtlpHttpReceiver) -> None:
    held = [socket.create_connection(("127.0.0.1", receiver.port), timeout=5) for _ in range(8)]
    try:
        wait_until(lambda: len(receiver._open) == 8, what="8 open connections")
        with socket.create_connection(("127.0.0.1", receiver.port), timeout=5) as s:
            answer = s.recv(65536)
            assert answer.startswith(b"HTTP/1.1 503")
            assert b"Retry-After: 3" in answer
    finally:
        for s in held:
            s.close()
    # Room again once they are gone.
    wait_until(lambda: len(receiver._open) == 0, what="connections closed")
    with httpx.Client(base_url=f"http://{receiver.address}", trust_env=False) as c:
        assert c.post("/v1/traces", content=TRACES, headers=PB).status_code == 200


def test_stop_lets_a_request_in_admission_finish(admission: FakeAdmission) -> None:
    admission.gate = threading.Event()
    r = OtlpHttpReceiver(HttpReceiverConfig(listen="127.0.0.1:0"), admission)
    r.start()
    results: list[int] = []

    def send() -> None:
        with httpx.Client(trust_env=False, timeout=10) as c:
            results.append(c.post(f"http://{r.address}/v1/traces", content=TRACES, headers=PB).status_code)

    t = threading.Thread(target=send)
    t.start()
    wait_until(lambda: r._active == 1, what="a request in admission")
    stopper = threading.Thread(target=r.stop, kwargs={"grace": 5})
    stopper.start()
    admission.gate.set()
    t.join(10)
    stopper.join(10)
    assert results == [200]
    assert not stopper.is_alive()
    with pytest.raises(httpx.ConnectError), httpx.Client(trust_env=False, timeout=2) as c:
        c.post(f"http://{r.address}/v1/traces", content=TRACES, headers=PB)


def test_to_protobuf_rejects_what_is_not_a_request() -> None:
    with pytest.raises(OtlpJsonError):
        to_protobuf("traces", b'{"resourceSpans": [{"resource": 3}]}')
    assert to_protobuf("traces", b"{}") == b""
    assert ExportTraceServiceResponse().SerializeToString() == b""


def test_config_validation() -> None:
    assert HttpReceiverConfig().validate() == []
    assert HttpReceiverConfig(listen="").validate() == []
    errs = HttpReceiverConfig(listen="nohost", max_connections=0, threads=0, idle_timeout_seconds=0).validate()
    assert len(errs) == 4
    assert all(e.startswith("'receivers.http.") for e in errs)
