"""``FakeOpenAI``: a loopback fake of the OpenAI HTTP API (chat completions and responses)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from promptstamp.testing._http import LoopbackServer, Request, Response

Answer = str | Callable[[dict[str, Any]], str]


@dataclass(frozen=True)
class OpenAIRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any  # the decoded body, None when empty or not JSON


def _tokens(text: str) -> int:
    return len(text.split())


def _message_text(messages: Any) -> str:
    parts: list[str] = []
    if isinstance(messages, str):
        return messages
    if not isinstance(messages, list):
        return ""
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(c.get("text", "")) for c in content if isinstance(c, dict) and "text" in c)
    return " ".join(parts)


def _error(status: int, message: str, kind: str = "invalid_request_error") -> Response:
    return Response.json(status, {"error": {"message": message, "type": kind, "param": None, "code": None}})


class FakeOpenAI(LoopbackServer):
    """Answers ``POST /v1/chat/completions`` (also ``stream: true``) and ``POST /v1/responses``.

    ``answer`` is the assistant text, or a function of the request body returning it.
    """

    def __init__(self, answer: Answer = "answer") -> None:
        super().__init__()
        self._answer = answer
        self._lock = threading.Lock()
        self._requests: list[OpenAIRequest] = []
        self._fail_status: int | None = None
        self._fail_remaining: int | None = None

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` — what ``openai.OpenAI(base_url=...)`` takes."""
        return self.origin + "/v1"

    @property
    def requests(self) -> list[OpenAIRequest]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def set_answer(self, answer: Answer) -> None:
        with self._lock:
            self._answer = answer

    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer the next ``times`` requests (None: all, until ``reset_faults()``) with ``status``."""
        with self._lock:
            self._fail_status, self._fail_remaining = status, times

    def reset_faults(self) -> None:
        with self._lock:
            self._fail_status = self._fail_remaining = None

    # -- HTTP --------------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response | None:
        path = urlsplit(request.raw_path).path
        try:
            body: Any = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        with self._lock:
            self._requests.append(OpenAIRequest(request.method, path, dict(request.headers), body))
            status = self._fail_status
            if status is not None and self._fail_remaining is not None:
                if self._fail_remaining <= 0:
                    status = None
                else:
                    self._fail_remaining -= 1
            answer = self._answer
        if status is not None:
            return _error(status, "Injected failure", "server_error")
        if request.method != "POST" or path not in ("/v1/chat/completions", "/v1/responses"):
            return _error(404, f"Unknown request URL: {request.method} {path}")
        if not isinstance(body, dict):
            return _error(400, "We could not parse the JSON body of your request.")
        text = answer(body) if callable(answer) else answer
        model = str(body.get("model") or "gpt-4o-mini")
        if path == "/v1/responses":
            return Response.json(200, self._response(body, model, text))
        if body.get("stream"):
            self._stream(request, body, model, text)
            return None
        return Response.json(200, self._chat_completion(body, model, text))

    @staticmethod
    def _chat_completion(body: dict[str, Any], model: str, text: str) -> dict[str, Any]:
        prompt_tokens = _tokens(_message_text(body.get("messages")))
        completion_tokens = _tokens(text)
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text, "refusal": None},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
            "system_fingerprint": "fp_promptstamp_fake",
        }

    @staticmethod
    def _response(body: dict[str, Any], model: str, text: str) -> dict[str, Any]:
        input_tokens = _tokens(_message_text(body.get("input")))
        output_tokens = _tokens(text)
        return {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model,
            "output": [
                {
                    "type": "message",
                    "id": f"msg_{uuid.uuid4().hex}",
                    "status": "completed",
                    "role": "assistant",
                    "content": [{"type": "output_text", "text": text, "annotations": []}],
                }
            ],
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": {},
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "text": {"format": {"type": "text"}},
        }

    @staticmethod
    def _stream(request: Request, body: dict[str, Any], model: str, text: str) -> None:
        """Server-sent events: a role chunk, one content chunk per word, a finish chunk,
        a usage chunk when ``stream_options.include_usage``, then ``data: [DONE]``."""
        base = {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": "fp_promptstamp_fake",
        }

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**base, "choices": [choice]}

        words = text.split(" ")
        events = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
        events.append(chunk({}, "stop"))
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt_tokens = _tokens(_message_text(body.get("messages")))
            completion_tokens = _tokens(text)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            events.append({**base, "choices": [], "usage": usage})
        handler = request.handler
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "text/event-stream")
            handler.send_header("Cache-Control", "no-cache")
            handler.end_headers()
            for event in events:
                handler.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
            handler.wfile.write(b"data: [DONE]\n\n")
            handler.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
