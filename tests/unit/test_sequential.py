"""The mixture SPRT: anytime validity under continuous monitoring, and power.

Simulated canaries, vectorised: per tick the champion gets Poisson(2) labelled
frauds and a 10 % canary Poisson(2/9); each fraud is caught with the version's
catch rate. The test looks after every tick (500 looks, about 110 canary frauds
over a canary's life), as the policy does.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from detectors import msprt_log_lr, msprt_proportions, running_p_value

ALPHA = 0.05
RUNS = 400
LOOKS = 500
CHAMPION_FRAUDS_PER_TICK = 2.0
CANARY_SHARE = 0.1
MIN_FRAUDS = 10            # the rule's min_labelled_frauds, on both sides
MIXING_SD = 0.05           # the policy's tau for a rule with threshold 0.05

Counts = tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64],
               npt.NDArray[np.int64]]


def simulate(canary_rate: float, champion_rate: float, seed: int,
             runs: int = RUNS, looks: int = LOOKS) -> Counts:
    """Cumulative (canary caught, canary frauds, champion caught, champion frauds)
    per run (rows) and look (columns)."""
    rng = np.random.default_rng(seed)
    canary_per_tick = CHAMPION_FRAUDS_PER_TICK * CANARY_SHARE / (1 - CANARY_SHARE)
    nb = rng.poisson(CHAMPION_FRAUDS_PER_TICK, (runs, looks))
    na = rng.poisson(canary_per_tick, (runs, looks))
    sb = rng.binomial(nb, champion_rate)
    sa = rng.binomial(na, canary_rate)
    return (np.cumsum(sa, axis=1), np.cumsum(na, axis=1), np.cumsum(sb, axis=1),
            np.cumsum(nb, axis=1))


def fires_sequential(c: Counts, alpha: float = ALPHA) -> npt.NDArray[np.bool_]:
    """Per run and look: the always-valid p-value is below alpha (it is the running
    minimum, so the first such look decides)."""
    sa, na, sb, nb = c
    log_lr = msprt_log_lr(sa, na, sb, nb, MIXING_SD, "less")
    enough = (na >= MIN_FRAUDS) & (nb >= MIN_FRAUDS)
    # p_n = min_k exp(-log_lr_k) < alpha  <=>  max_k log_lr_k > log(1/alpha)
    return np.asarray(enough & (log_lr > math.log(1 / alpha)))


def fires_fixed(c: Counts, alpha: float = ALPHA) -> npt.NDArray[np.bool_]:
    """Per run and look: the pooled one-sided z-test (today's fixed test) at p < alpha."""
    sa, na, sb, nb = c
    a, b = np.maximum(na, 1), np.maximum(nb, 1)
    pooled = (sa + sb) / (a + b)
    se = np.sqrt(pooled * (1 - pooled) * (1 / a + 1 / b))
    z = np.where(se > 0, (sa / a - sb / b) / np.where(se > 0, se, 1.0), 0.0)
    enough = (na >= MIN_FRAUDS) & (nb >= MIN_FRAUDS)
    return np.asarray(enough & (stats.norm.cdf(z) < alpha))


def test_healthy_canaries_false_rollback_rate_is_at_most_alpha_at_every_look() -> None:
    # canary as good as the champion (both 0.70): any rollback is a false one
    c = simulate(0.70, 0.70, seed=20261202)
    seq_rate = float(fires_sequential(c).any(axis=1).mean())
    fixed_rate = float(fires_fixed(c).any(axis=1).mean())
    se = math.sqrt(ALPHA * (1 - ALPHA) / RUNS)
    assert seq_rate <= ALPHA + 3 * se, (seq_rate, fixed_rate)
    # the same runs under today's fixed test at every look: well above alpha
    assert fixed_rate > ALPHA + 3 * se, (seq_rate, fixed_rate)


def test_a_better_canary_is_never_rolled_back_more_often() -> None:
    # composite null: the canary better than the champion (0.75 vs 0.70)
    c = simulate(0.75, 0.70, seed=7)
    rate = float(fires_sequential(c).any(axis=1).mean())
    assert rate <= ALPHA + 3 * math.sqrt(ALPHA * (1 - ALPHA) / RUNS)


def test_a_real_drop_is_detected_in_most_runs_within_150_canary_frauds() -> None:
    # catch rate 0.70 -> 0.50: stated power: >= 80 % of runs decide before the
    # canary has 150 labelled frauds
    c = simulate(0.50, 0.70, seed=11, looks=700)
    fired = fires_sequential(c)
    detected = fired.any(axis=1)
    first = np.argmax(fired, axis=1)
    frauds_at_decision = c[1][np.arange(RUNS), first]
    within = detected & (frauds_at_decision <= 150)
    assert float(within.mean()) >= 0.80, float(within.mean())
    # and it takes evidence: no run decides on its first handful of frauds
    assert int(frauds_at_decision[detected].min()) >= MIN_FRAUDS


@settings(max_examples=200, deadline=None)
@given(sa=st.integers(0, 500), extra_a=st.integers(0, 500), sb=st.integers(0, 500),
       extra_b=st.integers(0, 500), tau=st.floats(0.005, 0.5))
def test_one_sided_mixture_properties(sa: int, extra_a: int, sb: int, extra_b: int,
                                      tau: float) -> None:
    na, nb = sa + extra_a, sb + extra_b
    less = float(msprt_log_lr(sa, na, sb, nb, tau, "less"))
    two = float(msprt_log_lr(sa, na, sb, nb, tau, "two-sided"))
    assert math.isfinite(less)
    assert math.isfinite(two)
    # the half-normal density is twice the normal one on its half
    assert less <= two + math.log(2) + 1e-9
    r = msprt_proportions(sa, na, sb, nb, tau)
    assert 0.0 < r.p_value <= 1.0
    if na and nb and sa / na >= sb / nb:
        # no drop observed: Mills' ratio bounds Lambda by 1, the p-value is 1
        assert less <= 1e-9
        assert r.p_value == 1.0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.0, 1.0) | st.just(math.nan), min_size=1, max_size=30))
def test_running_p_value_is_the_monotone_minimum(looks: list[float]) -> None:
    p: float | None = None
    seen: list[float] = []
    for x in looks:
        new = running_p_value(p, x)
        assert p is None or new <= p
        p = new
        if not math.isnan(x):
            seen.append(x)
    assert p == (min(seen) if seen else 1.0)


def test_vectorised_matches_scalar_and_bad_input_names_the_problem() -> None:
    lr = msprt_log_lr([200, 100], [400, 300], [280, 150], [400, 300], 0.05)
    assert lr[0] == pytest.approx(msprt_proportions(200, 400, 280, 400, 0.05).log_lr)
    assert lr[1] == pytest.approx(msprt_proportions(100, 300, 150, 300, 0.05).log_lr)
    with pytest.raises(ValueError, match="mixing_sd must be finite and > 0"):
        msprt_log_lr(1, 2, 1, 2, 0.0)
    with pytest.raises(ValueError, match="alternative must be less or two-sided"):
        msprt_log_lr(1, 2, 1, 2, 0.1, "greater")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="b: need 0 <= successes <= trials"):
        msprt_log_lr(1, 2, 3, 2)
