"""The rollouts component of the live relay: observer, persistence, flusher, HTTP routes.

Built once by ``wiring.py``; :meth:`Rollouts.start` starts the flusher thread,
:meth:`Rollouts.register` puts the routes on the metrics listener, :meth:`Rollouts.close` stops
the flusher and flushes once more (the lifecycle calls it after the last spans were released,
before the journal closes).

Where the timeline lives: in memory always (this relay's view); with ``queue.directory`` also in
the queue's database (it survives a restart); with ``store.backend: redis`` in Redis, where the
relays' deltas add up and every relay reads the sum.

Threads: the processor thread calls the observer; the flusher thread (every
``rollouts.flush_seconds``) writes; listener threads read (``GET /api/v1/prompts/{name}/timeline``,
``?label=`` one label, ``?sketches=1`` each version's raw sketches)
and take webhooks (``POST /api/v1/webhooks/langfuse``). Reads from Redis and flushes to it take
one lock, so a read never sees a delta both in Redis and still pending.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..admission.auth import Authenticator, Unauthenticated
from ..ops.listener import HttpRequest, HttpResponse, MetricsListener
from ..ops.pages import PromptPages
from ._config import RolloutsConfig
from ._model import Timeline, merge, prune, render_prompt
from ._observer import RolloutObserver, TimelineKey
from ._sqlite import RolloutTable
from ._webhook import SIGNATURE_HEADER, BadSignature, moves_of, verify

if TYPE_CHECKING:
    from prometheus_client.registry import CollectorRegistry

    from ..journal import Journal
    from ._redis import RedisTimelines

__all__ = ["TIMELINE_PREFIX", "WEBHOOK_PATH", "Rollouts"]

log = logging.getLogger("promptstamp_relay.rollouts")

TIMELINE_PREFIX = "/api/v1/prompts"
TIMELINE_SUFFIX = "/timeline"
WEBHOOK_PATH = "/api/v1/webhooks/langfuse"
_PRUNE_EVERY_NS = 3600 * 10**9  # Redis hashes: drop the fields retention has passed
_EXPIRE_EVERY_NS = 60 * 10**9  # this relay's own view
_JSON = "application/json"


def _json(status: int, body: Any, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(body, separators=(",", ":")).encode() + b"\n", _JSON,
                        dict(headers or {}))


class Rollouts:
    """Per-version metrics and the label timeline for one relay."""

    def __init__(self, cfg: RolloutsConfig, *, prompt_names: Mapping[str, str] | None = None,
                 journal: Journal | None = None, redis_url: str = "",
                 authenticator: Authenticator | None = None,
                 clock: Callable[[], int] = time.time_ns,
                 plan_of: Callable[[str, str, str], dict[str, Any] | None] | None = None) -> None:
        self.cfg = cfg
        self._plan_of = plan_of  # the guarded rollout's plan, for the pages (_plans.PlanReader)
        self._clock = clock
        self._auth = authenticator
        self._redis: RedisTimelines | None = None
        if redis_url:
            from ._redis import RedisTimelines  # the redis extra

            self._redis = RedisTimelines(redis_url, cfg.retention_ns)
        self.observer = RolloutObserver(cfg, prompt_names, shared=self._redis is not None)
        self._table = RolloutTable(journal) if journal is not None and self._redis is None else None
        if self._table is not None:
            self.observer.load(self._table.load())
            self.observer.expire(clock() - cfg.retention_ns)
        self._io = threading.Lock()  # one flush or shared read at a time
        self._touched: set[TimelineKey] = set()  # Redis timelines this relay wrote (pruned hourly)
        self._last_prune_ns = self._last_expire_ns = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def with_moves(self) -> bool:
        return bool(self.cfg.webhook_secrets)

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:  # also in memory mode: it applies retention
            self._thread = threading.Thread(target=self._loop, name="rollouts-flusher", daemon=True)
            self._thread.start()

    def register(self, listener: MetricsListener, registry: CollectorRegistry | None = None) -> None:
        """The timeline route, its pages (``ops/pages.py``) and (with secrets) the webhook route on
        ``listener``; the metrics collector on ``registry``."""
        listener.route("GET", TIMELINE_PREFIX, self._timeline_route)
        # The same timeline as pages (/prompts, /prompts/{name}): the same reads, auth and tenants.
        PromptPages(self, self._tenant, render_prompt, clock=self._clock,
                    plan_of=self._plan_of).register(listener)
        if self.cfg.webhook_secrets:
            listener.route("POST", WEBHOOK_PATH, self._webhook_route)
        if registry is not None:
            registry.register(self.observer.collector())

    def close(self) -> None:
        """Stop the flusher and flush what is left. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with contextlib.suppress(Exception):  # logged in flush
            self.flush()
        if self._redis is not None:
            self._redis.close()

    def _loop(self) -> None:
        while not self._stop.wait(self.cfg.flush_seconds):
            with contextlib.suppress(Exception):  # logged in flush; the next round tries again
                self.flush()

    def flush(self) -> None:
        """Write what changed (SQLite: whole rows; Redis: the delta) and apply retention."""
        now = self._clock()
        horizon = now - self.cfg.retention_ns
        gone: list[TimelineKey] = []
        if now - self._last_expire_ns >= _EXPIRE_EVERY_NS:  # a walk over everything: not every round
            self._last_expire_ns = now
            gone = self.observer.expire(horizon)
        st = self.observer.stats
        with self._io:
            try:
                if self._table is not None:
                    self._table.write(self.observer.take_dirty(), gone, now)
                if self._redis is not None:
                    delta = self.observer.take_pending()
                    try:
                        self._redis.write(delta)
                    except Exception:
                        self.observer.give_back(delta)
                        raise
                    self._touched.update(delta)
                    if now - self._last_prune_ns >= _PRUNE_EVERY_NS:
                        self._last_prune_ns = now
                        self._redis.prune(sorted(self._touched), horizon)
                        self._touched.clear()
                st.flushes += 1
            except Exception as e:
                st.flush_errors += 1
                log.warning("rollouts: cannot write the label timeline (%s: %s); kept in memory, "
                            "retrying in %.0f s", type(e).__name__, e, self.cfg.flush_seconds)
                raise

    # -- reads --------------------------------------------------------------------------------------
    def timelines(self, tenant: str, prompt: str) -> tuple[dict[str, Timeline], bool]:
        """``tenant``'s timelines of ``prompt`` by label, and whether they are complete (False:
        Redis could not be read, this relay's own view is given)."""
        if self._redis is None:
            return self.observer.local(tenant, prompt), True
        with self._io:
            try:
                shared = self._redis.read(tenant, prompt)
            except Exception as e:
                log.warning("rollouts: cannot read the shared timeline from Redis (%s: %s); "
                            "answering with this relay's own view", type(e).__name__, e)
                return self.observer.local(tenant, prompt), False
            for label, tl in self.observer.pending_for(tenant, prompt).items():
                shared[label] = merge(shared.get(label, Timeline()), tl)
        horizon = self._clock() - self.cfg.retention_ns
        for tl in shared.values():
            prune(tl, horizon)
        return shared, True

    def render(self, tenant: str, prompt: str, label: str | None = None, *,
               sketches: bool = False) -> tuple[dict[str, Any] | None, bool]:
        """The timeline body (None: nothing known), and whether it is complete. ``sketches``: each
        version with its raw sketches (``?sketches=1``)."""
        labels, complete = self.timelines(tenant, prompt)
        if label is not None:
            labels = {k: v for k, v in labels.items() if k == label}
        body = render_prompt(prompt, labels, with_moves=self.with_moves, sketches=sketches)
        return (body if body["labels"] else None), complete

    # -- HTTP ---------------------------------------------------------------------------------------
    def _tenant(self, req: HttpRequest) -> str | HttpResponse:
        if self._auth is None:
            return "default"
        try:
            return self._auth.identify(req.headers).tenant
        except Unauthenticated as e:
            log.info("rollouts: refused %s from %s: %s", req.path, req.peer, e.hint)
            return _json(401, {"error": e.message}, {"WWW-Authenticate": 'Bearer realm="promptstamp"'})

    def _timeline_route(self, req: HttpRequest) -> HttpResponse:
        path = req.path
        if not (path.startswith(TIMELINE_PREFIX + "/") and path.endswith(TIMELINE_SUFFIX)):
            where = f"{TIMELINE_PREFIX}/NAME{TIMELINE_SUFFIX}"
            return _json(404, {"error": f"not found; the timeline is at {where}"})
        name = path[len(TIMELINE_PREFIX) + 1:-len(TIMELINE_SUFFIX)]
        if not name:
            return _json(404, {"error": "no prompt name in the path"})
        tenant = self._tenant(req)
        if isinstance(tenant, HttpResponse):
            return tenant
        labels = req.query.get("label")
        label = labels[-1] if labels else None
        sketches = req.query.get("sketches") or [""]
        body, complete = self.render(tenant, name, label, sketches=sketches[-1] == "1")
        if body is None:
            what = f"prompt {name!r}" + (f" with label {label!r}" if label is not None else "")
            return _json(404, {"error": f"no timeline for {what}: no fetch record or generation seen "
                                        f"in the last {self.cfg.retention_days:g} days"})
        headers = {} if complete else {"X-Promptstamp-Partial": "redis unreachable: this relay's view only"}
        return _json(200, body, headers)

    def _webhook_route(self, req: HttpRequest) -> HttpResponse:
        try:
            tenant = verify(req.headers.get(SIGNATURE_HEADER), req.body, self.cfg.webhook_secrets,
                            self._clock() / 1e9, self.cfg.webhook_tolerance_seconds)
        except BadSignature as e:
            log.warning("rollouts: webhook from %s refused: %s", req.peer, e)
            return _json(401, {"error": str(e)})
        try:
            moves = moves_of(req.body)
        except ValueError as e:
            return _json(400, {"error": f"not a Langfuse prompt webhook: {e}"})
        taken = sum(self.observer.add_move((tenant, m.prompt, m.label), m.version, m.at_ns) for m in moves)
        return _json(200, {"moves": taken})
