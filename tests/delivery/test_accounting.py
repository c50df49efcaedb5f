"""Exact accounting under concurrent load: every span admitted ends in exactly one bucket."""

from __future__ import annotations

import threading
import time

import grpc

from tests.otlp_builders import LOGS_EXPORT, TRACES_EXPORT, fetch_record, gen_attrs, logs, span, traces
from tests.relays import running

from .conftest import config
from .upstream import Upstream

THREADS, REQUESTS, SPANS = 4, 40, 10


def test_received_equals_delivered_plus_failed_plus_lost_exactly(upstream: Upstream) -> None:
    upstream.fail(503, times=15)  # exports retried while the receivers are busy
    with running(config(upstream.base_url, **{"hold.seconds": 0.05, "queue.workers": 4,
                                            "retry.max_elapsed_seconds": 1})) as relay:
        now = time.time_ns()
        ok = [0] * THREADS

        def sender(t: int) -> None:
            with grpc.insecure_channel(relay.address) as channel:
                export = channel.unary_unary(TRACES_EXPORT)
                export_logs = channel.unary_unary(LOGS_EXPORT)
                for r in range(REQUESTS):
                    trace = 1000 * t + r + 1
                    export_logs(logs([fetch_record(version=2, time=now, trace=trace)]).SerializeToString(), timeout=10)
                    spans = [span(trace=trace, span_id=i + 1, start=now,
                                  attrs=gen_attrs() if i % 3 == 0 else {}) for i in range(SPANS)]
                    try:
                        export(traces(spans).SerializeToString(), timeout=10)
                        ok[t] += SPANS
                    except grpc.RpcError as e:
                        assert e.code() == grpc.StatusCode.UNAVAILABLE  # refused: not counted as received

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(THREADS)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        lost = relay.stop(timeout=5)
    st = relay.trace_queue.stats
    received = relay.stats.spans_received
    assert received == sum(ok) == THREADS * REQUESTS * SPANS
    settled = st.exported_items + st.rejected_items + st.failed_permanent_items + st.lost_items + st.kept_items
    assert settled == received, (received, st)
    assert st.lost_items == lost
    assert st.retries > 0 and len(relay.processor.hold) == 0
