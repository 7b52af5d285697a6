"""Fraud KPIs from confusion counts, with Wilson intervals, and A/B tests.

Definitions (fraud is the positive class, an *alert* is a positive decision):

* catch rate (recall on fraud) = TP / (TP + FN)
* precision = TP / (TP + FP)
* alert rate = (TP + FP) / (TP + FP + FN + TN)
* amount-weighted catch rate = caught fraud amount / all fraud amount

Intervals are Wilson score intervals (default 95 %). The amount-weighted catch
rate is a weighted proportion; its interval is the Wilson interval at the Kish
effective sample size ``n_eff = (sum w)^2 / sum w^2`` of the fraud amounts
(``sum w^2`` is kept in :class:`ConfusionCounts` for that reason).

Champion-vs-canary comparisons use a pooled two-proportion z-test, or Fisher's
exact test (scipy) when an expected cell count is below 5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import stats

__all__ = [
    "ConfusionCounts",
    "FraudKPIs",
    "Proportion",
    "ProportionComparison",
    "compare_proportions",
    "fraud_kpis",
    "wilson_interval",
]

Alternative = Literal["two-sided", "less", "greater"]


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    return float(stats.norm.ppf(0.5 + confidence / 2.0))


def wilson_interval(
    successes: npt.ArrayLike, trials: npt.ArrayLike, confidence: float = 0.95
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Wilson score interval for ``successes / trials`` (vectorized).

    ``trials`` may be fractional (an effective sample size). Where ``trials``
    is 0 the interval is ``(0, 1)``: nothing is known.

    Examples
    --------
    >>> lo, hi = wilson_interval(8, 10)
    >>> round(float(lo), 4), round(float(hi), 4)
    (0.4902, 0.9433)
    >>> wilson_interval(11, 10)
    Traceback (most recent call last):
    ...
    ValueError: successes must be within [0, trials], got successes=11.0 trials=10.0
    """
    z = _z(confidence)
    k = np.asarray(successes, dtype=np.float64)
    n = np.asarray(trials, dtype=np.float64)
    if np.any(~np.isfinite(k)) or np.any(~np.isfinite(n)) or np.any(n < 0):
        raise ValueError(f"trials must be finite and >= 0, got trials={n!r} successes={k!r}")
    bad = (k < 0) | (k > n * (1 + 1e-12))
    if np.any(bad):
        kb, nb = np.broadcast_arrays(k, n)
        raise ValueError(
            f"successes must be within [0, trials], got successes={float(kb[bad].flat[0])!r} "
            f"trials={float(nb[bad].flat[0])!r}"
        )
    safe_n = np.where(n > 0, n, 1.0)
    p = np.clip(k / safe_n, 0.0, 1.0)
    z2 = z * z
    denom = 1.0 + z2 / safe_n
    centre = (p + z2 / (2 * safe_n)) / denom
    half = z * np.sqrt(p * (1 - p) / safe_n + z2 / (4 * safe_n * safe_n)) / denom
    lo = np.where(n > 0, np.clip(centre - half, 0.0, 1.0), 0.0)
    hi = np.where(n > 0, np.clip(centre + half, 0.0, 1.0), 1.0)
    return lo, hi


@dataclass(frozen=True)
class Proportion:
    """A proportion with its Wilson interval; ``value`` is NaN when undefined."""

    value: float
    lower: float
    upper: float
    successes: float
    trials: float

    @classmethod
    def of(cls, successes: float, trials: float, confidence: float = 0.95) -> Proportion:
        """Build from counts.

        >>> Proportion.of(0, 0).value
        nan
        """
        lo, hi = wilson_interval(successes, trials, confidence)
        value = successes / trials if trials > 0 else math.nan
        return cls(float(value), float(lo), float(hi), float(successes), float(trials))


