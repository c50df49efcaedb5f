"""The other exporters (OTLP/gRPC, file, debug) and ``serve`` as a process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

import promptstamp_contract as c
from promptstamp_relay.config import load_config
from promptstamp_relay.server import RelayServer
from promptstamp_relay.wire.otlpjson import decode_line
from tests.otlp_builders import all_spans, attrs_of, fetch_record, gen_attrs, logs, span, traces

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"


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
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.trace.v1.TraceService",
                                                 {"Export": grpc.unary_unary_rpc_method_handler(handler("traces"))}),
            grpc.method_handlers_generic_handler("opentelemetry.proto.collector.logs.v1.LogsService",
                                                 {"Export": grpc.unary_unary_rpc_method_handler(handler("logs"))}),
        ))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    def wait(self, n: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= n, self.received

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
        relay = RelayServer(cfg).start()
        try:
            from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

            other = LogRecord(time_unix_nano=1)
            other.body.string_value = "app log"
            send(relay.address, LOGS, logs([fetch_record(version=4, time=time.time_ns()), other]).SerializeToString())
            send(relay.address, TRACES, traces([span(start=time.time_ns(), attrs=gen_attrs())]).SerializeToString())
            upstream.wait(2)
        finally:
            relay.stop(timeout=5)
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
    relay = RelayServer(cfg).start()
    try:
        send(relay.address, LOGS, logs([fetch_record(version=6, time=time.time_ns())]).SerializeToString())
        send(relay.address, TRACES, traces([span(span_id=1, start=time.time_ns(), attrs=gen_attrs()), span("plain", span_id=2, start=time.time_ns())]).SerializeToString())
    finally:
        relay.stop(timeout=5)
    recorded = rec_file.read_text().splitlines()
    assert ['"resourceLogs"' in ln for ln in recorded] == [True, False]
    live = [decode_line(ln) for ln in out_file.read_text().splitlines()]
    replayed = tmp_path / "replayed.jsonl"
    from promptstamp_relay.cli import main

    assert main(["replay", str(rec_file), "-o", str(replayed), "--hold-seconds", "0.2"]) == 0
    assert [decode_line(ln) for ln in replayed.read_text().splitlines()] == live
    assert attrs_of(all_spans(live)[0])[c.LF_PROMPT_VERSION] == 6


def test_serve_process_prints_stamped_spans_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for k in ("LANGFUSE_BASE_URL", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "PROMPTSTAMP_LISTEN"):
        env.pop(k, None)
    config_file = tmp_path / "relay.yaml"
    config_file.write_text("receivers:\n  http:\n    listen: 127.0.0.1:0\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "promptstamp_relay.cli", "serve", "--config", str(config_file),
         "--listen", "127.0.0.1:0", "--hold-seconds", "0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening on 127.0.0.1:" in first and "exporter debug" in first
        address = first.split("listening on ")[1].split(" ")[0]
        send(address, LOGS, logs([fetch_record(version=9, time=time.time_ns())]).SerializeToString())
        send(address, TRACES, traces([span(start=time.time_ns(), attrs=gen_attrs())]).SerializeToString())
        line = proc.stdout.readline()
        assert "prompt=order-status-answer version=9 label=production resolution=trace" in line
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        assert "no upstream configured" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
