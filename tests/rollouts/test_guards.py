"""The statistics of guarded rollouts (``rollouts._guards``): parsing ``--guard``, each test
against reference values, the direction of every test, and ``judge`` on whole windows.

The reference values were computed once by hand or in a throwaway virtualenv (scipy 1.17.1,
statsmodels 0.15.0). Neither library is a dependency of the project. Each value's source is given
where it is used. The windows are deterministic: lognormal durations and tokens are taken at evenly
spaced quantiles (stdlib ``NormalDist``). They are binned like the relay's sketch: buckets of ratio
2^(1/8), read back as their geometric midpoints.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from fractions import Fraction
from statistics import NormalDist

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptstamp_relay.rollouts._guards import (
    DEFAULT_GUARDS,
    METRICS,
    Guard,
    SideWindow,
    binned_quantile,
    error_rate_p,
    hypergeom_sf,
    interpolated_p,
    judge,
    mann_whitney_p,
    parse_guard,
    per_test_alpha,
    quantile_test_p,
)

R = 2 ** (1 / 8)
ALPHA = per_test_alpha(0.95, 4, 3)  # the defaults: 0.05 / 12


def binned(values: list[float]) -> dict[float, int]:
    """The relay's sketch: bucket floor(log_r(x)), read back as its geometric midpoint."""
    return dict(Counter(R ** (math.floor(math.log(x, R)) + 0.5) for x in values))


def lognormal(n: int, median: float, sigma: float, scale: float = 1.0) -> dict[float, int]:
    """n lognormal values at the quantiles (i + 1/2)/n, times ``scale``, binned."""
    z = NormalDist()
    return binned([scale * median * math.exp(sigma * z.inv_cdf((i + 0.5) / n)) for i in range(n)])


def side(version: int, n: int, errors: int = 0, *, latency: float = 1.0, tokens: float = 1.0,
         with_tokens: bool = True) -> SideWindow:
    return SideWindow(version, n, errors, lognormal(n, 900, 0.5, latency),
                      lognormal(n, 250, 0.6, tokens) if with_tokens else {},
                      lognormal(n, 1200, 0.3) if with_tokens else {})


def guard(text: str) -> tuple[Guard]:
    return (parse_guard(text),)


# -- parse_guard -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "metric", "threshold", "relative", "canonical"), [
    ("error_rate:+2pp", "error_rate", 0.02, False, "error_rate:+2pp"),
    ("error_rate:+50%", "error_rate", 0.5, True, "error_rate:+50%"),
    ("p50_ms:+25%", "p50_ms", 0.25, True, "p50_ms:+25%"),
    ("p90_ms:+10%", "p90_ms", 0.1, True, "p90_ms:+10%"),
    (" P95_MS : +25 % ", "p95_ms", 0.25, True, "p95_ms:+25%"),
    ("p99_ms:+100%", "p99_ms", 1.0, True, "p99_ms:+100%"),
    ("duration_ms:+20%", "duration_ms", 0.2, True, "duration_ms:+20%"),
    ("output_tokens:+30%", "output_tokens", 0.3, True, "output_tokens:+30%"),
    ("input_tokens:+30.5%", "input_tokens", 0.305, True, "input_tokens:+30.5%"),
    ("error_rate:+0.5pp", "error_rate", 0.005, False, "error_rate:+0.5pp"),
    ("error_rate:+0pp", "error_rate", 0.0, False, "error_rate:+0pp"),
    ("error_rate:+2.PP", "error_rate", 0.02, False, "error_rate:+2pp"),
])
def test_parse_guard_accepts_the_documented_forms(text: str, metric: str, threshold: float, relative: bool,
                                                  canonical: str) -> None:
    g = parse_guard(text)
    assert (g.metric, g.relative, g.text) == (metric, relative, canonical)
    assert g.threshold == pytest.approx(threshold)
    assert parse_guard(g.text) == g


