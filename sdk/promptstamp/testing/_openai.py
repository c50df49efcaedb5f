"""``FakeOpenAI``: a loopback fake of the OpenAI HTTP API (chat completions and responses).

Also what every fake model API here shares (``FakeAnthropic`` too): recorded requests, injected
failures, tool calls, and per-prompt-version behaviour (:class:`PromptBehaviours`).

**Which prompt version a request used.** The fakes cannot see the prompt's name or version: a
model request carries only the compiled text. So each version registered with
:class:`PromptBehaviours` (``promptstamp-relay dev`` registers every version it seeds) is matched
by its *text*:

* a version's template is its text prompt, or each message content of its chat prompt
  (placeholders skipped); every ``{{ variable }}`` in it matches any text, the rest literally;
* a request's texts are its message contents in order (the system message, the Responses API's
  ``instructions`` and Anthropic's ``system`` first);
* a version matches when each of its template messages is found, in order, each inside one of
  the request's messages (a message may hold more text around it);
* of the versions that match, the most specific wins: the most literal characters; on a tie the
  one registered last (the newer version). A template that is all variables matches nothing.

So two versions with the same text cannot be told apart (the newer one is used): give a version
with a behaviour text of its own.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from promptstamp.testing._http import LoopbackServer, Request, Response

Answer = str | Callable[[dict[str, Any]], str]
#: The arguments of the tool call the fakes make: an object, or a function of the request body.
ToolArguments = Mapping[str, Any] | Callable[[dict[str, Any]], Mapping[str, Any]]

_VARIABLE = re.compile(r"\{\{.*?\}\}", re.DOTALL)  # Langfuse's {{ name }}, as the SDK's compile finds it


@dataclass(frozen=True)
class OpenAIRequest:
    """One request the fake received."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any  # the decoded body, None when empty or not JSON
    #: ``(name, version)`` of the registered prompt version the request's text matched, else None
    prompt: tuple[str, int] | None = None


@dataclass(frozen=True)
class Behaviour:
    """How a fake model API answers a request made with one prompt version.

    ``delay_ms``: wait this long before answering (ends early when the fake stops).
    ``error_status``: then answer with this HTTP status (400..599) and the API's error body,
    ``error_message`` in it. ``answer``: else the assistant's text (default: the fake's answer).
    """

    delay_ms: int = 0
    error_status: int | None = None
    error_message: str | None = None
    answer: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.delay_ms, bool) or not isinstance(self.delay_ms, int) or self.delay_ms < 0:
            raise ValueError(f"delay_ms: a whole number of milliseconds >= 0, got {self.delay_ms!r}")
        status = self.error_status
        if status is not None and (isinstance(status, bool) or not isinstance(status, int)
                                   or not 400 <= status <= 599):
            raise ValueError(f"error status: an HTTP status 400..599, got {status!r}")


@dataclass(frozen=True)
class PromptMatch:
    """The prompt version a request's text matched, and its behaviour."""

    name: str
    version: int
    behaviour: Behaviour


@dataclass(frozen=True)
class _Registered:
    name: str
    version: int
    patterns: tuple[re.Pattern[str], ...]
    literal: int  # literal characters: how specific the template is
    behaviour: Behaviour


def _pattern(template: str) -> tuple[re.Pattern[str], int]:
    pieces = _VARIABLE.split(template)
    return re.compile("(?:.*?)".join(re.escape(p) for p in pieces), re.DOTALL), sum(len(p) for p in pieces)


def template_texts(prompt: str | Sequence[Mapping[str, Any]]) -> list[str]:
    """The texts of a prompt version (a text prompt's string, a chat prompt's message contents)."""
    if isinstance(prompt, str):
        return [prompt]
    texts = []
    for message in prompt:
        content = message.get("content")
        if message.get("type") != "placeholder" and isinstance(content, str):
            texts.append(content)
    return texts


