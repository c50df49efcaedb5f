"""Idle and slow clients cannot hold the receivers: raw sockets that never finish their headers
or trickle a body, idle keep-alive connections, a peer opening too many; and a real exporter
(the OTel SDK's OTLP/HTTP one) served within a second all the same. The gRPC listener's own
bounds (handshake deadline, streams per connection) too."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from promptstamp.testing import LangfuseServer
from promptstamp_relay.receive.grpc import OtlpGrpcReceiver
from promptstamp_relay.receive.http import EVICT_AFTER_SECONDS, OtlpHttpReceiver
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import TRACES_EXPORT, span, traces
from tests.relays import relay_config, running
from tests.waiting import wait_until

from .conftest import SdkSender, delivered

PARTIAL = b"POST /v1/traces HTTP/1.1\r\nHost: relay\r\n"  # the headers never end
BODY = traces([span("s", trace=9, span_id=9)]).SerializeToString()


def http_receiver(relay: RelayServer) -> OtlpHttpReceiver:
    assert relay.parts is not None
    return next(r for r in relay.parts.receivers if isinstance(r, OtlpHttpReceiver))


def connect(address: str, *, source: str = "127.0.0.1", send: bytes = b"") -> socket.socket:
    host, _, port = address.rpartition(":")
    s = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    if send:
        s.sendall(send)
    return s


def closed_by_peer(s: socket.socket) -> bool:
    """Whether the relay closed ``s`` (EOF or reset), without waiting."""
    s.setblocking(False)
    try:
        data = s.recv(65536)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        s.setblocking(True)
    return data == b"" or data.startswith(b"HTTP/1.1 503")


@contextmanager
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    try:
        yield held
    finally:
        for s in held:
            s.close()


def http_export(relay: RelayServer, n: int = 3) -> tuple[bool, float, set[bytes]]:
    """One export by the OTel SDK's OTLP/HTTP exporter: (success, seconds, span ids)."""
    maker = SdkSender(relay.address, "unused")
    spans = maker.make(n)
    maker.close()
    exporter = HttpSpanExporter(endpoint=f"http://{relay.http_address}/v1/traces", timeout=10)
    try:
        t0 = time.monotonic()
        ok = exporter.export(spans) == SpanExportResult.SUCCESS
        return ok, time.monotonic() - t0, {s.context.span_id.to_bytes(8, "big") for s in spans}
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("sends", [PARTIAL, b""], ids=["request-line-only", "silent"])
def test_300_slow_connections_do_not_keep_a_real_exporter_waiting(langfuse: LangfuseServer, sends: bytes) -> None:
    cfg = relay_config(langfuse, **{"receivers.http.header_timeout_seconds": 3})
    with running(cfg) as relay, sockets() as held:
        receiver = http_receiver(relay)
        threads_before = threading.active_count()
        for _ in range(300):
            held.append(connect(relay.http_address or "", send=sends))
        opened = time.monotonic()
        # The same peer's connections beyond its limit were turned away at once (503, closed);
        # the others wait in the selector thread: no thread each.
        wait_until(lambda: len(receiver._open) == 64, 5, lambda: f"64 open connections ({len(receiver._open)})")
        assert threading.active_count() - threads_before < 10
        # Once they have waited a second, a real exporter's connection takes the place of the
        # one waiting longest, and its export is served at once.
        wait_until(lambda: time.monotonic() >= opened + EVICT_AFTER_SECONDS, 5, "the slow ones to be a second old")
        ok, took, ids = http_export(relay)
        assert ok and took < 1.0, took
        wait_until(lambda: ids <= delivered(langfuse), 5, "the exporter's spans")
        # And the slow ones are all gone at the header deadline.
        wait_until(lambda: all(closed_by_peer(s) for s in held), 3 + 2, "every slow connection closed")
        closed = receiver.stats.snapshot()["closed"]
        assert closed["header_timeout"] >= 60 and closed["evicted"] >= 1 and closed["refused"] >= 200


