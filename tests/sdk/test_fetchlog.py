"""The fetch log record (contract §2), read back from an in-memory log exporter and encoded
as OTLP the way the ordinary exporter sends it."""

from __future__ import annotations

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

import promptstamp
from promptstamp.testing import LangfuseServer

from .conftest import PROMPT, Otel


def test_one_record_per_prompt_handed_out(installed: Otel) -> None:
    tracer = installed.tracer
    with tracer.start_as_current_span("compose_answer") as span:
        with promptstamp.prompt(PROMPT, label="production") as p:
            p.compile(query="q", region="eu")
        with promptstamp.prompt(PROMPT, label="production"):  # from the fresh cache: logged too
            pass
    records = installed.fetch_records()
    assert len(records) == 2
    context = span.get_span_context()
    fetch_span_ids = {s.context.span_id for s in installed.spans.get_finished_spans()
                      if s.name == "promptstamp.fetch" and s.context is not None}
    assert len(fetch_span_ids) == 2
    for readable in records:
        record = readable.log_record
        assert record.event_name == "app.prompt.fetch"
        assert dict(record.attributes or {}) == {
            "app.prompt.key": PROMPT,
            "app.prompt.label": "production",
            "app.prompt.version": 1,
            "app.prompt.fetch.source": "langfuse",
        }
        version = (record.attributes or {})["app.prompt.version"]
        assert type(version) is int
        assert record.trace_id == context.trace_id
        assert record.span_id in fetch_span_ids  # the fetch span: the span active while it ran
        assert record.severity_number == SeverityNumber.INFO
        assert record.timestamp is not None and record.timestamp > 0
        assert readable.instrumentation_scope is not None
        assert readable.instrumentation_scope.name == "promptstamp"
    finished = installed.finished()["compose_answer"]
    assert (finished.attributes or {})["app.prompt.fetch.source"] == "langfuse"
    assert "app.prompt.fetch.error_type" not in (finished.attributes or {})


def test_no_active_span_gives_the_scope_spans_trace(installed: Otel) -> None:
    with promptstamp.prompt(PROMPT):
        pass
    [readable] = installed.fetch_records()
    [scope] = [s for s in installed.spans.get_finished_spans() if s.name == "promptstamp.prompt"]
    assert scope.context is not None and readable.log_record.trace_id == scope.context.trace_id


def test_the_record_as_otlp(installed: Otel, server: LangfuseServer) -> None:
    """event_name travels in LogRecord field 12 and the version as an intValue."""
    with installed.tracer.start_as_current_span("compose_answer") as span, promptstamp.prompt(PROMPT):
        pass
    request = encode_logs(installed.fetch_records())
    [resource_logs] = request.resource_logs
    [scope_logs] = resource_logs.scope_logs
    [record] = scope_logs.log_records
    assert record.event_name == "app.prompt.fetch"
    assert record.DESCRIPTOR.fields_by_name["event_name"].number == 12
    attributes = {kv.key: kv.value for kv in record.attributes}
    assert attributes["app.prompt.version"].WhichOneof("value") == "int_value"
    assert attributes["app.prompt.version"].int_value == 1
    assert attributes["app.prompt.key"].string_value == PROMPT
    assert attributes["app.prompt.fetch.source"].string_value == "langfuse"
    assert "app.prompt.fetch.error_type" not in attributes
    assert record.trace_id == span.get_span_context().trace_id.to_bytes(16, "big")
    [fetch] = [s for s in installed.spans.get_finished_spans() if s.name == "promptstamp.fetch"]
    assert fetch.context is not None and record.span_id == fetch.context.span_id.to_bytes(8, "big")


def test_records_go_to_the_global_logger_provider_by_default(
    otel: Otel, langfuse_client: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("opentelemetry._logs._internal._LOGGER_PROVIDER", otel.logger_provider)
    promptstamp.install(otel.tracer_provider, langfuse=langfuse_client)  # type: ignore[arg-type]
    with promptstamp.prompt(PROMPT):
        pass
    assert len(otel.fetch_records()) == 1
