"""``serve``: the live relay's lifecycle. Components come from ``wiring.py``; admission from
``admission/`` and ``intake.py``; this module starts them, runs the hold ticker, answers health and drains.

Threads: receiver threads admit and stamp (holding the processing lock only around the pure
processor call); one ticker thread releases held spans when their window ends; delivery
workers export; the metrics listener answers scrapes and health probes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence

from . import wire
from .admission import Admission, AdmissionStats, Refusal
from .config import Config
from .core.pipeline import PipelineObserver, Processor
from .deliver.queue import DeliveryQueue
from .export import Exporter
from .ops.listener import HttpRequest, HttpResponse, MetricsListener
from .receive.http import OtlpHttpReceiver
from .store import FetchLogStore
from .wiring import Components, build, build_processor

# ``build_processor`` lives in wiring.py; re-exported for callers of the old place.
__all__ = ["RelayServer", "build_processor", "check_protobuf_backend"]

log = logging.getLogger("promptstamp_relay")


def check_protobuf_backend() -> str:
    """The protobuf backend in use; warns loudly unless it is the fast ``upb`` one."""
    from google.protobuf.internal import api_implementation

    kind = str(api_implementation.Type())
    if kind != "upb":
        log.warning(
            "!!! protobuf is using the %r backend, not 'upb': the relay will be several times "
            "slower. Install protobuf>=6.33.5 wheels and unset PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION.",
            kind,
        )
    if not wire.native():
        log.warning(
            "the C extension promptstamp_relay.wire._wirec is not in use (no compiler at install time, "
            "or PROMPTSTAMP_PURE_PYTHON set): same results, about half the throughput"
        )
    return kind


class RelayServer:
    """The whole live relay. Construction only remembers its arguments; :meth:`start` builds
    the components (``wiring.build``), binds and returns; :meth:`stop` drains and releases
    everything, in any state, any number of times.

    ``clock`` (ns since the epoch) is injectable for tests; production uses the wall clock.
    """

    def __init__(
        self,
        cfg: Config,
        *,
        clock: Callable[[], int] = time.time_ns,
        trace_exporter: Exporter | None = None,
        logs_exporter: Exporter | None = None,
        store: FetchLogStore | None = None,
        observers: Sequence[PipelineObserver] = (),
    ) -> None:
        self.cfg = cfg
        self._clock = clock
        self._given = (trace_exporter, logs_exporter, store)
        self._observers = tuple(observers)  # e.g. promptstamp.testing.LiveRelay's
        self.parts: Components | None = None
        #: Readiness: the upstream check (``--check-upstream``) passed. Set by the CLI.
        self.upstream_ok = True
        self._state = "new"  # new -> started -> stopped (or new -> stopped)
        self._state_lock = threading.Lock()
        self._tick_stop = threading.Event()
        self._ticker: threading.Thread | None = None

    # -- what tests and the CLI read (after start) -------------------------------------------------
    def _parts(self) -> Components:
        if self.parts is None:
            raise RuntimeError("the relay is not started")
        return self.parts

    @property
    def address(self) -> str:
        """``host:port`` of the OTLP/gRPC receiver."""
        return self._parts().receivers[0].address

    @property
    def http_address(self) -> str | None:
        """``host:port`` of the OTLP/HTTP receiver; None when ``receivers.http.listen`` is ""."""
        for r in self._parts().receivers:
            if isinstance(r, OtlpHttpReceiver):
                return r.address
        return None

    @property
    def metrics_port(self) -> int | None:
        listener = self._parts().listener
        return listener.port if listener is not None else None

    @property
    def listener(self) -> MetricsListener | None:
        return self._parts().listener

    @property
    def admission(self) -> Admission:
        return self._parts().admission

    @property
    def stats(self) -> AdmissionStats:
        return self._parts().admission.stats

    @property
    def processor(self) -> Processor:
        return self._parts().processor

    @property
    def trace_queue(self) -> DeliveryQueue:
        return self._parts().trace_queue

    @property
    def logs_queue(self) -> DeliveryQueue | None:
        return self._parts().logs_queue

    def queues(self) -> list[DeliveryQueue]:
        return self._parts().queues() if self.parts is not None else []

    def _api_credentials(self, tenant: str) -> tuple[str, str, str] | None:
        return self._parts().tenants.api_credentials(tenant)

    # -- health ------------------------------------------------------------------------------
    def live(self) -> bool:
        return self._state == "started"

    def ready(self) -> tuple[bool, str]:
        """Whether to send traffic here, and why not: started, not draining, the upstream
        check passed, the queues below their bounds."""
        if self._state != "started" or self.parts is None:
            return False, "not serving (starting or draining)"
        if not self.upstream_ok:
            return False, "the upstream check failed"
        p = self.parts
        used = p.processor.hold.held_bytes + sum(q.bytes for q in p.queues())
        if used >= self.cfg.queue.max_bytes:
            return False, f"queue full: {used} of queue.max_bytes {self.cfg.queue.max_bytes} bytes"
        for q in p.queues():
            if q.depth >= q.max_requests:
                return False, f"{q.name} queue full: {q.depth} of queue.max_requests {q.max_requests}"
        return True, "ready"

    def _healthz(self, _req: HttpRequest) -> HttpResponse:
        ok = self.live()
        return HttpResponse(200 if ok else 503, b"ok\n" if ok else b"not serving\n")

    def _readyz(self, _req: HttpRequest) -> HttpResponse:
        ok, why = self.ready()
        return HttpResponse(200 if ok else 503, f"{why}\n".encode())

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> RelayServer:
        """Build, recover what a persistent queue kept, bind and serve. On failure everything
        taken so far is released and the error raised (OSError for a port in use)."""
        with self._state_lock:
            if self._state != "new":
                raise RuntimeError(f"a relay is started once (it is {self._state})")
            self._state = "starting"
        try:
            backend = check_protobuf_backend()
            trace_exporter, logs_exporter, store = self._given
            self.parts = p = build(self.cfg, clock=self._clock, protobuf_backend=backend,
                                   native=wire.native(), trace_exporter=trace_exporter,
                                   logs_exporter=logs_exporter, store=store,
                                   observers=self._observers)
            for q in p.queues():
                q.start()  # persistent mode: what an earlier run left goes first
            recovered = p.intake.recover_held()
            if recovered:
                log.warning("took back %d held spans left in the persistent queue by an earlier run",
                            recovered)
            if p.api is not None:
                p.api.start()
            if p.rollouts is not None:
                p.rollouts.start()  # its flusher; close() (in p.close) flushes the last of it
            self._ticker = threading.Thread(target=self._tick_loop, name="hold-ticker", daemon=True)
            self._ticker.start()
            if p.listener is not None:
                p.listener.route("GET", "/healthz", self._healthz)
                p.listener.route("GET", "/readyz", self._readyz)
                p.listener.start()
            for r in p.receivers:
                r.start()
        except BaseException:
            self._state = "started"  # so that stop() releases what was taken
            self.stop(timeout=0)
            raise
        self._state = "started"
        for r in p.receivers:
            r.set_serving(True)
        if p.logs_exporter is None:
            log.info("no logs exporter configured: log records other than the prompt fetch log "
                     "are counted (promptstamp_logs_dropped) and dropped")
        if p.metrics_exporter is None:
            log.info("no metrics exporter configured: OTLP metrics are accepted, counted "
                     "(promptstamp_metric_points_dropped_total) and dropped; set metrics_exporter "
                     "to forward them")
        return self

    def stop(self, timeout: float | None = None) -> int:
        """Refuse new data (health NOT_SERVING, exports UNAVAILABLE with a retry hint), let
        requests in flight finish, release held spans, drain within ``timeout``, then release
        everything. Returns the items lost. Safe before :meth:`start` and when called again."""
        with self._state_lock:
            if self._state == "stopped":
                return 0
            self._state = "stopped"
        p = self.parts
        if p is None:
            return 0
        timeout = self.cfg.queue.shutdown_timeout_seconds if timeout is None else timeout
        deadline = time.monotonic() + timeout
        for r in p.receivers:
            r.set_serving(False)
        p.admission.drain(timeout=max(1.0, timeout))
        self._tick_stop.set()
        if self._ticker is not None and self._ticker.is_alive():
            self._ticker.join(timeout=2)
        with contextlib.suppress(Refusal):  # logged; the held rows stay on disk for the next start
            p.intake.release_all()
        lost = 0
        for q in p.queues():
            lost += q.shutdown(max(0.0, deadline - time.monotonic()))
        for r in p.receivers:
            r.stop(grace=0.5)
        if p.api is not None:
            p.api.stop()
        if p.listener is not None:
            p.listener.stop()
        p.close()
        return lost

    def _tick_loop(self) -> None:
        assert self.parts is not None
        intake = self.parts.intake
        while not self._tick_stop.is_set():
            now = self._clock()
            due = intake.next_due_ns()
            if due is not None and due <= now:
                try:
                    intake.release_due(now)
                except Refusal:  # logged; the held rows stay on disk for the next start
                    self._tick_stop.wait(0.5)
                continue
            wait = 0.05 if due is None else min(0.05, max(0.001, (due - now) / 1e9))
            self._tick_stop.wait(wait)
