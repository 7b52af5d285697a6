"""Tests of detectors.cusum (Bernoulli CUSUM) and its engine wiring (recall stream).

The 1 % fraud-rate scenario is a direct simulation of the sandbox traffic
(monitor.sandbox.traffic: 50 tx/s, 10 % canary, 1 % fraud; labels 60-600 s
late; legitimate transactions declined at 0.5 %): the champion catches 70 % of
frauds throughout, the canary 70 % and then 50 % from CHANGE. The recall CUSUM
runs with the default settings (delta 0.1, ARL0 100,000 labelled frauds, p0 =
the champion's running catch rate once it has 500 labelled frauds), fed one
batch of joined labels per minute, as the engine does (recall_baseline).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detectors import BatchADWIN, BernoulliCUSUM, bernoulli_threshold
from detectors.cusum import _lattice_arl, _run, bernoulli_arl, siegmund_threshold
from monitor.config import load_settings
from monitor.config.sections import EvaluationSettings
from monitor.config.settings import ConfigError
from monitor.core.metrics import EngineCollector
from monitor.engine.counting import BASELINE_GRID
from tests.support import fit_reference, write_config
from tests.unit.engine_support import START, Feeder, label, pred

# ---------------------------------------------------------------- the chart


def scalar_cusum(x: list[int], det: BernoulliCUSUM, p0: float) -> list[int]:
    """Page's recursion one value at a time, on the detector's lattice."""
    _g, u0, u1, n, _ = det._design(p0)
    s, out = 0, []
    for i, v in enumerate(x):
        s = max(0, s + (u1 if v else u0))
        if s >= n:
            out.append(i)
            s = 0
    return out


@settings(max_examples=60, deadline=None)
@given(x=st.lists(st.integers(0, 1), min_size=0, max_size=400),
       cuts=st.lists(st.integers(0, 400), max_size=6),
       p0=st.sampled_from([0.3, 0.55, 0.7, 0.9]))
def test_batched_update_equals_the_scalar_recursion(x: list[int], cuts: list[int],
                                                    p0: float) -> None:
    det = BernoulliCUSUM(delta=0.2, arl0=50, p0=p0)  # small h: alarms happen
    want = scalar_cusum(x, det, p0)
    got: list[int] = []
    offset = 0
    for chunk in np.split(np.asarray(x, dtype=np.int64), sorted(c for c in cuts if c <= len(x))):
        res = det.update(chunk)
        got.extend((res.alarm_positions + offset).tolist())
        offset += chunk.size
    assert got == want
    assert det.n_alarms == len(want)
    assert det.n_monitored == len(x)


def test_lindley_run_restarts_after_each_alarm() -> None:
    s, pos = _run(np.array([3, 3, -1, 3, 3, 3], dtype=np.int64), 5, 0)
    assert pos == [1, 4]
    assert s == 3
    s, pos = _run(np.array([-2, 1], dtype=np.int64), 5, 4)
    assert pos == []
    assert s == 3


@pytest.mark.parametrize(("p0", "delta"), [(0.7, 0.2), (0.9, 0.2), (0.7, 0.1)])
def test_in_control_run_length_matches_the_markov_chain(p0: float, delta: float) -> None:
    """Simulated mean run length (about 2,000 alarms) within 10 % of the exact
    chain ARL the threshold was set from (ARL0 = 1,000 for speed)."""
    det = BernoulliCUSUM(delta=delta, arl0=1000, p0=p0)
    _, _, _, _, arl = det._design(p0)
    assert 1000 <= arl < 1100
    rng = np.random.default_rng(3)
    n = 2_000_000
    for _ in range(10):
        det.update(rng.random(n // 10) < p0)
    assert det.n_alarms > 1000
    assert n / det.n_alarms == pytest.approx(arl, rel=0.10)


def test_siegmund_overstates_the_bernoulli_arl() -> None:
    """Why h is set on the Markov chain: at Siegmund's h the exact ARL is far
    below the target (the discrete overshoot)."""
    h = siegmund_threshold(0.7, 0.5, 10_000)
    assert bernoulli_arl(0.7, 0.5, h) == pytest.approx(10_000, rel=1e-6)
    exact_h, arl = bernoulli_threshold(0.7, 0.5, 10_000)
    assert exact_h > h
    assert 10_000 <= arl < 10_300
    det = BernoulliCUSUM(delta=0.2, arl0=10_000)
    g, u0, u1, _, _ = det._design(0.7)
    assert _lattice_arl(u0, u1, math.ceil(h / g), 0.7) < 0.75 * 10_000


def test_no_baseline_means_no_verdict() -> None:
    det = BernoulliCUSUM(delta=0.1, arl0=1000)
    for p0 in (None, math.nan, 0.05, 1.0):  # none, or no drop of delta possible
        res = det.update(np.zeros(5000), p0)
        assert not res.monitored
        assert res.alarm_positions.size == 0
        assert math.isnan(res.h)
        assert math.isnan(res.p0)
    assert det.n_unmonitored == 20_000
    assert det.n_alarms == 0
    assert det.n_monitored == 0
    res = det.update(np.zeros(200), 0.7)  # every fraud missed: an alarm quickly
    assert res.monitored
    assert res.n_alarms >= 1
    assert res.p1 == pytest.approx(0.6)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"delta": 0.0, "arl0": 100}, "delta"), ({"delta": 1.0, "arl0": 100}, "delta"),
    ({"delta": 0.1, "arl0": 1.0}, "arl0"), ({"delta": 0.1, "arl0": math.inf}, "arl0"),
    ({"delta": 0.2, "arl0": 100, "p0": 0.2}, "p0"),
])
def test_bad_parameters_are_refused(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BernoulliCUSUM(**kwargs)


@pytest.mark.parametrize("values", [[0, 2, 1], [0.5], [[0, 1]], [math.nan]])
def test_values_must_be_zero_or_one(values: Any) -> None:
    with pytest.raises(ValueError, match="values"):
        BernoulliCUSUM(delta=0.1, arl0=100, p0=0.7).update(values)


# ------------------------------------------------- the 1 % fraud-rate streams
CANARY_TPS, CHAMPION_TPS, FRAUD, DECLINE_LEGIT = 5.0, 45.0, 0.01, 0.005
CHANGE, HORIZON, MAX_DELAY = 2 * 3600.0, 4 * 3600.0, 2 * 3600.0
BATCH = 60.0


def joined(rng: np.random.Generator, tps: float, seconds: float, catch: Any,
           frauds_only: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One version's joined rows in label-arrival order: arrival time, label,
    decision. ``catch(t)`` is the catch rate at event time ``t``."""
    rate = tps * (FRAUD if frauds_only else 1.0)
    t = rng.uniform(0.0, seconds, rng.poisson(rate * seconds))
    y = np.ones(t.size, dtype=bool) if frauds_only else rng.random(t.size) < FRAUD
    d = np.where(y, rng.random(t.size) < catch(t), rng.random(t.size) < DECLINE_LEGIT)
    arrival = t + rng.uniform(60.0, 600.0, t.size)
    order = np.argsort(arrival)
    return arrival[order], y[order], d[order]


