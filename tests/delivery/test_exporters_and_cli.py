"""The other exporters (OTLP/gRPC, file, debug) and ``serve`` as a process."""

from __future__ import annotations

import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c
from promptstamp_relay.config import load_config
from promptstamp_relay.wire.otlpjson import decode_line
from tests.otlp_builders import (
    LOGS_EXPORT,
    LOGS_SERVICE,
    TRACE_SERVICE,
    TRACES_EXPORT,
    all_spans,
    attrs_of,
    fetch_record,
    gen_attrs,
    logs,
    span,
    traces,
)
from tests.relays import RelayProcess, running
from tests.waiting import wait_until


class Collector:
    """A loopback OTLP/gRPC collector that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.event = threading.Event()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))

        def handler(service: str):  # type: ignore[no-untyped-def]
            def call(request: bytes, context: grpc.ServicerContext) -> bytes:
                self.received.append((service, request))
                self.event.set()
                return b""
            return call

        self.server.add_generic_rpc_handlers((
            grpc.method_handlers_generic_handler(TRACE_SERVICE,
                                                 {"Export": grpc.unary_unary_rpc_method_handler(handler("traces"))}),
            grpc.method_handlers_generic_handler(LOGS_SERVICE,
                                                 {"Export": grpc.unary_unary_rpc_method_handler(handler("logs"))}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def wait(self, n: int, timeout: float = 10) -> None:
        wait_until(lambda: len(self.received) >= n, timeout, lambda: f"{n} requests, got {self.received}")

    def stop(self) -> None:
        self.server.stop(0).wait()


def send(address: str, method: str, payload: bytes) -> None:
    with grpc.insecure_channel(address) as ch:
        ch.unary_unary(method)(payload, timeout=5)


def test_otlp_grpc_exporters_for_traces_and_other_logs() -> None:
    upstream = Collector()
    try:
        cfg = load_config(None, env={}, overrides={
            "listen": "127.0.0.1:0", "receivers.http.listen": "127.0.0.1:0", "exporter.type": "otlp_grpc",
            "exporter.otlp_grpc.endpoint": f"127.0.0.1:{upstream.port}",
            "logs_exporter.type": "otlp_grpc", "logs_exporter.otlp_grpc.endpoint": f"127.0.0.1:{upstream.port}",
        })
        with running(cfg) as relay:
            from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

            other = LogRecord(time_unix_nano=1)
            other.body.string_value = "app log"
            send(relay.address, LOGS_EXPORT,
                 logs([fetch_record(version=4, time=time.time_ns()), other]).SerializeToString())
            send(relay.address, TRACES_EXPORT, traces([span(start=time.time_ns(), attrs=gen_attrs())]).SerializeToString())
            upstream.wait(2)
        by_kind = dict(upstream.received)
        out = ExportTraceServiceRequest.FromString(by_kind["traces"])
        assert attrs_of(all_spans([out])[0])[c.LF_PROMPT_VERSION] == 4
        from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

        passed = ExportLogsServiceRequest.FromString(by_kind["logs"])
        recs = [r for rl in passed.resource_logs for sl in rl.scope_logs for r in sl.log_records]
        assert [r.body.string_value for r in recs] == ["app log"]  # the fetch log is consumed
    finally:
        upstream.stop()


def test_file_exporter_and_record_then_replay_gives_the_same_output(tmp_path: Path) -> None:
    out_file, rec_file = tmp_path / "out.jsonl", tmp_path / "rec.jsonl"
    cfg = load_config(None, env={}, overrides={
        "listen": "127.0.0.1:0", "receivers.http.listen": "127.0.0.1:0", "exporter.type": "file",
        "exporter.file": str(out_file),
        "record": str(rec_file), "hold.seconds": 0.2,
    })
    with running(cfg) as relay:
        send(relay.address, LOGS_EXPORT, logs([fetch_record(version=6, time=time.time_ns())]).SerializeToString())
        send(relay.address, TRACES_EXPORT, traces([span(span_id=1, start=time.time_ns(), attrs=gen_attrs()),
                                                   span("plain", span_id=2, start=time.time_ns())]).SerializeToString())
    recorded = rec_file.read_text().splitlines()
    assert ['"resourceLogs"' in ln for ln in recorded] == [True, False]
    live = [decode_line(ln) for ln in out_file.read_text().splitlines()]
    replayed = tmp_path / "replayed.jsonl"
    from promptstamp_relay.cli import main

    assert main(["replay", str(rec_file), "-o", str(replayed), "--hold-seconds", "0.2"]) == 0
    assert [decode_line(ln) for ln in replayed.read_text().splitlines()] == live
    assert attrs_of(all_spans(live)[0])[c.LF_PROMPT_VERSION] == 6


def test_serve_process_prints_stamped_spans_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    with RelayProcess(tmp_path, "--hold-seconds", "0.1", metrics=False) as relay:
        first = relay.first_line
        assert "listening on 127.0.0.1:" in first and "exporter debug" in first
        address = first.split("listening on ")[1].split(" ")[0]
        send(address, LOGS_EXPORT, logs([fetch_record(version=9, time=time.time_ns())]).SerializeToString())
        send(address, TRACES_EXPORT, traces([span(start=time.time_ns(), attrs=gen_attrs())]).SerializeToString())
        line = relay.read_line(15)
        assert line is not None and "prompt=order-status-answer version=9 label=production resolution=trace" in line
        assert relay.terminate(timeout=15) == 0
        assert "no upstream configured" in relay.stderr()
