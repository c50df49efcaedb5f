"""FakeOpenAI through the real ``openai`` client; CaptureLogExporter through the OTel Logs SDK."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import LogRecordExporter, SimpleLogRecordProcessor

from promptstamp.testing import CaptureLogExporter, FakeOpenAI


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