def test_headers_trickled_a_byte_at_a_time_are_cut_at_the_header_deadline(langfuse: LangfuseServer) -> None:
    cfg = relay_config(langfuse, **{"receivers.http.header_timeout_seconds": 1})
    with running(cfg) as relay:
        request = b"POST /v1/traces HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-protobuf\r\n"
        with connect(relay.http_address or "") as s:
            t0 = time.monotonic()
            sent = 0
            while sent < len(request) and not closed_by_peer(s):
                try:
                    s.sendall(request[sent:sent + 1])
                except OSError:
                    break
                sent += 1
                time.sleep(0.05)  # the slow client's pace
            wait_until(lambda: closed_by_peer(s), 3, "the trickling connection closed")
            took = time.monotonic() - t0
        assert 0.8 <= took <= 2.5, took
        assert http_receiver(relay).stats.snapshot()["closed"]["header_timeout"] == 1
        ok, took, _ = http_export(relay)
        assert ok and took < 1.0


def test_a_body_trickled_slowly_is_cut_at_the_body_deadline(langfuse: LangfuseServer) -> None:
    cfg = relay_config(langfuse, **{"receivers.http.body_timeout_seconds": 1})
    with running(cfg) as relay:
        head = (b"POST /v1/traces HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000\r\n\r\n")
        with connect(relay.http_address or "", send=head) as s:
            t0 = time.monotonic()
            closed = False
            for _ in range(100):
                try:
                    s.sendall(b"x" * 5)
                except OSError:
                    closed = True
                    break
                if closed_by_peer(s):
                    closed = True
                    break
                time.sleep(0.05)  # the slow client's pace
            took = time.monotonic() - t0
        assert closed and 0.8 <= took <= 2.5, took
        wait_until(lambda: http_receiver(relay).stats.snapshot()["closed"]["body_timeout"] == 1, 2,
                   "the body timeout counted")
        assert relay.stats.spans_received == 0


def test_keep_alive_is_reused_and_an_idle_connection_is_closed(langfuse: LangfuseServer) -> None:
    cfg = relay_config(langfuse, **{"receivers.http.idle_timeout_seconds": 1})
    with running(cfg) as relay:
        receiver = http_receiver(relay)
        with connect(relay.http_address or "") as s:
            f = s.makefile("rb")
            request = (b"POST /v1/traces HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-protobuf\r\n"
                       b"Content-Length: %d\r\n\r\n" % len(BODY)) + BODY
            for _ in range(3):  # three requests on one connection, one thread at a time
                s.sendall(request)
                assert f.readline().startswith(b"HTTP/1.1 200")
                while f.readline() not in (b"\r\n", b""):
                    pass
            assert len(receiver._open) == 1
            t0 = time.monotonic()
            wait_until(lambda: closed_by_peer(s), 3, "the idle connection closed")
            assert 0.8 <= time.monotonic() - t0 <= 2.5
        assert relay.stats.spans_received == 3
        assert receiver.stats.snapshot()["closed"]["idle_timeout"] == 1


