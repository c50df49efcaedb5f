"""What the SDK costs the app, per span and per cached ``prompt()``, measured with timeit loops.

* **Span processor**: ``start_as_current_span`` (with the 13 attributes an HTTP client
  instrumentation sets) + end inside a ``prompt()`` context (the two baggage entries set), on an
  SDK ``TracerProvider`` with a batch span processor feeding a no-op exporter (what an app
  has), with and without promptstamp's
  ``PromptBaggageSpanProcessor``. The difference is what the processor adds per span. Also
  measured for spans outside any ``prompt()`` (nothing to copy).
* **Cached ``prompt()``**: ``with promptstamp.prompt(key) as p: pass`` after a first fetch from
  a loopback Langfuse (``promptstamp.testing.LangfuseServer``), so every later call is a cache
  hit: the cache lookup, the ``promptstamp.fetch`` span started and ended (one
  ``app.prompt.fetch`` event, the record's attributes) on an SDK ``TracerProvider`` with a
  ``BatchSpanProcessor`` (defaults) feeding a no-op exporter, the fetch source set on the active
  span, the log record when a ``LoggerProvider`` is set (batch processor, no-op exporter), the
  baggage attach/detach. Cases:

  - ``a``: inside an active span, tracing only (no ``LoggerProvider``: the record goes to the
    API's proxy logger, which drops it);
  - ``b``: inside an active span, with a ``LoggerProvider`` (the ``cached_prompt`` figure);
  - ``c``: no active span, tracing only (the ``promptstamp.prompt`` scope span is added);
  - ``c_logs``: no active span, with a ``LoggerProvider``;
  - ``compile``: as ``b``, plus ``p.compile(...)`` (``cached_prompt_and_compile``);
  - ``span_in_prompt``: one span start+end (13 attributes) inside an entered ``prompt()``,
    on the provider ``install()`` added the baggage processor to;
  - ``rollout_new``, ``rollout_old``: as ``a``, for a second prompt whose ``production`` label
    has a guarded rollout running (its plan prompt ``promptstamp-rollout/production/<name>`` at
    50 %, version 1 -> 2), with ``subject=`` a subject on the new side (handed version 2) or on
    the old side (version 1); ``rollout_trace``: the same without ``subject=`` (the trace id
    splits). Every case but these has no plan: the SDK's cached "no plan" is in them. An SDK
    without ``subject=`` (before the rollouts) is called without it and hands out version 1:
    the same call, plan unread; each job reports the version and side handed out.

  These run in worker processes (one with tracing only, one with a ``LoggerProvider`` as
  well), each importing the SDK from a given ``sdk`` directory (first on ``sys.path``), driven
  job by job from here over a pipe. ``--against REV`` runs the same jobs on the SDK of git
  revision ``REV`` too (a temporary ``git worktree``, removed at the end; or ``REV`` is a
  directory holding ``promptstamp/``), interleaved with this tree's job by job, so the two are
  measured in one session on one machine; no process imports both. Each job also reports the
  spans and log records exported per call (after a flush), which says what was measured and
  that the batch processors dropped nothing.

Each figure: ``timeit`` loops in interleaved rounds (with / without, or before / after,
alternating; the order reversed every other round), best of 3 repeats per round; we quote the
best round (the usual timeit practice: the one least disturbed by other processes — on a shared
machine the medians can even come out negative for a difference) and keep the median too, in µs
per call. Before/after differences also get the median of the per-round differences (paired).

Run: ``python -m bench.sdk_cost [--quick] [--against REV] [--out FILE]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import inspect
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter, LogRecordExportResult
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.util.types import AttributeValue

import promptstamp
from promptstamp._baggage import prompt_attributes, with_prompt
from promptstamp._processor import PromptBaggageSpanProcessor
from promptstamp.testing import LangfuseServer, reset_langfuse_clients

ROOT = Path(__file__).resolve().parent.parent
KEY = "order-status-answer"
ROLLOUT_KEY = "order-status-rollout"  # a second prompt, with a guarded rollout of production running
ROLLOUT_SALT = "bench-rollout"
ROLLOUT_SHARE = 50.0
# What an HTTP-client instrumentation passes at span start (the span the processor stamps is
# rarely bare); the same for both sides of every comparison.
SPAN_ATTRIBUTES: dict[str, AttributeValue] = {
    "http.request.method": "POST", "url.full": "https://api.openai.com/v1/chat/completions",
    "server.address": "api.openai.com", "server.port": 443, "network.protocol.version": "1.1",
    "http.response.status_code": 200, "http.request.body.size": 1734, "http.response.body.size": 912,
    "user_agent.original": "OpenAI/Python 1.109.1", "network.peer.address": "162.159.140.245",
    "network.peer.port": 443, "http.request.resend_count": 0, "network.type": "ipv4",
}


class _NoSpans(SpanExporter):
    def __init__(self) -> None:
        self.exported = 0  # called on the batch processor's one worker thread

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.exported += len(spans)
        return SpanExportResult.SUCCESS


class _NoLogs(LogRecordExporter):
    def __init__(self) -> None:
        self.exported = 0

    def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
        self.exported += len(batch)
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _paired(fns: dict[str, Callable[[], object]], number: int, rounds: int) -> dict[str, dict[str, float]]:
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




# -- cached prompt(): worker processes, one SDK each -----------------------------------------------
#: A worker's providers: an SDK TracerProvider only, or one and a LoggerProvider.
CONFIGS = ("tracing", "logs")
#: case -> (the worker's providers, inside the app's request span, what one call does)
CASES: dict[str, tuple[str, bool, str]] = {
    "a": ("tracing", True, "prompt"),
    "b": ("logs", True, "prompt"),
    "c": ("tracing", False, "prompt"),
    "c_logs": ("logs", False, "prompt"),
    "compile": ("logs", True, "compile"),
    "span_in_prompt": ("tracing", True, "span"),
    "rollout_new": ("tracing", True, "rollout_new"),
    "rollout_old": ("tracing", True, "rollout_old"),
    "rollout_trace": ("tracing", True, "rollout_trace"),
}
#: calls per timeit loop, as a multiple of the prompt loops' ``number`` (a span is cheaper)
_SCALE = {"prompt": 1.0, "compile": 0.5, "span": 2.0, "rollout_new": 1.0, "rollout_old": 1.0,
          "rollout_trace": 1.0}


def _rollout_subject(new: bool) -> str:
    """A subject on the new (or old) side of the bench's rollout: the plan's hash, computed
    here so the pre-rollout SDK's workers need nothing of it."""
    salt = ROLLOUT_SALT.encode()
    for i in range(1000):
        subject = f"user-{i}"
        digest = hashlib.blake2b(str(len(salt)).encode() + b":" + salt + subject.encode(), digest_size=8).digest()
        if (int.from_bytes(digest, "big") / float(2**64) * 100.0 < ROLLOUT_SHARE) is new:
            return subject
    raise AssertionError("no subject found")