@pytest.mark.parametrize(("text", "says"), [
    ("p95_ms", "is not METRIC:+THRESHOLD"),
    ("p97_ms:+25%", "unknown guard metric 'p97_ms'"),
    ("latency:+25%", "accepted metrics: error_rate, p50_ms, p90_ms, p95_ms, p99_ms, duration_ms"),
    ("p95_ms:", "has no threshold"),
    ("p95_ms:-25%", "worse means higher"),
    ("p95_ms:25%", "the threshold starts with '+'"),
    ("p95_ms:+2pp", "'pp' (percentage points) applies to error_rate only"),
    ("error_rate:+2", "ends in '%' (relative) or, for error_rate, 'pp'"),
    ("error_rate:+2x%", "'2x' is not a number"),
    ("error_rate:+%", "'' is not a number"),
    ("error_rate:+1e3%", "is not a number"),
    ("error_rate:+nan%", "is not a number"),
    ("error_rate:+101pp", "more than 100pp"),
    ("p95_ms:+" + "9" * 400 + "%", "is not a number"),
])
def test_parse_guard_errors_name_the_accepted_forms(text: str, says: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_guard(text)
    assert says in str(e.value)
    if "100pp" not in says:
        assert "error_rate:+2pp" in str(e.value)  # every other message shows the accepted forms


def test_default_guards() -> None:
    assert [g.text for g in DEFAULT_GUARDS] == ["error_rate:+2pp", "p95_ms:+25%", "output_tokens:+30%"]
    assert set(METRICS) == {"error_rate", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "duration_ms",
                            "output_tokens", "input_tokens"}


def test_per_test_alpha_is_bonferroni_over_steps_and_guards() -> None:
    assert per_test_alpha(0.95, 4, 3) == pytest.approx(0.05 / 12)
    assert per_test_alpha() == pytest.approx(0.05 / 12)
    assert per_test_alpha(0.99, 1, 1) == pytest.approx(0.01)
    for bad in [(1.0, 4, 3), (0.0, 4, 3), (0.95, 0, 3), (0.95, 4, 0)]:
        with pytest.raises(ValueError):
            per_test_alpha(*bad)


# -- reference values ------------------------------------------------------------------------------
# The reference implementation of the score tests is ratesci (P. Laud), R/scoreci.R at commit 4c1830c,
# sourced into R 4.2.2: scoretheta(theta = margin (RD) or 1 + margin (RR), x1 = new errors, n1,
# x2 = old errors, n2, contrast = "RD" / "RR", ...), then pnorm(score, lower.tail = FALSE).
# SCAS is skew = TRUE, bcf = TRUE (its scasci()); Farrington-Manning is skew = FALSE, bcf = FALSE.
# ratesci rounds the fitted proportions to 10 decimals, so the two agree to about 1e-7 relative. On
# 3,000 random tables the worst difference was 1.6e-7 relative (SCAS). statsmodels 0.15.0
# agrees on the ratios. Its difference test fits the boundary proportions with a wrong cubic
# coefficient (statsmodels issue #10269), so it is not a reference for margins in pp.
@pytest.mark.parametrize(("x1", "n1", "x0", "n0", "margin", "relative", "scas", "fm"), [
    (20, 200, 2, 200, 0.02, False, 0.00065414242001976953, 0.00052669437313354584),
    (12, 200, 38, 3800, 0.02, False, 0.013828075721762395, 0.0072851524672535887),
    (3, 200, 0, 200, 0, False, 0.041245843904533286, 0.041054090286903676),
    (0, 200, 0, 200, 0.02, False, 0.9918389954793827, 0.97832412436956862),
    (6, 200, 0, 200, 0.02, False, 0.15681072948329849, 0.15621110562134674),
    (5, 100, 1, 100, 0.5, True, 0.11688160949967669, 0.11856689208306877),
    (9, 200, 2, 200, 0.5, True, 0.064246651133662749, 0.067431900393318228),
    (4, 200, 0, 3800, 0.5, True, 0.00011298768660291989, 5.3368365867312563e-13),
    (15, 500, 5, 500, 0, True, 0.011984053557477496, 0.011948855339755078),
])
def test_score_tests_match_ratesci(x1: int, n1: int, x0: int, n0: int, margin: float, relative: bool,
                                   scas: float, fm: float) -> None:
    assert error_rate_p(x1, n1, x0, n0, margin, relative=relative) == pytest.approx(scas, rel=1e-6)
    assert error_rate_p(x1, n1, x0, n0, margin, relative=relative, skew_corrected=False) == \
        pytest.approx(fm, rel=1e-5)


def _binomial(n: int, p: float) -> list[float]:
    return [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * math.log(p)
                     + (n - k) * math.log1p(-p)) for k in range(n + 1)]


