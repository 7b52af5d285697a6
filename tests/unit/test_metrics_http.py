"""Tests of monitor.core.metrics (the scrape-time collector) and monitor.serve.http
(the aiohttp API)."""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.metrics import EngineCollector, ServiceMetrics
from monitor.core.service import Service
from monitor.engine import Engine
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord, Record
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.sandbox.traffic import TrafficGenerator
from monitor.serve.http import build_app
from tests.support import MODEL, encode, fit_reference, oracle, parse_metrics, sample, write_config

START = 1_700_000_000.0
INVALID = [b"{oops", encode({"event_id": "bad", "model": MODEL, "model_version": "v1",
                             "ts": START, "score": 7.0})]


@pytest.fixture(scope="module")
def ref() -> ReferenceProfile:
    return fit_reference(n=5000)


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gen = TrafficGenerator(seed=4, canary_share=0.3, fraud_rate=0.03, bug_at=START + 20)
    batch = gen.generate(2000, START, 50.0)
    return batch.predictions, batch.labels


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(write_config(tmp_path / "c.yaml",
                                      reference={"fit_from_champion_events": 10},
                                      http={"ready_max_lag": 100}))


def records(preds: list[dict[str, Any]], labels: list[dict[str, Any]]
            ) -> tuple[list[Record], list[Record]]:
    p: list[Record] = [RawRecord("predictions", 0, i, encode(e)) for i, e in enumerate(preds)]
    p += [RawRecord("predictions", 0, len(p) + i, v) for i, v in enumerate(INVALID)]
    lab: list[Record] = [RawRecord("labels", 0, i, encode(e)) for i, e in enumerate(labels)]
    return p, lab


