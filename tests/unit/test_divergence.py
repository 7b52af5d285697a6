"""Tests of detectors.divergence: PSI, KL and JS.

Properties (hypothesis), oracles (Evidently's legacy PSI/KL stattests, scipy) and
bad arguments.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from evidently.legacy.calculations.stattests import kl_div_stat_test, psi_stat_test
from evidently.legacy.core import ColumnType
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.spatial.distance import jensenshannon
from scipy.stats import entropy

from detectors import DEFAULT_EPS, NumericBins, js_divergence, kl_divergence, psi

PROPERTY = settings(max_examples=200, deadline=None)
LN2 = math.log(2.0)

# ---------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------

int_counts = st.integers(min_value=0, max_value=1_000_000)
float_counts = st.floats(
    min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False
)


@st.composite
def count_pairs(draw: st.DrawFn, elements: st.SearchStrategy[float] | None = None) -> tuple[
    np.ndarray, np.ndarray
]:
    """Two 1-D count arrays of one length, each with a positive sum."""
    n_bins = draw(st.integers(min_value=1, max_value=20))
    elems = elements if elements is not None else st.one_of(int_counts, float_counts)
    ref = draw(hnp.arrays(np.float64, n_bins, elements=elems))
    cur = draw(hnp.arrays(np.float64, n_bins, elements=elems))
    assume(ref.sum() > 0 and cur.sum() > 0)
    return ref, cur


@st.composite
def count_matrices(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Two (rows, bins) count matrices, every row with a positive sum."""
    rows = draw(st.integers(min_value=1, max_value=6))
    n_bins = draw(st.integers(min_value=1, max_value=12))
    ref = draw(hnp.arrays(np.float64, (rows, n_bins), elements=int_counts))
    cur = draw(hnp.arrays(np.float64, (rows, n_bins), elements=int_counts))
    assume(bool(np.all(ref.sum(axis=1) > 0)) and bool(np.all(cur.sum(axis=1) > 0)))
    return ref, cur


def smoothed(counts: np.ndarray, eps: float = DEFAULT_EPS) -> np.ndarray:
    """Independent re-statement of the documented smoothing: fractions, 0 -> eps."""
    frac = np.asarray(counts, dtype=np.float64) / np.sum(counts)
    return np.where(frac == 0, eps, frac)


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@PROPERTY
@given(count_pairs())
def test_psi_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    forward = psi(ref, cur)
    # non-negative and finite
    assert math.isfinite(forward)
    assert forward >= 0.0
    # symmetric, exactly: (p - q) * (ln p - ln q)
    assert forward == psi(cur, ref)
    # zero on identical fractions (also after scaling the counts)
    assert abs(float(psi(ref, ref))) <= 1e-12
    assert abs(float(psi(ref, 3.0 * ref))) <= 1e-12


