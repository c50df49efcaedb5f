"""Queue full: the sender is refused with UNAVAILABLE + RetryInfo, retries, and nothing is lost."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2

from promptstamp.testing import LangfuseServer
from promptstamp_relay.config import Config
from tests.otlp_builders import TRACES_EXPORT
from tests.relays import running
from tests.waiting import wait_until

from .conftest import Sender, config, ids


@pytest.fixture
def langfuse() -> Iterator[LangfuseServer]:
    with LangfuseServer() as server:
        yield server


def full_relay_config(langfuse: LangfuseServer) -> Config:
    """One worker, room for two requests, upstream down: the third request finds it full."""
    langfuse.fail_ingest(503)
    return config(langfuse.base_url, **{
        "queue.workers": 1, "queue.max_requests": 2, "queue.retry_after_seconds": 0.5,
    })


def test_refusal_carries_retry_info_in_status_details_and_in_the_trailer(langfuse: LangfuseServer) -> None:
    with running(full_relay_config(langfuse), timeout=1) as relay:
        sender = Sender(relay.address, timeout=2)
        channel = grpc.insecure_channel(relay.address)
        try:
            for _ in range(2):
                assert sender.send(sender.make(1))
            wait_until(lambda: relay.trace_queue.depth == 2, 5, "a full queue")
            call = channel.unary_unary(TRACES_EXPORT)  # raw bytes in and out
            body = sender.exporter._translate_data(sender.make(1)).SerializeToString()
            with pytest.raises(grpc.RpcError) as err:
                call(body, timeout=5)
            e = err.value
            assert e.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
            trailers = dict(e.trailing_metadata())  # type: ignore[attr-defined]
            # Python's OTLP exporter reads this trailer ...
            info = error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"])
            assert info.retry_delay.ToTimedelta().total_seconds() == 0.5
            # ... Go's reads the status details.
            status = status_pb2.Status.FromString(trailers["grpc-status-details-bin"])
            assert status.code == code_pb2.UNAVAILABLE and "full" in status.message
            (detail,) = status.details
            unpacked = error_details_pb2.RetryInfo()
            assert detail.Unpack(unpacked) and unpacked == info
            assert relay.stats.refused_backpressure == 1
        finally:
            channel.close()
            sender.close()


def test_queue_full_the_otel_exporter_retries_and_nothing_is_lost(
    langfuse: LangfuseServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="opentelemetry.exporter.otlp.proto.grpc.exporter")
    with running(full_relay_config(langfuse)) as relay:
        sender = Sender(relay.address, timeout=20)
        recover = threading.Timer(1.0, langfuse.reset_faults)  # upstream back after ~1 s
        try:
            sent: set[bytes] = set()
            recover.start()
            for _ in range(8):  # sequential, as a BatchSpanProcessor sends
                batch = sender.make(5)
                assert sender.send(batch), "the exporter gave up"
                sent |= ids(batch)
            # The exporter was refused, read the RetryInfo (0.5 s) and retried.
            retries = [r.getMessage() for r in caplog.records if "Transient error" in r.getMessage()]
            assert retries and all("UNAVAILABLE" in m and "retrying in 0.50s" in m for m in retries)
            # (its logger drops repeated identical lines, so the relay's count is the exact one)
            assert relay.stats.refused_backpressure >= len(retries) >= 1
            wait_until(lambda: {s.span_id for r in langfuse.ingest_requests if r.status == 200 and r.request
                                for rs in r.request.resource_spans for ss in rs.scope_spans for s in ss.spans}
                       >= sent, 15, "every span")
            st = relay.trace_queue.stats
            wait_until(lambda: st.exported_items == 40, 5, "the exports to settle")
            assert st.failed_permanent_items == 0 and st.lost_items == 0
        finally:
            recover.cancel()
            sender.close()
            assert relay.stop(timeout=5) == 0


def test_grpcio_concurrency_limit_is_never_used() -> None:
    """grpcio's ``maximum_concurrent_rpcs`` answers a bare RESOURCE_EXHAUSTED (senders drop)."""
    import inspect

    from promptstamp_relay.receive import grpc as grpc_receiver

    assert "maximum_concurrent_rpcs=" not in inspect.getsource(grpc_receiver).replace(" ", "")
