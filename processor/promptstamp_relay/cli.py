"""``promptstamp-relay``: serve | replay | check-config | demo."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import Config, ConfigError, load_config

__all__ = ["main"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_LOST = 4


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="promptstamp-relay",
        description="Stamp LLM generations with the Langfuse prompt version that produced them.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the OTLP/gRPC relay")
    s.add_argument("--config", help="YAML config file")
    s.add_argument("--listen", help="HOST:PORT of the OTLP/gRPC receiver (env PROMPTSTAMP_LISTEN)")
    s.add_argument("--hold-seconds", type=float, help="hold window for unresolved generations")
    s.add_argument("--record", metavar="FILE", help="record every incoming request as OTLP/JSON lines")
    s.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics")
    s.add_argument("--store", help="memory or redis://HOST:PORT/DB (env PROMPTSTAMP_STORE)")
    s.add_argument("--queue-dir", help="persistent queue directory")

    r = sub.add_parser("replay", help="run a recording through the processor, deterministically")
    r.add_argument("input", help="OTLP/JSON lines recording ('-' for stdin)")
    r.add_argument("--output", "-o", help="write stamped trace requests here (default stdout)")
    r.add_argument("--config", help="YAML config file (hold window, rules, prompt names)")
    r.add_argument("--hold-seconds", type=float)

    k = sub.add_parser("check-config", help="validate a config file and report every error")
    k.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults + env)")

    d = sub.add_parser("demo", help="the order-status demo, end to end, on loopback")
    d.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return p


def _load(path: str | None, overrides: dict[str, Any]) -> Config:
    try:
        return load_config(path, overrides=overrides)
    except ConfigError as e:
        print(f"promptstamp-relay: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config, {})
    print(f"configuration OK: listen {cfg.listen}, exporter {cfg.exporter_type()}, "
          f"hold {cfg.hold.seconds}s, store {cfg.store.backend}")
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from .otlpjson import OtlpJsonError, encode_line, read_lines
    from .replay import replay_requests
    from .server import build_processor, check_protobuf_backend

    check_protobuf_backend()
    cfg = _load(args.config, {"hold.seconds": args.hold_seconds})
    if cfg.resolution.api.enabled:
        logging.getLogger("promptstamp_relay").warning(
            "replay ignores resolution.api: it is deterministic and asks no API")
    processor = build_processor(cfg, early_release=False)
    try:
        src = sys.stdin if args.input == "-" else open(args.input, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        print(f"promptstamp-relay: cannot read {args.input}: {e.strerror}", file=sys.stderr)
        return EXIT_INPUT
    out = sys.stdout if not args.output else open(args.output, "w", encoding="utf-8")  # noqa: SIM115

    def emit(req: ExportTraceServiceRequest) -> None:
        out.write(encode_line(req) + "\n")

    try:
        summary = replay_requests(read_lines(src), processor, emit)
    except OtlpJsonError as e:
        print(f"promptstamp-relay: {args.input}: {e}", file=sys.stderr)
        return EXIT_INPUT
    finally:
        if src is not sys.stdin:
            src.close()
        if out is not sys.stdout:
            out.close()
    for n, why in summary.invalid_fetch_records:
        print(f"promptstamp-relay: {args.input}: line {n}: fetch-log record ignored: {why}",
              file=sys.stderr)
    st = processor.stats
    tiers = ", ".join(f"{t}={n}" for t, n in sorted(st.stamped.items())) or "none"
    print(f"replayed {summary.lines} lines: {st.spans_received} spans, "
          f"{sum(st.stamped.values())} generations stamped ({tiers}), "
          f"{st.fetch_records} fetch-log records", file=sys.stderr)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from .server import RelayServer

    overrides: dict[str, Any] = {
        "listen": args.listen,
        "hold.seconds": args.hold_seconds,
        "record": args.record,
        "metrics_listen": args.metrics_listen,
        "queue.directory": args.queue_dir,
    }
    if args.store:
        if args.store == "memory":
            overrides["store.backend"] = "memory"
        else:
            overrides["store.backend"] = "redis"
            overrides["store.url"] = args.store
    cfg = _load(args.config, overrides)
    log = logging.getLogger("promptstamp_relay")
    try:
        relay = RelayServer(cfg)
    except (OSError, ValueError, ImportError) as e:
        print(f"promptstamp-relay: cannot start: {e}", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    # Before start(): a SIGTERM from the moment data can be accepted means a graceful drain.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    relay.start()
    exporter = cfg.exporter_type()
    if exporter == "debug":
        log.warning("no upstream configured (set LANGFUSE_BASE_URL, LANGFUSE_PUBLIC_KEY and "
                    "LANGFUSE_SECRET_KEY, or exporter in the config): printing stamped spans")
    # The one line scripts and tests wait for.
    print(f"promptstamp-relay listening on {relay.address} (OTLP/gRPC), exporter {exporter}"
          + (f", metrics on {cfg.metrics_listen.rpartition(':')[0]}:{relay.metrics_port}"
             if relay.metrics_port else ""),
          flush=True)
    while not stop.wait(0.2):
        pass
    lost = relay.stop()
    if lost:
        log.error("shutdown: %d items could not be delivered", lost)
        return EXIT_LOST
    kept = sum(q.stats.kept_items for q in relay.queues())
    if kept:
        log.warning("shutdown: %d items kept in the persistent queue %s; the next start sends them",
                    kept, cfg.queue.directory)
    log.info("shutdown complete, nothing lost")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("promptstamp_relay.demo")
    except ModuleNotFoundError:
        print("promptstamp-relay: the demo is not available in this build", file=sys.stderr)
        return EXIT_CONFIG
    rc: int = demo.run_demo()
    return rc


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    commands = {
        "serve": cmd_serve,
        "replay": cmd_replay,
        "check-config": cmd_check_config,
        "demo": cmd_demo,
    }
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
