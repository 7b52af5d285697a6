"""Tests of detectors.binning: NumericBins, CategoricalBins and count_by_group."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from detectors import CategoricalBins, NumericBins, count_by_group

PROPERTY = settings(max_examples=200, deadline=None)

any_float = st.floats(allow_nan=True, allow_infinity=True)
finite_float = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)


def expected_column(edges: np.ndarray, value: float, missing_column: int) -> int:
    """Brute-force statement of the layout: bin i is [e_{i-1}, e_i), NaN -> missing."""
    if math.isnan(value):
        return missing_column
    return int(sum(1 for e in edges if e <= value))


# ---------------------------------------------------------------------------
# NumericBins: properties
# ---------------------------------------------------------------------------


@st.composite
def fitted_numeric(draw: st.DrawFn) -> tuple[NumericBins, np.ndarray]:
    """Bins fitted on a random reference, plus a batch of arbitrary floats to count."""
    n_features = draw(st.integers(min_value=1, max_value=4))
    n_ref = draw(st.integers(min_value=1, max_value=80))
    reference = draw(hnp.arrays(np.float64, (n_ref, n_features), elements=any_float))
    assume(bool(np.all(np.isfinite(reference).any(axis=0))))
    # up to 16 inner edges bin_index counts comparisons, beyond that it uses searchsorted
    n_bins = draw(st.one_of(st.integers(2, 12), st.integers(17, 40)))
    bins = NumericBins.fit(reference, [f"f{j}" for j in range(n_features)], n_bins=n_bins)
    n_events = draw(st.integers(min_value=0, max_value=80))
    batch = draw(
        hnp.arrays(
            np.float64,
            (n_events, n_features),
            elements=st.one_of(any_float, st.sampled_from([-np.inf, np.inf, np.nan, 0.0])),
        )
    )
    return bins, batch


@PROPERTY
@given(fitted_numeric())
def test_numeric_counts_sum_to_n_and_follow_the_layout(
    case: tuple[NumericBins, np.ndarray],
) -> None:
    bins, batch = case
    counts = bins.count(batch)
    assert counts.dtype == np.int64
    assert counts.shape == (len(bins.features), bins.n_columns)
    assert np.all(counts >= 0)
    assert counts.sum(axis=1).tolist() == [batch.shape[0]] * len(bins.features)
    # NaN, and only NaN, goes to the missing bucket (the last column)
    assert counts[:, -1].tolist() == np.isnan(batch).sum(axis=0).tolist()
    # no value lands in a padding column of a feature with fewer bins
    for j, n in enumerate(bins.n_bins):
        assert counts[j, n:-1].sum() == 0
    # every value is in the column the documented layout puts it in
    idx = bins.bin_index(batch)
    assert idx.shape == batch.shape
    for i in range(batch.shape[0]):
        for j in range(batch.shape[1]):
            assert idx[i, j] == expected_column(bins.edges[j], batch[i, j], bins.missing_column)


@PROPERTY
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 200), st.just(1)), elements=finite_float),
       st.integers(min_value=2, max_value=20))
def test_fitted_edges_are_strictly_increasing_finite_quantiles(
    reference: np.ndarray, n_bins: int
) -> None:
    bins = NumericBins.fit(reference, ["x"], n_bins=n_bins)
    edges = bins.edges[0]
    assert np.all(np.isfinite(edges))
    assert np.all(np.diff(edges) > 0)
    assert 1 <= edges.size <= n_bins - 1
    assert bins.n_bins == (edges.size + 1,)
    expected = np.unique(np.quantile(reference[:, 0], np.arange(1, n_bins) / n_bins))
    np.testing.assert_array_equal(edges, expected)


def test_numeric_layout_on_a_hand_made_example() -> None:
    bins = NumericBins(("a", "b"), (np.array([0.0, 10.0]), np.array([5.0])))
    assert bins.n_bins == (3, 2)
    assert bins.n_columns == 4  # widest feature's 3 bins + missing
    assert bins.missing_column == 3
    batch = np.array(
        [
            [-np.inf, -np.inf],
            [-1.0, 4.999],
            [0.0, 5.0],  # an edge belongs to the bin on its right
            [9.99, np.inf],
            [10.0, np.nan],
            [np.inf, 1e300],
            [np.nan, -1e300],
        ]
    )
    assert bins.bin_index(batch).tolist() == [
        [0, 0], [0, 0], [1, 1], [1, 1], [2, 3], [2, 1], [3, 0],
    ]
    assert bins.count(batch).tolist() == [[2, 2, 2, 1], [3, 3, 0, 1]]


@pytest.mark.parametrize("n_edges", [3, 16, 17, 50])
def test_both_bin_index_paths_agree_with_brute_force(n_edges: int) -> None:
    rng = np.random.default_rng(n_edges)
    edges_a = np.sort(rng.choice(np.arange(-100.0, 100.0), n_edges, replace=False))
    edges_b = np.array([0.0])  # a narrow feature next to a wide one: padding columns
    bins = NumericBins(("a", "b"), (edges_a, edges_b))
    batch = np.column_stack([
        np.r_[rng.normal(0, 60, 300), edges_a, np.nan, np.inf, -np.inf],
        np.r_[rng.normal(0, 1, 300), np.zeros(n_edges), np.inf, np.nan, -0.0],
    ])
    idx = bins.bin_index(batch)
    for i in range(batch.shape[0]):
        for j, edges in enumerate(bins.edges):
            assert idx[i, j] == expected_column(edges, batch[i, j], bins.missing_column)
    counts = bins.count(batch)
    assert counts.sum(axis=1).tolist() == [batch.shape[0]] * 2
    assert counts[1, 2:-1].sum() == 0


def test_numeric_fit_collapses_tied_quantiles_and_ignores_non_finite() -> None:
    ref = np.column_stack([
        np.r_[np.arange(100.0), np.nan, np.inf],
        np.r_[np.repeat([1.0, 2.0], [90, 10]), -np.inf, np.nan],
    ])
    bins = NumericBins.fit(ref, ["amount", "flag"], n_bins=4)
    np.testing.assert_array_equal(bins.edges[0], np.quantile(np.arange(100.0), [0.25, 0.5, 0.75]))
    np.testing.assert_array_equal(bins.edges[1], [1.0])
    assert bins.n_bins == (4, 2)
    counts = bins.count(ref)
    assert counts[0].tolist() == [25, 25, 25, 26, 1]  # +inf in the top bin, NaN missing
    assert counts[1].tolist() == [1, 100, 0, 0, 1]  # -inf bottom, all 1/2 values at/after edge 1


def test_numeric_edges_are_frozen() -> None:
    bins = NumericBins.fit(np.arange(20.0)[:, None], ["x"], n_bins=4)
    with pytest.raises(ValueError, match="read-only"):
        bins.edges[0][0] = 99.0
    with pytest.raises(AttributeError):
        bins.edges = ()  # type: ignore[misc]


def test_numeric_dict_round_trip_is_exact() -> None:
    rng = np.random.default_rng(5)
    bins = NumericBins.fit(rng.normal(size=(500, 2)) / 3.0, ["a", "b"], n_bins=7)
    again = NumericBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    assert again.features == bins.features
    for e1, e2 in zip(bins.edges, again.edges, strict=True):
        np.testing.assert_array_equal(e1, e2)
    assert again.content_hash() == bins.content_hash()
    moved = NumericBins(bins.features, (bins.edges[0], np.nextafter(bins.edges[1], np.inf)))
    assert moved.content_hash() != bins.content_hash()


def test_numeric_with_no_features_counts_an_empty_matrix() -> None:
    bins = NumericBins((), ())
    assert bins.count(np.empty((3, 0))).shape == (0, bins.n_columns)


# ---------------------------------------------------------------------------
# CategoricalBins: properties
# ---------------------------------------------------------------------------

category_values = st.one_of(
    st.text(max_size=4),
    st.sampled_from(["a", "b", "c", "", "nan", "None", "\x00missing"]),
    st.none(),
    st.just(math.nan),
    st.integers(-3, 3),
)


def _is_missing(v: object) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


@st.composite
def fitted_categorical(draw: st.DrawFn) -> tuple[CategoricalBins, dict[str, list[object]]]:
    n_features = draw(st.integers(min_value=1, max_value=3))
    names = [f"c{j}" for j in range(n_features)]
    reference = {}
    for name in names:
        values = draw(st.lists(category_values, min_size=1, max_size=20))
        assume(any(not _is_missing(v) for v in values))
        reference[name] = values
    top_k = draw(st.integers(min_value=1, max_value=6))
    bins = CategoricalBins.fit(reference, top_k=top_k)
    n_events = draw(st.integers(min_value=0, max_value=25))
    batch: dict[str, list[object]] = {
        name: draw(st.lists(category_values, min_size=n_events, max_size=n_events))
        for name in names}
    return bins, batch


@PROPERTY
@given(fitted_categorical())
def test_categorical_counts_sum_to_the_number_of_events(
    case: tuple[CategoricalBins, dict[str, list[object]]],
) -> None:
    bins, batch = case
    n = len(next(iter(batch.values())))
    counts = bins.count(batch)
    assert counts.shape == (len(bins.features), bins.n_columns)
    assert counts.sum(axis=1).tolist() == [n] * len(bins.features)
    for j, name in enumerate(bins.features):
        values = batch[name]
        present = Counter(str(v) for v in values if not _is_missing(v))
        table = bins.categories[j]
        assert counts[j, bins.missing_column] == sum(_is_missing(v) for v in values)
        assert counts[j, bins.other_column] == sum(c for k, c in present.items() if k not in table)
        for col, category in enumerate(table):
            assert counts[j, col] == present[category]
        assert counts[j, len(table):bins.other_column].sum() == 0


@PROPERTY
@given(st.lists(category_values, min_size=1, max_size=50), st.integers(1, 5))
def test_categorical_fit_keeps_the_most_frequent_categories(
    values: list[object], top_k: int
) -> None:
    assume(any(not _is_missing(v) for v in values))
    bins = CategoricalBins.fit({"x": values}, top_k=top_k)
    freq = Counter(str(v) for v in values if not _is_missing(v))
    ranked = sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))
    assert bins.categories == (tuple(k for k, _ in ranked[:top_k]),)


def test_categorical_layout_on_a_hand_made_example() -> None:
    bins = CategoricalBins(("mcc", "country"), (("grocery", "fuel"), ("DE", "FR", "NL")))
    assert bins.n_columns == 5
    assert (bins.other_column, bins.missing_column) == (3, 4)
    counts = bins.count({
        "mcc": ["fuel", "casino", None, "grocery", "fuel", math.nan],
        "country": ["NL", "NL", "US", None, "DE", "FR"],
    })
    assert counts.tolist() == [[1, 2, 0, 1, 2], [1, 1, 2, 1, 1]]


def test_a_category_that_looks_like_the_internal_missing_key_is_not_missing() -> None:
    # regression: bin_index used the string "\x00missing" as its key for None/NaN
    bins = CategoricalBins.fit({"x": ["\x00missing", "\x00missing", "", "a"]})
    counts = bins.count({"x": ["\x00missing", "", None, "zz"]})
    assert bins.categories == (("\x00missing", "", "a"),)
    assert counts.tolist() == [[1, 1, 0, 1, 1]]


def test_categorical_dict_round_trip() -> None:
    bins = CategoricalBins.fit({"a": ["x", "y", "y"], "b": ["1", "2"]})
    again = CategoricalBins.from_dict(json.loads(json.dumps(bins.to_dict())))
    assert again.features == bins.features
    assert again.categories == bins.categories


def test_categorical_empty_batch() -> None:
    bins = CategoricalBins.fit({"a": ["x"]})
    assert bins.count({"a": []}).tolist() == [[0, 0, 0]]


# ---------------------------------------------------------------------------
# count_by_group
# ---------------------------------------------------------------------------


@PROPERTY
@given(st.data())
def test_count_by_group_equals_a_python_loop(data: st.DataObject) -> None:
    n_groups = data.draw(st.integers(1, 5))
    n_columns = data.draw(st.integers(1, 6))
    n_features = data.draw(st.integers(1, 3))
    n_events = data.draw(st.integers(0, 40))
    group = data.draw(hnp.arrays(np.int64, n_events, elements=st.integers(0, n_groups - 1)))
    cols = data.draw(hnp.arrays(np.int64, (n_events, n_features),
                                elements=st.integers(0, n_columns - 1)))
    expected = np.zeros((n_groups, n_features, n_columns), dtype=np.int64)
    for g, row in zip(group, cols, strict=True):
        for f, c in enumerate(row):
            expected[g, f, c] += 1
    np.testing.assert_array_equal(count_by_group(group, cols, n_groups, n_columns), expected)


def test_count_by_group_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"columns must be 2-D .*, got shape \(3,\)"):
        count_by_group(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.int64), 1, 2)
    with pytest.raises(ValueError, match=r"group must have shape \(3,\), got \(2,\)"):
        count_by_group(np.zeros(2, dtype=np.int64), np.zeros((3, 1), dtype=np.int64), 1, 2)
    with pytest.raises(ValueError, match=r"group indices must be in \[0, 2\), got range \[0, 5\]"):
        count_by_group(np.array([0, 5]), np.zeros((2, 1), dtype=np.int64), 2, 2)


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_bins", "shown"), [(1, "1"), (0, "0"), (-3, "-3"), (2.0, "2.0"),
                                               (True, "True"), ("10", "'10'")])
def test_numeric_fit_refuses_bad_n_bins(n_bins: object, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"n_bins must be an integer >= 2, got {shown}$"):
        NumericBins.fit(np.arange(10.0)[:, None], ["x"], n_bins=n_bins)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reference", "shown"),
    [
        (np.zeros((10, 3)), r"\(10, 3\)"),
        (np.zeros(10), r"\(10,\)"),
        (np.zeros((2, 10, 2)), r"\(2, 10, 2\)"),
    ],
)
def test_numeric_fit_refuses_a_wrong_shape(reference: np.ndarray, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"reference must have shape \(events, 2\), got {shown}"):
        NumericBins.fit(reference, ["a", "b"])


def test_numeric_fit_refuses_a_feature_without_finite_values() -> None:
    ref = np.column_stack([np.arange(5.0), [np.nan, np.inf, -np.inf, np.nan, np.nan]])
    with pytest.raises(ValueError, match=r"numeric feature 'b' is empty .*among 5"):
        NumericBins.fit(ref, ["a", "b"])
    with pytest.raises(ValueError, match=r"numeric feature 'a' is empty .*among 3"):
        NumericBins.fit(np.full((3, 1), np.nan), ["a"])


def test_numeric_bins_refuse_bad_names_and_edges() -> None:
    with pytest.raises(ValueError, match=r"duplicates \['a'\]"):
        NumericBins.fit(np.zeros((3, 2)), ["a", "a"])
    with pytest.raises(ValueError, match=r"non-empty strings, got ''"):
        NumericBins.fit(np.zeros((3, 1)), [""])
    with pytest.raises(ValueError, match=r"'x' must increase strictly, got array\(\[2\., 1\.\]\)"):
        NumericBins(("x",), (np.array([2.0, 1.0]),))
    with pytest.raises(ValueError, match=r"'x' must be a 1-D finite array, got \[1\.0, inf\]"):
        NumericBins(("x",), ([1.0, math.inf],))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"2 features, 1 edges"):
        NumericBins(("x", "y"), (np.array([1.0]),))


def test_numeric_count_refuses_a_wrong_batch_shape() -> None:
    bins = NumericBins.fit(np.zeros((4, 2)), ["a", "b"])
    with pytest.raises(ValueError, match=r"batch must have shape \(events, 2\), got \(4, 3\)"):
        bins.count(np.zeros((4, 3)))


def test_categorical_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"top_k must be an integer >= 1, got 0"):
        CategoricalBins.fit({"a": ["x"]}, top_k=0)
    with pytest.raises(ValueError, match=r"categorical feature 'b' is empty"):
        CategoricalBins.fit({"a": ["x"], "b": [None, math.nan]})
    bins = CategoricalBins.fit({"a": ["x"], "b": ["y"]})
    with pytest.raises(ValueError, match=r"lacks categorical feature\(s\) \['b'\]"):
        bins.count({"a": ["x"]})
    with pytest.raises(ValueError, match=r"differ in length: \[1, 2\]"):
        bins.count({"a": ["x"], "b": ["y", "y"]})
    with pytest.raises(ValueError, match=r"unique strings, got \('x', 'x'\)"):
        CategoricalBins(("a",), (("x", "x"),))
    with pytest.raises(ValueError, match=r"not a categorical bins document: KeyError\('categ"):
        CategoricalBins.from_dict({"features": ["a"]})
