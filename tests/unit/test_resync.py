"""A store that lost its last commits: the service re-syncs and stays exact."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from monitor.config import load_settings
from monitor.core.service import Service
from monitor.engine.store import MemoryStore
from monitor.ingest.records import RawRecord
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import fit_reference, write_config


class RewindableSource:
    """Two partitions of records; poll hands out chunks; seek_to rewinds."""

    def __init__(self, preds: list[bytes], labels: list[bytes], chunk: int) -> None:
        self.parts = {("p", 0): preds, ("l", 0): labels}
        self.pos = {tp: 0 for tp in self.parts}
        self.chunk = chunk
        self.committed: dict[tuple[str, int], int] = {}
        self.seeks = 0

    @property
    def exhausted(self) -> bool:
        return all(self.pos[tp] >= len(v) for tp, v in self.parts.items())

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def poll(self, timeout_s: float) -> SourceBatch:
        batch = SourceBatch()
        for (topic, part), values in self.parts.items():
            start = self.pos[(topic, part)]
            end = min(start + self.chunk, len(values))
            recs = [RawRecord(topic, part, i, values[i]) for i in range(start, end)]
            (batch.predictions if topic == "p" else batch.labels).extend(recs)
            if end > start:
                batch.next_offsets[(topic, part)] = end
            self.pos[(topic, part)] = end
        return batch

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    def status(self) -> SourceStatus:
        return SourceStatus(assigned=set(self.parts), connected=True)

    async def seek_to(self, offsets: dict[tuple[str, int], int]) -> None:
        self.seeks += 1
        for tp in self.parts:
            self.pos[tp] = offsets.get(tp, 0)


def _setup(tmp_path: Path) -> tuple[Any, Any, list[bytes], list[bytes]]:
    ref = fit_reference()
    (tmp_path / "r.json").write_text(ref.to_json())
    settings = load_settings(write_config(
        tmp_path / "c.yaml", reference={"path": str(tmp_path / "r.json")},
        audit={"path": str(tmp_path / "a.jsonl"), "fsync": False}))
    gen = TrafficGenerator(seed=12, canary_share=0.3, bug_at=1_700_000_020.0)
    b = gen.generate(4000, 1_700_000_000.0, 100.0)
    return (settings, ref, [json.dumps(p).encode() for p in b.predictions],
            [json.dumps(x).encode() for x in b.labels])


async def _run(service: Service, source: RewindableSource, store: MemoryStore,
               lose_after: int | None) -> None:
    snapshot: dict[str, Any] | None = None
    n = 0
    while not source.exhausted:
        await service.handle(await source.poll(0))
        n += 1
        if lose_after is not None and n == lose_after:
            snapshot = copy.deepcopy(store.__dict__)
        if lose_after is not None and n == lose_after + 3 and snapshot is not None:
            store.__dict__.update(snapshot)  # the store "restarts" without 3 commits
            snapshot = None


async def test_lost_commits_are_replayed_once(tmp_path: Path) -> None:
    settings, ref, preds, labels = _setup(tmp_path)
    results = []
    for lose in (None, 2):
        store = MemoryStore()
        source = RewindableSource(preds, labels, chunk=350)
        service = Service(settings, source, MemoryDeadLetterSink(), ref, store=store,
                          instance_id="i1")
        await _run(service, source, store, lose)
        assert service.engine is not None
        results.append((service, source))
    clean, lossy = results
    assert lossy[0].resyncs == 1
    assert lossy[1].seeks == 1
    assert clean[0].resyncs == 0
    ce, le = clean[0].engine, lossy[0].engine
    assert ce is not None
    assert le is not None
    for key, st in ce.versions.items():
        other = le.versions[key]
        assert other.predictions_total == st.predictions_total
        assert other.labels_joined_total == st.labels_joined_total
        assert other.confusion_total.tp == st.confusion_total.tp
        assert other.confusion_total.fn == st.confusion_total.fn
        assert np.array_equal(other.numeric.total, st.numeric.total)
        assert np.array_equal(other.score.total, st.score.total)
    assert sum(st.labels_joined_total for st in le.versions.values()) == 4000
