"""The delivery queue's destinations, one mechanism at a time, with a fake exporter per
destination: the share of the bounds, the pause a retry puts on its destination only, workers
started for the others when one destination's exports hang, the bounded metrics label, the
per-destination order across a persistent restart; and the router's destination names."""

from __future__ import annotations

from pathlib import Path

from promptstamp_relay.deliver import DeliveryItem, MemoryQueue, PersistentQueue, QueueConfig
from promptstamp_relay.deliver.queue import MAX_DESTINATION_LABELS, OTHER_DESTINATION
from promptstamp_relay.export import OK, ExportResult
from promptstamp_relay.export.retry import Backoff
from promptstamp_relay.export.routing import TenantRouter
from promptstamp_relay.journal import Journal
from tests.fakes import FakeExporter
from tests.relays import relay_config
from tests.waiting import wait_until

FAST = Backoff(initial=0.01, maximum=0.01, max_elapsed=0, randomization=0)


def by_tenant(**exporters: FakeExporter) -> MemoryQueue:
    """A queue whose destinations are the tenants themselves, each with its own fake."""
    return MemoryQueue(lambda t: exporters[t], QueueConfig(max_requests=10, max_bytes=1000, workers=1, max_workers=4),
                       backoff=FAST, destination_of=lambda t: t, share=1.0)


def test_a_destination_holds_at_most_its_share_of_what_is_free() -> None:
    a, b = FakeExporter().block(), FakeExporter()
    q = by_tenant(a=a, b=b)
    # Not started: nothing leaves. a alone: at most half of the 10 requests.
    granted = 0
    while (full := q.reserve(10, tenant="a")) is None:
        q.put(DeliveryItem(b"x" * 10, 1, "a"))
        q.unreserve(10, tenant="a")
        granted += 1
    assert granted == 5 and full.destination == "a" and full.retry_after >= 1.0
    assert q.stats.destination_refused["a"] == 1
    assert q.reserve(10, tenant="b") is None  # b: 1 <= 5 free
    q.unreserve(10, "b")
    # bytes too: a's 50 bytes, b may hold up to what is free (950).
    assert q.reserve(900, tenant="b") is None
    q.unreserve(900, "b")
    assert q.reserve(960, tenant="b") is not None
    a.release()
    q.shutdown(0)


def test_a_retry_pauses_its_destination_only_and_the_hint_is_honoured() -> None:
    a = FakeExporter(ExportResult("retry", "429", retry_after=0.5), then=OK)
    b = FakeExporter()
    q = by_tenant(a=a, b=b)
    q.start()
    try:
        for i in range(3):
            q.put(DeliveryItem(f"a{i}".encode(), 1, "a"))
        wait_until(lambda: a.calls == 1, 5, "a's first attempt")
        for i in range(3):
            q.put(DeliveryItem(f"b{i}".encode(), 1, "b"))
        wait_until(lambda: b.calls == 3, 2, "b's requests, while a waits")
        assert a.calls == 1  # nothing of a's before its 0.5 s are over
        wait_until(lambda: q.stats.exported_items == 6, 5, "everything")
        assert a.payloads == [b"a0", b"a0", b"a1", b"a2"]  # the retried request first, then in order
        assert q.stats.retries == 1
    finally:
        q.shutdown(1)


def test_more_workers_start_when_one_destination_hangs() -> None:
    a, b = FakeExporter(block_timeout=10).block(), FakeExporter()
    q = MemoryQueue(lambda t: a if t == "a" else b, QueueConfig(workers=2, max_workers=3), backoff=FAST,
                    destination_of=lambda t: t, share=1.0)
    q.start()
    try:
        for i in range(5):
            q.put(DeliveryItem(f"a{i}".encode(), 1, "a"))
        wait_until(lambda: a.calls == 2, 5, "two of a's exports hanging")
        for i in range(5):
            q.put(DeliveryItem(f"b{i}".encode(), 1, "b"))
        wait_until(lambda: b.calls == 5, 5, "b's requests on a third worker")
        assert a.calls == 2 and len(q._threads) == 3  # at most queue.workers per destination; the cap
    finally:
        a.release()
        q.shutdown(2)
    assert q.stats.exported_items == 10


