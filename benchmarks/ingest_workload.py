"""The workload of bench_ingest: generated card-fraud prediction events.

``n`` prediction events of about 600 bytes of JSON each (20 numeric features
``f00`` .. ``f19`` with mixed marginals, a fixed logistic score, model
``card-fraud`` v1/v2 90/10), labels for a fraction of them, their partitions,
and a reference profile fitted on separately generated events.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from detectors import ReferenceProfile

__all__ = ["Workload", "feature_names", "fit_reference", "make_workload"]

FloatArray = npt.NDArray[np.float64]

SEED = 20240607
REFERENCE_SEED = SEED + 1
MODEL = "card-fraud"
CHAMPION, CANARY = "v1", "v2"
CANARY_SHARE = 0.10
N_FEATURES = 20
PARTITIONS = 4
LABEL_SHARE = 0.20
TARGET_EVENT_BYTES = 600
START_TS = 1_700_000_000.0
EVENT_RATE_PER_S = 1_000.0  # event time: 200k events span 200 s, inside the 600 s window
REFERENCE_EVENTS = 20_000


def feature_names() -> list[str]:
    """``f00`` .. ``f19``."""
    return [f"f{j:02d}" for j in range(N_FEATURES)]


def make_features(rng: np.random.Generator, n: int) -> FloatArray:
    """``(n, 20)`` features with mixed marginals (normal, lognormal, exponential, uniform)."""
    out = np.empty((n, N_FEATURES), dtype=np.float64)
    for j in range(N_FEATURES):
        kind = j % 4
        if kind == 0:
            out[:, j] = rng.normal(100.0 * (j + 1), 15.0, n)
        elif kind == 1:
            out[:, j] = rng.lognormal(3.0, 0.8, n)
        elif kind == 2:
            out[:, j] = rng.exponential(2.0, n)
        else:
            out[:, j] = rng.uniform(0.0, 1.0, n)
    return np.round(out, 6)


def make_scores(features: FloatArray) -> FloatArray:
    """A fixed logistic model over a few features (rare positives, like fraud)."""
    logit = (-4.0 + 0.02 * (features[:, 0] - 100.0) + 0.4 * np.log1p(features[:, 1])
             + 0.3 * features[:, 2] - 1.5 * features[:, 3])
    out: FloatArray = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
    return out


@dataclass
class Workload:
    """Encoded events, labels and their partitions."""

    values: list[bytes]
    keys: list[bytes]
    partitions: list[int]
    label_values: list[bytes]
    label_keys: list[bytes]
    label_partitions: list[int]
    canary_events: int
    mean_bytes: float
    min_bytes: int
    max_bytes: int


def make_workload(n: int, seed: int = SEED) -> Workload:
    """``n`` prediction events (JSON, ~600 bytes) and labels for ``LABEL_SHARE`` of them.

    Event ``i`` goes to partition ``i % PARTITIONS``; its label (if any) to the
    same partition of the labels topic (co-partitioned, as the range assignor
    expects). A ``trace`` string pads each event to about 600 bytes.
    """
    rng = np.random.default_rng(seed)
    feats = make_features(rng, n)
    scores = make_scores(feats)
    canary = rng.random(n) < CANARY_SHARE
    amounts = np.round(rng.lognormal(3.5, 1.0, n), 2)
    ts = START_TS + np.arange(n, dtype=np.float64) / EVENT_RATE_PER_S
    labelled = rng.random(n) < LABEL_SHARE
    fraud = rng.random(n) < np.clip(scores * 1.5, 0.0, 1.0)
    delays = rng.uniform(1.0, 30.0, n)
    names = feature_names()
    encode = msgspec.json.Encoder().encode
    values: list[bytes] = []
    keys: list[bytes] = []
    parts: list[int] = []
    label_values: list[bytes] = []
    label_keys: list[bytes] = []
    label_parts: list[int] = []
    feat_rows = feats.tolist()
    score_l = scores.tolist()
    amount_l = amounts.tolist()
    ts_l = ts.tolist()
    for i in range(n):
        eid = f"evt-{seed}-{i:09d}"
        event: dict[str, Any] = {
            "event_id": eid, "model": MODEL,
            "model_version": CANARY if canary[i] else CHAMPION,
            "ts": round(ts_l[i], 3), "score": score_l[i], "decision": score_l[i] >= 0.5,
            "amount": amount_l[i],
            "features": dict(zip(names, feat_rows[i], strict=True)),
            "trace": "",
        }
        raw = encode(event)
        pad = TARGET_EVENT_BYTES - len(raw)
        if pad > 0:
            event["trace"] = (eid * (pad // len(eid) + 1))[:pad]
            raw = encode(event)
        values.append(raw)
        keys.append(eid.encode())
        parts.append(i % PARTITIONS)
        if labelled[i]:
            label_values.append(encode({"event_id": eid, "label": int(fraud[i]),
                                        "ts": round(ts_l[i] + float(delays[i]), 3)}))
            label_keys.append(eid.encode())
            label_parts.append(i % PARTITIONS)
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=n)
    return Workload(values, keys, parts, label_values, label_keys, label_parts,
                    canary_events=int(canary.sum()), mean_bytes=float(lengths.mean()),
                    min_bytes=int(lengths.min()), max_bytes=int(lengths.max()))


def fit_reference(n: int = REFERENCE_EVENTS, seed: int = REFERENCE_SEED) -> ReferenceProfile:
    """A reference profile fitted on separately generated events of the same distribution."""
    rng = np.random.default_rng(seed)
    feats = make_features(rng, n)
    return ReferenceProfile.fit(
        {name: feats[:, j] for j, name in enumerate(feature_names())}, {},
        make_scores(feats), metadata={"source": "bench_ingest", "seed": seed})