def _seed_rollout(server: LangfuseServer) -> None:
    """The second prompt: v1 labelled production, v2 unlabelled, and the plan at 50 %."""
    for text, labels in (("v1: {{query}}", ["production"]), ("v2: {{query}}", [])):
        server.create_prompt(ROLLOUT_KEY, [{"role": "user", "content": text}], labels=labels)
    config = {"format": "promptstamp.rollout/1", "prompt": ROLLOUT_KEY, "label": "production",
              "from_version": 1, "to_version": 2, "state": "running", "share_percent": ROLLOUT_SHARE,
              "salt": ROLLOUT_SALT}
    server.create_prompt(f"promptstamp-rollout/production/{ROLLOUT_KEY}", "bench rollout", type="text",
                         labels=["active"], config=config)


class _Jobs:
    """One worker's jobs: the ``promptstamp`` this process imported, installed on its own providers."""

    def __init__(self, config: str, server: LangfuseServer, client: Any) -> None:
        self.server = server
        self.client = client
        self.spans = _NoSpans()
        self.logs = _NoLogs()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(BatchSpanProcessor(self.spans))  # an app's defaults
        self.logger_provider: LoggerProvider | None = None
        if config == "logs":
            self.logger_provider = LoggerProvider()
            self.logger_provider.add_log_record_processor(BatchLogRecordProcessor(self.logs))
        promptstamp.install(self.tracer_provider, self.logger_provider, client, cache_ttl_seconds=3600)
        self.tracer = self.tracer_provider.get_tracer("bench")
        # the app's request span, active around the calls of the "inside an active span" cases
        self.request = self.tracer.start_span("request")
        with self._in_request(True), promptstamp.prompt(KEY):
            pass  # the one real fetch: every later call is a cache hit
        self.first_fetches = len(server.prompt_requests)
        self.has_subject = "subject" in inspect.signature(promptstamp.prompt).parameters
        self.last: tuple[int | None, str | None] = (None, None)

    @contextlib.contextmanager
    def _in_request(self, active: bool) -> Iterator[None]:
        if not active:
            yield
            return
        token = otel_context.attach(trace.set_span_in_context(self.request))
        try:
            yield
        finally:
            otel_context.detach(token)

    def _flush(self) -> tuple[int, int]:
        self.tracer_provider.force_flush()
        if self.logger_provider is not None:
            self.logger_provider.force_flush()
        return self.spans.exported, self.logs.exported

    def _call(self, what: str) -> Callable[[], None]:
        if what.startswith("rollout_"):
            kwargs: dict[str, Any] = {}
            if self.has_subject and what != "rollout_trace":
                kwargs["subject"] = _rollout_subject(what == "rollout_new")

            def rollout_prompt() -> None:
                with promptstamp.prompt(ROLLOUT_KEY, **kwargs) as p:
                    self.last = (p.version, getattr(p, "rollout", None))
            return rollout_prompt
        if what == "prompt":
            def cached_prompt() -> None:
                with promptstamp.prompt(KEY) as p:
                    p.version  # noqa: B018
            return cached_prompt
        if what == "compile":
            def compile_too() -> None:
                with promptstamp.prompt(KEY) as p:
                    p.compile(query="Where is my order?", region="eu")
            return compile_too
        tracer = self.tracer

        def one_span() -> None:
            with tracer.start_as_current_span("POST", attributes=SPAN_ATTRIBUTES):
                pass
        return one_span

    def run(self, case: str, number: int, repeat: int) -> dict[str, Any]:
        _, active, what = CASES[case]
        fn = self._call(what)
        with self._in_request(active), contextlib.ExitStack() as stack:
            if what == "span":
                stack.enter_context(promptstamp.prompt(KEY))
            fn()  # warm
            spans0, logs0 = self._flush()
            fetches0 = len(self.server.prompt_requests)
            gc.collect()
            runs = timeit.repeat(fn, number=number, repeat=repeat)
            fetches = len(self.server.prompt_requests) - fetches0
        spans, logs = self._flush()
        calls = number * repeat
        return {"us": min(runs) / number * 1e6, "spans_per_call": (spans - spans0) / calls,
                "log_records_per_call": (logs - logs0) / calls, "http_fetches": fetches,
                "handed_out": {"version": self.last[0], "rollout": self.last[1]} if what.startswith("rollout_")
                else None}

    def close(self) -> None:
        self.request.end()
        self.tracer_provider.shutdown()
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
        self.client.shutdown()
        reset_langfuse_clients()


