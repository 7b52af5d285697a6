"""The Service's per-stage timing hook: each stage once per batch, times >= 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.service import STAGES, Service
from monitor.engine.store import MemoryStore
from monitor.ingest.records import RawRecord
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import fit_reference, write_config

CHUNK = 100
BATCHES = 4


class ChunkSource:
    """Predictions and labels of one partition each, handed out ``CHUNK`` at a time."""

    def __init__(self, preds: list[bytes], labels: list[bytes]) -> None:
        self.parts = {("p", 0): preds, ("l", 0): labels}
        self.pos = dict.fromkeys(self.parts, 0)
        self.committed: dict[tuple[str, int], int] = {}

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
            end = min(start + CHUNK, len(values))
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


Setup = tuple[Settings, ReferenceProfile, ChunkSource]


class Recorder:
    """A stage timer that keeps every call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, float]] = []

    def __call__(self, stage: str, seconds: float) -> None:
        self.calls.append((stage, seconds))

    def stages(self) -> list[str]:
        return [stage for stage, _ in self.calls]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tmp: Path = tmp_path_factory.mktemp("stage-timer")
    ref = fit_reference(n=4_000)
    (tmp / "r.json").write_text(ref.to_json())
    settings = load_settings(write_config(tmp / "c.yaml",
                                          reference={"path": str(tmp / "r.json")}))
    b = TrafficGenerator(seed=5, canary_share=0.3).generate(CHUNK * BATCHES, 1_700_000_000.0,
                                                            100.0)
    source = ChunkSource([json.dumps(p).encode() for p in b.predictions],
                         [json.dumps(x).encode() for x in b.labels])
    return settings, ref, source


def _fresh(source: ChunkSource) -> ChunkSource:
    preds, labels = source.parts[("p", 0)], source.parts[("l", 0)]
    return ChunkSource(preds, labels)


@pytest.mark.parametrize("with_store", [False, True])
async def test_each_stage_once_per_batch(setup: Setup,
                                         with_store: bool) -> None:
    settings, ref, template = setup
    source = _fresh(template)
    timer = Recorder()
    service = Service(settings, source, MemoryDeadLetterSink(), ref,
                      store=MemoryStore() if with_store else None, stage_timer=timer)
    batches = 0
    while not source.exhausted:
        await service.handle(await source.poll(0))
        batches += 1
    assert batches == BATCHES
    per_batch = (["decode", "engine", "delta", "store", "commit", "handle"] if with_store
                 else ["decode", "engine", "commit", "handle"])
    assert timer.stages() == per_batch * BATCHES
    assert all(seconds >= 0.0 for _, seconds in timer.calls)
    assert set(timer.stages()) <= set(STAGES)
    # a batch's stages fit inside its handle() time
    for i in range(BATCHES):
        rows = timer.calls[i * len(per_batch):(i + 1) * len(per_batch)]
        assert sum(s for _, s in rows[:-1]) <= rows[-1][1]
    assert source.committed == {("p", 0): CHUNK * BATCHES, ("l", 0): CHUNK * BATCHES}


async def test_empty_poll_and_tick(setup: Setup) -> None:
    settings, ref, template = setup
    timer = Recorder()
    service = Service(settings, _fresh(template), MemoryDeadLetterSink(), ref,
                      stage_timer=timer)
    await service.handle(SourceBatch())
    assert timer.calls == []
    assert await service.tick() is not None
    assert timer.stages() == ["tick"]
    assert timer.calls[0][1] >= 0.0


async def test_no_timer_no_calls(setup: Setup) -> None:
    settings, ref, template = setup
    source = _fresh(template)
    service = Service(settings, source, MemoryDeadLetterSink(), ref)
    assert service.stage_timer is None
    await service.handle(await source.poll(0))
    assert service.batches == 1
