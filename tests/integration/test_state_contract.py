"""The StateStore contract: MemoryStore and RedisStore (real redis-server) alike."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from monitor.config import load_settings
from monitor.engine import Engine
from monitor.engine.redis_store import RedisStore
from monitor.engine.store import SEP, Commit, MemoryStore, StateStore
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import MODEL, fit_reference, write_config

pytestmark = pytest.mark.integration

TTL = 0.6


def _entries(buf: Any) -> dict[int, list[tuple[str, str]]]:
    """A join buffer's entries per partition, in arrival order (comparable with
    NaN amounts inside)."""
    out: dict[int, list[tuple[str, str]]] = {}
    for eid, entry in buf.items():
        out.setdefault(entry[-1], []).append((eid, repr(entry)))
    return out


class _Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path
                ) -> AsyncIterator[tuple[StateStore, Any]]:
    if request.param == "memory":
        clock = _Clock()
        s: StateStore = MemoryStore(join_ttl_s=TTL, clock=clock)

        async def advance(dt: float) -> None:
            clock.t += dt

        await s.start()
        yield s, advance
        await s.stop()
        return
    server = LocalRedis(tmp_path / "redis").start()
    s = RedisStore(server.url, prefix="t:", join_ttl_s=TTL)

    async def sleep(dt: float) -> None:
        await asyncio.sleep(dt)

    await s.start()
    try:
        yield s, sleep
    finally:
        await s.stop()
        server.stop()


async def test_offsets_are_stored_with_the_commit(store: tuple[StateStore, Any]) -> None:
    s, _ = store
    assert await s.offsets([("p", 0)]) == {}
    await s.commit(Commit("a", offsets={("p", 0): 10, ("l", 1): 4}))
    await s.commit(Commit("a", offsets={("p", 0): 25}))
    assert await s.offsets([("p", 0), ("l", 1), ("p", 9)]) == {("p", 0): 25, ("l", 1): 4}


async def test_instance_state_round_trips_and_expires(store: tuple[StateStore, Any]) -> None:
    s, _ = store
    a1 = np.arange(6, dtype=np.int64).reshape(2, 3)
    a2 = np.full(4, 0.5)
    k1, k2 = (MODEL, "v1", "numeric", 7), (MODEL, "v1", "kpi_amounts", 7)
    await s.commit(Commit("a", slices={k1: a1, k2: a2},
                          counters={f"{MODEL}{SEP}v1{SEP}predictions_total": 6.0}))
    slices, counters = await s.load_instance("a")
    assert set(slices) == {k1, k2}
    assert np.array_equal(np.frombuffer(slices[k1], dtype=np.int64).reshape(2, 3), a1)
    assert np.array_equal(np.frombuffer(slices[k2], dtype=np.float64), a2)
    assert counters == {f"{MODEL}{SEP}v1{SEP}predictions_total": 6.0}
    await s.commit(Commit("a", slices={k1: a1 * 2}, expired={k2}))
    slices, _ = await s.load_instance("a")
    assert set(slices) == {k1}
    assert np.array_equal(np.frombuffer(slices[k1], dtype=np.int64).reshape(2, 3), a1 * 2)
    assert await s.load_instance("nobody") == ({}, {})


async def test_global_read_sums_instances(store: tuple[StateStore, Any]) -> None:
    s, _ = store
    k = (MODEL, "v2", "score", 3)
    wm = f"{SEP}{SEP}watermark"
    active = f"{SEP}{SEP}active_until"
    n = f"{MODEL}{SEP}v2{SEP}predictions_total"
    now = time.time()
    await s.commit(Commit("a", slices={k: np.array([1, 2], dtype=np.int64)},
                          counters={n: 3.0, wm: 100.0, active: now + 600}))
    await s.commit(Commit("b", slices={k: np.array([10, 20], dtype=np.int64)},
                          counters={n: 30.0, wm: 90.0, active: now + 600}))
    slices, counters = await s.read_global()
    total = np.sum([np.frombuffer(b, dtype=np.int64) for b in slices[k]], axis=0)
    assert total.tolist() == [11, 22]
    assert counters[n] == 33.0
    # event time: the slowest active instance's watermark holds the windows
    assert counters[wm] == 90.0
    # an instance idle past its active_until stops holding the others back
    await s.commit(Commit("b", counters={active: now - 1}))
    assert (await s.read_global())[1][wm] == 100.0
    # with none active, the largest watermark stands
    await s.commit(Commit("a", counters={active: now - 1}))
    assert (await s.read_global())[1][wm] == 100.0


async def test_join_blobs_are_written_dropped_and_loaded_per_partition(
        store: tuple[StateStore, Any]) -> None:
    s, _ = store
    blobs, first_epoch = await s.load_join([("p", 0)])
    assert blobs == {("p", 0): {}}
    await s.commit(Commit("a", join_writes={("p", 0): {"1.1.d": b"x", "1.2.d": b"y"},
                                            ("l", 0): {"1.3.d": b"z"}}))
    await s.commit(Commit("b", join_writes={("p", 1): {"2.1.d": b"w"}}))
    blobs, epoch = await s.load_join([("p", 0), ("l", 0), ("p", 1), ("p", 2)])
    assert blobs == {("p", 0): {"1.1.d": b"x", "1.2.d": b"y"}, ("l", 0): {"1.3.d": b"z"},
                     ("p", 1): {"2.1.d": b"w"}, ("p", 2): {}}
    assert epoch > first_epoch
    # a snapshot replaces the blobs it supersedes, in the same commit
    await s.commit(Commit("a", join_writes={("p", 0): {"1.4.s": b"snap"}},
                          join_drops={("p", 0): ["1.1.d", "1.2.d"]}))
    blobs, _ = await s.load_join([("p", 0)])
    assert blobs == {("p", 0): {"1.4.s": b"snap"}}


async def test_lease_is_held_by_one_holder_until_it_lapses(
        store: tuple[StateStore, Any]) -> None:
    s, later = store
    assert await s.acquire_lease("a", 500)
    assert not await s.acquire_lease("b", 500)
    assert await s.acquire_lease("a", 500)  # renewal
    await later(0.7)
    assert await s.acquire_lease("b", 500)
    assert not await s.acquire_lease("a", 500)
    await s.release_lease("a")  # not the holder: no effect
    assert not await s.acquire_lease("a", 500)
    await s.release_lease("b")
    assert await s.acquire_lease("a", 500)


async def test_claim_is_won_once(store: tuple[StateStore, Any]) -> None:
    s, _ = store
    assert await s.claim("rollback:m:v2", "dec_1") == "dec_1"
    assert await s.claim("rollback:m:v2", "dec_2") == "dec_1"
    assert await s.claim("rollback:m:v3", "dec_2") == "dec_2"


async def test_engine_state_survives_a_restart_through_the_store(
        store: tuple[StateStore, Any], tmp_path: Path) -> None:
    s, _ = store
    ref = fit_reference()
    (tmp_path / "r.json").write_text(ref.to_json())
    settings = load_settings(write_config(tmp_path / "c.yaml",
                                          reference={"path": str(tmp_path / "r.json")}))
    gen = TrafficGenerator(seed=5, canary_share=0.3, bug_at=1_700_000_030.0)
    batch = gen.generate(3000, 1_700_000_000.0, 50.0)
    codec = EventCodec(settings)
    preds = [RawRecord("p", 0, i, json.dumps(p).encode())
             for i, p in enumerate(batch.predictions)]
    labels = [RawRecord("l", 0, i, json.dumps(x).encode()) for i, x in enumerate(batch.labels)]
    first = Engine(settings, ref)
    first.track_join_changes()
    tps = [(settings.kafka.predictions_topic, 0), (settings.kafka.labels_topic, 0)]
    first.load_join_state(*await s.load_join(tps))
    # process in 6 batches, committing each through the store like the service does
    for i in range(6):
        decoded = codec.decode(preds[i * 500:(i + 1) * 500], labels[i * 400:(i + 1) * 400])
        first.process(decoded)
        c = first.delta("inst")
        c.offsets = {("p", 0): (i + 1) * 500}
        await s.commit(c)
    second = Engine(settings, ref)
    second.track_join_changes()
    second.restore(*await s.load_instance("inst"))
    for key, st in first.versions.items():
        other = second.versions[key]
        for kind in ("numeric", "categorical", "score", "kpi_counts"):
            assert np.array_equal(getattr(st, kind).total, getattr(other, kind).total), kind
        # float amount sums: equal up to summation order
        assert np.allclose(st.kpi_amounts.total, other.kpi_amounts.total, rtol=1e-12, atol=0)
        assert other.predictions_total == st.predictions_total
        assert other.labels_joined_total == st.labels_joined_total
        assert other.confusion_total == st.confusion_total
    assert second.labels_total == first.labels_total
    assert second.watermark == first.watermark
    # the join buffer is taken over from the store, entry for entry
    loaded = second.load_join_state(*await s.load_join(tps))
    assert loaded == first.pending_predictions + first.pending_labels > 0
    assert _entries(second._pending) == _entries(first._pending)
    assert _entries(second._orphans) == _entries(first._orphans)
    # the remaining labels join against predictions that came from the store
    rest = codec.decode([], labels[2400:])
    second.process(rest)
    joined = sum(st.labels_joined_total for st in second.versions.values())
    assert joined == 3000


async def test_join_snapshots_keep_the_stored_log_bounded(
        store: tuple[StateStore, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import monitor.engine.join as engine_mod

    monkeypatch.setattr(engine_mod, "_SNAPSHOT_MIN_BYTES", 2_000)
    s, _ = store
    ref = fit_reference()
    (tmp_path / "r.json").write_text(ref.to_json())
    settings = load_settings(write_config(tmp_path / "c.yaml",
                                          reference={"path": str(tmp_path / "r.json")},
                                          join={"ttl_seconds": 2}))
    gen = TrafficGenerator(seed=9, canary_share=0.3)
    batch = gen.generate(4000, 1_700_000_000.0, 50.0)
    codec = EventCodec(settings)
    preds = [RawRecord("p", i % 3, i, json.dumps(p).encode())
             for i, p in enumerate(batch.predictions)]
    labels = [RawRecord("l", i % 2, i, json.dumps(x).encode())
              for i, x in enumerate(batch.labels)]
    tps = [(t, p) for t in (settings.kafka.predictions_topic, settings.kafka.labels_topic)
           for p in range(3)]
    first = Engine(settings, ref)
    first.track_join_changes()
    first.load_join_state(*await s.load_join(tps))
    fields_seen: list[int] = []
    id_fields_seen: list[int] = []
    for i in range(40):
        first.process(codec.decode(preds[i * 100:(i + 1) * 100], labels[i * 80:(i + 1) * 80]))
        await s.commit(first.delta("inst"))
        blobs, _ = await s.load_join(tps)
        fields_seen.append(sum(1 for f in blobs.values() for name in f
                               if not name.startswith("i.")))
        id_fields_seen.append(sum(1 for f in blobs.values() for name in f
                                  if name.startswith("i.")))
        check = Engine(settings, ref)
        check.load_join_state(blobs, 0)
        # after every commit the store holds exactly the local buffers, and the
        # ids seen within the dedupe horizon
        assert _entries(check._pending) == _entries(first._pending)
        assert _entries(check._orphans) == _entries(first._orphans)
        for kind in ("seen_predictions", "seen_labels"):
            mine, theirs = getattr(first, kind), getattr(check, kind)
            assert len(theirs) == len(mine)
            if len(mine):
                assert theirs.contains(np.sort(np.concatenate(mine._h))).all()
    assert first.evictions["ttl"] > 0  # entries also left by event-time expiry
    snapshots = sum(1 for f in blobs.values() for name in f if name.endswith(".s"))
    assert snapshots >= 1
    assert max(fields_seen) < 40  # replaced by snapshots, not one blob per batch forever
    # ids of expired buckets are dropped: a few buckets per partition, not one
    # field per batch forever
    assert max(id_fields_seen) < 40
    assert id_fields_seen[-1] < max(id_fields_seen)  # expired buckets were dropped


async def test_commit_sequence_detects_a_store_that_lost_commits(
        store: tuple[StateStore, Any]) -> None:
    from monitor.engine.store import SEQ_KEY, StoreRegressedError

    s, _ = store
    await s.commit(Commit("a", counters={"x": 1.0}, seq=1, expect_seq=0))
    await s.commit(Commit("a", counters={"x": 2.0}, seq=2, expect_seq=1))
    # the same commit again (its reply was lost): accepted, nothing changes
    await s.commit(Commit("a", counters={"x": 99.0}, seq=2, expect_seq=1))
    assert (await s.load_instance("a"))[1]["x"] == 2.0
    # the instance believes it wrote 4 commits; the store holds 2: refused
    with pytest.raises(StoreRegressedError, match="stored commit sequence 2, expected 4"):
        await s.commit(Commit("a", counters={"x": 5.0}, offsets={("p", 0): 50}, seq=5,
                              expect_seq=4))
    _, counters = await s.load_instance("a")
    assert counters["x"] == 2.0
    assert counters[SEQ_KEY] == 2.0
    assert await s.offsets([("p", 0)]) == {}
