"""Bernoulli CUSUM for a drop in a proportion, on batches of 0/1 values.

The chart is the one of Reynolds and Stoumbos (1999), "A CUSUM chart for
monitoring a proportion when inspecting continuously" (Journal of Quality
Technology 31(1), 87-108): each 0/1 observation adds its log-likelihood ratio
of ``p1`` (out of control) against ``p0`` (in control),

* ``x = 1``: ``log(p1 / p0)``,
* ``x = 0``: ``log((1 - p1) / (1 - p0))``,

to a statistic kept at or above zero (Page's CUSUM, ``S = max(0, S + llr)``);
an alarm is raised when ``S >= h`` and the statistic restarts from zero. Here
``p1 = p0 - delta``: the chart watches for a *drop* (a catch rate that falls).

The threshold ``h`` comes from a target in-control average run length
``arl0`` (observations between false alarms when the rate stays ``p0``) with
Siegmund's (1985, *Sequential Analysis*, eq. 2.57) corrected-diffusion
approximation: for increments of mean ``mu`` and standard deviation ``sigma``,

    ARL(h) = (exp(-2 mu b / sigma^2) + 2 mu b / sigma^2 - 1) / (2 mu^2 / sigma^2),

with ``b = h + 1.166 sigma``. On 0/1 data it overstates the ARL (the chart's
steps overshoot ``h`` more than a diffusion does: for p0 = 0.7, p1 = 0.5 and
a Siegmund ARL0 of 10,000 the simulated one is about 5,600), so it only starts
the search: ``h`` is set on the exact ARL of the chart's Markov chain (Brook
and Evans, 1972, "An approach to the probability distribution of CUSUM run
length", Biometrika 59(3); the method Reynolds and Stoumbos use), the chart
run on a lattice (the increment of a 0 exact, that of a 1 the nearest lattice
point, about 0.1 % off) so that this ARL is the one of the chart run here.
:func:`bernoulli_threshold` returns the smallest lattice ``h`` whose ARL is at
least the target; tests/unit/test_cusum.py checks it against simulated run
lengths (p0 = 0.7, p1 = 0.5, ARL0 = 10,000: h = 6.38, chain ARL 10,146,
simulated 10,091 over 10 M observations).

The update is vectorised: between alarms the statistic is
``S_t = C_t - min(-S_0, min_{k<=t} C_k)`` (``C`` the cumulative sum of the
increments, the solution of Lindley's recursion), so a batch costs a few numpy
passes plus one per alarm.

Fail safe: with no in-control rate (``p0`` None) nothing is monitored, the
values are counted as unmonitored and no alarm can be raised.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

__all__ = [
    "BernoulliCUSUM",
    "CUSUMResult",
    "bernoulli_arl",
    "bernoulli_increments",
    "bernoulli_threshold",
    "siegmund_threshold",
]

#: Siegmund's boundary correction (the overshoot of a Gaussian random walk,
#: -zeta(1/2) / sqrt(2 pi) = 0.583..., doubled for the two boundaries)
_SIEGMUND_RHO = 1.166


def _check_rates(p0: float, p1: float) -> None:
    if not (0.0 < p1 < p0 < 1.0):
        raise ValueError(f"need 0 < p1 < p0 < 1, got p0={p0!r}, p1={p1!r}")


def bernoulli_increments(p0: float, p1: float) -> tuple[float, float]:
    """The log-likelihood-ratio increments of a 0 and of a 1.

    >>> inc0, inc1 = bernoulli_increments(0.7, 0.5)
    >>> round(inc0, 4), round(inc1, 4)
    (0.5108, -0.3365)
    """
    _check_rates(p0, p1)
    return math.log((1.0 - p1) / (1.0 - p0)), math.log(p1 / p0)


def bernoulli_arl(p0: float, p1: float, h: float, p: float | None = None) -> float:
    """Siegmund's approximation of the average run length (observations) of the
    chart for ``p0 -> p1`` with threshold ``h`` when the true rate is ``p``
    (default ``p0``: the in-control ARL).

    >>> round(bernoulli_arl(0.7, 0.5, 4.0))
    1372
    >>> round(bernoulli_arl(0.7, 0.5, 4.0, p=0.5))
    40
    """
    inc0, inc1 = bernoulli_increments(p0, p1)
    if h <= 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    q = p0 if p is None else p
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    mu = q * inc1 + (1.0 - q) * inc0
    var = q * (1.0 - q) * (inc1 - inc0) ** 2
    if var == 0.0:  # a constant stream: every step moves by mu
        return math.inf if mu <= 0 else math.ceil(h / mu)
    sigma = math.sqrt(var)
    b = h + _SIEGMUND_RHO * sigma
    if abs(mu) < 1e-12 * sigma:
        return (b / sigma) ** 2
    a = 2.0 * mu * b / var
    if a < -700.0:  # exp overflows: the ARL is astronomically large
        return math.inf
    return (math.exp(-a) + a - 1.0) / (2.0 * mu * mu / var)


def _lattice(p0: float, p1: float, h_guess: float) -> tuple[float, int, int]:
    """The chart's lattice: step ``g`` and integer increments ``(u0, u1)`` of a 0
    and a 1, ``u0 * g`` the exact increment of a 0 and ``u1 * g`` the nearest
    of the increment of a 1 (the best rational approximation of their ratio with
    ``u0`` <= 64, and about 600 states below ``h``)."""
    inc0, inc1 = bernoulli_increments(p0, p1)
    ratio = inc1 / inc0
    k_max = max(8, min(64, int(600 * inc0 / max(h_guess, 1.0))))
    ks = np.arange(4, k_max + 1)
    err = np.abs(ks * ratio - np.round(ks * ratio)) / ks
    k = int(ks[int(np.argmin(err))])
    return inc0 / k, k, min(-1, round(k * ratio))


def _lattice_arl(u0: int, u1: int, n_states: int, p: float) -> float:
    """Exact ARL from 0 of the integer chart ``S = max(0, S + u)`` (``u1`` with
    probability ``p``, else ``u0``), alarming at ``S >= n_states`` (Brook and
    Evans, 1972: ``L = (I - Q)^-1 1`` over the transient states)."""
    i = np.arange(n_states)
    a = np.eye(n_states)
    np.add.at(a, (i, np.maximum(i + u1, 0)), -p)
    up = i + u0
    ok = up < n_states
    a[i[ok], up[ok]] -= 1.0 - p
    return float(np.linalg.solve(a, np.ones(n_states))[0])


@lru_cache(maxsize=256)
def _design(p0: float, p1: float, arl0: float) -> tuple[float, int, int, int, float]:
    """The chart for ``p0 -> p1`` at ``arl0``: lattice step ``g``, increments
    ``u0``, ``u1`` and threshold ``n`` in steps, and its exact in-control ARL."""
    _check_rates(p0, p1)
    if not (math.isfinite(arl0) and 1.0 < arl0 <= 1e9):
        raise ValueError(f"arl0 must be a finite number in (1, 1e9], got {arl0!r}")
    guess = siegmund_threshold(p0, p1, arl0)
    g, u0, u1 = _lattice(p0, p1, guess)
    lo = 1  # ARL(lo) < arl0 unless lo works (checked below)
    hi = max(2, math.ceil(guess / g))
    while _lattice_arl(u0, u1, hi, p0) < arl0:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _lattice_arl(u0, u1, mid, p0) < arl0:
            lo = mid
        else:
            hi = mid
    if _lattice_arl(u0, u1, lo, p0) >= arl0:
        hi = lo
    return g, u0, u1, hi, _lattice_arl(u0, u1, hi, p0)


def bernoulli_threshold(p0: float, p1: float, arl0: float) -> tuple[float, float]:
    """The smallest threshold ``h`` of the lattice chart whose exact in-control
    ARL is at least ``arl0``, and that ARL (Markov chain of the chart, Brook
    and Evans 1972, as Reynolds and Stoumbos 1999 do; Siegmund's ``h`` starts
    the search).

    >>> h, arl = bernoulli_threshold(0.7, 0.5, 10_000)
    >>> round(h, 2), round(arl)
    (6.38, 10146)
    """
    g, _, _, n, arl = _design(p0, p1, arl0)
    return n * g, arl


def siegmund_threshold(p0: float, p1: float, arl0: float) -> float:
    """The threshold ``h`` whose Siegmund ARL (:func:`bernoulli_arl`) is
    ``arl0``. On 0/1 data it underestimates ``h`` (the overshoot of a discrete
    step is larger than a diffusion's): a start for :func:`bernoulli_threshold`.

    >>> h = siegmund_threshold(0.7, 0.5, 10_000)
    >>> round(h, 2), round(bernoulli_arl(0.7, 0.5, h))
    (5.79, 10000)
    """
    _check_rates(p0, p1)
    lo, hi = 1e-9, 1.0
    while bernoulli_arl(p0, p1, hi) < arl0:
        hi *= 2.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if bernoulli_arl(p0, p1, mid) < arl0:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass(frozen=True)
class CUSUMResult:
    """Outcome of feeding one batch.

    Attributes
    ----------
    alarm_positions : ndarray of int64
        Positions in the batch at which the statistic reached ``h``.
    statistic : float
        The statistic after the batch (0 right after an alarm).
    n_alarms : int
        Alarms since construction.
    monitored : bool
        False when the batch had no in-control rate (nothing was tested).
    p0, p1, h : float
        The rates and threshold the batch was tested with (NaN if unmonitored).
    """

    alarm_positions: npt.NDArray[np.int64]
    statistic: float
    n_alarms: int
    monitored: bool
    p0: float
    p1: float
    h: float


class BernoulliCUSUM:
    """A one-sided Bernoulli CUSUM for a drop of ``delta`` from ``p0``.

    The increments are those of the lattice chart (:func:`bernoulli_threshold`:
    the increment of a 0 exact, that of a 1 within about 0.1 %), so that the
    in-control ARL of the chart run here is the exact one of its Markov chain.

    Parameters
    ----------
    delta : float
        The drop to detect: ``p1 = p0 - delta``.
    arl0 : float
        Target in-control average run length, in observations: ``h`` is the
        smallest whose in-control ARL reaches it.
    p0 : float or None
        A fixed in-control rate; None: given with each batch
        (:meth:`update`), and without one nothing is monitored.

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> det = BernoulliCUSUM(delta=0.2, arl0=10_000, p0=0.7)
    >>> res = det.update(rng.random(3000) < 0.7)  # in control: no alarm
    >>> res.alarm_positions.tolist(), res.n_alarms
    ([], 0)
    >>> res = det.update(rng.random(500) < 0.5)   # the rate drops to 0.5
    >>> res.n_alarms >= 1 and int(res.alarm_positions[0]) < 300
    True
    >>> BernoulliCUSUM(delta=0.2, arl0=10_000).update([1, 0, 0]).monitored  # no p0
    False
    """

    #: designs kept (one per distinct p0)
    MAX_DESIGNS = 64

    def __init__(self, delta: float, arl0: float, p0: float | None = None) -> None:
        if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
            raise ValueError(f"delta must be in (0, 1), got {delta!r}")
        if not (isinstance(arl0, (int, float)) and math.isfinite(arl0) and 1.0 < arl0 <= 1e9):
            raise ValueError(f"arl0 must be a finite number in (1, 1e9], got {arl0!r}")
        if p0 is not None and not delta < p0 < 1.0:
            raise ValueError(f"p0 must be in (delta, 1) = ({delta}, 1), got {p0!r}")
        self.delta = float(delta)
        self.arl0 = float(arl0)
        self.p0 = p0
        self._statistic = 0.0
        self._n_alarms = 0
        self._n_monitored = 0
        self._n_unmonitored = 0
        self._designs: dict[float, tuple[float, int, int, int, float]] = {}
        self._last: tuple[float, float, float] = (math.nan, math.nan, math.nan)

    @property
    def statistic(self) -> float:
        """The current CUSUM statistic (log-likelihood ratio units)."""
        return self._statistic

    @property
    def n_alarms(self) -> int:
        """Alarms so far."""
        return self._n_alarms

    @property
    def n_monitored(self) -> int:
        """Values tested so far."""
        return self._n_monitored

    @property
    def n_unmonitored(self) -> int:
        """Values fed without an in-control rate (not tested)."""
        return self._n_unmonitored

    @property
    def last_rates(self) -> tuple[float, float, float]:
        """``(p0, p1, h)`` of the last monitored batch (NaNs before one)."""
        return self._last

    def _design(self, p0: float) -> tuple[float, int, int, int, float]:
        d = self._designs.get(p0)
        if d is None:
            if len(self._designs) >= self.MAX_DESIGNS:
                self._designs.pop(next(iter(self._designs)))
            d = self._designs[p0] = _design(p0, p0 - self.delta, self.arl0)
        return d

    def threshold(self, p0: float) -> float:
        """``h`` for in-control rate ``p0`` (designs are cached per ``p0``)."""
        g, _, _, n, _ = self._design(p0)
        return n * g

    def update(self, values: npt.ArrayLike, p0: float | None = None) -> CUSUMResult:
        """Feed 0/1 values in order, with in-control rate ``p0`` (default: the
        one given at construction); report where alarms were raised.

        A ``p0`` that is None, not finite or not in ``(delta, 1)`` leaves the
        batch untested (``monitored`` False, no alarm): no baseline, no verdict.

        Raises
        ------
        ValueError
            If the batch is not 1-D or holds a value other than 0 and 1.
        """
        arr = np.asarray(values)
        if arr.ndim != 1:
            raise ValueError(f"values must be 1-D, got shape {arr.shape}")
        x = arr.astype(np.float64, copy=False)
        if x.size and not np.all((x == 0.0) | (x == 1.0)):
            bad = x[(x != 0.0) & (x != 1.0)][:3]
            raise ValueError(f"values must be 0 or 1, got {bad!r}")
        rate = self.p0 if p0 is None else p0
        if rate is None or not (math.isfinite(rate) and self.delta < rate < 1.0):
            self._n_unmonitored += int(x.size)
            return CUSUMResult(np.empty(0, dtype=np.int64), self._statistic, self._n_alarms,
                               False, math.nan, math.nan, math.nan)
        rate = float(rate)
        g, u0, u1, n, _ = self._design(rate)
        inc = np.where(x == 1.0, u1, u0).astype(np.int64)
        s0, positions = _run(inc, n, round(self._statistic / g))
        self._statistic = s0 * g
        self._n_alarms += len(positions)
        self._n_monitored += int(x.size)
        self._last = (rate, rate - self.delta, n * g)
        return CUSUMResult(np.asarray(positions, dtype=np.int64), self._statistic,
                           self._n_alarms, True, rate, rate - self.delta, n * g)


def _run(inc: npt.NDArray[np.int64], n: int, s0: int) -> tuple[int, list[int]]:
    """Page's CUSUM over integer increments ``inc`` from ``s0``, alarming (and
    restarting at 0) when it reaches ``n``: the end value and alarm positions."""
    positions: list[int] = []
    start = 0
    while start < inc.size:
        c = np.cumsum(inc[start:])
        # Lindley: S_t = C_t - min(-S_0, min_{k<=t} C_k)
        s = c - np.minimum.accumulate(np.minimum(c, -s0))
        hit = np.flatnonzero(s >= n)
        if not hit.size:
            return int(s[-1]), positions
        first = int(hit[0])
        positions.append(start + first)
        s0 = 0  # restart after an alarm
        start += first + 1
    return s0, positions
