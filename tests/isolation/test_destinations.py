"""One tenant's upstream in trouble stays its own: tenant A's Langfuse project answers 503, or
429 with Retry-After, or hangs; A keeps sending at full speed; tenant B (the OTel SDK's
exporter) is accepted and delivered as usual. Once A's project recovers, everything A was told
OK about arrives: nothing lost (spans in − permanent errors = spans out, exactly).
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import grpc
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.delivery.upstream import Upstream
from tests.relays import running
from tests.waiting import wait_until

from .conftest import TOKEN_A, TOKEN_B, Flood, SdkSender, delivered, two_tenants


def settled(relay: RelayServer) -> dict[str, int]:
    st = relay.trace_queue.stats
    return {"exported": st.exported_items, "failed": st.failed_permanent_items, "rejected": st.rejected_items,
            "lost": st.lost_items, "kept": st.kept_items}


def b_sends_as_usual(b: SdkSender, langfuse_b: LangfuseServer, *, requests: int = 20, each: float = 2.0) -> None:
    """B's exports all succeed at once (no refusal: the SDK would have retried and taken seconds),
    and each batch is at B's Langfuse within ``each`` seconds."""
    for _ in range(requests):
        before = set(b.sent)
        assert b.send(5), "tenant B's export was refused"
        new = b.sent - before
        wait_until(lambda new=new: new <= delivered(langfuse_b), each,  # type: ignore[misc]
                   "tenant B's batch at its own Langfuse", interval=0.01)
    assert max(b.durations) < 1.0, f"tenant B's exports took up to {max(b.durations):.2f} s"


def test_tenant_b_is_unaffected_while_a_upstream_answers_503(
        langfuse_relay: LangfuseServer, langfuse_a: LangfuseServer, langfuse_b: LangfuseServer) -> None:
    langfuse_a.fail_ingest(503)  # until reset
    cfg = two_tenants(langfuse_relay, langfuse_a.base_url, langfuse_b)
    with running(cfg, timeout=10) as relay:
        b = SdkSender(relay.address, TOKEN_B)
        try:
            with Flood(relay.address, TOKEN_A, clients=4, spans=20) as flood:
                # A fills its own share of the queue and is refused from then on.
                wait_until(lambda: len(flood.refusals) >= 20, 20, "tenant A to be refused")
                b_sends_as_usual(b, langfuse_b)
            # A's refusals: UNAVAILABLE with RetryInfo, the way OTLP senders are told to retry.
            codes = {code for code, _ in flood.refusals}
            assert codes == {grpc.StatusCode.UNAVAILABLE}, codes
            assert all(delay is not None and delay >= 1.0 for _, delay in flood.refusals)
            depth = relay.trace_queue.stats.destination_depth
            assert depth["a"] > 0 and depth["a"] <= relay.trace_queue.max_requests // 2 + 1
            assert relay.trace_queue.stats.destination_refused["a"] >= 20
            assert relay.trace_queue.stats.destination_refused["b"] == 0
            # A's project comes back: everything A was told OK about arrives.
            langfuse_a.reset_faults()
            wait_until(lambda: flood.accepted <= delivered(langfuse_a), 30,
                       lambda: f"{len(flood.accepted - delivered(langfuse_a))} of A's spans to arrive")
            wait_until(lambda: relay.trace_queue.depth == 0, 10, "the queue to drain")
            assert b.sent <= delivered(langfuse_b)
            assert not delivered(langfuse_b) & flood.accepted and not delivered(langfuse_a) & b.sent
            # Exact accounting: spans in - permanent errors = spans out.
            counts = settled(relay)
            assert counts == {"exported": len(flood.accepted) + len(b.sent), "failed": 0, "rejected": 0,
                              "lost": 0, "kept": 0}
        finally:
            b.close()


