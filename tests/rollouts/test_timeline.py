"""The label timeline in virtual time: three instances, a label move, one instance lagging.

The processor runs with the rollouts observer on a clock the test sets, as replay does: fetch
records come in as OTLP log records (and as ``app.prompt.fetch`` span events), generations as
spans, and the timeline body is read back as the relay serves it.
"""

from __future__ import annotations

from typing import Any

import pytest

import promptstamp_contract as c
from promptstamp_relay.config import load_config
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.rollouts._model import (
    Timeline,
    dump_timeline,
    load_timeline,
    merge,
    quantile_ms,
    render_prompt,
)
from promptstamp_relay.rollouts.component import Rollouts
from promptstamp_relay.wiring import build_processor
from tests.otlp_builders import T0, S, fetch_record, gen_attrs, logs, span, traces
from tests.rollouts.conftest import PROMPT, pod


class Cluster:
    """Three pods of one service sending through one relay, on a virtual clock."""

    def __init__(self, **rollouts: Any) -> None:
        cfg = load_config(None, env={}, overrides={"hold.seconds": 0, **{f"rollouts.{k}": v
                                                                          for k, v in rollouts.items()}})
        self.now = T0
        self.rollouts = Rollouts(cfg.rollouts, prompt_names=cfg.prompt_names, clock=lambda: self.now)
        self.processor: Processor = build_processor(cfg, observers=[self.rollouts.observer])
        self._trace = 0

    def fetch(self, instance: str, version: int, at: int, *, label: str = "production") -> None:
        self.now = max(self.now, at)
        self._trace += 1
        self.processor.consume_logs(logs([fetch_record(PROMPT, label, version, time=at, trace=self._trace)],
                                         resource=pod(instance)), self.now)

    def generate(self, instance: str, at: int, duration_ms: int, *, error: bool = False,
                 tokens: tuple[int, int] = (100, 20), label: str = "production") -> None:
        """One generation in the trace of this instance's latest fetch (trace tier)."""
        sp = span(trace=self._trace, span_id=self._trace, start=at, end=at + duration_ms * 10**6,
                  attrs=gen_attrs(PROMPT, label, **{c.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
                                                    c.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1]}))
        if error:
            sp.status.code = sp.status.STATUS_CODE_ERROR
        self.now = max(self.now, at + duration_ms * 10**6)
        self.processor.consume_traces(traces([sp], resource=pod(instance)), self.now)

    def body(self, label: str | None = None) -> dict[str, Any]:
        got, complete = self.rollouts.render("default", PROMPT, label)
        assert complete and got is not None
        return got