def _worker_main(config: str) -> None:
    """A worker: set up, say ``ready`` (and which SDK it imported), then one JSON line per job."""
    from langfuse import Langfuse

    out, sys.stdout = sys.stdout, sys.stderr  # stdout carries the protocol only
    warnings.simplefilter("ignore")  # e.g. the pre-change SDK's "reaches nobody" warning in case c
    logging.getLogger("promptstamp").setLevel(logging.ERROR)

    def send(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg) + "\n")
        out.flush()

    with LangfuseServer(public_key=f"pk-lf-{uuid.uuid4().hex}", secret_key="sk-lf-bench") as srv:
        srv.create_prompt(KEY, [{"role": "system", "content": "You are a support assistant."},
                                {"role": "user", "content": "Question: {{query}}\nRegion: {{region}}"}],
                          labels=["production"], config={"model": "gpt-4o-mini"})
        _seed_rollout(srv)
        client = Langfuse(public_key=srv.public_key, secret_key=srv.secret_key, base_url=srv.base_url,
                          tracing_enabled=False)
        jobs = _Jobs(config, srv, client)
        send({"ready": True, "sdk": str(Path(promptstamp.__file__).resolve().parent.parent),
              "first_fetches": jobs.first_fetches})
        for line in sys.stdin:
            msg = json.loads(line)
            if msg.get("quit"):
                break
            send(jobs.run(msg["case"], msg["number"], msg["repeat"]))
        jobs.close()


class _Worker:
    """A worker process (``--worker CONFIG``) importing ``promptstamp`` from ``sdk``."""

    def __init__(self, sdk: Path, config: str) -> None:
        from bench.procs import env_without_proxies

        env = env_without_proxies()
        env["PYTHONPATH"] = str(sdk)  # before site-packages, where the editable install's finder is
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.sdk_cost", "--worker", config],
                                     cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True)
        ready = self._read()
        if ready.get("sdk") != str(sdk.resolve()):
            self.close()
            raise RuntimeError(f"worker imported promptstamp from {ready.get('sdk')}, not {sdk}")

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"sdk_cost worker exited ({self.proc.wait()}); see its stderr")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def ask(self, msg: dict[str, Any]) -> dict[str, Any]:
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write(json.dumps(msg) + "\n")
        stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError, RuntimeError):
                self.ask({"quit": True})
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _summary(values: list[float]) -> dict[str, Any]:
    return {"best_us": min(values), "median_us": statistics.median(values),
            "rounds_us": [round(v, 3) for v in values]}


