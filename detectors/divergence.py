"""Divergences between binned distributions: PSI, KL and Jensen-Shannon.

All three take *count* arrays (not fractions) whose last axis is the bins, so a
1-D array is one distribution and a 2-D ``(features, bins)`` array gives one
value per feature (any number of leading axes works, e.g.
``(versions, features, bins)``). Counts become fractions by dividing by their
sum along the bins axis.

Empty bins
----------
A fraction of exactly 0 is replaced by ``eps`` (default ``1e-4``, the value
Evidently uses for its PSI) so that logarithms stay finite:

* :func:`psi` uses the smoothed fractions as they are (no renormalisation),
  exactly like Evidently's ``psi`` stattest, so the two agree to rounding.
* :func:`kl_divergence` and :func:`js_divergence` renormalise the smoothed
  fractions to sum to 1 before use, so ``kl_divergence`` equals
  ``scipy.stats.entropy(p, q)`` on the smoothed fractions and the JS divergence
  stays a divergence between true distributions, bounded by ``ln 2``.

Bins where both sides are empty contribute exactly 0 to every measure and are
left out of the renormalisation, so padding columns (used when features have
different numbers of bins, and the missing bucket when nothing is missing) are
harmless. All logarithms are natural (nats).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_EPS", "js_divergence", "kl_divergence", "psi"]

DEFAULT_EPS = 1e-4

FloatArray = npt.NDArray[np.float64]


def _fractions(
    reference_counts: npt.ArrayLike, current_counts: npt.ArrayLike, eps: float
) -> tuple[FloatArray, FloatArray, npt.NDArray[np.bool_]]:
    """Validate two count arrays and turn them into eps-smoothed fractions.

    Returns the smoothed fractions and a mask of bins where both sides are empty.
    """
    if not isinstance(eps, (int, float)) or isinstance(eps, bool) or not np.isfinite(eps):
        raise ValueError(f"eps must be a finite number in (0, 1), got {eps!r}")
    if not 0.0 < eps < 1.0:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    ref = np.asarray(reference_counts, dtype=np.float64)
    cur = np.asarray(current_counts, dtype=np.float64)
    if ref.ndim == 0 or cur.ndim == 0:
        raise ValueError(
            f"counts must have at least one axis (bins), got shapes {ref.shape} and {cur.shape}"
        )
    if ref.shape != cur.shape:
        raise ValueError(
            "reference and current counts must have the same shape, "
            f"got {ref.shape} and {cur.shape}"
        )
    if ref.shape[-1] == 0:
        raise ValueError(f"counts need at least one bin, got shape {ref.shape}")
    for name, arr in (("reference", ref), ("current", cur)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name} counts must be finite, got {arr[~np.isfinite(arr)][:3]!r}")
        if np.any(arr < 0):
            raise ValueError(f"{name} counts must be >= 0, got {arr[arr < 0][:3]!r}")
    ref_tot = ref.sum(axis=-1, keepdims=True)
    cur_tot = cur.sum(axis=-1, keepdims=True)
    if np.any(ref_tot == 0):
        raise ValueError(
            "reference counts are empty (sum 0) for distribution(s) at index "
            f"{np.argwhere(ref_tot[..., 0] == 0).tolist()}"
        )
    if np.any(cur_tot == 0):
        raise ValueError(
            "current counts are empty (sum 0) for distribution(s) at index "
            f"{np.argwhere(cur_tot[..., 0] == 0).tolist()}"
        )
    both_empty = (ref == 0) & (cur == 0)
    p = ref / ref_tot
    q = cur / cur_tot
    p[p == 0] = eps
    q[q == 0] = eps
    return p, q, both_empty


def _scalar_or_array(values: FloatArray) -> float | FloatArray:
    if values.ndim == 0:
        return float(values)
    return values


def psi(
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
    eps: float = DEFAULT_EPS,
) -> float | FloatArray:
    """Population Stability Index of ``current`` against ``reference``.

    ``PSI = sum((p - q) * ln(p / q))`` over bins, with ``p`` the reference and
    ``q`` the current fractions, empty fractions replaced by ``eps``. PSI is
    symmetric in its two arguments and 0 exactly when the fractions agree.

    Parameters
    ----------
    reference_counts, current_counts : array_like
        Non-negative counts of the same shape; the last axis is the bins.
    eps : float, default 1e-4
        Replacement for a fraction of 0; must be in (0, 1).

    Returns
    -------
    float or ndarray
        A float for 1-D input, else one value per leading index.

    Raises
    ------
    ValueError
        On negative or non-finite counts, mismatched shapes, an empty side, or a
        bad ``eps``; the message names the offending value.

    Examples
    --------
    >>> round(psi([50, 30, 20], [50, 30, 20]), 12)
    0.0
    >>> round(psi([50, 30, 20], [20, 30, 50]), 4)
    0.5498
    >>> psi([[1, 1], [1, 3]], [[1, 1], [3, 1]]).round(4).tolist()
    [0.0, 1.0986]
    >>> psi([1, 2], [1, -2])
    Traceback (most recent call last):
    ...
    ValueError: current counts must be >= 0, got array([-2.])
    """
    p, q, both_empty = _fractions(reference_counts, current_counts, eps)
    # ln p - ln q, not ln(p / q): exactly symmetric, and p / q cannot overflow
    terms = (p - q) * (np.log(p) - np.log(q))
    terms[both_empty] = 0.0
    return _scalar_or_array(terms.sum(axis=-1))


def kl_divergence(
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
    eps: float = DEFAULT_EPS,
) -> float | FloatArray:
    """Kullback-Leibler divergence ``KL(reference || current)`` in nats.

    ``KL = sum(p * ln(p / q))`` where ``p``/``q`` are the reference/current
    fractions with empty fractions replaced by ``eps`` and then renormalised;
    equal to ``scipy.stats.entropy(p, q)``. Not symmetric.

    Parameters
    ----------
    reference_counts, current_counts : array_like
        Non-negative counts of the same shape; the last axis is the bins.
    eps : float, default 1e-4
        Replacement for a fraction of 0; must be in (0, 1).

    Returns
    -------
    float or ndarray
        A float for 1-D input, else one value per leading index.

    Examples
    --------
    >>> round(kl_divergence([50, 50], [50, 50]), 12)
    0.0
    >>> round(kl_divergence([50, 50], [90, 10]), 4)
    0.5108
    >>> kl_divergence([1, 2], [1, 2], eps=0)
    Traceback (most recent call last):
    ...
    ValueError: eps must be in (0, 1), got 0
    """
    p, q, both_empty = _fractions(reference_counts, current_counts, eps)
    # renormalise over the bins not empty on both sides (padding must not dilute p, q)
    p /= np.where(both_empty, 0.0, p).sum(axis=-1, keepdims=True)
    q /= np.where(both_empty, 0.0, q).sum(axis=-1, keepdims=True)
    terms = p * (np.log(p) - np.log(q))
    terms[both_empty] = 0.0
    return _scalar_or_array(terms.sum(axis=-1))


def js_divergence(
    reference_counts: npt.ArrayLike,
    current_counts: npt.ArrayLike,
    eps: float = DEFAULT_EPS,
) -> float | FloatArray:
    """Jensen-Shannon divergence in nats (not the distance: no square root).

    ``JS = KL(p || m) / 2 + KL(q || m) / 2`` with ``m = (p + q) / 2``, on
    eps-smoothed, renormalised fractions. Symmetric and bounded by ``ln 2``.

    Parameters
    ----------
    reference_counts, current_counts : array_like
        Non-negative counts of the same shape; the last axis is the bins.
    eps : float, default 1e-4
        Replacement for a fraction of 0; must be in (0, 1).

    Returns
    -------
    float or ndarray
        A float for 1-D input, else one value per leading index.

    Examples
    --------
    >>> round(js_divergence([10, 10], [10, 10]), 12)
    0.0
    >>> bool(js_divergence([1, 0], [0, 1]) < np.log(2))
    True
    >>> js_divergence([1, 2, 3], [1, 2])
    Traceback (most recent call last):
    ...
    ValueError: reference and current counts must have the same shape, got (3,) and (2,)
    """
    p, q, both_empty = _fractions(reference_counts, current_counts, eps)
    # renormalise over the bins not empty on both sides (padding must not dilute p, q)
    p /= np.where(both_empty, 0.0, p).sum(axis=-1, keepdims=True)
    q /= np.where(both_empty, 0.0, q).sum(axis=-1, keepdims=True)
    m = 0.5 * (p + q)
    log_m = np.log(m)
    terms = 0.5 * (p * (np.log(p) - log_m) + q * (np.log(q) - log_m))
    terms[both_empty] = 0.0
    return _scalar_or_array(terms.sum(axis=-1))