def rollout(cluster: Cluster) -> None:
    """v13 everywhere; at T0+100 s the label moves to v14; pod-a picks it up at once, pod-c
    after its cache's two fetches, pod-b never (its refreshes fail: langfuse#10138)."""
    for i in range(10):  # 09:00 .. 09:01:30: v13 on all three
        t = T0 + i * 10 * S
        for n, name in enumerate(("pod-a", "pod-b", "pod-c")):
            cluster.fetch(name, 13, t + n * S)
            cluster.generate(name, t + n * S + S // 10, 800 + 10 * i, error=(i == 3 and name == "pod-b"))
    for i in range(10, 20):
        t = T0 + i * 10 * S
        cluster.fetch("pod-a", 14, t)
        cluster.generate("pod-a", t + S // 10, 1500, tokens=(150, 30))
        cluster.fetch("pod-b", 13, t + S)
        cluster.generate("pod-b", t + S + S // 10, 800)
        cluster.fetch("pod-c", 13 if i < 12 else 14, t + 2 * S)
        cluster.generate("pod-c", t + 2 * S + S // 10, 1500 if i >= 12 else 800, error=(i == 15),
                         tokens=(150, 30) if i >= 12 else (100, 20))


def test_three_instances_a_move_and_one_lagging() -> None:
    cluster = Cluster()
    rollout(cluster)
    body = cluster.body()
    assert body["prompt"] == PROMPT and list(body["labels"]) == ["production"]
    prod = body["labels"]["production"]
    assert prod["current"] == 14  # pod-c's hand-out at T0+192 s is the most recent
    v13, v14 = prod["versions"]
    assert (v13["version"], v14["version"]) == (13, 14)  # in time order
    assert v13["first_served"] == "2023-11-14T22:13:20Z"  # T0
    assert v14["first_served"] == "2023-11-14T22:15:00Z"  # T0 + 100 s: pod-a, at once
    assert v13["last_served"] == "2023-11-14T22:16:31Z"  # pod-b, still on 13 at T0 + 191 s
    assert v13["fetches"] == 30 + 10 + 2 and v14["fetches"] == 10 + 8
    assert v13["generations"] == 42 and v14["generations"] == 18
    assert v13["errors"] == 1 and v14["errors"] == 1
    assert v13["input_tokens"] == 42 * 100 and v13["output_tokens"] == 42 * 20
    assert v14["input_tokens"] == 18 * 150 and v14["output_tokens"] == 18 * 30
    # The sketch's quantiles are within one bucket (~4.4 %) of the true ones.
    assert v13["duration_p50_ms"] == pytest.approx(840, rel=0.05)
    assert v14["duration_p50_ms"] == pytest.approx(1500, rel=0.05)
    assert v14["duration_p95_ms"] == pytest.approx(1500, rel=0.05)
    assert [(i["instance"], i["service"], i["version"]) for i in prod["instances"]] == [
        ("pod-a", "order-agent", 14), ("pod-b", "order-agent", 13), ("pod-c", "order-agent", 14)]
    assert prod["instances"][1]["last_served"] == "2023-11-14T22:16:31Z"
    # pod-b handed out v13 until T0 + 191 s, 91 s after v14 was first handed out.
    assert prod["lagging"] == [{"instance": "pod-b", "service": "order-agent", "version": 13,
                                "behind_seconds": 91.0}]
    assert "moves" not in prod  # no webhooks configured


def test_a_rollback_makes_the_instances_still_on_the_new_version_the_lagging_ones() -> None:
    cluster = Cluster()
    rollout(cluster)
    back = T0 + 300 * S  # the label moves back to v13; pod-a and pod-b follow, pod-c keeps 14
    cluster.fetch("pod-a", 13, back)
    cluster.fetch("pod-b", 13, back + S)
    cluster.fetch("pod-c", 14, back + 20 * S)
    prod = cluster.body()["labels"]["production"]
    assert prod["current"] == 14  # the most recent hand-out (pod-c) is still v14
    assert prod["lagging"] == [{"instance": "pod-c", "service": "order-agent", "version": 14,
                                "behind_seconds": 20.0}]


def test_a_new_instance_on_an_old_version_lags_and_does_not_move_the_label_back() -> None:
    cluster = Cluster()
    rollout(cluster)
    cluster.fetch("pod-d", 13, T0 + 200 * S)
    prod = cluster.body()["labels"]["production"]
    assert [lag["instance"] for lag in prod["lagging"]] == ["pod-b", "pod-d"]


def test_labels_are_apart_and_label_filters_and_unknown_prompts() -> None:
    cluster = Cluster()
    cluster.fetch("pod-a", 3, T0, label="staging")
    cluster.generate("pod-a", T0 + S, 500, label="staging")
    cluster.fetch("pod-a", 2, T0 + 2 * S)
    body = cluster.body()
    assert sorted(body["labels"]) == ["production", "staging"]
    assert body["labels"]["staging"]["current"] == 3
    assert body["labels"]["staging"]["versions"][0]["generations"] == 1
    assert list(cluster.body("staging")["labels"]) == ["staging"]
    assert cluster.rollouts.render("default", "other-prompt")[0] is None
    assert cluster.rollouts.render("default", PROMPT, "nope")[0] is None
    assert cluster.rollouts.render("another-tenant", PROMPT)[0] is None


def test_fallback_fetches_and_unresolved_generations_stay_off_the_timeline() -> None:
    cluster = Cluster()
    cluster.processor.consume_logs(logs([fetch_record(PROMPT, "production", None, source="fallback",
                                                      time=T0, trace=1)], resource=pod("pod-a")), T0)
    cluster.generate("pod-a", T0 + S, 500)  # unresolved: only a fallback record in its trace
    cluster.processor.release_all(T0 + 10 * S)
    assert cluster.rollouts.render("default", PROMPT)[0] is None
    with cluster.rollouts.observer.lock:
        families = {m.name: m for m in cluster.rollouts.observer.metrics.families()}
    versions = {s.labels["version"] for s in families["promptstamp_generations"].samples}
    assert versions == {"none"}


def test_prompt_names_map_keys_to_langfuse_names() -> None:
    cfg = load_config(None, env={}, overrides={"prompt_names": {"osa": PROMPT}})
    rollouts = Rollouts(cfg.rollouts, prompt_names=cfg.prompt_names, clock=lambda: T0)
    processor = build_processor(cfg, observers=[rollouts.observer])
    processor.consume_logs(logs([fetch_record("osa", "production", 5, time=T0)], resource=pod("pod-a")), T0)
    body, _ = rollouts.render("default", PROMPT)
    assert body is not None and body["labels"]["production"]["current"] == 5


def test_merging_two_views_adds_them_up_and_the_stored_form_round_trips() -> None:
    a, b = Cluster(), Cluster()
    rollout(a)
    rollout(b)
    ta = a.rollouts.observer.timelines[("default", PROMPT, "production")]
    tb = b.rollouts.observer.timelines[("default", PROMPT, "production")]
    both = merge(load_timeline(dump_timeline(ta)), tb)
    assert both.versions[13].generations == 84 and both.versions[13].fetches == 84
    assert both.versions[13].first_ns == T0
    assert quantile_ms(both.versions[14].durations, 0.5) == quantile_ms(ta.versions[14].durations, 0.5)
    assert render_prompt(PROMPT, {"production": load_timeline(dump_timeline(ta))}) == a.body()
    assert Timeline().empty()


def test_retention_forgets_what_was_last_seen_too_long_ago() -> None:
    cluster = Cluster(retention_days=1)
    cluster.fetch("pod-a", 1, T0)
    cluster.fetch("pod-b", 2, T0 + 86400 * S)
    cluster.now = T0 + 86400 * S + 10 * S
    cluster.rollouts.flush()
    prod = cluster.body()["labels"]["production"]
    assert [v["version"] for v in prod["versions"]] == [2]
    assert [i["instance"] for i in prod["instances"]] == ["pod-b"]
    assert cluster.rollouts.observer.stats.entries_expired == 2  # v1 and pod-a's entry


def test_bounds_on_timelines_versions_and_instances() -> None:
    cluster = Cluster(max_timelines=2, max_versions=3, max_instances=4)
    for v in range(1, 6):
        cluster.fetch(f"pod-{v}", v, T0 + v * S)
    for label in ("a", "b", "c"):
        cluster.fetch("pod-1", 1, T0 + 10 * S, label=label)
    prod = cluster.body("production")["labels"]["production"]
    assert [v["version"] for v in prod["versions"]] == [3, 4, 5]  # the oldest forgotten first
    assert [i["instance"] for i in prod["instances"]] == ["pod-2", "pod-3", "pod-4", "pod-5"]
    labels = cluster.body()["labels"]
    assert sorted(labels) == ["a", "production"]  # b and c: past max_timelines
    st = cluster.rollouts.observer.stats
    assert st.timelines_dropped == 2 and st.entries_evicted == 3