@pytest.mark.parametrize(("relative", "margin", "p_new"), [(False, 0.02, 0.03), (True, 0.5, 0.015)])
def test_the_skewness_correction_keeps_the_size_at_alpha(relative: bool, margin: float, p_new: float) -> None:
    # The exact probability of a breach when the new version sits on the threshold (old 1 %), with
    # the first step's window (200 new against 3,800 old generations): summed over every outcome.
    # The plain Farrington-Manning test breaches 2.2 times (2.6 for a ratio) as often as its alpha
    # says; SCAS stays at or below alpha.
    old, new = _binomial(3800, 0.01)[:120], _binomial(200, p_new)[:60]

    def size(skew_corrected: bool) -> float:
        return sum(po * pn for x0, po in enumerate(old) for x1, pn in enumerate(new)
                   if error_rate_p(x1, 200, x0, 3800, margin, relative=relative,
                                   skew_corrected=skew_corrected) < ALPHA)

    assert size(True) < ALPHA
    assert size(False) > 2 * ALPHA


def test_error_rate_p_without_evidence() -> None:
    # No errors anywhere, with no margin or a relative one: the boundary proportions are 0 and
    # nothing varies, so there is no evidence at all: p = 1.
    for skew_corrected in (True, False):
        assert error_rate_p(0, 200, 0, 200, 0.0, relative=False, skew_corrected=skew_corrected) == 1.0
        assert error_rate_p(0, 200, 0, 200, 0.0, relative=True, skew_corrected=skew_corrected) == 1.0
        assert error_rate_p(0, 200, 0, 200, 0.5, relative=True, skew_corrected=skew_corrected) == 1.0
        assert error_rate_p(200, 200, 200, 200, 0.0, relative=False, skew_corrected=skew_corrected) == 1.0
        assert error_rate_p(0, 200, 0, 200, 0.02, relative=False, skew_corrected=skew_corrected) > 0.9
    # a vanishing margin in pp: the skewness term dominates, but the p-value stays far from any alpha
    assert error_rate_p(0, 200, 0, 200, 1e-9, relative=False) > 0.15
    with pytest.raises(ValueError):
        error_rate_p(1, 0, 0, 10, 0.0, relative=False)
    with pytest.raises(ValueError):
        error_rate_p(11, 10, 0, 10, 0.0, relative=False)
    with pytest.raises(ValueError):
        error_rate_p(1, 10, 0, 10, 1.5, relative=False)


def test_fisher_tea_tasting() -> None:
    # Fisher (1935), The Design of Experiments, §2: 8 cups, 4 with milk first, 3 of the lady's 4
    # picks right. P(3 or 4 right) = (C(4,3) C(4,1) + C(4,4) C(4,0)) / C(8,4) = 17/70.
    assert hypergeom_sf(3, 8, 4, 4) == pytest.approx(float(Fraction(17, 70)), rel=1e-12)
    assert hypergeom_sf(4, 8, 4, 4) == pytest.approx(1 / 70, rel=1e-12)
    assert hypergeom_sf(0, 8, 4, 4) == 1.0
    assert hypergeom_sf(5, 8, 4, 4) == 0.0


def test_hypergeometric_tail_matches_scipy() -> None:
    # scipy 1.17.1: fisher_exact([[25, 175], [190, 3610]], alternative="greater").pvalue
    # == hypergeom.sf(24, 4000, 215, 200)
    assert hypergeom_sf(25, 4000, 215, 200) == pytest.approx(4.928285967504639e-05, rel=1e-9)


def test_hypergeometric_tail_sums_to_one_exactly_enough() -> None:
    # P(X >= k) - P(X >= k + 1) = P(X = k), checked against the exact rational pmf
    population, successes, draws = 30, 12, 10
    for k in range(11):
        pmf = Fraction(math.comb(successes, k) * math.comb(population - successes, draws - k),
                       math.comb(population, draws))
        got = hypergeom_sf(k, population, successes, draws) - hypergeom_sf(k + 1, population, successes, draws)
        assert got == pytest.approx(float(pmf), abs=1e-14)


