"""ADWIN change detection on batches, wrapping river's ``drift.ADWIN``.

river's ADWIN (Bifet and Gavaldà, 2007) keeps an adaptive window and flags a
change when two sub-windows differ in mean by more than a bound set by
``delta``. Its core is compiled; this wrapper only feeds it a batch and reports
*where in the batch* changes were detected. ADWIN is not reimplemented here.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import length_hint
from typing import Any

import numpy as np
import numpy.typing as npt
from river import drift

__all__ = ["ADWINResult", "BatchADWIN"]

# river ships no type information; its ADWIN is used through this Any alias.
_RiverADWIN: Any = drift.ADWIN


@dataclass(frozen=True)
class ADWINResult:
    """Outcome of feeding one batch.

    Attributes
    ----------
    change_positions : ndarray of int64
        Positions in the batch at which a change was detected.
    mean : float
        The detector's current window mean (river's ``estimation``).
    width : int
        The current adaptive window width (number of values it holds).
    n_detections : int
        Changes detected since construction (or the last reset).
    """

    change_positions: npt.NDArray[np.int64]
    mean: float
    width: int
    n_detections: int


class BatchADWIN:
    """Batch facade over river's ADWIN.

    Parameters
    ----------
    delta : float, default 0.002
        Confidence: smaller values make detection more conservative.
    clock : int, default 32
        How often (in updates) ADWIN checks for a change.
    max_buckets : int, default 5
        Buckets of each size kept by the exponential histogram.
    min_window_length : int, default 5
        Minimum sub-window length for a cut.
    grace_period : int, default 10
        Updates before any detection is allowed.

    Examples
    --------
    >>> rng = np.random.default_rng(7)
    >>> det = BatchADWIN()
    >>> res = det.update(np.r_[rng.normal(0, 0.1, 1000), rng.normal(1, 0.1, 1000)])
    >>> bool(res.change_positions.size) and 1000 <= int(res.change_positions[0]) < 1100
    True
    >>> round(res.mean, 1)
    1.0
    """

    def __init__(
        self,
        delta: float = 0.002,
        clock: int = 32,
        max_buckets: int = 5,
        min_window_length: int = 5,
        grace_period: int = 10,
    ) -> None:
        if not 0.0 < delta < 1.0:
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        for name, value in (("clock", clock), ("max_buckets", max_buckets),
                            ("min_window_length", min_window_length),
                            ("grace_period", grace_period)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.delta = delta
        self.clock = clock
        self.max_buckets = max_buckets
        self.min_window_length = min_window_length
        self.grace_period = grace_period
        self._reset()

    def _reset(self) -> None:
        self._adwin: Any = _RiverADWIN(
            delta=self.delta, clock=self.clock, max_buckets=self.max_buckets,
            min_window_length=self.min_window_length, grace_period=self.grace_period,
        )
        self._n_detections = 0
        self._n_seen = 0

    @property
    def n_detections(self) -> int:
        """Changes detected so far."""
        return self._n_detections

    @property
    def n_seen(self) -> int:
        """Values fed so far."""
        return self._n_seen

    @property
    def mean(self) -> float:
        """Current window mean."""
        return float(self._adwin.estimation)

    @property
    def width(self) -> int:
        """Current window width."""
        return int(self._adwin.width)

    def update(self, values: npt.ArrayLike) -> ADWINResult:
        """Feed a batch of values in order; report where changes were detected.

        Raises
        ------
        ValueError
            If the batch is not 1-D or holds a non-finite value.
        """
        arr = np.asarray(values, dtype=np.float64)
        if arr.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {arr.shape}")
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"values must be finite, got {arr[~np.isfinite(arr)][:3]!r}")
        positions: list[int] = []
        adwin = self._adwin
        if hasattr(adwin, "_helper") and hasattr(adwin, "_drift_detected"):
            # river's ADWIN.update(x) is: reset if the last update detected a
            # change, then feed x to the compiled AdaptiveWindowing helper. The
            # same steps, without the Python wrapper call per value:
            # any() feeds values in C and stops right after a detection; the
            # list iterator's length hint then gives that value's position
            values_left = iter(arr.tolist())
            n = int(arr.size)
            detected = bool(adwin._drift_detected)
            while length_hint(values_left):
                if detected:
                    adwin._reset()
                detected = any(map(adwin._helper.update, values_left))
                if detected:
                    positions.append(n - length_hint(values_left) - 1)
            adwin._drift_detected = detected
        else:  # another river layout: the public API
            for i, x in enumerate(arr.tolist()):
                adwin.update(x)
                if adwin.drift_detected:
                    positions.append(i)
        self._n_detections += len(positions)
        self._n_seen += int(arr.size)
        return ADWINResult(
            change_positions=np.asarray(positions, dtype=np.int64),
            mean=self.mean,
            width=self.width,
            n_detections=self._n_detections,
        )
