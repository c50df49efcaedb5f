"""``LangfuseServer``: a loopback server that answers like Langfuse's public API.

Covered: the prompts API (get / create a version / move labels) and the OTLP trace ingest
endpoint, plus a view of what Langfuse would show for the ingested spans (observation types,
prompt links, metadata, and the observations Langfuse's ingestion would drop).

Observation types come from the relay's own mirror of Langfuse's ``ObservationTypeMapper``
(``promptstamp_contract.langfuse_typing``), so this stand-in and the relay cannot disagree; a value that makes
Langfuse's mapper throw loses the whole export request here as there. Prompt links are judged as
Langfuse's v3 write path judges them (see ``_prompt_link``). One difference is left, on purpose: a
link to a positive version is shown as linked whether or not this server holds that prompt
(Langfuse resolves it against the project's prompts, so tests need not create every prompt).
"""

from __future__ import annotations

import base64
import binascii
import copy
import gzip
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import promptstamp_contract as c
from promptstamp.testing._http import LoopbackServer, Request, Response
from promptstamp_contract import langfuse_typing as detect

PROMPTS_PATH = "/api/public/v2/prompts"
OTEL_TRACES_PATH = "/api/public/otel/v1/traces"
PROJECTS_PATH = "/api/public/projects"
_PATCH_RE = re.compile(r"^/api/public/v2/prompts/(?P<name>.+)/versions/(?P<version>[^/]+)$")

PRODUCTION_LABEL = "production"
LATEST_LABEL = "latest"
_LATEST_RESERVED = "Label 'latest' is always assigned to the latest prompt version"
MAX_INGESTION_VERSION = 4

# Langfuse's OTel attribute names (packages/shared/src/server/otel/attributes.ts).
_METADATA = "langfuse.observation.metadata"
_METADATA_PREFIX = _METADATA + "."


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
@dataclass
class PromptRequest:
    """One ``GET /api/public/v2/prompts/{name}`` the server received."""

    name: str
    label: str | None
    version: str | None
    status: int | None = None  # set once answered


@dataclass(frozen=True)
class IngestRequest:
    """One ``POST /api/public/otel/v1/traces`` the server received."""

    headers: dict[str, str]
    content_type: str
    content_encoding: str | None
    status: int
    body: bytes  # after gunzip
    request: Any  # opentelemetry.proto...ExportTraceServiceRequest, None when undecodable
    error: str | None = None


@dataclass(frozen=True)
class Observation:
    """One span as Langfuse would show it."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    type: str
    prompt_name: str | None
    prompt_version: int | None
    metadata: dict[str, Any]
    attributes: dict[str, Any]
    service_name: str | None
    resource_attributes: dict[str, Any] = field(default_factory=dict)
    scope_name: str | None = None
    start_time_unix_nano: int = 0
    end_time_unix_nano: int = 0
    #: the input Langfuse would show (``langfuse_typing.langfuse_input``: its extraction order)
    input: Any = None


@dataclass(frozen=True)
class RejectedObservation:
    """A span Langfuse's ingestion would drop, and why."""

    observation: Observation
    reason: str


class _BadRequest(Exception):
    pass


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _now_iso() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def _error(status: int, message: str, error: str) -> Response:
    return Response.json(status, {"message": message, "error": error})


