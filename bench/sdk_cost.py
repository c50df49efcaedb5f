"""What the SDK costs the app, per span and per cached ``prompt()``, measured with timeit loops.

* **Span processor**: ``start_as_current_span`` (with the 13 attributes an HTTP client
  instrumentation sets) + end inside a ``prompt()`` context (the two baggage entries set), on an
  SDK ``TracerProvider`` with a batch span processor feeding a no-op exporter (what an app
  has), with and without promptstamp's
  ``PromptBaggageSpanProcessor``. The difference is what the processor adds per span. Also
  measured for spans outside any ``prompt()`` (nothing to copy).
* **Cached ``prompt()``**: ``with promptstamp.prompt(key) as p: pass`` after a first fetch from
  a loopback Langfuse (``promptstamp.testing.LangfuseServer``), so every later call is a cache
  hit: the cache lookup, the fetch log record emitted through the OTel Logs SDK (batch processor,
  no-op exporter), the fetch recorded on the active span, the baggage attach/detach.

Each figure: ``timeit`` loops in interleaved rounds (with / without alternating); we quote the
best round (the usual timeit practice: the one least disturbed by other processes — on a shared
machine the medians can even come out negative for a difference) and keep the median too, in µs
per call.

Run: ``python -m bench.sdk_cost [--quick]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import timeit
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

import promptstamp
from promptstamp._baggage import prompt_attributes, with_prompt
from promptstamp._processor import PromptBaggageSpanProcessor
from promptstamp.testing import LangfuseServer, reset_langfuse_clients

KEY = "order-status-answer"
# What an HTTP-client instrumentation passes at span start (the span the processor stamps is
# rarely bare); the same for both sides of every comparison.
SPAN_ATTRIBUTES = {
    "http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
    "server.address": "api.openai.com", "server.port": 443, "network.protocol.version": "1.1",
    "http.response.status_code": 200, "http.request.body.size": 1734, "http.response.body.size": 912,
    "user_agent.original": "OpenAI/Python 1.109.1", "network.peer.address": "162.159.140.245",
    "network.peer.port": 443, "http.request.resend_count": 0, "network.type": "ipv4",
}


class _NoSpans(SpanExporter):
    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS


class _NoLogs(LogRecordExporter):
    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _time(fn: Callable[[], None], number: int, repeat: int) -> dict[str, float]:
    fn()  # warm
    gc.collect()
    runs = [t / number * 1e6 for t in timeit.repeat(fn, number=number, repeat=repeat)]
    return {"best_us": min(runs), "median_us": statistics.median(runs)}


def _paired(fns: dict[str, Callable[[], None]], number: int, rounds: int) -> dict[str, dict[str, float]]:
    """Time each function ``rounds`` times, interleaved (A B A B ...), best of 3 per round."""
    per: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for r in range(rounds):
        order = list(fns) if r % 2 == 0 else list(reversed(fns))
        for k in order:
            gc.collect()
            per[k].append(min(timeit.repeat(fns[k], number=number, repeat=3)) / number * 1e6)
    return {k: {"best_us": min(v), "median_us": statistics.median(v)} for k, v in per.items()}


def span_cost(number: int, repeat: int) -> dict[str, Any]:
    """Per-span cost with and without the processor, on a provider with a batch span processor."""
    tracers = {}
    providers = []
    for name, with_processor in (("without", False), ("with", True)):
        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(_NoSpans(), max_queue_size=1 << 16,
                                                       max_export_batch_size=512))
        if with_processor:
            provider.add_span_processor(PromptBaggageSpanProcessor())
        providers.append(provider)
        tracers[name] = provider.get_tracer("bench")

    def spans(name: str) -> Callable[[], None]:
        tracer = tracers[name]

        def one_span() -> None:
            with tracer.start_as_current_span("POST", attributes=SPAN_ATTRIBUTES):
                pass
        return one_span

    out: dict[str, Any] = {}
    out["outside_prompt"] = _paired({k: spans(k) for k in tracers}, number, repeat)
    token = otel_context.attach(with_prompt(KEY, "production"))
    try:
        out["in_prompt"] = _paired({k: spans(k) for k in tracers}, number, repeat)
        ctx = otel_context.get_current()
        attrs = prompt_attributes(ctx)
        probe = tracers["without"].start_span("probe")
        out["parts"] = _paired({
            "prompt_attributes": lambda: prompt_attributes(ctx),
            "span.set_attributes": lambda: probe.set_attributes(attrs),
        }, number * 5, repeat)
        probe.end()
    finally:
        otel_context.detach(token)
    for where in ("in_prompt", "outside_prompt"):
        out[f"{where}_added_us"] = {
            k: out[where]["with"][k] - out[where]["without"][k] for k in ("best_us", "median_us")
        }
    for provider in providers:
        provider.shutdown()
    return out


def prompt_cost(number: int, repeat: int) -> dict[str, Any]:
    from langfuse import Langfuse

    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="sk-lf-bench") as srv:
        srv.create_prompt(KEY, [{"role": "system", "content": "You are a support assistant."},
                                {"role": "user", "content": "Question: {{query}}\nRegion: {{region}}"}],
                          labels=["production"], config={"model": "gpt-4o-mini"})
        client = Langfuse(public_key=srv.public_key, secret_key=srv.secret_key, base_url=srv.base_url,
                          tracing_enabled=False)
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(_NoSpans()))
        logger_provider = LoggerProvider()
        logger_provider.add_log_record_processor(BatchLogRecordProcessor(_NoLogs()))
        promptstamp.install(tracer_provider, logger_provider, client, cache_ttl_seconds=600)
        tracer = tracer_provider.get_tracer("bench")

        def cached_prompt() -> None:
            with promptstamp.prompt(KEY) as p:
                p.version  # noqa: B018

        out: dict[str, Any] = {}
        with tracer.start_as_current_span("request"):
            cached_prompt()  # the one real fetch
            fetches = len(srv.prompt_requests)
            out["cached_prompt"] = _time(cached_prompt, number, repeat)
            out["http_fetches_during_loop"] = len(srv.prompt_requests) - fetches

            def compile_too() -> None:
                with promptstamp.prompt(KEY) as p:
                    p.compile(query="Where is my order?", region="eu")

            out["cached_prompt_and_compile"] = _time(compile_too, max(1, number // 2), repeat)
        tracer_provider.shutdown()
        logger_provider.shutdown()
        client.shutdown()
        reset_langfuse_clients()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    number, repeat = (2000, 7) if args.quick else (5000, 11)
    result = {
        "loops": {"number": number, "repeat": repeat},
        "span": span_cost(number, repeat),
        "prompt": prompt_cost(number // 2, repeat),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
