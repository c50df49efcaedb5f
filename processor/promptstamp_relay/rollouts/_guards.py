"""The statistics of a guarded rollout: is the new version worse than the old one by more than a
margin, on the same window of traffic? See docs/rollout-statistics.md.

Pure: no I/O, no clock, standard library only. Every test is one-sided, with the null hypothesis
H0 "the new version is no worse than the old one beyond the guard's threshold", and returns a
p-value; a guard is *breached* when that p-value is below the per-test alpha
(:func:`per_test_alpha`). A breach needs evidence: a small window proves nothing either way and
breaches nothing.

Which test for which metric:

- ``error_rate``: the skewness-corrected asymptotic score test (SCAS), with the margin as a
  difference (``+2pp``) or a ratio (``+50%``). Its variance comes from the proportions fitted under
  H0, not the observed ones, so 0 or few errors on a side still give a usable test (a Wald test
  would divide by 0). The skewness correction keeps its size at alpha when errors are few.
- ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``: a distribution-free quantile test that
  generalises Mood's median test. The old side's durations are scaled by (1 + threshold), and each
  side's share above the pooled q quantile is compared with Fisher's exact one-sided test
  (hypergeometric tail sums in log space).
- ``duration_ms``, ``output_tokens``, ``input_tokens``: the one-sided Mann-Whitney U test of the
  new side against the old side scaled by (1 + threshold): normal approximation with tie
  correction (binned data are full of ties) and continuity correction.

The binned tests run at whole-bucket scales, where the scaled old midpoints fall exactly on the
new side's midpoints, and are interpolated in between (:func:`interpolated_p`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from statistics import NormalDist

__all__ = [
    "BUCKET_RATIO",
    "DEFAULT_GUARDS",
    "METRICS",
    "Guard",
    "GuardResult",
    "SideWindow",
    "binned_quantile",
    "error_rate_p",
    "hypergeom_sf",
    "interpolated_p",
    "judge",
    "mann_whitney_p",
    "parse_guard",
    "per_test_alpha",
    "quantile_test_p",
]

#: The pXX_ms guards and the quantile each one tests.
_QUANTILES = {"p50_ms": 0.50, "p90_ms": 0.90, "p95_ms": 0.95, "p99_ms": 0.99}
_TOKENS = ("output_tokens", "input_tokens")
#: Every metric a guard can name.
METRICS = ("error_rate", *_QUANTILES, "duration_ms", *_TOKENS)

_FORMS = ("error_rate:+2pp (absolute percentage points), error_rate:+50% (relative), "
          "p50_ms|p90_ms|p95_ms|p99_ms:+25% (a duration quantile), duration_ms:+20% (the whole duration "
          "distribution), output_tokens|input_tokens:+30% (tokens per generation)")
_NUMBER = re.compile(r"(?:\d+(?:\.\d*)?|\.\d+)")


@dataclass(frozen=True, slots=True)
class SideWindow:
    """One version's generations in the judged window: a diff of two snapshots of the relay's
    cumulative aggregates. The mappings go from a value to how many generations fell in its
    bucket. Buckets are log buckets of ratio 2^(1/8), about 4.4 % wide, and the value is the
    bucket's geometric middle (``rollouts._model.duration_bucket_value_ms``). For tokens the value
    is ``token_bucket_value``: 0 has a bucket of its own, and counts up to 15 are exact."""

    version: int
    generations: int
    errors: int  # generations with span status ERROR
    durations_ms: Mapping[float, int]
    output_tokens: Mapping[float, int]  # generations that reported tokens
    input_tokens: Mapping[float, int]

    def __post_init__(self) -> None:
        if self.generations < 0 or not 0 <= self.errors <= self.generations:
            raise ValueError(f"version {self.version}: {self.errors} errors in {self.generations} "
                             "generations (a window needs 0 <= errors <= generations)")
        for name in ("durations_ms", "output_tokens", "input_tokens"):
            for value, count in getattr(self, name).items():
                if count < 0 or not (math.isfinite(value) and value >= 0):
                    raise ValueError(f"version {self.version}: {name} has {count} at {value} "
                                     "(values must be finite and >= 0, counts >= 0)")


@dataclass(frozen=True, slots=True)
class Guard:
    """``--guard METRIC:+THRESHOLD``. ``threshold`` is a fraction: 0.25 for ``+25%``, and 0.02 for
    ``+2pp`` (``relative=False``: percentage points of the error rate)."""

    metric: str
    threshold: float
    relative: bool
    text: str  # canonical: error_rate:+2pp, p95_ms:+25%


def parse_guard(text: str) -> Guard:
    """Parse a ``--guard`` value: ``METRIC:+THRESHOLD``, where the threshold ends in ``%`` (relative)
    or ``pp`` (percentage points, ``error_rate`` only). Raises ``ValueError`` and names the accepted
    forms."""
    raw = text.strip()
    metric, sep, threshold = raw.partition(":")
    metric, threshold = metric.strip().lower(), threshold.strip().lower()
    if not sep:
        raise ValueError(f"guard {text!r} is not METRIC:+THRESHOLD; accepted forms: {_FORMS}")
    if metric not in METRICS:
        raise ValueError(f"unknown guard metric {metric!r} in {text!r}; accepted metrics: "
                         f"{', '.join(METRICS)} (forms: {_FORMS})")
    if not threshold:
        raise ValueError(f"guard {text!r} has no threshold after ':'; accepted forms: {_FORMS}")
    if threshold[0] != "+":
        why = ("worse means higher, so the threshold is how much higher the new version may be, "
               "written with '+'" if threshold[0] == "-" else "the threshold starts with '+'")
        raise ValueError(f"guard {text!r}: {why}; accepted forms: {_FORMS}")
    body = threshold[1:].strip()
    if body.endswith("pp"):
        number, relative = body[:-2].strip(), False
        if metric != "error_rate":
            raise ValueError(f"guard {text!r}: 'pp' (percentage points) applies to error_rate only; "
                             f"give {metric} a relative threshold such as {metric}:+25%; "
                             f"accepted forms: {_FORMS}")
    elif body.endswith("%"):
        number, relative = body[:-1].strip(), True
    else:
        raise ValueError(f"guard {text!r}: the threshold ends in '%' (relative) or, for error_rate, 'pp' "
                         f"(absolute percentage points); accepted forms: {_FORMS}")
    if not _NUMBER.fullmatch(number) or not math.isfinite(float(number)):
        raise ValueError(f"guard {text!r}: {number!r} is not a number; accepted forms: {_FORMS}")
    value = float(number)
    if not relative and value > 100:
        raise ValueError(f"guard {text!r}: an error rate cannot rise by more than 100pp")
    unit = "%" if relative else "pp"
    return Guard(metric, value / 100, relative, f"{metric}:+{value:.10g}{unit}")


#: What a rollout gets when no ``--guard`` is given (docs/rollout-statistics.md says why these).
DEFAULT_GUARDS: tuple[Guard, ...] = tuple(
    parse_guard(g) for g in ("error_rate:+2pp", "p95_ms:+25%", "output_tokens:+30%"))


def per_test_alpha(confidence: float = 0.95, steps: int = 4, guards: int = 3) -> float:
    """The alpha of each test: a Bonferroni split of ``1 - confidence`` over ``steps x guards`` tests.
    If the new version is no worse at any step, the whole rollout then false-alarms with probability
    at most ``1 - confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), not {confidence}")
    if steps < 1 or guards < 1:
        raise ValueError(f"steps and guards must be at least 1, not {steps} and {guards}")
    return (1 - confidence) / (steps * guards)