@PROPERTY
@given(count_pairs())
def test_kl_and_js_properties(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    kl = kl_divergence(ref, cur)
    assert math.isfinite(kl)
    assert kl >= -1e-12
    assert abs(float(kl_divergence(ref, ref))) <= 1e-12
    js = js_divergence(ref, cur)
    assert -1e-12 <= js <= LN2 + 1e-12
    assert js == pytest.approx(js_divergence(cur, ref), rel=1e-12, abs=1e-15)
    assert abs(float(js_divergence(ref, ref))) <= 1e-12


@PROPERTY
@given(count_matrices())
def test_2d_input_gives_the_1d_result_per_row(pair: tuple[np.ndarray, np.ndarray]) -> None:
    ref, cur = pair
    for fn in (psi, kl_divergence, js_divergence):
        out = fn(ref, cur)
        assert isinstance(out, np.ndarray)
        assert out.shape == (ref.shape[0],)
        expected = np.array([fn(r, c) for r, c in zip(ref, cur, strict=True)])
        np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


def test_3d_input_gives_one_value_per_leading_index() -> None:
    rng = np.random.default_rng(3)
    ref = rng.integers(1, 50, size=(2, 3, 5))
    cur = rng.integers(1, 50, size=(2, 3, 5))
    out = psi(ref, cur)
    assert isinstance(out, np.ndarray)
    assert out.shape == (2, 3)
    assert out[1, 2] == pytest.approx(psi(ref[1, 2], cur[1, 2]), rel=1e-12)


def test_1d_input_returns_a_python_float() -> None:
    for fn in (psi, kl_divergence, js_divergence):
        assert type(fn([1, 2, 3], [3, 2, 1])) is float


@PROPERTY
@given(count_pairs(elements=int_counts), st.integers(min_value=1, max_value=4))
def test_columns_empty_on_both_sides_change_nothing(
    pair: tuple[np.ndarray, np.ndarray], n_pad: int
) -> None:
    """Padding columns (and an unused missing bucket) must be harmless for all three."""
    ref, cur = pair
    pad = np.zeros(n_pad)
    for fn in (psi, kl_divergence, js_divergence):
        assert fn(np.r_[ref, pad], np.r_[cur, pad]) == pytest.approx(
            fn(ref, cur), rel=1e-12, abs=1e-15
        )


def test_padding_with_an_empty_bin_on_one_side_is_harmless() -> None:
    # regression: KL/JS used to renormalise over the eps of both-empty columns too
    ref, cur = [50, 0, 20], [20, 30, 50]
    padded_ref, padded_cur = [*ref, 0], [*cur, 0]
    assert kl_divergence(padded_ref, padded_cur) == pytest.approx(
        kl_divergence(ref, cur), rel=1e-13
    )
    assert js_divergence(padded_ref, padded_cur) == pytest.approx(
        js_divergence(ref, cur), rel=1e-13
    )


def test_known_values() -> None:
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.2, 0.3, 0.5])
    assert psi([50, 30, 20], [20, 30, 50]) == pytest.approx(
        float(np.sum((p - q) * np.log(p / q))), rel=1e-14
    )
    assert psi([50, 30, 20], [20, 30, 50]) == pytest.approx(0.3 * math.log(2.5) * 2, rel=1e-14)
    assert kl_divergence([50, 50], [90, 10]) == pytest.approx(
        0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1), rel=1e-14
    )