def test_mann_whitney_matches_scipy_and_a_hand_count() -> None:
    new = dict(Counter([1.1, 2.3, 2.3, 4.0, 5.5, 5.5, 7.0]))
    old = dict(Counter([0.9, 1.1, 2.3, 3.0, 3.0]))
    # By hand: U_new = #(new > old) + #(new == old)/2 over the 35 pairs = 26.5; ties (1.1) x2,
    # (2.3) x3, (3.0) x2, (5.5) x2, so sum(t^3 - t) = 6 + 24 + 6 + 6 = 42 and
    # var = 7 * 5 / 12 * (13 - 42 / 132) = 36.99; z = (26.5 - 17.5 - 0.5) / 6.082 = 1.3975.
    # scipy 1.17.1: mannwhitneyu(new, old, alternative="greater", method="asymptotic")
    # -> statistic 26.5, pvalue 0.08111570349463171
    assert mann_whitney_p(old, new, 1.0) == pytest.approx(0.08111570349463171, rel=1e-12)
    assert mann_whitney_p(old, new, 1.0) == pytest.approx(0.5 * math.erfc(8.5 / math.sqrt(2 * 35 / 12 * (13 - 42 / 132))))
    # the same with the old side scaled by 1.25 (scipy: statistic 24.0, pvalue 0.16365450177689855)
    assert mann_whitney_p(old, new, 1.25) == pytest.approx(0.16365450177689855, rel=1e-12)


def test_mann_whitney_all_tied_is_no_evidence() -> None:
    assert mann_whitney_p({5.0: 10}, {5.0: 10}, 1.0) == 1.0


def test_quantile_test_is_the_exact_permutation_test() -> None:
    # Under H0, with the scaled old side and the new side alike, every split of the pooled values
    # into the two sides is equally likely; the p-value is the share of splits with at least as
    # many new values above the pooled quantile. Enumerated here, with ties across and within sides.
    old = {1.0: 2, 2.0: 1, 3.0: 2, 5.0: 1}
    new = {2.0: 1, 3.0: 1, 4.0: 1, 6.0: 2}
    pooled = sorted([v for v, c in old.items() for _ in range(c)] + [v for v, c in new.items() for _ in range(c)])
    for q in (0.5, 0.75, 0.9):
        cut = pooled[math.ceil(q * len(pooled)) - 1]
        seen = sum(1 for v, c in new.items() for _ in range(c) if v > cut)
        splits = list(itertools.combinations(range(len(pooled)), 5))
        extreme = sum(1 for s in splits if sum(pooled[i] > cut for i in s) >= seen)
        assert quantile_test_p(old, new, q, 1.0) == pytest.approx(extreme / len(splits), rel=1e-12)


def test_quantile_test_scales_the_old_side() -> None:
    # old x 2 = {2, 4, 6, 8}, new {3, 5, 7, 9}: the pooled 75 % quantile (rank 6 of 8) is 7; above it
    # new 9 and old 8 -> P(X >= 1), X ~ hypergeometric(8, 2, 4): 1 - C(6, 4) / C(8, 4) = 11/14
    assert quantile_test_p({1.0: 1, 2.0: 1, 3.0: 1, 4.0: 1}, {3.0: 1, 5.0: 1, 7.0: 1, 9.0: 1}, 0.75, 2.0) == \
        pytest.approx(11 / 14, rel=1e-12)
    # unscaled, the cut is 5 (rank 6 of {1, 2, 3, 3, 4, 5, 7, 9}) and only new values are above it:
    # P(X >= 2), X ~ hypergeometric(8, 2, 4) = C(6, 2) / C(8, 4) = 15/70
    assert quantile_test_p({1.0: 1, 2.0: 1, 3.0: 1, 4.0: 1}, {3.0: 1, 5.0: 1, 7.0: 1, 9.0: 1}, 0.75, 1.0) == \
        pytest.approx(15 / 70, rel=1e-12)
    with pytest.raises(ValueError):
        quantile_test_p({}, {1.0: 1}, 0.5, 1.0)
    with pytest.raises(ValueError):
        quantile_test_p({1.0: 1}, {1.0: 1}, 1.0, 1.0)


def test_binned_quantile_is_nearest_rank() -> None:
    values = {10.0: 90, 20.0: 5, 40.0: 5}
    assert binned_quantile(values, 0.5) == 10.0
    assert binned_quantile(values, 0.90) == 10.0
    assert binned_quantile(values, 0.95) == 20.0
    assert binned_quantile(values, 0.99) == 40.0
    assert binned_quantile({}, 0.5) is None