# -- the tests -------------------------------------------------------------------------------------
def _upper_normal(z: float) -> float:
    """P(Z >= z) for a standard normal; accurate far into the tail (erfc, not 1 - erf)."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def error_rate_p(errors_new: int, n_new: int, errors_old: int, n_old: int, margin: float, *,
                 relative: bool, skew_corrected: bool = True) -> float:
    """The one-sided score test of two proportions against a margin: P(Z >= z) under
    H0: p_new - p_old <= margin (``relative=False``), or p_new <= (1 + margin) p_old (``relative``).

    The score is the observed excess over the margin (p_new - p_old - margin, or
    p_new - (1 + margin) p_old). Its variance is taken at the proportions that maximise the
    likelihood on H0's boundary (Miettinen & Nurminen 1985, Stat Med 4:213; Farrington & Manning
    1990, Stat Med 9:1447). So a side with 0 errors still has a variance, and the test is defined
    for any counts.

    ``skew_corrected=True`` (what the guards use) is the skewness-corrected asymptotic score (SCAS)
    test of Laud (2017, Pharm Stat 16:334). It multiplies that variance by N/(N-1) and corrects z for
    the skewness of the score (Gart & Nam 1988, Biometrics 44:323; 1990, Biometrics 46:637). This
    gives the same p-value as ratesci's ``scoreci(..., skew=TRUE, bcf=TRUE, theta0=margin)``. With few
    errors on the smaller side, the plain score test is liberal in the upper tail: for 200 new
    against 3,800 old generations at the default alpha (0.0056), its exact size on the boundary is
    up to 2.1 times its alpha (3.0 times for a ratio margin). The skewness correction keeps it
    within 1.06 times at every judged step (docs/rollout-statistics.md). ``skew_corrected=False``
    is the plain Farrington-Manning test.
    """
    if n_new <= 0 or n_old <= 0:
        raise ValueError("both sides need generations")
    if not (0 <= errors_new <= n_new and 0 <= errors_old <= n_old):
        raise ValueError("errors must be between 0 and the generations")
    if margin < 0 or not math.isfinite(margin) or (not relative and margin > 1):
        raise ValueError(f"margin must be finite, >= 0 and, for a difference, <= 1; not {margin}")
    p1, p0 = errors_new / n_new, errors_old / n_old
    n, count = n_new + n_old, errors_new + errors_old
    if relative:
        ratio = 1 + margin
        # p1 = ratio * p0 on the boundary: the smaller root of N R p^2 - (R (n1 + x0) + x1 + n0) p + x = 0
        a = n * ratio
        b = -(ratio * (n_new + errors_old) + errors_new + n_old)
        r0 = (-b - math.sqrt(max(b * b - 4 * a * count, 0.0))) / (2 * a)
        r1 = ratio * r0
        stat = p1 - ratio * p0
        var = r1 * (1 - r1) / n_new + ratio * ratio * r0 * (1 - r0) / n_old
        mu3 = (r1 * (1 - r1) * (1 - 2 * r1) / n_new ** 2
               - ratio ** 3 * r0 * (1 - r0) * (1 - 2 * r0) / n_old ** 2)
    else:
        d = margin
        if d == 0:
            r0 = r1 = count / n
        else:
            # p1 = p0 + d on the boundary: the root in range of the likelihood equation, a cubic in p0
            # (its trigonometric solution, as in Farrington & Manning 1990)
            l3 = n
            l2 = (n_new + 2 * n_old) * d - n - count
            l1 = (n_old * d - n - 2 * errors_old) * d + count
            l0 = errors_old * d * (1 - d)
            shift = l2 / (3 * l3)
            q = shift ** 3 - l1 * l2 / (6 * l3 * l3) + l0 / (2 * l3)
            u = math.copysign(math.sqrt(max(shift * shift - l1 / (3 * l3), 0.0)), q)
            if u == 0:
                r0 = -shift
            else:
                w = (math.pi + math.acos(min(1.0, max(-1.0, q / u ** 3)))) / 3
                r0 = 2 * u * math.cos(w) - shift
            r0 = min(max(r0, 0.0), 1.0 - d)
            r1 = r0 + d
        stat = p1 - p0 - d
        var = r1 * (1 - r1) / n_new + r0 * (1 - r0) / n_old
        mu3 = r1 * (1 - r1) * (1 - 2 * r1) / n_new ** 2 - r0 * (1 - r0) * (1 - 2 * r0) / n_old ** 2
    if skew_corrected:
        var *= n / (n - 1)
    if var <= 0:  # fitted proportions of 0 or 1 (no errors, or only errors): nothing varies, no evidence
        return 1.0 if stat <= 0 else 0.0
    z = stat / math.sqrt(var)
    if skew_corrected and mu3 != 0:
        # z solves z = score - A (z^2 - 1), A = mu3 / (6 var^1.5): the root near the score
        skew = mu3 / (6 * var ** 1.5)
        disc = 1 + 4 * skew * (z + skew)
        z = 2 * (z + skew) / (1 + math.sqrt(disc)) if disc >= 0 else -1 / (2 * skew)
    return _upper_normal(z)


def _log_choose(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def hypergeom_sf(k: int, population: int, successes: int, draws: int) -> float:
    """P(X >= k) for X hypergeometric: ``draws`` taken without replacement from ``population``
    items of which ``successes`` are marked. This is Fisher's exact one-sided p-value for the table
    [[k, draws - k], [successes - k, population - draws - successes + k]].

    The tail is summed from its largest term outwards. That term comes from log-gamma, and each
    further term is the previous one times the exact ratio of successive terms. For k below the mode
    the result is 1 - P(X <= k - 1). Nothing overflows, and the result is accurate to about 1e-10
    relative.
    """
    if not (0 <= successes <= population and 0 <= draws <= population):
        raise ValueError("need 0 <= successes, draws <= population")
    lo, hi = max(0, draws - (population - successes)), min(successes, draws)
    if k <= lo:
        return 1.0
    if k > hi:
        return 0.0
    rest = population - successes - draws  # >= -lo

    def log_pmf(j: int) -> float:
        return (_log_choose(successes, j) + _log_choose(population - successes, draws - j)
                - _log_choose(population, draws))

    mode = (draws + 1) * (successes + 1) // (population + 2)
    if k >= mode:  # upper tail, decreasing from k
        terms, term = [1.0], 1.0
        for j in range(k, hi):
            term *= (successes - j) * (draws - j) / ((j + 1) * (rest + j + 1))
            terms.append(term)
            if term < 1e-18:
                break
        return min(1.0, math.exp(log_pmf(k)) * math.fsum(terms))
    terms, term = [1.0], 1.0  # lower tail k-1, k-2, ... (decreasing from k - 1 < mode)
    for j in range(k - 1, lo, -1):
        term *= j * (rest + j) / ((successes - j + 1) * (draws - j + 1))
        terms.append(term)
        if term < 1e-18:
            break
    return max(0.0, 1.0 - math.exp(log_pmf(k - 1)) * math.fsum(terms))


def _nearest_rank(sorted_items: Iterable[tuple[float, int]], total: int, q: float) -> float:
    rank = max(1, math.ceil(round(q * total, 9)))
    seen, value = 0, math.nan
    for value, count in sorted_items:
        seen += count
        if seen >= rank:
            return value
    return value


def binned_quantile(values: Mapping[float, int], q: float) -> float | None:
    """The q quantile (nearest rank, as the relay's own ``quantile_ms``) of binned values; None if
    there are none."""
    total = sum(values.values())
    if total <= 0:
        return None
    return _nearest_rank(sorted((v, c) for v, c in values.items() if c), total, q)


#: Values closer than this ratio are one value. Bucket midpoints are 4.4 % apart, but an old
#: midpoint times a scale of whole buckets (2^(k/8)) and the new side's midpoint k buckets up
#: differ in their last bits. Compared as floats, those ties would all break one way.
_SAME = 1 + 1e-9


def _merged(old: Mapping[float, int], new: Mapping[float, int], scale: float) -> list[tuple[float, int, int]]:
    """(value, old count, new count) in value order, the old side's values multiplied by ``scale``;
    values within a ratio of ``_SAME`` are merged (ties)."""
    items = sorted([(v * scale, c, 0) for v, c in old.items() if c]
                   + [(v, 0, c) for v, c in new.items() if c])
    rows: list[tuple[float, int, int]] = []
    for v, oc, nc in items:
        if rows and v <= rows[-1][0] * _SAME:
            first, o, n = rows[-1]
            rows[-1] = (first, o + oc, n + nc)
        else:
            rows.append((v, oc, nc))
    return rows


def quantile_test_p(old: Mapping[float, int], new: Mapping[float, int], q: float, scale: float) -> float:
    """H0: new's q quantile <= ``scale`` x old's. The old values are multiplied by ``scale``. The cut
    is the pooled q quantile (nearest rank). Fisher's exact one-sided test then asks whether the new
    side has more values strictly above the cut than the old side does. If the two scaled distributions
    are the same, the labels are exchangeable given the pooled values, so the count above the cut
    is exactly hypergeometric (Mood's median test, generalised to any quantile and a margin)."""
    if not 0 < q < 1:
        raise ValueError(f"q must be between 0 and 1 (exclusive), not {q}")
    rows = _merged(old, new, scale)
    n_old = sum(r[1] for r in rows)
    n_new = sum(r[2] for r in rows)
    if n_old == 0 or n_new == 0:
        raise ValueError("both sides need values")
    cut = _nearest_rank(((v, oc + nc) for v, oc, nc in rows), n_old + n_new, q)
    above_old = sum(oc for v, oc, _ in rows if v > cut)
    above_new = sum(nc for v, _, nc in rows if v > cut)
    return hypergeom_sf(above_new, n_old + n_new, above_old + above_new, n_new)


def mann_whitney_p(old: Mapping[float, int], new: Mapping[float, int], scale: float) -> float:
    """H0: new is not stochastically larger than ``scale`` x old. This is the one-sided Mann-Whitney U
    test with midranks for ties. It uses the normal approximation with the tie-corrected variance
    n1 n0 / 12 * (N + 1 - sum(t^3 - t) / (N (N - 1))) and a continuity correction of 1/2. It gives
    the same value as ``scipy.stats.mannwhitneyu(new, scale * old, alternative="greater",
    method="asymptotic")``."""
    rows = _merged(old, new, scale)
    n_old = sum(r[1] for r in rows)
    n_new = sum(r[2] for r in rows)
    if n_old == 0 or n_new == 0:
        raise ValueError("both sides need values")
    n = n_old + n_new
    seen = twice_rank_sum = ties = 0
    for _, oc, nc in rows:  # integers throughout: 2 x midrank = 2 seen + t + 1
        t = oc + nc
        twice_rank_sum += nc * (2 * seen + t + 1)
        ties += t ** 3 - t
        seen += t
    u = (twice_rank_sum - n_new * (n_new + 1)) / 2
    var = n_new * n_old / 12 * ((n + 1) - ties / (n * (n - 1)))
    if var <= 0:  # every value tied: no order, no evidence
        return 1.0
    return _upper_normal((u - n_new * n_old / 2 - 0.5) / math.sqrt(var))


#: The relay's bucket ratio: durations (and tokens) come as midpoints of buckets 2^(1/8) apart.
BUCKET_RATIO = 2 ** (1 / 8)
_LN_BUCKET = math.log(BUCKET_RATIO)
_NORMAL = NormalDist()


def _z(p: float) -> float:
    """The normal score of a one-sided p-value (p = P(Z >= z)), finite for p of 0 or 1."""
    return -_NORMAL.inv_cdf(min(max(p, 1e-300), 1 - 2 ** -53))


def interpolated_p(p_at: Callable[[float], float], scale: float) -> float:
    """The p-value of a scaled comparison of binned data at any ``scale``.

    ``p_at(s)`` is a test of new against old x s. It is called only at whole-bucket scales
    ``BUCKET_RATIO ** k``. At those scales the scaled old midpoints fall exactly on the new side's
    midpoints, and ties are merged. So if new is distributed as old x s, the two sides' binned
    values are exchangeable and the test keeps its size. Between two whole-bucket scales the old
    midpoints fall between the new ones, and every close comparison then breaks the same way. The test
    becomes liberal or conservative depending on where the threshold falls on the bucket grid:
    about twice its alpha for the p95 test at +25 %, almost never breaching for Mann-Whitney at
    +30 % (docs/rollout-statistics.md, measured by bench/rollout_false_alarm.py). So for a scale
    that lies a fraction f (in log scale) of the way from ``BUCKET_RATIO ** k`` to
    ``BUCKET_RATIO ** (k+1)``, this returns P(Z >= (1 - f) z_k + f z_(k+1)). Here z_k and z_(k+1)
    are the normal scores of ``p_at`` at the whole-bucket scales below and above.
    """
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"scale must be finite and > 0, not {scale}")
    k = math.log(scale) / _LN_BUCKET
    below = math.floor(k)
    f = k - below
    if f < 1e-9 or f > 1 - 1e-9:
        return p_at(BUCKET_RATIO ** round(k))
    z_below, z_above = _z(p_at(BUCKET_RATIO ** below)), _z(p_at(BUCKET_RATIO ** (below + 1)))
    return _upper_normal((1 - f) * z_below + f * z_above)


# -- judging a window ------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GuardResult:
    """One guard's verdict on one window. ``p_value`` is None when there was not enough data. The
    figures are each side's value of the metric (None when the side has no data): the error rate in
    %, the quantile in ms, or the median of the durations (ms) or of the tokens per generation."""

    guard: Guard
    breached: bool
    p_value: float | None
    alpha: float
    old_figure: float | None
    new_figure: float | None
    test: str
    enough_data: bool
    detail: str


_SCORE_DIFF = "skewness-corrected score test (SCAS) of the difference, one-sided"
_SCORE_RATIO = "skewness-corrected score test (SCAS) of the ratio, one-sided"
_QUANTILE = "quantile test (Fisher's exact, one-sided), between whole-bucket scales"
_MWU = ("Mann-Whitney U, one-sided (normal approximation, tie and continuity corrected), between "
        "whole-bucket scales")


def _what(metric: str) -> str:
    if metric == "error_rate":
        return "error rate"
    if metric in _QUANTILES:
        return f"{metric[:3]} duration"
    if metric == "duration_ms":
        return "duration (whole distribution; medians shown)"
    return f"{metric.replace('_', ' ')} per generation (whole distribution; medians shown)"


def _figure(metric: str, x: float | None) -> str:
    if x is None:
        return "none"
    if metric == "error_rate":
        return f"{x:.2f} %"
    if metric in _TOKENS:
        return f"{x:,.0f}"
    return f"{x:,.1f} ms" if x < 100 else f"{x:,.0f} ms"


def _margin(guard: Guard) -> str:
    return f"{guard.threshold * 100:.10g} {'%' if guard.relative else 'pp'}"


def _values(side: SideWindow, metric: str) -> Mapping[float, int]:
    return side.input_tokens if metric == "input_tokens" else (
        side.output_tokens if metric == "output_tokens" else side.durations_ms)


def judge(guards: Iterable[Guard], old: SideWindow, new: SideWindow, *, alpha: float,
          min_generations: int) -> list[GuardResult]:
    """Each guard's verdict on one window, in the guards' order. A guard is judged only when each side
    has at least ``min_generations`` generations (for a token guard, generations that reported
    tokens; for a duration guard, durations). Otherwise it is ``enough_data=False`` and never
    breached. A judged guard is breached iff its p-value is below ``alpha``."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), not {alpha}")
    if min_generations < 1:
        raise ValueError(f"min_generations must be at least 1, not {min_generations}")
    return [_judge_one(g, old, new, alpha, min_generations) for g in guards]


def _judge_one(guard: Guard, old: SideWindow, new: SideWindow, alpha: float, least: int) -> GuardResult:
    metric = guard.metric
    what = _what(metric)
    short = [f"{s.generations:,} generations on v{s.version}" for s in (new, old) if s.generations < least]
    if metric == "error_rate":
        test = _SCORE_RATIO if guard.relative else _SCORE_DIFF
        fig_old = 100 * old.errors / old.generations if old.generations else None
        fig_new = 100 * new.errors / new.generations if new.generations else None
    else:
        vo, vn = _values(old, metric), _values(new, metric)
        n_old, n_new = sum(vo.values()), sum(vn.values())
        q = _QUANTILES.get(metric, 0.5)
        fig_old, fig_new = binned_quantile(vo, q), binned_quantile(vn, q)
        test = _QUANTILE if metric in _QUANTILES else _MWU
        counted = "that reported tokens" if metric in _TOKENS else "with a duration"
        if not short:
            short = [f"{n:,} generations {counted} on v{s.version}" if n else
                     f"no generations {counted} on v{s.version}"
                     for n, s in ((n_new, new), (n_old, old)) if n < least]
    sides = (f"{_figure(metric, fig_new)} on v{new.version} against {_figure(metric, fig_old)} "
             f"on v{old.version}")
    if short:
        detail = (f"{what}: not enough data to judge ({'; '.join(short)}; at least {least:,} on each "
                  f"side are needed)")
        return GuardResult(guard, False, None, alpha, fig_old, fig_new, test, False, detail)
    if metric == "error_rate":
        p = error_rate_p(new.errors, new.generations, old.errors, old.generations, guard.threshold,
                         relative=guard.relative)
        sides += (f" ({new.errors:,} of {new.generations:,} generations against "
                  f"{old.errors:,} of {old.generations:,})")
    elif metric in _QUANTILES:
        q = _QUANTILES[metric]
        p = interpolated_p(lambda s: quantile_test_p(vo, vn, q, s), 1 + guard.threshold)
        sides += f" ({n_new:,} and {n_old:,} generations)"
    else:
        p = interpolated_p(lambda s: mann_whitney_p(vo, vn, s), 1 + guard.threshold)
        sides += f" ({n_new:,} and {n_old:,} generations)"
    breached = p < alpha
    verdict = (f"worse by more than {_margin(guard)} (p = {p:.2g} < alpha {alpha:.2g})" if breached else
               f"no evidence of worse by more than {_margin(guard)} (p = {p:.2g}, alpha {alpha:.2g})")
    return GuardResult(guard, breached, p, alpha, fig_old, fig_new, test, True, f"{what} {sides}: {verdict}")