def run_recall_cusum(rng: np.random.Generator, seconds: float, canary_catch: Any,
                     frauds_only: bool = True) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Alarm times of the default recall CUSUM on the canary, and the canary's
    joined rows (arrival order) for other detectors."""
    ev = EvaluationSettings()  # the defaults
    ct, _, cd = joined(rng, CHAMPION_TPS, seconds, lambda t: np.full(t.size, 0.7), True)
    kt, ky, kd = joined(rng, CANARY_TPS, seconds, canary_catch, frauds_only)
    det = BernoulliCUSUM(delta=ev.recall_cusum_delta, arl0=ev.recall_cusum_arl0)
    champ_tp = np.cumsum(cd)
    alarms: list[float] = []
    edges = np.arange(0.0, seconds + 600.0 + BATCH, BATCH)
    k_cut = np.searchsorted(kt, edges)
    c_cut = np.searchsorted(ct, edges)
    for i in range(edges.size - 1):
        n_champ = int(c_cut[i + 1])  # the champion's frauds joined by the batch's end
        p0 = None
        if n_champ >= ev.recall_cusum_min_frauds:
            tp = int(champ_tp[n_champ - 1])
            p0 = round((tp + 0.5) / (n_champ + 1) / BASELINE_GRID) * BASELINE_GRID
        lo, hi = int(k_cut[i]), int(k_cut[i + 1])
        res = det.update(kd[lo:hi][ky[lo:hi]], p0)
        fraud_arrivals = kt[lo:hi][ky[lo:hi]]
        alarms.extend(float(fraud_arrivals[j]) for j in res.alarm_positions.tolist())
    return alarms, kt, (ky != kd).astype(np.float64)


def degraded(t: np.ndarray) -> np.ndarray:
    return np.where(t < CHANGE, 0.7, 0.5)


def test_recall_cusum_catches_a_catch_rate_drop_at_a_1_percent_fraud_rate() -> None:
    """10 seeds, the canary's catch rate 0.70 -> 0.50 at +2 h: the recall CUSUM
    alarms within 2 h of the change (labels included) in at least 8; ADWIN on
    the canary's joined error indicator, same streams, catches fewer."""
    n_runs = 10
    cusum_hits, adwin_hits, early, delays = 0, 0, 0, []
    for seed in range(n_runs):
        rng = np.random.default_rng(1000 + seed)
        alarms, arrival, error = run_recall_cusum(rng, HORIZON, degraded, frauds_only=False)
        early += sum(a < CHANGE for a in alarms)
        after = [a for a in alarms if a >= CHANGE]
        if after and after[0] - CHANGE <= MAX_DELAY:
            cusum_hits += 1
            delays.append(after[0] - CHANGE)
        adwin = BatchADWIN()
        pos = adwin.update(error).change_positions
        times = arrival[pos]
        if np.any((times >= CHANGE) & (times <= CHANGE + MAX_DELAY)):
            adwin_hits += 1
    print({"runs": n_runs, "cusum_caught": cusum_hits, "adwin_caught": adwin_hits,
           "cusum_false_alarms_before_change": early,
           "cusum_delay_s_median": float(np.median(delays)) if delays else None,
           "cusum_delay_s_max": max(delays) if delays else None})
    assert cusum_hits >= 8
    assert adwin_hits < cusum_hits
    assert early <= 1


