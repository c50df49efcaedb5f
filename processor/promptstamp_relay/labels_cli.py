"""``promptstamp-relay labels show | compare | rollback | promote`` (docs/rollouts.md).

The timeline comes from a running relay (``--relay http://HOST:PORT``, default the local
metrics listener of the config), or straight from a persistent queue directory or a Redis URL.
Label moves go through Langfuse's public API with the tenant's keys (``exporter.langfuse`` /
``LANGFUSE_*``, or ``auth.tenants.<tenant>``): plan, confirmation (unless ``--yes``),
``PATCH /api/public/v2/prompts/{name}/versions/{v}`` with ``{"newLabels": [LABEL]}``, then a
``GET ?label=LABEL`` to verify. Nothing is changed without confirmation, and each failure has
its own exit code (:data:`EXIT_CODES`).
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from . import hostport
from .ops.figures import change_line, error_rate, ms, per_generation
from .rollouts._model import previous_version, render_prompt

__all__ = ["EXIT_CODES", "add_parser", "run"]

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_TIMELINE = 9
EXIT_NOT_CONFIRMED = 10
EXIT_LANGFUSE_AUTH = 11
EXIT_LANGFUSE_NOT_FOUND = 12
EXIT_LANGFUSE_NETWORK = 13
EXIT_LANGFUSE_ERROR = 14
EXIT_NOT_VERIFIED = 15
EXIT_REFUSED = 16

EXIT_CODES = """exit codes:
  0   done; rollback/promote: the label was moved and Langfuse confirmed it (or it was there already)
  2   invalid command line or configuration (e.g. no Langfuse keys for the tenant)
  9   the timeline cannot be read: relay unreachable or refusing the credentials, or nothing
      known of NAME / LABEL
  10  not confirmed: nothing was changed
  11  Langfuse refused the keys (401/403): nothing was changed
  12  Langfuse does not know the prompt, label or version (404): nothing was changed
  13  Langfuse could not be reached (network failure or timeout); after a PATCH was sent the
      label may or may not have moved: check with `labels show` or Langfuse's UI
  14  Langfuse answered another error (400, 5xx)
  15  the move was sent but not verified: GET ?label=LABEL answers another version
  16  refused: promote of a version that served no generations under --from (--force
      overrides), rollback with no earlier version on the timeline (give --to), or a rollout
      to another version while one is running
  17  rollout: a guard was breached; the new version is back to 0 % and the label was not moved
  18  rollout: stopped, because the label was moved outside it or the plan was aborted
  19  rollout: another controller changed the plan first; this one stopped without acting
  20  rollout: interrupted (Ctrl-C); the plan stays at its current step: run again to resume
"""

TOKEN_ENV = "PROMPTSTAMP_RELAY_TOKEN"
_TIMEOUT = 10.0


class Failure(Exception):
    """A precise message and its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class NoTimeline(Failure):
    """The timeline was read and knows nothing of the prompt or label (a Failure with EXIT_TIMELINE)."""