def test_a_429_with_retry_after_pauses_only_a_and_is_honoured(
        langfuse_relay: LangfuseServer, langfuse_b: LangfuseServer) -> None:
    with Upstream() as upstream_a:
        upstream_a.fail(429, retry_after=1.5)
        cfg = two_tenants(langfuse_relay, upstream_a.base_url, langfuse_b)
        with running(cfg, timeout=10) as relay:
            b = SdkSender(relay.address, TOKEN_B)
            try:
                with Flood(relay.address, TOKEN_A, clients=2, spans=10) as flood:
                    wait_until(lambda: len(upstream_a.snapshot()) >= 6, 20, "attempts at A's project")
                    b_sends_as_usual(b, langfuse_b, requests=10)
                # The whole destination waits as told: attempts at A's project come in waves
                # ~1.5 s apart (the relay's own backoff here would be 0.1-0.5 s), each wave at
                # most queue.workers exports.
                times = sorted(r.at for r in upstream_a.snapshot())
                waves = [[times[0]]]
                for t in times[1:]:
                    if t - waves[-1][0] > 0.5:
                        waves.append([])
                    waves[-1].append(t)
                gaps = [w2[0] - w1[0] for w1, w2 in itertools.pairwise(waves)]
                assert gaps and all(1.4 <= g <= 2.6 for g in gaps), gaps
                assert all(len(w) <= 2 for w in waves), waves
                upstream_a.recover()
                wait_until(lambda: flood.accepted <= set(upstream_a.accepted_span_ids()), 30,
                           "A's spans after the 429s")
                wait_until(lambda: relay.trace_queue.depth == 0, 10, "the queue to drain")
                assert settled(relay)["exported"] == len(flood.accepted) + len(b.sent)
                assert settled(relay)["failed"] == 0
            finally:
                b.close()


def test_b_is_unaffected_while_a_upstream_hangs(
        langfuse_relay: LangfuseServer, langfuse_b: LangfuseServer) -> None:
    """A's project takes each request and answers only after 3 s (the exporter gives up at 2 s):
    A's exports occupy their workers, the relay starts more for B."""
    with Upstream() as upstream_a:
        upstream_a.delay(3.0)
        cfg = two_tenants(langfuse_relay, upstream_a.base_url, langfuse_b, **{"queue.workers": 2})
        with running(cfg, timeout=10) as relay:
            b = SdkSender(relay.address, TOKEN_B)
            try:
                with Flood(relay.address, TOKEN_A, clients=2, spans=10) as flood:
                    wait_until(lambda: len(upstream_a.snapshot()) >= 2, 10, "A's exports on the wire")
                    b_sends_as_usual(b, langfuse_b, requests=10)
                upstream_a.recover()
                wait_until(lambda: flood.accepted <= set(upstream_a.accepted_span_ids()), 30,
                           "A's spans once its project answers again")
                assert settled(relay)["failed"] == 0
            finally:
                b.close()


def test_the_default_tenant_keeps_flowing_while_a_tenant_project_is_down(
        langfuse_relay: LangfuseServer, langfuse_a: LangfuseServer, langfuse_b: LangfuseServer) -> None:
    """The relay's own exporter is a destination too: a tenant without keys of its own (here
    ``c``, going out with the relay's keys) is not held up by A."""
    langfuse_a.fail_ingest(503)
    cfg = two_tenants(langfuse_relay, langfuse_a.base_url, langfuse_b,
                      more_tenants={"c": {"tokens": ["tenant-c-token-0123456789abcdef"]}})
    with running(cfg, timeout=10) as relay:
        c = SdkSender(relay.address, "tenant-c-token-0123456789abcdef")
        try:
            with Flood(relay.address, TOKEN_A, clients=4, spans=20) as flood:
                wait_until(lambda: len(flood.refusals) >= 10, 20, "tenant A to be refused")
                b_sends_as_usual(c, langfuse_relay, requests=10)
            assert relay.trace_queue.stats.destination_depth["relay"] == 0
        finally:
            c.close()
            langfuse_a.reset_faults()


