"""Event time per partition, future timestamps and duplicates, through Kafka.

On the embedded broker (tansu), with a real `driftgate run` (issue #11):

* a 30-minute backlog over 4 prediction partitions of very different volumes
  (4x between the largest and the smallest), produced before the service
  starts and fetched in small slices, so the partitions are read at different
  event-time speeds: 0 late events, and every count, histogram (PSI/KL/JS) and
  KPI equals the offline oracle over the last window;
* after that backlog, one prediction stamped behind watermark - allowed
  lateness is still counted late and leaves the window as it was, while one
  within the allowed lateness enters it;
* one prediction stamped ten years ahead among 1,000 normal ones (librdkafka,
  lz4) is dead-lettered as ``future_timestamp`` and never moves the watermark:
  every normal event is counted in its window;
* copies of predictions (pending or already joined) and of labels, re-sent
  through Kafka, are counted only as duplicates: every total, window,
  confusion count and ADWIN stream equals that of the originals alone.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer

from detectors import ReferenceProfile
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.ports import free_port
from monitor.sandbox.traffic import TrafficGenerator
from tests.integration.helpers import (
    GROUP_TUNING,
    DriftgateProcess,
    read_dead_letters,
    setup_topics,
    wait_until,
)
from tests.support import (
    MODEL,
    Expected,
    assert_divergences_and_kpis,
    encode,
    fit_reference,
    oracle,
    parse_metrics,
    produce_aiokafka,
    produce_librdkafka,
    sample,
    write_config,
)

pytestmark = pytest.mark.integration

#: aiokafka producer batches: small, so the service reads in many small fetches
SMALL_BATCH = 16 * 1024

SLICE = 10.0
WINDOW = 600.0
LATENESS = 120.0  # allowed lateness: much less than the 30 minutes of the backlog
VERSIONS = ("v1", "v2")
Metrics = dict[str, dict[tuple[tuple[str, str], ...], float]]

# the backlog: 30 minutes per partition, ending an hour ago; events per second
# of event time per partition (7,200 predictions in all, 4x from first to last)
BACKLOG_SECONDS = 1800.0
BACKLOG_RATES = (2.0, 1.0, 0.5, 0.5)
_BACKLOG_SIZES = [round(BACKLOG_SECONDS * r) for r in BACKLOG_RATES]
# small fetches, so one poll holds a slice of each partition, not the backlog
FETCH = {"max_partition_fetch_bytes": 32 * 1024, "max_poll_records": 1000}


# ------------------------------------------------------------------ helpers
@functools.cache
def _reference() -> ReferenceProfile:
    return fit_reference()


def _write_config(tmp_path: Path, kafka: EmbeddedBroker, topics: dict[str, str],
                  **kafka_extra: Any) -> Path:
    ref_path = tmp_path / "reference.json"
    if not ref_path.exists():
        ref_path.write_text(_reference().to_json())
    group = f"et-{uuid.uuid4().hex[:8]}"
    return write_config(
        tmp_path / f"config-{group}.yaml",
        kafka={"bootstrap_servers": kafka.bootstrap_servers, "group_id": group,
               **topics, **GROUP_TUNING, **kafka_extra},
        reference={"path": str(ref_path)},
        windows={"slice_seconds": SLICE, "window_seconds": WINDOW,
                 "kpi_window_seconds": 3600, "allowed_lateness_seconds": LATENESS},
        codec={"max_message_bytes": 4096},
    )


def _records_consumed(dg: DriftgateProcess) -> int:
    """Records the service has handled (decoded, applied, committed), valid or not."""
    return int(sample(parse_metrics(dg.metrics()), "driftgate_batch_events_sum") or 0)


def _wait_consumed(dg: DriftgateProcess, n_records: int, timeout: float = 45) -> Metrics:
    wait_until(lambda: _records_consumed(dg) >= n_records, timeout=timeout,
               what=f"{n_records} records consumed")
    return parse_metrics(dg.metrics())


def _start(tmp_path: Path, config: Path) -> DriftgateProcess:
    return DriftgateProcess(config, free_port(), tmp_path / f"{config.stem}.log").start()


def _late(m: Metrics, version: str) -> float:
    return sample(m, "driftgate_late_events_total", model=MODEL, version=version) or 0.0


def _window(m: Metrics, version: str) -> float:
    return sample(m, "driftgate_window_events", model=MODEL, version=version) or 0.0


def _divergences(m: Metrics, version: str) -> dict[tuple[str, str, str], float]:
    out: dict[tuple[str, str, str], float] = {}
    for name in ("driftgate_psi", "driftgate_kl_divergence", "driftgate_js_divergence"):
        for labels, value in m.get(name, {}).items():
            d = dict(labels)
            if d.get("version") == version:
                out[(name, d["feature"], d["baseline"])] = value
    return out


def _assert_matches_oracle(m: Metrics, exp: Expected, kpis: bool = True) -> None:
    """Totals, windows, confusion counts, histograms (via PSI/KL/JS) and KPIs
    equal the offline computation; nothing counted late."""
    assert set(exp.predictions) == {(MODEL, v) for v in VERSIONS}
    for (model, version), n in exp.predictions.items():
        totals = {kind: sample(m, "driftgate_events_total", model=model, version=version,
                               kind=kind) for kind in ("prediction", "label")}
        assert totals == {"prediction": n, "label": exp.joined[(model, version)]}, version
        assert _late(m, version) == 0, version
        assert sample(m, "driftgate_late_labels_total", model=model, version=version) == 0
        assert _window(m, version) == exp.window_events[(model, version)], version
        cells = {cell: sample(m, "driftgate_confusion_total", model=model, version=version,
                              cell=cell) for cell in ("tp", "fp", "fn", "tn")}
        assert cells == {c: exp.confusion[(model, version)][c] for c in cells}, version
    assert_divergences_and_kpis(m, exp, kpis)


def _adwin_counts_once(m: Metrics, exp: Expected) -> None:
    """Each ADWIN stream saw each original once: its width is the number of
    originals (joined ones for the error stream) unless it detected a change
    (which drops the older part of the window)."""
    for (model, version), n in exp.predictions.items():
        for stream, count in (("score", n), ("error", exp.joined[(model, version)])):
            width = sample(m, "driftgate_adwin_width", model=model, version=version,
                           stream=stream)
            det = sample(m, "driftgate_adwin_detections_total", model=model,
                         version=version, stream=stream)
            assert width is not None, (version, stream)
            assert det is not None, (version, stream)
            if det == 0:
                assert width == count, (version, stream, width, count)
            else:
                assert width <= count, (version, stream, width, count)


def _nothing_rejected(m: Metrics) -> None:
    assert not any(m.get("driftgate_invalid_events_total", {}).values()), \
        m.get("driftgate_invalid_events_total")


# ------------------------------------------------------- 1, 2: the backlog
def _backlog() -> tuple[list[list[dict[str, Any]]], list[list[dict[str, Any]]]]:
    """Per partition, 30 minutes of predictions in event-time order (ending an
    hour ago) and their labels."""
    end = math.floor(time.time() / SLICE) * SLICE - 3600.0
    start = end - BACKLOG_SECONDS
    preds: list[list[dict[str, Any]]] = []
    labels: list[list[dict[str, Any]]] = []
    for part, rate in enumerate(BACKLOG_RATES):
        gen = TrafficGenerator(seed=100 + part, canary_share=0.3, fraud_rate=0.03)
        batch = gen.generate(round(BACKLOG_SECONDS * rate), start, rate)
        preds.append(batch.predictions)
        labels.append(batch.labels)
    return preds, labels


async def _arrival_spread(bootstrap: str, topics: list[str], predictions_topic: str,
                          total: int) -> tuple[float, int]:
    """Read the backlog as the service will (no group, same fetch sizes): the
    largest gap between the partitions' event times (largest timestamp read so
    far, over partitions not yet finished) at a poll, and how many predictions
    a single running maximum over all partitions would have counted late."""
    consumer = AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=100, **FETCH)
    await consumer.start()
    try:
        marks: dict[int, float] = {}
        read: Counter[int] = Counter()
        seen, spread, late_if_global = 0, 0.0, 0
        running_max = -math.inf
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while seen < total and loop.time() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                seen += len(msgs)
                if tp.topic != predictions_topic:
                    continue
                for msg in msgs:
                    ts = float(json.loads(msg.value)["ts"])
                    late_if_global += ts < running_max - LATENESS
                    running_max = max(running_max, ts)
                    marks[tp.partition] = max(marks.get(tp.partition, -math.inf), ts)
                    read[tp.partition] += 1
            active = [wm for p, wm in marks.items() if read[p] < _BACKLOG_SIZES[p]]
            if len(active) > 1:
                spread = max(spread, max(active) - min(active))
        assert seen == total, f"read {seen} of {total} backlog records"
        return spread, late_if_global
    finally:
        await consumer.stop()


@pytest.fixture(scope="module")
def backlog(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    """The 4-partition backlog produced first, then a service started over it;
    yields the service, the events and a /metrics snapshot taken when all of
    them were consumed."""
    tmp_path = tmp_path_factory.mktemp("backlog")
    topics = asyncio.run(setup_topics(kafka, len(BACKLOG_RATES)))
    preds_by_part, labels_by_part = _backlog()
    assert [len(p) for p in preds_by_part] == _BACKLOG_SIZES
    bootstrap = kafka.bootstrap_servers
    for part, (preds, labels) in enumerate(zip(preds_by_part, labels_by_part, strict=True)):
        asyncio.run(produce_aiokafka(bootstrap, topics["predictions_topic"], None,
                                     [encode(p) for p in preds], [part] * len(preds),
                                     max_batch_size=SMALL_BATCH))
        asyncio.run(produce_aiokafka(bootstrap, topics["labels_topic"], None,
                                     [encode(lab) for lab in labels], [part] * len(labels),
                                     max_batch_size=SMALL_BATCH))
    preds = [p for ps in preds_by_part for p in ps]
    labels = [lab for ls in labels_by_part for lab in ls]
    total = len(preds) + len(labels)
    spread, late_if_global = asyncio.run(_arrival_spread(
        bootstrap, [topics["predictions_topic"], topics["labels_topic"]],
        topics["predictions_topic"], total))
    dg = _start(tmp_path, _write_config(tmp_path, kafka, topics, **FETCH))
    try:
        _wait_consumed(dg, total)
        # the last poll found every partition at its end: the watermark reaches
        # the largest timestamp (the held slices of the fast partitions are in)
        last = max(p["ts"] for p in preds)
        wait_until(lambda: sample(parse_metrics(dg.metrics()),
                                  "driftgate_watermark_timestamp_seconds") == last,
                   timeout=45, what="the watermark at the backlog's last timestamp")
        m = parse_metrics(dg.metrics())
        yield {"dg": dg, "topics": topics, "preds": preds, "labels": labels,
               "metrics": m, "spread": spread, "late_if_global": late_if_global}
    finally:
        dg.kill()


def test_backlog_over_four_partitions_counts_nothing_late(backlog: dict[str, Any]) -> None:
    preds, labels, m = backlog["preds"], backlog["labels"], backlog["metrics"]
    assert len(preds) == sum(_BACKLOG_SIZES) == 7200
    assert max(_BACKLOG_SIZES) == 4 * min(_BACKLOG_SIZES)
    # the partitions really are read at different event-time speeds: at some
    # poll one partition was ahead of another by more than the allowed lateness,
    # and one running maximum over all of them (the old watermark) would have
    # counted many events late. (How far ahead depends on how the broker's
    # fetches fall: 547 to 1,330 s were seen under load, so the bound is the
    # one that matters, the allowed lateness, not a multiple of it.)
    assert backlog["spread"] > LATENESS, backlog["spread"]
    assert backlog["late_if_global"] > len(preds) // 10, backlog["late_if_global"]
    # ... and the service read it in many polls, not in one
    assert (sample(m, "driftgate_batch_events_count") or 0) >= (
        len(preds) + len(labels)) / FETCH["max_poll_records"]
    exp = oracle(preds, labels, _reference(), slice_seconds=SLICE, window_seconds=WINDOW)
    assert sum(exp.window_events.values()) < len(preds)  # the window is the last 10 min
    _assert_matches_oracle(m, exp)
    _adwin_counts_once(m, exp)
    _nothing_rejected(m)
    assert sample(m, "driftgate_labels_received_total") == len(labels)
    assert sample(m, "driftgate_watermark_timestamp_seconds") == max(p["ts"] for p in preds)
    for kind in ("prediction", "label"):
        assert sample(m, "driftgate_duplicate_events_total", kind=kind) == 0
        assert sample(m, "driftgate_join_pending", kind=kind) == 0
    assert "Traceback" not in backlog["dg"].log.read_text()


def test_a_genuinely_late_event_is_still_counted_late(kafka: EmbeddedBroker,
                                                      backlog: dict[str, Any]) -> None:
    dg, topics = backlog["dg"], backlog["topics"]
    before = parse_metrics(dg.metrics())
    wm = sample(before, "driftgate_watermark_timestamp_seconds")
    assert wm is not None
    assert math.isfinite(wm)
    template = backlog["preds"][0]
    n0 = _records_consumed(dg)

    def send(event_id: str, ts: float, partition: int) -> Metrics:
        event = {**template, "event_id": event_id, "model_version": "v1", "ts": ts}
        n = _records_consumed(dg)
        asyncio.run(produce_aiokafka(kafka.bootstrap_servers, topics["predictions_topic"],
                                     None, [encode(event)], [partition]))
        return _wait_consumed(dg, n + 1, timeout=30)

    # behind the watermark by more than the allowed lateness, yet its slice is
    # still inside the window: late by the lateness rule alone
    late_ts = wm - LATENESS - 180.0
    assert math.floor(late_ts / SLICE) > math.floor(wm / SLICE) - WINDOW / SLICE
    after = send("late-1", late_ts, partition=1)
    assert _records_consumed(dg) == n0 + 1
    def v1_total(m: Metrics) -> float:
        return sample(m, "driftgate_events_total", model=MODEL, version="v1",
                      kind="prediction") or 0.0

    assert v1_total(after) == v1_total(before) + 1
    assert _late(after, "v1") == _late(before, "v1") + 1
    assert _late(after, "v2") == _late(before, "v2")
    for v in VERSIONS:
        assert _window(after, v) == _window(before, v), v
        assert _divergences(after, v) == _divergences(before, v), v
    assert sample(after, "driftgate_watermark_timestamp_seconds") == wm
    # control: within the allowed lateness, the same event enters its window
    after2 = send("on-time-1", wm - LATENESS / 4, partition=2)
    assert _late(after2, "v1") == _late(after, "v1")
    assert _window(after2, "v1") == _window(after, "v1") + 1
    assert _window(after2, "v2") == _window(after, "v2")
    assert sample(after2, "driftgate_watermark_timestamp_seconds") == wm


# ------------------------------------------------------ 3: ten years ahead
def test_an_event_ten_years_ahead_is_refused_and_moves_nothing(
        kafka: EmbeddedBroker, tmp_path: Path) -> None:
    topics = asyncio.run(setup_topics(kafka, 2))
    now = time.time()
    gen = TrafficGenerator(seed=31, canary_share=0.3, fraud_rate=0.03)
    normal = gen.generate(1000, now - 400.0, 1000 / 300.0)  # 300 s, ending 100 s ago
    preds = normal.predictions
    future = {**preds[0], "event_id": "from-the-future",
              "ts": round(now + 10 * 365.25 * 86_400, 3)}
    values = [encode(p) for p in preds]
    parts = [i % 2 for i in range(len(preds))]
    # early in partition 0, so most normal events come after it
    values.insert(6, encode(future))
    parts.insert(6, 0)
    produce_librdkafka(kafka.bootstrap_servers, topics["predictions_topic"], "lz4", values,
                       parts)
    dg = _start(tmp_path, _write_config(tmp_path, kafka, topics))
    m = _wait_consumed(dg, len(values))
    assert sample(m, "driftgate_invalid_events_total", kind="prediction",
                  reason="future_timestamp") == 1
    assert sum(m.get("driftgate_invalid_events_total", {}).values()) == 1
    assert sample(m, "driftgate_dead_letter_records_total") == 1
    dlq = asyncio.run(read_dead_letters(kafka.bootstrap_servers, topics["dead_letter_topic"], 1))
    assert len(dlq) == 1
    headers = dict(dlq[0].headers)
    assert headers["driftgate-reason"] == b"future_timestamp"
    assert dlq[0].value == encode(future)
    # the watermark is the normal events' (all partitions caught up: their last)
    first, last = min(p["ts"] for p in preds), max(p["ts"] for p in preds)
    wm = sample(m, "driftgate_watermark_timestamp_seconds")
    assert wm is not None
    assert first <= wm <= last, (wm, first, last)
    wait_until(lambda: sample(parse_metrics(dg.metrics()),
                              "driftgate_watermark_timestamp_seconds") == last,
               timeout=30, what="the watermark at the last normal timestamp")
    m = parse_metrics(dg.metrics())
    exp = oracle(preds, [], _reference(), slice_seconds=SLICE, window_seconds=WINDOW)
    assert sum(exp.window_events.values()) == len(preds)  # all inside one window
    _assert_matches_oracle(m, exp, kpis=False)
    assert sum(_window(m, v) for v in VERSIONS) == len(preds)
    assert sum(_late(m, v) for v in VERSIONS) == 0
    assert dg.terminate() == 0


# -------------------------------------------------------- 4: duplicates
def test_copies_through_kafka_are_counted_once(kafka: EmbeddedBroker,
                                               tmp_path: Path) -> None:
    """Originals, then copies of predictions while pending, copies of labels
    next to their originals, then copies of joined predictions, of pending
    ones and of joined labels, interleaved on both topics."""
    rng = random.Random(4)
    n_parts = 3
    topics = asyncio.run(setup_topics(kafka, n_parts))
    bootstrap = kafka.bootstrap_servers
    now = time.time()
    gen = TrafficGenerator(seed=41, canary_share=0.4, fraud_rate=0.05)
    traffic = gen.generate(1500, now - 500.0, 1500 / 400.0)
    preds = traffic.predictions
    by_id = {p["event_id"]: p for p in preds}
    labelled = rng.sample(sorted(by_id), k=1200)
    labels = [lab for lab in traffic.labels if lab["event_id"] in set(labelled)]
    unlabelled = sorted(set(by_id) - set(labelled))
    part_of = {p["event_id"]: rng.randrange(n_parts) for p in preds}

    def records(events: list[tuple[dict[str, Any], bool]]) -> tuple[list[bytes], list[int]]:
        # an original goes to its partition; a copy to its own or another one
        return ([encode(e) for e, _ in events],
                [rng.randrange(n_parts) if copy else part_of[e["event_id"]]
                 for e, copy in events])

    def interleave(originals: list[dict[str, Any]], copies: list[dict[str, Any]]
                   ) -> list[tuple[dict[str, Any], bool]]:
        """Each copy at a random place after its original (or anywhere, when the
        original was sent earlier)."""
        out: list[tuple[dict[str, Any], bool]] = [(e, False) for e in originals]
        pos = {e["event_id"]: i for i, (e, _) in enumerate(out)}
        for c in copies:
            lo = pos.get(c["event_id"], -1) + 1
            out.insert(rng.randint(lo, len(out)), (c, True))
            pos = {e["event_id"]: i for i, (e, copy) in enumerate(out) if not copy}
        return out

    dg = _start(tmp_path, _write_config(tmp_path, kafka, topics))
    produced = 0
    # 1. the predictions, with copies of some while they are pending (no label yet)
    pending_copies = [by_id[i] for i in rng.sample(sorted(by_id), k=150)]
    values, parts = records(interleave(preds, pending_copies))
    produce_librdkafka(bootstrap, topics["predictions_topic"], "lz4", values, parts)
    produced += len(values)
    m = _wait_consumed(dg, produced)
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == 150
    assert sample(m, "driftgate_join_pending", kind="prediction") == len(preds)
    # 2. the labels, with copies of some of them among them
    label_by_id = {lab["event_id"]: lab for lab in labels}
    label_copies = [label_by_id[i] for i in rng.sample(sorted(label_by_id), k=100)]
    values, parts = records(interleave(labels, label_copies))
    asyncio.run(produce_aiokafka(bootstrap, topics["labels_topic"], None, values, parts,
                                 max_batch_size=SMALL_BATCH))
    produced += len(values)
    m = _wait_consumed(dg, produced)
    assert sample(m, "driftgate_duplicate_events_total", kind="label") == 100
    # 3. copies of joined predictions, of still pending ones and of joined labels,
    # on both topics at once (a replay of the last hour upstream)
    joined_copies = [by_id[i] for i in rng.sample(labelled, k=200)]
    pending_again = [by_id[i] for i in rng.sample(unlabelled, k=60)]
    late_label_copies = [label_by_id[i] for i in rng.sample(labelled, k=120)]
    p_copies = interleave([], joined_copies + pending_again)
    rng.shuffle(p_copies)
    pv, pp = records(p_copies)
    lv, lp = records(interleave([], late_label_copies))

    async def both() -> None:
        await asyncio.gather(
            produce_aiokafka(bootstrap, topics["labels_topic"], None, lv, lp,
                             max_batch_size=SMALL_BATCH),
            asyncio.to_thread(produce_librdkafka, bootstrap, topics["predictions_topic"],
                              "lz4", pv, pp))

    asyncio.run(both())
    produced += len(pv) + len(lv)
    m = _wait_consumed(dg, produced)
    n_pred_copies = len(pending_copies) + len(joined_copies) + len(pending_again)
    n_label_copies = len(label_copies) + len(late_label_copies)
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == n_pred_copies
    assert sample(m, "driftgate_duplicate_events_total", kind="label") == n_label_copies
    # every other count is that of the originals alone
    exp = oracle(preds, labels, _reference(), slice_seconds=SLICE, window_seconds=WINDOW)
    assert sum(exp.window_events.values()) == len(preds)
    _assert_matches_oracle(m, exp)
    _adwin_counts_once(m, exp)
    _nothing_rejected(m)
    assert sample(m, "driftgate_labels_received_total") == len(labels)
    assert sample(m, "driftgate_join_pending", kind="prediction") == len(unlabelled)
    assert sample(m, "driftgate_join_pending", kind="label") == 0
    for reason in ("ttl", "capacity", "no_prediction"):
        assert sample(m, "driftgate_unmatched_labels_total", reason=reason) == 0, reason
    assert sample(m, "driftgate_join_evictions_total", reason="ttl") == 0
    status = dg.get("/v1/status").json()
    for v in VERSIONS:
        assert status["models"][MODEL]["versions"][v]["predictions"] == \
            exp.predictions[(MODEL, v)], v
    assert dg.terminate() == 0
    assert "Traceback" not in dg.log.read_text()
