"""The persistent queue: what the relay accepted is on disk, and arrives after a crash."""

from __future__ import annotations

import signal
import threading
from collections import Counter
from pathlib import Path

import promptstamp_contract as c
from tests.relays import RelayProcess, running
from tests.waiting import wait_until

from .conftest import GEN, NO_UPSTREAM_CHECK, Sender, base_settings, config, ids
from .upstream import Upstream


def test_in_process_stop_keeps_unsent_items_on_disk_and_the_next_start_sends_them(
    upstream: Upstream, tmp_path: Path
) -> None:
    upstream.fail(503)
    qdir = tmp_path / "q"
    settings = {"queue.directory": str(qdir), "queue.workers": 1}
    order: list[bytes] = []
    with running(config(upstream.base_url, **settings)) as relay:
        sender = Sender(relay.address)
        try:
            for _ in range(5):
                batch = sender.make(10)
                assert sender.send(batch)
                order.extend(s.context.span_id.to_bytes(8, "big") for s in batch)
        finally:
            sender.close()
            lost = relay.stop(timeout=0.5)
    assert lost == 0 and relay.trace_queue.stats.kept_items == 50
    upstream.recover()
    upstream.received.clear()
    with running(config(upstream.base_url, **settings)) as relay:
        got = upstream.wait_for_spans(set(order), timeout=10)
        assert relay.trace_queue.stats.recovered_items == 50
        assert max(got.values()) == 1
        # One worker: re-sent in the order they were accepted.
        assert [s for r in upstream.snapshot() for s in r.span_ids] == order
        assert relay.stop(timeout=5) == 0


def _send_until_killed(sender: Sender, relay: RelayProcess, accepted: list[bytes], stop: threading.Event) -> None:
    while not stop.is_set():
        batch = sender.make(10)
        if sender.send(batch):
            accepted.extend(ids(batch))
        elif relay.proc.poll() is not None:
            return


def test_kill_9_mid_stream_then_restart_every_accepted_span_arrives(upstream: Upstream, tmp_path: Path) -> None:
    """At least once: every span the sender got an OK for arrives; a span the relay delivered
    but had not yet deleted from disk when it died is sent again (counted, not asserted zero)."""
    upstream.delay(0.05)  # slow enough that the queue is never empty
    qdir = tmp_path / "q"
    settings = base_settings(upstream.base_url, **{"queue.workers": 2})
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir), settings=settings, name="run1")
    accepted: list[bytes] = []
    stop = threading.Event()
    sender = Sender(relay.address, timeout=2)
    feeder = threading.Thread(target=_send_until_killed, args=(sender, relay, accepted, stop))
    try:
        feeder.start()
        wait_until(lambda: len(accepted) >= 300, 20, "300 spans accepted")
        relay.proc.send_signal(signal.SIGKILL)  # mid-stream: the sender is still sending
        relay.proc.wait(timeout=10)
        stop.set()
        feeder.join(timeout=15)
        assert not feeder.is_alive()
    finally:
        stop.set()
        relay.stop()
    before = upstream.accepted_span_ids()
    assert set(before) < set(accepted), "the kill came too late to leave anything on disk"
    upstream.delay(0)
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir), settings=settings, name="run2")
    try:
        upstream.wait_for_spans(set(accepted), timeout=30)
        recovered = relay.metric("promptstamp_recovered_items_total", 'signal="traces"')
        assert recovered >= len(set(accepted) - set(before))
    finally:
        sender.close()
        assert relay.terminate() == 0
        relay.stop()
    got = upstream.accepted_span_ids()
    assert set(accepted) <= set(got)
    dupes = sum(n - 1 for n in got.values() if n > 1)
    print(f"\naccepted {len(accepted)} spans before kill -9; {len(before)} delivered before it; "
          f"{recovered:.0f} re-sent from disk; {dupes} delivered twice")


