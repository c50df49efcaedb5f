"""Poison: a span on which Langfuse's observation type mapper throws loses every span of its
export request in Langfuse. The table (``promptstamp_contract.langfuse_typing``: which keys, which
values, what defuses it) and what the processor does with such spans: add the type Langfuse gives
them otherwise (only adding), or send them in a request of their own; counted and reported.

``LangfuseServer``'s mapping (the same table) judges every output, as Langfuse's code would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

import promptstamp_contract as c
from promptstamp.testing._langfuse import Observation, RejectedObservation, _map_request
from promptstamp_contract import langfuse_typing as lt
from promptstamp_contract.langfuse_typing import (
    OBJECT_PROTOTYPE,
    POISON_KEYS,
    RULES,
    TYPE_VALUES,
    classify,
    poison,
)
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import T0, S, attrs_of, fetch_span, gen_attrs, span, traces

TYPE, OI, OP = c.LF_OBSERVATION_TYPE, c.OPENINFERENCE_SPAN_KIND, c.GEN_AI_OPERATION_NAME
GENKIT = "genkit:metadata:subtype"
MODEL = {c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"}


def sv(s: str) -> AnyValue:
    return AnyValue(string_value=s)


# -- the table ------------------------------------------------------------------------------------
def test_the_keys_a_rule_can_throw_on_are_the_table_s() -> None:
    lookups = {r.keys[0] for r in RULES if r.mapping is not None}
    assert lookups == {TYPE, OI, OP, GENKIT}
    assert lookups | {"operation.name", "ai.operationId"} == POISON_KEYS  # the AI SDK's startsWith
    direct = next(r for r in RULES if r.keys == (TYPE,)).mapping or {}
    assert {t: v for v, t in direct.items()} == TYPE_VALUES


def test_object_prototype_is_nodes() -> None:
    """The names are Object.prototype's own, and each one makes a mapping lookup throw as in
    ``SimpleAttributeMapper.mapToObservationType`` (checked with Node where it is installed)."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = """
const mappings = {span: "SPAN", generation: "GENERATION"};
const out = [];  // pairs: assigning out["__proto__"] on an object would be the very trap
for (const v of [...Object.getOwnPropertyNames(Object.prototype), "chat", ["constructor"], 42]) {
  try { const t = mappings[v]; out.push([String(v), !!(t && t.toUpperCase())]); }
  catch (e) { out.push([String(v), e.constructor.name]); }
}
console.log(JSON.stringify(out));
"""
    pairs = json.loads(subprocess.run([node, "-e", script], check=True, capture_output=True, text=True).stdout)
    got = dict(pairs)
    assert {k for k, v in got.items() if v == "TypeError"} == set(OBJECT_PROTOTYPE)  # ["constructor"] included
    assert got["chat"] is False and got["42"] is False


# (attributes, the type the other rules give, the langfuse.observation.type that defuses it or None:
# contract §3 lets the relay write only ``generation``, so a span of another type is sent alone)
CASES: dict[str, tuple[dict[str, Any], str, str | None]] = {
    "gen_ai.operation.name on a model call": ({OP: "constructor", **MODEL}, "GENERATION", "generation"),
    "gen_ai.operation.name alone": ({OP: "toString"}, "SPAN", None),
    "openinference.span.kind, then gen_ai.operation.name": ({OI: "valueOf", OP: "execute_tool"}, "TOOL", None),
    "openinference.span.kind, then an agent": ({OI: "__proto__", OP: "invoke_agent"}, "AGENT", None),
    "genkit subtype, then a tool name": ({GENKIT: "hasOwnProperty", c.GEN_AI_TOOL_NAME: "t"}, "TOOL", None),
    "an array is looked up by its String()": ({OP: AnyValue(array_value=ArrayValue(values=[sv("isPrototypeOf")])),
                                               c.LLM_MODEL_NAME: "m"}, "GENERATION", "generation"),
    "the AI SDK's operation.name, not a string": ({"operation.name": AnyValue(int_value=3), c.MODEL: "m"},
                                                  "GENERATION", "generation"),
    "langfuse.observation.type itself": ({TYPE: "__proto__", **MODEL}, "GENERATION", None),
    "langfuse.observation.type constructor": ({TYPE: "constructor"}, "SPAN", None),
    "an unknown type, then a poison lookup": ({TYPE: "GENERATION", OP: "toLocaleString", **MODEL}, "GENERATION", None),
    "an empty type (present: adding would shadow it)": ({TYPE: "", OP: "constructor"}, "SPAN", None),
}


@pytest.mark.parametrize(("attrs", "type_", "add"), CASES.values(), ids=list(CASES))
def test_poison_says_the_type_the_other_rules_give_and_what_defuses_it(attrs: dict[str, Any], type_: str,
                                                                      add: str | None) -> None:
    p = poison(attrs)
    assert p is not None and (p.type, p.add) == (type_, add)
    assert p.key in POISON_KEYS and p.key in attrs
    if add is not None:  # with it, Langfuse gives exactly that type and throws nowhere
        again = classify({**attrs, TYPE: add})
        assert (again.type, again.error) == (type_, None)


@pytest.mark.parametrize("value", sorted(OBJECT_PROTOTYPE))
@pytest.mark.parametrize("key", [TYPE, OI, OP, GENKIT])
def test_every_prototype_name_under_every_lookup_key_is_poison(key: str, value: str) -> None:
    p = poison({key: value, **MODEL})
    assert p is not None and (p.key, p.value, p.type) == (key, value, "GENERATION")
    assert p.add == (None if key == TYPE else "generation")


def test_a_known_explicit_type_answers_first_no_poison() -> None:
    for value in ("span", "generation", "tool"):
        assert poison({TYPE: value, OP: "constructor", OI: "__proto__", GENKIT: "toString"}) is None
    assert poison({OP: "chat", **MODEL}) is None
    assert poison({OI: "LLM", OP: "constructor"}) is None  # OpenInference answers before the GenAI rule


def test_only_generation_is_ever_added() -> None:
    """Contract §3 lets the relay write one langfuse.observation.type, ``generation``: a poison
    span the other rules type SPAN, TOOL or AGENT is never typed by the relay (it travels alone).
    And adding "span" could even change the typing: Langfuse SDK <= 3.3 spans typed "span" with
    generation attributes are generations to Langfuse (rule 0)."""
    attrs = {OP: "constructor", "langfuse.observation.usage_details": "{}"}
    old_sdk = {"scope_name": "langfuse-sdk", "scope_version": "3.2.0", "sdk_language": "python"}
    p = poison(attrs, **old_sdk)
    assert p is not None and (p.type, p.add) == ("SPAN", None)
    assert classify({**attrs, TYPE: "span"}, **old_sdk).type == "GENERATION"
    p = poison(attrs, scope_name="langfuse-sdk", scope_version="3.4.0", sdk_language="python")
    assert p is not None and (p.type, p.add) == ("SPAN", None)


def test_is_generation_counts_a_defused_generation_and_never_an_undefusable_one() -> None:
    assert lt.is_generation({OP: "constructor", **MODEL})
    assert not lt.is_generation({OP: "constructor"})
    assert not lt.is_generation({TYPE: "__proto__", **MODEL})
    assert not lt.is_generation({TYPE: "GENERATION", OP: "constructor", **MODEL})
    rules = lt.GenerationRules(present=frozenset({"my.llm.call"}))
    assert lt.is_generation({OP: "toString", "my.llm.call": True}, rules)  # an extra rule, defused too


# -- the processor --------------------------------------------------------------------------------
def processor(**settings: Any) -> Processor:
    return Processor(StampSettings(hold_ns=2 * S, **settings), MemoryStore())


def langfuse_view(out: list[Any]) -> tuple[dict[str, Observation], dict[str, RejectedObservation]]:
    """Each output request as Langfuse's ingestion takes it: (kept, lost) by span name."""
    kept: dict[str, Observation] = {}
    lost: dict[str, RejectedObservation] = {}
    for o in out:
        for item in _map_request(o.request):
            if isinstance(item, RejectedObservation):
                lost[item.observation.name] = item
            else:
                kept[item.name] = item
    return kept, lost


def spans_by_name(out: list[Any]) -> dict[str, dict[str, Any]]:
    return {sp.name: attrs_of(sp) for o in out for rs in o.request.resource_spans for ss in rs.scope_spans
            for sp in ss.spans}