def test_recall_cusum_false_alarms_on_healthy_canaries_stay_within_arl0() -> None:
    """10 seeds x 24 h of a healthy canary (about 43,000 labelled canary frauds
    in all; ARL0 = 100,000 frauds: 0.43 false alarms expected if p0 were
    known, a little more with the champion's estimate): at most 3 (P(Poisson(0.43)
    > 3) = 0.1 %)."""
    n_runs, frauds, false_alarms = 10, 0, 0
    for seed in range(n_runs):
        rng = np.random.default_rng(2000 + seed)
        alarms, arrival, _ = run_recall_cusum(rng, 24 * 3600.0,
                                              lambda t: np.full(t.size, 0.7))
        frauds += arrival.size
        false_alarms += len(alarms)
    print({"runs": n_runs, "canary_frauds": frauds, "false_alarms": false_alarms,
           "arl0": 100_000})
    assert frauds > 35_000
    assert false_alarms <= 3


# ------------------------------------------------------------ engine wiring
def test_engine_feeds_the_recall_stream_and_exports_it(tmp_path: Path) -> None:
    ref = fit_reference()
    cfg = write_config(tmp_path / "c.yaml", reference={"fit_from_champion_events": 10},
                       evaluation={"recall_cusum_delta": 0.2, "recall_cusum_arl0": 200,
                                   "recall_cusum_min_frauds": 20})
    f = Feeder(load_settings(cfg), ref)
    # 40 champion frauds, 28 caught: the canary's p0 is (28.5 / 41) -> 0.695
    preds = [pred(f"c{i}", START + i, "v1", decision=int(i < 28)) for i in range(40)]
    f.feed(preds, [label(f"c{i}", 1) for i in range(40)])
    # the canary misses every fraud; legitimate rows are not in the recall stream
    preds = [pred(f"k{i}", START + 50 + i, "v2", decision=0) for i in range(60)]
    f.feed(preds, [label(f"k{i}", int(i % 2 == 0)) for i in range(60)])
    eng = f.engine
    champ, canary = eng.versions[("card-fraud", "v1")], eng.versions[("card-fraud", "v2")]
    assert champ.recall_cusum.n_unmonitored == 40  # no configured p0: champion untested
    assert canary.recall_cusum.n_monitored == 30
    assert canary.recall_cusum_detections >= 1
    ev = eng.snapshot().versions[("card-fraud", "v2")].recall_cusum
    assert ev["p0"] == pytest.approx(0.695)
    assert ev["detections"] >= 1
    assert math.isnan(eng.snapshot().versions[("card-fraud", "v1")].recall_cusum["p0"])
    counters = eng.counters()
    assert any(k.endswith("recall_cusum_detections") and v >= 1 for k, v in counters.items())
    samples = {(s.name, s.labels.get("version")): s.value
               for fam in EngineCollector(eng).collect() for s in fam.samples
               if s.name.startswith("driftgate_recall_cusum")}
    assert samples[("driftgate_recall_cusum_detections_total", "v2")] >= 1
    assert samples[("driftgate_recall_cusum_unmonitored_frauds_total", "v1")] == 40
    assert samples[("driftgate_recall_cusum_baseline", "v2")] == pytest.approx(0.695)
    assert ("driftgate_recall_cusum_baseline", "v1") not in samples


def test_configured_p0_must_exceed_delta(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", evaluation={"recall_cusum_p0": 0.05},
                       reference={"fit_from_champion_events": 10})
    with pytest.raises(ConfigError, match="recall_cusum_p0"):
        load_settings(cfg)