class PromptBehaviours:
    """Prompt versions by their text, and how the fake model APIs answer requests made with them.

    Shared by the fakes that should agree (``promptstamp-relay dev`` gives one to both). The
    matching rules are in this module's documentation. Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: list[_Registered] = []

    def add(
        self,
        name: str,
        version: int,
        prompt: str | Sequence[Mapping[str, Any]],
        behaviour: Behaviour | None = None,
    ) -> None:
        """Register a prompt version's text (its template, uncompiled) and its behaviour (None:
        answer normally; registering such versions still matters: a more specific version
        without behaviour keeps a request off a vaguer one with it)."""
        compiled = [_pattern(t) for t in template_texts(prompt)]
        entry = _Registered(name, int(version), tuple(p for p, _ in compiled), sum(n for _, n in compiled),
                            behaviour or Behaviour())
        with self._lock:
            self._versions = [v for v in self._versions if (v.name, v.version) != (name, entry.version)]
            self._versions.append(entry)

    def clear(self) -> None:
        with self._lock:
            self._versions = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._versions)

    def match(self, texts: Sequence[str]) -> PromptMatch | None:
        """The registered version ``texts`` (a request's message contents, in order) were made
        with, or None."""
        with self._lock:
            versions = list(self._versions)
        best: _Registered | None = None
        for entry in versions:
            if entry.literal == 0 or (best is not None and entry.literal < best.literal):
                continue
            if _found_in_order(entry.patterns, texts):
                best = entry
        return None if best is None else PromptMatch(best.name, best.version, best.behaviour)


def _found_in_order(patterns: Sequence[re.Pattern[str]], texts: Sequence[str]) -> bool:
    position = 0
    for pattern in patterns:
        while position < len(texts) and pattern.search(texts[position]) is None:
            position += 1
        if position >= len(texts):
            return False
        position += 1
    return True


def _tokens(text: str) -> int:
    return len(text.split())


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [str(c["text"]) for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)]
    return []


def message_texts(messages: Any) -> list[str]:
    """Each message's text (its content string, or its text parts joined), in order."""
    if isinstance(messages, str):
        return [messages]
    if not isinstance(messages, list):
        return []
    return [" ".join(_content_texts(m.get("content"))) for m in messages if isinstance(m, dict)]


def _message_text(messages: Any) -> str:
    return " ".join(t for t in message_texts(messages) if t)


def _error(status: int, message: str, kind: str = "invalid_request_error",
           code: str | None = None) -> Response:
    return Response.json(status, {"error": {"message": message, "type": kind, "param": None, "code": code}})


def _status_error(status: int, message: str) -> Response:
    """OpenAI's error body for ``status``."""
    if status == 429:
        return _error(status, message, "requests", "rate_limit_exceeded")
    if status == 401:
        return _error(status, message, "invalid_request_error", "invalid_api_key")
    return _error(status, message, "server_error" if status >= 500 else "invalid_request_error")


_R = TypeVar("_R")


class _FakeModelAPI(LoopbackServer, Generic[_R]):
    """What the fake model APIs share: recorded requests, injected failures, the answer, tool
    call arguments and per-prompt-version behaviour. Subclasses answer their own routes."""

    _ROUTES: tuple[str, ...] = ()

    def __init__(
        self,
        answer: Answer = "answer",
        *,
        tool_arguments: ToolArguments | None = None,
        behaviours: PromptBehaviours | None = None,
    ) -> None:
        super().__init__()
        self._answer = answer
        self._tool_arguments: ToolArguments = tool_arguments if tool_arguments is not None else {}
        self.behaviours = behaviours if behaviours is not None else PromptBehaviours()
        self._lock = threading.Lock()
        self._requests: list[_R] = []
        self._fail_status: int | None = None
        self._fail_remaining: int | None = None

    @property
    def requests(self) -> list[_R]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def set_answer(self, answer: Answer) -> None:
        with self._lock:
            self._answer = answer

    def set_tool_arguments(self, arguments: ToolArguments) -> None:
        """The arguments of the tool calls made from now on (an object, or a function of the body)."""
        with self._lock:
            self._tool_arguments = arguments

    def fail(self, status: int = 500, times: int | None = None) -> None:
        """Answer the next ``times`` requests (None: all, until ``reset_faults()``) with ``status``."""
        with self._lock:
            self._fail_status, self._fail_remaining = status, times

    def reset_faults(self) -> None:
        with self._lock:
            self._fail_status = self._fail_remaining = None

    # -- for subclasses ----------------------------------------------------------------------
    def _record(self, method: str, path: str, headers: dict[str, str], body: Any,
                prompt: tuple[str, int] | None) -> _R:
        raise NotImplementedError

    def _texts(self, body: dict[str, Any]) -> list[str]:
        """The request's message texts, in order (for :class:`PromptBehaviours`)."""
        raise NotImplementedError

    def _status_error(self, status: int, message: str) -> Response:
        raise NotImplementedError

    def _route(self, request: Request, path: str, body: dict[str, Any], text: str,
               arguments: Callable[[], dict[str, Any]]) -> Response | None:
        raise NotImplementedError

    # -- HTTP --------------------------------------------------------------------------------
    def _handle(self, request: Request) -> Response | None:
        path = urlsplit(request.raw_path).path
        try:
            body: Any = json.loads(request.body) if request.body else None
        except (ValueError, UnicodeDecodeError):
            body = None
        matched = self.behaviours.match(self._texts(body)) if isinstance(body, dict) and len(
            self.behaviours) else None
        record = self._record(request.method, path, dict(request.headers), body,
                              None if matched is None else (matched.name, matched.version))
        with self._lock:
            self._requests.append(record)
            status = self._fail_status
            if status is not None and self._fail_remaining is not None:
                if self._fail_remaining <= 0:
                    status = None
                else:
                    self._fail_remaining -= 1
            answer, tool_arguments = self._answer, self._tool_arguments
        if status is not None:
            return self._status_error(status, "Injected failure")
        if request.method != "POST" or path not in self._ROUTES:
            return self._status_error(404, f"Unknown request URL: {request.method} {path}")
        if not isinstance(body, dict):
            return self._status_error(400, "We could not parse the JSON body of your request.")
        behaviour = matched.behaviour if matched is not None else Behaviour()
        if behaviour.delay_ms:
            self._sleep(behaviour.delay_ms / 1000)
        if behaviour.error_status is not None:
            where = f" (prompt {matched.name!r} version {matched.version})" if matched is not None else ""
            return self._status_error(behaviour.error_status,
                                      behaviour.error_message or f"Injected error{where}")
        text = behaviour.answer if behaviour.answer is not None else (
            answer(body) if callable(answer) else answer)

        def arguments() -> dict[str, Any]:
            return dict(tool_arguments(body) if callable(tool_arguments) else tool_arguments)

        return self._route(request, path, body, text, arguments)


def _write_events(request: Request, events: Sequence[bytes]) -> None:
    """A ``text/event-stream`` response of ``events`` (each already framed), then close."""
    handler = request.handler
    try:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Cache-Control", "no-cache")
        handler.end_headers()
        for event in events:
            handler.wfile.write(event)
        handler.wfile.flush()
    except (BrokenPipeError, ConnectionResetError):
        pass


def _chat_tool(body: dict[str, Any]) -> str | None:
    """The function a chat completion request gets a call to, or None (answer with text)."""
    tools = [t.get("function") for t in body.get("tools") or []
             if isinstance(t, dict) and t.get("type") == "function"]
    names = [str(t["name"]) for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    if not names or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        if isinstance(function, dict) and function.get("name") in names:
            return str(function["name"])
    if choice == "required":
        return names[0]
    messages = body.get("messages")
    last = messages[-1] if isinstance(messages, list) and messages else None
    return names[0] if isinstance(last, dict) and last.get("role") == "user" else None


def _responses_tool(body: dict[str, Any]) -> str | None:
    """The function a Responses API request gets a call to, or None."""
    names = [str(t["name"]) for t in body.get("tools") or []
             if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("name"), str)]
    choice = body.get("tool_choice")
    if not names or choice == "none":
        return None
    if isinstance(choice, dict) and choice.get("type") == "function" and choice.get("name") in names:
        return str(choice["name"])
    if choice == "required":
        return names[0]
    given = body.get("input")
    if isinstance(given, str):
        return names[0]
    last = given[-1] if isinstance(given, list) and given else None
    by_user = isinstance(last, dict) and last.get("role") == "user" and last.get("type", "message") in (
        "message", None)
    return names[0] if by_user else None


class FakeOpenAI(_FakeModelAPI[OpenAIRequest]):
    """Answers ``POST /v1/chat/completions`` (also ``stream: true``) and ``POST /v1/responses``
    (not streaming).

    ``answer`` is the assistant text, or a function of the request body returning it.

    **Tool calls.** A request that offers function tools gets a call to one instead of text when
    the model would have to act: ``tool_choice`` names a function (that one), is ``"required"``
    (the first), or is ``"auto"`` / absent and the last message is the user's (the first tool; a
    last message with the tool's result gets the text answer, so an agent loop ends).
    ``tool_choice: "none"`` never calls. The arguments are ``tool_arguments``: ``{}`` unless
    given (an object, or a function of the request body).

    ``behaviours``: per prompt version delay, error or answer (module documentation).
    """

    _ROUTES = ("/v1/chat/completions", "/v1/responses")

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` — what ``openai.OpenAI(base_url=...)`` takes."""
        return self.origin + "/v1"

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any,
                prompt: tuple[str, int] | None) -> OpenAIRequest:
        return OpenAIRequest(method, path, headers, body, prompt)

    def _texts(self, body: dict[str, Any]) -> list[str]:
        texts = message_texts(body.get("messages"))
        instructions = body.get("instructions")
        if isinstance(instructions, str):
            texts.append(instructions)
        return texts + message_texts(body.get("input"))

    def _status_error(self, status: int, message: str) -> Response:
        return _status_error(status, message)

    def _route(self, request: Request, path: str, body: dict[str, Any], text: str,
               arguments: Callable[[], dict[str, Any]]) -> Response | None:
        model = str(body.get("model") or "gpt-4o-mini")
        if path == "/v1/responses":
            if body.get("stream"):
                return _error(400, "This fake answers the Responses API without streaming only.")
            tool = _responses_tool(body)
            call = None if tool is None else (tool, json.dumps(arguments()))
            return Response.json(200, self._response(body, model, text, call))
        tool = _chat_tool(body)
        call = None if tool is None else (tool, json.dumps(arguments()))
        if body.get("stream"):
            self._stream(request, body, model, text, call)
            return None
        return Response.json(200, self._chat_completion(body, model, text, call))

    @staticmethod
    def _chat_completion(body: dict[str, Any], model: str, text: str,
                         call: tuple[str, str] | None = None) -> dict[str, Any]:
        prompt_tokens = _tokens(_message_text(body.get("messages")))
        message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
        if call is not None:
            message["content"] = None
            message["tool_calls"] = [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                                      "function": {"name": call[0], "arguments": call[1]}}]
        completion_tokens = _tokens(text) if call is None else _tokens(call[1]) + 1
        return {
            "id": f"chatcmpl-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": "stop" if call is None else "tool_calls",
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
    def _response(body: dict[str, Any], model: str, text: str,
                  call: tuple[str, str] | None = None) -> dict[str, Any]:
        """A Responses API ``response`` object (``openai.types.responses.Response``)."""
        instructions = body.get("instructions")
        input_tokens = _tokens(_message_text(body.get("input"))) + (
            _tokens(instructions) if isinstance(instructions, str) else 0)
        output: dict[str, Any]
        if call is None:
            output = {
                "type": "message",
                "id": f"msg_{uuid.uuid4().hex}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}],
            }
            output_tokens = _tokens(text)
        else:
            output = {
                "type": "function_call",
                "id": f"fc_{uuid.uuid4().hex}",
                "call_id": f"call_{uuid.uuid4().hex[:24]}",
                "name": call[0],
                "arguments": call[1],
                "status": "completed",
            }
            output_tokens = _tokens(call[1]) + 1
        now = time.time()
        tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
        choice = body.get("tool_choice", "auto")
        return {
            "id": f"resp_{uuid.uuid4().hex}",
            "object": "response",
            "created_at": int(now),
            "completed_at": int(now),
            "status": "completed",
            "background": False,
            "model": model,
            "output": [output],
            "usage": {
                "input_tokens": input_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": input_tokens + output_tokens,
            },
            "error": None,
            "incomplete_details": None,
            "instructions": instructions if isinstance(instructions, str) else None,
            "max_output_tokens": body.get("max_output_tokens"),
            "metadata": body.get("metadata") if isinstance(body.get("metadata"), dict) else {},
            "parallel_tool_calls": bool(body.get("parallel_tool_calls", True)),
            "previous_response_id": body.get("previous_response_id"),
            "temperature": body.get("temperature", 1.0),
            "tool_choice": choice if isinstance(choice, (str, dict)) else "auto",
            "tools": tools,
            "top_p": body.get("top_p", 1.0),
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "user": None,
        }

    @staticmethod
    def _stream(request: Request, body: dict[str, Any], model: str, text: str,
                call: tuple[str, str] | None = None) -> None:
        """Server-sent events: a role chunk, one content chunk per word (or the tool call's two
        chunks: name, then arguments), a finish chunk, a usage chunk when
        ``stream_options.include_usage``, then ``data: [DONE]``."""
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

        if call is None:
            words = text.split(" ")
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(words)]
            events.append(chunk({}, "stop"))
            completion_tokens = _tokens(text)
        else:
            first = {"index": 0, "id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                     "function": {"name": call[0], "arguments": ""}}
            events = [chunk({"role": "assistant", "content": None, "tool_calls": [first]}),
                      chunk({"tool_calls": [{"index": 0, "function": {"arguments": call[1]}}]}),
                      chunk({}, "tool_calls")]
            completion_tokens = _tokens(call[1]) + 1
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            prompt_tokens = _tokens(_message_text(body.get("messages")))
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            events.append({**base, "choices": [], "usage": usage})
        frames = [f"data: {json.dumps(event)}\n\n".encode() for event in events]
        _write_events(request, [*frames, b"data: [DONE]\n\n"])
