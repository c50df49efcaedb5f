"""FakeOpenAI and FakeAnthropic through the real ``openai`` and ``anthropic`` clients (tool calls,
the Responses API, Anthropic's streaming events; raw bodies checked against the clients' own
pydantic models), per-prompt-version behaviour, and CaptureLogExporter through the OTel Logs SDK."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor

from promptstamp.testing import Behaviour, CaptureLogExporter, FakeAnthropic, FakeOpenAI, PromptBehaviours


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(answer="Your order ships tomorrow.") as f:
        yield f


def client(fake: FakeOpenAI) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key="test", max_retries=0)


def test_lifecycle() -> None:
    fake = FakeOpenAI()
    fake.start()
    fake.start()
    assert fake.base_url.startswith("http://127.0.0.1:")
    assert fake.base_url.endswith("/v1")
    url = fake.base_url
    fake.stop()
    fake.stop()
    with pytest.raises(httpx.TransportError):
        httpx.post(url + "/chat/completions", json={}, timeout=1.0)


def test_chat_completion_through_real_client(fake: FakeOpenAI) -> None:
    completion = client(fake).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Where is it?"}],
        temperature=0,
    )
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "Your order ships tomorrow."
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 5
    assert completion.usage.completion_tokens == 4
    assert completion.usage.total_tokens == 9

    [request] = fake.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["authorization"] == "Bearer test"
    assert request.json["model"] == "gpt-4o-mini"
    assert request.json["temperature"] == 0


def test_streaming_chat_completion(fake: FakeOpenAI) -> None:
    stream = client(fake).chat.completions.create(
        model="gpt-4o",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Your order ships tomorrow."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


def test_raw_stream_ends_with_done(fake: FakeOpenAI) -> None:
    response = httpx.post(
        fake.base_url + "/chat/completions",
        json={"model": "m", "messages": [], "stream": True},
        timeout=5.0,
    )
    assert response.headers["content-type"] == "text/event-stream"
    events = [line for line in response.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)


def test_responses_api_through_real_client(fake: FakeOpenAI) -> None:
    response = client(fake).responses.create(model="gpt-4.1", input="Where is my order?")
    assert response.output_text == "Your order ships tomorrow."
    assert response.model == "gpt-4.1"
    assert response.status == "completed"
    assert fake.requests[0].path == "/v1/responses"


def test_answer_can_be_a_function_of_the_request() -> None:
    def echo(body: dict[str, Any]) -> str:
        return "echo: " + body["messages"][-1]["content"]

    with FakeOpenAI(answer=echo) as fake:
        completion = client(fake).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "ping"}]
        )
        assert completion.choices[0].message.content == "echo: ping"
        fake.set_answer("fixed")
        completion = client(fake).chat.completions.create(model="m", messages=[])
        assert completion.choices[0].message.content == "fixed"


def test_fail_and_unknown_routes(fake: FakeOpenAI) -> None:
    fake.fail(500, times=1)
    with pytest.raises(openai.InternalServerError):
        client(fake).chat.completions.create(model="m", messages=[])
    assert client(fake).chat.completions.create(model="m", messages=[]).choices
    assert httpx.get(fake.base_url + "/models", timeout=5.0).status_code == 404
    assert len(fake.requests) == 3
    fake.clear()
    assert fake.requests == []


def test_concurrent_requests(fake: FakeOpenAI) -> None:
    results: list[str | None] = []

    def call() -> None:
        completion = client(fake).chat.completions.create(model="m", messages=[])
        results.append(completion.choices[0].message.content)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert results == ["Your order ships tomorrow."] * 8
    assert len(fake.requests) == 8


def test_capture_log_exporter_keeps_records() -> None:
    capture = CaptureLogExporter()
    assert isinstance(capture, LogRecordExporter)
    provider = LoggerProvider()
    provider.add_log_record_processor(SimpleLogRecordProcessor(capture))
    logger = provider.get_logger("promptstamp")
    logger.emit(event_name="app.prompt.fetch", attributes={"app.prompt.version": 3}, body="x")
    logger.emit(body="second")
    records = capture.records
    assert [r.log_record.body for r in records] == ["x", "second"]
    assert records[0].log_record.event_name == "app.prompt.fetch"
    assert records[0].log_record.attributes is not None
    assert records[0].log_record.attributes["app.prompt.version"] == 3
    capture.clear()
    assert capture.records == []
    provider.shutdown()


# -- tool calls and the Responses API --------------------------------------------------------------
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "order_status", "description": "Look up an order",
                                      "parameters": {"type": "object", "properties": {"order": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "refund", "parameters": {"type": "object", "properties": {}}}},
]


def test_tools_and_a_user_message_get_a_tool_call_then_the_result_gets_text(fake: FakeOpenAI) -> None:
    from openai.types.chat import ChatCompletion

    messages: list[Any] = [{"role": "user", "content": "Where is order 42?"}]
    first = client(fake).chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert (call.function.name, call.function.arguments) == ("order_status", "{}")  # the first tool, {}
    messages += [choice.message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "shipped"}]
    second = client(fake).chat.completions.create(model="gpt-4o", messages=messages, tools=TOOLS)
    assert second.choices[0].finish_reason == "stop"  # the agent loop ends
    assert second.choices[0].message.content == "Your order ships tomorrow."
    raw = httpx.post(fake.base_url + "/chat/completions", timeout=5.0, json={
        "model": "m", "tools": TOOLS, "messages": [{"role": "user", "content": "x"}]}).json()
    ChatCompletion.model_validate(raw, strict=True)  # the client's own model, validated


def test_tool_choice_and_configurable_arguments() -> None:
    with FakeOpenAI(tool_arguments={"order": "42"}) as fake:
        c = client(fake)
        named = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                          tool_choice={"type": "function", "function": {"name": "refund"}})
        [call] = named.choices[0].message.tool_calls or []
        assert (call.function.name, json.loads(call.function.arguments)) == ("refund", {"order": "42"})
        after_tool = [{"role": "assistant", "content": "x"}, {"role": "tool", "tool_call_id": "c", "content": "y"}]
        required = c.chat.completions.create(model="m", messages=after_tool, tools=TOOLS, tool_choice="required")
        assert required.choices[0].finish_reason == "tool_calls"
        none = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS,
                                         tool_choice="none")
        assert none.choices[0].message.content == "answer" and none.choices[0].message.tool_calls is None
        fake.set_tool_arguments(lambda body: {"n": len(body["messages"])})
        called = c.chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}], tools=TOOLS)
        [call] = called.choices[0].message.tool_calls or []
        assert json.loads(call.function.arguments) == {"n": 1}


def test_streamed_tool_call(fake: FakeOpenAI) -> None:
    stream = client(fake).chat.completions.create(model="m", messages=[{"role": "user", "content": "x"}],
                                                  tools=TOOLS, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert deltas[0].function is not None and deltas[0].function.name == "order_status"
    assert "".join(d.function.arguments or "" for d in deltas if d.function) == "{}"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert chunks[-1].usage is not None


def test_responses_api_is_a_valid_response_object(fake: FakeOpenAI) -> None:
    from openai.types.responses import Response

    response = client(fake).responses.create(model="gpt-4.1", instructions="Be brief.",
                                             input=[{"role": "user", "content": "Where is my order?"}])
    assert response.output_text == "Your order ships tomorrow."
    assert response.instructions == "Be brief." and response.usage is not None
    assert response.usage.input_tokens == 6 and response.usage.output_tokens == 4
    raw = httpx.post(fake.base_url + "/responses", json={"model": "m", "input": "hi"}, timeout=5.0).json()
    Response.model_validate(raw)


def test_responses_api_tool_call_then_text(fake: FakeOpenAI) -> None:
    from openai.types.responses import Response

    tools: list[Any] = [{"type": "function", "name": "order_status", "parameters": {"type": "object"},
                         "strict": False}]
    first = client(fake).responses.create(model="gpt-4.1", input="Where is order 42?", tools=tools)
    [call] = first.output
    assert call.type == "function_call" and call.name == "order_status" and call.arguments == "{}"
    assert first.output_text == ""
    Response.model_validate(first.model_dump())  # the echoed tools and the call are well-formed
    second = client(fake).responses.create(model="gpt-4.1", tools=tools, input=[
        {"role": "user", "content": "Where is order 42?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "shipped"},
    ])
    assert second.output_text == "Your order ships tomorrow."
    streamed = httpx.post(fake.base_url + "/responses", json={"model": "m", "input": "x", "stream": True},
                          timeout=5.0)
    assert streamed.status_code == 400  # said plainly, not a JSON body the client would misread


# -- FakeAnthropic ------------------------------------------------------------------------------------
@pytest.fixture
def claude_fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic(answer="Your order ships tomorrow.") as f:
        yield f


def claude(fake: FakeAnthropic) -> Any:
    import anthropic

    return anthropic.Anthropic(base_url=fake.base_url, api_key="test", max_retries=0)


def test_anthropic_message(claude_fake: FakeAnthropic) -> None:
    from anthropic.types import Message

    message = claude(claude_fake).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, system="Be brief.",
        messages=[{"role": "user", "content": "Where is it?"}])
    assert isinstance(message, Message)
    assert [b.type for b in message.content] == ["text"] and message.content[0].text == "Your order ships tomorrow."
    assert (message.stop_reason, message.model, message.role) == ("end_turn", "claude-sonnet-4-5", "assistant")
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 4)
    [request] = claude_fake.requests
    assert (request.method, request.path) == ("POST", "/v1/messages") and "anthropic-version" in request.headers
    assert request.headers.get("x-api-key", request.headers.get("authorization")) in ("test", "Bearer test")
    raw = httpx.post(claude_fake.base_url + "/v1/messages", timeout=5.0, json={
        "model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}).json()
    Message.model_validate(raw, strict=True)


def test_anthropic_streaming_events_in_the_api_s_order(claude_fake: FakeAnthropic) -> None:
    events = list(claude(claude_fake).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, stream=True, messages=[{"role": "user", "content": "hi"}]))
    kinds = [e.type for e in events]
    assert kinds == ["message_start", "content_block_start", *["content_block_delta"] * 4,
                     "content_block_stop", "message_delta", "message_stop"]  # ping: skipped by the client
    assert "".join(e.delta.text for e in events if e.type == "content_block_delta") == "Your order ships tomorrow."
    assert events[-2].delta.stop_reason == "end_turn" and events[-2].usage.output_tokens == 4
    raw = httpx.post(claude_fake.base_url + "/v1/messages", timeout=5.0, json={
        "model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]})
    assert raw.headers["content-type"] == "text/event-stream"
    frames = [f.split("\n") for f in raw.text.strip().split("\n\n")]
    assert [f[0] for f in frames] == [f"event: {k}" for k in (
        "message_start", "content_block_start", "ping", *["content_block_delta"] * 4, "content_block_stop",
        "message_delta", "message_stop")]
    assert all(json.loads(f[1].removeprefix("data: "))["type"] == f[0].removeprefix("event: ") for f in frames)


def test_anthropic_stream_helper_and_tool_use(claude_fake: FakeAnthropic) -> None:
    client_ = claude(claude_fake)
    with client_.messages.stream(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]) as stream:
        assert stream.get_final_text() == "Your order ships tomorrow."
    tools = [{"name": "order_status", "description": "Look up", "input_schema": {"type": "object"}}]
    claude_fake.set_tool_arguments({"order": "42"})
    with client_.messages.stream(model="m", max_tokens=10, tools=tools,
                                 messages=[{"role": "user", "content": "Where is 42?"}]) as stream:
        final = stream.get_final_message()
    [block] = final.content
    assert block.type == "tool_use" and (block.name, block.input) == ("order_status", {"order": "42"})
    assert final.stop_reason == "tool_use"
    done = client_.messages.create(model="m", max_tokens=10, tools=tools, messages=[
        {"role": "user", "content": "Where is 42?"},
        {"role": "assistant", "content": [block.model_dump()]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "shipped"}]},
    ])
    assert done.stop_reason == "end_turn" and done.content[0].text == "Your order ships tomorrow."


def test_anthropic_errors_are_anthropic_s(claude_fake: FakeAnthropic) -> None:
    import anthropic

    claude_fake.fail(529, times=1)
    with pytest.raises(anthropic.APIStatusError) as caught:
        claude(claude_fake).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert caught.value.status_code == 529
    assert caught.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]
    with pytest.raises(anthropic.RateLimitError):
        claude_fake.fail(429, times=1)
        claude(claude_fake).messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert httpx.get(claude_fake.base_url + "/v1/models", timeout=5.0).json()["error"]["type"] == "not_found_error"


# -- per-prompt-version behaviour -----------------------------------------------------------------
CHAT_V1 = [{"role": "system", "content": "You are a support assistant."},
           {"role": "user", "content": "Where is order {{order}}?"}]
CHAT_V2 = [{"role": "system", "content": "You are a support assistant. Be brief."},
           {"type": "placeholder", "name": "history"},
           {"role": "user", "content": "Where is order {{ order }}?"}]


def test_prompt_behaviours_match_by_text_most_specific_first() -> None:
    b = PromptBehaviours()
    b.add("orders", 1, CHAT_V1, Behaviour(delay_ms=5))
    b.add("orders", 2, CHAT_V2)
    b.add("summary", 1, "Summarise: {{text}}", Behaviour(error_status=503))
    b.add("anything", 1, "{{input}}", Behaviour(error_status=500))  # all variables: never matches
    v1 = b.match(["You are a support assistant.", "Where is order 42?"])
    assert v1 is not None and (v1.name, v1.version, v1.behaviour.delay_ms) == ("orders", 1, 5)
    # v2's system text contains v1's: both match, the more specific (more literal text) wins
    v2 = b.match(["You are a support assistant. Be brief.", "earlier", "turns", "Where is order 7?"])
    assert v2 is not None and (v2.name, v2.version) == ("orders", 2)
    assert b.match(["Where is order 42?", "You are a support assistant."]) is None  # order matters
    inside = b.match(["Context.\nSummarise: a long text\nThanks"])  # a text prompt inside a message
    assert inside is not None and inside.name == "summary"
    assert b.match(["Hello"]) is None
    b.add("orders", 1, CHAT_V1, Behaviour(delay_ms=7))  # registering again replaces
    again = b.match(["You are a support assistant.", "Where is order 1?"])
    assert again is not None and again.behaviour.delay_ms == 7 and len(b) == 4


def test_a_version_s_delay_error_and_answer_in_both_fakes() -> None:
    import anthropic
    import openai as openai_module

    shared = PromptBehaviours()
    shared.add("orders", 1, CHAT_V1, Behaviour(delay_ms=200, error_status=429, error_message="slow down"))
    shared.add("orders", 2, CHAT_V2, Behaviour(answer="Brief: shipped."))
    messages = [{"role": "system", "content": "You are a support assistant."},
                {"role": "user", "content": "Where is order 42?"}]
    with FakeOpenAI(behaviours=shared) as oa, FakeAnthropic(behaviours=shared) as an:
        started = time.monotonic()
        with pytest.raises(openai_module.RateLimitError) as caught:
            client(oa).chat.completions.create(model="m", messages=messages)
        assert time.monotonic() - started >= 0.2
        assert caught.value.status_code == 429 and "slow down" in str(caught.value)
        assert oa.requests[0].prompt == ("orders", 1)
        with pytest.raises(anthropic.RateLimitError):
            claude_client = anthropic.Anthropic(base_url=an.base_url, api_key="k", max_retries=0)
            claude_client.messages.create(model="m", max_tokens=5, system=messages[0]["content"],
                                          messages=messages[1:])
        v2 = [{"role": "system", "content": "You are a support assistant. Be brief."}, messages[1]]
        reply = client(oa).responses.create(model="m", instructions=v2[0]["content"], input=v2[1]["content"])
        assert reply.output_text == "Brief: shipped."
        message = claude_client.messages.create(model="m", max_tokens=5, system=v2[0]["content"],
                                                messages=v2[1:])
        assert message.content[0].text == "Brief: shipped."  # type: ignore[union-attr]
        assert an.requests[-1].prompt == ("orders", 2)
        plain = client(oa).chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert plain.choices[0].message.content == "answer" and oa.requests[-1].prompt is None
