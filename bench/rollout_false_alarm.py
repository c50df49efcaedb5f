"""Guarded rollouts: how often do the default guards false-alarm, and how soon do they catch a bad
version? A simulation of whole rollouts, judged by ``rollouts._guards.judge``, the same function
the controller calls (docs/rollout-statistics.md).

One rollout moves a label from the old version to the new one in steps of 5, 25, 50 and 100 % of
the generations. Each step opens a fresh window, and the step is judged once, as soon as both sides
have at least ``--min-generations`` (200) generations. At 5 % that is when the new side reaches
200; the old side then has about 3,800. At 100 % there is no old side, and the controller judges
nothing there, so 3 of the 4 steps are judged. The default guards are used (error_rate:+2pp,
p95_ms:+25%, output_tokens:+30%), each at ``per_test_alpha(0.95, steps=3, guards=3)`` = 0.05/9 (the final 100 % step is a soak,
not judged, and gets no share of the budget).

Every generation is drawn independently:

- it is an error with probability ``p_err``;
- its duration is lognormal, median 900 ms and sigma 0.5, as the relay bins it: int(ms * 1e6) ns
  into ``rollouts._model.duration_bucket`` (buckets of ratio 2^(1/8)), read back as
  ``duration_bucket_value_ms`` (the bucket's geometric middle);
- its output tokens are lognormal, median 250 and sigma 0.6, rounded to an integer and binned with
  ``token_bucket``, read back with ``token_bucket_value``.

Drawing a value and binning it is the same, in distribution, as drawing its bucket from the
bucket's exact probability under the lognormal. The bucket edges are found with the relay's own
functions. The script does the latter: one draw per generation instead of a Gaussian, an exp and
a search.

Scenarios:

- ``null-*``: the new version is the old one. Measured: the family-wise false-alarm rate, the share
  of rollouts in which any guard is breached at any judged step.
- ``edge-*``: the new version sits exactly on one guard's threshold (error rate 1 % -> 3 %, every
  duration x 1.25, tokens x 1.3). This is the worst case of H0, so that guard's breach rate per
  judged step is the test's real size, binning included, to compare with its alpha.
- ``bad-*``: the new version is worse than the threshold (errors 1 % -> 6 %; a heavier latency tail
  with p95 +60 % and the median unchanged; tokens x 1.5). Measured: detection at the first step
  (5 %), and by the last judged step (a breach stops the rollout).
- binning: the first step's window with every duration exactly (1 + t) times the old one, for
  t = 20, 25 and 30 %. Measured: breaches at the 5 % level of the p95 and Mann-Whitney tests,
  compared at the raw scale (old midpoints x (1 + t)) and as ``judge`` compares them
  (``interpolated_p`` between whole-bucket scales).
- exact: the error-rate guard's exact size on its threshold (summed over every outcome of the
  two binomials, no simulation), for the three judged windows and old error rates of 0.5-5 %,
  with and without the skewness correction.

Rates come with 95 % Clopper-Pearson intervals. The run is seeded, and each chunk is seeded by its
name, so the figures do not depend on the number of workers. Run it with
``python bench/rollout_false_alarm.py [--quick] [--workers 2] [--seed 1]``. It prints Markdown
tables. The full run is about 55 CPU-seconds, about 30 s on 2 idle cores (bounded below 2 minutes
on a busy 2-core machine). ``--quick`` is about a tenth of that.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path
from statistics import NormalDist

from promptstamp_relay.rollouts._guards import (
    DEFAULT_GUARDS,
    SideWindow,
    error_rate_p,
    interpolated_p,
    judge,
    mann_whitney_p,
    per_test_alpha,
    quantile_test_p,
)
from promptstamp_relay.rollouts._model import (
    duration_bucket,
    duration_bucket_value_ms,
    token_bucket,
    token_bucket_value,
)

LN_R = math.log(2 ** (1 / 8))
STEPS = (0.05, 0.25, 0.50, 1.00)
MIN_GENERATIONS = 200
# As the controller splits it: over the judged steps (not the final 100 % soak) and the guards.
ALPHA = per_test_alpha(0.95, sum(1 for s in STEPS if s < 1.0), len(DEFAULT_GUARDS))
GUARDS = DEFAULT_GUARDS
Z_P95 = 1.6448536269514722  # standard normal 95 % quantile


@dataclass(frozen=True)
class Version:
    p_err: float = 0.01
    lat_median_ms: float = 900.0
    lat_sigma: float = 0.5
    tok_median: float = 250.0
    tok_sigma: float = 0.6


@dataclass(frozen=True)
class Scenario:
    name: str
    what: str
    kind: str  # null | edge | bad
    old: Version
    new: Version
    target: int | None = None  # index in GUARDS of the guard this scenario is about


BASE = Version()
SCENARIOS = [
    Scenario("null-1%", "no difference, error rate 1 %", "null", BASE, BASE),
    Scenario("null-5%", "no difference, error rate 5 %", "null", Version(p_err=0.05), Version(p_err=0.05)),
    Scenario("null-wide", "no difference, error rate 1 %, wide spreads (latency and tokens sigma 1.0)", "null",
             Version(lat_sigma=1.0, tok_sigma=1.0), Version(lat_sigma=1.0, tok_sigma=1.0)),
    Scenario("edge-error", "on the threshold: error rate 1 % -> 3 % (+2pp)", "edge", BASE,
             Version(p_err=0.03), 0),
    Scenario("edge-p95", "on the threshold: every duration x 1.25 (p95 +25 %)", "edge", BASE,
             Version(lat_median_ms=900 * 1.25), 1),
    Scenario("edge-tokens", "on the threshold: output tokens x 1.3 (+30 %)", "edge", BASE,
             Version(tok_median=250 * 1.3), 2),
    Scenario("bad-error", "worse: error rate 1 % -> 6 %", "bad", BASE, Version(p_err=0.06), 0),
    Scenario("bad-p95", "worse: p95 +60 %, median unchanged (latency sigma 0.5 -> 0.79)", "bad", BASE,
             Version(lat_sigma=0.5 + math.log(1.6) / Z_P95), 1),
    Scenario("bad-tokens", "worse: output tokens x 1.5 (+50 %)", "bad", BASE, Version(tok_median=250 * 1.5), 2),
]


def _lognormal_cdf(median: float, sigma: float) -> Callable[[float], float]:
    z = NormalDist(math.log(median), sigma)
    return lambda x: 0.0 if x <= 0 else z.cdf(math.log(x))


def _lowest(bucket_of: Callable[[int], int], target: int, hi: int) -> int:
    """The smallest integer n in [0, hi] with ``bucket_of(n) >= target`` (``bucket_of`` non-decreasing)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if bucket_of(mid) < target else (lo, mid)
    return lo


