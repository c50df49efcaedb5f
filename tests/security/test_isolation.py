"""Tenants never resolve each other's spans, at any tier; forged baggage never becomes a link.

Tenant B's spans share everything with tenant A's fetch log (trace id, instance, key, label,
times): the tenant is the only difference, so only isolation keeps them apart.
"""

from __future__ import annotations

import time
from typing import Any

import grpc
import pytest

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import (
    LOGS_EXPORT,
    T0,
    S,
    all_spans,
    attrs_of,
    fetch_record,
    gen_attrs,
    logs,
    span,
    traces,
)
from tests.relays import running
from tests.waiting import wait_until

from .conftest import TOKEN_A, TOKEN_B, bearer, call, relay_config

A, B = "tenant-a", "tenant-b"


def processor(hold_s: float = 0.0, api: Any = None) -> Processor:
    return Processor(StampSettings(hold_ns=int(hold_s * S), staleness_ns=3600 * S), MemoryStore(), api=api)


def outcome(p: Processor, tenant: str, *, trace: int, now: int = T0 + 2 * S) -> tuple[str, int | None]:
    out = p.consume_traces(traces([span(trace=trace, span_id=trace, start=T0 + S, attrs=gen_attrs())]),
                           now, tenant)
    out += p.release_all()
    (s,) = all_spans(out)
    a = attrs_of(s)
    return a[c.LF_META_RESOLUTION], a.get(c.LF_PROMPT_VERSION)


# Each tier, set up so that it is the one that would answer for tenant A.
TIERS = {
    # A fetch record in the same trace.
    "trace": dict(record=dict(trace=7), span_trace=7),
    # A fetch record from the same instance, outside any trace.
    "instance": dict(record=dict(trace=None), span_trace=8),
    # A fetch record from another instance of the tenant.
    "latest": dict(record=dict(trace=None), span_trace=9, resource={c.SERVICE_NAME: "other", c.SERVICE_INSTANCE_ID: "x"}),
}


@pytest.mark.parametrize("tier", list(TIERS))
@pytest.mark.parametrize("hold_s", [0.0, 2.0])
def test_a_fetch_log_of_tenant_a_never_stamps_a_span_of_tenant_b(tier: str, hold_s: float) -> None:
    setup: dict[str, Any] = TIERS[tier]
    p = processor(hold_s)
    p.consume_logs(logs([fetch_record(version=3, time=T0, **setup["record"])], resource=setup.get("resource")), T0, A)
    assert outcome(p, B, trace=setup["span_trace"]) == ("unresolved", None)
    assert outcome(p, A, trace=setup["span_trace"]) == (tier, 3)


def test_the_api_tier_is_asked_per_tenant() -> None:
    asked: list[tuple[str, str, str]] = []

    def api(tenant: str, name: str, label: str) -> int | None:
        asked.append((tenant, name, label))
        return 4 if tenant == A else None  # only tenant A's project has the prompt

    p = processor(api=api)
    assert outcome(p, B, trace=1) == ("unresolved", None)
    assert outcome(p, A, trace=2) == ("api", 4)
    assert [t for t, _, _ in asked] == [B, A]


def test_an_arriving_fetch_log_releases_only_its_own_tenants_held_spans() -> None:
    p = processor(hold_s=5.0)
    for tenant in (A, B):
        assert p.consume_traces(traces([span(trace=1, start=T0, attrs=gen_attrs())]), T0, tenant) == []
    released = p.consume_logs(logs([fetch_record(version=3, trace=1, time=T0)]), T0 + S, A).released
    assert [o.tenant for o in released] == [A]
    assert attrs_of(all_spans(released)[0])[c.LF_PROMPT_VERSION] == 3
    rest = p.release_all()
    assert [o.tenant for o in rest] == [B]
    assert attrs_of(all_spans(rest)[0])[c.LF_META_RESOLUTION] == "unresolved"


def test_one_tenant_cannot_fill_the_hold_window_for_the_others() -> None:
    p = Processor(StampSettings(hold_ns=5 * S), MemoryStore(), max_held_spans=10, max_held_spans_per_tenant=4)
    flood = traces([span(trace=100 + i, span_id=i + 1, attrs=gen_attrs()) for i in range(8)])
    out = p.consume_traces(flood, T0, A)
    assert len(p.hold) == 4 and len(all_spans(out)) == 4  # the rest is stamped at once, not lost
    p.consume_traces(traces([span(trace=1, span_id=99, attrs=gen_attrs())]), T0, B)
    assert p.hold.held_for(B) == 1  # B still gets its window


def test_one_tenant_flooding_the_store_evicts_its_own_records_first() -> None:
    store = MemoryStore(max_entries=10, max_entries_per_tenant=8)
    p = Processor(StampSettings(hold_ns=0), store)
    p.consume_logs(logs([fetch_record(version=2, trace=1, time=T0)]), T0, B)
    p.consume_logs(logs([fetch_record(version=9, trace=50 + i, time=T0 + i) for i in range(50)]), T0, A)
    assert len(store) == 9  # A keeps its 8, B keeps its one
    assert outcome(p, B, trace=1) == ("trace", 2)


# --------------------------------------------------------------------------------------------
# Forged links: baggage alone never becomes a Langfuse link
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "records",
    [
        [],  # no fetch log at all: the key in baggage is all there is
        [dict(key="another-prompt")],  # a fetch of another prompt
        [dict(label="staging")],  # the same prompt under another label
        [dict(source="fallback", version=None)],  # a code-embedded prompt: no version
    ],
)
def test_a_key_and_label_without_a_confirming_fetch_record_are_never_linked(records: list[dict[str, Any]]) -> None:
    p = processor()
    if records:
        p.consume_logs(logs([fetch_record(time=T0, trace=None, **r) for r in records]), T0, A)
    out = p.consume_traces(traces([span(trace=1, start=T0 + S, attrs=gen_attrs())]), T0 + S, A)
    a = attrs_of(all_spans(out)[0])
    assert a[c.LF_META_RESOLUTION] == "unresolved"
    assert c.LF_PROMPT_NAME not in a and c.LF_PROMPT_VERSION not in a
    assert a[c.LF_META_PROMPT_NAME] == "order-status-answer"  # metadata only