# -- arguments ------------------------------------------------------------------------------------
def add_parser(sub: Any) -> None:
    """The ``labels`` subcommand group on ``sub`` (an argparse subparsers object)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("labels", help="prompt rollouts: the label timeline, compare, rollback, promote",
                       description="The label timeline the relay keeps (which version each label served, "
                                   "where and when, with what results), and label moves in Langfuse.",
                       epilog=EXIT_CODES, formatter_class=fmt)
    cmds = p.add_subparsers(dest="labels_command", required=True)

    def common(c: argparse.ArgumentParser, *, langfuse: bool = False) -> None:
        c.add_argument("--relay", metavar="SOURCE",
                       help="where the timeline is: http://HOST:PORT of a relay's metrics listener "
                            "(default: metrics_listen of the config), a persistent queue directory, or "
                            "a redis:// URL (the shared store)")
        c.add_argument("--config", help="the relay's YAML config (metrics_listen, tenants, Langfuse keys)")
        c.add_argument("--tenant", default=None,
                       help="whose prompts (default: 'default'; with auth, the tenant the credentials name)")
        c.add_argument("--token", help=f"bearer token for the relay when auth is on (env {TOKEN_ENV})")
        if langfuse:
            c.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")

    s = cmds.add_parser("show", help="the timeline as a table (or JSON)", epilog=EXIT_CODES,
                        formatter_class=fmt)
    s.add_argument("name", help="the Langfuse prompt name")
    s.add_argument("--label", help="only this label")
    s.add_argument("--json", action="store_true", help="the timeline JSON, as the relay serves it")
    common(s)

    c = cmds.add_parser("compare", help="one row per version that served LABEL, and the change between them",
                        epilog=EXIT_CODES, formatter_class=fmt)
    c.add_argument("name")
    c.add_argument("--label", required=True)
    common(c)

    r = cmds.add_parser("rollback",
                        help="move LABEL back to the version that served it before (Langfuse API)",
                        epilog=EXIT_CODES, formatter_class=fmt)
    r.add_argument("name")
    r.add_argument("label")
    r.add_argument("--to", type=int, metavar="VERSION",
                   help="the version to move LABEL to (default: the one that served it before the "
                        "current one)")
    common(r, langfuse=True)

    m = cmds.add_parser("promote", help="move --to onto the version --from points to (Langfuse API)",
                        epilog=EXIT_CODES, formatter_class=fmt)
    m.add_argument("name")
    m.add_argument("--from", dest="from_label", required=True, metavar="LABEL")
    m.add_argument("--to", dest="to_label", required=True, metavar="LABEL")
    m.add_argument("--force", action="store_true",
                   help="move even when the version served no generations under --from")
    m.add_argument("--guarded", action="store_true",
                   help="move it by a guarded rollout (see `labels rollout`) instead of at once")
    _rollout_options(m)
    common(m, langfuse=True)

    g = cmds.add_parser("rollout", help="move LABEL to --to step by step, judged against the current "
                                         "version on the same traffic, rolled back by itself when worse",
                        description="A guarded rollout (docs/rollouts.md): apps asking for LABEL get --to "
                                    "for each step's share of subjects; each step is judged on the relay's "
                                    "per-version data and the guards; a breach puts the share back to 0, "
                                    "success moves the label. The plan lives in Langfuse: running the "
                                    "command again resumes it.",
                        epilog=EXIT_CODES, formatter_class=fmt)
    g.add_argument("name")
    g.add_argument("--label", required=True)
    g.add_argument("--to", type=int, metavar="VERSION", help="the version to roll out (to start one)")
    what = g.add_mutually_exclusive_group()
    what.add_argument("--status", action="store_true", help="the plan and its history; changes nothing")
    what.add_argument("--abort", action="store_true",
                      help="stop the running rollout: the new version's share goes to 0, the label stays")
    g.add_argument("--json", action="store_true", help="with --status: the plan's history as JSON")
    _rollout_options(g)
    common(g, langfuse=True)


def _rollout_options(p: argparse.ArgumentParser) -> None:
    from .rollouts.controller import DEFAULT_MIN_GENERATIONS, DEFAULT_STEP_MINUTES, DEFAULT_STEPS

    p.add_argument("--steps", default=",".join(f"{s:g}" for s in DEFAULT_STEPS), metavar="P,P,...",
                   help="the new version's share of subjects at each step, in %%, ending at 100 "
                        "(default %(default)s)")
    p.add_argument("--step-minutes", type=float, default=DEFAULT_STEP_MINUTES, metavar="M",
                   help="the least time each step runs before it is judged (default %(default)g)")
    p.add_argument("--min-generations", type=int, default=DEFAULT_MIN_GENERATIONS, metavar="N",
                   help="generations each version needs in a step's window before it is judged "
                        "(default %(default)s)")
    p.add_argument("--guard", action="append", default=None, metavar="METRIC:+THRESHOLD",
                   help="breach when the new version is worse by more than THRESHOLD with confidence; "
                        "repeatable (default: error_rate:+2pp, p95_ms:+25%%, output_tokens:+30%%; "
                        "see docs/rollout-statistics.md)")
    p.add_argument("--confidence", type=float, default=0.95,
                   help="1 - the false-alarm rate allowed over the whole rollout (default %(default)s)")
    p.add_argument("--poll-seconds", type=float, default=15.0, help=argparse.SUPPRESS)


# -- the configuration ----------------------------------------------------------------------------
@dataclass
class _Context:
    cfg: Any  # Config
    tenant: str
    token: str | None
    out: Callable[[str], None]
    ask: Callable[[str], str | None]


def _config(path: str | None) -> Any:
    from .config import ConfigError, load

    try:
        return load(path, overrides={}).config
    except ConfigError as e:
        raise Failure(str(e), EXIT_USAGE) from None


def _langfuse_keys(ctx: _Context) -> tuple[str, str, str]:
    from .export import DebugExporter
    from .export.routing import TenantRouter

    router = TenantRouter(ctx.cfg, DebugExporter())
    try:
        creds = router.api_credentials(ctx.tenant)
    finally:
        router.shutdown()
    if creds is None or not all(creds):
        raise Failure(f"no Langfuse keys for tenant {ctx.tenant!r}: set LANGFUSE_BASE_URL, "
                      f"LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (or exporter.langfuse / "
                      f"auth.tenants.{ctx.tenant}.langfuse_* in --config)", EXIT_USAGE)
    return creds


# -- reading the timeline ------------------------------------------------------------------------
def _relay_url(ctx: _Context, source: str | None) -> str:
    if source:
        return source
    listen = ctx.cfg.metrics_listen
    if not listen:
        raise Failure("no --relay given and the config has no metrics_listen: say where the timeline is "
                      "(--relay http://HOST:PORT, a queue directory or a redis:// URL)", EXIT_USAGE)
    host, port = hostport.parse(listen)
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{hostport.HostPort(host, port)}"


def _relay_authorization(ctx: _Context) -> str | None:
    if ctx.token:
        return f"Bearer {ctx.token}"
    tenant = ctx.cfg.auth.tenants.get(ctx.tenant) if ctx.cfg.auth.enabled else None
    if tenant is not None and tenant.tokens:
        return f"Bearer {tenant.tokens[0]}"
    if tenant is not None and tenant.langfuse_public_key:
        pair = f"{tenant.langfuse_public_key}:{tenant.langfuse_secret_key}".encode()
        return "Basic " + base64.b64encode(pair).decode()
    return None


def read_timeline(ctx: _Context, source: str | None, name: str, label: str | None, *,
                  sketches: bool = False) -> dict[str, Any]:
    """The timeline body (as the relay serves it) for ``name``; Failure(EXIT_TIMELINE) when it
    cannot be had or knows nothing of ``name`` / ``label``. ``sketches``: with each version's
    sketches (what a guarded rollout judges)."""
    where = _relay_url(ctx, source)
    what = f"prompt {name!r}" + (f" with label {label!r}" if label else "")
    if where.startswith(("http://", "https://")):
        url = f"{where.rstrip('/')}/api/v1/prompts/{quote(name, safe='')}/timeline"
        query = ([f"label={quote(label, safe='')}"] if label else []) + (["sketches=1"] if sketches else [])
        if query:
            url += "?" + "&".join(query)
        req = urllib.request.Request(url, headers={"Accept": "application/json"})
        auth = _relay_authorization(ctx)
        if auth:
            req.add_header("Authorization", auth)
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
                body: dict[str, Any] = json.loads(resp.read())
                return body
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if e.code == 401:
                raise Failure(f"the relay at {where} refused the credentials ({detail}); pass --token or set "
                              f"{TOKEN_ENV}", EXIT_TIMELINE) from None
            if e.code == 404:
                raise NoTimeline(f"the relay at {where} has no timeline for {what} ({detail})",
                              EXIT_TIMELINE) from None
            raise Failure(f"the relay at {where} answered {e.code} ({detail})", EXIT_TIMELINE) from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise Failure(f"cannot read the timeline from {where}: {reason}", EXIT_TIMELINE) from None
    if where.startswith(("redis://", "rediss://", "unix://")):
        try:
            from .rollouts._redis import RedisTimelines

            store = RedisTimelines(where, ctx.cfg.rollouts.retention_ns)
            try:
                labels = store.read(ctx.tenant, name)
            finally:
                store.close()
        except ImportError:
            raise Failure("reading from Redis needs the redis extra (pip install 'promptstamp[redis]')",
                          EXIT_USAGE) from None
        except Exception as e:  # redis.RedisError and connection errors
            raise Failure(f"cannot read the timeline from Redis: {type(e).__name__}: {e}",
                          EXIT_TIMELINE) from None
    else:
        from .rollouts._sqlite import read_directory

        try:
            found = read_directory(where, ctx.tenant, name)
        except OSError as e:
            raise Failure(str(e), EXIT_TIMELINE) from None
        if found is None:
            raise Failure(f"{where} holds no relay timeline (not a persistent queue directory, or written "
                          "before the relay kept one)", EXIT_TIMELINE)
        labels = found
    if label:
        labels = {k: v for k, v in labels.items() if k == label}
    body = render_prompt(name, labels, with_moves=bool(ctx.cfg.rollouts.webhook_secrets), sketches=sketches)
    if not body["labels"]:
        raise NoTimeline(f"{where} has no timeline for {what} (tenant {ctx.tenant!r})", EXIT_TIMELINE)
    return body


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        data = json.loads(e.read() or b"{}")
    except (ValueError, OSError):
        return f"HTTP {e.code}"
    if isinstance(data, dict):
        return str(data.get("error") or data.get("message") or f"HTTP {e.code}")
    return f"HTTP {e.code}"


# -- Langfuse -------------------------------------------------------------------------------------
class _Langfuse:
    """The two calls the commands make, each failure as a :class:`Failure`."""

    def __init__(self, creds: tuple[str, str, str]) -> None:
        self.base, public_key, secret_key = creds
        self.base = self.base.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()

    def _call(self, method: str, path: str, body: Any = None, *, what: str, after_send: bool = False) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Authorization": self._auth, "Accept": "application/json"})
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=_TIMEOUT) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if e.code in (401, 403):
                raise Failure(f"Langfuse at {self.base} refused the keys for {what} "
                              f"(HTTP {e.code}: {detail}); nothing was changed", EXIT_LANGFUSE_AUTH) from None
            if e.code == 404:
                raise Failure(f"Langfuse at {self.base}: {what}: not found ({detail}); nothing was changed",
                              EXIT_LANGFUSE_NOT_FOUND) from None
            raise Failure(f"Langfuse at {self.base} answered HTTP {e.code} to {what}: {detail}",
                          EXIT_LANGFUSE_ERROR) from None
        except (TimeoutError, urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            tail = ("; the PATCH may or may not have been applied: check with `labels show` or in Langfuse"
                    if after_send else "; nothing was changed")
            raise Failure(f"cannot reach Langfuse at {self.base} for {what}: {reason}{tail}",
                          EXIT_LANGFUSE_NETWORK) from None
        except ValueError:
            raise Failure(f"Langfuse at {self.base} answered {what} with something that is not JSON",
                          EXIT_LANGFUSE_ERROR) from None

    def get_prompt(self, name: str, *, label: str | None = None, version: int | None = None
                   ) -> Mapping[str, Any] | None:
        """``GET`` one version by label or number; None on 404."""
        query = f"label={quote(label, safe='')}" if label is not None else f"version={version}"
        try:
            got = self._call("GET", f"/api/public/v2/prompts/{quote(name, safe='')}?{query}",
                             what=f"GET prompt {name!r} {query}")
        except Failure as e:
            if e.code == EXIT_LANGFUSE_NOT_FOUND:
                return None
            raise
        if not isinstance(got, Mapping):
            raise Failure(f"Langfuse at {self.base} answered GET prompt {name!r} with no object",
                          EXIT_LANGFUSE_ERROR)
        return got

    def create_prompt(self, body: Mapping[str, Any]) -> Mapping[str, Any]:
        got = self._call("POST", "/api/public/v2/prompts", body, what=f"POST prompt {body.get('name')!r}",
                         after_send=True)
        if not isinstance(got, Mapping) or not isinstance(got.get("version"), int):
            raise Failure(f"Langfuse at {self.base} answered POST prompt with no version",
                          EXIT_LANGFUSE_ERROR)
        return got

    def move_label(self, name: str, version: int, label: str) -> None:
        self.move(name, version, label)

    def version_of(self, name: str, label: str) -> int:
        path = f"/api/public/v2/prompts/{quote(name, safe='')}?label={quote(label, safe='')}"
        got = self._call("GET", path, what=f"GET prompt {name!r} label {label!r}")
        return int(got["version"])

    def move(self, name: str, version: int, label: str) -> None:
        self._call("PATCH", f"/api/public/v2/prompts/{quote(name, safe='')}/versions/{version}",
                   {"newLabels": [label]}, what=f"PATCH prompt {name!r} version {version}", after_send=True)


# -- output ---------------------------------------------------------------------------------------
def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _show(body: Mapping[str, Any]) -> list[str]:
    lines = []
    for label, tl in body["labels"].items():
        lines.append(f"{body['prompt']}  label {label}  current v{tl['current']}")
        rows = [["version", "first served", "last served", "fetches", "generations", "errors", "p50 ms",
                 "p95 ms", "input tokens", "output tokens"]]
        for v in tl["versions"]:
            rows.append([f"v{v['version']}", v["first_served"] or "-", v["last_served"] or "-",
                         str(v["fetches"]),
                         str(v["generations"]), str(v["errors"]), ms(v["duration_p50_ms"]),
                         ms(v["duration_p95_ms"]), str(v["input_tokens"]), str(v["output_tokens"])])
        lines += ["  " + line for line in _table(rows)]
        if tl["instances"]:
            lines.append("  instances (last hand-out):")
            lines += [f"    {i['instance']}" + (f" ({i['service']})" if i["service"] else "")
                      + f"  v{i['version']}  {i['last_served']}" for i in tl["instances"]]
        if tl["lagging"]:
            lines.append("  lagging (still handing out an older version):")
            lines += [f"    {i['instance']}" + (f" ({i['service']})" if i["service"] else "")
                      + f"  v{i['version']}  {i['behind_seconds']:.1f} s behind" for i in tl["lagging"]]
        if tl.get("moves"):
            lines.append("  label moves (Langfuse webhooks):")
            lines += [f"    v{m['version']}  {m['at']}" for m in tl["moves"]]
        lines.append("")
    return lines


def _compare(body: Mapping[str, Any], label: str) -> list[str]:
    tl = body["labels"][label]
    rows = [["version", "window", "generations", "error rate", "p50 ms", "p95 ms", "input tok/gen",
             "output tok/gen"]]
    for v in tl["versions"]:
        rate, tin, tout = error_rate(v), per_generation(v, "input_tokens"), per_generation(v, "output_tokens")
        rows.append([f"v{v['version']}", f"{v['first_served'] or '-'} .. {v['last_served'] or '-'}",
                     str(v["generations"]), "-" if rate is None else f"{rate * 100:.1f} %",
                     ms(v["duration_p50_ms"]), ms(v["duration_p95_ms"]),
                     "-" if tin is None else f"{tin:.0f}", "-" if tout is None else f"{tout:.0f}"])
    lines = [f"{body['prompt']}  label {label}  current v{tl['current']}", *["  " + r for r in _table(rows)]]
    versions = tl["versions"]
    if len(versions) > 1:
        lines.append("  change from each version to the next:")
    lines += ["    " + change_line(a, b) for a, b in itertools.pairwise(versions)]
    return lines


def _describe(v: Mapping[str, Any] | None) -> str:
    if v is None:
        return "the relay has not seen it serve this label"
    rate = error_rate(v)
    return (f"last served {v['last_served'] or '-'}, {v['generations']} generations, "
            f"{'-' if rate is None else f'{rate * 100:.1f} %'} errors, p50 {ms(v['duration_p50_ms'])} ms, "
            f"p95 {ms(v['duration_p95_ms'])} ms")


def _find(label: Mapping[str, Any] | None, version: int) -> Mapping[str, Any] | None:
    if label is None:
        return None
    return next((v for v in label["versions"] if v["version"] == version), None)


def _confirm(ctx: _Context, args: argparse.Namespace, question: str) -> None:
    if args.yes:
        return
    answer = ctx.ask(f"{question} [y/N] ")
    if (answer or "").strip().lower() not in ("y", "yes"):
        raise Failure("not confirmed: nothing was changed", EXIT_NOT_CONFIRMED)


def _move(ctx: _Context, lf: _Langfuse, name: str, label: str, target: int) -> None:
    """PATCH, then verify with GET ?label=."""
    lf.move(name, target, label)
    now = lf.version_of(name, label)
    if now != target:
        raise Failure(f"sent the move of {label} to v{target}, but Langfuse now answers v{now} for "
                      f"label {label}: not verified (another change at the same time?)", EXIT_NOT_VERIFIED)
    ctx.out(f"done: {name} label {label} -> v{target} (verified with GET ?label={label})")


# -- the commands ---------------------------------------------------------------------------------
def _cmd_show(ctx: _Context, args: argparse.Namespace) -> int:
    body = read_timeline(ctx, args.relay, args.name, args.label)
    if args.json:
        ctx.out(json.dumps(body, indent=2))
    else:
        for line in _show(body):
            ctx.out(line)
    return EXIT_OK


def _cmd_compare(ctx: _Context, args: argparse.Namespace) -> int:
    body = read_timeline(ctx, args.relay, args.name, args.label)
    for line in _compare(body, args.label):
        ctx.out(line)
    return EXIT_OK


def _cmd_rollback(ctx: _Context, args: argparse.Namespace) -> int:
    lf = _Langfuse(_langfuse_keys(ctx))
    body = read_timeline(ctx, args.relay, args.name, args.label)
    tl = body["labels"][args.label]
    target = args.to if args.to is not None else previous_version(tl)
    if target is None:
        raise Failure(f"the timeline shows no version that served {args.label} before v{tl['current']}: "
                      "give --to VERSION", EXIT_REFUSED)
    now = lf.version_of(args.name, args.label)
    ctx.out(f"plan: {args.name} label {args.label}: v{now} -> v{target}")
    ctx.out(f"  v{now}: {_describe(_find(tl, now))}")
    ctx.out(f"  v{target}: {_describe(_find(tl, target))}")
    if now == target:
        ctx.out(f"nothing to do: {args.label} already points to v{target}")
        return EXIT_OK
    _confirm(ctx, args, f"Move {args.label} of {args.name} from v{now} to v{target}?")
    _move(ctx, lf, args.name, args.label, target)
    return EXIT_OK


def _cmd_promote(ctx: _Context, args: argparse.Namespace) -> int:
    lf = _Langfuse(_langfuse_keys(ctx))
    source, dest = args.from_label, args.to_label
    version = lf.version_of(args.name, source)
    try:
        body = read_timeline(ctx, args.relay, args.name, source)
        evidence: Mapping[str, Any] | None = _find(body["labels"][source], version)
        why_not = "" if evidence else f"the timeline of {source} has no v{version}"
    except Failure as e:
        if e.code != EXIT_TIMELINE:
            raise
        evidence, why_not = None, e.message
    generations = int(evidence["generations"]) if evidence else 0
    if generations == 0:
        reason = why_not or f"v{version} has served no generations under {source}"
        if not args.force:
            raise Failure(f"refusing to promote {args.name} v{version} from {source} to {dest}: {reason}. "
                          f"It has not been exercised under {source}; --force moves it anyway",
                          EXIT_REFUSED)
        ctx.out(f"--force: promoting v{version} without evidence that it served generations under {source} "
                f"({reason})")
    try:
        before: int | None = lf.version_of(args.name, dest)
    except Failure as e:
        if e.code != EXIT_LANGFUSE_NOT_FOUND:
            raise
        before = None
    ctx.out(f"plan: {args.name} label {dest}: {'(none)' if before is None else f'v{before}'} -> v{version} "
            f"(what {source} points to)")
    ctx.out(f"  v{version} under {source}: {_describe(evidence)}")
    if before == version:
        ctx.out(f"nothing to do: {dest} already points to v{version}")
        return EXIT_OK
    if args.guarded:
        args.label, args.to = dest, version
        return _start_or_resume(ctx, args, lf)
    _confirm(ctx, args, f"Move {dest} of {args.name} to v{version}?")
    _move(ctx, lf, args.name, dest, version)
    return EXIT_OK


# -- guarded rollouts -----------------------------------------------------------------------------
class _Evidence:
    """The relay's timeline with sketches, as the controller reads it."""

    def __init__(self, ctx: _Context, source: str | None) -> None:
        self.ctx, self.source = ctx, source

    def versions(self, name: str, label: str) -> Mapping[int, Mapping[str, Any]]:
        try:
            body = read_timeline(self.ctx, self.source, name, label, sketches=True)
        except NoTimeline:
            return {}  # nothing served under the label yet
        tl = body["labels"].get(label) or {}
        return {int(v["version"]): v for v in tl.get("versions", [])}


