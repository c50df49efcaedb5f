"""``promptstamp-relay``: serve | replay | check-config | demo | labels | dev."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from .config import Config, ConfigError, LoadedConfig, load
from .counters import count
from .errors import ListenError, MetricsListenError, ReceiverListenError

__all__ = ["main"]

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_INPUT = 3
EXIT_LOST = 4
EXIT_CHECK_FAILED = 1  # replay --check
EXIT_LISTEN_IN_USE = 5
EXIT_METRICS_IN_USE = 6
EXIT_LISTEN_HOST = 7
EXIT_UPSTREAM = 8

EXIT_CODES = """exit codes:
  0  done; serve: stopped, everything accepted was delivered (or kept on disk)
  1  replay --check: a generation ended unresolved, ran outside its prompt's scope, or a fetch
     record was invalid;
     demo: a generation did not arrive linked
  2  invalid configuration or command line
  3  an input cannot be read or an output cannot be written (replay, serve --record)
  4  serve: items accepted but not delivered by the shutdown deadline (logged)
  5  serve: the OTLP listen port is in use (or needs privileges)
  6  serve: the metrics port is in use (or needs privileges)
  7  serve: a listen host does not resolve or is not an address of this machine
  8  the upstream check failed (serve's default with Langfuse, --check-upstream)
  9-20  labels: see promptstamp-relay labels --help
"""

REPLAY_EXIT_CODES = """exit codes:
  0  done (also when stdout is closed early, as by | head)
  1  --check: a generation ended unresolved, ran outside its prompt's scope, or a fetch record
     was invalid
  2  invalid configuration or arguments
  3  an input cannot be read, is not OTLP/JSON, or the output cannot be written
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="promptstamp-relay",
        description="Stamp LLM generations with the Langfuse prompt version that produced them.",
        epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the OTLP/gRPC relay", epilog=EXIT_CODES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--config", help="YAML config file")
    s.add_argument("--listen", help="HOST:PORT of the OTLP/gRPC receiver (env PROMPTSTAMP_LISTEN)")
    s.add_argument("--hold-seconds", type=float, help="hold window for unresolved generations")
    s.add_argument("--record", metavar="FILE", help="record every incoming request as OTLP/JSON lines")
    s.add_argument("--record-mode", choices=("append", "truncate"),
                   help="what --record does to an existing FILE: append to it (default) or empty it first")
    s.add_argument("--http-listen", help="HOST:PORT of the OTLP/HTTP receiver (default 127.0.0.1:4318; "
                   "'' turns it off)")
    s.add_argument("--metrics-listen", help="HOST:PORT for Prometheus /metrics")
    s.add_argument("--store", help="memory or redis://HOST:PORT/DB (env PROMPTSTAMP_STORE)")
    s.add_argument("--queue-dir", help="persistent queue directory")
    s.add_argument("--check-upstream", nargs="?", const="on", choices=("on", "warn", "off"),
                   help="one authenticated call upstream before accepting traffic (default: on with the "
                        "Langfuse exporter, off otherwise). on: refuse to start on failure (exit 8); "
                        "warn: start anyway with a loud warning; off: skip")

    r = sub.add_parser(
        "replay", help="run recordings through the processor, deterministically",
        description="Run OTLP/JSON recordings (serve --record, the Collector's file exporter) through "
                    "the same processor as serve, on a clock taken from the records' own timestamps. "
                    "Writes the stamped trace requests as OTLP/JSON lines; metrics lines pass through.",
        epilog=REPLAY_EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("input", nargs="+",
                   help="recordings: OTLP/JSON lines, plain, gzip or zstd (recognised by content); "
                        "'-' for stdin; several files (one signal each, as the Collector's file "
                        "exporter writes) are merged by timestamp, ties in the order given")
    r.add_argument("--output", "-o", metavar="FILE",
                   help="write the output here, atomically: a temporary file renamed when done "
                        "(default stdout)")
    r.add_argument("--config", help="YAML config file (hold window, generation rules, prompt names); "
                                    "exporter settings and Langfuse keys are not needed")
    r.add_argument("--hold-seconds", type=float, metavar="S",
                   help="how long a generation without a fetch record in its trace waits for one, "
                        "in recording time (default: the config's hold.seconds, 2)")
    r.add_argument("--check", action="store_true",
                   help="exit 1 if any generation ends unresolved or any fetch record is invalid; "
                        "print a summary to stderr")
    r.add_argument("--summary", action="store_true",
                   help="print the --check summary to stderr, without changing the exit code")

    k = sub.add_parser("check-config", help="validate a config file and report every error",
                       epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    k.add_argument("config", nargs="?", help="YAML config file (default: built-in defaults + env)")
    k.add_argument("--explain", action="store_true",
                   help="print every effective setting and where it came from (default, file, "
                        "environment, flag); secrets only as set / empty")
    k.add_argument("--check-upstream", action="store_true",
                   help="also make one authenticated call to the upstream (exit 8 if it fails)")

    from .labels_cli import add_parser as add_labels_parser

    add_labels_parser(sub)  # labels show | compare | rollback | promote

    d = sub.add_parser("demo", help="the order-status demo, end to end, on loopback")
    d.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)

    # Its options are promptstamp.testing's (``promptstamp-relay dev --help``), parsed there: the
    # parser of every other command never imports the SDK.
    sub.add_parser("dev", add_help=False,
                   help="a local Langfuse, fake OpenAI and Anthropic APIs and the relay, wired together "
                        "on loopback, for an app in any language (dev --help)")
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("promptstamp")
    except PackageNotFoundError:
        return "(not installed)"


def _items(n: int) -> str:
    return count(n, "item")


def _load_explained(path: str | None, overrides: dict[str, Any]) -> LoadedConfig:
    try:
        return load(path, overrides=overrides)
    except ConfigError as e:
        print(f"promptstamp-relay: {e}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG) from None


def _load(path: str | None, overrides: dict[str, Any]) -> Config:
    loaded = _load_explained(path, overrides)
    for note in loaded.notes:
        logging.getLogger("promptstamp_relay").warning("%s", note)
    return loaded.config


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import explain

    loaded = _load_explained(args.config, {})
    cfg = loaded.config
    for note in loaded.notes:
        print(f"note: {note}")
    if args.explain:
        rows = explain(loaded)
        width = max(len(key) for key, _, _ in rows)
        for key, value, source in rows:
            print(f"{key:<{width}}  {value}  ({source})")
    print(f"configuration OK: listen {cfg.listen}, exporter {cfg.exporter_type()}, "
          f"hold {cfg.hold.seconds}s, store {cfg.store.backend}")
    if args.check_upstream:
        from .ops.startup import check_upstream

        results = check_upstream(cfg)
        if not results:
            print(f"upstream: nothing to check (exporter {cfg.exporter_type()})")
        for r in results:
            print(f"upstream {'OK' if r.ok else 'FAILED'}: {r.message}")
        if not all(r.ok for r in results):
            return EXIT_UPSTREAM
    return EXIT_OK


def cmd_replay(args: argparse.Namespace) -> int:
    from . import replay as rp
    from .server import check_protobuf_backend

    check_protobuf_backend()
    if args.input.count("-") > 1:
        print("promptstamp-relay: '-' (stdin) can be given once", file=sys.stderr)
        return EXIT_CONFIG
    # Replay exports nothing: exporter settings (Langfuse keys among them) are not needed.
    cfg = _load(args.config, {"hold.seconds": args.hold_seconds, **rp.REPLAY_OVERRIDES})
    if cfg.resolution.api.enabled:
        logging.getLogger("promptstamp_relay").warning(
            "replay ignores resolution.api: it is deterministic and asks no API")
    if args.output:
        problem = rp.output_directory_problem(args.output)
        if problem:
            print(f"promptstamp-relay: {problem}", file=sys.stderr)
            return EXIT_INPUT
    try:
        run = rp.run_files(cfg, args.input, args.output, find_mistyped=args.check or args.summary)
        summary = run.summary
    except rp.InputError as e:
        print(f"promptstamp-relay: {e}", file=sys.stderr)
        return EXIT_INPUT
    except BrokenPipeError:
        # stdout closed by the reader (| head): stop quietly. Later flushes at exit would raise
        # again, so stdout goes to /dev/null from here on.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    if args.check or args.summary:
        print(rp.format_summary(summary, run.mistyped, run.outside), file=sys.stderr, end="")
        if args.check and (summary.unresolved or summary.invalid_fetch_records or run.outside):
            return EXIT_CHECK_FAILED
        return EXIT_OK
    for bad in summary.invalid_fetch_records:
        print(f"promptstamp-relay: {bad.source}:{bad.line}: fetch-log record ignored: {bad.reason}",
              file=sys.stderr)
    print(rp.one_line_summary(summary, run.processor.stats), file=sys.stderr)
    return EXIT_OK


def _fail(message: str, code: int) -> int:
    print(f"promptstamp-relay: {message}", file=sys.stderr)
    return code


def _preflight(cfg: Config) -> int | None:
    """The listen addresses, one line and a distinct exit code each; None when all is well."""
    from .ops.startup import probe_listen
    from .receive.settings import effective_listen

    listeners = [(cfg.listen, "the OTLP receiver", "--listen / PROMPTSTAMP_LISTEN", EXIT_LISTEN_IN_USE)]
    http_listen = effective_listen(cfg.receivers.http, cfg.listen)
    if http_listen:
        listeners.append((http_listen, "the OTLP/HTTP receiver", "--http-listen / receivers.http.listen",
                          EXIT_LISTEN_IN_USE))
    if cfg.metrics_listen:
        listeners.append((cfg.metrics_listen, "the metrics endpoint",
                          "--metrics-listen / PROMPTSTAMP_METRICS_LISTEN", EXIT_METRICS_IN_USE))
    for hostport, what, flag, in_use in listeners:
        problem = probe_listen(hostport, what, flag)
        if problem is not None:
            return _fail(problem.message, in_use if problem.kind == "port" else EXIT_LISTEN_HOST)
    return None


def _check_upstream(cfg: Config, mode: str | None) -> tuple[int | None, bool | None]:
    """(exit code or None, upstream_ok or None when not checked) for ``--check-upstream``."""
    if mode is None:
        mode = "on" if cfg.exporter_type() == "langfuse" else "off"
    if mode == "off":
        return None, None
    from .ops.startup import check_upstream

    log = logging.getLogger("promptstamp_relay")
    results = check_upstream(cfg)
    for r in results:
        if r.ok:
            log.info("upstream check: %s", r.message)
    failed = [r for r in results if not r.ok]
    if not failed:
        return None, True
    if mode == "on":
        for r in failed:
            print(f"promptstamp-relay: upstream check failed: {r.message}", file=sys.stderr)
        print("promptstamp-relay: not starting (--check-upstream=warn starts anyway, =off skips the check)",
              file=sys.stderr)
        return EXIT_UPSTREAM, False
    for r in failed:
        log.warning("!!! upstream check FAILED, starting anyway (--check-upstream=warn): %s; "
                    "exports will fail until this is fixed", r.message)
    return None, False


def _truncate_record(cfg: Config) -> int | None:
    if not cfg.record or cfg.record_mode != "truncate":
        return None
    try:
        with open(cfg.record, "w", encoding="utf-8"):
            pass
    except OSError as e:
        return _fail(f"cannot write --record file {cfg.record}: {e.strerror}", EXIT_INPUT)
    return None


#: Start-up failures by exception type, most specific first: the exit code for each. A failure
#: of no type here is a start-up problem of another kind (exit 2, its message).
START_FAILURES: tuple[tuple[type[BaseException], int], ...] = (
    (MetricsListenError, EXIT_METRICS_IN_USE),
    (ReceiverListenError, EXIT_LISTEN_IN_USE),
    (ConfigError, EXIT_CONFIG),
)


def start_failure_code(e: BaseException) -> int:
    return next((code for kind, code in START_FAILURES if isinstance(e, kind)), EXIT_CONFIG)


def _start_failure(e: BaseException) -> int:
    """A failure to start (a bind that slipped past the probes, in a race): one line, its code."""
    if isinstance(e, ListenError):
        return _fail(f"{e}; {e.hint}" if e.hint else str(e), start_failure_code(e))
    return _fail(f"cannot start: {e}", start_failure_code(e))


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import store_settings
    from .server import RelayServer

    overrides: dict[str, Any] = {
        "listen": args.listen,
        "hold.seconds": args.hold_seconds,
        "record": args.record,
        "record_mode": args.record_mode,
        "metrics_listen": args.metrics_listen,
        "receivers.http.listen": args.http_listen,
        "queue.directory": args.queue_dir,
    }
    if args.store:
        try:
            overrides.update(store_settings(args.store, "--store"))
        except ValueError as e:
            return _fail(str(e), EXIT_CONFIG)
    cfg = _load(args.config, overrides)
    log = logging.getLogger("promptstamp_relay")
    code = _preflight(cfg)
    if code is not None:
        return code
    code, upstream_ok = _check_upstream(cfg, args.check_upstream)
    if code is not None:
        return code
    code = _truncate_record(cfg)
    if code is not None:
        return code
    try:
        relay = RelayServer(cfg)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        return _start_failure(e)
    if upstream_ok is not None:
        relay.upstream_ok = upstream_ok  # what /readyz reports
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: shutting down", signum)
        stop.set()

    # Before start(): a SIGTERM from the moment data can be accepted means a graceful drain.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        relay.start()
    except (OSError, RuntimeError) as e:
        relay.stop()
        return _start_failure(e)
    exporter = cfg.exporter_type()
    if exporter == "debug" and not cfg.exporter.type:
        log.warning("no upstream configured (set LANGFUSE_BASE_URL, LANGFUSE_PUBLIC_KEY and "
                    "LANGFUSE_SECRET_KEY, or exporter in the config): printing stamped spans")
    # The one line scripts and tests wait for.
    print(f"promptstamp-relay listening on {relay.address} (OTLP/gRPC)"
          + (f", {relay.http_address} (OTLP/HTTP)" if relay.http_address else "")
          + f", exporter {exporter}"
          + (f", metrics on {cfg.metrics_listen.rpartition(':')[0]}:{relay.metrics_port}"
             if relay.metrics_port else ""),
          flush=True)
    while not stop.wait(0.2):
        pass
    lost = relay.stop()
    return _shutdown_report(lost, list(relay.queues()), cfg)


def _shutdown_report(lost: int, queues: Sequence[Any], cfg: Config) -> int:
    """The last lines: what was and was not delivered, never "nothing lost" when something was."""
    log = logging.getLogger("promptstamp_relay")
    failed = sum(q.stats.failed_permanent_items for q in queues)
    rejected = sum(q.stats.rejected_items for q in queues)
    kept = sum(q.stats.kept_items for q in queues)
    during = []
    if failed:
        during.append(f"{_items(failed)} not delivered (permanent errors or retries used up)")
    if rejected:
        during.append(f"{_items(rejected)} rejected by the upstream (partial success)")
    if lost:
        log.error("shutdown: %s could not be delivered", _items(lost))
    if kept:
        log.warning("shutdown: %s kept in the persistent queue %s; the next start sends them",
                    _items(kept), cfg.queue.directory)
    if during:
        log.warning("shutdown complete; during the run %s (logged above)", "; ".join(during))
    elif not lost:
        log.info("shutdown complete, nothing lost" + (" (the kept items are on disk)" if kept else ""))
    return EXIT_LOST if lost else EXIT_OK


def cmd_labels(args: argparse.Namespace) -> int:
    from .labels_cli import run

    return run(args)


def cmd_demo(args: argparse.Namespace) -> int:
    import importlib

    try:
        demo = importlib.import_module("promptstamp_relay.demo.run")
    except ModuleNotFoundError:
        print("promptstamp-relay: the demo is not available in this build", file=sys.stderr)
        return EXIT_CONFIG
    rc: int = demo.run_demo()
    return rc


def cmd_dev(args: argparse.Namespace, rest: Sequence[str]) -> int:
    from promptstamp.testing._dev import main as dev_main

    return dev_main(rest, prog="promptstamp-relay dev", verbose=args.verbose)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.command != "dev":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
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
        "labels": cmd_labels,
    }
    if args.command == "dev":
        return cmd_dev(args, rest)
    return commands[args.command](args)


if __name__ == "__main__":
    raise SystemExit(main())