def test_psi_uses_eps_without_renormalising() -> None:
    # ref fractions (1, 0) -> (1, eps); cur (0.5, 0.5); no renormalisation for PSI
    eps = 1e-3
    expected = (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert psi([10, 0], [5, 5], eps=eps) == pytest.approx(expected, rel=1e-14)
    assert psi([10, 0], [5, 5]) != pytest.approx(psi([10, 0], [5, 5], eps=eps))


# ---------------------------------------------------------------------------
# oracles: Evidently's legacy stattests, given the same bins
# ---------------------------------------------------------------------------


def _draw(kind: str, rng: np.random.Generator, size: int) -> np.ndarray:
    if kind == "normal":
        return rng.normal(0.0, 1.0, size)
    if kind == "lognormal":
        return rng.lognormal(3.0, 1.0, size)
    if kind == "shifted":
        return rng.normal(0.4, 1.2, size)
    if kind == "lognormal_shifted":
        return rng.lognormal(3.3, 0.9, size)
    if kind == "exponential":
        return rng.exponential(2.0, size)
    if kind == "exponential_wide":
        return rng.exponential(2.6, size)
    raise AssertionError(kind)


ORACLE_CASES = [
    # (seed, reference distribution, current distribution)
    (0, "normal", "normal"),
    (1, "normal", "shifted"),
    (2, "lognormal", "lognormal"),
    (3, "normal", "shifted"),
    (4, "exponential", "exponential_wide"),
    (5, "lognormal", "lognormal_shifted"),
]


def _evidently(stattest: object, ref_idx: np.ndarray, cur_idx: np.ndarray) -> float:
    func = stattest.func  # type: ignore[attr-defined]
    value, _drifted = func(
        pd.Series(ref_idx), pd.Series(cur_idx), ColumnType.Categorical, 0.1
    )
    return float(value)


@pytest.mark.parametrize(("seed", "ref_kind", "cur_kind"), ORACLE_CASES)
@pytest.mark.parametrize("n_bins", [5, 10])
def test_psi_and_kl_equal_evidently_on_the_same_bins(
    seed: int, ref_kind: str, cur_kind: str, n_bins: int
) -> None:
    rng = np.random.default_rng(seed)
    reference = _draw(ref_kind, rng, 4000)[:, None]
    current = _draw(cur_kind, rng, 2500)[:, None]
    bins = NumericBins.fit(reference, ["x"], n_bins=n_bins)
    ref_counts = bins.count(reference)[0]
    cur_counts = bins.count(current)[0]
    # precondition: no empty value bin on either side (the missing bucket is empty on both)
    value_bins = slice(0, bins.n_bins[0])
    assert np.all(ref_counts[value_bins] > 0)
    assert np.all(cur_counts[value_bins] > 0)
    assert ref_counts[bins.missing_column] == cur_counts[bins.missing_column] == 0

    ref_idx = bins.bin_index(reference)[:, 0]
    cur_idx = bins.bin_index(current)[:, 0]
    ev_psi = _evidently(psi_stat_test, ref_idx, cur_idx)
    ev_kl = _evidently(kl_div_stat_test, ref_idx, cur_idx)

    assert psi(ref_counts, cur_counts) == pytest.approx(ev_psi, rel=0, abs=1e-9)
    assert kl_divergence(ref_counts, cur_counts) == pytest.approx(ev_kl, rel=0, abs=1e-9)
    # the same without the (empty) missing bucket
    assert psi(ref_counts[value_bins], cur_counts[value_bins]) == pytest.approx(ev_psi, abs=1e-9)
    assert kl_divergence(ref_counts[value_bins], cur_counts[value_bins]) == pytest.approx(
        ev_kl, abs=1e-9
    )
    if ref_kind != cur_kind:
        assert ev_psi > 0.01  # the oracle is not trivially comparing zeros


def test_2d_counts_equal_evidently_per_feature() -> None:
    rng = np.random.default_rng(11)
    reference = np.column_stack([rng.normal(size=3000), rng.lognormal(1, 0.5, 3000)])
    current = np.column_stack([rng.normal(0.2, 1, 2000), rng.lognormal(1.1, 0.5, 2000)])
    bins = NumericBins.fit(reference, ["a", "b"], n_bins=8)
    ref_counts, cur_counts = bins.count(reference), bins.count(current)
    ours_psi = np.asarray(psi(ref_counts, cur_counts))
    ours_kl = np.asarray(kl_divergence(ref_counts, cur_counts))
    ref_idx, cur_idx = bins.bin_index(reference), bins.bin_index(current)
    for j in range(2):
        assert ours_psi[j] == pytest.approx(
            _evidently(psi_stat_test, ref_idx[:, j], cur_idx[:, j]), abs=1e-9
        )
        assert ours_kl[j] == pytest.approx(
            _evidently(kl_div_stat_test, ref_idx[:, j], cur_idx[:, j]), abs=1e-9
        )


# ---------------------------------------------------------------------------
# oracles: scipy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_kl_equals_scipy_entropy_without_empty_bins(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.integers(1, 1000, size=12)
    cur = rng.integers(1, 1000, size=12)
    assert kl_divergence(ref, cur) == pytest.approx(float(entropy(ref, cur)), abs=1e-12)


@pytest.mark.parametrize(
    ("ref", "cur"),
    [
        ([10, 0, 5, 5], [3, 3, 3, 1]),  # empty bin in the reference
        ([10, 7, 5, 5], [0, 3, 0, 1]),  # empty bins in the current window
        ([10, 0, 5, 0], [0, 3, 7, 1]),  # both sides have (different) empty bins
    ],
)
@pytest.mark.parametrize("eps", [DEFAULT_EPS, 1e-2])
def test_kl_equals_scipy_entropy_on_smoothed_fractions(
    ref: list[int], cur: list[int], eps: float
) -> None:
    # documented: zero fractions -> eps, then renormalised; scipy.stats.entropy
    # renormalises its inputs itself.
    expected = float(entropy(smoothed(np.array(ref), eps), smoothed(np.array(cur), eps)))
    assert kl_divergence(ref, cur, eps=eps) == pytest.approx(expected, rel=1e-12)
    # and the smoothing really matters here: raw scipy would be inf or differ
    raw = float(entropy(ref, cur))
    assert raw != pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_js_equals_squared_scipy_jensenshannon_without_empty_bins(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    ref = rng.integers(1, 500, size=9).astype(float)
    cur = rng.integers(1, 500, size=9).astype(float)
    expected = float(jensenshannon(ref, cur)) ** 2  # natural log by default
    assert js_divergence(ref, cur) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_js_of_disjoint_supports_approaches_ln2() -> None:
    value = js_divergence([1, 0], [0, 1], eps=1e-12)
    assert LN2 - 1e-9 < value <= LN2


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------

ALL = pytest.mark.parametrize("fn", [psi, kl_divergence, js_divergence])


@ALL
def test_negative_counts_are_refused(fn: object) -> None:
    with pytest.raises(ValueError, match=r"current counts must be >= 0, got array\(\[-7\.\]\)"):
        fn([1, 2, 3], [1, -7, 3])  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"reference counts must be >= 0, got array\(\[-0\.5\]\)"):
        fn([1, -0.5, 3], [1, 2, 3])  # type: ignore[operator]


@ALL
def test_mismatched_shapes_are_refused(fn: object) -> None:
    with pytest.raises(ValueError, match=r"same shape, got \(3,\) and \(4,\)"):
        fn([1, 2, 3], [1, 2, 3, 4])  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"same shape, got \(2, 2\) and \(4,\)"):
        fn([[1, 2], [3, 4]], [1, 2, 3, 4])  # type: ignore[operator]


