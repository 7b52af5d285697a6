"""FaustSource against the embedded broker: same aggregates as KafkaSource.

A known stream (3,000 predictions and their delayed labels, the canary's
velocity feature breaking half-way) is produced into multi-partition topics.
The service runs once over :class:`FaustSource` and once over
:class:`KafkaSource` (separate consumer groups); both engines must hold the
counts computed offline from the generated events, and the Faust group must
have committed every offset. A second test checks that batches handed out but
not committed are redelivered after a stop (at-least-once).

Every wait is bounded; producers never use idempotence (tansu lacks
``InitProducerId``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from detectors import ReferenceProfile
from detectors.kpi import ConfusionCounts
from monitor.config import Settings, load_settings
from monitor.core.service import Service
from monitor.engine import Engine
from monitor.ingest.faust_source import FaustSource
from monitor.ingest.kafka import KafkaSource
from monitor.ingest.sources import MemoryDeadLetterSink, Source
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator
from tests.support import serving

pytestmark = pytest.mark.integration

START = 1_700_000_000.0
N_EVENTS = 3000
RATE = 100.0  # events/s of event time: the stream spans 30 s, inside every window
PRED_PARTITIONS = 3
LABEL_PARTITIONS = 2
RUN_TIMEOUT_S = 60.0
# tansu answers JoinGroup after about half the session timeout: keep it short.
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
MODELS = [{"name": "card-fraud", "champion": "v1", "canary": "v2"}]
FEATURES = {"numeric": list(NUMERIC_FEATURES), "categorical": ["merchant_category"]}

_encode = msgspec.json.Encoder().encode


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as started:
        yield started


def _reference() -> ReferenceProfile:
    """A profile fitted on separately generated champion traffic."""
    batch = TrafficGenerator(seed=11).generate(4000, START - 3600.0, RATE)
    preds = [p for p in batch.predictions if p["model_version"] == "v1"]
    return ReferenceProfile.fit(
        {f: np.array([p["features"][f] for p in preds], dtype=np.float64)
         for f in NUMERIC_FEATURES},
        {"merchant_category": [p["features"]["merchant_category"] for p in preds]},
        np.array([p["score"] for p in preds], dtype=np.float64),
        metadata={"source": "test_faust_source"},
    )


def _settings(broker: EmbeddedBroker, ref_path: Path, topics: tuple[str, str], group: str,
              **kafka: Any) -> Settings:
    return load_settings(
        None,
        kafka={"bootstrap_servers": broker.bootstrap_servers, "group_id": group,
               "predictions_topic": topics[0], "labels_topic": topics[1],
               "dead_letter_topic": _name("dlq"), "client_id": group,
               **GROUP_TUNING, **kafka},
        models=MODELS, features=FEATURES, reference={"path": ref_path},
        evaluation={"tick_seconds": 0.5},
    )


async def _produce(bootstrap: str, topic: str, events: list[dict[str, Any]],
                   with_headers: bool = False) -> dict[tuple[str, int], int]:
    """Produce the events (key = event id); returns the end offset of each partition.

    The end offsets come from the produce acks: tansu's ListOffsets(latest)
    answers wrong values (e.g. 1 after 1,000 records), so ``end_offsets()``
    cannot be used against it.
    """
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=5)
    await asyncio.wait_for(producer.start(), timeout=30)
    try:
        futs = []
        for i, ev in enumerate(events):
            headers = [("seq", str(i).encode())] if with_headers else None
            futs.append(await producer.send(topic, _encode(ev), key=ev["event_id"].encode(),
                                            headers=headers))
        acks = await asyncio.wait_for(asyncio.gather(*futs), timeout=30)
    finally:
        await asyncio.wait_for(producer.stop(), timeout=30)
    ends: dict[tuple[str, int], int] = {}
    for md in acks:
        key = (md.topic, md.partition)
        ends[key] = max(ends.get(key, 0), md.offset + 1)
    return ends


async def _group_committed(bootstrap: str, group: str,
                           topics: dict[str, int]) -> dict[tuple[str, int], int | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await asyncio.wait_for(consumer.start(), timeout=30)
    try:
        out: dict[tuple[str, int], int | None] = {}
        for t, n in topics.items():
            for p in range(n):
                out[(t, p)] = await asyncio.wait_for(
                    consumer.committed(TopicPartition(t, p)), timeout=30)
        return out
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=30)


def _done(engine: Engine | None, predictions: int, labels: int) -> bool:
    if engine is None:
        return False
    states = engine.versions.values()
    return (sum(st.predictions_total for st in states) >= predictions
            and sum(st.labels_joined_total for st in states) >= labels)


async def _run_service(settings: Settings, source: Source, reference: ReferenceProfile,
                       predictions: int, labels: int) -> tuple[Service, float]:
    """Run the service until every event is applied, then stop it (bounded)."""
    sink = MemoryDeadLetterSink()
    service = Service(settings, source, sink, reference)
    t0 = time.monotonic()
    async with serving(service) as task:
        deadline = t0 + RUN_TIMEOUT_S
        while not _done(service.engine, predictions, labels):
            if task.done():
                task.result()  # raises the service's error
                raise AssertionError("service stopped before consuming the stream")
            if time.monotonic() > deadline:
                eng = service.engine
                counts = {k: (st.predictions_total, st.labels_joined_total)
                          for k, st in (eng.versions.items() if eng else ())}
                raise AssertionError(f"timed out after {RUN_TIMEOUT_S}s; counts={counts}, "
                                     f"status={source.status()}")
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - t0
    assert sink.records == []
    return service, elapsed


def _expected(predictions: list[dict[str, Any]], labels: list[dict[str, Any]],
              reference: ReferenceProfile) -> dict[tuple[str, str], dict[str, Any]]:
    """Offline per-version counts over the generated events."""
    label_of = {e["event_id"]: e["label"] for e in labels}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for version in sorted({p["model_version"] for p in predictions}):
        rows = [p for p in predictions if p["model_version"] == version]
        numeric = np.array([[p["features"][f] for f in NUMERIC_FEATURES] for p in rows],
                           dtype=np.float64)
        y = np.array([label_of[p["event_id"]] == 1 for p in rows])
        d = np.array([bool(p["decision"]) for p in rows])
        amount = np.array([p["amount"] for p in rows], dtype=np.float64)
        caught, missed = y & d, y & ~d
        out[("card-fraud", version)] = {
            "predictions": len(rows),
            "numeric": reference.numeric.count(numeric),
            "categorical": reference.categorical.count(
                {"merchant_category": [p["features"]["merchant_category"] for p in rows]}),
            "score": reference.score.count(
                np.array([[p["score"]] for p in rows], dtype=np.float64)),
            "confusion": ConfusionCounts(
                tp=int(caught.sum()), fp=int((~y & d).sum()), fn=int(missed.sum()),
                tn=int((~y & ~d).sum()), caught_amount=float(amount[caught].sum()),
                missed_amount=float(amount[missed].sum()),
                caught_amount_sq=float((amount[caught] ** 2).sum()),
                missed_amount_sq=float((amount[missed] ** 2).sum())),
        }
    return out


def _assert_confusion(got: ConfusionCounts, want: ConfusionCounts) -> None:
    # counts exactly; amounts are float sums whose order follows arrival order
    assert (got.tp, got.fp, got.fn, got.tn) == (want.tp, want.fp, want.fn, want.tn)
    for f in ("caught_amount", "missed_amount", "caught_amount_sq", "missed_amount_sq"):
        assert getattr(got, f) == pytest.approx(getattr(want, f), rel=1e-9, abs=1e-6), f


def _assert_engine(engine: Engine, expected: dict[tuple[str, str], dict[str, Any]]) -> None:
    assert sorted(engine.versions) == sorted(expected)
    assert engine.labels_total == N_EVENTS
    assert not engine.duplicates
    assert not engine.invalid
    assert not engine.evictions
    assert engine.pending_predictions == 0
    assert engine.pending_labels == 0
    for key, want in expected.items():
        st = engine.versions[key]
        assert st.predictions_total == want["predictions"], key
        assert st.labels_joined_total == want["predictions"], key
        assert st.late_total == 0, key
        assert st.late_labels_total == 0, key
        np.testing.assert_array_equal(st.numeric.total, want["numeric"])
        np.testing.assert_array_equal(st.categorical.total, want["categorical"])
        np.testing.assert_array_equal(st.score.total, want["score"])
        _assert_confusion(st.confusion_total, want["confusion"])
        _assert_confusion(st.kpi_confusion(), want["confusion"])


def _assert_same(a: Engine, b: Engine) -> None:
    assert sorted(a.versions) == sorted(b.versions)
    for key, sa in a.versions.items():
        sb = b.versions[key]
        assert sa.predictions_total == sb.predictions_total
        assert sa.labels_joined_total == sb.labels_joined_total
        for win in ("numeric", "categorical", "score", "kpi_counts"):
            np.testing.assert_array_equal(getattr(sa, win).total, getattr(sb, win).total)
        _assert_confusion(sa.confusion_total, sb.confusion_total)
        _assert_confusion(sa.kpi_confusion(), sb.kpi_confusion())


async def test_faust_source_matches_kafka_source(broker: EmbeddedBroker,
                                                 tmp_path: Path) -> None:
    reference = _reference()
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(reference.to_json())
    gen = TrafficGenerator(seed=5, bug_at=START + N_EVENTS / RATE / 2)
    batch = gen.generate(N_EVENTS, START, RATE)
    topics = (_name("predictions"), _name("labels"))
    partitions = {topics[0]: PRED_PARTITIONS, topics[1]: LABEL_PARTITIONS}
    await broker.create_topics(partitions)
    ends = {**await _produce(broker.bootstrap_servers, topics[0], batch.predictions,
                             with_headers=True),
            **await _produce(broker.bootstrap_servers, topics[1], batch.labels)}
    assert len(ends) == PRED_PARTITIONS + LABEL_PARTITIONS
    assert sum(ends.values()) == 2 * N_EVENTS
    expected = _expected(batch.predictions, batch.labels, reference)
    assert expected[("card-fraud", "v2")]["predictions"] > 100  # both versions present

    faust_settings = _settings(broker, ref_path, topics, _name("faust-group"),
                               max_poll_records=400)
    faust_source = FaustSource(faust_settings)
    assert faust_source.exhausted is False
    faust_service, faust_s = await _run_service(faust_settings, faust_source, reference,
                                                N_EVENTS, N_EVENTS)
    assert faust_source.app is None  # stopped
    assert faust_source.status().connected is False

    kafka_settings = _settings(broker, ref_path, topics, _name("kafka-group"),
                               max_poll_records=400)
    kafka_service, kafka_s = await _run_service(kafka_settings, KafkaSource(kafka_settings.kafka),
                                                reference, N_EVENTS, N_EVENTS)

    assert faust_service.engine is not None
    assert kafka_service.engine is not None
    _assert_engine(faust_service.engine, expected)
    _assert_engine(kafka_service.engine, expected)
    _assert_same(faust_service.engine, kafka_service.engine)

    # every offset the service processed was committed by the Faust app
    assert faust_source.committed == ends
    committed = await _group_committed(broker.bootstrap_servers,
                                       faust_settings.kafka.group_id, partitions)
    assert committed == ends
    print(f"faust: {faust_s:.1f}s, kafka: {kafka_s:.1f}s")


async def _collect(source: FaustSource, want: Callable[[set[tuple[str, int, int]]], bool],
                   commit: bool = False,
                   timeout_s: float = 30.0) -> tuple[set[tuple[str, int, int]], list[Any]]:
    """Poll (and maybe commit) until ``want(seen)``; returns what was seen and the batches.

    Without commits an agent hands out one batch and then waits, so only a
    committing caller can see more than one batch per topic.
    """
    seen: set[tuple[str, int, int]] = set()
    batches: list[Any] = []
    deadline = time.monotonic() + timeout_s
    while not want(seen):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out; saw {len(seen)} records, "
                                 f"status={source.status()}")
        batch = await source.poll(0.2)
        if len(batch):
            batches.append(batch)
            seen.update((r.topic, r.partition, r.offset)
                        for r in (*batch.predictions, *batch.labels))
            if commit:
                await source.commit(batch.next_offsets)
    return seen, batches


async def test_uncommitted_batches_are_redelivered(broker: EmbeddedBroker,
                                                   tmp_path: Path) -> None:
    reference = _reference()
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(reference.to_json())
    batch = TrafficGenerator(seed=9).generate(300, START, RATE)
    topics = (_name("predictions"), _name("labels"))
    partitions = {topics[0]: 2, topics[1]: 2}
    await broker.create_topics(partitions)
    ends = {**await _produce(broker.bootstrap_servers, topics[0], batch.predictions,
                             with_headers=True),
            **await _produce(broker.bootstrap_servers, topics[1], batch.labels)}
    assert len(ends) == 4
    everything = {(t, p, o) for (t, p), end in ends.items() for o in range(end)}
    # tansu numbers the first generation 0 and aiokafka sends LeaveGroup only
    # for generations > 0, so the second member waits for the first one's
    # session to expire: a short session keeps that wait (and each join) short.
    settings = _settings(broker, ref_path, topics, _name("faust-redeliver"),
                         max_poll_records=25, session_timeout_ms=3000,
                         heartbeat_interval_ms=500)

    # 1) take one batch and commit it, take another and do not: stop
    first = FaustSource(settings)
    try:
        await asyncio.wait_for(first.start(), timeout=60)
        st = first.status()
        assert st.connected
        assert st.assigned == set(ends)
        _, got = await _collect(first, lambda seen: bool(seen))
        committed_batch = got[0]
        rec = (committed_batch.predictions or committed_batch.labels)[0]
        assert rec.timestamp_ms is not None
        assert rec.timestamp_ms > 0
        assert rec.key is not None
        assert rec.value is not None
        if rec.topic == topics[0]:
            assert [h for h, _ in rec.headers] == ["seq"]
        await first.commit(committed_batch.next_offsets)
        await _collect(first, lambda seen: bool(seen))  # handed out, never committed
    finally:
        await asyncio.wait_for(first.stop(), timeout=30)
    done = committed_batch.next_offsets
    committed = await _group_committed(broker.bootstrap_servers, settings.kafka.group_id,
                                       partitions)
    assert {tp: off for tp, off in committed.items() if off is not None} == done

    # 2) a new member of the group gets exactly everything not committed
    expected_rest = {(t, p, o) for t, p, o in everything if o >= done.get((t, p), 0)}
    second = FaustSource(settings)
    try:
        await asyncio.wait_for(second.start(), timeout=60)
        seen, _ = await _collect(second, lambda seen: seen >= expected_rest, commit=True)
        assert seen == expected_rest
        assert second.committed == ends
    finally:
        await asyncio.wait_for(second.stop(), timeout=30)
    committed = await _group_committed(broker.bootstrap_servers, settings.kafka.group_id,
                                       partitions)
    assert committed == ends


def test_bad_arguments() -> None:
    settings = load_settings(None, models=MODELS, reference={"fit_from_champion_events": 10})
    with pytest.raises(ValueError, match="stop_timeout_s must be a finite number > 0, got 0"):
        FaustSource(settings, stop_timeout_s=0)
    with pytest.raises(ValueError, match=r"commit_interval_s .* got nan"):
        FaustSource(settings, commit_interval_s=float("nan"))
    empty = load_settings(None, models=MODELS, reference={"fit_from_champion_events": 10},
                          kafka={"bootstrap_servers": " , "})
    with pytest.raises(ValueError, match="names no broker"):
        FaustSource(empty)

