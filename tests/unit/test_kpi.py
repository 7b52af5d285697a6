"""Tests of detectors.kpi: Wilson intervals, proportion comparisons, fraud KPIs."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors import (
    ConfusionCounts,
    FraudKPIs,
    Proportion,
    compare_proportions,
    fraud_kpis,
    wilson_interval,
)

PROPERTY = settings(max_examples=200, deadline=None)

import statsmodels.stats.proportion as sm_proportion  # noqa: E402 - evidently's dependency


def wilson_by_hand(k: float, n: float, confidence: float = 0.95) -> tuple[float, float]:
    """Textbook Wilson score interval."""
    z = stats.norm.ppf(1 - (1 - confidence) / 2)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------
# Wilson interval
# ---------------------------------------------------------------------------

WILSON_CASES = [(0, 1), (1, 1), (0, 10), (8, 10), (10, 10), (3, 250), (125, 250), (999, 1000),
                (1, 1_000_000)]


@pytest.mark.parametrize(("k", "n"), WILSON_CASES)
@pytest.mark.parametrize("confidence", [0.8, 0.95, 0.99])
def test_wilson_equals_statsmodels_and_the_formula(k: int, n: int, confidence: float) -> None:
    lo, hi = wilson_interval(k, n, confidence)
    sm_lo, sm_hi = sm_proportion.proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    assert float(lo) == pytest.approx(sm_lo, abs=1e-12)
    assert float(hi) == pytest.approx(sm_hi, abs=1e-12)
    hand_lo, hand_hi = wilson_by_hand(k, n, confidence)
    assert float(lo) == pytest.approx(hand_lo, abs=1e-12)
    assert float(hi) == pytest.approx(hand_hi, abs=1e-12)
    # contains the estimate (to rounding: at k == n the upper bound is 1 - 1 ulp)
    assert 0.0 <= float(lo) <= k / n + 1e-12
    assert k / n - 1e-12 <= float(hi) <= 1.0


def test_wilson_is_vectorized() -> None:
    ks = np.array([k for k, _ in WILSON_CASES])
    ns = np.array([n for _, n in WILSON_CASES])
    lo, hi = wilson_interval(ks, ns)
    assert lo.shape == hi.shape == ks.shape
    sm_lo, sm_hi = sm_proportion.proportion_confint(ks, ns, alpha=0.05, method="wilson")
    np.testing.assert_allclose(lo, sm_lo, atol=1e-12)
    np.testing.assert_allclose(hi, sm_hi, atol=1e-12)


def test_wilson_with_fractional_trials() -> None:
    lo, hi = wilson_interval(12.3, 40.7)
    hand = wilson_by_hand(12.3, 40.7)
    assert (float(lo), float(hi)) == pytest.approx(hand, abs=1e-12)


def test_wilson_with_zero_trials_knows_nothing() -> None:
    lo, hi = wilson_interval([0, 3], [0, 10])
    assert lo[0] == 0.0
    assert hi[0] == 1.0
    assert 0.0 < lo[1] < 0.3 < hi[1] < 1.0


@PROPERTY
@given(st.integers(0, 10_000), st.integers(1, 10_000), st.floats(0.5, 0.999))
def test_wilson_contains_the_estimate_and_narrows_with_confidence(
    k: int, n: int, confidence: float
) -> None:
    k = min(k, n)
    lo, hi = (float(x) for x in wilson_interval(k, n, confidence))
    assert 0.0 <= lo <= k / n + 1e-12
    assert k / n - 1e-12 <= hi <= 1.0
    lo2, hi2 = (float(x) for x in wilson_interval(k, n, min(confidence + 0.0005, 0.9995)))
    assert lo2 <= lo + 1e-12
    assert hi2 >= hi - 1e-12


def test_wilson_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"got successes=11\.0 trials=10\.0"):
        wilson_interval(11, 10)
    with pytest.raises(ValueError, match=r"got successes=-1\.0 trials=10\.0"):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError, match=r"got successes=6\.0 trials=5\.0"):
        wilson_interval([1, 6], [5, 5])
    with pytest.raises(ValueError, match=r"trials must be finite and >= 0, got trials=.*-3\."):
        wilson_interval(0, -3)
    with pytest.raises(ValueError, match=r"trials must be finite and >= 0, got trials=.*nan"):
        wilson_interval(1, math.nan)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1\.5"):
        wilson_interval(1, 2, confidence=1.5)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 0$"):
        wilson_interval(1, 2, confidence=0)


# ---------------------------------------------------------------------------
# compare_proportions
# ---------------------------------------------------------------------------

ZTEST_CASES = [(150, 250, 200, 250), (40, 100, 45, 120), (500, 1000, 480, 1000),
               (30, 60, 90, 100), (12, 400, 30, 410)]


@pytest.mark.parametrize(("sa", "na", "sb", "nb"), ZTEST_CASES)
@pytest.mark.parametrize(("ours", "theirs"), [("two-sided", "two-sided"), ("less", "smaller"),
                                              ("greater", "larger")])
def test_z_test_equals_statsmodels(
    sa: int, na: int, sb: int, nb: int, ours: str, theirs: str
) -> None:
    from statsmodels.stats.proportion import proportions_ztest

    result = compare_proportions(sa, na, sb, nb, alternative=ours)  # type: ignore[arg-type]
    assert result.method == "z-test"  # every expected cell count is >= 5 here
    _z, p_value = proportions_ztest(np.array([sa, sb]), np.array([na, nb]), alternative=theirs)
    assert result.p_value == pytest.approx(float(p_value), rel=1e-9, abs=1e-15)
    assert result.difference == pytest.approx(sa / na - sb / nb, abs=1e-15)
    assert (result.p_a, result.p_b) == (sa / na, sb / nb)
    assert result.alternative == ours


def test_z_test_one_sided_p_values_add_up() -> None:
    less = compare_proportions(40, 100, 45, 120, alternative="less").p_value
    greater = compare_proportions(40, 100, 45, 120, alternative="greater").p_value
    two = compare_proportions(40, 100, 45, 120).p_value
    assert less + greater == pytest.approx(1.0, abs=1e-12)
    assert two == pytest.approx(2 * min(less, greater), rel=1e-12)


@pytest.mark.parametrize(("sa", "na", "sb", "nb"), [(1, 4, 3, 4), (0, 20, 4, 18), (2, 30, 6, 31),
                                                    (7, 7, 3, 9)])
@pytest.mark.parametrize("alternative", ["two-sided", "less", "greater"])
def test_fisher_branch_equals_scipy(sa: int, na: int, sb: int, nb: int, alternative: str) -> None:
    result = compare_proportions(sa, na, sb, nb, alternative=alternative)  # type: ignore[arg-type]
    assert result.method == "fisher"  # an expected cell count is below 5
    expected = stats.fisher_exact([[sa, na - sa], [sb, nb - sb]], alternative=alternative).pvalue
    assert result.p_value == pytest.approx(min(float(expected), 1.0), rel=1e-12)


def test_method_can_be_forced() -> None:
    forced_fisher = compare_proportions(150, 250, 200, 250, method="fisher")
    assert forced_fisher.method == "fisher"
    assert forced_fisher.p_value == pytest.approx(
        stats.fisher_exact([[150, 100], [200, 50]]).pvalue, rel=1e-12
    )
    forced_z = compare_proportions(1, 4, 3, 4, method="z-test")
    assert forced_z.method == "z-test"
    assert forced_z.p_value != pytest.approx(compare_proportions(1, 4, 3, 4).p_value)


def test_identical_degenerate_proportions_give_p_one() -> None:
    result = compare_proportions(0, 50, 0, 60, method="z-test")
    assert result.p_value == 1.0
    assert result.difference == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((5, 0, 1, 2), r"trials_a must be an integer >= 1, got 0$"),
        ((1, 2, 1, -4), r"trials_b must be an integer >= 1, got -4$"),
        ((1, 2.0, 1, 2), r"trials_a must be an integer >= 1, got 2\.0$"),
        ((1, True, 1, 2), r"trials_a must be an integer >= 1, got True$"),
        ((3, 2, 1, 2), r"successes_a must be an integer in \[0, 2\], got 3$"),
        ((1, 2, -1, 2), r"successes_b must be an integer in \[0, 2\], got -1$"),
        ((1.5, 2, 1, 2), r"successes_a must be an integer in \[0, 2\], got 1\.5$"),
    ],
)
def test_compare_proportions_bad_counts(args: tuple[object, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare_proportions(*args)  # type: ignore[arg-type]


def test_compare_proportions_bad_options() -> None:
    with pytest.raises(ValueError, match=r"alternative .* got 'smaller'"):
        compare_proportions(1, 2, 1, 2, alternative="smaller")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"method .* got 'chi2'"):
        compare_proportions(1, 2, 1, 2, method="chi2")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# ConfusionCounts and fraud_kpis
# ---------------------------------------------------------------------------


def manual_counts(
    labels: list[int], decisions: list[int], amounts: list[float]
) -> dict[str, float]:
    out = {"tp": 0, "fp": 0, "fn": 0, "tn": 0, "caught_amount": 0.0, "missed_amount": 0.0,
           "caught_amount_sq": 0.0, "missed_amount_sq": 0.0}
    for y, d, a in zip(labels, decisions, amounts, strict=True):
        if y and d:
            out["tp"] += 1
            out["caught_amount"] += a
            out["caught_amount_sq"] += a * a
        elif y:
            out["fn"] += 1
            out["missed_amount"] += a
            out["missed_amount_sq"] += a * a
        elif d:
            out["fp"] += 1
        else:
            out["tn"] += 1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_from_arrays_equals_a_manual_count(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 500
    labels = (rng.random(n) < 0.1).astype(int).tolist()
    decisions = (rng.random(n) < 0.15).astype(int).tolist()
    amounts = rng.lognormal(3, 1, n).round(2).tolist()
    counts = ConfusionCounts.from_arrays(labels, decisions, amounts)
    expected = manual_counts(labels, decisions, amounts)
    for name, value in expected.items():
        assert getattr(counts, name) == pytest.approx(value, rel=1e-12), name
    assert counts.n == n
    assert counts.frauds == sum(labels)


def test_from_arrays_without_amounts_and_with_booleans() -> None:
    counts = ConfusionCounts.from_arrays(
        np.array([True, True, False, False, True]), np.array([True, False, True, False, True])
    )
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 1)
    assert counts.caught_amount == counts.missed_amount == 0.0


def test_counts_add_like_concatenation() -> None:
    rng = np.random.default_rng(9)
    y, d, a = rng.random(300) < 0.2, rng.random(300) < 0.2, rng.random(300) * 100
    left = ConfusionCounts.from_arrays(y[:120], d[:120], a[:120])
    right = ConfusionCounts.from_arrays(y[120:], d[120:], a[120:])
    whole = ConfusionCounts.from_arrays(y, d, a)
    added = left + right
    assert (added.tp, added.fp, added.fn, added.tn) == (whole.tp, whole.fp, whole.fn, whole.tn)
    assert added.caught_amount == pytest.approx(whole.caught_amount, rel=1e-12)
    assert added.missed_amount_sq == pytest.approx(whole.missed_amount_sq, rel=1e-12)


def test_fraud_kpis_values() -> None:
    counts = ConfusionCounts(tp=80, fp=20, fn=20, tn=880, caught_amount=900.0,
                             missed_amount=100.0, caught_amount_sq=20_000.0,
                             missed_amount_sq=5_000.0)
    kpis = fraud_kpis(counts)
    assert isinstance(kpis, FraudKPIs)
    assert kpis.catch_rate.value == pytest.approx(0.8)
    assert kpis.precision.value == pytest.approx(0.8)
    assert kpis.alert_rate.value == pytest.approx(0.1)
    assert (kpis.catch_rate.successes, kpis.catch_rate.trials) == (80.0, 100.0)
    assert (kpis.alert_rate.successes, kpis.alert_rate.trials) == (100.0, 1000.0)
    for prop, (k, n) in ((kpis.catch_rate, (80, 100)), (kpis.precision, (80, 100)),
                         (kpis.alert_rate, (100, 1000))):
        assert (prop.lower, prop.upper) == pytest.approx(wilson_by_hand(k, n), abs=1e-12)
    # amount-weighted: share 0.9 at Kish n_eff = 1000^2 / 25000 = 40
    weighted = kpis.amount_weighted_catch_rate
    assert weighted.value == pytest.approx(0.9)
    assert (weighted.successes, weighted.trials) == (900.0, 1000.0)
    assert (weighted.lower, weighted.upper) == pytest.approx(wilson_by_hand(36.0, 40.0), abs=1e-12)


def test_fraud_kpis_with_nothing_labelled() -> None:
    kpis = fraud_kpis(ConfusionCounts())
    for prop in (kpis.catch_rate, kpis.precision, kpis.alert_rate,
                 kpis.amount_weighted_catch_rate):
        assert math.isnan(prop.value)
        assert (prop.lower, prop.upper) == (0.0, 1.0)


def test_proportion_of() -> None:
    prop = Proportion.of(8, 10)
    assert prop.value == 0.8
    assert (prop.lower, prop.upper) == pytest.approx((0.4902, 0.9433), abs=1e-4)
    assert math.isnan(Proportion.of(0, 0).value)


def test_confusion_counts_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"tp must be finite and >= 0, got -1$"):
        ConfusionCounts(tp=-1)
    with pytest.raises(ValueError, match=r"caught_amount must be finite and >= 0, got nan"):
        ConfusionCounts(caught_amount=math.nan)
    with pytest.raises(ValueError, match=r"got \(3,\) and \(2,\)"):
        ConfusionCounts.from_arrays([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match=r"amounts must have shape \(2,\), got \(3,\)"):
        ConfusionCounts.from_arrays([1, 0], [1, 0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"amounts must be finite and >= 0"):
        ConfusionCounts.from_arrays([1, 0], [1, 0], [1.0, -2.0])