def _who() -> str:
    import getpass
    import socket

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "?"
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


def _spec(args: argparse.Namespace) -> Any:
    from .rollouts._guards import DEFAULT_GUARDS, parse_guard
    from .rollouts.controller import RolloutSpec

    errors: list[str] = []
    try:
        steps = tuple(float(x) for x in str(args.steps).split(",") if x.strip())
    except ValueError:
        errors.append(f"--steps must be numbers separated by commas, got {args.steps!r}")
        steps = ()
    guards = [] if args.guard else list(DEFAULT_GUARDS)
    for text in args.guard or ():
        try:
            guards.append(parse_guard(text))
        except ValueError as e:
            errors.append(f"--guard {text!r}: {e}")
    spec = RolloutSpec(steps=steps, step_seconds=args.step_minutes * 60, min_generations=args.min_generations,
                       guards=tuple(guards), confidence=args.confidence)
    errors += spec.errors() if steps else []
    if not 0 < args.poll_seconds <= 600:
        errors.append("--poll-seconds must be in (0, 600]")
    if errors:
        raise Failure("; ".join(errors), EXIT_USAGE)
    return spec


def _controller(ctx: _Context, args: argparse.Namespace, lf: _Langfuse) -> Any:
    import time

    from .rollouts.controller import Controller, PlanStore

    store = PlanStore(lf, args.name, args.label)
    return Controller(store, _Evidence(ctx, args.relay), by=_who(), out=ctx.out, now=time.time,
                      sleep=time.sleep,
                      poll_seconds=args.poll_seconds)