def test_whole_bucket_scales_tie_with_the_new_sides_midpoints() -> None:
    # old midpoints x 2^(2/8) differ from the midpoints two buckets up in their last bits; merged as
    # ties, a version exactly two buckets slower is exactly "the same" as the unscaled comparison
    old = lognormal(500, 900, 0.5)
    shifted = {v * R ** 2: c for v, c in old.items()}
    mids = {R ** (round(math.log(v, R) - 0.5) + 2.5): c for v, c in old.items()}
    assert any(a != b for a, b in zip(sorted(shifted), sorted(mids), strict=True))  # the float noise is real
    assert mann_whitney_p(old, mids, R ** 2) == pytest.approx(mann_whitney_p(old, old, 1.0), rel=1e-12)
    assert quantile_test_p(old, mids, 0.95, R ** 2) == pytest.approx(quantile_test_p(old, old, 0.95, 1.0), rel=1e-12)


def test_interpolated_p_blends_the_whole_bucket_scales_around_the_threshold() -> None:
    asked: list[float] = []

    def p_at(scale: float) -> float:
        asked.append(scale)
        return 0.01 if scale < 1.2 else 0.5  # a breach below the bracket's top, none at it

    assert interpolated_p(p_at, R ** 2) == 0.01 and asked == [pytest.approx(R ** 2)]
    asked.clear()
    # 1.25 is 2.575 buckets: 57.5 % of the way from 2 to 3 buckets, by normal scores
    got = interpolated_p(p_at, 1.25)
    assert asked == [pytest.approx(R ** 2), pytest.approx(R ** 3)]
    f, z = math.log(1.25, R) - 2, NormalDist().inv_cdf
    assert f == pytest.approx(0.575, abs=1e-3)
    assert got == pytest.approx(1 - NormalDist().cdf((1 - f) * -z(0.01) + f * -z(0.5)), rel=1e-9)
    with pytest.raises(ValueError):
        interpolated_p(p_at, 0.0)


@pytest.mark.parametrize("scale", [1.1, 1.2, 1.25, 1.3, 1.5])
def test_on_the_threshold_the_binned_tests_are_undecided(scale: float) -> None:
    # The new version is exactly (1 + threshold) x the old one (4,000 generations each, at evenly
    # spaced quantiles). The interpolated tests stay near p = 1/2 at every threshold. The same tests
    # at the raw scale give p anywhere from 2e-4 (the median test at +25 %) to 0.999, depending on
    # where the threshold falls on the bucket grid.
    old, new = lognormal(4000, 900, 0.5), lognormal(4000, 900, 0.5, scale)
    for p_at in (lambda s: mann_whitney_p(old, new, s), lambda s: quantile_test_p(old, new, 0.95, s),
                 lambda s: quantile_test_p(old, new, 0.5, s)):
        assert 0.45 < interpolated_p(p_at, scale) < 0.6


# -- direction -------------------------------------------------------------------------------------
# The score tests are monotone wherever a decision is made. Among p-values below 0.15 (above any
# alpha a rollout would use), more errors on the new side never make a breach less likely, and more
# errors on the old side or a wider margin never make one more likely. In a very small or very
# lopsided table the skewness correction can reorder p-values above that. The lowest such p-value
# found in a search was 0.164, for 1 new generation against 20,000 old ones.
DECIDES = 0.15


def _ordered(ps: list[float], falling: bool) -> bool:
    return all((a >= b - 1e-12 if falling else a <= b + 1e-12) or min(a, b) >= DECIDES
               for a, b in itertools.pairwise(ps))


@given(st.integers(1, 400), st.integers(1, 4000), st.integers(0, 40), st.sampled_from([0.0, 0.02, 0.1, 0.5]),
       st.booleans(), st.booleans())
def test_error_rate_p_falls_as_new_errors_rise(n_new: int, n_old: int, x_old: int, margin: float,
                                               relative: bool, skew_corrected: bool) -> None:
    x_old = min(x_old, n_old)
    ps = [error_rate_p(x, n_new, x_old, n_old, margin, relative=relative, skew_corrected=skew_corrected)
          for x in range(n_new + 1)]
    assert all(0.0 <= p <= 1.0 for p in ps)
    assert _ordered(ps, falling=True), ps


@given(st.integers(0, 30), st.integers(0, 30), st.sampled_from([20, 200, 3800]))
def test_error_rate_p_rises_with_the_margin_and_old_errors(x_new: int, x_old: int, n_old: int) -> None:
    for relative, margins in ((False, [0, 0.01, 0.02, 0.05, 0.2]), (True, [0, 0.25, 0.5, 1, 3])):
        ps = [error_rate_p(x_new, 300, min(x_old, n_old), n_old, m, relative=relative) for m in margins]
        assert _ordered(ps, falling=False), ps
        ps = [error_rate_p(x_new, 300, x, n_old, margins[1], relative=relative) for x in range(min(31, n_old + 1))]
        assert _ordered(ps, falling=False), ps