def test_the_destination_label_is_bounded() -> None:
    q = MemoryQueue(lambda t: FakeExporter(), QueueConfig(max_requests=1000), destination_of=lambda t: t, share=1.0)
    for i in range(MAX_DESTINATION_LABELS + 10):
        q.put(DeliveryItem(b"x", 1, f"t{i}"))
    depth = q.stats.destination_depth
    assert len(depth) == MAX_DESTINATION_LABELS + 1
    assert depth[OTHER_DESTINATION] == 10 and depth["t0"] == 1
    q.shutdown(0)
    assert sum(q.stats.destination_depth.values()) == 0


def test_persistent_rows_go_back_to_their_destinations_in_order(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    down = FakeExporter(then=ExportResult("retry", "503"))
    q = PersistentQueue(lambda t: down, j, QueueConfig(workers=1), backoff=FAST, destination_of=lambda t: t,
                        share=1.0)
    q.start()
    for i in range(3):
        q.put(DeliveryItem(f"a{i}".encode(), 1, "a"))
        q.put(DeliveryItem(f"b{i}".encode(), 1, "b"))
    wait_until(lambda: down.calls >= 2, 5, "attempts")
    q.shutdown(0.05)
    j.close()
    j = Journal(tmp_path)
    ok = FakeExporter()
    again = PersistentQueue(lambda t: ok, j, QueueConfig(workers=1), backoff=FAST, destination_of=lambda t: t,
                            share=1.0)
    again.put(DeliveryItem(b"a-new", 1, "a"))
    again.start()
    assert again.stats.destination_depth["a"] + again.stats.destination_depth["b"] <= 7
    wait_until(lambda: again.stats.exported_items == 7, 5, "every row")
    sent = [p.decode() for p in ok.payloads]
    assert [p for p in sent if p.startswith("a")] == ["a0", "a1", "a2", "a-new"]
    assert [p for p in sent if p.startswith("b")] == ["b0", "b1", "b2"]
    again.shutdown(1)
    j.close()


def test_the_router_names_each_destination() -> None:
    cfg = relay_config(None, **{
        "exporter.type": "langfuse", "exporter.langfuse.base_url": "http://127.0.0.1:9",
        "exporter.langfuse.public_key": "pk-lf-r", "exporter.langfuse.secret_key": "sk-lf-r",
        "auth.enabled": True, "auth.passthrough_langfuse_credentials": True,
        "auth.tenants": {
            "acme": {"tokens": ["acme-token-0123456789"], "langfuse_public_key": "pk-lf-acme",
                     "langfuse_secret_key": "sk-lf-acme"},
            "relay": {"tokens": ["relay-token-0123456789"], "langfuse_public_key": "pk-lf-x",
                      "langfuse_secret_key": "sk-lf-x"},
            "nokeys": {"tokens": ["nokeys-token-0123456789"]},
        }})
    router = TenantRouter(cfg, FakeExporter())
    assert router.several_destinations
    assert router.destination_of("default") == "relay"
    assert router.destination_of("nokeys") == "relay"
    assert router.destination_of("acme") == "acme"
    assert router.destination_of("relay") == "tenant:relay"  # never the relay's own
    assert router.destination_of("pk-lf-abc#0123456789abcdef") == "pk-lf-abc#0123456789abcdef"
    assert router.destination_of("sk-lf-oops#0123456789abcdef") == "passthrough#0123456789abcdef"
    assert router.destinations() == ["relay", "acme", "tenant:relay"]
    single = TenantRouter(relay_config(None, **{"auth.enabled": True, "auth.tenants": {
        "a": {"tokens": ["a-token-0123456789abc"]}}}), FakeExporter())
    assert not single.several_destinations  # the debug exporter: one destination for all


def test_the_relay_builds_one_share_per_destination_only_when_there_are_several() -> None:
    from promptstamp_relay.wiring import build

    one = build(relay_config(None))
    try:
        assert one.trace_queue.share is None  # type: ignore[attr-defined]
    finally:
        one.close()
    cfg = relay_config(None, **{
        "exporter.type": "langfuse", "exporter.langfuse.base_url": "http://127.0.0.1:9",
        "exporter.langfuse.public_key": "pk-lf-r", "exporter.langfuse.secret_key": "sk-lf-r",
        "auth.enabled": True, "auth.tenants": {"acme": {
            "tokens": ["acme-token-0123456789"], "langfuse_public_key": "pk-lf-acme",
            "langfuse_secret_key": "sk-lf-acme"}}})
    several = build(cfg)
    try:
        assert several.trace_queue.share == 1.0  # type: ignore[attr-defined]
        assert set(several.trace_queue.stats.destination_depth) == {"relay", "acme"}
        assert several.logs_queue is None
    finally:
        several.close()
