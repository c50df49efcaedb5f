"""``FakeAnthropic``: a loopback fake of Anthropic's Messages API (``POST /v1/messages``).

Non-streaming answers are a ``Message``; with ``stream: true`` the answer is server-sent events
in the API's order: ``message_start``, ``content_block_start``, ``ping``, one
``content_block_delta`` per word (``text_delta``; a tool call's arguments come as one
``input_json_delta``), ``content_block_stop``, ``message_delta`` (stop reason and output
tokens), ``message_stop``. Errors are Anthropic's ``{"type": "error", "error": {...}}`` bodies.

Shares with :class:`~promptstamp.testing.FakeOpenAI` the recorded requests, ``fail()``, tool
calls and per-prompt-version behaviour (see ``promptstamp.testing._openai``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from promptstamp.testing._http import Request, Response
from promptstamp.testing._openai import _FakeModelAPI, _tokens, _write_events, message_texts

__all__ = ["AnthropicRequest", "FakeAnthropic"]

#: Anthropic's error ``type`` by HTTP status (docs: "HTTP errors").
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


@dataclass(frozen=True)
class AnthropicRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any  # the decoded body, None when empty or not JSON
    #: ``(name, version)`` of the registered prompt version the request's text matched, else None
    prompt: tuple[str, int] | None = None


def _system_texts(system: Any) -> list[str]:
    if isinstance(system, str):
        return [system]
    if isinstance(system, list):
        return [" ".join(str(b["text"]) for b in system
                         if isinstance(b, dict) and isinstance(b.get("text"), str))]
    return []


def _is_tool_result(message: Any) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(isinstance(b, dict) and b.get("type") == "tool_result"
                                             for b in content)


def _tool(body: dict[str, Any]) -> str | None:
    """The client tool a request gets a ``tool_use`` of, or None (answer with text): when
    ``tool_choice`` is ``{"type": "tool", "name": ...}`` (that one) or ``{"type": "any"}`` (the
    first), or is ``auto`` / absent and the last message is the user's and not a tool result."""
    names = [str(t["name"]) for t in body.get("tools") or []
             if isinstance(t, dict) and t.get("type", "custom") == "custom"
             and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    kind = choice.get("type") if isinstance(choice, dict) else "auto"
    if not names or kind == "none":
        return None
    if kind == "tool" and isinstance(choice, dict) and choice.get("name") in names:
        return str(choice["name"])
    if kind == "any":
        return names[0]
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    by_user = isinstance(last, dict) and last.get("role") == "user" and not _is_tool_result(last)
    return names[0] if by_user else None


def _sse(event: dict[str, Any]) -> bytes:
    return f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()


class FakeAnthropic(_FakeModelAPI[AnthropicRequest]):
    """Answers ``POST /v1/messages``, plain and ``stream: true``.

    ``answer`` is the assistant text, or a function of the request body returning it.
    ``base_url`` is what ``anthropic.Anthropic(base_url=...)`` and ``ANTHROPIC_BASE_URL`` take.

    **Tool calls.** A request that offers tools gets a ``tool_use`` block (``stop_reason:
    "tool_use"``) when ``tool_choice`` names a tool or is ``any``, or is ``auto`` / absent and the
    last message is the user's and holds no ``tool_result`` (the first tool); a last message with
    a tool result gets the text answer. The input is ``tool_arguments`` (``{}`` unless given).

    ``behaviours``: per prompt version delay, error or answer (``promptstamp.testing._openai``).
    """

    _ROUTES = ("/v1/messages",)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the client adds ``/v1/messages``)."""
        return self.origin

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any,
                prompt: tuple[str, int] | None) -> AnthropicRequest:
        return AnthropicRequest(method, path, headers, body, prompt)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        return _system_texts(body.get("system")) + message_texts(body.get("messages"))

    def _status_error(self, status: int, message: str) -> Response:
        kind = _ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        request_id = f"req_{uuid.uuid4().hex[:24]}"
        return Response.json(status, {"type": "error", "error": {"type": kind, "message": message},
                                      "request_id": request_id}, {"request-id": request_id})

    def _route(self, request: Request, path: str, body: dict[str, Any], text: str,
               arguments: Callable[[], dict[str, Any]]) -> Response | None:
        model = str(body.get("model") or "claude-sonnet-4-5")
        tool = _tool(body)
        call = None if tool is None else (tool, arguments())
        input_tokens = sum(_tokens(t) for t in self._texts(body))
        if call is None:
            block: dict[str, Any] = {"type": "text", "text": text}
            output_tokens = _tokens(text)
        else:
            block = {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": call[0],
                     "input": call[1]}
            output_tokens = _tokens(json.dumps(call[1])) + 1
        stop_reason = "end_turn" if call is None else "tool_use"
        usage = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                 "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0, "service_tier": "standard"}
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [block],
            "stop_reason": stop_reason,
            "stop_sequence": None,
            "usage": usage,
        }
        if not body.get("stream"):
            return Response.json(200, message)
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**usage, "output_tokens": 1}}
        if call is None:
            empty: dict[str, Any] = {"type": "text", "text": ""}
            words = text.split(" ")
            deltas = [{"type": "text_delta", "text": w if i == 0 else " " + w} for i, w in enumerate(words)]
        else:
            empty = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": json.dumps(call[1])}]
        events: list[dict[str, Any]] = [
            {"type": "message_start", "message": start},
            {"type": "content_block_start", "index": 0, "content_block": empty},
            {"type": "ping"},
            *({"type": "content_block_delta", "index": 0, "delta": d} for d in deltas),
            {"type": "content_block_stop", "index": 0},
            {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
             "usage": {"output_tokens": output_tokens}},
            {"type": "message_stop"},
        ]
        _write_events(request, [_sse(e) for e in events])
        return None
