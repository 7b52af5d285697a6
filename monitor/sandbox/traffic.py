"""Synthetic card-payment traffic with fraud, a champion and a canary.

Transactions have realistic features: ``amount`` (lognormal, in currency
units), ``merchant_category`` (MCC group), ``hour`` (local hour), ``device_age_days``,
``distance_from_home_km`` and ``txn_velocity_1h`` (card transactions in the last
hour). About 1 % are fraud; fraud skews to larger amounts, night hours, new
devices, far from home and high velocity.

Both model versions score with the same fixed logistic model. Canary ``v2``
gets ``canary_share`` of traffic; from ``bug_at`` on (event time), its
upstream feature pipeline serves ``txn_velocity_1h = 0`` (a stale feature
cache after a schema change): the strongest fraud signal disappears, so its
velocity feature and score distributions drift and its catch rate drops,
which is what the monitor must catch.

Labels (chargebacks / analyst verdicts) follow each prediction after a delay.

>>> gen = TrafficGenerator(seed=1)
>>> batch = gen.generate(1000, start_ts=1_700_000_000.0, rate_per_s=1000.0)
>>> len(batch.predictions), 0 < sum(e["label"] for e in batch.labels) < 40
(1000, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors import ReferenceProfile

__all__ = ["CATEGORIES", "NUMERIC_FEATURES", "TrafficBatch", "TrafficGenerator",
           "healthy_reference", "score"]

NUMERIC_FEATURES = ("amount", "hour", "device_age_days", "distance_from_home_km",
                    "txn_velocity_1h")
CATEGORIES = ("grocery", "fuel", "restaurants", "online_retail", "travel", "electronics",
              "gambling", "cash_advance")
_CAT_P_LEGIT = np.array([0.30, 0.15, 0.18, 0.20, 0.06, 0.06, 0.03, 0.02])
_CAT_P_FRAUD = np.array([0.05, 0.05, 0.05, 0.30, 0.12, 0.23, 0.10, 0.10])
_CAT_RISK = np.array([-0.8, -0.6, -0.7, 0.4, 0.3, 0.8, 0.9, 1.0])


def score(amount: npt.NDArray[np.float64], hour: npt.NDArray[np.float64],
          device_age: npt.NDArray[np.float64], distance: npt.NDArray[np.float64],
          velocity: npt.NDArray[np.float64],
          category: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The fixed logistic fraud model both versions run (vectorized)."""
    night = ((hour >= 0) & (hour < 6)).astype(np.float64)
    logit = (-7.0 + 0.55 * np.log1p(amount) + 1.4 * night
             + 1.3 * np.exp(-device_age / 10.0) + 0.45 * np.log1p(distance)
             + 0.25 * velocity + _CAT_RISK[category])
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-logit))
    return out


@dataclass
class TrafficBatch:
    """Prediction and label events (JSON-able dicts), label ``ts`` is its arrival."""

    predictions: list[dict[str, Any]] = field(default_factory=list)
    labels: list[dict[str, Any]] = field(default_factory=list)