def any_value_to_python(value: Any) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (int stays int, double stays float)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value_to_python(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value_to_python(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def _attributes(key_values: Iterable[Any]) -> dict[str, Any]:
    return {kv.key: any_value_to_python(kv.value) for kv in key_values}


def observation_type(
    attributes: Mapping[str, Any],
    resource_attributes: Mapping[str, Any] | None = None,
    scope_name: str | None = None,
    scope_version: str | None = None,
    span_name: str = "",
) -> str:
    """The observation type Langfuse's ``ObservationTypeMapperRegistry`` assigns.

    The relay's own table (``promptstamp_contract.langfuse_typing``), so the relay and this stand-in cannot
    disagree. ``attributes`` values: OTLP ``AnyValue``s or plain Python values.
    """
    language = (resource_attributes or {}).get("telemetry.sdk.language")
    return detect.langfuse_type(
        attributes,
        scope_name=scope_name or "",
        scope_version=scope_version or "",
        span_name=span_name,
        sdk_language=language if isinstance(language, str) else "",
    )


def _ai_sdk_prompt(value: Any) -> Any:
    """``parseLangfusePromptFromAISDK``: the parsed ``ai.telemetry.metadata.langfusePrompt``
    (an object, an array or null), else None."""
    plain = detect.js_value(value)
    if not plain or (isinstance(plain, float) and math.isnan(plain)):  # `if (!aiSDKPrompt) return`
        return None
    try:  # JSON.parse(String(value)); JavaScript's JSON has no NaN / Infinity
        parsed = json.loads(detect.js_string(plain), parse_constant=_no_constant)
    except ValueError:
        return None
    return parsed if parsed is None or isinstance(parsed, (dict, list)) else None


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _js_number_int(value: Any) -> bool:
    """``z.number().int()``: a JavaScript number that is an integer (3.0 is one: JS has one
    number type). Booleans and strings are not numbers."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or (math.isfinite(value) and value.is_integer())


def _prompt_link(attributes: Mapping[str, Any]) -> tuple[str | None, int | None, str | None]:
    """``(name, version, drop_reason)`` as Langfuse's ingestion makes of a GENERATION's link.

    Read as ``OtelIngestionProcessor`` reads it, each of name and version on its own:
    ``langfuse.observation.prompt.*`` ?? legacy ``langfuse.prompt.*`` ?? the AI SDK's
    ``langfusePrompt`` JSON. Judged as the v3 write path's schema judges it
    (``CreateGenerationBody``: name a string, version an integer, both or neither); a version
    no prompt can have (below 1) then resolves to no prompt: kept, not linked.
    """

    def first(*keys: str, json_key: str) -> Any:
        for key in keys:
            if key in attributes:
                value = detect.js_value(attributes[key])
                if value is not None:
                    return value
        ai_sdk = attributes.get(c.AI_SDK_LANGFUSE_PROMPT)
        parsed = _ai_sdk_prompt(ai_sdk) if ai_sdk is not None else None
        return parsed.get(json_key) if isinstance(parsed, dict) else None

    name = first(c.LF_PROMPT_NAME, c.LF_LEGACY_PROMPT_NAME, json_key="name")
    version = first(c.LF_PROMPT_VERSION, c.LF_LEGACY_PROMPT_VERSION, json_key="version")
    if name is not None and not isinstance(name, str):
        return None, None, f"prompt name {name!r} ({type(name).__name__}) is not a string"
    if version is not None and not _js_number_int(version):
        return None, None, f"prompt version {version!r} ({type(version).__name__}) is not an integer"
    has_name, has_version = bool(name), version is not None and version != 0
    if has_name and has_version:
        assert isinstance(name, str) and version is not None
        number = int(version)
        return (name, number, None) if number >= 1 else (None, None, None)
    if not has_name and not has_version:
        return None, None, None
    if has_name:
        shown = "without a prompt version" if version is None else "with prompt version 0"
        return None, None, f"prompt name {name!r} {shown} (Langfuse needs both or neither)"
    shown = "without a prompt name" if name is None else "with an empty prompt name"
    return None, None, f"prompt version {version!r} {shown} (Langfuse needs both or neither)"


def _observation_metadata(attributes: Mapping[str, Any]) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    whole = attributes.get(_METADATA)
    if isinstance(whole, str):
        try:
            parsed = json.loads(whole)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            metadata.update(parsed)
    elif isinstance(whole, dict):
        metadata.update(whole)
    for key, value in attributes.items():
        if key.startswith(_METADATA_PREFIX):
            metadata[key[len(_METADATA_PREFIX) :]] = value
    return metadata


def _hex_to_b64(value: Any, what: str, size: int, *, optional: bool) -> str:
    if not isinstance(value, str):
        raise _BadRequest(f"{what} must be a hex string")
    if value == "" and optional:
        return ""
    try:
        raw = bytes.fromhex(value)
    except ValueError as exc:
        raise _BadRequest(f"{what} is not valid hex: {value!r}") from exc
    if len(raw) != size:
        raise _BadRequest(f"{what} must be {size} bytes, got {len(raw)}")
    return base64.b64encode(raw).decode()


def _json_ids_to_b64(payload: Any) -> Any:
    """OTLP/JSON carries ids in hex; protobuf's JSON mapping expects base64. Convert in place."""
    if not isinstance(payload, dict):
        raise _BadRequest("body must be a JSON object")
    for resource_spans in payload.get("resourceSpans") or payload.get("resource_spans") or []:
        if not isinstance(resource_spans, dict):
            raise _BadRequest("resourceSpans entries must be objects")
        for scope_spans in resource_spans.get("scopeSpans") or resource_spans.get("scope_spans") or []:
            if not isinstance(scope_spans, dict):
                raise _BadRequest("scopeSpans entries must be objects")
            for span in scope_spans.get("spans") or []:
                if not isinstance(span, dict):
                    raise _BadRequest("spans entries must be objects")
                _convert_span_ids(span)
    return payload


def _convert_span_ids(span: dict[str, Any]) -> None:
    for camel, snake, size, optional in (
        ("traceId", "trace_id", 16, False),
        ("spanId", "span_id", 8, False),
        ("parentSpanId", "parent_span_id", 8, True),
    ):
        key = camel if camel in span else snake
        if key in span:
            span[key] = _hex_to_b64(span[key], camel, size, optional=optional)
        elif not optional:
            raise _BadRequest(f"span without {camel}")
    for link in span.get("links") or []:
        if not isinstance(link, dict):
            raise _BadRequest("links entries must be objects")
        for camel, snake, size in (("traceId", "trace_id", 16), ("spanId", "span_id", 8)):
            key = camel if camel in link else snake
            if key in link:
                link[key] = _hex_to_b64(link[key], f"link {camel}", size, optional=False)


def _validate_ids(request: Any) -> None:
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                if len(span.trace_id) != 16 or span.trace_id == bytes(16):
                    raise _BadRequest(f"invalid traceId {span.trace_id.hex()!r}")
                if len(span.span_id) != 8 or span.span_id == bytes(8):
                    raise _BadRequest(f"invalid spanId {span.span_id.hex()!r}")
                if span.parent_span_id and len(span.parent_span_id) != 8:
                    raise _BadRequest(f"invalid parentSpanId {span.parent_span_id.hex()!r}")


@dataclass
class _Fault:
    status: int
    remaining: int | None  # None: until reset
    retry_after: float | None = None

    def take(self) -> bool:
        if self.remaining is None:
            return True
        if self.remaining <= 0:
            return False
        self.remaining -= 1
        return True


# --------------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------------
class LangfuseServer(LoopbackServer):
    """A loopback Langfuse: prompts API + OTLP trace ingest, with Langfuse's shapes and rules.

    Every endpoint requires ``Authorization: Basic base64(public_key:secret_key)``.
    """

    def __init__(
        self,
        public_key: str = "pk-lf-test",
        secret_key: str = "sk-lf-test",
        *,
        project_id: str = "project-test",
    ) -> None:
        super().__init__()
        self._public_key = public_key
        self._secret_key = secret_key
        self._project_id = project_id
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._prompts: dict[str, list[dict[str, Any]]] = {}
        self._prompt_requests: list[PromptRequest] = []
        self._ingest_requests: list[IngestRequest] = []
        self._prompt_fault: _Fault | None = None
        self._prompt_delay = 0.0
        self._ingest_fault: _Fault | None = None

    # -- properties --------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` — what ``Langfuse(base_url=...)`` takes."""
        return self.origin

    @property
    def otlp_traces_endpoint(self) -> str:
        return self.origin + OTEL_TRACES_PATH

    @property
    def public_key(self) -> str:
        return self._public_key

    @property
    def secret_key(self) -> str:
        return self._secret_key

    @property
    def auth_header(self) -> str:
        """The ``Authorization`` header value this server accepts."""
        token = base64.b64encode(f"{self._public_key}:{self._secret_key}".encode()).decode()
        return f"Basic {token}"

    @property
    def prompt_requests(self) -> list[PromptRequest]:
        """Every prompts GET the server received, in order (a copy)."""
        with self._lock:
            return list(self._prompt_requests)

    @property
    def ingest_requests(self) -> list[IngestRequest]:
        """Every OTLP ingest POST the server received, in order (a copy)."""
        with self._lock:
            return list(self._ingest_requests)

    def clear_requests(self) -> None:
        """Forget recorded prompt and ingest requests (and so every observation)."""
        with self._lock:
            self._prompt_requests.clear()
            self._ingest_requests.clear()

    # -- prompt helpers (no HTTP) ------------------------------------------------------------
    def create_prompt(
        self,
        name: str,
        prompt: str | Sequence[Mapping[str, Any]],
        *,
        type: str = "chat",
        labels: Iterable[str] = (),
        config: Mapping[str, Any] | None = None,
        tags: Iterable[str] | None = None,
        commit_message: str | None = None,
    ) -> dict[str, Any]:
        """Create a new version of ``name`` exactly as ``POST /api/public/v2/prompts`` does."""
        if type not in ("chat", "text"):
            raise ValueError(f"type must be 'chat' or 'text', not {type!r}")
        if type == "chat" and isinstance(prompt, str):
            raise ValueError("a chat prompt is a list of messages; pass type='text' for a string")
        if type == "text" and not isinstance(prompt, str):
            raise ValueError("a text prompt is a string")
        content: Any = prompt if isinstance(prompt, str) else [dict(m) for m in prompt]
        with self._lock:
            created = self._create_locked(
                name=name,
                type=type,
                prompt=content,
                labels=list(labels),
                config=dict(config) if config is not None else {},
                tags=list(tags) if tags is not None else None,
                commit_message=commit_message,
            )
            return copy.deepcopy(created)

    def set_labels(self, name: str, version: int, labels: Iterable[str]) -> dict[str, Any]:
        """Move ``labels`` to ``version`` (off every other version), as the PATCH route does.

        Like Langfuse, the version keeps the labels it already had, and ``latest`` is reserved.
        """
        wanted = list(labels)
        if LATEST_LABEL in wanted:
            raise ValueError(_LATEST_RESERVED)
        with self._lock:
            updated = self._set_labels_locked(name, version, wanted)
            if updated is None:
                raise KeyError(f"Prompt not found: {name!r} version {version}")
            return copy.deepcopy(updated)

    def get_prompt(
        self, name: str, *, label: str | None = None, version: int | None = None
    ) -> dict[str, Any] | None:
        """The prompt version the GET route would answer with (None for a 404)."""
        with self._lock:
            found = self._find_locked(name, label=label, version=version)
            return copy.deepcopy(found) if found is not None else None

    # -- fault injection ---------------------------------------------------------------------
    def fail_prompts(self, status: int = 503, times: int | None = None) -> None:
        """Answer prompts GETs with ``status`` — ``times`` times, or until ``reset_faults()``."""
        with self._lock:
            self._prompt_fault = _Fault(status, times)

    def delay_prompts(self, seconds: float) -> None:
        """Sleep ``seconds`` before answering each prompts GET (client timeouts)."""
        with self._lock:
            self._prompt_delay = max(0.0, float(seconds))

    def fail_ingest(self, status: int, times: int | None = None, retry_after: float | None = None) -> None:
        """Answer OTLP ingest POSTs with ``status`` (and ``Retry-After`` when given)."""
        with self._lock:
            self._ingest_fault = _Fault(status, times, retry_after)

    def reset_faults(self) -> None:
        with self._lock:
            self._prompt_fault = None
            self._prompt_delay = 0.0
            self._ingest_fault = None

    # -- what Langfuse would show ------------------------------------------------------------
    def observations(self) -> list[Observation]:
        """Observations from every accepted ingest request (by span id, last write wins)."""
        return [o for o in self._mapped().values() if isinstance(o, Observation)]

    def rejected(self) -> list[RejectedObservation]:
        """Spans that reached the server but that Langfuse's ingestion would drop."""
        return [o for o in self._mapped().values() if isinstance(o, RejectedObservation)]

    def generations(self) -> list[Observation]:
        return [o for o in self.observations() if o.type == "GENERATION"]

    def wait_for_observations(self, n: int, timeout: float = 5.0) -> list[Observation]:
        """Block until at least ``n`` observations exist; raise ``TimeoutError`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.observations()
            if len(found) >= n:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(
                    f"expected {n} observations within {timeout}s, got {len(found)} "
                    f"(+{len(self.rejected())} rejected)"
                )
            with self._changed:
                self._changed.wait(min(remaining, 0.05))

    def _mapped(self) -> dict[tuple[str, str], Observation | RejectedObservation]:
        with self._lock:
            accepted = [r.request for r in self._ingest_requests if r.status == 200 and r.request]
        out: dict[tuple[str, str], Observation | RejectedObservation] = {}
        for request in accepted:
            for item in _map_request(request):
                obs = item.observation if isinstance(item, RejectedObservation) else item
                key = (obs.trace_id, obs.span_id)
                out.pop(key, None)
                out[key] = item
        return out

    # -- HTTP --------------------------------------------------------------------------------
    def _authorized(self, request: Request) -> bool:
        header = request.header("authorization") or ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(token.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        public_key, sep, secret_key = decoded.partition(":")
        return bool(sep) and public_key == self._public_key and secret_key == self._secret_key

    def _handle(self, request: Request) -> Response | None:
        url = urlsplit(request.raw_path)
        path = url.path
        query = parse_qs(url.query, keep_blank_values=True)
        if not self._authorized(request):
            response = _error(
                401,
                "Invalid credentials. Confirm that you've configured the correct host.",
                "UnauthorizedError",
            )
            if path == OTEL_TRACES_PATH and request.method == "POST":
                self._record_ingest(request, 401, b"", None, "unauthorized")
            return response
        if path == PROJECTS_PATH and request.method == "GET":
            # What Langfuse's SDK auth_check() and the relay's --check-upstream call: the keys' project.
            return Response.json(200, {"data": [{"id": self._project_id, "name": self._project_id,
                                                 "metadata": {}}]})
        if path == OTEL_TRACES_PATH:
            if request.method != "POST":
                return _error(405, f"Method {request.method} not allowed", "MethodNotAllowedError")
            return self._ingest(request)
        if path.rstrip("/") == PROMPTS_PATH:
            if request.method == "POST":
                return self._post_prompt(request)
            if request.method == "GET":
                return self._list_prompts(query)
            return _error(405, f"Method {request.method} not allowed", "MethodNotAllowedError")
        match = _PATCH_RE.match(path)
        if match and request.method == "PATCH":
            return self._patch_prompt(unquote(match["name"]), match["version"], request)
        if path.startswith(PROMPTS_PATH + "/") and request.method == "GET":
            return self._get_prompt(unquote(path[len(PROMPTS_PATH) + 1 :]), query)
        return _error(404, f"Route not found: {request.method} {path}", "NotFoundError")

    # prompts ---------------------------------------------------------------------------------
    def _get_prompt(self, name: str, query: dict[str, list[str]]) -> Response:
        label = query["label"][-1] if "label" in query else None
        raw_version = query["version"][-1] if "version" in query else None
        record = PromptRequest(name=name, label=label, version=raw_version)
        with self._lock:
            self._prompt_requests.append(record)
            delay = self._prompt_delay
        if delay > 0:
            self._sleep(delay)
        response = self._answer_prompt(name, label, raw_version)
        with self._lock:
            record.status = response.status
        return response

    def _answer_prompt(self, name: str, label: str | None, raw_version: str | None) -> Response:
        with self._lock:
            fault = self._prompt_fault
            if fault is not None and fault.take():
                return _error(fault.status, "Injected failure", "ServiceUnavailableError")
            if label is not None and raw_version is not None:
                return Response.json(
                    400,
                    {
                        "message": "Invalid request data",
                        "error": [{"message": "Cannot specify both version and label"}],
                    },
                )
            version: int | None = None
            if raw_version is not None:
                try:
                    version = int(raw_version)
                except ValueError:
                    return Response.json(
                        400,
                        {
                            "message": "Invalid request data",
                            "error": [{"message": f"version must be an integer: {raw_version!r}"}],
                        },
                    )
            found = self._find_locked(name, label=label, version=version)
            if found is None:
                message = f"Prompt not found: '{name}'"
                if version is not None:
                    message += f" with version {version}"
                else:
                    message += f" with label '{label or PRODUCTION_LABEL}'"
                return _error(404, message, "LangfuseNotFoundError")
            return Response.json(200, found)

    def _list_prompts(self, query: dict[str, list[str]]) -> Response:
        name_filter = query.get("name", [None])[-1]
        label_filter = query.get("label", [None])[-1]
        data = []
        with self._lock:
            for name, versions in sorted(self._prompts.items()):
                if name_filter is not None and name != name_filter:
                    continue
                chosen = [v for v in versions if label_filter is None or label_filter in v["labels"]]
                if not chosen:
                    continue
                data.append(
                    {
                        "name": name,
                        "type": versions[-1]["type"],
                        "versions": [v["version"] for v in chosen],
                        "labels": sorted({lb for v in chosen for lb in v["labels"]}),
                        "tags": versions[-1]["tags"],
                        "lastUpdatedAt": max(v["updatedAt"] for v in chosen),
                        "lastConfig": chosen[-1]["config"],
                    }
                )
        meta = {"page": 1, "limit": len(data) or 50, "totalItems": len(data), "totalPages": 1}
        return Response.json(200, {"data": data, "meta": meta})

    def _post_prompt(self, request: Request) -> Response:
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            return _error(400, "Invalid JSON body", "InvalidRequestError")
        problem = _validate_create(body)
        if problem:
            return Response.json(400, {"message": "Invalid request data", "error": [{"message": problem}]})
        with self._lock:
            existing = self._prompts.get(body["name"])
            prompt_type = body.get("type") or ("chat" if isinstance(body["prompt"], list) else "text")
            if existing and existing[-1]["type"] != prompt_type:
                return _error(
                    400,
                    "Previous versions have different prompt type. "
                    "Create a new prompt with a different name.",
                    "InvalidRequestError",
                )
            created = self._create_locked(
                name=body["name"],
                type=prompt_type,
                prompt=body["prompt"],
                labels=list(body.get("labels") or []),
                config=body.get("config") if body.get("config") is not None else {},
                tags=body.get("tags"),
                commit_message=body.get("commitMessage"),
            )
            return Response.json(201, created)

    def _patch_prompt(self, name: str, raw_version: str, request: Request) -> Response:
        try:
            version = int(raw_version)
        except ValueError:
            return _error(400, f"Invalid version: {raw_version!r}", "InvalidRequestError")
        try:
            body = json.loads(request.body or b"null")
        except ValueError:
            return _error(400, "Invalid JSON body", "InvalidRequestError")
        new_labels = body.get("newLabels") if isinstance(body, dict) else None
        if not isinstance(new_labels, list) or not all(isinstance(x, str) for x in new_labels):
            return Response.json(
                400,
                {"message": "Invalid request data", "error": [{"message": "newLabels: string[]"}]},
            )
        if LATEST_LABEL in new_labels:  # Langfuse's UpdatePromptBodySchema refines this away
            return Response.json(400, {"message": "Invalid request data", "error": [
                {"code": "custom", "path": ["newLabels"], "message": _LATEST_RESERVED}]})
        with self._lock:
            updated = self._set_labels_locked(name, version, new_labels)
            if updated is None:
                return Response.json(404, {"message": f"Prompt not found: {name}"})
            return Response.json(200, updated)

    def _find_locked(self, name: str, *, label: str | None, version: int | None) -> dict[str, Any] | None:
        versions = self._prompts.get(name, [])
        if version is not None:
            return next((v for v in versions if v["version"] == version), None)
        wanted = label if label is not None else PRODUCTION_LABEL
        return next((v for v in reversed(versions) if wanted in v["labels"]), None)

    def _create_locked(
        self,
        *,
        name: str,
        type: str,
        prompt: Any,
        labels: list[str],
        config: Any,
        tags: list[str] | None,
        commit_message: str | None,
    ) -> dict[str, Any]:
        versions = self._prompts.setdefault(name, [])
        if versions and versions[-1]["type"] != type:
            raise ValueError(
                f"prompt {name!r} is a {versions[-1]['type']} prompt; cannot add a {type} version"
            )
        final_labels = list(dict.fromkeys([*labels, LATEST_LABEL]))
        final_tags = list(
            dict.fromkeys(tags if tags is not None else (versions[-1]["tags"] if versions else []))
        )
        now = _now_iso()
        for previous in versions:
            kept = [lb for lb in previous["labels"] if lb not in final_labels]
            if kept != previous["labels"] or previous["tags"] != final_tags:
                previous["labels"] = kept
                previous["isActive"] = PRODUCTION_LABEL in kept
                previous["tags"] = list(final_tags)
                previous["updatedAt"] = now
        record: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "createdAt": now,
            "updatedAt": now,
            "projectId": self._project_id,
            "createdBy": "API",
            "prompt": copy.deepcopy(prompt),
            "name": name,
            "version": (versions[-1]["version"] + 1) if versions else 1,
            "type": type,
            "isActive": PRODUCTION_LABEL in final_labels,
            "config": copy.deepcopy(config),
            "tags": final_tags,
            "labels": final_labels,
            "commitMessage": commit_message,
            "resolutionGraph": None,
        }
        versions.append(record)
        return record

    def _set_labels_locked(self, name: str, version: int, labels: list[str]) -> dict[str, Any] | None:
        versions = self._prompts.get(name, [])
        target = next((v for v in versions if v["version"] == version), None)
        if target is None:
            return None
        new_labels = list(dict.fromkeys(labels))
        now = _now_iso()
        for other in versions:
            if other is target:
                continue
            kept = [lb for lb in other["labels"] if lb not in new_labels]
            if kept != other["labels"]:
                other["labels"] = kept
                other["isActive"] = PRODUCTION_LABEL in kept
                other["updatedAt"] = now
        target["labels"] = list(dict.fromkeys([*new_labels, *target["labels"]]))
        target["isActive"] = PRODUCTION_LABEL in target["labels"]
        target["updatedAt"] = now
        return target

    # ingest ----------------------------------------------------------------------------------
    def _record_ingest(
        self,
        request: Request,
        status: int,
        body: bytes,
        decoded: Any,
        error: str | None,
    ) -> None:
        record = IngestRequest(
            headers=dict(request.headers),
            content_type=request.header("content-type") or "",
            content_encoding=request.header("content-encoding"),
            status=status,
            body=body,
            request=decoded,
            error=error,
        )
        with self._lock:
            self._ingest_requests.append(record)
            self._changed.notify_all()

    def _ingest(self, request: Request) -> Response:
        body = request.body
        content_type = (request.header("content-type") or "").lower()
        is_proto = "application/x-protobuf" in content_type
        is_json = "application/json" in content_type

        def fail(message: str) -> Response:
            self._record_ingest(request, 400, body, None, message)
            return Response.json(400, {"error": message})

        if "gzip" in (request.header("content-encoding") or "").lower():
            try:
                body = gzip.decompress(body)
            except (OSError, EOFError):
                return fail("Failed to decompress request body")
        if not is_proto and not is_json:
            return fail("Invalid content type")
        try:
            decoded = _decode_traces(body, is_proto)
        except _BadRequest as exc:
            return fail(f"Failed to parse OTel {'Protobuf' if is_proto else 'JSON'} Trace: {exc}")
        ingestion_version = request.header("x-langfuse-ingestion-version")
        if ingestion_version is None:
            ingestion_version = request.header("x_langfuse_ingestion_version")
        if ingestion_version is not None:
            match = re.match(r"^\s*([+-]?\d+)", ingestion_version)
            if match is None or int(match[1]) > MAX_INGESTION_VERSION:
                message = (
                    f'Unsupported x-langfuse-ingestion-version: "{ingestion_version}". '
                    f'Maximum supported: "{MAX_INGESTION_VERSION}".'
                )
                self._record_ingest(request, 400, body, decoded, message)
                return Response.json(400, {"error": message})
        with self._lock:
            fault = self._ingest_fault
            injected = fault if fault is not None and fault.take() else None
        if injected is not None:
            self._record_ingest(request, injected.status, body, decoded, "injected failure")
            headers = {}
            if injected.retry_after is not None:
                headers["Retry-After"] = f"{injected.retry_after:g}"
            return Response.json(
                injected.status, {"message": "Injected failure", "error": "InjectedError"}, headers
            )
        self._record_ingest(request, 200, body, decoded, None)
        if is_proto:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceResponse,
            )

            return Response(200, ExportTraceServiceResponse().SerializeToString(), "application/x-protobuf")
        return Response.json(200, {})


def _validate_create(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "body must be an object"
    if not isinstance(body.get("name"), str) or not body["name"]:
        return "name: required string"
    prompt_type = body.get("type")
    prompt = body.get("prompt")
    if prompt_type not in (None, "chat", "text"):
        return "type: 'chat' | 'text'"
    if prompt_type == "text" and not isinstance(prompt, str):
        return "prompt: string for a text prompt"
    if prompt_type == "chat" or (prompt_type is None and not isinstance(prompt, str)):
        if not isinstance(prompt, list):
            return "prompt: list of messages for a chat prompt"
        for message in prompt:
            if not isinstance(message, dict):
                return "prompt: each message is an object"
            if message.get("type") == "placeholder":
                if not isinstance(message.get("name"), str):
                    return "prompt: a placeholder needs a name"
            elif not isinstance(message.get("role"), str) or not isinstance(message.get("content"), str):
                return "prompt: a message needs role and content strings"
    labels = body.get("labels")
    if labels is not None and (not isinstance(labels, list) or not all(isinstance(x, str) for x in labels)):
        return "labels: string[]"
    tags = body.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(x, str) for x in tags)):
        return "tags: string[]"
    commit = body.get("commitMessage")
    if commit is not None and not isinstance(commit, str):
        return "commitMessage: string"
    return None


def _decode_traces(body: bytes, is_proto: bool) -> Any:
    """Decode an OTLP trace export body (imports protobuf lazily: only the ingest path needs it)."""
    from google.protobuf import json_format
    from google.protobuf.message import DecodeError
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    if is_proto:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise _BadRequest(str(exc)) from exc
    else:
        try:
            payload = json.loads(body or b"{}")
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadRequest(f"invalid JSON: {exc}") from exc
        payload = _json_ids_to_b64(payload)
        try:
            json_format.ParseDict(payload, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise _BadRequest(str(exc)) from exc
    _validate_ids(request)
    return request


def _map_request(request: Any) -> list[Observation | RejectedObservation]:
    out: list[Observation | RejectedObservation] = []
    thrown: str | None = None
    for resource_spans in request.resource_spans:
        resource_attributes = _attributes(resource_spans.resource.attributes)
        service_name = resource_attributes.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            scope_name = scope_spans.scope.name or None
            scope_version = scope_spans.scope.version or None
            for span in scope_spans.spans:
                item, error = _map_span(
                    span,
                    resource_attributes,
                    service_name if isinstance(service_name, str) else None,
                    scope_name,
                    scope_version,
                )
                out.append(item)
                if error is not None and thrown is None:
                    thrown = f"span {span.name!r}: {error}"
    if thrown is not None:
        # Langfuse's type mapper throws, and processToIngestionEvents returns nothing for the
        # whole request: every span in it is lost, not just the one that made it throw.
        reason = f"Langfuse's observation type mapper throws on {thrown}: the whole export request is lost"
        return [RejectedObservation(o if isinstance(o, Observation) else o.observation, reason) for o in out]
    return out


def _map_span(
    span: Any,
    resource_attributes: dict[str, Any],
    service_name: str | None,
    scope_name: str | None,
    scope_version: str | None,
) -> tuple[Observation | RejectedObservation, str | None]:
    raw = {kv.key: kv.value for kv in span.attributes}  # AnyValues, as Langfuse reads them (last wins)
    attributes = {k: any_value_to_python(v) for k, v in raw.items()}
    language = resource_attributes.get("telemetry.sdk.language")
    typing = detect.classify(
        raw,
        scope_name=scope_name or "",
        scope_version=scope_version or "",
        span_name=span.name,
        sdk_language=language if isinstance(language, str) else "",
    )
    linked_name: str | None = None
    linked_version: int | None = None
    reason: str | None = None
    if typing.type == "GENERATION":  # only generations link a prompt (langfuse#14962)
        linked_name, linked_version, reason = _prompt_link(raw)
    observation = Observation(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex() or None,
        name=span.name,
        type=typing.type,
        prompt_name=linked_name,
        prompt_version=linked_version,
        metadata=_observation_metadata(attributes),
        attributes=attributes,
        service_name=service_name,
        resource_attributes=resource_attributes,
        scope_name=scope_name,
        start_time_unix_nano=int(span.start_time_unix_nano),
        end_time_unix_nano=int(span.end_time_unix_nano),
        input=detect.langfuse_input(attributes, scope_name=scope_name or "",
                                    event_names=tuple(e.name for e in span.events)),
    )
    if reason is not None:
        return RejectedObservation(observation=observation, reason=reason), typing.error
    return observation, typing.error


def reset_langfuse_clients() -> None:
    """Forget every ``langfuse.Langfuse`` client state in this process.

    The real client keeps one resource manager per *public key*, process-wide: a second
    ``Langfuse(public_key=same, base_url=other)`` silently reuses the first one's ``base_url``
    and prompt cache. Tests that start a fresh ``LangfuseServer`` with the same keys should call
    this between tests (or give each server its own ``public_key``).
    """
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager
    except ImportError:  # another langfuse layout: nothing we know how to reset
        return
    LangfuseResourceManager.reset()
