"""Engine: each event counted once, event time per partition, no event from the
future moves time (issue #11)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors import ReferenceProfile
from monitor.config import Settings
from monitor.engine import Engine
from monitor.engine.store import MemoryStore
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord, Record
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import MODEL, encode, fit_reference, oracle
from tests.unit.engine_support import SLICE, START, WINDOW, make_settings


@pytest.fixture(scope="module")
def ref() -> ReferenceProfile:
    return fit_reference(n=3000)


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Feeder:
    """An engine plus its codec; events carry their partition (``_p``)."""

    def __init__(self, settings: Settings, ref: ReferenceProfile,
                 clock: Clock | None = None) -> None:
        self.codec = EventCodec(settings)
        self.clock = clock or Clock()
        self.engine = Engine(settings, ref, clock=self.clock)

    def feed(self, preds: Sequence[dict[str, Any]] = (),
             labels: Sequence[dict[str, Any]] = ()) -> Any:
        def rec(topic: str, i: int, e: dict[str, Any]) -> RawRecord:
            body = {k: v for k, v in e.items() if k != "_p"}
            return RawRecord(topic, e.get("_p", 0), i, encode(body))

        batch = self.codec.decode([rec("predictions", i, e) for i, e in enumerate(preds)],
                                  [rec("labels", i, e) for i, e in enumerate(labels)])
        assert batch.rejected == [], batch.rejected
        return self.engine.process(batch)


def pred(eid: str, ts: float, version: str = "v1", part: int = 0,
         score: float = 0.1) -> dict[str, Any]:
    return {"event_id": eid, "model": MODEL, "model_version": version, "ts": ts,
            "score": score, "amount": 10.0, "_p": part,
            "features": {"amount": 10.0, "hour": 12.0, "merchant_category": "fuel"}}


def label(eid: str, y: int = 0, part: int = 0) -> dict[str, Any]:
    return {"event_id": eid, "label": y, "_p": part}


def state(engine: Engine) -> dict[Any, Any]:
    """Everything the engine counted, comparable across engines."""
    out: dict[Any, Any] = {"labels_total": engine.labels_total,
                           "pending": sorted(engine._pending), "orphans": sorted(engine._orphans)}
    for key, s in sorted(engine.versions.items()):
        out[key] = (s.predictions_total, s.late_total, s.labels_joined_total,
                    s.late_labels_total, s.confusion_total,
                    s.numeric.total.tolist(), s.categorical.total.tolist(),
                    s.score.total.tolist(), s.kpi_counts.total.tolist(),
                    s.adwin_error.width, s.adwin_score.width, s.adwin_score.mean)
    return out


# ---------------------------------------------------------------------------
# each event id counted once
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gen = TrafficGenerator(seed=5, canary_share=0.3, fraud_rate=0.05)
    batch = gen.generate(300, START, 10.0)
    return batch.predictions, batch.labels


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                 HealthCheck.too_slow])
@given(data=st.data())
def test_any_interleaving_of_copies_counts_the_originals_alone(
        tmp_path: Path, ref: ReferenceProfile,
        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]], data: st.DataObject) -> None:
    preds, labels = traffic
    n_p = data.draw(st.integers(20, len(preds)))
    events = [("p", e) for e in preds[:n_p]] + [("l", e) for e in labels
                                               if int(e["event_id"].split("-")[-1]) < n_p]
    # the stream with copies: every event once, plus copies of some, in an
    # order where each kind's original keeps its place among its own kind
    copies = data.draw(st.lists(st.integers(0, len(events) - 1), max_size=150))
    stream = list(range(len(events))) + copies
    order = data.draw(st.permutations(range(len(stream))))
    mixed = [stream[i] for i in order]
    cuts = sorted(data.draw(st.sets(st.integers(1, len(mixed) - 1), max_size=12)))
    settings_ = make_settings(tmp_path, windows={"kpi_window_seconds": 600})
    with_copies, originals = Feeder(settings_, ref), Feeder(settings_, ref)
    seen: set[int] = set()
    for lo, hi in zip([0, *cuts], [*cuts, len(mixed)], strict=True):
        chunk = mixed[lo:hi]
        firsts = []
        for i in chunk:
            if i not in seen:
                seen.add(i)
                firsts.append(i)
        for f, idx in ((with_copies, chunk), (originals, firsts)):
            f.feed([events[i][1] for i in idx if events[i][0] == "p"],
                   [events[i][1] for i in idx if events[i][0] == "l"])
    assert state(with_copies.engine) == state(originals.engine)
    n_copies = {"p": 0, "l": 0}
    for i in copies:
        n_copies[events[i][0]] += 1
    assert with_copies.engine.duplicates["prediction"] == n_copies["p"]
    assert with_copies.engine.duplicates["label"] == n_copies["l"]
    assert originals.engine.duplicates["prediction"] == 0


def test_copies_after_the_join_count_nothing(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("a", START), pred("b", START + 1, score=0.9)])
    f.feed(labels=[label("a", 1), label("b", 0)])
    before = state(f.engine)
    # the producer re-sends both pairs: the predictions are joined and gone from
    # the buffer, yet neither is counted, windowed or joined again
    f.feed([pred("a", START), pred("b", START + 1, score=0.9)],
           [label("a", 1), label("b", 0)])
    f.feed([pred("a", START)], [label("a", 1)])
    assert state(f.engine) == before
    assert f.engine.duplicates == {"prediction": 3, "label": 3}
    st_ = f.engine.versions[(MODEL, "v1")]
    assert st_.predictions_total == 2
    assert st_.labels_joined_total == 2


def test_dedupe_off_counts_copies_again(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, dedupe={"enabled": False}), ref)
    f.feed([pred("a", START)], [label("a", 1)])
    f.feed([pred("a", START)])
    assert f.engine.versions[(MODEL, "v1")].predictions_total == 2
    assert f.engine.seen_predictions is None


def test_seen_ids_survive_a_restart_through_the_store(tmp_path: Path,
                                                       ref: ReferenceProfile) -> None:
    import asyncio

    settings_ = make_settings(tmp_path)
    store = MemoryStore()
    tps = [("predictions", 0), ("labels", 0)]

    async def run() -> None:
        first = Feeder(settings_, ref)
        first.engine.track_join_changes()
        first.engine.load_join_state(*await store.load_join(tps))
        first.feed([pred("a", START), pred("b", START + 1)], [label("a", 1)])
        await store.commit(first.engine.delta("i"))
        # a new instance (a restart, or the partition's new owner) takes over
        second = Feeder(settings_, ref)
        second.engine.track_join_changes()
        second.engine.load_join_state(*await store.load_join(tps))
        second.feed([pred("a", START), pred("b", START + 1), pred("c", START + 2)],
                    [label("a", 1), label("b", 0)])
        assert second.engine.duplicates == {"prediction": 2, "label": 1}
        assert second.engine.versions[(MODEL, "v1")].predictions_total == 1
        assert second.engine.versions[(MODEL, "v1")].labels_joined_total == 1  # b joined

    asyncio.run(run())


# ---------------------------------------------------------------------------
# event time per partition
# ---------------------------------------------------------------------------


def backlog(n_parts: int, seconds: float, rate: float) -> list[list[dict[str, Any]]]:
    gen = TrafficGenerator(seed=3, canary_share=0.2)
    out = []
    for p in range(n_parts):
        b = gen.generate(int(seconds * rate), START, rate)
        out.append([{**e, "event_id": f"p{p}-{e['event_id']}", "_p": p} for e in b.predictions])
    return out


def test_partitions_read_at_different_speeds_lose_nothing(tmp_path: Path,
                                                          ref: ReferenceProfile) -> None:
    parts = backlog(4, 1800.0, 0.5)  # 30 minutes on each of 4 partitions
    f = Feeder(make_settings(tmp_path), ref)
    f.engine.set_partitions({0, 1, 2, 3}, set())  # as the service tells it
    # partition 0 is read to its end first, then the others in small steps
    f.feed(parts[0])
    for k in range(0, len(parts[1]), 50):
        f.feed([e for p in parts[1:] for e in p[k:k + 50]])
    eng = f.engine
    assert all(s.late_total == 0 for s in eng.versions.values())
    assert eng.watermark == max(e["ts"] for p in parts[1:] for e in p)  # min over partitions
    f.engine.set_caught_up({0, 1, 2, 3})  # all read: nothing holds event time back
    everything = [e for p in parts for e in p]
    exp = oracle(everything, [], ref, SLICE, WINDOW)
    for key, n in exp.predictions.items():
        s = eng.versions[key]
        assert s.predictions_total == n
        want = exp.window[key]
        got = {name: s.numeric.total[j].tolist()
               for j, name in enumerate(ref.numeric.features)}
        got["model_score"] = s.score.total[0].tolist()
        for name, counts in got.items():
            assert counts == want[name], (key, name)


def test_a_single_running_maximum_would_have_made_them_late(tmp_path: Path,
                                                            ref: ReferenceProfile) -> None:
    # the same backlog through one partition (as before: one running maximum
    # over everything) counts most of the slower partitions' events late
    parts = backlog(2, 600.0, 0.5)
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([{**e, "_p": 0} for e in parts[0]])
    stats = f.feed([{**e, "_p": 0} for e in parts[1]])
    assert stats.late > len(parts[1]) // 2
    g = Feeder(make_settings(tmp_path), ref)
    g.engine.set_partitions({0, 1}, set())
    g.feed(parts[0])
    assert g.engine.watermark == -math.inf  # partition 1 has not spoken yet
    assert g.feed(parts[1]).late == 0


def test_a_genuinely_late_event_is_still_late(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("a", START + 100, part=0), pred("b", START + 100, part=1)])
    assert f.feed([pred("late", START + 50, part=1)]).late == 1  # 50 s > 30 s lateness
    assert f.feed([pred("ok", START + 80, part=0)]).late == 0
    assert sum(s.late_total for s in f.engine.versions.values()) == 1


def test_an_idle_partition_stops_holding_time_back(tmp_path: Path,
                                                   ref: ReferenceProfile) -> None:
    clock = Clock()
    f = Feeder(make_settings(tmp_path, windows={"idle_partition_seconds": 30}), ref, clock)
    f.feed([pred("a", START, part=0), pred("b", START, part=1)])
    for k in range(1, 10):
        clock.t += 5
        f.feed([pred(f"a{k}", START + 10 * k, part=0)])
    # partition 1 has been quiet for 45 s: no longer the minimum
    assert f.engine.watermark == START + 90
    clock.t += 1
    f.feed([pred("b-late", START + 40, part=1)])  # 50 s behind: late
    assert f.engine.versions[(MODEL, "v1")].late_total == 1
    # within 30 s of its records, a partition holds it
    f.feed([pred("b2", START + 95, part=1)])
    f.feed([pred("a10", START + 200, part=0)])
    assert f.engine.watermark == START + 95
    # ... until the tick finds it idle
    clock.t += 31
    f.engine.evaluate()
    assert f.engine.watermark == START + 200


def test_slices_ahead_are_held_then_enter_the_window(tmp_path: Path,
                                                     ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("slow", START, part=1), pred("fast", START + 500, part=0)])
    eng = f.engine
    s = eng.versions[(MODEL, "v1")]
    assert eng.watermark == START
    assert s.window_events == 1  # the fast partition's event waits outside the window
    f.engine.set_caught_up({0, 1})
    assert eng.watermark == START + 500
    assert s.window_events == 1
    assert s.late_total == 0
    assert s.predictions_total == 2


def test_too_far_ahead_moves_the_window_and_counts_late(tmp_path: Path,
                                                        ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, windows={"max_ahead_seconds": 100}), ref)
    f.feed([pred("slow", START, part=1), pred("fast", START + 1000, part=0)])
    stats = f.feed([pred("slow2", START + 10, part=1)])
    # more than max_ahead apart: the window follows the fast partition, and the
    # slow one's event is late (counted, never silently lost)
    assert stats.late == 1
    s = f.engine.versions[(MODEL, "v1")]
    assert s.late_total == 1
    assert s.predictions_total == 3


# ---------------------------------------------------------------------------
# events from the future
# ---------------------------------------------------------------------------


def test_future_events_are_refused_and_never_move_time(tmp_path: Path,
                                                       ref: ReferenceProfile) -> None:
    import time

    settings_ = make_settings(tmp_path, windows={"max_future_skew_seconds": 120,
                                                 "window_seconds": 600})
    now = time.time()
    codec = EventCodec(settings_, clock=lambda: now)
    engine = Engine(settings_, ref, clock=Clock())
    future = pred("future", now + 10 * 365 * 86_400)
    near = pred("near", now + 100)  # within the allowed skew
    normal = [pred(f"n{i}", now - 50 + i * 0.05) for i in range(1000)]
    batch = codec.decode([RawRecord("predictions", 0, i, encode(e)) for i, e in
                          enumerate([*normal[:500], future, *normal[500:], near])],
                         [RawRecord("labels", 0, 0, encode(
                             {"event_id": "x", "label": 1, "ts": now + 86_400}))])
    assert [(r.reason, r.record.offset) for r in batch.rejected] == [
        ("future_timestamp", 500), ("future_timestamp", 0)]
    assert "ahead of the wall clock" in batch.rejected[0].detail
    engine.process(batch)
    s = engine.versions[(MODEL, "v1")]
    assert engine.watermark == pytest.approx(now + 100)
    assert s.late_total == 0
    assert s.window_events == 1001


def test_replays_keep_their_own_time(tmp_path: Path) -> None:
    replay = make_settings(tmp_path, source="replay")
    assert replay.future_skew_seconds is None
    checked = make_settings(tmp_path, source="replay",
                            windows={"future_check_on_replay": True})
    assert checked.future_skew_seconds == 300.0
    assert make_settings(tmp_path).future_skew_seconds == 300.0
    off = make_settings(tmp_path, windows={"max_future_skew_seconds": None})
    assert off.future_skew_seconds is None
    codec = EventCodec(replay)
    far = pred("far", 4e9)
    assert codec.decode([RawRecord("predictions", 0, 0, encode(
        {k: v for k, v in far.items() if k != "_p"}))]).rejected == []
    assert not math.isinf(codec._not_after) or codec._future_skew is None


def test_bad_window_settings_name_the_key(tmp_path: Path) -> None:
    from monitor.config import ConfigError

    for bad in ({"idle_partition_seconds": 0}, {"max_ahead_seconds": -1},
                {"max_future_skew_seconds": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            make_settings(tmp_path, windows=bad)
    with pytest.raises(ConfigError, match="horizon_seconds"):
        make_settings(tmp_path, dedupe={"horizon_seconds": -5})
    # the dedupe horizon defaults to the join TTL
    assert make_settings(tmp_path, join={"ttl_seconds": 7200}).dedupe_horizon_seconds == 7200
    assert np.isfinite(make_settings(tmp_path).dedupe_horizon_seconds)


# ---------------------------------------------------------------------------
# the memory backend says what a restart loses
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("durable", [False, True])
def test_start_up_says_what_a_restart_loses(tmp_path: Path, ref: ReferenceProfile,
                                            durable: bool) -> None:
    import asyncio

    from structlog.testing import capture_logs

    from monitor.core.service import Service
    from monitor.ingest.replay import ReplaySource
    from monitor.ingest.sources import MemoryDeadLetterSink

    data = tmp_path / "events.jsonl"
    data.write_bytes(encode({k: v for k, v in pred("a", START).items() if k != "_p"}) + b"\n")
    settings_ = make_settings(tmp_path, source="replay")
    service = Service(settings_, ReplaySource(data, "predictions", "labels"),
                      MemoryDeadLetterSink(), reference=ref,
                      store=MemoryStore() if durable else None)
    with capture_logs() as logs:
        asyncio.run(service.run(until_exhausted=True))
    warned = [e for e in logs if e["event"] == "state not durable"]
    if durable:
        assert warned == []
    else:
        assert len(warned) == 1
        assert warned[0]["backend"] == "memory"
        assert "pending label joins" in warned[0]["restart_loses"]
        assert warned[0]["avoid"] == "state.backend: redis"
    assert service.engine is not None
    assert service.engine.versions[(MODEL, "v1")].predictions_total == 1


def test_records_in_hand_do_not_count_as_caught_up(tmp_path: Path, ref: ReferenceProfile) -> None:
    """The consumer's position already counts a polled batch's records: before they
    are processed, their partitions must still hold event time, or the last
    records of slower partitions would come in late."""
    import asyncio

    from monitor.core.service import Service
    from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus

    class AtTheEnd:
        """A partition is at its high watermark once its records were polled (the
        consumer's position counts them from then on)."""

        exhausted = False

        def __init__(self) -> None:
            self.polled: set[tuple[str, int]] = set()

        def status(self) -> SourceStatus:
            return SourceStatus(assigned={("predictions", 0), ("predictions", 1)},
                                connected=True)

        def caught_up(self, after: Any) -> set[tuple[str, int]]:
            return set(self.polled)

        async def commit(self, offsets: Any) -> None:
            return None

    def recs(events: list[dict[str, Any]]) -> list[Record]:
        return [RawRecord("predictions", e["_p"], i,
                          encode({k: v for k, v in e.items() if k != "_p"}))
                for i, e in enumerate(events)]

    source = AtTheEnd()
    service = Service(make_settings(tmp_path), source,  # type: ignore[arg-type]
                      MemoryDeadLetterSink(), reference=ref)
    fast = [pred(f"a{i}", START + 1000 + i, part=0) for i in range(5)]
    slow = [pred(f"b{i}", START + i, part=1) for i in range(5)]
    source.polled = {("predictions", 0)}
    asyncio.run(service.handle(SourceBatch(predictions=recs(fast),
                                           next_offsets={("predictions", 0): 5})))
    # partition 0 is caught up after its batch; partition 1 has not spoken: held
    assert service.engine is not None
    assert service.engine.watermark == -math.inf
    source.polled = {("predictions", 0), ("predictions", 1)}
    asyncio.run(service.handle(SourceBatch(predictions=recs(slow),
                                           next_offsets={("predictions", 1): 5})))
    s = service.engine.versions[(MODEL, "v1")]
    assert s.late_total == 0
    assert s.predictions_total == 10
    assert service.engine.watermark == START + 1004  # both caught up now