def test_kill_9_keeps_held_spans_and_the_fetch_log(upstream: Upstream, tmp_path: Path) -> None:
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    qdir = tmp_path / "q"
    # Run 1: a long hold window, so the generation is still held when the relay dies.
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir),
                         settings=base_settings(upstream.base_url, **{"hold.seconds": 60}), name="run1")
    resource = Resource.create({"service.name": "order-status", "service.instance.id": "agent-1"})
    lp = LoggerProvider(resource=resource)
    lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=relay.address, insecure=True)))
    sender = Sender(relay.address)
    try:
        lp.get_logger("promptstamp").emit(  # a fetch outside any span: resolves by instance
            event_name=c.FETCH_EVENT_NAME,
            attributes={c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production",
                        c.PROMPT_VERSION: 7, c.FETCH_SOURCE: "langfuse"},
        )
        gen = sender.make(1, attributes=GEN)
        assert sender.send(gen)  # OK: the span is on disk, held (for 60 s)
        wait_until(lambda: relay.metric("promptstamp_held_spans") == 1, 5, "the span held")
        assert upstream.snapshot() == []
        relay.proc.send_signal(signal.SIGKILL)
        relay.proc.wait(timeout=10)
    finally:
        lp.shutdown()
        sender.close()
        relay.stop()
    # Run 2: the held span is taken back, held again for the (short) window, then resolved from
    # the fetch log that run 1 wrote to disk.
    relay = RelayProcess(tmp_path, NO_UPSTREAM_CHECK, "--queue-dir", str(qdir),
                         settings=base_settings(upstream.base_url, **{"hold.seconds": 0.2}), name="run2")
    try:
        upstream.wait_for_spans(ids(gen), timeout=10)
        (span,) = [s for r in upstream.snapshot() for rs in r.request.resource_spans
                   for ss in rs.scope_spans for s in ss.spans]
        attrs = {kv.key: kv.value for kv in span.attributes}
        assert attrs[c.LF_PROMPT_VERSION].int_value == 7
        assert attrs[c.LF_META_RESOLUTION].string_value == "instance"
        assert "took back 1 held spans" in relay.stderr()
        # A new generation after the restart resolves from the persisted fetch log too.
        sender = Sender(relay.address)
        later = sender.make(1, attributes=GEN)
        assert sender.send(later)
        upstream.wait_for_spans(ids(later), timeout=10)
        sender.close()
    finally:
        assert relay.terminate() == 0
        relay.stop()
    counts = Counter(upstream.accepted_span_ids())
    assert counts[next(iter(ids(gen)))] == 1


def test_logs_queue_is_persistent_too(upstream: Upstream, tmp_path: Path) -> None:
    import grpc
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    from ..otlp_builders import LOGS_EXPORT, logs
    from .collector import Abort, FakeCollector

    got: list[ExportLogsServiceRequest] = []
    down = True

    def collect(data: bytes) -> bytes:
        if down:
            raise Abort(grpc.StatusCode.UNAVAILABLE, "collector restarting")
        got.append(ExportLogsServiceRequest.FromString(data))
        return b""

    collector = FakeCollector(collect)
    settings = {"queue.directory": str(tmp_path / "q"), "logs_exporter.type": "otlp_grpc",
                "logs_exporter.otlp_grpc.endpoint": collector.address}
    try:
        with running(config(upstream.base_url, **settings)) as relay:
            record = logs([])
            record.resource_logs[0].scope_logs[0].log_records.add().body.string_value = "an app log line"
            channel = grpc.insecure_channel(relay.address)
            channel.unary_unary(LOGS_EXPORT)(record.SerializeToString(), timeout=5)
            channel.close()
            wait_until(lambda: relay.logs_queue is not None and relay.logs_queue.stats.retries > 0, 5, "a retry")
            relay.stop(timeout=0.2)
        assert relay.logs_queue is not None and relay.logs_queue.stats.kept_items == 1
        assert relay.trace_queue.stats.kept_items == 0
        down = False
        with running(config(upstream.base_url, **settings)) as relay:
            wait_until(lambda: len(got) == 1, 10, "the kept log record")
            assert got[0].resource_logs[0].scope_logs[0].log_records[0].body.string_value == "an app log line"
            assert relay.stop(timeout=5) == 0
    finally:
        collector.stop()