def _cmd_rollout(ctx: _Context, args: argparse.Namespace) -> int:
    from promptstamp_contract.rollout_plan import STATE_ABORTED, STATE_RUNNING

    from .rollouts.controller import status_lines

    lf = _Langfuse(_langfuse_keys(ctx))
    controller = _controller(ctx, args, lf)
    if args.status:
        history = controller.plans.history()
        if args.json:
            ctx.out(json.dumps({"prompt": args.name, "label": args.label, "plan": controller.plans.plan_name,
                                "history": [{"plan_version": p.version, **p.config} for p in history]},
                               indent=2))
            return EXIT_OK
        for line in status_lines(args.name, args.label, history):
            ctx.out(line)
        if history and history[-1].state == STATE_RUNNING:
            old, new = controller.windows(history[-1])
            c = history[-1].config
            ctx.out(f"  this step so far: v{old.version} {old.generations} generations, {old.errors} errors; "
                    f"v{new.version} {new.generations} generations, {new.errors} errors "
                    f"({time_since(float(c['step_started_at']))} of {float(c['step_seconds']):.0f} s)")
        return EXIT_OK
    if args.abort:
        plan = controller.plans.load()
        if plan is None or plan.state != STATE_RUNNING:
            ctx.out(f"no rollout of {args.name} under {args.label} is running: nothing to abort")
            return EXIT_OK
        _confirm(ctx, args, f"Abort the rollout of {args.name} {args.label} to v{plan.config['to_version']} "
                            f"(its share goes to 0 %)?")
        plan = controller.stop(plan, STATE_ABORTED, "aborted", reason=f"aborted by {controller.by}")
        ctx.out(f"aborted: v{plan.config['to_version']} is back to 0 %; {args.label} stays on "
                f"v{plan.config['from_version']} (apps follow within their cache TTL)")
        return EXIT_OK
    return _start_or_resume(ctx, args, lf, controller)


