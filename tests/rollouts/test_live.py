"""A live relay: per-version metrics from a real ``/metrics`` scrape, the series bound, the
timeline endpoint's tenant isolation, its sketches (``sketches=1``) and two snapshots of them
subtracting to what came in between, and Langfuse webhook signatures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import promptstamp_contract as c
from promptstamp_relay.rollouts._model import duration_bucket, rfc3339, token_bucket, window
from promptstamp_relay.rollouts._webhook import sign
from tests.otlp_builders import S
from tests.waiting import wait_until

from .conftest import PROMPT, Relay, http

RelayFactory = Callable[..., Relay]


def scrape(relay: Relay) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, text = relay.get("/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def test_per_version_metrics_on_a_real_scrape(relays: RelayFactory) -> None:
    relay = relays()
    relay.generation("pod-a", 13, duration_ms=300)
    relay.generation("pod-a", 13, duration_ms=3000, error=True, tokens=(50, 5),
                     token_keys=(c.GEN_AI_USAGE_PROMPT_TOKENS, c.GEN_AI_USAGE_COMPLETION_TOKENS))
    relay.generation("pod-b", 14, duration_ms=700, tokens=(7, 3),
                     token_keys=(c.LLM_TOKEN_COUNT_PROMPT, c.LLM_TOKEN_COUNT_COMPLETION))
    relay.generation("pod-c", None, label="canary")  # no fetch record for it: unresolved after the hold
    # The unresolved one waits out the hold window (0.2 s) first.
    def unresolved_counted() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        got = scrape(relay)
        return got if sample(got, "promptstamp_generations_total", tenant="default", prompt=PROMPT,
                             version="none", label="canary", outcome="ok") == 1 else None

    m = wait_until(unresolved_counted, what="the unresolved generation's series")
    v13 = {"tenant": "default", "prompt": PROMPT, "version": "13", "label": "production"}
    v14 = {**v13, "version": "14"}
    assert sample(m, "promptstamp_generations_total", **v13, outcome="ok") == 1
    assert sample(m, "promptstamp_generations_total", **v13, outcome="error") == 1
    assert sample(m, "promptstamp_generations_total", **v14, outcome="ok") == 1
    assert sample(m, "promptstamp_generations_total", **{**v13, "version": "none", "label": "canary"},
                  outcome="ok") == 1
    # All three token conventions are read.
    assert sample(m, "promptstamp_generation_tokens_total", **v13, direction="input") == 150
    assert sample(m, "promptstamp_generation_tokens_total", **v13, direction="output") == 25
    assert sample(m, "promptstamp_generation_tokens_total", **v14, direction="input") == 7
    assert sample(m, "promptstamp_generation_tokens_total", **v14, direction="output") == 3
    assert sample(m, "promptstamp_generation_duration_seconds_count", **v13) == 2
    assert sample(m, "promptstamp_generation_duration_seconds_sum", **v13) == 3.3
    assert sample(m, "promptstamp_generation_duration_seconds_bucket", **v13, le="0.5") == 1
    assert sample(m, "promptstamp_generation_duration_seconds_bucket", **v13, le="4.0") == 2
    assert sample(m, "promptstamp_generation_duration_seconds_bucket", **v14, le="1.0") == 1


def test_series_are_bounded_and_folded_under_other(relays: RelayFactory) -> None:
    relay = relays(**{"rollouts.max_series": 3})
    for v in (1, 2, 3):  # three series of their own
        relay.generation("pod-a", v)
    for v in (4, 5):  # a known prompt + label: its version="other"
        relay.generation("pod-a", v)
    relay.generation("pod-a", 9, prompt="attacker-chosen-name")  # a new prompt: all "other"
    m = scrape(relay)
    series = {dict(k[1])["version"] + "/" + dict(k[1])["prompt"] for k in m
              if k[0] == "promptstamp_generations_total" and dict(k[1])["outcome"] == "ok"}
    assert series == {f"1/{PROMPT}", f"2/{PROMPT}", f"3/{PROMPT}", f"other/{PROMPT}", "other/other"}
    assert sample(m, "promptstamp_generations_total", tenant="default", prompt=PROMPT, version="other",
                  label="production", outcome="ok") == 2
    assert sample(m, "promptstamp_generations_total", tenant="default", prompt="other", version="other",
                  label="other", outcome="ok") == 1
    assert sample(m, "promptstamp_rollout_series_folded_total", tenant="default") == 3
    # The timeline keeps every version regardless (it has its own bounds).
    status, body = relay.get(f"/api/v1/prompts/{PROMPT}/timeline")
    assert status == 200
    assert [v["version"] for v in body["labels"]["production"]["versions"]] == [1, 2, 3, 4, 5]


TOKEN_A, TOKEN_B = "tenant-a-token-0123456789", "tenant-b-token-0123456789"


def test_the_endpoint_needs_credentials_and_a_tenant_sees_only_its_own(relays: RelayFactory) -> None:
    relay = relays(**{"auth.enabled": True,
                      "auth.tenants": {"acme": {"tokens": [TOKEN_A]}, "globex": {"tokens": [TOKEN_B]}}})
    relay.generation("pod-a", 7, authorization=f"Bearer {TOKEN_A}")
    relay.generation("pod-z", 2, prompt="globex-prompt", authorization=f"Bearer {TOKEN_B}")
    path = f"/api/v1/prompts/{PROMPT}/timeline"
    status, body = relay.get(path, {"Authorization": f"Bearer {TOKEN_A}"})
    assert status == 200 and body["labels"]["production"]["current"] == 7
    status, body = relay.get(path, {"Authorization": f"Bearer {TOKEN_B}"})
    assert status == 404 and "no timeline" in body["error"]  # the same answer as a prompt nobody has
    status, body = relay.get("/api/v1/prompts/globex-prompt/timeline", {"Authorization": f"Bearer {TOKEN_A}"})
    assert status == 404
    status, body = relay.get(path)
    assert status == 401 and body == {"error": "missing or invalid credentials"}
    status, _ = relay.get(path, {"Authorization": "Bearer not-a-token-of-anyone"})
    assert status == 401


def test_sketches_need_the_same_credentials_and_stay_within_the_tenant(relays: RelayFactory) -> None:
    relay = relays(**{"auth.enabled": True,
                      "auth.tenants": {"acme": {"tokens": [TOKEN_A]}, "globex": {"tokens": [TOKEN_B]}}})
    relay.generation("pod-a", 7, authorization=f"Bearer {TOKEN_A}")
    path = f"/api/v1/prompts/{PROMPT}/timeline?label=production&sketches=1"
    status, body = relay.get(path, {"Authorization": f"Bearer {TOKEN_A}"})
    assert status == 200 and body["labels"]["production"]["versions"][0]["sketches"]["duration_ms"]
    status, body = relay.get(path, {"Authorization": f"Bearer {TOKEN_B}"})
    assert status == 404 and "no timeline" in body["error"]
    status, body = relay.get(path)
    assert status == 401 and body == {"error": "missing or invalid credentials"}


def test_sketches_are_served_with_sketches_1_and_two_snapshots_subtract_to_what_came_between(
        relays: RelayFactory) -> None:
    relay = relays()
    relay.generation("pod-a", 13, duration_ms=300, tokens=(100, 20))
    path = f"/api/v1/prompts/{PROMPT}/timeline?label=production"
    _, plain = relay.get(path)
    _, zero = relay.get(path + "&sketches=0")
    status, first = relay.get(path + "&sketches=1")
    assert status == 200
    assert "sketches" not in plain["labels"]["production"]["versions"][0] and zero == plain
    (v13,) = first["labels"]["production"]["versions"]
    assert v13.pop("sketches") == {"duration_ms": {str(duration_bucket(300 * 10**6)): 1},
                                   "output_tokens": {str(token_bucket(20)): 1},
                                   "input_tokens": {str(token_bucket(100)): 1}}
    assert first == plain  # the rest as without sketches

    _, first = relay.get(path + "&sketches=1")
    relay.generation("pod-a", 13, duration_ms=300, tokens=(100, 20))
    relay.generation("pod-a", 13, duration_ms=2000, error=True, tokens=(7, 0))
    relay.generation("pod-b", 14, duration_ms=900, tokens=(4000, 250))
    _, second = relay.get(path + "&sketches=1")

    def entry(body: dict[str, Any], version: int) -> dict[str, Any] | None:
        return next((v for v in body["labels"]["production"]["versions"] if v["version"] == version), None)

    w13 = window(entry(first, 13), entry(second, 13))
    assert (w13["generations"], w13["errors"], w13["input_tokens"], w13["output_tokens"]) == (2, 1, 107, 20)
    assert w13["sketches"] == {
        "duration_ms": {duration_bucket(300 * 10**6): 1, duration_bucket(2000 * 10**6): 1},
        "output_tokens": {token_bucket(20): 1, -1: 1}, "input_tokens": {token_bucket(100): 1, token_bucket(7): 1}}
    w14 = window(entry(first, 14), entry(second, 14))  # no entry at the first snapshot
    assert (w14["generations"], w14["errors"]) == (1, 0)
    assert w14["sketches"] == {"duration_ms": {duration_bucket(900 * 10**6): 1},
                               "output_tokens": {token_bucket(250): 1}, "input_tokens": {token_bucket(4000): 1}}
    with pytest.raises(ValueError, match="take a new baseline"):  # the snapshots the wrong way round
        window(entry(second, 13), entry(first, 13))


def test_names_with_slashes_and_a_label_filter(relays: RelayFactory) -> None:
    relay = relays()
    relay.generation("pod-a", 1, prompt="support/order status")
    relay.generation("pod-a", 4, prompt="support/order status", label="staging")
    status, body = relay.get("/api/v1/prompts/support%2Forder%20status/timeline?label=staging")
    assert status == 200 and body["prompt"] == "support/order status"
    assert list(body["labels"]) == ["staging"]
    status, _ = relay.get("/api/v1/prompts/support%2Forder%20status/timeline?label=nope")
    assert status == 404


SECRET = "lf-whsec_" + "ab" * 32


def event(version: int, labels: list[str], updated: str, action: str = "updated") -> bytes:
    return json.dumps({
        "id": "exec-1", "timestamp": updated, "type": "prompt-version", "apiVersion": "v1", "action": action,
        "prompt": {"id": "p1", "name": PROMPT, "version": version, "projectId": "project-test",
                   "labels": labels, "prompt": [], "type": "chat", "config": {}, "commitMessage": None,
                   "tags": [], "createdAt": "2023-11-14T22:00:00.000Z", "updatedAt": updated},
    }).encode()


def test_webhook_signatures_good_and_bad(relays: RelayFactory) -> None:
    relay = relays(**{"rollouts.webhook_secrets": {"default": SECRET}})
    now = int(time.time())
    t0 = (now - 600) * S
    relay.generation("pod-a", 13, at=t0)
    relay.generation("pod-a", 14, at=t0 + 100 * S)
    url = relay.url + "/api/v1/webhooks/langfuse"
    moved = rfc3339(t0 + 90 * S)
    good = event(14, ["production", "latest"], moved)

    def post(body: bytes, signature: str | None) -> tuple[int, object]:
        headers = {"Content-Type": "application/json"}
        if signature is not None:
            headers["x-langfuse-signature"] = signature
        return http(url, method="POST", body=body, headers=headers)

    status, answer = post(good, None)
    assert status == 401 and "unsigned" in answer["error"]  # type: ignore[index]
    status, answer = post(good, sign(good, "lf-whsec_" + "cd" * 32, now))
    assert status == 401 and "matches no configured" in answer["error"]  # type: ignore[index]
    status, answer = post(good + b" ", sign(good, SECRET, now))  # the body changed after signing
    assert status == 401
    status, answer = post(good, sign(good, SECRET, now - 3600))  # replayed an hour later
    assert status == 401 and "timestamp" in answer["error"]  # type: ignore[index]
    status, answer = post(good, "v1=" + sign(good, SECRET, now).split("v1=")[1])
    assert status == 401 and "t=<unix seconds>" in answer["error"]  # type: ignore[index]
    _, timeline = relay.get(f"/api/v1/prompts/{PROMPT}/timeline")
    assert timeline["labels"]["production"]["moves"] == []  # nothing refused got in

    assert post(good, sign(good, SECRET, now)) == (200, {"moves": 1})  # "latest" is no move
    loser = event(13, [], moved)  # the version that lost the label
    assert post(loser, sign(loser, SECRET, now)) == (200, {"moves": 0})
    again = event(14, ["production"], rfc3339(t0 + 130 * S))  # a tag change: same version
    assert post(again, sign(again, SECRET, now))[0] == 200
    status, answer = post(b"{not json", sign(b"{not json", SECRET, now))
    assert status == 400
    _, timeline = relay.get(f"/api/v1/prompts/{PROMPT}/timeline")
    prod = timeline["labels"]["production"]
    assert prod["moves"] == [{"version": 14, "at": moved}]
    # The move is the better date: pod-a handed out v14 10 s after it; nobody lags.
    assert prod["lagging"] == []


def test_without_secrets_there_is_no_webhook_endpoint(relays: RelayFactory) -> None:
    relay = relays()
    body = event(1, ["production"], "2023-11-14T22:14:50.000Z")
    status, _ = http(relay.url + "/api/v1/webhooks/langfuse", method="POST", body=body,
                     headers={"x-langfuse-signature": sign(body, SECRET, int(time.time()))})
    assert status in (404, 405)