@cache
def duration_law(median_ms: float, sigma: float) -> tuple[list[float], list[float]]:
    """The relay's duration buckets of a lognormal duration: (bucket values, cumulative
    probabilities). A duration X ms is recorded as int(X * 1e6) ns and bucketed by
    ``duration_bucket``, so bucket i holds X in [e_i, e_(i+1)): e_i is the smallest whole ns in
    bucket i, found with ``duration_bucket`` itself. Buckets beyond 1e-13 of either tail are
    left out."""
    cdf = _lognormal_cdf(median_ms, sigma)
    first = duration_bucket(int(median_ms * math.exp(-8 * sigma) * 1e6))
    last = duration_bucket(int(median_ms * math.exp(8 * sigma) * 1e6))
    top = int(median_ms * math.exp(9 * sigma) * 1e6)
    edges = [_lowest(duration_bucket, b, top) / 1e6 for b in range(first, last + 2)]
    values, cum, total = [], [], 0.0
    for b, lo, hi in zip(range(first, last + 1), edges, edges[1:], strict=False):
        total += cdf(hi) - cdf(lo)
        values.append(duration_bucket_value_ms(b))
        cum.append(total)
    return values, cum


@cache
def token_law(median: float, sigma: float) -> tuple[list[float], list[float]]:
    """The relay's token buckets of round(X), X lognormal: bucket i holds the counts
    [lo_i, lo_(i+1)) (found with ``token_bucket`` itself), so X in [lo_i - 1/2, lo_(i+1) - 1/2)."""
    cdf = _lognormal_cdf(median, sigma)
    top = int(median * math.exp(9 * sigma)) + 2
    last = token_bucket(top)
    edges = [_lowest(token_bucket, b, top) for b in range(-1, last + 2)]
    values, cum, total = [], [], 0.0
    for b, lo, hi in zip(range(-1, last + 1), edges, edges[1:], strict=False):
        total += cdf(hi - 0.5) - cdf(lo - 0.5)
        values.append(token_bucket_value(b))
        cum.append(total)
    return values, cum


def _draw(rng: random.Random, law: tuple[list[float], list[float]], n: int) -> dict[float, int]:
    values, cum = law
    return dict(Counter(rng.choices(values, cum_weights=cum, k=n)))


