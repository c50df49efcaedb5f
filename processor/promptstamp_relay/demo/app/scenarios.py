"""The chapter's three manual scenarios, run against the promptstamp version of the agent.

=======================  =====================================================================
scenario                 prints
=======================  =====================================================================
prompt-management        ``answer``
prompt-ab-test           ``prod-a: answer`` and ``prod-b: answer``
prompt-cache-fallback    ``warmup: langfuse answer`` and ``fallback: cache answer``
=======================  =====================================================================

The A/B split is ``promptstamp.label_for(user_id, {"prod-a": .5, "prod-b": .5}, salt=...)``
instead of the chapter's last-two-hex-digits bucket. With the salt ``"order-status-answer"``
(the experiment is named after the prompt), ``usr_prompt_ab_00`` lands on ``prod-a`` and
``usr_prompt_ab_01`` on ``prod-b``, so the two users still show both arms, in the chapter's
order. With no salt they would swap (00 -> prod-b, 01 -> prod-a).

The cache fallback warms the prompt, then makes Langfuse's prompts API fail (see ``Outage``)
and runs the agent again with ``cache_ttl_seconds=0`` so that the second fetch really goes to
Langfuse: promptstamp serves the last known good copy, ``p.source == "cache"``, and says so on
the span and in the fetch log. No scenario code touches span attributes.
"""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import promptstamp

from .agent import AgentResult, OrderStatusAgent, langfuse_trace_context

AB_WEIGHTS = {"prod-a": 0.5, "prod-b": 0.5}
AB_SALT = "order-status-answer"
AB_USERS = ("usr_prompt_ab_00", "usr_prompt_ab_01")

METADATA = {"environment": "development", "workflow": "order-status", "region": "eu"}


class Outage(Protocol):
    """How the fallback scenario makes Langfuse's prompts API unavailable, and recovers."""

    def begin(self) -> None: ...
    def end(self) -> None: ...


class SimulatedOutage:
    """The chapter's ``UnavailablePromptClient``, as a switch in front of the real client.

    Give ``client`` to promptstamp (``install(langfuse=...)``); while the outage is on, every
    prompt fetch raises ``TimeoutError`` as a real timeout would. Used when nothing outside
    the app can break Langfuse (docker-compose, a run by hand).
    """

    def __init__(self, client: Any) -> None:
        self._client = client
        self.active = False

    @property
    def client(self) -> SimulatedOutage:
        return self

    def get_prompt(self, *args: Any, **kwargs: Any) -> Any:
        if self.active:
            raise TimeoutError("simulated Langfuse prompt fetch timeout")
        return self._client.get_prompt(*args, **kwargs)

    def begin(self) -> None:
        self.active = True

    def end(self) -> None:
        self.active = False


class StdioOutage:
    """Asks the process that started the app (``promptstamp-relay demo``) to break Langfuse.

    Protocol: the app prints ``::outage-begin`` (or ``::outage-end``) on stdout and waits for
    one line ``ok`` on stdin. The demo then makes its Langfuse-compatible server stall every
    prompts request, so the real Langfuse client times out for real.
    """

    def begin(self) -> None:
        _ask("outage-begin")

    def end(self) -> None:
        _ask("outage-end")


def _ask(what: str) -> None:
    print(f"::{what}", flush=True)
    reply = sys.stdin.readline().strip()
    if reply != "ok":
        raise RuntimeError(f"the demo driver did not acknowledge {what!r} (got {reply!r})")


@dataclass
class Run:
    """One agent run, as the report file records it for the demo's checks."""

    scenario: str
    trace_name: str
    trace_id: str
    label: str
    version: int | None
    source: str
    outcome: str


@dataclass
class ScenarioContext:
    agent: OrderStatusAgent
    outage: Outage
    runs: list[Run] = field(default_factory=list)

    def run_agent(self, scenario: str, trace_name: str, user_id: str, tags: tuple[str, ...],
                  label: str = "production", cache_ttl_seconds: float | None = None) -> AgentResult:
        conversation_id = f"conv_{uuid.uuid4().hex}"
        with langfuse_trace_context(trace_name=trace_name, session_id=conversation_id, user_id=user_id,
                                    tags=tags, metadata=METADATA):
            result = self.agent.run(
                {"query": "Where is my order?", "conversation_id": conversation_id,
                 "order_reference": "ORDER-924", "region": "eu"},
                prompt_label=label,
                prompt_cache_ttl_seconds=cache_ttl_seconds,
            )
        self.runs.append(Run(scenario, trace_name, result.trace_id, result.prompt_label,
                             result.prompt_version, result.prompt_source, result.outcome))
        return result

    def report(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self.runs]


def run_prompt_management(ctx: ScenarioContext) -> list[str]:
    result = ctx.run_agent("prompt-management", "manual-prompt-management", "usr_pseudo_prompt_demo",
                           ("order-status", "prompt-management", "manual-scenario"))
    return [result.outcome]


def run_prompt_ab_test(ctx: ScenarioContext) -> list[str]:
    lines = []
    for user_id in AB_USERS:
        label = promptstamp.label_for(user_id, AB_WEIGHTS, salt=AB_SALT)
        result = ctx.run_agent("prompt-ab-test", f"manual-prompt-ab-test-{label}", user_id,
                               ("order-status", "prompt-management", "prompt-ab-test", label), label=label)
        lines.append(f"{label}: {result.outcome}")
    return lines


def run_prompt_cache_fallback(ctx: ScenarioContext) -> list[str]:
    user = "usr_pseudo_prompt_cache"
    warmup = ctx.run_agent("prompt-cache-fallback", "manual-prompt-cache-warmup", user,
                           ("order-status", "prompt-management", "prompt-cache-warmup"))
    ctx.outage.begin()
    try:
        # cache_ttl_seconds=0: fetch now, so this run meets the outage instead of a fresh copy.
        fallback = ctx.run_agent("prompt-cache-fallback", "manual-prompt-cache-fallback", user,
                                 ("order-status", "prompt-management", "prompt-cache-fallback"),
                                 cache_ttl_seconds=0)
    finally:
        ctx.outage.end()
    return [f"warmup: {warmup.prompt_source} {warmup.outcome}",
            f"fallback: {fallback.prompt_source} {fallback.outcome}"]


SCENARIOS: dict[str, Callable[[ScenarioContext], list[str]]] = {
    "prompt-management": run_prompt_management,
    "prompt-ab-test": run_prompt_ab_test,
    "prompt-cache-fallback": run_prompt_cache_fallback,
}
