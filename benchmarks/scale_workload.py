"""The workload of bench_scale: demo-shaped events, and a source whose labels lag.

``n`` predictions of the demo shape (:class:`monitor.sandbox.traffic.TrafficGenerator`:
5 numeric + 1 categorical feature, champion v1 / canary v2 90/10) with a label
for each, the reference the integration tests use, and
:class:`LaggedKafkaSource`, which keeps every label out of its prediction's batch.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from benchmarks.harness import MeteredKafkaSource
from detectors import ReferenceProfile
from monitor.engine.reservoir import attach_sample
from monitor.ingest.sources import SourceBatch
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator

__all__ = ["CATEGORICAL", "LaggedKafkaSource", "Workload", "fit_reference", "make_workload"]

SEED = 20240618
REFERENCE_SEED = 99
MODEL = "card-fraud"
CHAMPION, CANARY = "v1", "v2"
CANARY_SHARE = 0.10
CATEGORICAL = ["merchant_category"]
PARTITIONS = 4
START_TS = 1_700_000_000.0
EVENT_RATE_PER_S = 1_000.0  # event time: 100k events span 100 s, inside the 600 s window
REFERENCE_EVENTS = 20_000


@dataclass
class Workload:
    values: list[bytes]
    keys: list[bytes]
    partitions: list[int]
    label_values: list[bytes]
    canary_events: int
    mean_prediction_bytes: float
    mean_label_bytes: float

    @property
    def predictions_per_partition(self) -> dict[int, int]:
        out = dict.fromkeys(range(PARTITIONS), 0)
        for p in self.partitions:
            out[p] += 1
        return out


def make_workload(n: int) -> Workload:
    """``n`` demo-shaped predictions and a label for each (same partition, same order)."""
    gen = TrafficGenerator(seed=SEED, canary_share=CANARY_SHARE)
    batch = gen.generate(n, START_TS, EVENT_RATE_PER_S)
    enc = msgspec.json.Encoder().encode
    values = [enc(p) for p in batch.predictions]
    label_values = [enc(x) for x in batch.labels]
    keys = [p["event_id"].encode() for p in batch.predictions]
    canary = sum(1 for p in batch.predictions if p["model_version"] == CANARY)
    return Workload(values, keys, [i % PARTITIONS for i in range(n)], label_values,
                    canary_events=canary,
                    mean_prediction_bytes=statistics.fmean(len(v) for v in values),
                    mean_label_bytes=statistics.fmean(len(v) for v in label_values))


def fit_reference() -> ReferenceProfile:
    """The reference the integration tests use: healthy champion traffic, with a sample."""
    gen = TrafficGenerator(seed=REFERENCE_SEED, canary_share=0.0)
    preds = gen.generate(REFERENCE_EVENTS, start_ts=1_600_000_000.0,
                         rate_per_s=1000.0).predictions
    numeric = {f: np.array([p["features"][f] for p in preds]) for f in NUMERIC_FEATURES}
    cats: dict[str, list[object]] = {c: [p["features"][c] for p in preds] for c in CATEGORICAL}
    scores = np.array([p["score"] for p in preds])
    return attach_sample(ReferenceProfile.fit(numeric, cats, scores), numeric, cats, scores)


class LaggedKafkaSource(MeteredKafkaSource):
    """KafkaSource whose label partitions trail their prediction partitions.

    Label partition ``p`` is paused while ``label_next[p] + lag > pred_next[p]``
    and the predictions of ``p`` are not all consumed yet (label ``o`` of
    partition ``p`` belongs to prediction ``o`` of partition ``p``).
    """

    def __init__(self, cfg: Any, pred_end: dict[int, int], lag: int) -> None:
        super().__init__(cfg, on_assign=self._assign)
        self.pred_end = pred_end
        self.lag = lag
        self.pred_next: dict[int, int] = {}
        self.label_next: dict[int, int] = {}
        self._inner_assign: Any = None
        self.pauses = 0

    def set_assign_hook(self, on_assign: Any) -> None:
        self._inner_assign = on_assign

    async def _assign(self, tps: Any) -> dict[tuple[str, int], int] | None:
        seek = await self._inner_assign(tps) if self._inner_assign is not None else None
        for (t, p) in tps:
            if seek and (t, p) in seek:
                if t == self.cfg.predictions_topic:
                    self.pred_next[p] = seek[(t, p)]
                elif t == self.cfg.labels_topic:
                    self.label_next[p] = seek[(t, p)]
        self._gate()
        return seek

    async def poll(self, timeout_s: float) -> SourceBatch:
        batch = await super().poll(timeout_s)
        for (t, p), o in batch.next_offsets.items():
            if t == self.cfg.predictions_topic:
                self.pred_next[p] = o
            elif t == self.cfg.labels_topic:
                self.label_next[p] = o
        self._gate()
        return batch

    def _gate(self) -> None:
        from aiokafka import TopicPartition as KafkaTP

        consumer = self._consumer
        if consumer is None:
            return
        paused = consumer.paused()
        pause, resume = [], []
        for t, p in self._assigned:
            if t != self.cfg.labels_topic:
                continue
            pn = self.pred_next.get(p, 0)
            hold = pn < self.pred_end[p] and self.label_next.get(p, 0) + self.lag > pn
            tp = KafkaTP(t, p)
            if hold and tp not in paused:
                pause.append(tp)
            elif not hold and tp in paused:
                resume.append(tp)
        if pause:
            consumer.pause(*pause)
            self.pauses += len(pause)
        if resume:
            consumer.resume(*resume)
