"""Capture a recording from a real OpenAI instrumentation, through the real relay's ``--record``.

    python -m tests.replay.capture openllmetry tests/replay/recordings/openllmetry.jsonl

Runs in its own process (instrumentors patch the ``openai`` package globally): starts the
Langfuse-shaped loopback server and a fake of the OpenAI API, a relay that records every
request it receives, and an app using the promptstamp SDK with the given instrumentation.
The recording is what the relay received, in arrival order (contract §5).

Scenarios in one recording (order-status-answer: v1 = production + prod-a, v2 = prod-b):
  1. a request trace: prompt fetched inside the trace, then the model call   → tier trace
  2. the A/B split: one trace per label                                        → two versions
  3. a prompt fetched at start-up, outside any trace, used by a later request → tier instance
  4. a span with no prompt and a plain model call with no prompt              → untouched
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

SYSTEM = ("You are a support assistant. Answer using only authorized order and policy context.\n"
          "If the order state is missing or policy evidence is insufficient, escalate.")
USER = ("Question: {{query}}\nRegion: {{region}}\nOrder state: {{order_state}}\n"
        "Policy document IDs: {{policy_document_ids}}\nMemory categories: {{memory_record_types}}")


def _instrument(kind: str, tracer_provider: object) -> None:
    if kind == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor

        OpenAIInstrumentor().instrument(tracer_provider=tracer_provider)
    elif kind == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OIInstrumentor

        OIInstrumentor().instrument(tracer_provider=tracer_provider)
    elif kind == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2Instrumentor

        V2Instrumentor().instrument(tracer_provider=tracer_provider)
    else:
        raise SystemExit(f"unknown instrumentation {kind!r}: openllmetry | openinference | openai-v2")


def capture(kind: str, out_path: Path) -> None:
    import openai
    from langfuse import Langfuse
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    import promptstamp
    from promptstamp.testing import FakeOpenAI, LangfuseServer
    from promptstamp_relay.config import load_config
    from tests.relays import running

    with tempfile.TemporaryDirectory() as tmp, LangfuseServer() as lf, FakeOpenAI() as model:
        lf.create_prompt("order-status-answer", [{"role": "system", "content": SYSTEM},
                                                 {"role": "user", "content": USER}],
                         labels=["production", "prod-a"])
        lf.create_prompt("order-status-answer", [{"role": "system", "content": SYSTEM + " Escalate early."},
                                                 {"role": "user", "content": USER}],
                         labels=["prod-b"])
        record = Path(tmp) / "rec.jsonl"
        cfg = load_config(None, env={}, overrides={
            "listen": "127.0.0.1:0", "receivers.http.listen": "", "record": str(record), "exporter.type": "file",
            "exporter.file": str(Path(tmp) / "out.jsonl"),
        })
        with running(cfg) as relay:
            resource = Resource.create({"service.name": "order-status-agent",
                                        "service.instance.id": f"order-status-agent-{kind}"})
            tp = TracerProvider(resource=resource)
            tp.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint=relay.address, insecure=True)))
            lp = LoggerProvider(resource=resource)
            lp.add_log_record_processor(SimpleLogRecordProcessor(OTLPLogExporter(endpoint=relay.address, insecure=True)))
            client_lf = Langfuse(public_key=lf.public_key, secret_key=lf.secret_key, base_url=lf.base_url,
                                 tracing_enabled=False)
            promptstamp.install(tracer_provider=tp, logger_provider=lp, langfuse=client_lf)
            _instrument(kind, tp)
            tracer = tp.get_tracer("order_status")
            client = openai.OpenAI(base_url=model.base_url, api_key="test-key")
            variables = {"query": "Where is my order?", "region": "eu", "order_state": "shipped",
                         "policy_document_ids": ["pol-7"], "memory_record_types": ["order"]}

            def answer(label: str) -> None:
                with promptstamp.prompt("order-status-answer", label=label) as p:
                    client.chat.completions.create(model="gpt-4o-mini", messages=p.compile(**variables))

            with tracer.start_as_current_span("manual-prompt-management"):
                answer("production")
            for label in ("prod-a", "prod-b"):
                with tracer.start_as_current_span(f"manual-prompt-ab-test-{label}"):
                    answer(label)
            # Fetched at start-up, outside any trace; used later in a request trace.
            with promptstamp.prompt("order-status-answer", label="production") as p:
                messages = p.compile(**variables)
                with tracer.start_as_current_span("request-after-warmup"):
                    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            with tracer.start_as_current_span("no-prompt"):
                client.chat.completions.create(model="gpt-4o-mini",
                                               messages=[{"role": "user", "content": "hi"}])
            tp.shutdown()
            lp.shutdown()
            time.sleep(0.2)
        out_path.write_text(record.read_text())


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    capture(sys.argv[1], Path(sys.argv[2]))