def test_latency_tests_fall_as_the_new_version_slows_and_rise_with_the_threshold() -> None:
    old = lognormal(1000, 900, 0.5)
    slower = [lognormal(1000, 900, 0.5, s) for s in (0.8, 1.0, 1.1, 1.2, 1.4, 2.0)]
    for p_of in (lambda o, n, s: quantile_test_p(o, n, 0.95, s), lambda o, n, s: quantile_test_p(o, n, 0.5, s),
                 mann_whitney_p):
        by_slowdown = [p_of(old, new, 1.25) for new in slower]
        assert all(a >= b for a, b in itertools.pairwise(by_slowdown)), by_slowdown
        by_threshold = [p_of(old, slower[-2], s) for s in (1.0, 1.05, 1.25, 1.5)]
        assert all(a <= b for a, b in itertools.pairwise(by_threshold)), by_threshold


# -- judge -----------------------------------------------------------------------------------------
def test_a_clearly_worse_error_rate_is_breached_and_an_equal_one_is_not() -> None:
    old = side(14, 200, errors=2)
    [worse] = judge(guard("error_rate:+2pp"), old, side(15, 200, errors=20), alpha=ALPHA, min_generations=200)
    assert worse.enough_data and worse.breached and worse.p_value is not None and worse.p_value < ALPHA
    assert (worse.old_figure, worse.new_figure) == (1.0, 10.0)
    assert worse.test.startswith("skewness-corrected score test (SCAS) of the difference")
    assert "10.00 % on v15 against 1.00 % on v14 (20 of 200 generations against 2 of 200)" in worse.detail
    assert "worse by more than 2 pp" in worse.detail
    [rel] = judge(guard("error_rate:+50%"), old, side(15, 200, errors=20), alpha=ALPHA, min_generations=200)
    assert rel.breached and rel.test.startswith("skewness-corrected score test (SCAS) of the ratio")
    for g in ("error_rate:+2pp", "error_rate:+50%", "error_rate:+0pp", "error_rate:+0%"):
        [same] = judge(guard(g), old, side(15, 200, errors=2), alpha=ALPHA, min_generations=200)
        assert same.enough_data and not same.breached and same.p_value is not None and same.p_value > 0.4
        assert "no evidence of worse by more than" in same.detail


def test_zero_errors_on_both_sides_is_not_breached() -> None:
    results = judge([parse_guard(g) for g in ("error_rate:+2pp", "error_rate:+0%", "error_rate:+0pp")],
                    side(14, 200), side(15, 200), alpha=ALPHA, min_generations=200)
    assert [(r.enough_data, r.breached) for r in results] == [(True, False)] * 3
    assert all(r.new_figure == 0.0 for r in results)


def test_latency_thresholds_are_respected() -> None:
    old, new = side(14, 2000), side(15, 2000, latency=1.2)  # the new version 1.2x slower throughout
    for metric in ("p50_ms", "p90_ms", "p95_ms", "duration_ms"):
        [loose] = judge(guard(f"{metric}:+25%"), old, new, alpha=ALPHA, min_generations=200)
        [tight] = judge(guard(f"{metric}:+5%"), old, new, alpha=ALPHA, min_generations=200)
        assert loose.enough_data and not loose.breached, loose.detail
        assert tight.breached, tight.detail
    [p95] = judge(guard("p95_ms:+5%"), old, new, alpha=ALPHA, min_generations=200)
    assert p95.old_figure is not None and p95.new_figure is not None
    assert 1.1 < p95.new_figure / p95.old_figure < 1.3
    assert p95.test.startswith("quantile test") and "p95 duration" in p95.detail


def test_token_thresholds_are_respected() -> None:
    old, new = side(14, 2000), side(15, 2000, tokens=1.2)
    [loose] = judge(guard("output_tokens:+30%"), old, new, alpha=ALPHA, min_generations=200)
    [tight] = judge(guard("output_tokens:+5%"), old, new, alpha=ALPHA, min_generations=200)
    [inputs] = judge(guard("input_tokens:+5%"), old, new, alpha=ALPHA, min_generations=200)
    assert loose.enough_data and not loose.breached
    assert tight.breached and tight.test.startswith("Mann-Whitney U")
    assert inputs.enough_data and not inputs.breached  # input tokens did not change
    assert loose.old_figure is not None and loose.new_figure is not None
    assert loose.new_figure / loose.old_figure == pytest.approx(1.2, rel=0.05)