class TrafficGenerator:
    """Generates prediction events and delayed labels.

    Parameters
    ----------
    seed : int
        Seed of the random generator (runs are reproducible).
    model : str
        Model name in the events.
    champion, canary : str
        Version names.
    canary_share : float
        Fraction of traffic routed to the canary.
    fraud_rate : float
        Fraction of fraudulent transactions.
    bug_at : float or None
        Event time from which the canary's feature pipeline is broken.
    label_delay_s : tuple of float
        Range of the label delay in seconds (uniform).
    threshold : float
        Score at or above which a transaction is declined (an alert).
    """

    def __init__(self, seed: int = 7, model: str = "card-fraud", champion: str = "v1",
                 canary: str = "v2", canary_share: float = 0.10, fraud_rate: float = 0.01,
                 bug_at: float | None = None, label_delay_s: tuple[float, float] = (1.0, 4.0),
                 threshold: float = 0.5) -> None:
        if not 0.0 <= canary_share <= 1.0:
            raise ValueError(f"canary_share must be in [0, 1], got {canary_share!r}")
        if not 0.0 < fraud_rate < 1.0:
            raise ValueError(f"fraud_rate must be in (0, 1), got {fraud_rate!r}")
        if label_delay_s[0] < 0 or label_delay_s[1] < label_delay_s[0]:
            raise ValueError(f"label_delay_s must be an increasing non-negative range, got "
                             f"{label_delay_s!r}")
        self.rng = np.random.default_rng(seed)
        self.model = model
        self.champion = champion
        self.canary = canary
        self.canary_share = canary_share
        self.fraud_rate = fraud_rate
        self.bug_at = bug_at
        self.label_delay_s = label_delay_s
        self.threshold = threshold
        self._seq = 0
        self._seed = seed

    def features(self, n: int) -> tuple[npt.NDArray[np.bool_], dict[str, npt.NDArray[Any]]]:
        """Draw ``n`` transactions: fraud flags and feature columns."""
        rng = self.rng
        fraud = rng.random(n) < self.fraud_rate
        # legitimate customers sometimes look risky too: big purchases, a new
        # phone, travel, bursts of purchases
        big = rng.random(n) < 0.10
        new_device = rng.random(n) < 0.05
        travelling = rng.random(n) < 0.06
        burst = rng.random(n) < 0.04
        amount = np.where(fraud | big, rng.lognormal(5.0, 1.0, n), rng.lognormal(3.4, 0.9, n))
        hour = np.where(fraud & (rng.random(n) < 0.5), rng.integers(0, 6, n),
                        np.clip(np.round(rng.normal(14, 4.5, n)), 0, 23)).astype(np.float64)
        device_age = np.where(fraud | new_device, rng.exponential(6.0, n),
                              rng.exponential(300.0, n))
        distance = np.where(fraud | travelling, rng.lognormal(4.0, 1.2, n),
                            rng.lognormal(1.8, 1.0, n))
        velocity = np.where(fraud | burst, rng.poisson(5.0, n),
                            rng.poisson(0.8, n)).astype(np.float64)
        cat = np.where(fraud, rng.choice(len(CATEGORIES), n, p=_CAT_P_FRAUD),
                       rng.choice(len(CATEGORIES), n, p=_CAT_P_LEGIT)).astype(np.int64)
        return fraud, {"amount": np.round(amount, 2), "hour": hour,
                       "device_age_days": np.round(device_age, 1),
                       "distance_from_home_km": np.round(distance, 1),
                       "txn_velocity_1h": velocity, "merchant_category": cat}

    def generate(self, n: int, start_ts: float, rate_per_s: float,
                 canary_share: float | None = None) -> TrafficBatch:
        """``n`` predictions at ``rate_per_s`` from ``start_ts`` and their labels."""
        if n < 0 or rate_per_s <= 0:
            raise ValueError(f"need n >= 0 and rate_per_s > 0, got {n!r}, {rate_per_s!r}")
        share = self.canary_share if canary_share is None else canary_share
        rng = self.rng
        fraud, cols = self.features(n)
        ts = start_ts + np.arange(n) / rate_per_s
        is_canary = rng.random(n) < share
        broken = is_canary & (ts >= self.bug_at) if self.bug_at is not None else \
            np.zeros(n, dtype=bool)
        amount = cols["amount"]
        velocity = np.where(broken, 0.0, cols["txn_velocity_1h"])
        # the canary's model scores what its (broken) pipeline serves
        s = score(amount, cols["hour"],
                  cols["device_age_days"], cols["distance_from_home_km"], velocity,
                  cols["merchant_category"])
        delays = rng.uniform(*self.label_delay_s, n)
        batch = TrafficBatch()
        for i in range(n):
            self._seq += 1
            eid = f"{self._seed}-{self._seq}"
            version = self.canary if is_canary[i] else self.champion
            batch.predictions.append({
                "event_id": eid, "model": self.model, "model_version": version,
                "ts": round(float(ts[i]), 6), "score": round(float(s[i]), 6),
                "decision": bool(s[i] >= self.threshold), "amount": float(amount[i]),
                "features": {
                    "amount": float(amount[i]), "hour": float(cols["hour"][i]),
                    "device_age_days": float(cols["device_age_days"][i]),
                    "distance_from_home_km": float(cols["distance_from_home_km"][i]),
                    "txn_velocity_1h": float(velocity[i]),
                    "merchant_category": CATEGORIES[int(cols["merchant_category"][i])],
                },
            })
            batch.labels.append({"event_id": eid, "label": int(fraud[i]),
                                 "ts": round(float(ts[i] + delays[i]), 6)})
        return batch

    @staticmethod
    def catch_rate(batch: TrafficBatch, version: str) -> float:
        """Offline catch rate of ``version`` in a batch (for checks)."""
        lab = {e["event_id"]: e["label"] for e in batch.labels}
        frauds = [p for p in batch.predictions
                  if p["model_version"] == version and lab[p["event_id"]] == 1]
        if not frauds:
            return math.nan
        return sum(1 for p in frauds if p["decision"]) / len(frauds)


def healthy_reference(seed: int, n: int, start_ts: float,
                      metadata: dict[str, Any] | None = None) -> ReferenceProfile:
    """A reference profile (with its row sample) fitted on healthy champion traffic."""
    from monitor.engine.reservoir import attach_sample

    batch = TrafficGenerator(seed=seed, canary_share=0.0).generate(n, start_ts, 1000.0)
    preds = batch.predictions
    numeric = {f: np.array([p["features"][f] for p in preds]) for f in NUMERIC_FEATURES}
    cats: dict[str, list[object]] = {
        "merchant_category": [p["features"]["merchant_category"] for p in preds]}
    scores = np.array([p["score"] for p in preds])
    return attach_sample(ReferenceProfile.fit(numeric, cats, scores, metadata=metadata),
                         numeric, cats, scores)
