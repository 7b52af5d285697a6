"""The /metrics exposition passes `promtool check metrics` (Prometheus' own linter)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from monitor.config import load_settings
from monitor.core.metrics import EngineCollector, ServiceMetrics, skipped_batch_metrics
from monitor.engine import Engine
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.ingest.sources import SourceStatus
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import MODEL, encode, fit_reference, parse_metrics, sample, write_config

pytestmark = pytest.mark.integration

START = 1_700_000_000.0


def _promtool() -> str:
    """promtool's path; fails (never skips) when missing: `make test` installs it."""
    path = shutil.which("promtool") or ("/usr/bin/promtool"
                                        if Path("/usr/bin/promtool").is_file() else None)
    if path is None:
        pytest.fail("promtool is not installed (make test installs it)")
    return path


def _check(text: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([_promtool(), "check", "metrics"], input=text, capture_output=True,
                          timeout=60, check=False)


def test_exposition_passes_promtool(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml",
                                          reference={"fit_from_champion_events": 10},
                                          join={"max_pending": 500, "ttl_seconds": 60}))
    engine = Engine(settings, fit_reference(n=5000))
    codec = EventCodec(settings)
    gen = TrafficGenerator(seed=3, canary_share=0.3, bug_at=START + 40)
    batch = gen.generate(4000, START, 50.0)
    preds = [RawRecord("predictions", 0, i, encode(e)) for i, e in enumerate(batch.predictions)]
    preds.append(RawRecord("predictions", 0, len(preds), b"{not json"))
    labels = [RawRecord("labels", 0, i, encode(e)) for i, e in enumerate(batch.labels[:3000])]
    labels.append(RawRecord("labels", 0, len(labels), encode({"event_id": "x", "label": 9})))
    labels.append(RawRecord("labels", 0, len(labels), encode({"event_id": "orphan",
                                                              "label": 1})))
    for lo in range(0, len(preds), 500):
        decoded = codec.decode(preds[lo:lo + 500], labels[lo:lo + 500])
        for rj in decoded.rejected:
            engine.record_invalid(rj.record.topic.rstrip("s"), rj.reason)
        engine.process(decoded)
    engine.process(codec.decode([preds[-2]]))  # a duplicate of a pending id
    assert engine.evictions["capacity"] > 0

    registry = CollectorRegistry()
    metrics = ServiceMetrics(registry)
    metrics.batch_duration.observe(0.003)
    metrics.batch_events.observe(500)
    status = SourceStatus(assigned={("predictions", 0), ("labels", 0)},
                          lag={("predictions", 0): 12, ("labels", 0): 0}, connected=True,
                          dead_lettered=2)
    skipped = {("predictions", "crc_mismatch"): 1, ("labels", "unsupported_codec"): 0}
    metrics.register(EngineCollector(engine, status=lambda: status, ready=lambda: True,
                                     extra=lambda: skipped_batch_metrics(
                                         skipped, {("predictions", "crc_mismatch"): 4})))
    text = generate_latest(registry)

    # the exposition is the real thing: every family is there with real values
    m = parse_metrics(text.decode())
    assert sample(m, "driftgate_events_total", model=MODEL, version="v2",
                  kind="prediction") == sum(1 for p in batch.predictions
                                            if p["model_version"] == "v2")
    assert sample(m, "driftgate_canary_kpi_p_value", model=MODEL, version="v2",
                  kpi="alert_rate") is not None
    assert sample(m, "driftgate_psi", model=MODEL, version="v2", feature="txn_velocity_1h",
                  baseline="champion") is not None
    assert sample(m, "driftgate_invalid_events_total", kind="prediction",
                  reason="not_json") == 1
    assert sample(m, "driftgate_invalid_events_total", kind="label", reason="bad_label") == 1
    assert sample(m, "driftgate_duplicate_events_total", kind="prediction") == 1
    assert sample(m, "driftgate_skipped_offsets_total", topic="predictions",
                  reason="crc_mismatch") == 4
    # the horizon is the join TTL (60 s): the oldest of the 80 s of ids have expired
    assert 0 < (sample(m, "driftgate_dedupe_ids", kind="prediction") or 0) < len(batch.predictions)
    assert sample(m, "driftgate_dedupe_memory_bytes", kind="label") is not None
    assert sample(m, "driftgate_dedupe_evictions_total", kind="prediction") == 0
    assert sample(m, "driftgate_partition_watermark_timestamp_seconds",
                  partition="0") == max(p["ts"] for p in batch.predictions)

    result = _check(text)
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout == b"", result.stdout.decode()
    assert result.stderr == b"", result.stderr.decode()


def test_promtool_catches_a_bad_exposition() -> None:
    # the check is not vacuous: a counter without _total and a camelCase name are flagged
    bad = (b"# HELP fooCount things\n# TYPE fooCount counter\nfooCount 1\n")
    result = _check(bad)
    assert result.returncode != 0
    out = (result.stdout + result.stderr).decode()
    assert '"_total" suffix' in out
    assert "snake_case" in out


def test_fresh_engine_passes_promtool(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml",
                                          reference={"fit_from_champion_events": 10}))
    registry = CollectorRegistry()
    registry.register(EngineCollector(Engine(settings, fit_reference(n=2000))))
    result = _check(generate_latest(registry))
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert result.stdout == b""
    assert result.stderr == b""
