"""A relay in this process that received a scripted rollout, for the page, browser and Prometheus
tests: real OTLP/gRPC in, the admin listener (``metrics_listen``) on 127.0.0.1 port 0.

The rollout (times are the records' own, the last 40 minutes): ``order-status-answer`` under
``production`` handed out v13 by pods a, b and c; Langfuse moved the label to v14 (a signed
webhook) at +9.5 min; pod-a switched at +10 min, pod-c at +14 min, pod-b never did (its cache
keeps v13: the lagging instance). v14 errs more, runs longer and uses more tokens. ``staging``
handed out v15 on one pod. A canary generation on a pod without fetch records ends unresolved.
The hostile rollout puts markup in every name a span controls.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import promptstamp_contract as c
from promptstamp.testing import LangfuseServer
from promptstamp_relay.rollouts._model import rfc3339
from promptstamp_relay.rollouts._webhook import sign
from promptstamp_relay.server import RelayServer
from tests.otlp_builders import S, fetch_record, gen_attrs, logs, span, traces
from tests.relays import OtlpClient, metrics_text, relay_config, running
from tests.waiting import wait_until

PROMPT = "order-status-answer"
SECRET = "lf-whsec_" + "ab" * 32
MINUTE = 60 * S
HOSTILE_PROMPT = "<script>alert(1)</script>"
HOSTILE_LABEL = '"><img src=x onerror=alert(2)>'
HOSTILE_INSTANCE = "<b onmouseover=alert(3)>pod</b>"
HOSTILE_SERVICE = "</text><script>alert(4)</script>"


def pod(name: str, service: str = "order-agent") -> dict[str, Any]:
    return {c.SERVICE_NAME: service, c.SERVICE_INSTANCE_ID: name}


@dataclass
class Driver:
    """Sends fetch records and generations to one relay, as an app's instances would."""

    relay: RelayServer
    client: OtlpClient
    trace: int = 0
    sent: dict[tuple[str, str], int] = field(default_factory=dict)  # (prompt, label) -> generations

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.relay.metrics_port}"

    def generation(self, instance: str, version: int | None, *, at: int | None = None, prompt: str = PROMPT,
                   label: str = "production", duration_ms: int = 500, error: bool = False,
                   tokens: tuple[int, int] = (100, 20), service: str = "order-agent") -> None:
        """A fetch record of ``version`` (none when None: the generation ends unresolved) and one
        generation in its trace, from ``instance``."""
        at = time.time_ns() if at is None else at
        self.trace += 1
        resource = pod(instance, service)
        if version is not None:
            self.client.logs(logs([fetch_record(prompt, label, version, time=at, trace=self.trace)],
                                  resource=resource), timeout=10)
        sp = span(trace=self.trace, span_id=self.trace, start=at + S // 10, end=at + S // 10 + duration_ms * 10**6,
                  attrs=gen_attrs(prompt, label, **{c.GEN_AI_USAGE_INPUT_TOKENS: tokens[0],
                                                    c.GEN_AI_USAGE_OUTPUT_TOKENS: tokens[1]}))
        if error:
            sp.status.code = sp.status.STATUS_CODE_ERROR
        self.client.traces(traces([sp], resource=resource), timeout=10)
        self.sent[(prompt, label)] = self.sent.get((prompt, label), 0) + 1

    def move(self, version: int, at: int, prompt: str = PROMPT, labels: tuple[str, ...] = ("production",)) -> None:
        """A signed Langfuse prompt webhook: ``labels`` moved to ``version`` at ``at``."""
        stamp = rfc3339(at)
        body = json.dumps({
            "id": f"exec-{version}", "timestamp": stamp, "type": "prompt-version", "apiVersion": "v1",
            "action": "updated",
            "prompt": {"id": "p1", "name": prompt, "version": version, "projectId": "project-test",
                       "labels": list(labels), "prompt": [], "type": "chat", "config": {},
                       "commitMessage": None, "tags": [], "createdAt": stamp, "updatedAt": stamp},
        }).encode()
        req = urllib.request.Request(self.url + "/api/v1/webhooks/langfuse", data=body, method="POST",
                                     headers={"Content-Type": "application/json",
                                              "x-langfuse-signature": sign(body, SECRET, int(time.time()))})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert json.loads(r.read()) == {"moves": 1}

    def timeline(self, prompt: str = PROMPT) -> dict[str, Any]:
        url = f"{self.url}/api/v1/prompts/{urllib.parse.quote(prompt, safe='')}/timeline"
        with urllib.request.urlopen(url, timeout=10) as r:
            body: dict[str, Any] = json.loads(r.read())
            return body

    def unresolved(self, prompt: str, label: str, n: int) -> None:
        """Wait until /metrics counts ``n`` unresolved generations of ``prompt`` under ``label``
        (they wait out the hold window first)."""
        sample = (f'promptstamp_generations_total{{label="{label}",outcome="ok",prompt="{prompt}",'
                  f'tenant="default",version="none"}}')

        def counted() -> bool:
            with urllib.request.urlopen(self.url + "/metrics", timeout=10) as r:
                return metrics_text(r.read().decode()).get(sample) == n

        wait_until(counted, 20, f"{n} unresolved generations of {prompt!r} under {label!r} on /metrics")

    def settled(self, prompt: str, resolved: dict[str, int]) -> dict[str, Any]:
        """The timeline once every label in ``resolved`` counts that many generations."""
        def ready() -> dict[str, Any] | None:
            try:
                body = self.timeline(prompt)
            except OSError:
                return None
            got = {label: sum(v["generations"] for v in tl["versions"]) for label, tl in body["labels"].items()}
            return body if all(got.get(k) == n for k, n in resolved.items()) else None

        return wait_until(ready, 20, f"the relay to count the generations of {prompt!r}")


