"""Prompt links in other conventions (contract §3): each form of ``core/conventions.py`` read by
the processor, the trace's fetch record deciding, non-integer versions explained, the portable
``gen_ai.prompt.*`` link written only when asked and never over the span's own."""

from __future__ import annotations

from typing import Any

import pytest

import promptstamp_contract as c
from promptstamp_relay.config import ConfigError, load_config
from promptstamp_relay.core.conventions import CONVENTIONS, parse_version
from promptstamp_relay.core.pipeline import Processor
from promptstamp_relay.core.stamp import StampSettings
from promptstamp_relay.store import MemoryStore
from tests.otlp_builders import T0, S, attrs_of, fetch_span, span, traces

MODEL = {c.GEN_AI_OPERATION_NAME: "chat", c.GEN_AI_REQUEST_MODEL: "gpt-4o-mini"}
TEMPLATE = "You answer order questions. Order: {order}"


def processor(**settings: Any) -> Processor:
    return Processor(StampSettings(hold_ns=2 * S, **settings), MemoryStore())


def stamped(out: list[Any]) -> list[dict[str, Any]]:
    return [attrs_of(sp) for o in out for rs in o.request.resource_spans for ss in rs.scope_spans
            for sp in ss.spans if sp.name.startswith("chat")]


FORMS = [
    ("gen_ai", {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"}),
    ("traceloop", {"traceloop.prompt.managed": True, "traceloop.prompt.key": "order-status-answer",
                   "traceloop.prompt.version": "3"}),
    ("langfuse_baggage", {"langfuse_prompt_name": "order-status-answer", "langfuse_prompt_version": "3"}),
    ("openinference", {"prompt.id": "p-123", "llm.prompt_template.version": "3"}),
    ("openinference_template", {"llm.prompt_template.template": TEMPLATE, "llm.prompt_template.version": "3"}),
    ("int version", {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": 3}),
]
NAMES = {"p-123": "order-status-answer", TEMPLATE: "order-status-answer"}


def test_every_convention_is_a_row_of_one_table() -> None:
    assert [row.name for row in CONVENTIONS] == [
        "gen_ai", "traceloop", "langfuse_baggage", "openinference", "openinference_template"]


@pytest.mark.parametrize(("form", "attrs"), FORMS, ids=[f for f, _ in FORMS])
def test_each_form_is_linked_as_convention_without_a_fetch_record(form: str, attrs: dict[str, Any]) -> None:
    p = processor(convention_names=NAMES)
    [a] = stamped(p.consume_traces(traces([span(trace=7, attrs={**MODEL, **attrs})]), T0))
    assert a[c.LF_PROMPT_NAME] == "order-status-answer"
    assert a[c.LF_PROMPT_VERSION] == 3 and isinstance(a[c.LF_PROMPT_VERSION], int)
    assert a[c.LF_META_RESOLUTION] == "convention"  # never silently "trace"
    assert p.stats.stamped == {"convention": 1}
    for key, value in attrs.items():
        assert a[key] == value  # only ever adds


def test_the_traces_fetch_record_decides_and_a_disagreement_is_recorded() -> None:
    p = processor()
    p.consume_traces(traces([fetch_span(version=5, trace=7, time=T0)]), T0)
    claim = {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"}
    out = p.consume_traces(traces([span(trace=7, start=T0 + S, attrs={**MODEL, **claim})]), T0 + S)
    [a] = stamped(out)
    assert (a[c.LF_PROMPT_VERSION], a[c.LF_META_RESOLUTION], a[c.LF_META_PROMPT_LABEL]) == (5, "convention",
                                                                                             "production")
    assert a[c.LF_META_CONFLICT] == "gen_ai.prompt.version=3; the trace's fetch record says 5"
    assert p.stats.prompt_conflicts == 1 and len(out.notices.conflicts) == 1
    agreeing = {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "5"}
    [b] = stamped(p.consume_traces(traces([span(trace=7, span_id=2, start=T0 + S, attrs={**MODEL, **agreeing})]),
                                   T0 + S))
    assert b[c.LF_PROMPT_VERSION] == 5 and c.LF_META_CONFLICT not in b


@pytest.mark.parametrize("version", ["v1", "9f2c1ab", "0", "-2", "3.0", ""])
def test_a_version_that_is_no_positive_integer_is_recorded_not_linked(version: str) -> None:
    p = processor()
    claim = {"gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": version}
    [a] = stamped(p.consume_traces(traces([span(trace=7, attrs={**MODEL, **claim})]), T0))
    assert c.LF_PROMPT_NAME not in a and c.LF_PROMPT_VERSION not in a
    assert a[c.LF_META_RESOLUTION] == "unresolved"
    assert "is not a positive integer version" in a[c.LF_META_REASON]
    assert p.stats.unresolved == {"convention_version_not_int": 1}


def test_an_openinference_prompt_the_config_does_not_map_is_explained() -> None:
    p = processor()
    [a] = stamped(p.consume_traces(traces([span(trace=7, attrs={
        **MODEL, "prompt.id": "p-999", "llm.prompt_template.version": "2"})]), T0))
    assert c.LF_PROMPT_VERSION not in a and "conventions.openinference_prompts" in a[c.LF_META_REASON]
    assert p.stats.unresolved == {"convention_name_not_mapped": 1}


def test_our_own_key_wins_over_a_convention_and_links_leave_a_span_alone() -> None:
    p = processor()
    p.consume_traces(traces([fetch_span(version=4, trace=7, time=T0)]), T0)
    both = {**MODEL, c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production",
            "gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"}
    linked = {**MODEL, "gen_ai.prompt.name": "x", "gen_ai.prompt.version": "3",
              c.LF_PROMPT_NAME: "x", c.LF_PROMPT_VERSION: 1}
    out = p.consume_traces(traces([span(trace=7, start=T0 + S, attrs=both),
                                   span(trace=7, span_id=2, start=T0 + S, attrs=linked)]), T0 + S)
    a, b = stamped(out)
    assert (a[c.LF_PROMPT_VERSION], a[c.LF_META_RESOLUTION]) == (4, "trace")
    assert c.LF_META_RESOLUTION not in b  # linked by the app: left as it arrived


def test_a_span_that_is_no_generation_is_not_linked_from_a_convention() -> None:
    p = processor()
    tool = {c.GEN_AI_OPERATION_NAME: "execute_tool", c.GEN_AI_REQUEST_MODEL: "m",
            "gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "3"}
    out = p.consume_traces(traces([span("chat tool", trace=7, attrs=tool)]), T0)
    assert all(c.LF_META_RESOLUTION not in a for a in stamped(out))


def test_the_portable_link_is_written_only_when_asked_and_never_over_the_spans_own() -> None:
    record = fetch_span(version=4, trace=7, time=T0)
    ours = {**MODEL, c.PROMPT_KEY: "order-status-answer", c.PROMPT_LABEL: "production"}
    off = processor()
    off.consume_traces(traces([record]), T0)
    [a] = stamped(off.consume_traces(traces([span(trace=7, start=T0 + S, attrs=ours)]), T0 + S))
    assert "gen_ai.prompt.name" not in a
    on = processor(semconv_link=True)
    on.consume_traces(traces([record]), T0)
    [b] = stamped(on.consume_traces(traces([span(trace=7, start=T0 + S, attrs=ours)]), T0 + S))
    assert (b["gen_ai.prompt.name"], b["gen_ai.prompt.version"]) == ("order-status-answer", "4")
    own = {**ours, "gen_ai.prompt.name": "order-status-answer", "gen_ai.prompt.version": "4"}
    [d] = stamped(on.consume_traces(traces([span(trace=7, span_id=3, start=T0 + S, attrs=own)]), T0 + S))
    assert list(d).count("gen_ai.prompt.name") == 1  # its own, not a second


def test_the_portable_link_is_refused_with_the_langfuse_exporter() -> None:
    lf = {"exporter.type": "langfuse", "exporter.langfuse.base_url": "http://127.0.0.1:1",
          "exporter.langfuse.public_key": "pk", "exporter.langfuse.secret_key": "sk"}
    with pytest.raises(ConfigError, match=r"'stamp\.semconv_link' cannot be used with the Langfuse exporter"):
        load_config(None, env={}, overrides={**lf, "stamp.semconv_link": True})
    cfg = load_config(None, env={}, overrides={"stamp.semconv_link": True, "exporter.type": "otlp_grpc",
                                               "exporter.otlp_grpc.endpoint": "127.0.0.1:4317"})
    assert cfg.stamp.semconv_link


def test_versions() -> None:
    assert [parse_version(v) for v in ("3", 3, "03", "0", 0, -1, True, "3.0", "٣", None)] == [
        3, 3, 3, None, None, None, None, None, None, None]