def window(rng: random.Random, version: int, v: Version, n: int) -> SideWindow:
    """n generations of ``v`` as the relay's sketches hold them: each generation's duration and
    token buckets drawn from their exact probabilities (the same as drawing the value and binning
    it with the relay's functions, at a fraction of the cost)."""
    rand = rng.random
    errors = sum(1 for _ in range(n) if rand() < v.p_err)
    return SideWindow(version, n, errors, _draw(rng, duration_law(v.lat_median_ms, v.lat_sigma), n),
                      _draw(rng, token_law(v.tok_median, v.tok_sigma), n), {})


def step_sizes(rng: random.Random, share: float, least: int) -> tuple[int, int] | None:
    """(old, new) generations when both sides first have ``least``; None: never (100 %)."""
    if share >= 1.0:
        return None
    old = new = 0
    rand = rng.random
    while old < least or new < least:
        if rand() < share:
            new += 1
        else:
            old += 1
    return old, new


@dataclass
class Tally:
    rollouts: int = 0
    any_breach: int = 0  # rollouts with a breach at any judged step
    first_step: int = 0  # rollouts whose first step breached the target guard (bad, edge) or any (null)
    first_step_any: int = 0
    by_end: int = 0  # target guard breached at some judged step (the rollout stops there)
    judged_steps: int = 0
    target_breaches: int = 0  # judged steps where the target guard breached (edge: the size)
    guard_breaches: tuple[int, ...] = (0, 0, 0)  # rollouts where each guard breached at some step

    def add(self, o: Tally) -> None:
        self.rollouts += o.rollouts
        self.any_breach += o.any_breach
        self.first_step += o.first_step
        self.first_step_any += o.first_step_any
        self.by_end += o.by_end
        self.judged_steps += o.judged_steps
        self.target_breaches += o.target_breaches
        self.guard_breaches = tuple(a + b for a, b in zip(self.guard_breaches, o.guard_breaches, strict=True))


def run_chunk(args: tuple[int, int, int, int, int]) -> tuple[int, Tally]:
    index, chunk, rollouts, seed, least = args
    sc = SCENARIOS[index]
    rng = random.Random(f"rollout-false-alarm:{seed}:{sc.name}:{chunk}")
    t = Tally()
    per_guard = [0] * len(GUARDS)
    for _ in range(rollouts):
        t.rollouts += 1
        breached_any = target_hit = False
        hit = [False] * len(GUARDS)
        for s, share in enumerate(STEPS):
            sizes = step_sizes(rng, share, least)
            if sizes is None:
                continue
            if sc.kind == "bad" and s > 0 and target_hit:
                break  # the rollout stopped at the breach
            old = window(rng, 14, sc.old, sizes[0])
            new = window(rng, 15, sc.new, sizes[1])
            results = judge(GUARDS, old, new, alpha=ALPHA, min_generations=least)
            assert all(r.enough_data for r in results)
            t.judged_steps += 1
            flags = [r.breached for r in results]
            for i, f in enumerate(flags):
                hit[i] = hit[i] or f
            step_target = flags[sc.target] if sc.target is not None else any(flags)
            if s == 0:
                t.first_step += step_target
                t.first_step_any += any(flags)
            if sc.target is not None and flags[sc.target]:
                t.target_breaches += 1
                target_hit = True
            breached_any = breached_any or any(flags)
            if sc.kind == "bad" and any(flags):
                break  # a breach stops (and rolls back) the rollout
        t.any_breach += breached_any
        t.by_end += target_hit if sc.target is not None else breached_any
        for i, h in enumerate(hit):
            per_guard[i] += h
    t.guard_breaches = tuple(per_guard)
    return index, t


#: The binning check: thresholds against the bucket grid (2.10, 2.58 and 3.03 buckets).
BINNING_THRESHOLDS = (0.20, 0.25, 0.30)
BINNING_LEVEL = 0.05  # a 5 % test, so that a few hundred windows measure its size


def run_binning(args: tuple[int, int, int, int, int]) -> tuple[int, list[int]]:
    """The first step's window with the new version exactly on a threshold (durations x (1 + t)).
    Counts the breaches at the 5 % level of the p95 and Mann-Whitney tests, at the raw scale and
    interpolated between whole-bucket scales (what ``judge`` does)."""
    index, chunk, reps, seed, least = args
    threshold = BINNING_THRESHOLDS[index]
    rng = random.Random(f"rollout-binning:{seed}:{threshold}:{chunk}")
    scale = 1 + threshold
    hits = [0, 0, 0, 0]  # p95 raw, p95 interpolated, Mann-Whitney raw, Mann-Whitney interpolated
    for _ in range(reps):
        old = window(rng, 14, BASE, 19 * least).durations_ms  # the first step's shares: 95 / 5
        new = window(rng, 15, Version(lat_median_ms=BASE.lat_median_ms * scale), least).durations_ms
        tests = (partial(quantile_test_p, old, new, 0.95), partial(mann_whitney_p, old, new))
        for i, p_at in enumerate(tests):
            hits[2 * i] += p_at(scale) < BINNING_LEVEL
            hits[2 * i + 1] += interpolated_p(p_at, scale) < BINNING_LEVEL
    return index, [*hits, reps]