def test_a_peer_at_its_limit_is_refused_while_another_peer_is_served(langfuse: LangfuseServer) -> None:
    """Four busy connections (bodies still coming) from 127.0.0.1: its fifth is refused with 503
    + Retry-After, none of its busy ones is touched; 127.0.0.2 is served. Waiting connections of
    the peer, a second old, make room for its new one instead."""
    cfg = relay_config(langfuse, **{"receivers.http.max_connections_per_peer": 4,
                                    "receivers.http.body_timeout_seconds": 10})
    with running(cfg) as relay, sockets() as held:
        address = relay.http_address or ""
        head = (b"POST /v1/traces HTTP/1.1\r\nHost: relay\r\nContent-Type: application/x-protobuf\r\n"
                b"Content-Length: 1000\r\n\r\nxx")
        held += [connect(address, send=head) for _ in range(4)]
        receiver = http_receiver(relay)
        wait_until(lambda: receiver._active == 4, 5, "four requests reading their bodies")
        with connect(address) as fifth:
            answer = fifth.recv(65536)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), trust_env=False, timeout=5) as c:
            r = c.post(f"http://{address}/v1/traces", content=BODY, headers={"Content-Type": "application/x-protobuf"})
        assert r.status_code == 200
        assert not any(closed_by_peer(s) for s in held)
        for s in held:
            s.close()
        held.clear()
        # Waiting (silent) connections of the peer: its new one closes the oldest.
        wait_until(lambda: len(receiver._open) == 0, 5, "the busy ones gone")
        with ExitStack() as stack:
            silent = [stack.enter_context(connect(address)) for _ in range(4)]
            wait_until(lambda: len(receiver._open) == 4, 5, "four waiting connections")
            opened = time.monotonic()
            wait_until(lambda: time.monotonic() >= opened + EVICT_AFTER_SECONDS, 5, "them to be a second old")
            with httpx.Client(trust_env=False, timeout=5) as c:
                assert c.post(f"http://{address}/v1/traces", content=BODY,
                              headers={"Content-Type": "application/x-protobuf"}).status_code == 200
            wait_until(lambda: closed_by_peer(silent[0]), 2, "the oldest waiting connection closed")
            assert not any(closed_by_peer(s) for s in silent[1:])
        assert receiver.stats.snapshot()["closed"]["evicted"] == 1


def test_grpc_cuts_a_connection_that_never_handshakes(langfuse: LangfuseServer) -> None:
    cfg = relay_config(langfuse, **{"receivers.grpc.handshake_timeout_seconds": 1})
    with running(cfg) as relay:
        assert relay.parts is not None
        receiver = relay.parts.receivers[0]
        assert isinstance(receiver, OtlpGrpcReceiver)
        options = dict(receiver.options)
        assert options["grpc.server_handshake_timeout_ms"] == 1000
        assert options["grpc.max_concurrent_streams"] == 100
        assert options["grpc.http2.min_ping_interval_without_data_ms"] == 10_000
        with connect(relay.address) as s:  # a TCP connection that sends nothing
            t0 = time.monotonic()
            s.settimeout(5)
            try:
                assert s.recv(65536) is not None  # the server's SETTINGS, or EOF
                while s.recv(65536):
                    pass
            except OSError:
                pass
            took = time.monotonic() - t0
        assert took <= 3.0, took


def test_grpc_streams_per_connection_are_bounded(langfuse: LangfuseServer) -> None:
    """``receivers.grpc.max_concurrent_streams: 2``: of five calls on one channel at once, two
    reach admission, the client holds the others back; all five succeed (a stream that races the
    limit as others end may be refused, UNAVAILABLE, which OTLP clients retry)."""
    cfg = relay_config(langfuse, **{"receivers.grpc.max_concurrent_streams": 2, "admission.concurrency": 1})
    with running(cfg) as relay, grpc.insecure_channel(relay.address) as channel:
        gate = relay.admission.gate
        export = channel.unary_unary(TRACES_EXPORT)
        export(BODY, timeout=10)  # connected
        gate.acquire("test", 1)
        codes: list[grpc.StatusCode] = []

        def one(i: int) -> None:
            body = traces([span("s", trace=100 + i, span_id=100 + i)]).SerializeToString()
            for _ in range(5):  # as an OTLP client does: a stream the server refused
                try:        # (REFUSED_STREAM, racing the limit as calls end) is UNAVAILABLE, retried
                    export(body, timeout=20)
                    codes.append(grpc.StatusCode.OK)
                    return
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.UNAVAILABLE:
                        codes.append(e.code())
                        return
            codes.append(grpc.StatusCode.UNAVAILABLE)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        wait_until(lambda: gate.waiting == 2, 5, "two calls waiting in admission")
        t0 = time.monotonic()
        wait_until(lambda: time.monotonic() - t0 >= 0.3, 1)
        assert gate.waiting == 2  # the other three are held back by the client
        gate.release("test")
        for t in threads:
            t.join(20)
        assert codes == [grpc.StatusCode.OK] * 5


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer() as server:
        yield server
