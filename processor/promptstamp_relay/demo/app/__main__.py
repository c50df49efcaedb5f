"""``python -m promptstamp_relay.demo.app [SCENARIO ...]``: run the chapter's prompt scenarios.

Configuration is the usual environment, nothing promptstamp-specific:

* ``LANGFUSE_BASE_URL``, ``LANGFUSE_PUBLIC_KEY``, ``LANGFUSE_SECRET_KEY``: where prompts come from;
* ``OTEL_EXPORTER_OTLP_ENDPOINT`` (+ ``OTEL_EXPORTER_OTLP_PROTOCOL=grpc`` for port 4317): where
  spans and the fetch log go — the collector, or the relay directly;
* ``OPENAI_API_KEY`` (and ``OPENAI_BASE_URL``) for the model, or ``--fake-openai``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import openai

from .agent import OrderStatusAgent
from .prompts import LangfuseApi, seed_prompts
from .scenarios import (
    SCENARIOS,
    Outage,
    ScenarioContext,
    SimulatedOutage,
    StdioOutage,
)
from .telemetry import (
    INSTRUMENTATIONS,
    SpanLedger,
    flush_and_shutdown,
    setup,
    write_report,
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m promptstamp_relay.demo.app", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenarios", nargs="*", metavar="SCENARIO", default=["all"],
                   choices=[*SCENARIOS, "all"], help=f"{', '.join(SCENARIOS)} or all (default)")
    p.add_argument("--instrumentation", choices=INSTRUMENTATIONS,
                   default=os.environ.get("ORDER_STATUS_INSTRUMENTATION", "openllmetry"),
                   help="which OpenAI instrumentation traces the model call (default openllmetry)")
    p.add_argument("--service-name", default=os.environ.get("OTEL_SERVICE_NAME", "order-status-agent"))
    p.add_argument("--fetch-timeout", type=float, default=2.0, metavar="SECONDS",
                   help="prompt fetch timeout (default 2)")
    p.add_argument("--seed-prompts", action="store_true",
                   help="create order-status-answer v1 (production, prod-a) and v2 (prod-b) if missing")
    p.add_argument("--wait-for-langfuse", type=float, default=0.0, metavar="SECONDS",
                   help="wait up to SECONDS for Langfuse to answer before starting")
    p.add_argument("--fake-openai", action="store_true",
                   help="answer model calls from an in-process fake of the OpenAI API (no key needed)")
    p.add_argument("--control-stdio", action="store_true",
                   help="print ::scenario markers and ask on stdin for the Langfuse outage "
                        "(how promptstamp-relay demo drives the app)")
    p.add_argument("--report", metavar="FILE",
                   help="write the spans the app sent and each run's prompt to FILE (JSON)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = list(SCENARIOS) if "all" in args.scenarios else list(dict.fromkeys(args.scenarios))

    if args.seed_prompts or args.wait_for_langfuse:
        api = LangfuseApi(os.environ.get("LANGFUSE_BASE_URL") or os.environ.get("LANGFUSE_HOST", ""),
                          os.environ.get("LANGFUSE_PUBLIC_KEY", ""),
                          os.environ.get("LANGFUSE_SECRET_KEY", ""))
        if args.wait_for_langfuse:
            api.wait_until_up(args.wait_for_langfuse)
        if args.seed_prompts:
            for created in seed_prompts(api):
                print(f"order_status: created prompt {created}", file=sys.stderr)

    fake: Any = None
    if args.fake_openai:
        from promptstamp.testing import FakeOpenAI

        fake = FakeOpenAI("Your order ORDER-924 has shipped and is on its way.").start()

    outage: Outage
    langfuse_client: Any = None
    if args.control_stdio:
        outage = StdioOutage()
    else:
        from langfuse import Langfuse

        simulated = SimulatedOutage(Langfuse(tracing_enabled=False))
        outage, langfuse_client = simulated, simulated.client

    ledger = SpanLedger() if args.report else None
    setup(args.service_name, args.instrumentation, langfuse=langfuse_client,
          fetch_timeout_seconds=args.fetch_timeout, ledger=ledger)
    client = openai.OpenAI(base_url=fake.base_url, api_key="fake") if fake is not None else openai.OpenAI()
    ctx = ScenarioContext(OrderStatusAgent(client), outage)

    status = 0
    try:
        for name in names:
            if args.control_stdio:
                print(f"::scenario {name}", flush=True)
            for line in SCENARIOS[name](ctx):
                print(line, flush=True)
    except Exception:
        traceback.print_exc()
        status = 1
    finally:
        flushed = flush_and_shutdown()
        if fake is not None:
            fake.stop()
        if ledger is not None:
            write_report(args.report, ledger, ctx.report(), flushed)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
