"""Bounded per-slice reservoir samples of raw rows, for Evidently reports.

The engine keeps, per model version, a bounded reservoir sample of raw
feature rows for each slice of the drift window (Vitter's algorithm R within a
slice, ``capacity // n_slices`` rows per slice), so the union over the window's
slices is a bounded, roughly uniform sample of the current window. The
reference profile carries a sample of the reference rows in its metadata
(:func:`attach_sample`). Rendering the report is :mod:`monitor.serve.reports`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from detectors import ReferenceProfile

__all__ = ["SAMPLE_KEY", "RowSource", "SliceReservoir", "SliceSample", "attach_sample"]

SAMPLE_KEY = "sample"


class RowSource(Protocol):
    """Anything indexable by row number giving that row's categorical values."""

    def __getitem__(self, i: int, /) -> Sequence[object]: ...


@dataclass
class SliceSample:
    """One slice's reservoir: the first ``filled`` rows are the sample of the
    ``seen`` rows offered."""

    numeric: npt.NDArray[np.float64]
    categorical: list[list[object]]
    score: npt.NDArray[np.float64]
    filled: int = 0
    seen: int = 0


@dataclass
class SliceReservoir:
    """Per-slice reservoir samples of one version's rows.

    Examples
    --------
    >>> r = SliceReservoir(capacity=100, n_slices=4, n_numeric=1, n_categorical=0, seed=1)
    >>> r.add(np.array([0] * 1000), np.arange(1000.0)[:, None], [[]] * 1000, np.zeros(1000))
    >>> r.sample()[0].shape  # 100 // 4 rows kept for slice 0
    (25, 1)
    >>> r.expire(oldest=5)
    >>> r.sample()[0].shape
    (0, 1)
    """

    capacity: int
    n_slices: int
    n_numeric: int
    n_categorical: int
    seed: int = 0
    slices: dict[int, SliceSample] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.capacity < 1 or self.n_slices < 1:
            raise ValueError(f"capacity and n_slices must be >= 1, got {self.capacity!r}, "
                             f"{self.n_slices!r}")
        self.per_slice = max(1, self.capacity // self.n_slices)
        self._rng = np.random.default_rng(self.seed)

    def add(self, slice_ids: npt.NDArray[np.int64], numeric: npt.NDArray[np.float64],
            categorical: RowSource, score: npt.NDArray[np.float64]) -> None:
        """Offer rows (``categorical[i]`` is row i's categorical values)."""
        k = self.per_slice
        for sid in np.unique(slice_ids).tolist():
            rows = np.flatnonzero(slice_ids == sid)
            sl = self.slices.get(sid)
            if sl is None:
                sl = self.slices[sid] = SliceSample(
                    np.empty((k, self.n_numeric)), [[] for _ in range(k)], np.empty(k))
            # fill the free places first, then algorithm R for the rest
            free = min(k - sl.filled, rows.size)
            take, rest = rows[:free], rows[free:]
            if free:
                sl.numeric[sl.filled:sl.filled + free] = numeric[take]
                sl.score[sl.filled:sl.filled + free] = score[take]
                if self.n_categorical:
                    for j, i in enumerate(take.tolist()):
                        sl.categorical[sl.filled + j] = list(categorical[i])
                sl.filled += free
            sl.seen += free
            if rest.size:
                positions = self._rng.integers(0, sl.seen + np.arange(1, rest.size + 1))
                sl.seen += rest.size
                keep = positions < k
                pos, src = positions[keep], rest[keep]
                if pos.size:
                    # algorithm R replaces one by one: of the rows drawn for the
                    # same place, the last one stays
                    last = pos.size - 1 - np.unique(pos[::-1], return_index=True)[1]
                    pos, src = pos[last], src[last]
                    sl.numeric[pos] = numeric[src]
                    sl.score[pos] = score[src]
                    if self.n_categorical:
                        for p, i in zip(pos.tolist(), src.tolist(), strict=True):
                            sl.categorical[p] = list(categorical[i])

    def expire(self, oldest: int) -> None:
        """Drop slices older than ``oldest``."""
        for sid in [s for s in self.slices if s < oldest]:
            del self.slices[sid]

    def sample(self) -> tuple[npt.NDArray[np.float64], list[list[object]],
                              npt.NDArray[np.float64]]:
        """The window's sample: numeric rows, categorical rows, scores."""
        parts = [s for _, s in sorted(self.slices.items())]
        if not parts:
            return (np.empty((0, self.n_numeric)), [], np.empty(0))
        return (np.concatenate([p.numeric[:p.filled] for p in parts]),
                [row for p in parts for row in p.categorical[:p.filled]],
                np.concatenate([p.score[:p.filled] for p in parts]))


def attach_sample(profile: ReferenceProfile, numeric: Mapping[str, npt.ArrayLike],
                  categorical: Mapping[str, Sequence[object]], scores: npt.ArrayLike,
                  size: int = 5000, seed: int = 0) -> ReferenceProfile:
    """A copy of ``profile`` whose metadata holds a uniform sample of the rows."""
    score_arr = np.asarray(scores, dtype=np.float64)
    n = score_arr.size
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(size, n), replace=False))
    sample = {
        "numeric": {k: [None if not np.isfinite(x) else float(x)
                        for x in np.asarray(v, dtype=np.float64)[idx]]
                    for k, v in numeric.items()},
        "categorical": {k: [None if v[i] is None else str(v[i]) for i in idx.tolist()]
                        for k, v in categorical.items()},
        "score": score_arr[idx].tolist(),
    }
    return ReferenceProfile(
        numeric=profile.numeric, categorical=profile.categorical, score=profile.score,
        numeric_counts=profile.numeric_counts, categorical_counts=profile.categorical_counts,
        score_counts=profile.score_counts, n_events=profile.n_events,
        metadata={**profile.metadata, SAMPLE_KEY: sample},
    )