@dataclass(frozen=True)
class ConfusionCounts:
    """Confusion counts of labelled predictions, plus fraud amounts.

    ``caught_amount``/``missed_amount`` sum the amounts of true positives and
    false negatives; the ``*_sq`` fields sum squared amounts (for the
    effective sample size of the amount-weighted catch rate).
    """

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    caught_amount: float = 0.0
    missed_amount: float = 0.0
    caught_amount_sq: float = 0.0
    missed_amount_sq: float = 0.0

    def __post_init__(self) -> None:
        for name in ("tp", "fp", "fn", "tn", "caught_amount", "missed_amount",
                     "caught_amount_sq", "missed_amount_sq"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")

    @classmethod
    def from_arrays(
        cls,
        labels: npt.ArrayLike,
        decisions: npt.ArrayLike,
        amounts: npt.ArrayLike | None = None,
    ) -> ConfusionCounts:
        """Count labelled predictions (vectorized).

        >>> ConfusionCounts.from_arrays([1, 1, 0, 0], [1, 0, 1, 0], [10.0, 5.0, 1.0, 1.0])
        ConfusionCounts(tp=1, fp=1, fn=1, tn=1, caught_amount=10.0, missed_amount=5.0, \
caught_amount_sq=100.0, missed_amount_sq=25.0)
        """
        y = np.asarray(labels).astype(bool)
        d = np.asarray(decisions).astype(bool)
        if y.shape != d.shape or y.ndim != 1:
            raise ValueError(f"labels and decisions must be 1-D of one length, got {y.shape} "
                             f"and {d.shape}")
        a = np.zeros(y.shape) if amounts is None else np.asarray(amounts, dtype=np.float64)
        if a.shape != y.shape:
            raise ValueError(f"amounts must have shape {y.shape}, got {a.shape}")
        if a.size and (not np.all(np.isfinite(a)) or a.min() < 0):
            raise ValueError("amounts must be finite and >= 0")
        tp_m, fn_m = y & d, y & ~d
        return cls(
            tp=int(tp_m.sum()), fp=int((~y & d).sum()), fn=int(fn_m.sum()),
            tn=int((~y & ~d).sum()),
            caught_amount=float(a[tp_m].sum()), missed_amount=float(a[fn_m].sum()),
            caught_amount_sq=float((a[tp_m] ** 2).sum()),
            missed_amount_sq=float((a[fn_m] ** 2).sum()),
        )

    def __add__(self, other: ConfusionCounts) -> ConfusionCounts:
        return ConfusionCounts(
            self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn,
            self.caught_amount + other.caught_amount, self.missed_amount + other.missed_amount,
            self.caught_amount_sq + other.caught_amount_sq,
            self.missed_amount_sq + other.missed_amount_sq,
        )

    @property
    def n(self) -> int:
        """Labelled predictions counted."""
        return self.tp + self.fp + self.fn + self.tn

    @property
    def frauds(self) -> int:
        """Labelled frauds (TP + FN)."""
        return self.tp + self.fn


@dataclass(frozen=True)
class FraudKPIs:
    """The four KPIs, each a :class:`Proportion`."""

    catch_rate: Proportion
    precision: Proportion
    alert_rate: Proportion
    amount_weighted_catch_rate: Proportion


def fraud_kpis(counts: ConfusionCounts, confidence: float = 0.95) -> FraudKPIs:
    """Catch rate, precision, alert rate and amount-weighted catch rate.

    Examples
    --------
    >>> k = fraud_kpis(ConfusionCounts(tp=80, fp=20, fn=20, tn=880))
    >>> k.catch_rate.value, k.precision.value, k.alert_rate.value
    (0.8, 0.8, 0.1)
    >>> round(k.catch_rate.lower, 3), round(k.catch_rate.upper, 3)
    (0.711, 0.867)
    """
    total_amount = counts.caught_amount + counts.missed_amount
    total_sq = counts.caught_amount_sq + counts.missed_amount_sq
    if total_amount > 0 and total_sq > 0:
        n_eff = total_amount * total_amount / total_sq
        share = counts.caught_amount / total_amount
        lo, hi = wilson_interval(share * n_eff, n_eff, confidence)
        weighted = Proportion(share, float(lo), float(hi), counts.caught_amount, total_amount)
    else:
        weighted = Proportion(math.nan, 0.0, 1.0, counts.caught_amount, total_amount)
    return FraudKPIs(
        catch_rate=Proportion.of(counts.tp, counts.tp + counts.fn, confidence),
        precision=Proportion.of(counts.tp, counts.tp + counts.fp, confidence),
        alert_rate=Proportion.of(counts.tp + counts.fp, counts.n, confidence),
        amount_weighted_catch_rate=weighted,
    )


@dataclass(frozen=True)
class ProportionComparison:
    """Result of comparing proportion A (e.g. canary) with B (e.g. champion).

    ``difference`` is ``p_a - p_b``; ``method`` is ``"z-test"`` or ``"fisher"``.
    """

    difference: float
    p_value: float
    method: str
    alternative: str
    p_a: float
    p_b: float


def compare_proportions(
    successes_a: int,
    trials_a: int,
    successes_b: int,
    trials_b: int,
    alternative: Alternative = "two-sided",
    method: Literal["auto", "z-test", "fisher"] = "auto",
) -> ProportionComparison:
    """Compare two proportions: pooled two-proportion z-test or Fisher's exact test.

    ``alternative="less"`` tests whether A's proportion is *lower* than B's
    (e.g. canary catch rate below champion). With ``method="auto"`` Fisher's
    exact test is used when any expected cell count is below 5.

    Examples
    --------
    >>> r = compare_proportions(150, 250, 200, 250, alternative="less")
    >>> r.method, round(r.difference, 2), r.p_value < 1e-6
    ('z-test', -0.2, True)
    >>> compare_proportions(1, 4, 3, 4).method
    'fisher'
    >>> compare_proportions(5, 0, 1, 2)
    Traceback (most recent call last):
    ...
    ValueError: trials_a must be an integer >= 1, got 0
    """
    for name, value in (("trials_a", trials_a), ("trials_b", trials_b)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    for name, value, n in (("successes_a", successes_a, trials_a),
                           ("successes_b", successes_b, trials_b)):
        if (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                or not 0 <= value <= n):
            raise ValueError(f"{name} must be an integer in [0, {n}], got {value!r}")
    if alternative not in ("two-sided", "less", "greater"):
        raise ValueError(f"alternative must be two-sided, less or greater, got {alternative!r}")
    if method not in ("auto", "z-test", "fisher"):
        raise ValueError(f"method must be auto, z-test or fisher, got {method!r}")
    pa, pb = successes_a / trials_a, successes_b / trials_b
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    expected = min(pooled * trials_a, (1 - pooled) * trials_a,
                   pooled * trials_b, (1 - pooled) * trials_b)
    chosen = method if method != "auto" else ("fisher" if expected < 5 else "z-test")
    if chosen == "fisher":
        table = [[successes_a, trials_a - successes_a], [successes_b, trials_b - successes_b]]
        p_value = float(stats.fisher_exact(table, alternative=alternative).pvalue)
    else:
        se = math.sqrt(pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b))
        if se == 0.0:
            p_value = 1.0
        else:
            z = (pa - pb) / se
            if alternative == "two-sided":
                p_value = float(2 * stats.norm.sf(abs(z)))
            elif alternative == "less":
                p_value = float(stats.norm.cdf(z))
            else:
                p_value = float(stats.norm.sf(z))
    return ProportionComparison(pa - pb, min(p_value, 1.0), chosen, alternative, pa, pb)