def added(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    assert {k: after[k] for k in before} == before  # only ever adds
    return {k: v for k, v in after.items() if k not in before}


def request_with(poisoned: dict[str, Any], name: str = "poisoned") -> ExportTraceServiceRequest:
    """A fetch span, a generation of the same trace and ``poisoned``: one request."""
    return traces([fetch_span(version=3, trace=1, time=T0),
                   span("chat gpt-4o", trace=1, span_id=2, start=T0 + S, attrs=gen_attrs()),
                   span(name, trace=1, span_id=3, start=T0 + S, attrs=poisoned)])


def test_a_poison_lookup_on_another_type_travels_alone_and_the_rest_arrives_linked() -> None:
    p = processor()
    poisoned = {OP: "constructor", c.GEN_AI_TOOL_NAME: "lookup_order"}  # a tool to the other rules
    req = request_with(poisoned)
    assert all(isinstance(x, RejectedObservation) for x in _map_request(req))  # as it came: all lost
    out = p.consume_traces(req, T0 + S)
    assert [o.spans for o in out] == [2, 1]
    kept, lost = langfuse_view(out)
    assert set(lost) == {"poisoned"}  # only it: a tool, which the relay may not type (contract §3)
    assert (kept["chat gpt-4o"].prompt_name, kept["chat gpt-4o"].prompt_version) == ("order-status-answer", 3)
    assert spans_by_name(out)["poisoned"] == poisoned | {}  # as it came
    assert p.stats.poison_spans == {"isolated": 1}
    [n] = out.notices.poison
    assert (n.span_name, n.service, n.poison.key, n.poison.value, n.action, n.added) == (
        "poisoned", "agent", OP, "constructor", "isolated", None)


def test_a_poison_generation_with_a_prompt_key_is_stamped_and_linked_once_typed() -> None:
    p = processor()
    poisoned = gen_attrs(**{OP: "valueOf"})
    out = p.consume_traces(request_with(poisoned, "chat poisoned"), T0 + S)
    kept, lost = langfuse_view(out)
    assert lost == {}
    gen = kept["chat poisoned"]
    assert (gen.type, gen.prompt_name, gen.prompt_version) == ("GENERATION", "order-status-answer", 3)
    new = added(poisoned, spans_by_name(out)["chat poisoned"])
    assert new[TYPE] == "generation" and new[c.LF_META_RESOLUTION] == "trace"  # the stamp's type: one
    assert p.stats.poison_spans == {"typed": 1} and p.stats.stamped == {"trace": 2}
    assert out.notices.poison[0].added == "generation"


def test_a_held_poison_generation_is_typed_when_released() -> None:
    p = processor()
    poisoned = gen_attrs(**{OI: "toString"})
    out = p.consume_traces(traces([span("chat held", trace=5, attrs=poisoned),
                                   span("sibling", trace=5, span_id=2, attrs={"http.method": "GET"})]), T0)
    assert [o.spans for o in out] == [1] and p.stats.spans_held == 1
    assert p.stats.poison_spans == {"typed": 1}
    released = p.release_all()
    kept, lost = langfuse_view(released)
    assert lost == {} and kept["chat held"].type == "GENERATION"
    assert spans_by_name(released)["chat held"][TYPE] == "generation"


@pytest.mark.parametrize("poisoned", [{TYPE: "__proto__", **MODEL}, {TYPE: "constructor"},
                                      {**gen_attrs(), TYPE: "GENERATION", OP: "toString"}],
                         ids=["__proto__", "constructor", "unknown type + poison lookup"])
def test_a_poison_type_travels_alone_and_only_it_is_lost(poisoned: dict[str, Any]) -> None:
    p = processor()
    out = p.consume_traces(request_with(poisoned), T0 + S)
    assert [o.spans for o in out] == [2, 1]
    kept, lost = langfuse_view(out)
    assert set(kept) == {c.FETCH_SPAN_NAME, "chat gpt-4o"} and set(lost) == {"poisoned"}
    assert (kept["chat gpt-4o"].prompt_name, kept["chat gpt-4o"].prompt_version) == ("order-status-answer", 3)
    assert "whole export request is lost" in lost["poisoned"].reason
    alone = out[1].request
    assert [len(rs.scope_spans[0].spans) for rs in alone.resource_spans] == [1]
    assert alone.resource_spans[0].resource == request_with(poisoned).resource_spans[0].resource
    assert alone.resource_spans[0].scope_spans[0].scope.name == "test"
    assert spans_by_name(out)["poisoned"] == attrs_of(request_with(poisoned).resource_spans[0].scope_spans[0].spans[2])
    assert p.stats.poison_spans == {"isolated": 1} and p.stats.stamped == {"trace": 1}
    assert out.notices.poison[0].action == "isolated"


def test_without_isolation_a_poison_type_is_forwarded_as_it_came_and_counted() -> None:
    p = processor(isolate_poison=False)
    req = request_with({TYPE: "__proto__"})
    out = p.consume_traces(req, T0 + S)
    assert [o.spans for o in out] == [3]
    assert spans_by_name(out)["poisoned"] == {TYPE: "__proto__"}
    assert p.stats.poison_spans == {"forwarded": 1}


def test_a_request_of_one_poison_type_span_goes_out_as_one_request() -> None:
    p = processor()
    out = p.consume_traces(traces([span("poisoned", attrs={TYPE: "__proto__"})]), T0)
    assert [o.spans for o in out] == [1]
    assert spans_by_name(out) == {"poisoned": {TYPE: "__proto__"}}


def test_scan_suspects_that_langfuse_does_not_throw_on_are_left_alone() -> None:
    p = processor()
    attrs = {OP: 3, "operation.name": "ai.toolCall", c.GEN_AI_TOOL_NAME: "t"}  # suspects, harmless
    out = p.consume_traces(traces([span("tool", attrs=attrs)]), T0)
    assert spans_by_name(out)["tool"] == {OP: 3, "operation.name": "ai.toolCall", c.GEN_AI_TOOL_NAME: "t"}
    assert p.stats.poison_spans == {} and not out.notices