def _binomial(n: int, p: float) -> list[float]:
    lp, lq = math.log(p), math.log1p(-p)
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * lp + (n - k) * lq)
            for k in range(n + 1)]


def exact_size(n_new: int, n_old: int, p_old: float, margin: float, relative: bool, skew_corrected: bool) -> float:
    """The exact probability that the error-rate guard breaches when the new version sits on its
    threshold: summed over every outcome of both binomials (terms below 1e-15 left out)."""
    p_new = p_old * (1 + margin) if relative else p_old + margin
    old = [(x, w) for x, w in enumerate(_binomial(n_old, p_old)) if w > 1e-15]
    new = [(x, w) for x, w in enumerate(_binomial(n_new, p_new)) if w > 1e-15]
    return math.fsum(wo * wn for xo, wo in old for xn, wn in new
                     if error_rate_p(xn, n_new, xo, n_old, margin, relative=relative,
                                     skew_corrected=skew_corrected) < ALPHA)


def exact_table(least: int) -> None:
    print(f"| error-rate guard exactly on its threshold: exact size / alpha ({100 * ALPHA:.2f} %) | old error rate "
          "| 5 % step | 25 % step | 50 % step |")
    print("|---|---|---|---|---|")
    windows = ((least, 19 * least), (least, 3 * least), (least, least))
    for relative, margin, name in ((False, 0.02, "+2pp"), (True, 0.5, "+50%")):
        for skew_corrected in (False, True):
            test = "SCAS (judge)" if skew_corrected else "Farrington-Manning"
            for p_old in (0.005, 0.01, 0.02, 0.05):
                cells = " | ".join(f"{exact_size(n, o, p_old, margin, relative, skew_corrected) / ALPHA:.2f}"
                                   for n, o in windows)
                print(f"| error_rate:{name}, {test} | {100 * p_old:g} % | {cells} |")
    print()


# -- Clopper-Pearson -------------------------------------------------------------------------------
def _binom_cdf(x: int, n: int, p: float) -> float:
    """P(X <= x), X ~ Binomial(n, p)."""
    if p <= 0:
        return 1.0
    if p >= 1:
        return 1.0 if x >= n else 0.0
    lp, lq = math.log(p), math.log1p(-p)
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * lp + (n - i) * lq
            for i in range(x + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * math.fsum(math.exp(v - top) for v in logs))


def _bisect(below: Callable[[float], bool]) -> float:
    """The p in [0, 1] where ``below(p)`` turns from True to False (``below`` monotone)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if below(mid) else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(x: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The exact (Clopper-Pearson) interval of a binomial proportion x / n."""
    a = (1 - level) / 2
    lower = 0.0 if x == 0 else _bisect(lambda p: 1 - _binom_cdf(x - 1, n, p) < a)  # P(X >= x; p) = a
    upper = 1.0 if x == n else _bisect(lambda p: _binom_cdf(x, n, p) > a)  # P(X <= x; p) = a
    return lower, upper


def pct(x: int, n: int) -> str:
    lo, hi = clopper_pearson(x, n)
    return f"{100 * x / n:.2f} % [{100 * lo:.2f}, {100 * hi:.2f}]"


def commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "processor/promptstamp_relay/rollouts/_guards.py",
                                "processor/promptstamp_relay/rollouts/_model.py", "bench/rollout_false_alarm.py"],
                               cwd=root, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" (with uncommitted changes to _guards.py, _model.py or this script)" if dirty else "")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="a tenth of the rollouts")
    ap.add_argument("--rollouts", type=int, default=0, help="rollouts per null scenario (default 4000, quick 400)")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-generations", type=int, default=MIN_GENERATIONS,
                    help="generations each side needs before a step is judged (default 200)")
    ap.add_argument("--only", default="null,edge,bad,binning,exact", help="which tables (default: all five)")
    args = ap.parse_args(argv)
    only = {k.strip() for k in args.only.split(",") if k.strip()}
    least = args.min_generations
    null_n = args.rollouts or (400 if args.quick else 4000)
    sizes = {"null": null_n, "edge": max(1, null_n // 2), "bad": max(1, null_n // 4)}
    chunk = 50
    tasks = []
    for i, sc in enumerate(SCENARIOS):
        total = sizes[sc.kind] if sc.kind in only else 0
        for c in range(math.ceil(total / chunk)):
            tasks.append((i, c, min(chunk, total - c * chunk), args.seed, least))
    binning_n = max(1, null_n // 2) if "binning" in only else 0
    binning_tasks = [(i, c, min(chunk, binning_n - c * chunk), args.seed, least)
                     for i in range(len(BINNING_THRESHOLDS)) for c in range(math.ceil(binning_n / chunk))]
    tallies = [Tally() for _ in SCENARIOS]
    binning = [[0] * 5 for _ in BINNING_THRESHOLDS]
    started = time.monotonic()
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for index, t in pool.map(run_chunk, tasks):
            tallies[index].add(t)
        for index, hits in pool.map(run_binning, binning_tasks):
            binning[index] = [a + b for a, b in zip(binning[index], hits, strict=True)]
    took = time.monotonic() - started

    print(f"`python bench/rollout_false_alarm.py {' '.join(sys.argv[1:] if argv is None else argv)}`".replace(" `", "`")
          + f" (seed {args.seed}), "
          f"{os.cpu_count()} cores ({platform.machine()}, Python {platform.python_version()}), "
          f"{args.workers} workers, {took:.0f} s; commit {commit()}")
    print(f"Guards {', '.join(g.text for g in GUARDS)}; alpha per test {ALPHA:.5f} "
          f"(0.05 over {sum(1 for s in STEPS if s < 1.0)} judged steps x {len(GUARDS)} guards); "
          f"min {least} generations a side; "
          "95 % Clopper-Pearson intervals.\n")
    if "null" in only:
        null_table(tallies)
    if "edge" in only:
        edge_table(tallies)
    if "bad" in only:
        bad_table(tallies)
    if "binning" in only:
        binning_table(binning)
    if "exact" in only:
        exact_table(least)
    return 0


def null_table(tallies: list[Tally]) -> None:
    print("| scenario | rollouts | any guard breached, whole rollout | error_rate | p95_ms | output_tokens |")
    print("|---|---|---|---|---|---|")
    for sc, t in zip(SCENARIOS, tallies, strict=True):
        if sc.kind != "null":
            continue
        per = " | ".join(pct(b, t.rollouts) for b in t.guard_breaches)
        print(f"| {sc.what} | {t.rollouts:,} | **{pct(t.any_breach, t.rollouts)}** | {per} |")
    print()


def edge_table(tallies: list[Tally]) -> None:
    print("| scenario | judged steps | that guard's breaches per judged step (its alpha: "
          f"{100 * ALPHA:.2f} %) | rollouts with it breached |")
    print("|---|---|---|---|")
    for sc, t in zip(SCENARIOS, tallies, strict=True):
        if sc.kind != "edge":
            continue
        print(f"| {sc.what} | {t.judged_steps:,} | {pct(t.target_breaches, t.judged_steps)} | "
              f"{pct(t.by_end, t.rollouts)} |")
    print()


def bad_table(tallies: list[Tally]) -> None:
    print("| scenario | rollouts | detected at the first step (5 %) | any guard at the first step | "
          "detected by the last judged step (50 %) |")
    print("|---|---|---|---|---|")
    for sc, t in zip(SCENARIOS, tallies, strict=True):
        if sc.kind != "bad":
            continue
        print(f"| {sc.what} | {t.rollouts:,} | **{pct(t.first_step, t.rollouts)}** | "
              f"{pct(t.first_step_any, t.rollouts)} | {pct(t.by_end, t.rollouts)} |")
    print()


def binning_table(binning: list[list[int]]) -> None:
    print("| new version exactly on the threshold (first step's window) | windows | p95 test at the raw scale "
          "| p95, interpolated (judge) | Mann-Whitney at the raw scale | Mann-Whitney, interpolated (judge) |")
    print("|---|---|---|---|---|---|")
    for threshold, (q_raw, q_int, m_raw, m_int, n) in zip(BINNING_THRESHOLDS, binning, strict=True):
        buckets = math.log(1 + threshold) / LN_R
        print(f"| +{100 * threshold:.0f} % ({buckets:.2f} buckets), breaches at the {100 * BINNING_LEVEL:.0f} % level "
              f"| {n:,} | {pct(q_raw, n)} | {pct(q_int, n)} | {pct(m_raw, n)} | {pct(m_int, n)} |")
    print()


if __name__ == "__main__":
    sys.exit(main())
