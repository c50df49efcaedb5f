"""The order-status support agent of the tutorial chapter, with promptstamp.

A plain function pipeline (the chapter uses LangGraph; the nodes are the same):
``lookup_order`` -> ``retrieve_policy`` -> ``compose_answer``. Each node is a span named
``workflow.node <name>``; the model call is ``openai.OpenAI().chat.completions.create``,
traced by a real OpenAI instrumentation (see ``telemetry.py``).

The promptstamp change is in ``compose_answer``: the chapter's ``get_order_status_prompt()``
helper, its prompt cache and the hand-written ``langfuse.observation.prompt.*`` attributes on
the model span are replaced by one ``with promptstamp.prompt(...)`` block. The relay links the
generation to the version that was actually handed out.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
from opentelemetry import trace
from opentelemetry.trace import Span

import promptstamp

from .prompts import PROMPT_NAME

tracer = trace.get_tracer("order_status")

# Stand-ins for the chapter's order service, policy retriever and memory store.
ORDERS = {"ORDER-924": {"state": "shipped", "carrier": "DHL", "region": "eu"}}
POLICY_DOCUMENTS = {"eu": ["policy-eu-shipping-v3", "policy-eu-delays-v1"]}
MEMORY_RECORD_TYPES = ["preferred_language", "open_tickets"]


@dataclass(frozen=True)
class AgentResult:
    outcome: str  # "answer" or "escalate", as the chapter's graph reports it
    answer: str
    prompt_name: str
    prompt_label: str
    prompt_version: int | None
    prompt_source: str  # "langfuse", "cache" or "fallback"
    trace_id: str


@contextmanager
def langfuse_trace_context(
    *,
    trace_name: str,
    session_id: str,
    user_id: str,
    tags: Sequence[str],
    metadata: Mapping[str, str],
    version: str = "order-status-agent-1",
) -> Iterator[Span]:
    """The chapter's trace context: a root span carrying Langfuse's trace-level attributes."""
    attributes: dict[str, Any] = {
        "langfuse.trace.name": trace_name,
        "langfuse.session.id": session_id,
        "langfuse.user.id": user_id,
        "langfuse.trace.tags": list(tags),
        "langfuse.version": version,
    }
    attributes.update({f"langfuse.trace.metadata.{k}": v for k, v in metadata.items()})
    with tracer.start_as_current_span(trace_name, attributes=attributes) as span:
        yield span


class OrderStatusAgent:
    def __init__(self, client: openai.OpenAI, *, default_model: str = "gpt-4o-mini") -> None:
        self.client = client
        self.default_model = default_model

    def run(
        self,
        request: Mapping[str, str],
        *,
        prompt_label: str = "production",
        prompt_cache_ttl_seconds: float | None = None,
    ) -> AgentResult:
        with tracer.start_as_current_span("workflow.run order-status"):
            order = self.lookup_order(request["order_reference"])
            policy_ids = self.retrieve_policy(request["region"])
            return self.compose_answer(request, order, policy_ids, prompt_label, prompt_cache_ttl_seconds)

    def lookup_order(self, reference: str) -> Mapping[str, str] | None:
        with tracer.start_as_current_span("workflow.node lookup_order") as span:
            order = ORDERS.get(reference)
            span.set_attribute("app.order.found", order is not None)
            return order

    def retrieve_policy(self, region: str) -> list[str]:
        with tracer.start_as_current_span("workflow.node retrieve_policy") as span:
            ids = POLICY_DOCUMENTS.get(region, [])
            span.set_attribute("app.policy.document_count", len(ids))
            return ids

    def compose_answer(
        self,
        request: Mapping[str, str],
        order: Mapping[str, str] | None,
        policy_ids: list[str],
        prompt_label: str,
        prompt_cache_ttl_seconds: float | None,
    ) -> AgentResult:
        with tracer.start_as_current_span("workflow.node compose_answer") as node:
            # ---- the promptstamp change: fetch by name and label; spans inside say which ----
            with promptstamp.prompt(
                PROMPT_NAME, label=prompt_label, cache_ttl_seconds=prompt_cache_ttl_seconds
            ) as p:
                messages = p.compile(
                    query=request["query"],
                    region=request["region"],
                    order_state=order["state"] if order else "unknown",
                    policy_document_ids=", ".join(policy_ids),
                    memory_record_types=", ".join(MEMORY_RECORD_TYPES),
                )
                completion = self.client.chat.completions.create(
                    model=str(p.config.get("model", self.default_model)),
                    messages=messages,  # type: ignore[arg-type]
                )
            # ----------------------------------------------------------------------------------
            answer = completion.choices[0].message.content or ""
            outcome = "answer" if order is not None and policy_ids and answer else "escalate"
            node.set_attribute("app.agent.outcome", outcome)
            span_context = node.get_span_context()
            return AgentResult(
                outcome=outcome,
                answer=answer,
                prompt_name=p.name,
                prompt_label=p.label,
                prompt_version=p.version,
                prompt_source=p.source,
                trace_id=f"{span_context.trace_id:032x}",
            )
