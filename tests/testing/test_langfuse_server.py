"""LangfuseServer: the prompts API through the real ``langfuse`` client and httpx, the OTLP ingest
endpoint through the real OTel exporter and OTLP/JSON, and Langfuse's linking rules."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from langfuse import Langfuse
from langfuse.api import NotFoundError
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from promptstamp.testing import LangfuseServer, Observation, reset_langfuse_clients

CHAT = [
    {"role": "system", "content": "You answer order questions for {{shop}}."},
    {"type": "placeholder", "name": "history"},
    {"role": "user", "content": "{{question}}"},
]
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"


@pytest.fixture
def server() -> Iterator[LangfuseServer]:
    reset_langfuse_clients()  # the real client keeps one state per public key, process-wide
    with LangfuseServer() as s:
        yield s
    reset_langfuse_clients()


def client(server: LangfuseServer, **kwargs: Any) -> Langfuse:
    return Langfuse(
        public_key=server.public_key,
        secret_key=server.secret_key,
        base_url=server.base_url,
        tracing_enabled=False,
        **kwargs,
    )


def http(server: LangfuseServer) -> httpx.Client:
    return httpx.Client(base_url=server.base_url, auth=(server.public_key, server.secret_key), timeout=5.0)


# --------------------------------------------------------------------------------------------
# lifecycle
# --------------------------------------------------------------------------------------------
def test_lifecycle_start_stop_are_idempotent_and_the_port_is_ephemeral() -> None:
    server = LangfuseServer(public_key="pk-lf-a", secret_key="sk-lf-b")
    assert server.start() is server
    server.start()
    try:
        assert server.base_url.startswith("http://127.0.0.1:")
        assert server.port > 0
        assert (server.public_key, server.secret_key) == ("pk-lf-a", "sk-lf-b")
        base_url = server.base_url
    finally:
        server.stop()
        server.stop()
    assert not server.running
    with pytest.raises(httpx.TransportError):
        httpx.get(base_url + "/api/public/v2/prompts/x", timeout=1.0)


def test_two_servers_get_different_ports() -> None:
    with LangfuseServer() as a, LangfuseServer() as b:
        assert a.port != b.port


# --------------------------------------------------------------------------------------------
# prompts API through the real langfuse client
# --------------------------------------------------------------------------------------------
def test_real_client_gets_chat_prompt_by_default_label_label_and_version(
    server: LangfuseServer,
) -> None:
    server.create_prompt("order-status", CHAT, labels=["production"], config={"model": "gpt-4o"})
    server.create_prompt("order-status", CHAT[:1], labels=["staging"], config={"model": "o3"})
    lf = client(server)

    default = lf.get_prompt("order-status", type="chat")
    assert default.version == 1
    assert default.config == {"model": "gpt-4o"}
    assert default.labels == ["production"]
    assert default.compile(shop="ACME", question="Where?", history=[]) == [
        {"role": "system", "content": "You answer order questions for ACME."},
        {"role": "user", "content": "Where?"},
    ]

    staging = lf.get_prompt("order-status", label="staging", type="chat")
    assert staging.version == 2
    assert set(staging.labels) == {"staging", "latest"}

    pinned = lf.get_prompt("order-status", version=1, type="chat")
    assert pinned.version == 1
    assert [(r.label, r.version) for r in server.prompt_requests] == [
        (None, None),
        ("staging", None),
        (None, "1"),
    ]


def test_real_client_gets_text_prompt_and_folder_names(server: LangfuseServer) -> None:
    server.create_prompt("team/a b/greet", "Hello {{name}}", type="text", labels=["production"])
    prompt = client(server).get_prompt("team/a b/greet")
    assert prompt.version == 1
    assert prompt.compile(name="Ada") == "Hello Ada"
    assert server.prompt_requests[0].name == "team/a b/greet"


def test_real_client_raises_not_found_for_missing_prompt_label_and_version(
    server: LangfuseServer,
) -> None:
    server.create_prompt("p", CHAT, labels=["staging"])
    lf = client(server)
    with pytest.raises(NotFoundError):
        lf.get_prompt("missing", type="chat", max_retries=0)
    with pytest.raises(NotFoundError):
        lf.get_prompt("p", type="chat", max_retries=0)  # no production label
    with pytest.raises(NotFoundError):
        lf.get_prompt("p", version=7, type="chat", max_retries=0)
    assert [r.status for r in server.prompt_requests] == [404, 404, 404]


def test_real_client_cache_means_one_request(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    lf = client(server)
    lf.get_prompt("p", type="chat")
    lf.get_prompt("p", type="chat")
    assert len(server.prompt_requests) == 1


def test_label_moves_are_seen_by_the_real_client(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    lf = client(server)
    assert lf.get_prompt("p", type="chat", cache_ttl_seconds=0).version == 1
    server.create_prompt("p", CHAT, labels=["production"])
    assert lf.get_prompt("p", type="chat", cache_ttl_seconds=0).version == 2
    server.set_labels("p", 1, ["production"])
    assert lf.get_prompt("p", type="chat", cache_ttl_seconds=0).version == 1
    assert server.get_prompt("p", version=2)["labels"] == ["latest"]  # type: ignore[index]


def test_real_client_create_and_update_prompt(server: LangfuseServer) -> None:
    lf = client(server)
    created = lf.create_prompt(name="p", prompt="v1 {{x}}", labels=["production"], type="text")
    assert (created.version, sorted(created.labels)) == (1, ["latest", "production"])
    lf.create_prompt(name="p", prompt="v2 {{x}}", labels=[], type="text")
    updated = lf.update_prompt(name="p", version=2, new_labels=["production"])
    assert updated.version == 2
    assert lf.get_prompt("p", cache_ttl_seconds=0).compile(x="!") == "v2 !"


# --------------------------------------------------------------------------------------------
# prompts API over raw HTTP
# --------------------------------------------------------------------------------------------
def test_get_response_has_langfuse_fields(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"], config={"temperature": 0})
    with http(server) as h:
        body = h.get("/api/public/v2/prompts/p").json()
    assert set(body) == {
        "id", "createdAt", "updatedAt", "projectId", "createdBy", "prompt", "name", "version",
        "type", "isActive", "config", "tags", "labels", "commitMessage", "resolutionGraph",
    }  # fmt: skip
    assert body["prompt"] == CHAT
    assert body["type"] == "chat"
    assert body["version"] == 1
    assert body["config"] == {"temperature": 0}


def test_get_with_label_and_version_is_400_and_missing_is_404(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    with http(server) as h:
        assert h.get("/api/public/v2/prompts/p", params={"label": "x", "version": 1}).status_code == 400
        assert h.get("/api/public/v2/prompts/p", params={"version": "one"}).status_code == 400
        missing = h.get("/api/public/v2/prompts/p", params={"label": "staging"})
    assert missing.status_code == 404
    assert missing.json() == {
        "message": "Prompt not found: 'p' with label 'staging'",
        "error": "LangfuseNotFoundError",
    }


def test_post_creates_versions_with_langfuse_label_semantics(server: LangfuseServer) -> None:
    with http(server) as h:
        first = h.post(
            "/api/public/v2/prompts",
            json={"name": "p", "type": "chat", "prompt": CHAT, "labels": ["production"],
                  "tags": ["t1"], "commitMessage": "first"},
        )  # fmt: skip
        second = h.post(
            "/api/public/v2/prompts",
            json={"name": "p", "type": "chat", "prompt": CHAT, "labels": ["production", "beta"]},
        )
        third = h.post("/api/public/v2/prompts", json={"name": "p", "type": "chat", "prompt": CHAT})
        v1 = h.get("/api/public/v2/prompts/p", params={"version": 1}).json()
        v2 = h.get("/api/public/v2/prompts/p", params={"version": 2}).json()
        wrong_type = h.post("/api/public/v2/prompts", json={"name": "p", "type": "text", "prompt": "x"})
        invalid = h.post("/api/public/v2/prompts", json={"name": "q", "type": "chat", "prompt": "x"})
    assert first.status_code == second.status_code == third.status_code == 201
    assert first.json()["commitMessage"] == "first"
    assert [r.json()["version"] for r in (first, second, third)] == [1, 2, 3]
    assert third.json()["labels"] == ["latest"]
    assert third.json()["tags"] == ["t1"]  # tags carry over when not given
    assert v1["labels"] == []  # production moved to v2, latest to v3
    assert sorted(v2["labels"]) == ["beta", "production"]
    assert wrong_type.status_code == 400
    assert invalid.status_code == 400


def test_patch_moves_labels_and_keeps_existing_ones(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    server.create_prompt("p", CHAT, labels=["staging"])
    with http(server) as h:
        moved = h.patch("/api/public/v2/prompts/p/versions/1", json={"newLabels": ["staging"]})
        missing = h.patch("/api/public/v2/prompts/p/versions/9", json={"newLabels": ["x"]})
        bad = h.patch("/api/public/v2/prompts/p/versions/1", json={"labels": ["x"]})
    assert moved.status_code == 200
    assert sorted(moved.json()["labels"]) == ["production", "staging"]
    assert server.get_prompt("p", version=2)["labels"] == ["latest"]  # type: ignore[index]
    assert missing.status_code == 404
    assert bad.status_code == 400


def test_every_endpoint_requires_basic_auth(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    url = server.base_url
    wrong = ("pk-lf-test", "sk-lf-wrong")
    assert httpx.get(f"{url}/api/public/v2/prompts/p").status_code == 401
    assert httpx.get(f"{url}/api/public/v2/prompts/p", auth=wrong).status_code == 401
    assert httpx.post(f"{url}/api/public/v2/prompts", json={}, auth=wrong).status_code == 401
    assert httpx.patch(f"{url}/api/public/v2/prompts/p/versions/1", json={}).status_code == 401
    response = httpx.post(
        f"{url}/api/public/otel/v1/traces", content=b"", auth=wrong,
        headers={"Content-Type": "application/x-protobuf"},
    )  # fmt: skip
    assert response.status_code == 401
    assert "message" in response.json()
    assert server.observations() == []


def test_create_prompt_helper_validates_type() -> None:
    server = LangfuseServer()  # helpers work without starting the server
    with pytest.raises(ValueError):
        server.create_prompt("p", "a string", type="chat")
    with pytest.raises(ValueError):
        server.create_prompt("p", CHAT, type="text")
    with pytest.raises(KeyError):
        server.set_labels("p", 1, ["production"])


# --------------------------------------------------------------------------------------------
# prompts fault injection
# --------------------------------------------------------------------------------------------
def test_fail_prompts_times_and_until_reset(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    with http(server) as h:
        server.fail_prompts(503, times=1)
        assert h.get("/api/public/v2/prompts/p").status_code == 503
        assert h.get("/api/public/v2/prompts/p").status_code == 200
        server.fail_prompts(500)
        assert [h.get("/api/public/v2/prompts/p").status_code for _ in range(3)] == [500] * 3
        server.reset_faults()
        assert h.get("/api/public/v2/prompts/p").status_code == 200
    assert [r.status for r in server.prompt_requests] == [503, 200, 500, 500, 500, 200]


def test_failed_fetch_through_real_client(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    # 403: the client's generated API layer also retries 5xx/429/408/409 on its own (about
    # 3 s of backoff under get_prompt's max_retries), which this test does not need to pay.
    server.fail_prompts(403)
    with pytest.raises(Exception) as raised:
        client(server).get_prompt("p", type="chat", max_retries=0)
    assert not isinstance(raised.value, NotFoundError)
    assert [r.status for r in server.prompt_requests] == [403]
    server.reset_faults()
    assert client(server).get_prompt("p", type="chat", max_retries=0).version == 1


def test_delay_prompts_makes_clients_time_out(server: LangfuseServer) -> None:
    server.create_prompt("p", CHAT, labels=["production"])
    server.delay_prompts(0.5)
    with http(server) as h, pytest.raises(httpx.ReadTimeout):
        h.get("/api/public/v2/prompts/p", timeout=0.1)
    server.reset_faults()
    with http(server) as h:
        assert h.get("/api/public/v2/prompts/p").status_code == 200


# --------------------------------------------------------------------------------------------
# OTLP ingest through the real exporter
# --------------------------------------------------------------------------------------------
def provider_for(server: LangfuseServer, *, gzip_body: bool = False, **headers: str) -> TracerProvider:
    exporter = OTLPSpanExporter(
        endpoint=server.base_url + "/api/public/otel/v1/traces",
        headers={"Authorization": server.auth_header, "x-langfuse-ingestion-version": "4", **headers},
        compression=Compression.Gzip if gzip_body else Compression.NoCompression,
    )
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


@pytest.mark.parametrize("gzip_body", [False, True])
def test_real_exporter_generation_is_linked_and_others_are_not(
    server: LangfuseServer, gzip_body: bool
) -> None:
    provider = provider_for(server, gzip_body=gzip_body)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("handle") as root:
        root.set_attribute("app.prompt.key", "order-status")
        with tracer.start_as_current_span("chat gpt-4o") as gen:
            gen.set_attribute("gen_ai.operation.name", "chat")
            gen.set_attribute("langfuse.observation.prompt.name", "order-status")
            gen.set_attribute("langfuse.observation.prompt.version", 3)
            gen.set_attribute("langfuse.observation.metadata.prompt_label", "production")
            gen.set_attribute("langfuse.observation.metadata.prompt_resolution", "trace")
    provider.shutdown()

    observations = {o.name: o for o in server.wait_for_observations(2)}
    generation, span = observations["chat gpt-4o"], observations["handle"]
    assert generation.type == "GENERATION"
    assert (generation.prompt_name, generation.prompt_version) == ("order-status", 3)
    assert generation.metadata == {"prompt_label": "production", "prompt_resolution": "trace"}
    assert generation.service_name == "checkout"
    assert generation.parent_span_id == span.span_id
    assert generation.trace_id == span.trace_id
    assert len(generation.trace_id) == 32
    assert span.type == "SPAN"
    assert span.prompt_name is None
    assert span.attributes == {"app.prompt.key": "order-status"}
    assert server.rejected() == []

    requests = server.ingest_requests
    assert len(requests) == 2
    assert all(r.status == 200 for r in requests)
    assert requests[0].content_type == "application/x-protobuf"
    assert requests[0].headers["x-langfuse-ingestion-version"] == "4"
    assert requests[0].content_encoding == ("gzip" if gzip_body else None)
    assert isinstance(requests[0].request, ExportTraceServiceRequest)
    assert requests[0].request.resource_spans[0].scope_spans[0].spans[0].name == "chat gpt-4o"


def test_real_exporter_string_version_is_rejected(server: LangfuseServer) -> None:
    provider = provider_for(server)
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("chat") as gen:
        gen.set_attribute("gen_ai.request.model", "gpt-4o")
        gen.set_attribute("langfuse.observation.prompt.name", "order-status")
        gen.set_attribute("langfuse.observation.prompt.version", "3")
    provider.shutdown()
    assert server.observations() == []
    [rejected] = server.rejected()
    assert rejected.observation.name == "chat"
    assert "not an integer" in rejected.reason


def test_real_exporter_bad_keys_fail_the_export(server: LangfuseServer) -> None:
    exporter = OTLPSpanExporter(
        endpoint=server.base_url + "/api/public/otel/v1/traces",
        headers={"Authorization": "Basic " + base64.b64encode(b"pk-lf-test:nope").decode()},
    )
    provider = TracerProvider()
    provider.get_tracer("app").start_span("x").end()
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    memory = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.get_tracer("app").start_span("y").end()
    assert exporter.export(memory.get_finished_spans()) == SpanExportResult.FAILURE
    assert [r.status for r in server.ingest_requests] == [401]
    assert server.observations() == []


def test_protobuf_request_gets_protobuf_response(server: LangfuseServer) -> None:
    body = ExportTraceServiceRequest().SerializeToString()
    with http(server) as h:
        response = h.post(
            "/api/public/otel/v1/traces",
            content=body,
            headers={"Content-Type": "application/x-protobuf"},
        )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    ExportTraceServiceResponse().ParseFromString(response.content)


# --------------------------------------------------------------------------------------------
# OTLP/JSON ingest and Langfuse's mapping rules
# --------------------------------------------------------------------------------------------
def attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"key": key, "value": {"boolValue": value}}
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    if isinstance(value, float):
        return {"key": key, "value": {"doubleValue": value}}
    return {"key": key, "value": {"stringValue": value}}


def otlp_json(*spans: dict[str, Any], service: str | None = "svc") -> dict[str, Any]:
    resource = {"attributes": [attr("service.name", service)]} if service else {}
    return {
        "resourceSpans": [
            {"resource": resource, "scopeSpans": [{"scope": {"name": "t"}, "spans": list(spans)}]}
        ]
    }


def json_span(
    name: str, attrs: dict[str, Any], span_id: str = "b7ad6b7169203331", **extra: Any
) -> dict[str, Any]:
    return {
        "traceId": TRACE_ID, "spanId": span_id, "name": name, "kind": 1,
        "startTimeUnixNano": "1700000000000000000", "endTimeUnixNano": "1700000000100000000",
        "attributes": [attr(k, v) for k, v in attrs.items()], **extra,
    }  # fmt: skip


def post_json(server: LangfuseServer, payload: Any, **headers: str) -> httpx.Response:
    with http(server) as h:
        return h.post("/api/public/otel/v1/traces", json=payload, headers=headers)


LINK = {"langfuse.observation.prompt.name": "p", "langfuse.observation.prompt.version": 2}


@pytest.mark.parametrize(
    ("attrs", "expected_type", "linked"),
    [
        ({"langfuse.observation.type": "generation"}, "GENERATION", True),
        ({"openinference.span.kind": "LLM"}, "GENERATION", True),
        ({"gen_ai.operation.name": "chat"}, "GENERATION", True),
        ({"gen_ai.operation.name": "text_completion"}, "GENERATION", True),
        ({"gen_ai.operation.name": "generate_content"}, "GENERATION", True),
        ({"gen_ai.request.model": "gpt-4o"}, "GENERATION", True),
        ({"gen_ai.response.model": "gpt-4o"}, "GENERATION", True),
        ({"llm.model_name": "gpt-4o"}, "GENERATION", True),
        ({"model": "gpt-4o"}, "GENERATION", True),
        ({"gen_ai.operation.name": "embeddings"}, "EMBEDDING", False),
        ({"langfuse.observation.type": "span", "gen_ai.operation.name": "chat"}, "SPAN", False),
        ({"langfuse.observation.type": "tool", "gen_ai.request.model": "m"}, "TOOL", False),
        ({"langfuse.observation.type": "agent"}, "AGENT", False),
        ({"openinference.span.kind": "CHAIN", "gen_ai.request.model": "m"}, "CHAIN", False),
        ({"llm.request.type": "chat"}, "SPAN", False),  # not one of Langfuse's rules
        ({"langfuse.observation.type": "GENERATION", "gen_ai.request.model": "m"}, "GENERATION", True),
        ({"langfuse.observation.type": "GENERATION"}, "SPAN", False),  # unknown: falls through
        ({"gen_ai.operation.name": "execute_tool", "gen_ai.request.model": "m"}, "TOOL", False),
        ({"gen_ai.tool.name": "lookup", "gen_ai.request.model": "m"}, "TOOL", False),
        ({"gen_ai.operation.name": "invoke_agent", "gen_ai.request.model": "m"}, "AGENT", False),
        ({"openinference.span.kind": "AGENT", "llm.model_name": "m"}, "AGENT", False),
        ({"openinference.span.kind": "RETRIEVER", "llm.model_name": "m"}, "RETRIEVER", False),
        ({"langfuse.observation.model.name": "m"}, "GENERATION", True),
        ({"genkit:metadata:subtype": "model"}, "GENERATION", True),
        ({"operation.name": "ai.streamText.doStream", "ai.model.id": "m"}, "GENERATION", True),
        ({"ai.operationId": "ai.toolCall"}, "TOOL", False),
        ({"flue.task.id": "t"}, "AGENT", False),
        ({}, "SPAN", False),
    ],
)
def test_observation_types_and_links(
    server: LangfuseServer, attrs: dict[str, Any], expected_type: str, linked: bool
) -> None:
    assert post_json(server, otlp_json(json_span("s", {**attrs, **LINK}))).status_code == 200
    [observation] = server.observations()
    assert observation.type == expected_type
    if linked:
        assert (observation.prompt_name, observation.prompt_version) == ("p", 2)
    else:
        assert (observation.prompt_name, observation.prompt_version) == (None, None)
    assert server.rejected() == []


PN, PV = "langfuse.observation.prompt.name", "langfuse.observation.prompt.version"
LEGACY_PN, LEGACY_PV = "langfuse.prompt.name", "langfuse.prompt.version"
AI_SDK = "ai.telemetry.metadata.langfusePrompt"


# What Langfuse's ingestion makes of a GENERATION's link (OtelIngestionProcessor's reads, the v3
# write path's CreateGenerationBody schema): ("linked", name, version), ("kept",) = arrives
# unlinked, ("dropped", reason) = the observation is lost.
@pytest.mark.parametrize(
    ("link_attrs", "outcome"),
    [
        ({PN: "p", PV: 3}, ("linked", "p", 3)),
        ({PN: "p", PV: 3.0}, ("linked", "p", 3)),  # a JavaScript number: 3.0 is the integer 3
        ({PN: "p", PV: 3.5}, ("dropped", "not an integer")),
        ({PN: "p", PV: "3"}, ("dropped", "not an integer")),
        ({PN: "p", PV: True}, ("dropped", "not an integer")),
        ({PN: "p"}, ("dropped", "without a prompt version")),
        ({PN: "p", PV: 0}, ("dropped", "with prompt version 0")),
        ({PN: "p", PV: -2}, ("kept",)),  # passes the schema; no prompt has a version below 1
        ({PV: 3}, ("dropped", "without a prompt name")),
        ({PN: "", PV: 3}, ("dropped", "with an empty prompt name")),
        ({PN: ""}, ("kept",)),
        ({PN: "", PV: 0}, ("kept",)),
        ({PN: 5, PV: 3}, ("dropped", "is not a string")),
        ({LEGACY_PN: "p", LEGACY_PV: 2}, ("linked", "p", 2)),
        ({PN: "p", LEGACY_PV: 2}, ("linked", "p", 2)),  # name and version are read one by one
        ({PN: "p", PV: 5, LEGACY_PN: "q", LEGACY_PV: 2}, ("linked", "p", 5)),
        ({AI_SDK: '{"name": "p", "version": 4}'}, ("linked", "p", 4)),
        ({AI_SDK: '{"name": "p", "version": "4"}'}, ("dropped", "not an integer")),
        ({AI_SDK: "not json"}, ("kept",)),
        ({AI_SDK: '["p", 4]'}, ("kept",)),
        ({PN: "p", AI_SDK: '{"name": "q", "version": 2}'}, ("linked", "p", 2)),
    ],
)
def test_prompt_links_are_judged_as_langfuse_judges_them(
    server: LangfuseServer, link_attrs: dict[str, Any], outcome: tuple[Any, ...]
) -> None:
    attrs = {"gen_ai.operation.name": "chat", **link_attrs}
    good = json_span("good", {"gen_ai.operation.name": "chat"}, span_id="00000000000000aa")
    assert post_json(server, otlp_json(json_span("gen", attrs), good)).status_code == 200
    observations = {o.name: o for o in server.observations()}
    assert observations["good"].prompt_name is None
    if outcome[0] == "dropped":
        assert set(observations) == {"good"}
        [rejected] = server.rejected()
        assert rejected.observation.name == "gen"
        assert outcome[1] in rejected.reason
        return
    assert server.rejected() == []
    generation = observations["gen"]
    assert generation.type == "GENERATION"
    want = (outcome[1], outcome[2]) if outcome[0] == "linked" else (None, None)
    assert (generation.prompt_name, generation.prompt_version) == want


@pytest.mark.parametrize("kind", ["tool", "agent", "span"])
def test_only_generations_link_and_only_generations_are_judged(server: LangfuseServer, kind: str) -> None:
    attrs = {"langfuse.observation.type": kind, PN: "p", PV: "3"}  # a string version: no matter here
    assert post_json(server, otlp_json(json_span("s", attrs))).status_code == 200
    [observation] = server.observations()
    assert observation.type == kind.upper()
    assert (observation.prompt_name, observation.prompt_version) == (None, None)


@pytest.mark.parametrize("poison", ["constructor", "toString", "__proto__"])
def test_a_value_that_makes_langfuses_mapper_throw_loses_the_whole_request(
    server: LangfuseServer, poison: str
) -> None:
    bad = json_span("bad", {"gen_ai.operation.name": poison}, span_id="00000000000000bb")
    good = json_span("good", {"gen_ai.operation.name": "chat", **LINK}, span_id="00000000000000aa")
    assert post_json(server, otlp_json(good, bad)).status_code == 200  # Langfuse answers 200: queued
    assert server.observations() == []
    rejected = server.rejected()
    assert sorted(r.observation.name for r in rejected) == ["bad", "good"]
    assert all("whole export request is lost" in r.reason and poison in r.reason for r in rejected)
    # Another request is not affected.
    assert post_json(server, otlp_json(json_span("later", {"model": "m"}, span_id="00000000000000cc"))).status_code == 200
    assert [o.name for o in server.observations()] == ["later"]


POISON_KEYS = ["langfuse.observation.type", "openinference.span.kind", "gen_ai.operation.name",
               "genkit:metadata:subtype"]


@pytest.mark.parametrize("poison", ["constructor", "__proto__", "valueOf", "hasOwnProperty"])
@pytest.mark.parametrize("key", POISON_KEYS)
def test_every_lookup_langfuse_makes_loses_the_request_on_a_prototype_name(
    server: LangfuseServer, key: str, poison: str
) -> None:
    bad = json_span("bad", {key: poison, "model": "m"}, span_id="00000000000000bb")
    good = json_span("good", {"gen_ai.operation.name": "chat", **LINK}, span_id="00000000000000aa")
    assert post_json(server, otlp_json(good, bad)).status_code == 200
    assert server.observations() == []
    assert {r.observation.name for r in server.rejected()} == {"bad", "good"}


@pytest.mark.parametrize("key", POISON_KEYS[1:])
@pytest.mark.parametrize("explicit", ["span", "generation", "tool"])
def test_a_known_explicit_type_defuses_a_poison_lookup_after_it(server: LangfuseServer, key: str,
                                                                explicit: str) -> None:
    """Langfuse reads langfuse.observation.type first: when it knows the value, the lookups that
    would throw are never made (what the relay adds to defuse a poison span)."""
    bad = json_span("typed", {key: "constructor", "langfuse.observation.type": explicit, "model": "m"},
                    span_id="00000000000000bb")
    good = json_span("good", {"gen_ai.operation.name": "chat", **LINK}, span_id="00000000000000aa")
    assert post_json(server, otlp_json(good, bad)).status_code == 200
    assert server.rejected() == []
    seen = {o.name: o for o in server.observations()}
    assert seen["typed"].type == explicit.upper()
    assert (seen["good"].prompt_name, seen["good"].prompt_version) == ("p", 2)


def test_an_unknown_explicit_type_does_not_defuse_and_a_request_of_one_loses_only_itself(
    server: LangfuseServer,
) -> None:
    unknown = json_span("unknown", {"langfuse.observation.type": "GENERATION", "gen_ai.operation.name": "toString"},
                        span_id="00000000000000bb")
    assert post_json(server, otlp_json(unknown)).status_code == 200
    good = json_span("good", {"gen_ai.operation.name": "chat", **LINK}, span_id="00000000000000aa")
    assert post_json(server, otlp_json(good)).status_code == 200
    assert [o.name for o in server.observations()] == ["good"]
    [lost] = server.rejected()
    assert lost.observation.name == "unknown" and "toString" in lost.reason


def test_types_come_from_the_relays_table_with_scope_and_span_name(server: LangfuseServer) -> None:
    from promptstamp_contract.langfuse_typing import langfuse_type

    provider = provider_for(server)
    livekit = provider.get_tracer("livekit-agents")
    with livekit.start_as_current_span("agent_turn"):
        with livekit.start_as_current_span("function_tool"):
            pass
    app = provider.get_tracer("app")
    with app.start_as_current_span("agent_turn") as s:  # the same name in another scope: a span
        s.set_attribute("gen_ai.response.model", "gpt-4o")
    provider.shutdown()
    got = {(o.scope_name, o.name): o.type for o in server.wait_for_observations(3)}
    assert got == {
        ("livekit-agents", "agent_turn"): "AGENT",
        ("livekit-agents", "function_tool"): "TOOL",
        ("app", "agent_turn"): "GENERATION",
    }
    for o in server.observations():
        assert o.type == langfuse_type(o.attributes, scope_name=o.scope_name or "", span_name=o.name)


def test_metadata_attributes_land_unchanged(server: LangfuseServer) -> None:
    attrs = {
        "langfuse.observation.metadata.prompt_name": "order-status",
        "langfuse.observation.metadata.count": 7,
        "langfuse.observation.metadata.a.b": "dotted",
        "other": "x",
    }
    post_json(server, otlp_json(json_span("s", attrs)))
    [observation] = server.observations()
    assert observation.metadata == {"prompt_name": "order-status", "count": 7, "a.b": "dotted"}
    assert observation.attributes["other"] == "x"
    assert observation.start_time_unix_nano == 1_700_000_000_000_000_000


def test_json_ingest_ids_are_hex_and_parent_is_kept(server: LangfuseServer) -> None:
    response = post_json(
        server,
        otlp_json(json_span("child", {}, parentSpanId="00f067aa0ba902b7")),
        **{"x-langfuse-ingestion-version": "4"},
    )
    assert response.status_code == 200
    assert response.json() == {}
    [observation] = server.observations()
    assert observation.trace_id == TRACE_ID
    assert observation.span_id == "b7ad6b7169203331"
    assert observation.parent_span_id == "00f067aa0ba902b7"
    assert observation.service_name == "svc"


def test_gzip_json_ingest(server: LangfuseServer) -> None:
    body = gzip.compress(json.dumps(otlp_json(json_span("s", {}))).encode())
    with http(server) as h:
        response = h.post(
            "/api/public/otel/v1/traces",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
    assert response.status_code == 200
    assert len(server.observations()) == 1


def _encoded(*spans: dict[str, Any]) -> bytes:
    return json.dumps(otlp_json(*spans)).encode()


GOOD = _encoded(json_span("s", {}))
BAD_SPAN_ID = _encoded(json_span("s", {}), json_span("t", {}, span_id="xyz"))
SHORT_TRACE_ID = _encoded(json_span("s", {}, traceId="abcd"))
JSON = "application/json"


@pytest.mark.parametrize(
    ("content", "content_type", "headers"),
    [
        (b"{not json", JSON, {}),
        (b"\xff\xff\xff", "application/x-protobuf", {}),
        (GOOD, "text/plain", {}),
        (GOOD, JSON, {"Content-Encoding": "gzip"}),
        (BAD_SPAN_ID, JSON, {}),
        (SHORT_TRACE_ID, JSON, {}),
        (GOOD, JSON, {"x-langfuse-ingestion-version": "5"}),
        (GOOD, JSON, {"x-langfuse-ingestion-version": "abc"}),
    ],
    ids=[
        "bad-json", "bad-proto", "bad-content-type", "bad-gzip", "bad-span-id", "short-trace-id",
        "ingestion-version-5", "ingestion-version-nan",
    ],
)  # fmt: skip
def test_malformed_batches_are_rejected_whole(
    server: LangfuseServer, content: bytes, content_type: str, headers: dict[str, str]
) -> None:
    with http(server) as h:
        response = h.post(
            "/api/public/otel/v1/traces",
            content=content,
            headers={"Content-Type": content_type, **headers},
        )
    assert response.status_code == 400
    assert "error" in response.json()
    assert server.observations() == []
    assert [r.status for r in server.ingest_requests] == [400]


def test_same_span_twice_is_one_observation(server: LangfuseServer) -> None:
    post_json(server, otlp_json(json_span("s", {"v": 1})))
    post_json(server, otlp_json(json_span("s", {"v": 2})))
    [observation] = server.observations()
    assert observation.attributes == {"v": 2}
    assert len(server.ingest_requests) == 2


# --------------------------------------------------------------------------------------------
# ingest fault injection and waiting
# --------------------------------------------------------------------------------------------
def test_fail_ingest_with_retry_after_then_recover(server: LangfuseServer) -> None:
    server.fail_ingest(429, times=1, retry_after=2)
    first = post_json(server, otlp_json(json_span("s", {})))
    second = post_json(server, otlp_json(json_span("s", {})))
    assert first.status_code == 429
    assert first.headers["retry-after"] == "2"
    assert second.status_code == 200
    assert [r.status for r in server.ingest_requests] == [429, 200]
    assert len(server.observations()) == 1


def test_fail_ingest_until_reset(server: LangfuseServer) -> None:
    server.fail_ingest(503)
    assert [post_json(server, otlp_json(json_span("s", {}))).status_code for _ in range(2)] == [503, 503]
    assert server.observations() == []
    server.reset_faults()
    assert post_json(server, otlp_json(json_span("s", {}))).status_code == 200
    assert len(server.observations()) == 1


def test_wait_for_observations_is_bounded(server: LangfuseServer) -> None:
    with pytest.raises(TimeoutError):
        server.wait_for_observations(1, timeout=0.1)
    post_json(server, otlp_json(json_span("s", {})))
    observations = server.wait_for_observations(1, timeout=0.1)
    assert isinstance(observations[0], Observation)
