"""Every hostile payload against a live relay over raw gRPC: a precise status (or OK) within a
time bound, then a normal request is still served, and at the end the relay still stamps.

Checked-in payloads are in ``corpus/`` (see ``make_corpus.py``); the large ones are built here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import LOGS_EXPORT, TRACES_EXPORT, fetch_record, gen_attrs, logs, sid, span, traces
from tests.relays import running
from tests.waiting import wait_until

from .conftest import call, relay_config
from .make_corpus import CASES, CORPUS_DIR, CORPUS_LIMITS, Case, manifest

CHECKED_IN = [c for c in CASES if c.checked_in]
GENERATED = [c for c in CASES if not c.checked_in]


def test_the_checked_in_corpus_is_what_the_generator_writes() -> None:
    assert json.loads((CORPUS_DIR / "MANIFEST.json").read_text()) == manifest()
    for case in CHECKED_IN:
        assert (CORPUS_DIR / case.filename).read_bytes() == case.build(), f"regenerate: {case.name}"
    assert {p.name for p in CORPUS_DIR.glob("*.binpb")} == {c.filename for c in CHECKED_IN}
    assert all((CORPUS_DIR / c.filename).stat().st_size < 16_384 for c in CHECKED_IN)


@pytest.fixture(scope="module")
def langfuse_module() -> Iterator[LangfuseServer]:
    with LangfuseServer(public_key="pk-lf-corpus", secret_key="sk-lf-corpus") as server:
        yield server


@pytest.fixture(scope="module")
def relay(langfuse_module: LangfuseServer) -> Iterator[RelayServer]:
    with running(relay_config(langfuse_module, **CORPUS_LIMITS), timeout=3) as server:
        yield server


_normal = iter(range(1, 10**6))


def still_serves(relay: RelayServer) -> None:
    n = next(_normal)
    req = traces([span("normal", trace=5000 + n, span_id=n)])
    assert call(relay.address, req.SerializeToString(), timeout=5) == (grpc.StatusCode.OK, "")


def send(relay: RelayServer, case: Case, data: bytes, bound: float) -> None:
    t0 = time.monotonic()
    code, details = call(relay.address, data, method=LOGS_EXPORT if case.signal == "logs" else TRACES_EXPORT, timeout=bound)
    elapsed = time.monotonic() - t0
    assert code.name == case.expect, f"{case.name}: {code.name} {details!r}"
    assert len(details) < 200
    assert elapsed < bound, f"{case.name} took {elapsed:.1f}s"
    still_serves(relay)


@pytest.mark.parametrize("case", CHECKED_IN, ids=lambda c: c.name)
def test_checked_in_hostile_payload(relay: RelayServer, case: Case) -> None:
    send(relay, case, (CORPUS_DIR / case.filename).read_bytes(), bound=5)


@pytest.mark.parametrize("case", GENERATED, ids=lambda c: c.name)
def test_large_hostile_payload_built_at_test_time(relay: RelayServer, case: Case) -> None:
    send(relay, case, case.build(), bound=15)


def test_after_the_corpus_the_relay_still_stamps_and_forwards(
    relay: RelayServer, langfuse_module: LangfuseServer
) -> None:
    now = time.time_ns()
    fetch = logs([fetch_record(version=7, time=now - 10**9, trace=9999)])
    assert call(relay.address, fetch.SerializeToString(), method=LOGS_EXPORT) == (grpc.StatusCode.OK, "")
    gen = traces([span("chat after the corpus", trace=9999, span_id=999_999, start=now, attrs=gen_attrs())])
    assert call(relay.address, gen.SerializeToString()) == (grpc.StatusCode.OK, "")
    got = wait_until(lambda: [o for o in langfuse_module.observations() if o.span_id == sid(999_999).hex()],
                     10, "the stamped span", interval=0.05)
    assert (got[0].prompt_name, got[0].prompt_version) == ("order-status-answer", 7)
    assert got[0].metadata["prompt_resolution"] == "trace"
    assert c.LF_PROMPT_VERSION in got[0].attributes