@pytest.fixture
def engine(settings: Settings, ref: ReferenceProfile,
           traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> Engine:
    eng = Engine(settings, ref)
    decoded = EventCodec(settings).decode(*records(*traffic))
    for rj in decoded.rejected:
        eng.record_invalid("prediction", rj.reason)
    eng.process(decoded)
    return eng


# ---------------------------------------------------------------------------
# the collector
# ---------------------------------------------------------------------------


def _exposition(engine: Engine, status: SourceStatus | None = None) -> str:
    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.batch_duration.observe(0.01)
    metrics.register(EngineCollector(engine, status=(lambda: status) if status else None,
                                     ready=lambda: True))
    return generate_latest(registry).decode()


def test_exposition_parses_and_follows_naming(engine: Engine) -> None:
    status = SourceStatus(assigned={("predictions", 0), ("labels", 0)},
                          lag={("predictions", 0): 3, ("labels", 0): 0}, connected=True,
                          dead_lettered=2)
    text = _exposition(engine, status)
    families = list(text_string_to_metric_families(text))
    assert len(families) > 20
    names = set()
    for fam in families:
        assert fam.name.startswith("driftgate_"), fam.name
        assert fam.documentation, fam.name
        for s in fam.samples:
            names.add(s.name)
            assert s.name.startswith("driftgate_"), s.name
            assert "event_id" not in s.labels, s
            if fam.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name
    for required in ("driftgate_events_total", "driftgate_confusion_total",
                     "driftgate_invalid_events_total", "driftgate_psi",
                     "driftgate_kpi_ratio", "driftgate_canary_kpi_p_value",
                     "driftgate_consumer_lag", "driftgate_assigned_partitions",
                     "driftgate_dead_letter_records_total", "driftgate_ready",
                     "driftgate_batch_duration_seconds_bucket",
                     "driftgate_watermark_timestamp_seconds", "driftgate_reference_info",
                     "driftgate_dedupe_ids", "driftgate_dedupe_memory_bytes",
                     "driftgate_dedupe_evictions_total",
                     "driftgate_partition_watermark_timestamp_seconds"):
        assert required in names, required
    counters = {f.name for f in families if f.type == "counter"}
    assert {"driftgate_events", "driftgate_late_events", "driftgate_confusion",
            "driftgate_join_evictions", "driftgate_unmatched_labels",
            "driftgate_invalid_events", "driftgate_duplicate_events",
            "driftgate_dedupe_evictions"} <= counters


def test_exposition_values_match_the_oracle(engine: Engine, ref: ReferenceProfile,
                                            traffic: tuple[list[dict[str, Any]],
                                                           list[dict[str, Any]]]) -> None:
    preds, labels = traffic
    m = parse_metrics(_exposition(engine, SourceStatus(assigned={("predictions", 0)},
                                                       lag={("predictions", 0): 7},
                                                       connected=True)))
    exp = oracle(preds, labels, ref, slice_seconds=10, window_seconds=600)
    for (model, version), n in exp.predictions.items():
        mv = {"model": model, "version": version}
        assert sample(m, "driftgate_events_total", kind="prediction", **mv) == n
        assert sample(m, "driftgate_events_total", kind="label", **mv) == exp.joined[
            (model, version)]
        assert sample(m, "driftgate_window_events", **mv) == exp.window_events[
            (model, version)]
        for cell in ("tp", "fp", "fn", "tn"):
            assert sample(m, "driftgate_confusion_total", cell=cell, **mv) == exp.confusion[
                (model, version)][cell]
    for (model, version, feature, baseline), value in exp.psi.items():
        got = sample(m, "driftgate_psi", model=model, version=version, feature=feature,
                     baseline=baseline)
        assert got == pytest.approx(value, rel=1e-9, abs=1e-12), (feature, baseline)
    assert sample(m, "driftgate_invalid_events_total", kind="prediction",
                  reason="not_json") == 1
    assert sample(m, "driftgate_invalid_events_total", kind="prediction",
                  reason="score_out_of_range") == 1
    assert sample(m, "driftgate_labels_received_total") == len(labels)
    assert sample(m, "driftgate_consumer_lag", topic="predictions", partition="0") == 7
    assert sample(m, "driftgate_assigned_partitions") == 1
    assert sample(m, "driftgate_version_role", model=MODEL, version="v2", role="canary") == 1
    assert sample(m, "driftgate_watermark_timestamp_seconds") == max(p["ts"] for p in preds)
    assert sample(m, "driftgate_join_pending", kind="prediction") == 0
    assert sample(m, "driftgate_ready") == 1


def test_fresh_engine_exposition(settings: Settings, ref: ReferenceProfile) -> None:
    text = _exposition(Engine(settings, ref))
    m = parse_metrics(text)
    assert "driftgate_events_total" not in m
    assert "driftgate_watermark_timestamp_seconds" not in m  # no events, no watermark
    assert "driftgate_partition_watermark_timestamp_seconds" not in m
    for kind in ("prediction", "label"):
        assert sample(m, "driftgate_dedupe_ids", kind=kind) == 0
        assert sample(m, "driftgate_dedupe_evictions_total", kind=kind) == 0
    assert sample(m, "driftgate_join_evictions_total", reason="ttl") == 0
    assert all(not math.isnan(v) for series in m.values() for v in series.values())


def _dedupe_engine(tmp_path: Path, ref: ReferenceProfile,
                   traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]],
                   **dedupe: Any) -> Engine:
    """An engine fed the traffic over predictions partitions 0 and 1, then a copy
    of three predictions and two labels."""
    settings = load_settings(write_config(tmp_path / "d.yaml",
                                          reference={"fit_from_champion_events": 10},
                                          dedupe=dedupe))
    eng = Engine(settings, ref)
    preds, labels = traffic
    p = [RawRecord("predictions", i % 2, i // 2, encode(e)) for i, e in enumerate(preds)]
    lab = [RawRecord("labels", 0, i, encode(e)) for i, e in enumerate(labels)]
    codec = EventCodec(settings)
    eng.process(codec.decode(p, lab))
    eng.process(codec.decode(p[:3], lab[:2]))
    return eng


def test_dedupe_and_partition_watermark_series(
        tmp_path: Path, ref: ReferenceProfile,
        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, labels = traffic
    eng = _dedupe_engine(tmp_path, ref, traffic)
    eng.set_partitions({0, 1, 2}, set())  # partition 2: assigned, nothing delivered yet
    text = _exposition(eng)
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    assert fams["driftgate_dedupe_ids"].type == "gauge"
    assert fams["driftgate_dedupe_memory_bytes"].type == "gauge"
    assert fams["driftgate_dedupe_evictions"].type == "counter"
    assert fams["driftgate_partition_watermark_timestamp_seconds"].type == "gauge"
    m = parse_metrics(text)
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == 3
    assert sample(m, "driftgate_duplicate_events_total", kind="label") == 2
    assert eng.seen_predictions is not None
    assert eng.seen_labels is not None
    for kind, n, seen in (("prediction", len(preds), eng.seen_predictions),
                          ("label", len(labels), eng.seen_labels)):
        assert sample(m, "driftgate_dedupe_ids", kind=kind) == n  # copies not stored again
        nbytes = sample(m, "driftgate_dedupe_memory_bytes", kind=kind)
        assert nbytes == seen.nbytes
        assert 8 * n <= nbytes <= 16 * n
        assert sample(m, "driftgate_dedupe_evictions_total", kind=kind) == 0
    marks = (max(e["ts"] for e in preds[0::2]), max(e["ts"] for e in preds[1::2]))
    assert m["driftgate_partition_watermark_timestamp_seconds"] == {
        (("partition", "0"),): marks[0], (("partition", "1"),): marks[1],
    }  # no sample for partition 2 (-inf)
    assert sample(m, "driftgate_watermark_timestamp_seconds") == min(marks)


def test_dedupe_evictions_when_the_memory_cap_is_hit(
        tmp_path: Path, ref: ReferenceProfile,
        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    # 2000 predictions over 40 s, 10 s buckets, room for 1000 ids
    eng = _dedupe_engine(tmp_path, ref, traffic, max_ids=1000, horizon_seconds=160)
    m = parse_metrics(_exposition(eng))
    ids = sample(m, "driftgate_dedupe_ids", kind="prediction")
    evicted = sample(m, "driftgate_dedupe_evictions_total", kind="prediction")
    assert ids is not None
    assert evicted is not None
    assert 0 < ids <= 1000
    assert evicted > 0
    # the first ids were forgotten early: their copies went uncounted as such
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == 0
    assert ids + evicted == len(preds) + 3


def test_no_dedupe_series_when_dedupe_is_off(
        tmp_path: Path, ref: ReferenceProfile,
        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    eng = _dedupe_engine(tmp_path, ref, traffic, enabled=False)
    text = _exposition(eng)
    for name in ("driftgate_dedupe_ids", "driftgate_dedupe_memory_bytes",
                 "driftgate_dedupe_evictions"):
        assert f"# TYPE {name} " not in text, name
    m = parse_metrics(text)
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == 0
    assert sample(m, "driftgate_partition_watermark_timestamp_seconds",
                  partition="1") == max(e["ts"] for e in preds[1::2])


def test_collector_uses_an_injected_registry(engine: Engine) -> None:
    from prometheus_client import REGISTRY

    before = generate_latest(REGISTRY)
    _exposition(engine)
    assert b"driftgate_" not in before
    assert b"driftgate_events_total" not in generate_latest(REGISTRY)


# ---------------------------------------------------------------------------
# the HTTP API
# ---------------------------------------------------------------------------


class FakeSource:
    """A source that only reports a configurable status."""

    def __init__(self) -> None:
        self.st = SourceStatus()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def poll(self, timeout_s: float) -> SourceBatch:
        return SourceBatch()

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        return None

    def status(self) -> SourceStatus:
        return self.st

    @property
    def exhausted(self) -> bool:
        return False


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


@pytest.fixture
async def service(settings: Settings, ref: ReferenceProfile, source: FakeSource,
                  traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> Service:
    svc = Service(settings, source, MemoryDeadLetterSink(), reference=ref,
                  registry=CollectorRegistry(), clock=lambda: 1000.0)
    preds, labels = records(*traffic)
    await svc.handle(SourceBatch(predictions=preds, labels=labels,
                                 next_offsets={("predictions", 0): len(preds)}))
    return svc


@pytest.fixture
async def client(service: Service) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(build_app(service))) as c:
        yield c


def _strict_json(text: str) -> Any:
    def reject(token: str) -> None:
        raise ValueError(f"not JSON: {token}")

    return json.loads(text, parse_constant=reject)


async def test_healthz(client: TestClient[Any, Any]) -> None:
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json()) == {"status": "alive"}


async def test_readyz_follows_the_source(client: TestClient[Any, Any],
                                         source: FakeSource) -> None:
    source.st = SourceStatus(assigned=set(), connected=True)
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["ready"] is False
    assert body["assigned"] == 0
    source.st = SourceStatus(assigned={("predictions", 0), ("labels", 0)},
                             lag={("predictions", 0): 5, ("labels", 0): 0}, connected=True)
    resp = await client.get("/readyz")
    assert resp.status == 200
    body = await resp.json()
    assert body == {"ready": True, "connected": True, "assigned": 2, "max_lag": 5,
                    "reference": True}
    # lag above http.ready_max_lag (100)
    source.st = SourceStatus(assigned={("predictions", 0)}, lag={("predictions", 0): 101},
                             connected=True)
    assert (await client.get("/readyz")).status == 503
    # disconnected
    source.st = SourceStatus(assigned={("predictions", 0)}, connected=False)
    assert (await client.get("/readyz")).status == 503


async def test_status_document(client: TestClient[Any, Any], source: FakeSource,
                               service: Service, ref: ReferenceProfile,
                               traffic: tuple[list[dict[str, Any]],
                                              list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    source.st = SourceStatus(assigned={("predictions", 1)}, lag={("predictions", 1): 4},
                             connected=True)
    resp = await client.get("/v1/status")
    assert resp.status == 200
    assert resp.content_type == "application/json"
    doc = _strict_json(await resp.text())
    assert doc["ready"] is True
    assert doc["batches"] == 1
    assert doc["records"] == len(preds) * 2 + len(INVALID)
    assert doc["partitions"] == ["predictions/1"]
    assert doc["lag"] == {"predictions/1": 4}
    assert doc["reference"] == {"hash": ref.content_hash, "events": ref.n_events}
    assert doc["watermark"] == max(p["ts"] for p in preds)
    assert doc["join"]["pending_predictions"] == 0
    model = doc["models"][MODEL]
    assert model["roles"] == {"champion": "v1", "canary": "v2"}
    for version in ("v1", "v2"):
        v = model["versions"][version]
        n = sum(1 for p in preds if p["model_version"] == version)
        assert v["predictions"] == n
        assert v["labels_joined"] == n
        assert v["late"] == 0
        assert v["window_events"] == n
        assert v["role"] == {"v1": "champion", "v2": "canary"}[version]
        assert set(v["kpis"]) == {"catch_rate", "precision", "alert_rate",
                                  "amount_weighted_catch_rate"}
        assert v["kpis"]["alert_rate"]["n"] == n
        assert set(v["psi"]) >= {"amount", "merchant_category", "model_score"}
    assert "catch_rate" in model["canary_vs_champion"]["kpi_tests"]
    assert model["canary_vs_champion"]["psi"]["txn_velocity_1h"] > 0.1
    assert service.engine is not None
    assert dict(service.engine.invalid) == {("prediction", "not_json"): 1,
                                            ("prediction", "score_out_of_range"): 1}


async def test_status_before_any_event_is_strict_json(settings: Settings,
                                                      ref: ReferenceProfile,
                                                      source: FakeSource) -> None:
    svc = Service(settings, source, MemoryDeadLetterSink(), reference=ref,
                  registry=CollectorRegistry())
    async with TestClient(TestServer(build_app(svc))) as c:
        doc = _strict_json(await (await c.get("/v1/status")).text())
    assert doc["models"] == {}
    assert doc["watermark"] is None


async def test_metrics_endpoint(client: TestClient[Any, Any], source: FakeSource,
                                traffic: tuple[list[dict[str, Any]],
                                               list[dict[str, Any]]]) -> None:
    source.st = SourceStatus(assigned={("predictions", 0)}, connected=True)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"] == CONTENT_TYPE_LATEST
    assert resp.headers["Content-Type"].startswith("text/plain")
    m = parse_metrics(await resp.text())
    preds, _ = traffic
    n1 = sum(1 for p in preds if p["model_version"] == "v1")
    assert sample(m, "driftgate_events_total", model=MODEL, version="v1",
                  kind="prediction") == n1
    assert sample(m, "driftgate_batch_duration_seconds_count") == 1
    assert sample(m, "driftgate_batch_events_sum") == len(preds) * 2 + len(INVALID)
    assert sample(m, "driftgate_ready") == 1


async def test_not_ready_without_a_reference(tmp_path: Path, source: FakeSource) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml",
                                          reference={"fit_from_champion_events": 50}))
    svc = Service(settings, source, MemoryDeadLetterSink(), registry=CollectorRegistry())
    source.st = SourceStatus(assigned={("predictions", 0)}, connected=True)
    async with TestClient(TestServer(build_app(svc))) as c:
        resp = await c.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["reference"] is False
        assert (await c.get("/healthz")).status == 200
        doc = _strict_json(await (await c.get("/v1/status")).text())
        assert doc["reference"] is None
        assert (await c.get("/metrics")).status == 200
