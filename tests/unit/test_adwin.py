"""Tests of detectors.adwin: the BatchADWIN wrapper over river's ADWIN."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import ADWINResult, BatchADWIN

CHANGE_POINT = 2000
# Observed with river 0.26.1 and the default parameters (delta=0.002, clock=32):
# ADWIN checks for a cut every 32 updates, so the detection lands on a clock tick.
GOLDEN_FIRST_DETECTION = 2047


def step_stream() -> np.ndarray:
    rng = np.random.default_rng(42)
    stream: np.ndarray = np.r_[rng.normal(0.0, 0.1, CHANGE_POINT),
                               rng.normal(0.5, 0.1, CHANGE_POINT)]
    return stream


def feed_in_batches(det: BatchADWIN, values: np.ndarray, sizes: list[int]) -> list[int]:
    """Feed consecutive batches of the given sizes; detection positions in stream offsets."""
    assert sum(sizes) == values.size
    positions: list[int] = []
    offset = 0
    for chunk in np.split(values, np.cumsum(sizes)[:-1]):
        result = det.update(chunk)
        positions.extend((result.change_positions + offset).tolist())
        offset += chunk.size
    return positions


def test_step_change_is_detected_at_the_golden_position() -> None:
    det = BatchADWIN()
    result = det.update(step_stream())
    assert isinstance(result, ADWINResult)
    assert result.change_positions.dtype == np.int64
    assert result.change_positions.tolist() == [GOLDEN_FIRST_DETECTION]
    first = int(result.change_positions[0])
    assert CHANGE_POINT <= first < CHANGE_POINT + 200
    # after the cut the window holds (mostly) post-change values
    assert result.n_detections == det.n_detections == 1
    assert result.mean == pytest.approx(0.5, abs=0.02)
    assert result.width == det.width
    assert 1000 < result.width < 2 * CHANGE_POINT
    assert det.n_seen == 2 * CHANGE_POINT


@pytest.mark.parametrize(
    "sizes",
    [
        [1] * 4000,
        [7] * 571 + [3],
        [1000] * 4,
        [2047, 1, 1952],
        [1999, 2, 1, 1998],
        [0, 4000, 0],
    ],
    ids=["ones", "sevens", "thousands", "split-at-detection", "split-at-change", "empty-batches"],
)
def test_batching_does_not_change_detections(sizes: list[int]) -> None:
    values = step_stream()
    single = BatchADWIN().update(values).change_positions.tolist()
    det = BatchADWIN()
    assert feed_in_batches(det, values, sizes) == single == [GOLDEN_FIRST_DETECTION]
    assert det.n_seen == values.size
    assert det.n_detections == 1


def test_no_detection_on_a_stationary_stream() -> None:
    rng = np.random.default_rng(123)
    det = BatchADWIN()
    result = det.update(rng.normal(0.0, 0.1, 5000))
    assert result.change_positions.size == 0
    assert result.n_detections == 0
    assert result.width == 5000  # nothing was cut
    assert abs(result.mean) < 0.01


def test_a_downward_step_is_detected_too() -> None:
    values = -step_stream()
    positions = BatchADWIN().update(values).change_positions.tolist()
    assert positions
    assert CHANGE_POINT <= positions[0] < CHANGE_POINT + 200


def test_a_more_conservative_delta_does_not_detect_earlier() -> None:
    values = step_stream()
    default = BatchADWIN().update(values).change_positions
    strict = BatchADWIN(delta=1e-6).update(values).change_positions
    assert strict.size >= 1
    assert int(strict[0]) >= int(default[0])


def test_empty_batch() -> None:
    det = BatchADWIN()
    result = det.update([])
    assert result.change_positions.tolist() == []
    assert result.n_detections == 0
    assert result.width == 0
    assert det.n_seen == 0


@pytest.mark.parametrize(("delta", "shown"), [(0.0, "0.0"), (1.0, "1.0"), (-0.1, "-0.1"),
                                              (2, "2")])
def test_bad_delta_is_refused(delta: float, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"delta must be in \(0, 1\), got {shown}$"):
        BatchADWIN(delta=delta)


@pytest.mark.parametrize("name", ["clock", "max_buckets", "min_window_length", "grace_period"])
@pytest.mark.parametrize(("value", "shown"), [(0, "0"), (-1, "-1"), (2.5, "2.5"),
                                              (True, "True")])
def test_bad_integer_parameters_are_refused(name: str, value: object, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} must be an integer >= 1, got {shown}$"):
        BatchADWIN(**{name: value})  # type: ignore[arg-type]


def test_bad_values_are_refused() -> None:
    det = BatchADWIN()
    with pytest.raises(ValueError, match=r"values must be 1-D, got shape \(2, 2\)"):
        det.update(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"values must be finite, got array\(\[nan, inf\]\)"):
        det.update([1.0, math.nan, 2.0, math.inf])
    assert det.n_seen == 0  # nothing was fed


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shifts=st.lists(st.floats(-3, 3), min_size=1, max_size=4),
       binary=st.booleans(), sizes=st.lists(st.integers(1, 700), min_size=1, max_size=6))
def test_same_detections_and_state_as_rivers_own_update_loop(
        seed: int, shifts: list[float], binary: bool, sizes: list[int]) -> None:
    # the batch update drives river's compiled helper directly; it must match
    # river's public ADWIN.update(x) value by value, resets after detections included
    from river.drift import ADWIN

    rng = np.random.default_rng(seed)
    parts = [rng.normal(s, 1.0, 400) for s in [0.0, *shifts]]
    values = np.concatenate(parts)
    if binary:
        values = (values > 0.5).astype(np.float64)
    ours = BatchADWIN()
    positions: list[int] = []
    start = 0
    chunks = [*sizes, values.size]
    for size in chunks:
        chunk = values[start:start + size]
        positions += (ours.update(chunk).change_positions + start).tolist()
        start += chunk.size
        if start >= values.size:
            break
    river = ADWIN()  # type: ignore[no-untyped-call]  # river's ADWIN is unannotated
    expected = []
    for i, x in enumerate(values.tolist()):
        river.update(x)  # type: ignore[no-untyped-call]
        if river.drift_detected:
            expected.append(i)
    assert positions == expected
    assert ours.width == river.width
    assert ours.mean == pytest.approx(river.estimation)