# --------------------------------------------------------------------------------------------
# Live, through the server, two tenants' credentials, at every tier
# --------------------------------------------------------------------------------------------
def wait_for(server: LangfuseServer, n: int) -> dict[str, dict[str, Any]]:
    return {o.name: o.metadata | {"version": o.prompt_version} for o in server.wait_for_observations(n, timeout=10)}


def test_live_isolation_between_two_tenants_at_every_tier(langfuse: LangfuseServer) -> None:
    with LangfuseServer(public_key="pk-lf-iso-b", secret_key="sk-lf-iso-b") as langfuse_b:
        tenants = {
            "a": {"tokens": [TOKEN_A]},  # the relay's own Langfuse keys
            "b": {"tokens": [TOKEN_B], "langfuse_public_key": langfuse_b.public_key,
                  "langfuse_secret_key": langfuse_b.secret_key, "langfuse_base_url": langfuse_b.base_url},
        }
        cfg = relay_config(langfuse, **{"auth.enabled": True, "auth.tenants": tenants, "hold.seconds": 0.3})
        with running(cfg, timeout=3) as relay:
            now = time.time_ns()
            agent = {c.SERVICE_NAME: "agent", c.SERVICE_INSTANCE_ID: "agent-1"}
            # Tenant A's fetch log: one in trace 7, one outside any trace.
            fetches = logs([fetch_record(version=3, time=now - 5 * S, trace=7),
                            fetch_record(version=3, time=now - 5 * S, trace=None)], resource=agent)
            assert call(relay.address, fetches.SerializeToString(), method=LOGS_EXPORT,
                        metadata=bearer(TOKEN_A))[0] == grpc.StatusCode.OK
            other = {c.SERVICE_NAME: "other", c.SERVICE_INSTANCE_ID: "other-1"}
            for token, offset in ((TOKEN_B, 0), (TOKEN_A, 100)):
                for name, trace, resource in (("trace", 7, agent), ("instance", 8, agent), ("latest", 9, other)):
                    req = traces([span(name, trace=trace, span_id=offset + trace, start=now - S, attrs=gen_attrs())],
                                 resource=resource)
                    assert call(relay.address, req.SerializeToString(), metadata=bearer(token))[0] == grpc.StatusCode.OK
            got_a, got_b = wait_for(langfuse, 3), wait_for(langfuse_b, 3)
        assert {n: (m["prompt_resolution"], m["version"]) for n, m in got_a.items()} == {
            "trace": ("trace", 3), "instance": ("instance", 3), "latest": ("latest", 3)}
        assert {n: (m["prompt_resolution"], m["version"]) for n, m in got_b.items()} == {
            "trace": ("unresolved", None), "instance": ("unresolved", None), "latest": ("unresolved", None)}
        assert langfuse.rejected() == [] and langfuse_b.rejected() == []


def test_live_api_tier_asks_each_tenants_own_langfuse_project(langfuse: LangfuseServer) -> None:
    with LangfuseServer(public_key="pk-lf-api-b", secret_key="sk-lf-api-b") as langfuse_b:
        langfuse.create_prompt("order-status-answer", "v1 of A", type="text", labels=["production"])
        for text in ("v1 of B", "v2 of B"):
            langfuse_b.create_prompt("order-status-answer", text, type="text", labels=["production"])
        tenants = {
            "a": {"tokens": [TOKEN_A]},
            "b": {"tokens": [TOKEN_B], "langfuse_public_key": langfuse_b.public_key,
                  "langfuse_secret_key": langfuse_b.secret_key, "langfuse_base_url": langfuse_b.base_url},
        }
        cfg = relay_config(langfuse, **{"auth.enabled": True, "auth.tenants": tenants, "hold.seconds": 1.0,
                                        "resolution.api.enabled": True})
        with running(cfg, timeout=3) as relay:
            # The api tier answers from a local view: the first span of each tenant registers
            # interest (and goes out unresolved), the next ones get the answer.
            for round_, name in ((0, "warm-up"), (10, "gen")):
                for token, span_id in ((TOKEN_A, 1), (TOKEN_B, 2)):
                    req = traces([span(name, trace=round_ + span_id, span_id=round_ + span_id,
                                       start=time.time_ns(), attrs=gen_attrs())])
                    assert call(relay.address, req.SerializeToString(), metadata=bearer(token))[0] == grpc.StatusCode.OK
                wait_until(lambda: langfuse.prompt_requests and langfuse_b.prompt_requests, 10,
                           "both tenants' Langfuse to be asked for the prompt")
            got_a, got_b = wait_for(langfuse, 2), wait_for(langfuse_b, 2)
        assert (got_a["gen"]["prompt_resolution"], got_a["gen"]["version"]) == ("api", 1)
        assert (got_b["gen"]["prompt_resolution"], got_b["gen"]["version"]) == ("api", 2)


def test_the_per_tenant_hold_share_applies_only_when_there_are_tenants() -> None:
    from promptstamp_relay.wiring import build_processor

    single = build_processor(relay_config())
    assert single.max_held_spans_per_tenant == single.hold.max_spans == 100_000
    multi = build_processor(relay_config(None, **{"auth.enabled": True, "auth.tenants": {"a": {"tokens": [TOKEN_A]}}}))
    assert multi.max_held_spans_per_tenant == 25_000
