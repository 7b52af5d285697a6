"""Anytime-valid comparison of two proportions: the mixture SPRT.

A canary is compared with its champion at every tick on a growing sample.
Re-running a fixed-sample test at every look and stopping at the first
``p < alpha`` rejects a true null far more often than ``alpha`` (the repeated
looks inflate the error). The mixture sequential probability ratio test
(mSPRT; Robbins 1970; Johari, Pekelis & Walsh, "Always valid inference:
continuous monitoring of A/B tests", Operations Research 70(3), 2022, as used
by Optimizely's stats engine) gives a p-value that is valid at *every* look:
``P(exists n: p_n <= alpha) <= alpha`` under the null, whenever one looks.

Model
-----
Let ``p_a`` (canary) and ``p_b`` (champion) be the proportions and
``theta = p_a - p_b``. After ``n_a`` and ``n_b`` trials the estimate
``theta_hat = s_a / n_a - s_b / n_b`` has variance ``V = sigma2 (1/n_a + 1/n_b)``
with ``sigma2 = p (1 - p)`` under the null ``p_a = p_b = p``; it is estimated
by the pooled proportion with one pseudo-success and one pseudo-failure,
``p_bar = (s_a + s_b + 1) / (n_a + n_b + 2)``, so that ``V > 0`` always. In
information time ``I = 1 / V`` the score ``S = theta_hat * I`` is
(asymptotically, by the CLT) a Brownian motion with drift ``theta``, and
``exp(theta S - theta^2 I / 2)`` is the likelihood ratio of drift ``theta``
against drift 0.

Mixing it over a normal distribution ``N(0, tau^2)`` on ``theta`` gives a
nonnegative martingale under the null with mean 1 (two-sided):

    Lambda = sqrt(V / (V + tau^2)) * exp(tau^2 theta_hat^2 / (2 V (V + tau^2)))

A one-sided alternative (the canary is *worse*, ``theta < 0``) mixes over the
half-normal ``2 N(0, tau^2)`` restricted to ``theta < 0``; with ``a = I + 1/tau^2``:

    Lambda = 2 / sqrt(1 + tau^2 I) * exp(S^2 / (2 a)) * Phi(-S / sqrt(a))

Each likelihood ratio with ``theta < 0`` is a supermartingale when the true
``theta >= 0``, so the one-sided test is valid for the whole composite null
"the canary is at least as good as the champion". By Ville's inequality
``P(sup_n Lambda_n >= 1/alpha) <= alpha``, hence the always-valid p-value

    p_n = min(1, min_{k <= n} 1 / Lambda_k)

is monotone non-increasing and ``P(exists n: p_n <= alpha) <= alpha``. The
caller keeps the running minimum (:func:`running_p_value`) over the looks of
one test, i.e. one canary's life, and starts a new one when the canary changes.

Mixing variance
---------------
For a true effect ``theta`` and large ``n`` the mixture grows fastest when
``tau^2 ~ theta^2`` (``d log Lambda / d tau^2 = 0`` at
``tau^2 = theta_hat^2 - V``; Johari et al., section 4: pick ``tau`` near the
effects one expects). A rule that rolls back on a drop larger than its
``threshold`` names the effect it cares about, so ``tau = |threshold|`` is the
default used by the policy; :data:`DEFAULT_MIXING_SD` (5 proportion points)
applies when the threshold is 0. The choice only moves power, never validity.

The approximation is asymptotic (plug-in variance, Gaussian increments);
``tests/unit/test_sequential.py`` checks the realised false-rollback rate by
simulation at hundreds of looks per run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import special

__all__ = [
    "DEFAULT_MIXING_SD",
    "SequentialComparison",
    "msprt_log_lr",
    "msprt_proportions",
    "running_p_value",
]

#: the mixing standard deviation (proportion points) when no effect size is named
DEFAULT_MIXING_SD = 0.05

SeqAlternative = Literal["less", "two-sided"]


@dataclass(frozen=True)
class SequentialComparison:
    """One look of the mSPRT comparing proportion A (canary) with B (champion).

    ``p_value`` is this look's ``min(1, 1 / Lambda)``; the always-valid p-value
    of a test is the running minimum of these over its looks.
    """

    difference: float
    log_lr: float
    p_value: float
    variance: float
    mixing_sd: float
    alternative: str
    n_a: float
    n_b: float


def _check(successes: npt.NDArray[np.float64], trials: npt.NDArray[np.float64],
           name: str) -> None:
    if not (np.all(np.isfinite(successes)) and np.all(np.isfinite(trials))):
        raise ValueError(f"{name}: successes and trials must be finite")
    if np.any(trials < 0) or np.any(successes < 0) or np.any(successes > trials * (1 + 1e-12)):
        raise ValueError(f"{name}: need 0 <= successes <= trials")


def msprt_log_lr(successes_a: npt.ArrayLike, trials_a: npt.ArrayLike,
                 successes_b: npt.ArrayLike, trials_b: npt.ArrayLike,
                 mixing_sd: float = DEFAULT_MIXING_SD,
                 alternative: SeqAlternative = "less") -> npt.NDArray[np.float64]:
    """``log Lambda`` of the normal-mixture SPRT for ``p_a - p_b`` (vectorised).

    Counts may be fractional (effective sample sizes). Where either side has
    no trials the result is 0 (``Lambda = 1``: no evidence).

    Examples
    --------
    >>> float(msprt_log_lr(0, 0, 5, 10))
    0.0
    >>> # a canary at 0.50 against a champion at 0.70 on 400 frauds each
    >>> bool(msprt_log_lr(200, 400, 280, 400, mixing_sd=0.05) > np.log(100))
    True
    >>> # the same counts the other way round are no evidence of a drop
    >>> bool(msprt_log_lr(280, 400, 200, 400, mixing_sd=0.05) < 0)
    True
    >>> lr = msprt_log_lr([200, 280], [400, 400], [280, 200], [400, 400], 0.05, "two-sided")
    >>> bool(np.isclose(lr[0], lr[1]))
    True
    """
    if not (np.isfinite(mixing_sd) and mixing_sd > 0):
        raise ValueError(f"mixing_sd must be finite and > 0, got {mixing_sd!r}")
    if alternative not in ("less", "two-sided"):
        raise ValueError(f"alternative must be less or two-sided, got {alternative!r}")
    sa = np.asarray(successes_a, dtype=np.float64)
    na = np.asarray(trials_a, dtype=np.float64)
    sb = np.asarray(successes_b, dtype=np.float64)
    nb = np.asarray(trials_b, dtype=np.float64)
    _check(sa, na, "a")
    _check(sb, nb, "b")
    ok = (na > 0) & (nb > 0)
    safe_na = np.where(ok, na, 1.0)
    safe_nb = np.where(ok, nb, 1.0)
    diff = sa / safe_na - sb / safe_nb
    pooled = (sa + sb + 1.0) / (na + nb + 2.0)
    var = pooled * (1.0 - pooled) * (1.0 / safe_na + 1.0 / safe_nb)
    tau2 = float(mixing_sd) ** 2
    # two-sided: 0.5 log(V / (V + tau2)) + tau2 diff^2 / (2 V (V + tau2))
    log_two = 0.5 * np.log(var / (var + tau2)) + tau2 * diff * diff / (2.0 * var * (var + tau2))
    if alternative == "two-sided":
        out = log_two
    else:
        info = 1.0 / var
        score = diff * info
        a = info + 1.0 / tau2
        out = (np.log(2.0) - 0.5 * np.log1p(tau2 * info) + score * score / (2.0 * a)
               + special.log_ndtr(-score / np.sqrt(a)))
    return np.asarray(np.where(ok, out, 0.0), dtype=np.float64)


def msprt_proportions(successes_a: float, trials_a: float, successes_b: float,
                      trials_b: float, mixing_sd: float = DEFAULT_MIXING_SD,
                      alternative: SeqAlternative = "less") -> SequentialComparison:
    """One look of the mSPRT of ``p_a`` (canary) against ``p_b`` (champion).

    ``alternative="less"``: evidence that A's proportion is *lower* than B's
    (e.g. the canary's catch rate below the champion's).

    Examples
    --------
    >>> r = msprt_proportions(200, 400, 280, 400, mixing_sd=0.05)
    >>> round(r.difference, 2), r.p_value < 0.01
    (-0.2, True)
    >>> msprt_proportions(140, 200, 140, 200).p_value
    1.0
    >>> msprt_proportions(3, 2, 1, 2)
    Traceback (most recent call last):
    ...
    ValueError: a: need 0 <= successes <= trials
    """
    log_lr = float(msprt_log_lr(successes_a, trials_a, successes_b, trials_b, mixing_sd,
                                alternative))
    ok = trials_a > 0 and trials_b > 0
    diff = successes_a / trials_a - successes_b / trials_b if ok else float("nan")
    pooled = (successes_a + successes_b + 1.0) / (trials_a + trials_b + 2.0)
    var = (pooled * (1 - pooled) * (1 / trials_a + 1 / trials_b) if ok else float("inf"))
    p_value = float(np.exp(-max(log_lr, 0.0)))
    return SequentialComparison(float(diff), log_lr, p_value, float(var), float(mixing_sd),
                                alternative, float(trials_a), float(trials_b))


def running_p_value(previous: float | None, current: float) -> float:
    """The always-valid p-value after one more look: ``min(previous, current)``.

    ``previous`` is None at the first look of a test. A NaN look changes nothing.

    >>> running_p_value(None, 0.4), running_p_value(0.2, 0.4), running_p_value(0.2, 0.05)
    (0.4, 0.2, 0.05)
    >>> running_p_value(0.3, float("nan"))
    0.3
    """
    start = 1.0 if previous is None else float(previous)
    if not np.isfinite(current):
        return start
    return float(min(start, max(float(current), 0.0), 1.0))