def test_enough_data() -> None:
    guards = [parse_guard(g) for g in ("error_rate:+2pp", "p95_ms:+25%", "output_tokens:+30%")]
    # far worse in every way, but too few generations on the new side: nothing breached
    few = side(15, 199, errors=150, latency=5, tokens=5)
    for r in judge(guards, side(14, 3800, errors=2), few, alpha=ALPHA, min_generations=200):
        assert not r.enough_data and not r.breached and r.p_value is None
        assert "not enough data" in r.detail and "199 generations on v15" in r.detail
        assert "at least 200 on each side" in r.detail
    # the figures are still given when the side has data
    [err, p95, toks] = judge(guards, side(14, 3800, errors=38), few, alpha=ALPHA, min_generations=200)
    assert err.old_figure == 1.0 and err.new_figure == pytest.approx(100 * 150 / 199)
    assert p95.new_figure is not None and toks.new_figure is not None
    # exactly min_generations is enough
    assert all(r.enough_data for r in judge(guards, side(14, 200), side(15, 200), alpha=ALPHA, min_generations=200))
    # no token data on one side: only the token guard lacks data
    results = judge(guards, side(14, 500), side(15, 500, with_tokens=False), alpha=ALPHA, min_generations=200)
    assert [r.enough_data for r in results] == [True, True, False]
    assert "no generations that reported tokens on v15" in results[2].detail
    assert results[2].new_figure is None
    # tokens reported by too few generations
    sparse = SideWindow(15, 500, 0, lognormal(500, 900, 0.5), lognormal(50, 250, 0.6), {})
    [toks] = judge(guards[2:], side(14, 500), sparse, alpha=ALPHA, min_generations=200)
    assert not toks.enough_data and "50 generations that reported tokens on v15" in toks.detail
    # the old side counts as much as the new one
    [err] = judge(guards[:1], side(14, 10), side(15, 500, errors=400), alpha=ALPHA, min_generations=200)
    assert not err.enough_data and "10 generations on v14" in err.detail


def test_judge_checks_its_arguments_and_is_deterministic() -> None:
    old, new = side(14, 300, errors=3), side(15, 300, errors=9, latency=1.3, tokens=1.4)
    with pytest.raises(ValueError):
        judge(DEFAULT_GUARDS, old, new, alpha=0.0, min_generations=200)
    with pytest.raises(ValueError):
        judge(DEFAULT_GUARDS, old, new, alpha=0.05, min_generations=0)
    assert judge(DEFAULT_GUARDS, old, new, alpha=ALPHA, min_generations=200) == \
        judge(DEFAULT_GUARDS, old, new, alpha=ALPHA, min_generations=200)
    assert [r.guard for r in judge(DEFAULT_GUARDS, old, new, alpha=ALPHA, min_generations=200)] == \
        list(DEFAULT_GUARDS)


def test_breached_iff_p_below_alpha() -> None:
    old, new = side(14, 400, errors=4), side(15, 400, errors=22)
    [r] = judge(guard("error_rate:+2pp"), old, new, alpha=ALPHA, min_generations=200)
    assert r.p_value is not None
    [at] = judge(guard("error_rate:+2pp"), old, new, alpha=r.p_value, min_generations=200)
    [above] = judge(guard("error_rate:+2pp"), old, new, alpha=min(0.99, r.p_value * 1.01), min_generations=200)
    assert not at.breached and above.breached


@pytest.mark.parametrize("kwargs", [
    {"generations": -1, "errors": 0}, {"generations": 10, "errors": 11}, {"generations": 10, "errors": -1},
    {"durations_ms": {1.0: -1}}, {"durations_ms": {math.nan: 1}}, {"output_tokens": {-1.0: 1}},
])
def test_side_window_rejects_impossible_windows(kwargs: dict[str, object]) -> None:
    base: dict[str, object] = {"version": 1, "generations": 10, "errors": 0, "durations_ms": {},
                               "output_tokens": {}, "input_tokens": {}}
    base.update(kwargs)
    with pytest.raises(ValueError):
        SideWindow(**base)  # type: ignore[arg-type]
