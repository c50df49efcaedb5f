"""Langfuse's observation typing as the relay mirrors it (detect.py), rule by rule.

Cases marked ``[lf]`` are Langfuse's own tests of its mapper, at langfuse/langfuse@62751446:
``web/src/__tests__/server/api/otel/otelMapping.servertest.ts`` (``otelMapping``) and
``worker/src/queues/__tests__/otelFlueMapping.test.ts`` (``otelFlueMapping``); the others follow
the mapper's source (``packages/shared/src/server/otel/ObservationTypeMapper.ts``) line by line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList

import promptstamp_contract as c
from promptstamp_contract import langfuse_typing as detect
from promptstamp_contract.langfuse_typing import (
    LINK_KEYS,
    RULES,
    GenerationRules,
    already_linked,
    classify,
    is_generation,
    langfuse_type,
)

TYPE = c.LF_OBSERVATION_TYPE
OI = c.OPENINFERENCE_SPAN_KIND
OP = c.GEN_AI_OPERATION_NAME
GENKIT = "genkit:metadata:subtype"
KEY = {c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}


def sv(s: str) -> AnyValue:
    return AnyValue(string_value=s)


def iv(i: int) -> AnyValue:
    return AnyValue(int_value=i)


def arr(*items: AnyValue) -> AnyValue:
    return AnyValue(array_value=ArrayValue(values=list(items)))


# (id, attributes, context, expected type, the rule that answers (None: the SPAN default))
Case = tuple[str, dict[str, Any], dict[str, str], str, "str | None"]
PY_SDK = {"scope_name": "langfuse-sdk", "sdk_language": "python"}
LIVEKIT = {"scope_name": "livekit-agents"}

CASES: list[Case] = [
    # -- 0: Python SDK <= 3.3 override ------------------------------------------------------------
    ("[lf] otelMapping: python-sdk 3.3.0 span with model is a generation",
     {TYPE: "span", c.LF_OBSERVATION_MODEL: "gpt-4o"}, {**PY_SDK, "scope_version": "3.3.0"},
     "GENERATION", "PythonSDKv330Override"),
    ("python-sdk 3.3 usage details only", {TYPE: "span", "langfuse.observation.usage_details": "{}"},
     {**PY_SDK, "scope_version": "3.3"}, "GENERATION", "PythonSDKv330Override"),
    ("python-sdk without a scope version counts as old", {TYPE: "span", c.LF_PROMPT_NAME: "p"},
     PY_SDK, "GENERATION", "PythonSDKv330Override"),
    ("python-sdk unparsable version counts as old (NaN compares false)",
     {TYPE: "span", "langfuse.observation.model.parameters": "{}"}, {**PY_SDK, "scope_version": "dev"},
     "GENERATION", "PythonSDKv330Override"),
    ("python-sdk 3.4.0 is new: the explicit span stands", {TYPE: "span", c.LF_OBSERVATION_MODEL: "m"},
     {**PY_SDK, "scope_version": "3.4.0"}, "SPAN", "LangfuseObservationTypeDirectMapping"),
    ("python-sdk 3.10.0 is new (numbers, not strings)", {TYPE: "span", c.LF_OBSERVATION_MODEL: "m"},
     {**PY_SDK, "scope_version": "3.10.0"}, "SPAN", "LangfuseObservationTypeDirectMapping"),
    ("python-sdk 4 is new", {TYPE: "span", c.LF_OBSERVATION_MODEL: "m"},
     {**PY_SDK, "scope_version": "4"}, "SPAN", "LangfuseObservationTypeDirectMapping"),
    ("python-sdk old without generation attributes", {TYPE: "span", "gen_ai.request.model": "m"},
     {**PY_SDK, "scope_version": "3.2.1"}, "SPAN", "LangfuseObservationTypeDirectMapping"),
    ("the override needs the python resource", {TYPE: "span", c.LF_OBSERVATION_MODEL: "m"},
     {"scope_name": "langfuse-sdk", "scope_version": "3.0.0", "sdk_language": "js"},
     "SPAN", "LangfuseObservationTypeDirectMapping"),
    ("the override needs the langfuse-sdk scope", {TYPE: "span", c.LF_OBSERVATION_MODEL: "m"},
     {"scope_name": "app", "sdk_language": "python"}, "SPAN", "LangfuseObservationTypeDirectMapping"),
    # -- 1: langfuse.observation.type -------------------------------------------------------------
    *[(f"[lf] otelMapping: explicit {t} wins over model and OpenInference LLM",
       {TYPE: t, c.LF_OBSERVATION_MODEL: "gpt-4", c.GEN_AI_REQUEST_MODEL: "gpt-4", OI: "LLM"}, {},
       t.upper(), "LangfuseObservationTypeDirectMapping")
      for t in ("agent", "evaluator", "tool", "retriever", "embedding", "guardrail")],
    *[(f"explicit {t}", {TYPE: t}, {}, t.upper(), "LangfuseObservationTypeDirectMapping")
      for t in ("span", "generation", "event", "chain")],
    ("[lf] otelMapping: explicit span wins over OpenInference and model",
     {TYPE: "span", OI: "Agent", c.GEN_AI_REQUEST_MODEL: "gpt-4"}, {}, "SPAN",
     "LangfuseObservationTypeDirectMapping"),
    ("[lf] otelMapping: unknown explicit type is a span", {TYPE: "invalid_type"}, {}, "SPAN", None),
    ("upper-case GENERATION is unknown and falls through to the model", {TYPE: "GENERATION",
     c.GEN_AI_RESPONSE_MODEL: "gpt-4o"}, {}, "GENERATION", "ModelBased"),
    ("upper-case GENERATION without a model is a span", {TYPE: "GENERATION"}, {}, "SPAN", None),
    ("an empty explicit type is no type", {TYPE: "", OP: "chat"}, {}, "GENERATION", "OTel_GenAI_Operation"),
    # -- 2: OpenInference -------------------------------------------------------------------------
    ("[lf] otelMapping: OpenInference TOOL over GenAI chat and model",
     {OI: "TOOL", OP: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4"}, {}, "TOOL", "OpenInference"),
    ("[lf] otelMapping: OpenInference RETRIEVER over model",
     {OI: "RETRIEVER", c.GEN_AI_REQUEST_MODEL: "text-embedding-ada-002"}, {}, "RETRIEVER", "OpenInference"),
    ("OpenInference LLM", {OI: "LLM"}, {}, "GENERATION", "OpenInference"),
    *[(f"OpenInference {k}", {OI: k, c.LLM_MODEL_NAME: "m"}, {}, k, "OpenInference")
      for k in ("CHAIN", "EMBEDDING", "AGENT", "GUARDRAIL", "EVALUATOR")],
    ("OpenInference kinds are exact: 'llm' falls through", {OI: "llm", c.LLM_MODEL_NAME: "m"}, {},
     "GENERATION", "ModelBased"),
    ("OpenInference RERANKER is unknown: falls through", {OI: "RERANKER"}, {}, "SPAN", None),
    # -- 3: OTel GenAI operation ------------------------------------------------------------------
    ("[lf] otelMapping: GenAI embeddings over model", {OP: "embeddings", c.GEN_AI_REQUEST_MODEL: "gpt-4"},
     {}, "EMBEDDING", "OTel_GenAI_Operation"),
    ("[lf] otelFlueMapping: model turn", {OP: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
     "gen_ai.provider.name": "openai"}, {}, "GENERATION", "OTel_GenAI_Operation"),
    *[(f"GenAI {op}", {OP: op}, {}, "GENERATION", "OTel_GenAI_Operation")
      for op in ("completion", "text_completion", "generate_content", "generate")],
    ("GenAI invoke_agent with a model", {OP: "invoke_agent", c.GEN_AI_REQUEST_MODEL: "m"}, {}, "AGENT",
     "OTel_GenAI_Operation"),
    ("GenAI create_agent", {OP: "create_agent"}, {}, "AGENT", "OTel_GenAI_Operation"),
    ("GenAI execute_tool with a model", {OP: "execute_tool", c.GEN_AI_REQUEST_MODEL: "m"}, {}, "TOOL",
     "OTel_GenAI_Operation"),
    ("GenAI unknown operation falls through to the model", {OP: "rerank", "model": "m"}, {},
     "GENERATION", "ModelBased"),
    # -- 4: Genkit --------------------------------------------------------------------------------
    ("[lf] otelMapping: Genkit model action", {"genkit:type": "action", "genkit:name": "openai/gpt-5-mini",
     GENKIT: "model"}, {"scope_name": "genkit-tracer", "scope_version": "v1"}, "GENERATION", "Genkit"),
    *[(f"Genkit {sub}", {GENKIT: sub}, {}, want, "Genkit") for sub, want in (
        ("background-model", "GENERATION"), ("embedder", "EMBEDDING"), ("tool", "TOOL"),
        ("tool.v2", "TOOL"), ("retriever", "RETRIEVER"), ("evaluator", "EVALUATOR"))],
    ("Genkit flow is unknown: falls through", {GENKIT: "flow"}, {}, "SPAN", None),
    # -- 5/6: Vercel AI SDK -----------------------------------------------------------------------
    ("[lf] otelMapping: AI SDK embedding with ai.model.id",
     {"operation.name": "ai.embed.doEmbed generate-document-embedding", "ai.model.id": "gemini-embedding-001"},
     {"scope_name": "ai"}, "EMBEDDING", "Vercel_AI_SDK_Operation_Generation_Like"),
    ("AI SDK doGenerate with ai.model.id", {"operation.name": "ai.generateText.doGenerate",
     "ai.model.id": "gpt-4o"}, {}, "GENERATION", "Vercel_AI_SDK_Operation_Generation_Like"),
    ("AI SDK doStream by ai.operationId", {"ai.operationId": "ai.streamText.doStream",
     "ai.model.id": "gpt-4o"}, {}, "GENERATION", "Vercel_AI_SDK_Operation_Generation_Like"),
    ("AI SDK embedMany", {"operation.name": "ai.embedMany.doEmbed", c.LF_OBSERVATION_MODEL: "e"}, {},
     "EMBEDDING", "Vercel_AI_SDK_Operation_Generation_Like"),
    ("AI SDK doGenerate without model information is a span",
     {"operation.name": "ai.generateText.doGenerate"}, {}, "SPAN", None),
    ("[lf] otelMapping: AI SDK generateText WITH model (by the model rule)",
     {"operation.name": "ai.generateText", c.GEN_AI_RESPONSE_MODEL: "gpt-4"}, {"scope_name": "ai"},
     "GENERATION", "ModelBased"),
    ("[lf] otelMapping: AI SDK generateText WITHOUT model", {"operation.name": "ai.generateText"},
     {"scope_name": "ai"}, "SPAN", None),
    ("[lf] otelMapping: AI SDK toolCall", {"operation.name": "ai.toolCall MyAgent.MyLLM.myFunction",
     "resource.name": "MyAgent.MyLLM.myFunction", "ai.operationId": "ai.toolCall",
     "ai.toolCall.name": "myTool", "ai.toolCall.id": "call_abc123"}, {"scope_name": "ai"},
     "TOOL", "Vercel_AI_SDK_Operation_Span_Like"),
    ("[lf] otelMapping: AI SDK toolCall by ai.operationId alone", {"ai.operationId": "ai.toolCall"},
     {"scope_name": "ai"}, "TOOL", "Vercel_AI_SDK_Operation_Span_Like"),
    ("AI SDK operation ids are exact: 'ai.toolCall x' as an id is no tool",
     {"ai.operationId": "ai.toolCall x"}, {}, "SPAN", None),
    # -- 7: gen_ai.tool.* -------------------------------------------------------------------------
    ("[lf] otelMapping: Pydantic AI tool call", {"gen_ai.tool.name": "roulette_wheel",
     "gen_ai.tool.call.id": "call_idvalue", "tool_arguments": '{"square": 18}', "tool_response": "winner",
     "logfire.msg": "running tool: roulette_wheel"}, {"scope_name": "pydantic-ai"}, "TOOL", "GenAI_Tool_Call"),
    ("gen_ai.tool.name beats a model attribute", {c.GEN_AI_TOOL_NAME: "search", c.GEN_AI_REQUEST_MODEL: "m"},
     {}, "TOOL", "GenAI_Tool_Call"),
    ("gen_ai.tool.call.id alone", {c.GEN_AI_TOOL_CALL_ID: "call_1"}, {}, "TOOL", "GenAI_Tool_Call"),
    ("an empty gen_ai.tool.name is no tool", {c.GEN_AI_TOOL_NAME: "", "model": "m"}, {}, "GENERATION",
     "ModelBased"),
    # -- 8: Flue ----------------------------------------------------------------------------------
    ("[lf] otelFlueMapping: tool span", {"flue.tool.name": "lookup_weather",
     "flue.tool.call_id": "call_eMtDs10B2Ijsp2DawyuUeE0r", "flue.tool.arguments": '{"city": "Berlin"}'},
     {}, "TOOL", "Flue"),
    ("[lf] otelFlueMapping: delegated task", {"flue.task.id": "task_01", "flue.task.agent": "summarizer",
     "flue.task.prompt": "Summarize the meeting notes."}, {}, "AGENT", "Flue"),
    ("[lf] otelFlueMapping: workflow span", {"flue.workflow.name": "tools"}, {}, "SPAN", None),
    ("[lf] otelFlueMapping: operation span", {"flue.operation.id": "op_01", "flue.operation.kind": "prompt"},
     {}, "SPAN", None),
    # -- 9: LiveKit -------------------------------------------------------------------------------
    ("[lf] otelMapping: LiveKit agent_turn", {"lk.input_text": "What is the weather today?"},
     {**LIVEKIT, "span_name": "agent_turn"}, "AGENT", "LiveKit_SpanName"),
    ("[lf] otelMapping: LiveKit function_tool", {"lk.function_tool.output": "{}"},
     {**LIVEKIT, "span_name": "function_tool"}, "TOOL", "LiveKit_SpanName"),
    ("[lf] otelMapping: LiveKit start_agent_activity", {}, {**LIVEKIT, "span_name": "start_agent_activity"},
     "AGENT", "LiveKit_SpanName"),
    ("[lf] otelMapping: LiveKit names without the livekit-agents scope", {}, {"span_name": "agent_turn"},
     "SPAN", None),
    ("LiveKit llm_request is typed by its model", {c.GEN_AI_REQUEST_MODEL: "m"},
     {**LIVEKIT, "span_name": "llm_request"}, "GENERATION", "ModelBased"),
    # -- 10: model attributes ---------------------------------------------------------------------
    ("[lf] otelMapping: langfuse.observation.model.name alone", {c.LF_OBSERVATION_MODEL: "gpt-4"}, {},
     "GENERATION", "ModelBased"),
    *[(f"model attribute {k}", {k: "m"}, {}, "GENERATION", "ModelBased")
      for k in (c.GEN_AI_REQUEST_MODEL, c.GEN_AI_RESPONSE_MODEL, c.LLM_MODEL_NAME, c.MODEL)],
    ("ai.model.id alone is no model rule", {"ai.model.id": "m"}, {}, "SPAN", None),
    ("[lf] otelMapping: tool-call span with empty model attributes", {"model": "", "provided_model_name": "",
     "model_parameters": "{}", "prompt_name": "", "prompt_version": ""}, {"span_name": "tool-call"}, "SPAN", None),
    # -- the default ------------------------------------------------------------------------------
    ("[lf] otelMapping: no mapper can handle the attributes", {"custom.attribute": "some-value",
     "service.name": "my-service", "operation.type": "unknown"}, {}, "SPAN", None),
    ("OpenLLMetry's llm.request.type is no rule of Langfuse's", {"llm.request.type": "chat"}, {}, "SPAN", None),
    ("nothing", {}, {}, "SPAN", None),
]  # fmt: skip


@pytest.mark.parametrize(("attrs", "ctx", "want", "rule"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_langfuse_types_it_so(attrs: dict[str, Any], ctx: dict[str, str], want: str, rule: str | None) -> None:
    got = classify(attrs, **ctx)
    assert (got.type, got.rule, got.error) == (want, rule, None)
    assert langfuse_type(attrs, **ctx) == want


def test_every_rule_is_covered_and_in_langfuses_order() -> None:
    assert [r.priority for r in RULES] == list(range(11))
    assert [r.name for r in RULES] == [
        "PythonSDKv330Override", "LangfuseObservationTypeDirectMapping", "OpenInference",
        "OTel_GenAI_Operation", "Genkit", "Vercel_AI_SDK_Operation_Generation_Like",
        "Vercel_AI_SDK_Operation_Span_Like", "GenAI_Tool_Call", "Flue", "LiveKit_SpanName", "ModelBased",
    ]  # fmt: skip
    answered = {case[4] for case in CASES}
    assert answered >= {r.name for r in RULES} | {None}
    for rule in RULES:  # every value of every lookup table is exercised above
        if rule.mapping is not None:
            seen = {a[rule.keys[0]] for _, a, _, _, r in CASES if r == rule.name}
            assert seen == set(rule.mapping), rule.name


@pytest.mark.parametrize(
    ("rule", "attrs", "then"),
    [
        ("LangfuseObservationTypeDirectMapping", {TYPE: "Generation", OI: "LLM"}, "OpenInference"),
        ("OpenInference", {OI: "Llm", OP: "chat"}, "OTel_GenAI_Operation"),
        ("OTel_GenAI_Operation", {OP: "CHAT", GENKIT: "model"}, "Genkit"),
        ("Genkit", {GENKIT: "Model", "operation.name": "ai.embed.doEmbed", "ai.model.id": "e"},
         "Vercel_AI_SDK_Operation_Generation_Like"),
        ("Vercel_AI_SDK_Operation_Span_Like", {"operation.name": "ai.generateText", c.GEN_AI_TOOL_NAME: "t"},
         "GenAI_Tool_Call"),
        ("GenAI_Tool_Call", {c.GEN_AI_TOOL_NAME: "", "flue.task.id": "t1"}, "Flue"),
        ("Flue", {"flue.tool.name": "", "model": "m"}, "ModelBased"),
    ],
)  # fmt: skip
def test_an_unknown_value_falls_through_to_the_next_rule(rule: str, attrs: dict[str, Any], then: str) -> None:
    assert classify(attrs).rule == then


# -- values that are not strings ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("attrs", "want"),
    [
        ({OP: sv("chat")}, "GENERATION"),  # the Python scan hands over AnyValues
        ({OP: arr(sv("chat"))}, "GENERATION"),  # String(["chat"]) is "chat"
        ({OP: arr(sv("chat"), sv("x"))}, "SPAN"),  # "chat,x"
        ({OP: iv(3), TYPE: True}, "SPAN"),  # numbers and booleans are never known values
        ({TYPE: AnyValue(bool_value=True), c.LLM_MODEL_NAME: iv(0)}, "GENERATION"),  # 0 is meaningful
        ({c.MODEL: AnyValue(double_value=1.5)}, "GENERATION"),
        ({c.MODEL: arr()}, "SPAN"),  # an empty array is not meaningful
        ({c.MODEL: AnyValue()}, "GENERATION"),  # JSON.stringify({}) is "{}": a string
        ({c.MODEL: AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="a", value=sv("b"))]))}, "GENERATION"),
        ({c.MODEL: sv("")}, "SPAN"),
        ({c.MODEL: True}, "GENERATION"),  # the C scan's "present, not a string"
        ({TYPE: True, OI: True, OP: True, GENKIT: True, c.GEN_AI_RESPONSE_MODEL: "m"}, "GENERATION"),
        ({TYPE: True, OI: True, OP: True, GENKIT: True}, "SPAN"),
        ({c.GEN_AI_TOOL_NAME: True, c.MODEL: "m"}, "TOOL"),
    ],
)
def test_non_string_values_as_langfuse_sees_them(attrs: dict[str, Any], want: str) -> None:
    got = classify(attrs)
    assert (got.type, got.error) == (want, None)


@pytest.mark.parametrize(
    "poison", ["constructor", "toString", "__proto__", "hasOwnProperty", "valueOf", "isPrototypeOf"]
)
@pytest.mark.parametrize("key", [TYPE, OI, OP, GENKIT])
def test_object_prototype_names_are_no_type_and_the_throw_is_reported(key: str, poison: str) -> None:
    got = classify({key: poison, c.GEN_AI_REQUEST_MODEL: "gpt-4o", **KEY})
    assert got.type == "GENERATION" and got.rule == "ModelBased"  # never a type of their own
    assert got.error is not None and poison in got.error
    # Langfuse loses it (and its whole request) as it is; the relay's added type defuses every
    # case but a poison langfuse.observation.type, which no added attribute can shadow.
    assert is_generation({key: poison, c.GEN_AI_REQUEST_MODEL: "gpt-4o", **KEY}) is (key != TYPE)
    assert classify({key: arr(sv(poison))}).error is not None  # String([x]) is x


@pytest.mark.parametrize(
    "attrs",
    [
        {"operation.name": True},  # (value as string).startsWith: not a function
        {"operation.name": iv(1), c.GEN_AI_REQUEST_MODEL: "m"},
        {"operation.name": arr(sv("ai.toolCall"))},
        {"ai.operationId": AnyValue(bool_value=True)},
    ],
)
def test_a_non_string_ai_sdk_operation_makes_langfuse_throw(attrs: dict[str, Any]) -> None:
    got = classify(attrs)
    assert got.error is not None and "startsWith" in got.error
    assert is_generation(attrs) is (got.type == "GENERATION")  # the stamp's type defuses it


def test_a_rule_that_answers_first_hides_a_later_throw() -> None:
    assert classify({OP: "chat", "operation.name": True}).error is None
    assert classify({"ai.operationId": True, "operation.name": "ai.toolCall"}).error is None


# -- what the relay stamps ---------------------------------------------------------------------
NOT_GENERATIONS = {
    "execute_tool": {OP: "execute_tool", c.GEN_AI_TOOL_NAME: "lookup_order", c.GEN_AI_REQUEST_MODEL: "gpt-4o"},
    "gen_ai.tool.name": {c.GEN_AI_TOOL_NAME: "lookup_order", c.GEN_AI_REQUEST_MODEL: "gpt-4o"},
    "invoke_agent": {OP: "invoke_agent", c.GEN_AI_REQUEST_MODEL: "gpt-4o"},
    "OpenInference AGENT with a model": {OI: "AGENT", c.LLM_MODEL_NAME: "gpt-4o"},
    "embeddings": {OP: "embeddings", c.GEN_AI_REQUEST_MODEL: "text-embedding-3-small"},
    "OpenInference EMBEDDING": {OI: "EMBEDDING", "embedding.model_name": "e", c.LLM_MODEL_NAME: "e"},
    "OpenInference RETRIEVER with a model": {OI: "RETRIEVER", c.GEN_AI_REQUEST_MODEL: "m"},
    "explicit retriever": {TYPE: "retriever", c.GEN_AI_REQUEST_MODEL: "m"},
    "Vercel tool call": {"operation.name": "ai.toolCall lookup", "ai.operationId": "ai.toolCall"},
    "a plain span in prompt()": {},
    "GENERATION without a model": {TYPE: "GENERATION"},
    "llm.request.type alone": {c.LLM_REQUEST_TYPE: "chat"},
}
GENERATIONS = {
    "gen_ai.response.model": {c.GEN_AI_RESPONSE_MODEL: "gpt-4o-2024-08-06"},
    "llm.model_name": {c.LLM_MODEL_NAME: "gpt-4o"},
    "langfuse.observation.model.name": {c.LF_OBSERVATION_MODEL: "gpt-4o"},
    "GENERATION falls through to a model": {TYPE: "GENERATION", c.GEN_AI_REQUEST_MODEL: "gpt-4o"},
    "chat": {OP: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4o", c.LLM_REQUEST_TYPE: "chat"},
    "OpenInference LLM": {OI: "LLM", c.LLM_MODEL_NAME: "gpt-4o"},
    "explicit generation": {TYPE: "generation"},
}


@pytest.mark.parametrize("name", NOT_GENERATIONS)
def test_the_relay_never_stamps_what_langfuse_types_otherwise(name: str) -> None:
    assert not is_generation({**KEY, **NOT_GENERATIONS[name]})


@pytest.mark.parametrize("name", GENERATIONS)
def test_the_relay_stamps_what_langfuse_types_generation(name: str) -> None:
    assert is_generation({**KEY, **GENERATIONS[name]})


def test_extra_rules_only_add_generations_langfuse_types_span() -> None:
    rules = GenerationRules(present=frozenset({"my.llm"}), equals={"kind": "llm", c.LLM_REQUEST_TYPE: "chat"})
    assert is_generation({**KEY, "my.llm": "x"}, rules)
    assert is_generation({**KEY, "kind": "llm"}, rules)
    assert is_generation({**KEY, c.LLM_REQUEST_TYPE: "chat"}, rules)
    assert not is_generation({**KEY, "kind": "LLM"}, rules)
    assert not is_generation({**KEY, "kind": True}, rules)  # equals compares strings
    for other in NOT_GENERATIONS.values():  # never over a type Langfuse gives
        if langfuse_type(other) != "SPAN":
            assert not is_generation({**KEY, "my.llm": "x", **other}, rules)
    # An explicit type blocks them: the stamp adds ``type: generation`` only where none is.
    for explicit in ("span", "GENERATION", "whatever"):
        assert not is_generation({**KEY, "my.llm": "x", TYPE: explicit}, rules)
    assert not is_generation({**KEY, "my.llm": "x"})  # and there are none by default
    assert GenerationRules() == GenerationRules(frozenset(), {})


@pytest.mark.parametrize(
    "attrs",
    [
        {c.LF_PROMPT_NAME: "p", c.LF_PROMPT_VERSION: iv(3)},
        {c.LF_PROMPT_NAME: "p"},
        {c.LF_PROMPT_VERSION: True},
        {c.LF_LEGACY_PROMPT_NAME: "p", c.LF_LEGACY_PROMPT_VERSION: iv(2)},
        {c.LF_LEGACY_PROMPT_VERSION: iv(2)},
        {c.AI_SDK_LANGFUSE_PROMPT: '{"name": "p", "version": 1}'},
    ],
)
def test_every_link_form_langfuse_reads_counts_as_linked(attrs: dict[str, Any]) -> None:
    assert already_linked({**KEY, c.GEN_AI_REQUEST_MODEL: "m", **attrs})


def test_no_link_form_is_not_linked() -> None:
    assert not already_linked({**KEY, c.GEN_AI_REQUEST_MODEL: "m", "llm.prompt_template.template": "t",
                               "traceloop.prompt.key": "k", "gen_ai.prompt.0.content": "c"})  # fmt: skip


class Recording(Mapping[str, object]):
    """A mapping that remembers every key looked up (to check what the table reads)."""

    def __init__(self, data: dict[str, object]) -> None:
        self.data = data
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> object:
        self.read.add(key)
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return self.data.get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_keys_include_every_key_the_table_reads() -> None:
    rules = GenerationRules(present=frozenset({"my.llm"}), equals={"kind": "llm"})
    keys = rules.keys()
    assert detect.TABLE_KEYS | LINK_KEYS | {"my.llm", "kind"} <= keys
    everything = {k: "x" for k in keys}
    read: set[str] = set()
    for _, attrs, ctx, _, _ in CASES:
        # Only the attributes a scan would collect; each span also with every key present.
        for data in ({k: v for k, v in attrs.items() if k in keys}, {**everything, **attrs}):
            rec = Recording(data)
            is_generation(rec, rules, **ctx)
            already_linked(rec)
            read |= rec.read
            # A scan that collects only keys() types a span as the full attributes do.
            assert langfuse_type({k: v for k, v in data.items() if k in keys}, **ctx) == langfuse_type(data, **ctx)
    assert read <= keys


def test_marker_keys_are_carried_by_every_generation() -> None:
    rules = GenerationRules(present=frozenset({"my.llm"}))
    markers = rules.marker_keys()
    assert markers <= rules.keys()
    for _, attrs, _ctx, want, _ in CASES:
        if want == "GENERATION":
            assert markers & attrs.keys(), attrs
    assert markers & {"my.llm"}


def test_rules_that_need_more_than_attributes_say_so() -> None:
    needs = {r.name: r.context for r in RULES if r.context}
    assert needs == {
        "PythonSDKv330Override": ("scope_name", "scope_version", "sdk_language"),
        "LiveKit_SpanName": ("scope_name", "span_name"),
    }