def rollout(d: Driver, t0: int | None = None) -> dict[str, Any]:
    """The scripted rollout (module docstring); the settled timeline of ``PROMPT``."""
    t0 = time.time_ns() - 40 * MINUTE if t0 is None else t0
    n = 0
    for step in range(18):  # every 2 minutes, each pod hands out what it has and answers once
        at = t0 + step * 2 * MINUTE
        for name, offset_s, switch in (("pod-b", 1, None), ("pod-a", 3, 10), ("pod-c", 5, 14)):
            new = switch is not None and step * 2 >= switch
            n += 1
            d.generation(name, 14 if new else 13, at=at + offset_s * S,
                         duration_ms=(1100 if new else 700) + (n % 5) * 100,
                         error=(n % 4 == 0) if new else (n % 25 == 0),
                         tokens=(500, 91) if new else (430, 76))
    d.move(14, t0 + 9 * MINUTE + 30 * S)
    for step in range(4):
        d.generation("pod-s", 15, at=t0 + (20 + step) * MINUTE, label="staging", duration_ms=600)
    d.generation("pod-x", None, label="canary")  # no fetch record anywhere near: unresolved
    d.unresolved(PROMPT, "canary", 1)
    return d.settled(PROMPT, {"production": 54, "staging": 4})


def hostile(d: Driver) -> dict[str, Any]:
    """Markup in the prompt name, the label, the instance id and the service name."""
    t0 = time.time_ns() - 5 * MINUTE
    for step in range(3):
        d.generation(HOSTILE_INSTANCE, 1 + step // 2, at=t0 + step * MINUTE, prompt=HOSTILE_PROMPT,
                     label=HOSTILE_LABEL, service=HOSTILE_SERVICE, error=step == 2)
    return d.settled(HOSTILE_PROMPT, {HOSTILE_LABEL: 3})


@contextmanager
def relay(tmp: Path, langfuse: LangfuseServer | None = None, **overrides: Any) -> Iterator[Driver]:
    """A started relay with its admin listener and the webhook secret, exporting to ``langfuse``
    (else to a file in ``tmp``); stopped on exit."""
    settings: dict[str, Any] = {"metrics_listen": "127.0.0.1:0", "receivers.http.listen": "",
                                "hold.seconds": 0.2, "rollouts.webhook_secrets": {"default": SECRET},
                                "queue.shutdown_timeout_seconds": 5}
    if langfuse is None:
        settings.update({"exporter.type": "file", "exporter.file": str(tmp / "exported.jsonl")})
    settings.update(overrides)
    with running(relay_config(langfuse, **settings)) as server:
        client = OtlpClient(server.address)
        try:
            yield Driver(server, client)
        finally:
            client.close()
