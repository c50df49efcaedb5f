"""Per-version generation metrics: counters kept in memory, exported by a Prometheus collector.

``promptstamp_generations_total{tenant,prompt,version,label,outcome}``,
``promptstamp_generation_duration_seconds{tenant,prompt,version,label}`` (a histogram) and
``promptstamp_generation_tokens_total{tenant,prompt,version,label,direction}``.

Prompt names and labels come from span attributes, so they are untrusted: at most
``max_series`` (tenant, prompt, version, label) combinations get series of their own. Past that,
a new version of a known tenant + prompt + label is counted under ``version="other"`` of it,
and a combination with a new prompt or label under ``prompt="other", version="other",
label="other"`` of its tenant; ``promptstamp_rollout_series_folded_total{tenant}`` counts the
generations folded so. So there are never more than about twice ``max_series`` series.

Threads: :meth:`GenerationMetrics.add` is called by the rollouts observer under its lock (on
the processing path: once per series in a request, no I/O); :meth:`GenerationMetrics.families`
at scrape time, under the same lock.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from ._model import GenerationBatch

__all__ = ["DURATION_BUCKETS", "OTHER", "GenerationMetrics"]

OTHER = "other"
NONE = "none"
#: Seconds; LLM calls run from tens of milliseconds to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
_BUCKETS_NS = tuple(round(b * 1e9) for b in DURATION_BUCKETS)  # compared with integer durations

SeriesKey = tuple[str, str, str, str]  # tenant, prompt, version, label


@dataclass(slots=True)
class _Series:
    ok: int = 0
    error: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    seconds: float = 0.0


class GenerationMetrics:
    """The counters behind the three generation metrics. Not thread-safe on its own."""

    def __init__(self, max_series: int) -> None:
        self.max_series = max_series
        self._series: dict[SeriesKey, _Series] = {}
        self._own = 0  # series with a version of their own (what max_series bounds)
        self._triples: set[tuple[str, str, str]] = set()
        self.folded: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._series)

    def _key(self, tenant: str, prompt: str, version: int | None, label: str, n: int) -> SeriesKey:
        key = (tenant, prompt, NONE if version is None else str(version), label)
        if key in self._series:
            return key
        if self._own < self.max_series:
            self._own += 1
            self._triples.add((tenant, prompt, label))
            return key
        self.folded[tenant] += n
        if (tenant, prompt, label) in self._triples:
            return (tenant, prompt, OTHER, label)
        return (tenant, OTHER, OTHER, OTHER)

    def add(self, tenant: str, prompt: str, label: str, version: int | None, batch: GenerationBatch) -> None:
        """Count a request's generations of one series."""
        key = self._key(tenant, prompt, version, label, batch.count)
        s = self._series.get(key)
        if s is None:
            s = self._series[key] = _Series()
        s.error += batch.errors
        s.ok += batch.count - batch.errors
        s.input_tokens += batch.input_tokens
        s.output_tokens += batch.output_tokens
        buckets = s.buckets
        for d in batch.durations_ns:
            buckets[bisect.bisect_left(_BUCKETS_NS, d)] += 1
        s.seconds += sum(batch.durations_ns) / 1e9

    def families(self) -> Iterator[Metric]:
        """The metric families as they stand (call under the owner's lock)."""
        labels = ["tenant", "prompt", "version", "label"]
        gens = CounterMetricFamily("promptstamp_generations", "Stamped generations by prompt version "
                                   "(version none: unresolved; other: past rollouts.max_series)",
                                   labels=[*labels, "outcome"])
        tokens = CounterMetricFamily("promptstamp_generation_tokens", "Tokens of stamped generations by "
                                     "prompt version (gen_ai.usage.*, llm.token_count.*)",
                                     labels=[*labels, "direction"])
        hist = HistogramMetricFamily("promptstamp_generation_duration_seconds",
                                     "Stamped generations' span duration by prompt version", labels=labels)
        for key, s in sorted(self._series.items()):
            values = list(key)
            gens.add_metric([*values, "ok"], s.ok)
            gens.add_metric([*values, "error"], s.error)
            tokens.add_metric([*values, "input"], s.input_tokens)
            tokens.add_metric([*values, "output"], s.output_tokens)
            cumulative, running = [], 0
            for bound, n in zip((*map(str, DURATION_BUCKETS), "+Inf"), s.buckets, strict=True):
                running += n
                cumulative.append((bound, running))
            hist.add_metric(values, cumulative, s.seconds)
        folded = CounterMetricFamily("promptstamp_rollout_series_folded",
                                     "Generations counted under version=\"other\" because "
                                     "rollouts.max_series series exist", labels=["tenant"])
        for tenant, n in sorted(self.folded.items()):
            folded.add_metric([tenant], n)
        yield from (gens, hist, tokens, folded)
