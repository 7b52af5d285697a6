"""More fault tests with real processes: broker pause, failover, webhook outage, secrets.

Every process (broker, redis-server, driftgate, router stub) is started by the
test and stopped by it; every wait is bounded; everything listens on loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.broker import EmbeddedBroker, free_port
from monitor.traffic import TrafficGenerator
from tests.integration.conftest import produce, wait_until
from tests.integration.test_service_e2e import _config, _setup_topics
from tests.support import encode, fit_reference, oracle, parse_metrics, sample

pytestmark = pytest.mark.integration

START = 1_700_000_000.0


def _events_total(dg: Any, kind: str) -> int:
    try:
        m = parse_metrics(dg.metrics())
    except Exception:
        return -1
    return int(sum(v for k, v in m.get("driftgate_events_total", {}).items()
                   if ("kind", kind) in k))


def _assert_counts_exact(metrics: dict[str, Any], preds: list[dict[str, Any]],
                         labels: list[dict[str, Any]]) -> None:
    exp = oracle(preds, labels, fit_reference(), slice_seconds=10, window_seconds=600)
    assert exp.predictions
    for (model, version), count in exp.predictions.items():
        assert sample(metrics, "driftgate_events_total", model=model, version=version,
                      kind="prediction") == count, (version, "prediction")
        assert sample(metrics, "driftgate_events_total", model=model, version=version,
                      kind="label") == exp.joined[(model, version)], (version, "label")
        assert sample(metrics, "driftgate_window_events", model=model,
                      version=version) == exp.window_events[(model, version)], version
        for cell in ("tp", "fp", "fn", "tn"):
            assert sample(metrics, "driftgate_confusion_total", model=model, version=version,
                          cell=cell) == exp.confusion[(model, version)][cell], (version, cell)
    assert sample(metrics, "driftgate_labels_received_total") == len(labels)
    dups = metrics.get("driftgate_duplicate_events_total", {})
    assert all(v == 0 for v in dups.values()), dups


# --------------------------------------------------------------------------- 1
def test_broker_paused_10s_mid_stream_reconnects_and_counts_exactly(
        driftgate: Any, tmp_path: Path) -> None:
    """SIGSTOP the broker for 10 s while driftgate consumes; no restart, exact counts."""
    n, rate = 8000, 50.0
    gen = TrafficGenerator(seed=41, canary_share=0.3, bug_at=START + n / rate / 2)
    batch = gen.generate(n, START, rate)
    preds, labels = batch.predictions, batch.labels
    keys = [p["event_id"].encode() for p in preds]
    half = n // 2
    # our own broker: pausing the module's shared one would disturb other tests
    with EmbeddedBroker(log_path=tmp_path / "broker.log") as broker:
        topics = asyncio.run(_setup_topics(broker, 4))
        bootstrap = broker.bootstrap_servers
        port = free_port()
        cfg = _config(tmp_path, broker, topics, group=f"pause-{uuid.uuid4().hex[:6]}",
                      port=port)
        doc = yaml.safe_load(cfg.read_text())
        doc["kafka"]["max_poll_records"] = 100  # many small batches: the pause lands inside
        cfg.write_text(yaml.safe_dump(doc))
        # the first half is in the broker before the service starts
        asyncio.run(produce(bootstrap, topics["predictions_topic"],
                            [encode(p) for p in preds[:half]], keys=keys[:half]))
        asyncio.run(produce(bootstrap, topics["labels_topic"],
                            [encode(x) for x in labels[:half]], keys=keys[:half]))
        dg = driftgate(cfg, port)
        assert dg.proc is not None
        pid = dg.proc.pid
        wait_until(lambda: _events_total(dg, "prediction") >= 300, timeout=60, interval=0.01,
                   what="consumption under way")
        broker.pause()
        try:
            paused_at = time.monotonic()
            seen_at_pause = _events_total(dg, "prediction") + _events_total(dg, "label")
            time.sleep(1)
            global _DBG
            _DBG = _events_total(dg, "prediction") + _events_total(dg, "label")
            # the service stays up (HTTP answers) while the broker is frozen
            while time.monotonic() - paused_at < 10:
                assert dg.proc.poll() is None, dg.log.read_text()[-3000:]
                assert dg.get("/healthz").status_code == 200
                time.sleep(0.5)
        finally:
            broker.resume()
        asyncio.run(produce(bootstrap, topics["predictions_topic"],
                            [encode(p) for p in preds[half:]], keys=keys[half:]))
        asyncio.run(produce(bootstrap, topics["labels_topic"],
                            [encode(x) for x in labels[half:]], keys=keys[half:]))

        def done() -> dict[str, Any] | None:
            m = parse_metrics(dg.metrics())
            p = sum(v for k, v in m.get("driftgate_events_total", {}).items()
                    if ("kind", "prediction") in k)
            rx = sample(m, "driftgate_labels_received_total") or 0
            return m if p >= n and rx >= n else None

        wait_until(done, timeout=90, what="the whole stream counted after the pause")
        time.sleep(1.5)  # more polls after the last batch: a double count would show
        metrics = parse_metrics(dg.metrics())
        # the same process did it all: it reconnected by itself
        assert dg.proc.pid == pid and dg.proc.poll() is None
        assert 0 < seen_at_pause < 2 * n, seen_at_pause
        print('DEBUG seen_at_pause', seen_at_pause, 'after 1s', _DBG)
        _assert_counts_exact(metrics, preds, labels)
        assert wait_until(lambda: dg.get("/readyz").status_code == 200, timeout=30,
                          what="ready again")
        assert dg.terminate() == 0
        log = dg.log.read_text()
        assert "Traceback" not in log, log[-3000:]
