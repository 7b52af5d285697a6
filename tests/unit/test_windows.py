"""Tests of detectors.windows: SlicedWindow and slice_ids."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import SlicedWindow, count_by_group, slice_ids

PROPERTY = settings(max_examples=200, deadline=None)

N_VALUES = 4  # values are bin indices in [0, N_VALUES)
MAX_SLICE = 30

# one event: (slice id, value, goes to half A?)
events_strategy = st.lists(
    st.tuples(
        st.integers(0, MAX_SLICE), st.integers(0, N_VALUES - 1), st.booleans()
    ),
    max_size=120,
)


def one_hot(value: int) -> np.ndarray:
    out = np.zeros(N_VALUES, dtype=np.int64)
    out[value] = 1
    return out


def assert_same_window(a: SlicedWindow, b: SlicedWindow) -> None:
    assert a.bounds == b.bounds
    np.testing.assert_array_equal(a.total, b.total)
    sa, sb = a.slices(), b.slices()
    assert list(sa) == list(sb)
    for sid in sa:
        np.testing.assert_array_equal(sa[sid], sb[sid])


def per_slice_counts(events: list[tuple[int, int, bool]]) -> tuple[np.ndarray, np.ndarray]:
    """(slice ids, (slices, N_VALUES) counts) of some events, via count_by_group."""
    sids = np.array([s for s, _, _ in events], dtype=np.int64)
    values = np.array([[v] for _, v, _ in events], dtype=np.int64).reshape(-1, 1)
    uniq, inverse = np.unique(sids, return_inverse=True)
    counts = count_by_group(inverse.reshape(-1), values, uniq.size, N_VALUES)[:, 0, :]
    return uniq, counts


# ---------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------


@PROPERTY
@given(events_strategy, st.integers(1, 8))
def test_merged_halves_equal_one_window_fed_everything(
    events: list[tuple[int, int, bool]], n_slices: int
) -> None:
    half_a = SlicedWindow(n_slices, (N_VALUES,))
    half_b = SlicedWindow(n_slices, (N_VALUES,))
    full = SlicedWindow(n_slices, (N_VALUES,))
    for sid, value, to_a in events:
        (half_a if to_a else half_b).add(sid, one_hot(value))
        full.add(sid, one_hot(value))
    merged = half_a.merge(half_b)
    assert_same_window(merged, full)
    assert_same_window(half_b.merge(half_a), full)
    if full.head is not None:
        assert merged.head == full.head == max(s for s, _, _ in events)
    else:
        assert not events


@PROPERTY
@given(events_strategy, st.integers(1, 8))
def test_merged_batched_halves_equal_the_union(
    events: list[tuple[int, int, bool]], n_slices: int
) -> None:
    """Halves counted with count_by_group and fed with add_many, merged == union."""
    sids = np.array([s for s, _, _ in events], dtype=np.int64)
    values = np.array([v for _, v, _ in events], dtype=np.int64).reshape(-1, 1)
    mask = np.array([a for _, _, a in events], dtype=bool)
    n_groups = MAX_SLICE + 1
    # count_by_group on the union is the sum of the counts of the two halves
    union = count_by_group(sids, values, n_groups, N_VALUES)
    part_a = count_by_group(sids[mask], values[mask], n_groups, N_VALUES)
    part_b = count_by_group(sids[~mask], values[~mask], n_groups, N_VALUES)
    np.testing.assert_array_equal(union, part_a + part_b)
    assert union.sum() == len(events)

    windows = []
    for part in ([e for e in events if e[2]], [e for e in events if not e[2]], events):
        w = SlicedWindow(n_slices, (N_VALUES,))
        ids, counts = per_slice_counts(part)
        refused = w.add_many(ids, counts)
        if w.head is not None:
            # add_many judges every slice against the window the newest one opens
            assert refused.tolist() == [int(s) for s in ids if s <= w.head - n_slices]
        windows.append(w)
    merged = windows[0].merge(windows[1])
    assert_same_window(merged, windows[2])
    # and the window total is the union's counts over the slices in the window
    if merged.bounds is not None:
        lo, hi = merged.bounds
        np.testing.assert_array_equal(
            merged.total, union[max(lo, 0) : hi + 1, 0, :].sum(axis=0)
        )


@PROPERTY
@given(events_strategy, st.integers(1, 8))
def test_total_equals_a_brute_force_window_and_state_round_trips(
    events: list[tuple[int, int, bool]], n_slices: int
) -> None:
    w = SlicedWindow(n_slices, (N_VALUES,))
    accepted: list[tuple[int, int]] = []
    head: int | None = None
    for sid, value, _ in events:
        late = head is not None and sid <= head - n_slices
        assert w.add(sid, one_hot(value)) is (not late)
        if not late:
            accepted.append((sid, value))
            head = sid if head is None else max(head, sid)
    expected = np.zeros(N_VALUES, dtype=np.int64)
    if head is not None:
        for sid, value in accepted:
            if sid > head - n_slices:
                expected[value] += 1
    np.testing.assert_array_equal(w.total, expected)
    assert w.head == head

    # state() / from_state() round trip, through JSON
    again = SlicedWindow.from_state(json.loads(json.dumps(w.state())))
    assert again.n_slices == w.n_slices
    assert again.shape == w.shape
    assert again.head == w.head
    assert_same_window(again, w)
    # the restored window keeps working like the original
    nxt = (w.head or 0) + 1
    assert w.add(nxt, one_hot(0))
    assert again.add(nxt, one_hot(0))
    assert_same_window(again, w)


# ---------------------------------------------------------------------------
# examples
# ---------------------------------------------------------------------------


def test_late_slices_are_refused_and_change_nothing() -> None:
    w = SlicedWindow(n_slices=3, shape=(2,))
    assert w.add(10, np.array([1, 0]))
    assert w.add(12, np.array([0, 2]))
    assert w.bounds == (10, 12)
    assert w.accepts(10)
    assert not w.accepts(9)
    before = w.total.copy()
    assert w.add(9, np.array([5, 5])) is False
    assert w.add(-100, np.array([5, 5])) is False
    np.testing.assert_array_equal(w.total, before)
    assert w.head == 12
    assert 9 not in w.slices()
    # an older slice still inside the window is accepted
    assert w.add(11, np.array([1, 1])) is True
    assert w.total.tolist() == [2, 3]


def test_add_many_reports_late_slices() -> None:
    w = SlicedWindow(n_slices=3, shape=(1,))
    w.add(5, [1])
    refused = w.add_many([9, 6, 7, 3], [[1], [10], [100], [1000]])
    # head moves to 9 first: window (7, 9); 6 and 3 are late, 5 expired
    assert refused.tolist() == [3, 6]
    assert w.total.tolist() == [101]
    assert w.add_many([], np.zeros((0, 1), dtype=np.int64)).tolist() == []


def test_expiry_subtracts_exactly() -> None:
    w = SlicedWindow(n_slices=3, shape=(2, 2))
    slice_counts = {sid: np.array([[sid, 1], [2 * sid, sid % 2]]) for sid in range(8)}
    for sid in range(5):
        w.add(sid, slice_counts[sid])
    np.testing.assert_array_equal(w.total, sum(slice_counts[s] for s in (2, 3, 4)))
    w.add(5, slice_counts[5])
    np.testing.assert_array_equal(w.total, sum(slice_counts[s] for s in (3, 4, 5)))
    assert list(w.slices()) == [3, 4, 5]
    # a skipped slice (6) expires slices 3 and 4 at once
    w.add(7, slice_counts[7])
    np.testing.assert_array_equal(w.total, slice_counts[5] + slice_counts[7])
    assert w.bounds == (5, 7)
    # a jump of a whole window or more empties it
    w.advance(10)
    assert w.total.tolist() == [[0, 0], [0, 0]]
    assert w.slices() == {}
    assert w.bounds == (8, 10)
    # moving the head backwards does nothing
    w.advance(3)
    assert w.head == 10


def test_total_is_read_only() -> None:
    w = SlicedWindow(n_slices=2, shape=(3,))
    w.add(0, np.array([1, 2, 3]))
    total = w.total
    with pytest.raises(ValueError, match="read-only"):
        total[0] = 100
    with pytest.raises(ValueError, match="read-only"):
        w.total[...] = 0
    assert w.total.tolist() == [1, 2, 3]
    # it is a view: it follows later additions without a copy
    w.add(0, np.array([1, 1, 1]))
    assert total.tolist() == [2, 3, 4]


def test_float_window_for_weighted_sums() -> None:
    w = SlicedWindow(n_slices=2, shape=(2,), dtype="float64")
    assert w.add(0, np.array([0.5, 1.25]))
    assert w.add(1, np.array([2.0, 0.0]))
    assert w.total.dtype == np.float64
    assert w.total.tolist() == [2.5, 1.25]
    w.add(2, np.array([0.25, 0.25]))  # slice 0 expires
    assert w.total.tolist() == [2.25, 0.25]
    again = SlicedWindow.from_state(json.loads(json.dumps(w.state())))
    assert again.dtype == "float64"
    assert again.total.tolist() == [2.25, 0.25]
    with pytest.raises(ValueError, match=r"cannot merge windows"):
        w.merge(SlicedWindow(2, (2,)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_counts_are_refused(bad: float) -> None:
    # regression: a NaN/inf added to a float window stayed in the total after its
    # slice expired (total - NaN is NaN)
    w = SlicedWindow(n_slices=2, shape=(2,), dtype="float64")
    with pytest.raises(ValueError, match=rf"counts must be finite, got array\(\[{bad}\]\)"):
        w.add(0, np.array([1.0, bad]))
    assert w.head is None
    w.add(0, np.array([1.0, 1.0]))
    w.add(5, np.array([2.0, 3.0]))
    assert w.total.tolist() == [2.0, 3.0]


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(ValueError, match=r"dtype must be 'int64' or 'float64', got 'int32'"):
        SlicedWindow(2, (2,), dtype="int32")


def test_empty_window() -> None:
    w = SlicedWindow(n_slices=4, shape=(2,))
    assert w.head is None
    assert w.bounds is None
    assert w.total.tolist() == [0, 0]
    assert w.accepts(-(10**9))
    merged = w.merge(SlicedWindow(4, (2,)))
    assert merged.head is None
    assert SlicedWindow.from_state(w.state()).head is None


def test_slice_ids() -> None:
    assert slice_ids([0.0, 9.99, 10.0, 25.0, -0.5], 10).tolist() == [0, 0, 1, 2, -1]
    assert slice_ids([1_700_000_000.5], 0.5).tolist() == [3_400_000_001]


# ---------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("n_slices", "shown"), [(0, "0"), (-2, "-2"), (2.0, "2.0"),
                                                 (True, "True"), (None, "None")])
def test_bad_n_slices_is_refused(n_slices: object, shown: str) -> None:
    with pytest.raises(ValueError, match=rf"n_slices must be an integer >= 1, got {shown}$"):
        SlicedWindow(n_slices, (2,))  # type: ignore[arg-type]


def test_bad_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"shape must be non-negative integers, got \(2, -1\)"):
        SlicedWindow(3, (2, -1))


def test_counts_of_the_wrong_shape_are_refused() -> None:
    w = SlicedWindow(3, (2, 3))
    with pytest.raises(ValueError, match=r"counts must have shape \(2, 3\), got \(3, 2\)"):
        w.add(0, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"counts must have shape \(2, 2, 3\), got \(2, 3\)"):
        w.add_many([0, 1], np.zeros((2, 3), dtype=np.int64))
    assert w.head is None  # nothing was applied


def test_negative_counts_are_refused() -> None:
    w = SlicedWindow(3, (2,))
    with pytest.raises(ValueError, match=r"counts must be >= 0, got minimum \S*-4\b"):
        w.add(0, np.array([1, -4]))
    assert w.head is None


def test_merging_different_windows_is_refused() -> None:
    with pytest.raises(ValueError, match=r"cannot merge .* \(3, \(2,\)\) and \(4, \(2,\)\)"):
        SlicedWindow(3, (2,)).merge(SlicedWindow(4, (2,)))
    with pytest.raises(ValueError, match=r"\(3, \(2,\)\) and \(3, \(5,\)\)"):
        SlicedWindow(3, (2,)).merge(SlicedWindow(3, (5,)))


def test_slice_ids_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"slice_seconds must be > 0, got 0"):
        slice_ids([1.0], 0)
    with pytest.raises(ValueError, match=r"slice_seconds must be > 0, got -5"):
        slice_ids([1.0], -5)
    with pytest.raises(ValueError, match=r"timestamps must be finite, got array\(\[nan\]\)"):
        slice_ids([1.0, float("nan")], 10)


# ---------------------------------------------------------------------------
# slices held ahead of the head
# ---------------------------------------------------------------------------

# one step: ("add", slice id, value) or ("advance", slice id)
ahead_steps = st.lists(
    st.one_of(st.tuples(st.just("add"), st.integers(0, 60), st.integers(0, N_VALUES - 1)),
              st.tuples(st.just("advance"), st.integers(0, 60), st.just(0))),
    max_size=80)


@PROPERTY
@given(ahead_steps, st.integers(1, 6), st.integers(0, 10))
def test_ahead_slices_match_a_naive_model(steps: list[tuple[str, int, int]], n_slices: int,
                                          ahead: int) -> None:
    """Against a dict of every slice ever added: the total is the sum of the
    slices in (head - n, head], what is held is within (head, head + ahead], and
    an add is refused exactly when its slice is at or below head - n."""
    w = SlicedWindow(n_slices, (N_VALUES,), ahead=ahead)
    kept: dict[int, np.ndarray] = {}
    head: int | None = None
    for op, sid, value in steps:
        if op == "advance":
            w.advance(sid)
            head = sid if head is None else max(head, sid)
        else:
            ok = w.add(sid, one_hot(value))
            if head is None:
                head = sid
            if sid <= head - n_slices:
                assert not ok
                continue
            assert ok
            if sid > head + ahead:
                head = sid - ahead
            kept[sid] = kept.get(sid, np.zeros(N_VALUES, np.int64)) + one_hot(value)
        kept = {s: c for s, c in kept.items() if head is None or s > head - n_slices}
        assert w.head == head
        inside = [c for s, c in kept.items() if head is not None and s <= head]
        want = np.sum(inside, axis=0) if inside else np.zeros(N_VALUES, np.int64)
        np.testing.assert_array_equal(w.total, want)
        assert w.slice_ids() == set(kept)
        assert head is None or all(s <= head + ahead for s in kept)
        for s, c in kept.items():
            got = w.get(s)
            assert got is not None
            np.testing.assert_array_equal(got, c)


def test_ahead_must_be_a_non_negative_integer() -> None:
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="ahead"):
            SlicedWindow(3, (2,), ahead=bad)  # type: ignore[arg-type]
    w = SlicedWindow(3, (2,), ahead=4)
    restored = SlicedWindow.from_state(json.loads(json.dumps(w.state())))
    assert restored.ahead == 4