def time_since(t: float) -> str:
    import time

    return f"{max(0.0, time.time() - t):.0f} s"


def _start_or_resume(ctx: _Context, args: argparse.Namespace, lf: _Langfuse, controller: Any = None) -> int:
    from promptstamp_contract.rollout_plan import STATE_RUNNING

    from .rollouts.controller import EXIT_CONFLICT, EXIT_INTERRUPTED, PlanConflict

    spec = _spec(args)
    controller = controller or _controller(ctx, args, lf)
    name, label = args.name, args.label
    try:
        plan = controller.plans.load()
        if plan is not None and plan.state == STATE_RUNNING:
            running_to = int(plan.config["to_version"])
            if args.to is not None and args.to != running_to:
                raise Failure(f"a rollout of {name} {label} to v{running_to} is running: run without --to "
                              f"(or --to {running_to}) to resume it, or --abort it first", EXIT_REFUSED)
            ctx.out(f"a rollout of {name} {label} to v{running_to} is running: resuming it (its own steps "
                    "and guards; options given now are not applied)")
            plan = controller.resume(plan)
        else:
            if args.to is None:
                raise Failure(f"no rollout of {name} {label} is running: give --to VERSION to start one",
                              EXIT_USAGE)
            current = lf.version_of(name, label)
            if lf.get_prompt(name, version=args.to) is None:
                raise Failure(f"Langfuse has no version {args.to} of {name!r}: nothing was changed",
                              EXIT_LANGFUSE_NOT_FOUND)
            if current == args.to:
                ctx.out(f"nothing to do: {label} already points to v{args.to}")
                return EXIT_OK
            ctx.out(f"plan: {name} label {label}: v{current} -> v{args.to} in steps of "
                    f"{', '.join(f'{s:g} %' for s in spec.steps)}, at least {spec.step_seconds / 60:g} min "
                    f"and {spec.min_generations} generations per version each; guards "
                    f"{', '.join(g.text for g in spec.guards)}")
            _confirm(ctx, args, f"Start the guarded rollout of {name} {label} to v{args.to}?")
            plan = controller.start(spec, current, args.to, plan)

        def label_version() -> int | None:
            got = lf.get_prompt(name, label=label)
            return None if got is None else int(got["version"])

        code, plan = controller.run(plan, label_version=label_version,
                                    move_label=lambda v: _move(ctx, lf, name, label, v))
        return int(code)
    except PlanConflict as e:
        raise Failure(str(e), EXIT_CONFLICT) from None
    except KeyboardInterrupt:
        ctx.out("interrupted: the plan stays at its current step (safe); run the same command again to "
                "resume it, or --abort to stop it")
        return EXIT_INTERRUPTED


def _ask(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:
        return None


def run(args: argparse.Namespace, *, out: Callable[[str], None] | None = None,
        ask: Callable[[str], str | None] | None = None) -> int:
    """Run one ``labels`` command; the exit code (messages on stderr)."""
    try:
        cfg = _config(args.config)
        ctx = _Context(cfg, args.tenant or "default", args.token or os.environ.get(TOKEN_ENV) or None,
                       out or print, ask or _ask)
        commands = {"show": _cmd_show, "compare": _cmd_compare, "rollback": _cmd_rollback,
                    "promote": _cmd_promote, "rollout": _cmd_rollout}
        return commands[args.labels_command](ctx, args)
    except Failure as e:
        print(f"promptstamp-relay labels: {e.message}", file=sys.stderr)
        return e.code