@ALL
@pytest.mark.parametrize(
    ("eps", "shown"),
    [(0, "0"), (0.0, "0.0"), (1, "1"), (1.0, "1.0"), (-1e-3, "-0.001"), (2.5, "2.5")],
)
def test_eps_outside_the_open_unit_interval_is_refused(fn: object, eps: float, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"eps must be in \(0, 1\), got {shown}$"):
        fn([1, 2], [2, 1], eps=eps)  # type: ignore[operator]


@ALL
@pytest.mark.parametrize(("eps", "shown"), [(math.nan, "nan"), (math.inf, "inf"), (True, "True"),
                                            ("0.1", "'0.1'")])
def test_eps_that_is_not_a_finite_number_is_refused(fn: object, eps: object, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"eps must be a finite number in \(0, 1\), got {shown}"):
        fn([1, 2], [2, 1], eps=eps)  # type: ignore[operator]


@ALL
def test_empty_reference_is_refused(fn: object) -> None:
    with pytest.raises(ValueError, match=r"reference counts are empty \(sum 0\)"):
        fn([0, 0, 0], [1, 2, 3])  # type: ignore[operator]
    # 2-D: the message names the empty row
    with pytest.raises(ValueError, match=r"reference counts are empty \(sum 0\).*\[\[1\]\]"):
        fn([[1, 1], [0, 0]], [[1, 1], [1, 1]])  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"current counts are empty \(sum 0\).*\[\[0\]\]"):
        fn([[1, 1], [1, 1]], [[0, 0], [1, 1]])  # type: ignore[operator]


@ALL
@pytest.mark.parametrize(("bad", "shown"), [(math.nan, "nan"), (math.inf, "inf"),
                                            (-math.inf, "-inf")])
def test_non_finite_counts_are_refused(fn: object, bad: float, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"current counts must be finite, got array\(\[{shown}\]"):
        fn([1, 2, 3], [1, bad, 3])  # type: ignore[operator]
    with pytest.raises(ValueError, match=rf"reference counts must be finite, got array\(\[{shown}"):
        fn([bad, 2, 3], [1, 2, 3])  # type: ignore[operator]


@ALL
def test_scalars_and_zero_bins_are_refused(fn: object) -> None:
    with pytest.raises(ValueError, match=r"at least one axis \(bins\), got shapes \(\) and \(\)"):
        fn(3, 4)  # type: ignore[operator]
    with pytest.raises(ValueError, match=r"at least one bin, got shape \(0,\)"):
        fn([], [])  # type: ignore[operator]
