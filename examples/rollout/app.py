"""The order-status agent's traffic for the guarded-rollout walk-through (docs/rollouts.md).

Each request asks for ``production`` with its user as the subject, calls the model once, and
goes on when the model fails. Nothing in here knows about rollouts: the SDK learns the plan from
Langfuse. Reads the environment ``promptstamp-relay dev`` prints; ``--seconds`` bounds the run.
Every 2 s it prints how many requests each version served.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from collections import Counter

from openai import OpenAI
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

import promptstamp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=120.0, help="how long to send requests")
    parser.add_argument("--cache-ttl", type=float, default=2.0, help="the SDK's prompt cache TTL")
    args = parser.parse_args()

    provider = TracerProvider(resource=Resource.create({"service.name": "order-status",
                                                        "service.instance.id": f"pod-{os.getpid()}"}))
    # OTEL_EXPORTER_OTLP_ENDPOINT from `promptstamp-relay dev`: the relay's OTLP/HTTP receiver.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(
        endpoint=os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"), schedule_delay_millis=500))
    trace.set_tracer_provider(provider)
    promptstamp.install(cache_ttl_seconds=args.cache_ttl)
    OpenAIInstrumentor().instrument()
    client = OpenAI()  # OPENAI_BASE_URL and OPENAI_API_KEY from the environment

    rng = random.Random(1)
    served: Counter[str] = Counter()
    failed: Counter[str] = Counter()
    end = time.monotonic() + args.seconds
    report = time.monotonic() + 2
    while time.monotonic() < end:
        user = f"user-{rng.randrange(5000)}"
        with promptstamp.prompt("order-status-answer", subject=user) as p:
            version = f"v{p.version}"
            served[version] += 1
            try:
                client.chat.completions.create(model=p.config["model"], messages=p.compile(order=str(rng.randrange(10**6))))
            except Exception:  # the failure is on the generation span (status ERROR)
                failed[version] += 1
        if time.monotonic() >= report:
            report += 2
            print("  ".join(f"{v}: {served[v]} requests, {failed[v]} failed" for v in sorted(served)), flush=True)
        time.sleep(0.005)
    provider.shutdown()


if __name__ == "__main__":
    main()
