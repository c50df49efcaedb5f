"""Upstream failures, with the OTel SDK's OTLP/gRPC exporter sending to an in-process relay.

Delivery is at least once in general; in these tests the upstream answers an error *instead*
of taking the data, so every span must arrive exactly once, and that is asserted.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from promptstamp.testing import LangfuseServer
from tests.fakes import FakeExporter
from tests.relays import running
from tests.waiting import wait_until

from .conftest import Sender, config, ids
from .upstream import Upstream


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer() as server:
        yield server


def accepted_ids(langfuse: LangfuseServer) -> list[bytes]:
    return [s.span_id for r in langfuse.ingest_requests if r.status == 200 and r.request
            for rs in r.request.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_503_for_a_while_then_recovery_every_span_arrives_exactly_once(langfuse: LangfuseServer) -> None:
    langfuse.fail_ingest(503)  # until reset
    with running(config(langfuse.base_url, **{"queue.workers": 2})) as relay:
        sender = Sender(relay.address)
        try:
            sent: set[bytes] = set()
            for _ in range(20):
                batch = sender.make(10)
                assert sender.send(batch)
                sent |= ids(batch)
            wait_until(lambda: relay.trace_queue.stats.retries >= 6, 10, "retries while upstream is down")
            assert accepted_ids(langfuse) == []
            langfuse.reset_faults()
            wait_until(lambda: set(accepted_ids(langfuse)) >= sent, 15, "every span after recovery")
            st = relay.trace_queue.stats
            wait_until(lambda: st.exported_items == 200, 5, "the exports to settle")
            arrived = accepted_ids(langfuse)
            assert len(arrived) == len(sent) == 200  # exactly once: no span twice
            assert set(arrived) == sent
            assert st.exported_items == 200 and st.failed_permanent_items == 0 and st.lost_items == 0
            assert sum(1 for r in langfuse.ingest_requests if r.status == 503) >= 6
        finally:
            sender.close()
            assert relay.stop(timeout=5) == 0


def test_429_with_retry_after_the_relay_waits_as_told(upstream: Upstream) -> None:
    upstream.fail(429, times=1, retry_after=1.5)
    with running(config(upstream.base_url, **{"queue.workers": 1})) as relay:
        sender = Sender(relay.address)
        try:
            batch = sender.make(5)
            assert sender.send(batch)
            upstream.wait_for_spans(ids(batch), timeout=10)
            first, second = upstream.snapshot()[:2]
            assert (first.status, second.status) == (429, 200)
            waited = second.at - first.at
            # Told 1.5 s; the relay's own backoff would have been ~0.05 s.
            assert 1.5 <= waited < 2.5, waited
            assert relay.trace_queue.stats.retries == 1
        finally:
            sender.close()


def test_400_is_permanent_counted_and_logged_other_requests_unaffected(
    langfuse: LangfuseServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="promptstamp_relay")
    with running(config(langfuse.base_url, **{"queue.workers": 2})) as relay:
        sender = Sender(relay.address)
        try:
            langfuse.fail_ingest(400, times=1)
            bad = sender.make(7)
            assert sender.send(bad)  # the relay took it; the upstream refuses it
            wait_until(lambda: relay.trace_queue.stats.failed_permanent_items == 7, 10, "the permanent failure")
            good: set[bytes] = set()
            for _ in range(5):
                batch = sender.make(4)
                assert sender.send(batch)
                good |= ids(batch)
            wait_until(lambda: set(accepted_ids(langfuse)) >= good, 10, "the other requests")
            wait_until(lambda: relay.trace_queue.stats.exported_items == 20, 5, "the exports to settle")
            # Nothing queued or in flight: the bad request was settled as failed, never queued again.
            wait_until(lambda: relay.trace_queue.depth == 0, 5, "an idle queue")
            requests = langfuse.ingest_requests
            assert [r.status for r in requests].count(400) == 1  # never retried
            assert not ids(bad) & set(accepted_ids(langfuse))
            st = relay.trace_queue.stats
            assert st.failed_permanent_items == 7 and st.failed_permanent_requests == 1
            assert st.exported_items == 20 and st.retries == 0
            # Logged with the upstream's own message.
            (rec,) = [r for r in caplog.records if "failed permanently" in r.getMessage()]
            assert "HTTP 400" in rec.getMessage() and "Injected failure" in rec.getMessage()
        finally:
            sender.close()


def test_partial_success_is_logged_and_counted_never_retried(caplog: pytest.LogCaptureFixture) -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    from promptstamp_relay.export.langfuse import _partial_success

    body = ExportTraceServiceResponse()
    body.partial_success.rejected_spans = 2
    body.partial_success.error_message = "2 spans too old"
    result = _partial_success(body.SerializeToString(), "application/x-protobuf")
    assert result.ok and result.rejected == 2 and result.message == "2 spans too old"

    partial = FakeExporter(then=result)

    from promptstamp_relay.deliver import DeliveryItem, MemoryQueue

    caplog.set_level(logging.WARNING, logger="promptstamp_relay")
    q = MemoryQueue(lambda tenant: partial, workers=1)
    q.start()
    q.put(DeliveryItem(b"x", 5))
    wait_until(lambda: q.stats.exported_requests == 1, 5, "the export")
    assert q.shutdown(1) == 0
    assert partial.calls == 1
    assert (q.stats.exported_items, q.stats.rejected_items) == (3, 2)
    assert any("partial success" in r.getMessage() and "too old" in r.getMessage() for r in caplog.records)


def test_connection_errors_and_timeouts_are_retryable(upstream: Upstream) -> None:
    from promptstamp_relay.export import LangfuseExporter

    down = LangfuseExporter("http://127.0.0.1:1", "pk", "sk", timeout=1)
    assert down.export(b"").outcome == "retry"
    upstream.delay(1.0)
    slow = LangfuseExporter(upstream.base_url, "pk", "sk", timeout=0.2)
    result = slow.export(b"")
    assert result.outcome == "retry" and "timed out" in result.message
    slow.shutdown()
    down.shutdown()
