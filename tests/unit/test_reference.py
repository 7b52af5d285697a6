"""Tests of detectors.reference: ReferenceProfile fitting, JSON round trip, hash."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from detectors import CategoricalBins, NumericBins, ReferenceProfile


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(0)
    n = 1000
    amount = rng.lognormal(3, 1, n)
    amount[:7] = np.nan
    return ReferenceProfile.fit(
        numeric={"amount": amount, "age_days": rng.integers(0, 5, n).astype(float)},
        categorical={
            "mcc": rng.choice(["grocery", "fuel", "travel"], n).tolist(),
            "country": [None if i % 50 == 0 else ("DE" if i % 3 else "FR") for i in range(n)],
        },
        scores=rng.beta(1, 20, n),
        n_bins=10,
        top_k=5,
        metadata={"model": "champion-v3"},
    )


def _replace(profile: ReferenceProfile, **changes: Any) -> ReferenceProfile:
    fields: dict[str, Any] = {
        "numeric": profile.numeric, "categorical": profile.categorical, "score": profile.score,
        "numeric_counts": profile.numeric_counts,
        "categorical_counts": profile.categorical_counts,
        "score_counts": profile.score_counts, "n_events": profile.n_events,
        "metadata": profile.metadata,
    }
    fields.update(changes)
    return ReferenceProfile(**fields)


def test_fit_counts_every_event_once_per_feature(profile: ReferenceProfile) -> None:
    assert profile.n_events == 1000
    assert profile.numeric.features == ("amount", "age_days")
    assert profile.categorical.features == ("mcc", "country")
    assert profile.numeric_counts.sum(axis=1).tolist() == [1000, 1000]
    assert profile.categorical_counts.sum(axis=1).tolist() == [1000, 1000]
    assert profile.score_counts.shape == (1, profile.score.n_columns)
    assert profile.score_counts.sum() == 1000
    assert profile.numeric_counts[0, profile.numeric.missing_column] == 7
    assert profile.categorical_counts[1, profile.categorical.missing_column] == 20
    # a discrete feature with 5 values gets fewer than 10 bins
    assert profile.numeric.n_bins[1] < 10


def test_counts_are_read_only(profile: ReferenceProfile) -> None:
    with pytest.raises(ValueError, match="read-only"):
        profile.numeric_counts[0, 0] = 5
    with pytest.raises(ValueError, match="read-only"):
        profile.score_counts[0, 0] = 5


def test_json_round_trip_keeps_hash_and_counts(profile: ReferenceProfile) -> None:
    text = profile.to_json()
    again = ReferenceProfile.from_json(text)
    assert again.content_hash == profile.content_hash
    assert len(profile.content_hash) == 64
    np.testing.assert_array_equal(again.numeric_counts, profile.numeric_counts)
    np.testing.assert_array_equal(again.categorical_counts, profile.categorical_counts)
    np.testing.assert_array_equal(again.score_counts, profile.score_counts)
    assert again.n_events == profile.n_events
    assert again.metadata == {"model": "champion-v3"}
    assert again.categorical.categories == profile.categorical.categories
    for e1, e2 in zip(again.numeric.edges, profile.numeric.edges, strict=True):
        np.testing.assert_array_equal(e1, e2)  # exact, thanks to float.hex
    # bytes work too, and re-serialising is byte-identical (canonical JSON)
    assert ReferenceProfile.from_json(text.encode()).to_json() == text


def test_hash_changes_when_one_edge_changes(profile: ReferenceProfile) -> None:
    edges = list(profile.numeric.edges)
    moved = edges[0].copy()
    moved[3] = np.nextafter(moved[3], np.inf)  # the smallest possible change
    edges[0] = moved
    changed = _replace(profile, numeric=NumericBins(profile.numeric.features, tuple(edges)))
    assert changed.content_hash != profile.content_hash
    # the score bins count too
    score_edges = profile.score.edges[0].copy()
    score_edges[0] = score_edges[0] / 2
    changed_score = _replace(profile, score=NumericBins(("score",), (score_edges,)))
    assert changed_score.content_hash != profile.content_hash


def test_hash_changes_with_counts_and_categories_but_not_metadata(
    profile: ReferenceProfile,
) -> None:
    counts = profile.numeric_counts.copy()
    counts[0, 0] += 1
    assert _replace(profile, numeric_counts=counts).content_hash != profile.content_hash
    cats = list(profile.categorical.categories)
    cats[0] = tuple(reversed(cats[0]))
    recat = CategoricalBins(profile.categorical.features, tuple(cats))
    assert _replace(profile, categorical=recat).content_hash != profile.content_hash
    assert _replace(profile, n_events=999).content_hash != profile.content_hash
    assert _replace(profile, metadata={"other": 1}).content_hash == profile.content_hash


def test_hash_is_stable_across_fits() -> None:
    def fit() -> ReferenceProfile:
        rng = np.random.default_rng(1)
        return ReferenceProfile.fit(numeric={"x": rng.normal(size=200)},
                                    categorical={"c": ["a", "b"] * 100},
                                    scores=rng.random(200))

    assert fit().content_hash == fit().content_hash


def test_profile_without_numeric_or_categorical_features() -> None:
    rng = np.random.default_rng(2)
    prof = ReferenceProfile.fit(numeric={}, categorical={}, scores=rng.random(50))
    assert prof.numeric_counts.shape == (0, prof.numeric.n_columns)
    assert prof.categorical_counts.shape == (0, prof.categorical.n_columns)
    again = ReferenceProfile.from_json(prof.to_json())
    assert again.content_hash == prof.content_hash


# ---------------------------------------------------------------------------
# garbage in from_json, bad arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json at all", r"reference profile is not JSON"),
        ("", r"reference profile is not JSON"),
        ("[1, 2, 3]", r"format must be 1, got 'list'"),
        ('"profile"', r"format must be 1, got 'str'"),
        ("{}", r"format must be 1, got None"),
        ('{"format": 2}', r"format must be 1, got 2"),
        ('{"format": 1}', r"lacks key 'numeric'"),
    ],
)
def test_from_json_of_garbage_raises_value_error(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReferenceProfile.from_json(text)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n_events", None, r"wrong type.*NoneType"),
        ("n_events", "many", r"invalid literal for int\(\) with base 10: 'many'"),
        ("n_events", 0, r"n_events must be >= 1, got 0"),
        ("metadata", 5, r"wrong type.*'int' object is not iterable"),
        ("score_counts", None, r"wrong type.*NoneType"),
        ("score_counts", [[1, 2]], r"score_counts must have shape \(1, \d+\), got \(1, 2\)"),
        ("numeric_counts", [1, 2, 3], r"cannot reshape array of size 3"),
        ("numeric", "bins", r"not a numeric bins document"),
        ("numeric", {"features": ["x"], "edges": [[1.5]]}, r"not a numeric bins document"),
        ("categorical", {"features": ["a"]}, r"not a categorical bins document"),
    ],
)
def test_from_json_of_a_corrupted_document_raises_value_error(
    profile: ReferenceProfile, key: str, value: object, message: str
) -> None:
    data = json.loads(profile.to_json())
    data[key] = value
    with pytest.raises(ValueError, match=message):
        ReferenceProfile.from_json(json.dumps(data))


def test_negative_counts_are_refused(profile: ReferenceProfile) -> None:
    counts = profile.numeric_counts.copy()
    counts[1, 0] = -3
    with pytest.raises(ValueError, match=r"numeric_counts must be >= 0, got minimum -3"):
        _replace(profile, numeric_counts=counts)


def test_wrong_score_feature_is_refused(profile: ReferenceProfile) -> None:
    bins = NumericBins(("prob",), profile.score.edges)
    with pytest.raises(ValueError, match=r"single feature 'score', got \('prob',\)"):
        _replace(profile, score=bins)


def test_fit_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"reference is empty: no scores"):
        ReferenceProfile.fit(numeric={}, categorical={}, scores=[])
    with pytest.raises(ValueError, match=r"must all have 3 values, got \{'x': 2, 'c': 4\}"):
        ReferenceProfile.fit(numeric={"x": [1.0, 2.0]}, categorical={"c": ["a"] * 4},
                             scores=[0.1, 0.2, 0.3])