def test_over_otlp_http_a_refusal_is_503_with_retry_after(
        langfuse_relay: LangfuseServer, langfuse_a: LangfuseServer, langfuse_b: LangfuseServer) -> None:
    """Over OTLP/HTTP, the OTel SDK's HTTP exporter of tenant B goes through; tenant A, once its
    share is full, gets 503 + Retry-After (the SDK's HTTP exporter retries that)."""
    import httpx

    from tests.otlp_builders import span, traces

    langfuse_a.fail_ingest(503)
    cfg = two_tenants(langfuse_relay, langfuse_a.base_url, langfuse_b, **{"queue.max_requests": 10})
    with running(cfg, timeout=10) as relay:
        url = f"http://{relay.http_address}/v1/traces"
        headers_a = {"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {TOKEN_A}"}
        statuses: list[tuple[int, str | None]] = []
        with httpx.Client(trust_env=False, timeout=10) as client:
            for i in range(12):
                body = traces([span(trace=100 + i, span_id=100 + i, start=time.time_ns())]).SerializeToString()
                r = client.post(url, content=body, headers=headers_a)
                statuses.append((r.status_code, r.headers.get("retry-after")))
        assert statuses[0][0] == 200
        assert (503, "1") in statuses, statuses  # its half of the queue is full
        b = HttpSpanExporter(endpoint=url, headers={"authorization": f"Bearer {TOKEN_B}"}, timeout=5)
        try:
            sender = SdkSender(relay.address, TOKEN_B)
            spans = sender.make(3)
            sender.close()
            t0 = time.monotonic()
            assert b.export(spans) == SpanExportResult.SUCCESS
            assert time.monotonic() - t0 < 1.0
            wait_until(lambda: {s.context.span_id.to_bytes(8, "big") for s in spans} <= delivered(langfuse_b), 5,
                       "tenant B's spans over HTTP")
        finally:
            b.shutdown()
            langfuse_a.reset_faults()


def test_persistent_mode_keeps_each_destination_apart_across_a_restart(
        tmp_path: Path, langfuse_relay: LangfuseServer, langfuse_a: LangfuseServer,
        langfuse_b: LangfuseServer) -> None:
    """A's project down: A's share of the queue is on disk when the relay stops; after the
    restart those rows are A's again (its share still full, its senders still refused) while B is
    accepted and delivered at once; A's rows go out when its project comes back."""
    langfuse_a.fail_ingest(503)
    cfg = two_tenants(langfuse_relay, langfuse_a.base_url, langfuse_b, **{
        "queue.directory": str(tmp_path / "q"), "queue.synchronous": "normal", "queue.max_requests": 40})
    with running(cfg, timeout=0.5) as relay, Flood(relay.address, TOKEN_A, clients=2, spans=10) as flood:
        wait_until(lambda: len(flood.refusals) >= 5, 20, "tenant A's share to fill")
    first = set(flood.accepted)
    assert relay.trace_queue.stats.kept_items == len(first)
    with running(cfg, timeout=10) as again:
        assert again.trace_queue.stats.recovered_items == len(first)
        assert again.trace_queue.stats.destination_depth["a"] == len(first) // 10
        with Flood(again.address, TOKEN_A, clients=1, spans=10) as flood2:
            wait_until(lambda: flood2.refusals, 10, "A refused at once: its share came back full")
        assert not flood2.accepted
        b = SdkSender(again.address, TOKEN_B)
        try:
            b_sends_as_usual(b, langfuse_b, requests=5)
        finally:
            b.close()
        langfuse_a.reset_faults()
        wait_until(lambda: first <= delivered(langfuse_a), 30, "A's rows from disk once its project is back")
        wait_until(lambda: again.trace_queue.depth == 0, 10, "the queue to drain")
        assert again.trace_queue.stats.failed_permanent_items == 0
