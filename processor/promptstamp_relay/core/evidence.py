"""Evidence that arrives after the fact: a trace's own fetch record, later than its generations.

A generation released without its trace's record was stamped by a lower tier (``instance``,
``latest``, ``api``: a guess from other traces) or left unresolved. When that trace's record
then arrives, :class:`LateEvidence` compares it with what was written and says so
(:class:`LateRecord`): ``agreed`` (the guess was right), ``disagreed`` (the generation went to
Langfuse linked to another version than the app was handed), ``was_unresolved``. The relay
counts each and logs the disagreements, naming the trace, both versions, how late the record
was and the setting that would have prevented it (``hold.seconds``).

Pure and bounded: time is passed in; at most ``max_entries`` generations are remembered, each
for ``keep_ns``. Called by the processor under the relay's processing lock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import promptstamp_contract as c

from .model import FetchRecord

__all__ = ["LateEvidence", "LateRecord", "Verdict"]

Verdict = Literal["agreed", "disagreed", "was_unresolved"]
#: (tenant, trace id, prompt key, label)
_TraceKey = tuple[str, bytes, str, str]


@dataclass(frozen=True, slots=True)
class LateRecord:
    """A trace's record that arrived after one of its generations was sent without it."""

    verdict: Verdict
    tenant: str
    trace_id: bytes
    span_id: bytes
    key: str
    label: str
    written_tier: str  # the tier that answered at release, or ``unresolved``
    written_version: int | None
    record_version: int
    late_ns: int  # from the generation's release to the record's arrival
    service: str  # the generation's service.name


@dataclass(slots=True)
class _Sent:
    span_id: bytes
    start_ns: int
    tier: str
    version: int | None
    sent_ns: int
    service: str


#: ``(records of the trace for (key, label), span start) -> the record the trace tier picks``
Pick = Callable[[Sequence[FetchRecord], int], "FetchRecord | None"]


class LateEvidence:
    """Generations sent without their trace's record, waiting (bounded) for it to turn up."""

    def __init__(self, *, keep_ns: int = 600 * 10**9, max_entries: int = 100_000) -> None:
        self.keep_ns = keep_ns
        self.max_entries = max_entries
        self._sent: OrderedDict[_TraceKey, list[_Sent]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def sent(self, tenant: str, trace_id: bytes, key: str, label: str, *, span_id: bytes, start_ns: int,
             tier: str, version: int | None, now_ns: int, service: str) -> None:
        """A generation left without its trace's record (``tier`` is not ``trace``)."""
        if not trace_id or tier == c.TIER_TRACE:
            return
        k = (tenant, trace_id, key, label)
        entries = self._sent.get(k)
        if entries is None:
            entries = self._sent[k] = []
        entries.append(_Sent(span_id, start_ns, tier, version, now_ns, service))
        self._count += 1
        self._expire(now_ns)

    def arrived(self, tenant: str, records: Iterable[FetchRecord], now_ns: int,
                in_trace: Callable[[str, bytes, str, str], Sequence[FetchRecord]],
                pick: Pick) -> list[LateRecord]:
        """New versioned records of ``tenant``: what each says of the generations sent before
        it. ``in_trace(tenant, trace, key, label)`` gives the trace's records (the new ones
        included) and ``pick`` chooses one for a span start, as the ``trace`` tier does."""
        self._expire(now_ns)
        if not self._sent:
            return []
        out: list[LateRecord] = []
        for r in records:
            k = (tenant, r.trace_id, r.key, r.label)
            entries = self._sent.pop(k, [])
            entries += self._sent.pop((tenant, r.trace_id, r.key, ""), [])  # a convention's claims
            if not entries:
                continue
            self._count -= len(entries)
            trace_records = in_trace(*k)
            for e in entries:
                chosen = pick(trace_records, e.start_ns)
                version = chosen.version if chosen is not None and chosen.version is not None else r.version
                assert version is not None
                verdict: Verdict = ("was_unresolved" if e.version is None
                                    else "agreed" if e.version == version else "disagreed")
                out.append(LateRecord(verdict, tenant, r.trace_id, e.span_id, r.key, r.label, e.tier,
                                      e.version, version, now_ns - e.sent_ns, e.service))
        return out

    def _expire(self, now_ns: int) -> None:
        sent = self._sent
        while sent:
            k, entries = next(iter(sent.items()))
            if self._count <= self.max_entries and entries[-1].sent_ns + self.keep_ns > now_ns:
                break
            del sent[k]
            self._count -= len(entries)
