"""The accepting end: what the relay does with a request once :class:`~promptstamp_relay.admission.Admission`
has taken it, and with the hold window's releases.

:class:`Intake` runs the processor under one lock, inside the journal's transaction when the
queue is persistent; puts what comes out on the delivery queues; records the request when the
relay records; logs what the processor noticed (rate-limited); recovers the spans an earlier run
held. Called from receiver threads (through Admission) and from the lifecycle's hold ticker.
Lock order: the journal's transaction, then the processing lock.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from . import wire
from .admission import AdmissionStats, Refusal, count_logs
from .core.fetch_records import CORRECT_RECORD
from .core.fetch_records import MARKER as FETCH_MARKER
from .core.pipeline import Notices, Outgoing, Processor
from .deliver import DeliveryItem, DeliveryQueue
from .export import JsonLinesWriter
from .journal import Journal, JournalError
from .journal.held import take_held
from .ops.ratelog import RateLimitedLog

__all__ = ["Intake"]

log = logging.getLogger("promptstamp_relay.intake")

_POISON_DONE = {
    "typed": "added langfuse.observation.type=%r, the type Langfuse gives it otherwise",
    "isolated": "sent it in an export request of its own, so that only it is lost",
    "forwarded": "forwarded it as it came (the exporter is a collector, which batches spans again: "
                 "Langfuse loses the whole request it lands in)",
}


class Intake:
    """The accepting end: the processor under the processing lock, the delivery queues, the
    recorder and (persistent mode) the journal's transaction around each step."""

    def __init__(
        self,
        processor: Processor,
        trace_queue: DeliveryQueue,
        logs_queue: DeliveryQueue | None,
        *,
        stats: AdmissionStats,
        journal: Journal | None = None,
        recorder: JsonLinesWriter | None = None,
        clock: Callable[[], int] = time.time_ns,
        retry_after: float = 1.0,
        metrics_queue: DeliveryQueue | None = None,
    ) -> None:
        self.processor = processor
        self.trace_queue = trace_queue
        self.logs_queue = logs_queue
        self.metrics_queue = metrics_queue  # None: metrics are counted and dropped
        self.stats = stats
        self._journal = journal
        self._recorder = recorder
        self._clock = clock
        self._retry_after = retry_after
        self._lock = threading.Lock()
        self._say = RateLimitedLog(log)

    def queues(self) -> Sequence[DeliveryQueue]:
        return [q for q in (self.trace_queue, self.logs_queue, self.metrics_queue) if q is not None]

    @contextlib.contextmanager
    def durable(self) -> Iterator[None]:
        """Persistent mode: one SQLite transaction (committed before the sender's OK) around a
        step; a failed write refuses the request as retryable. Memory mode: nothing."""
        if self._journal is None:
            yield
            return
        try:
            with self._journal.transaction():
                yield
        except JournalError as e:
            log.error("persistent queue write failed, refusing data: %s", e)
            raise Refusal("unavailable", "relay cannot write its persistent queue, retry later",
                          retry_after=self._retry_after) from e

    # -- accepting ------------------------------------------------------------------------------
    def traces(self, req: ExportTraceServiceRequest, data: bytes, spans: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        if not wire.triage(data, self.processor.settings.scan_keys):
            # Nothing to stamp, no fetch record, no poison (one native walk, nothing built):
            # forward the bytes as they came, no re-encoding.
            self.stats.add(spans_received=spans, passthrough_requests=1)
            self.trace_queue.put(DeliveryItem(data, spans, tenant))
            return
        self.stats.add(spans_received=spans)
        now = self._clock()
        with self._lock:
            out = self.processor.consume_traces(req, now, tenant, encoded=data)
        self._enqueue(out)
        if out.notices:
            self.report(out.notices, tenant)

    def logs(self, req: ExportLogsServiceRequest, data: bytes, n: int, tenant: str) -> None:
        if self._recorder is not None:
            self._recorder.write(req)
        if FETCH_MARKER not in data:
            self.stats.add(logs_received=n, logs_other=n)
            self._pass_logs(req, data, n, tenant)
            return
        self.stats.add(logs_received=n)
        now = self._clock()
        with self._lock:
            result = self.processor.consume_logs(req, now, tenant)
        if result.notices:
            self.report(result.notices, tenant)
        self._enqueue(result.released)
        if result.passthrough is not None:
            self._pass_logs(result.passthrough, None, count_logs(result.passthrough), tenant)

    def report(self, notices: Notices, tenant: str) -> None:
        """Log what the processor noticed, at most one line per kind every 10 s (the rest are
        counted in that line and in the metrics)."""
        if notices.invalid:
            v = notices.invalid[0]
            self._say.log(logging.WARNING, "invalid",
                          "fetch record from service.name=%r (tenant %r) rejected, %d in this request: %s "
                          "(%s); a correct record has %s",
                          v.service, tenant, len(notices.invalid), v.message, v.code, CORRECT_RECORD)
        for late in notices.late:
            if late.verdict == "agreed":
                continue
            was = (f"linked to version {late.written_version} by the {late.written_tier!r} tier"
                   if late.written_version is not None else "sent unresolved")
            self._say.log(logging.WARNING, f"late-{late.verdict}",
                          "trace %s: generation %s (service.name=%r) was %s; its trace's fetch record "
                          "for %r label %r arrived %.1f s later and names version %d%s. Raise "
                          "hold.seconds above the delay between the app's fetch span and its "
                          "generations reaching the relay (the fetch record's export delay) to "
                          "prevent this (promptstamp_late_fetch_records_total)",
                          late.trace_id.hex(), late.span_id.hex(), late.service, was, late.key, late.label,
                          late.late_ns / 1e9, late.record_version,
                          "" if late.verdict == "was_unresolved" else ": the link is wrong")
            break
        if notices.conflicts:
            x = notices.conflicts[0]
            self._say.log(logging.WARNING, "conflict",
                          "trace %s: generation %s (service.name=%r) arrived linked to %r version %r, "
                          "but its trace's fetch record for %r label %r names version %d; kept as it "
                          "arrived (promptstamp_prompt_conflicts_total, %d in this request)",
                          x.trace_id.hex(), x.span_id.hex(), x.service, x.linked_name, x.linked_version,
                          x.key, x.label, x.evidence_version, len(notices.conflicts))
        for action, done in _POISON_DONE.items():  # one line per action, each rate-limited
            same = [p for p in notices.poison if p.action == action]
            if not same:
                continue
            p = same[0]
            self._say.log(logging.WARNING, f"poison-{action}",
                          "trace %s: span %r (service.name=%r) has %s=%r, on which Langfuse's observation "
                          "type mapper throws, losing every span of its export request; the relay "
                          + done + " (promptstamp_poison_spans_total{action=\"%s\"}, %d in this request)",
                          p.trace_id.hex(), p.span_name, p.service, p.poison.key, p.poison.value,
                          *((p.added,) if action == "typed" else ()), action, len(same))

    def metrics(self, data: bytes, n: int, tenant: str) -> None:
        """Metrics go on unchanged (the bytes as they came) when there is a metrics exporter."""
        if self.metrics_queue is None:
            self.stats.add(metric_points_received=n, metric_points_dropped=n)
            return
        self.stats.add(metric_points_received=n)
        self.metrics_queue.put(DeliveryItem(data, n, tenant))

    def _pass_logs(self, req: ExportLogsServiceRequest, data: bytes | None, n: int, tenant: str) -> None:
        if self.logs_queue is None:
            self.stats.add(logs_dropped=n)
            return
        self.logs_queue.put(DeliveryItem(data if data is not None else req.SerializeToString(), n, tenant))

    def _enqueue(self, outgoing: list[Outgoing]) -> None:
        for o in outgoing:
            self.trace_queue.put(DeliveryItem(o.payload, o.spans, o.tenant))

    # -- the hold window (the lifecycle's ticker and shutdown) ---------------------------------
    def next_due_ns(self) -> int | None:
        return self.processor.next_due_ns()

    def release_due(self, now_ns: int) -> None:
        with self.durable(), self._lock:
            self._enqueue(self.processor.release_due(now_ns))

    def release_all(self) -> None:
        with self.durable(), self._lock:
            self._enqueue(self.processor.release_all())

    def recover_held(self) -> int:
        """Persistent mode: spans an earlier run held go through the processor again."""
        if self._journal is None:
            return 0
        with self._journal.transaction():
            rows = take_held(self._journal)
            if not rows:
                return 0
            now = self._clock()
            with self._lock:
                out: list[Outgoing] = []
                for tenant, payload in rows:
                    out.extend(self.processor.consume_traces(
                        ExportTraceServiceRequest.FromString(payload), now, tenant))
                self._enqueue(out)
        return len(rows)