def prompt_cost(number: int, rounds: int, sdks: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Every case on every SDK in ``sdks``, interleaved job by job (order reversed every other
    round); per SDK and case: best and median round, µs per call, and what one call exported."""
    workers: dict[tuple[str, str], _Worker] = {}
    try:
        for name, sdk in sdks.items():
            for config in CONFIGS:
                workers[name, config] = _Worker(sdk, config)
        per: dict[tuple[str, str], list[float]] = {(n, c): [] for n in sdks for c in CASES}
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        fetches = {name: 0 for name in sdks}
        jobs = [(case, name) for case in CASES for name in sdks]
        for r in range(rounds):
            for case, name in jobs if r % 2 == 0 else reversed(jobs):
                config, _, what = CASES[case]
                res = workers[name, config].ask({"case": case, "repeat": 3,
                                                 "number": max(1, int(number * _SCALE[what]))})
                per[name, case].append(res["us"])
                seen[name, case] = res
                fetches[name] += res["http_fetches"]
    finally:
        for worker in workers.values():
            worker.close()
    out: dict[str, dict[str, Any]] = {}
    for name, sdk in sdks.items():
        cases = {case: {**_summary(per[name, case]),
                        "spans_per_call": seen[name, case]["spans_per_call"],
                        "log_records_per_call": seen[name, case]["log_records_per_call"],
                        **({"handed_out": seen[name, case]["handed_out"]}
                           if seen[name, case].get("handed_out") else {})}
                 for case in CASES}
        out[name] = {"sdk": str(sdk), "cases": cases, "http_fetches_during_loop": fetches[name]}
    return out


def _added(before: dict[str, Any], after: dict[str, Any]) -> dict[str, dict[str, float]]:
    out = {}
    for case in CASES:
        b, a = before["cases"][case], after["cases"][case]
        paired = [x - y for x, y in zip(a["rounds_us"], b["rounds_us"], strict=True)]
        out[case] = {"best_us": a["best_us"] - b["best_us"], "median_us": a["median_us"] - b["median_us"],
                     "paired_median_us": statistics.median(paired),
                     "ratio_best": a["best_us"] / b["best_us"]}
    return out


@contextlib.contextmanager
def _sdk_at(rev: str) -> Iterator[tuple[Path, str]]:
    """The ``sdk`` directory of ``rev``: a directory as given, else a temporary git worktree."""
    given = Path(rev)
    if given.is_dir():
        yield (given / "sdk" if (given / "sdk" / "promptstamp").is_dir() else given), str(given)
        return
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="sdk-cost-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            yield tree / "sdk", commit
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False,
                           capture_output=True)


def _now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--against", metavar="REV",
                   help="also run the prompt() cases on the SDK of this git revision (or directory)")
    p.add_argument("--rounds", type=int, help="interleaved rounds of the prompt() cases (default 11, quick 7)")
    p.add_argument("--out", type=Path, help="also write the JSON here")
    p.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        _worker_main(args.worker)
        return
    number, repeat = (2000, 7) if args.quick else (5000, 11)
    rounds = args.rounds or repeat
    meta: dict[str, Any] = {
        "started": _now(), "load_average_before": os.getloadavg(), "cpus": os.cpu_count(),
        "python": platform.python_version(), "opentelemetry-sdk": dist_version("opentelemetry-sdk"),
        "langfuse": dist_version("langfuse"),
    }
    result: dict[str, Any] = {
        "meta": meta,
        "loops": {"number": number, "repeat": repeat, "prompt_number": number // 2, "prompt_rounds": rounds},
        "span": span_cost(number, repeat),
    }
    with contextlib.ExitStack() as stack:
        sdks = {"after": ROOT / "sdk"}
        if args.against:
            before_sdk, source = stack.enter_context(_sdk_at(args.against))
            sdks = {"before": before_sdk, "after": ROOT / "sdk"}
            meta["before"] = {"rev": args.against, "source": source}
        measured = prompt_cost(number // 2, rounds, sdks)
    after = measured["after"]
    result["prompt"] = {
        **after,
        "cached_prompt": after["cases"]["b"],
        "cached_prompt_and_compile": after["cases"]["compile"],
    }
    if "before" in measured:
        result["before"] = measured["before"]
        result["added"] = _added(measured["before"], after)
    meta["finished"] = _now()
    meta["load_average_after"] = os.getloadavg()
    text = json.dumps(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
