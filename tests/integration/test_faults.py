"""Fault tests with real processes: broker, redis-server and driftgate.

Every process is started by the test and stopped by it; all waits are bounded.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.ports import free_port
from monitor.sandbox.traffic import TrafficGenerator
from tests.integration.helpers import (
    committed_offsets,
    produce,
    service_config,
    setup_topics,
    wait_until,
)
from tests.support import (
    all_consumed,
    assert_exact_metrics,
    encode,
    group_id_of,
    parse_metrics,
)

pytestmark = pytest.mark.integration

START = 1_700_000_000.0


def _predictions_seen(dg: Any) -> int:
    try:
        m = parse_metrics(dg.metrics())
    except Exception:
        return -1
    return int(sum(v for k, v in m.get("driftgate_events_total", {}).items()
                   if ("kind", "prediction") in k))


def _redis_stream(kafka: EmbeddedBroker, redis_server: LocalRedis, tmp_path: Path, n: int,
                  seed: int, name: str, max_poll_records: int, **state: Any
                  ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str], Path,
                             int]:
    """Produce ``n`` predictions and their labels (the canary breaks half-way) and
    write a Redis-state config with small polls, so faults land mid-stream."""
    import yaml

    gen = TrafficGenerator(seed=seed, canary_share=0.3, bug_at=START + n / 200 / 2)
    batch = gen.generate(n, START, 200.0)
    topics = asyncio.run(setup_topics(kafka, 4))
    keys = [p["event_id"].encode() for p in batch.predictions]
    asyncio.run(produce(kafka.bootstrap_servers, topics["predictions_topic"],
                        [encode(p) for p in batch.predictions], keys=keys))
    asyncio.run(produce(kafka.bootstrap_servers, topics["labels_topic"],
                        [encode(x) for x in batch.labels], keys=keys))
    port = free_port()
    cfg = service_config(tmp_path, kafka, topics, group=f"{name}-{uuid.uuid4().hex[:6]}",
                         port=port,
                         state={"backend": "redis", "redis_url": redis_server.url,
                                "instance_id": f"dg-{name}", "key_prefix": f"{name}:", **state})
    doc = yaml.safe_load(cfg.read_text())
    doc["kafka"]["max_poll_records"] = max_poll_records
    cfg.write_text(yaml.safe_dump(doc))
    return batch.predictions, batch.labels, topics, cfg, port


def test_kill9_five_times_counts_stay_exact(kafka: EmbeddedBroker, redis_server: LocalRedis,
                                            driftgate: Any, tmp_path: Path) -> None:
    n = 50_000
    preds, labels, _, cfg, port = _redis_stream(kafka, redis_server, tmp_path, n, seed=31,
                                                name="k9", max_poll_records=300)
    rng = random.Random(7)
    kill_points = sorted(rng.sample(range(3_000, 47_000), 5))
    dg = driftgate(cfg, port)
    kills = []
    for point in kill_points:
        wait_until(lambda p=point, d=dg: _predictions_seen(d) >= p, timeout=120, interval=0.01,
                   what=f"{point} predictions processed")
        kills.append(_predictions_seen(dg))
        dg.kill()
        dg = driftgate(cfg, port)
    assert len(kills) == 5

    wait_until(lambda: all_consumed(dg, n, n), timeout=180, what="the whole stream counted")
    time.sleep(1.5)  # a tick after the last batch: the global view is fresh
    assert_exact_metrics(parse_metrics(dg.metrics()), preds, labels)
    assert dg.terminate() == 0


def test_redis_killed_and_restarted_counts_stay_exact(kafka: EmbeddedBroker,
                                                      redis_server: LocalRedis,
                                                      driftgate: Any, tmp_path: Path) -> None:
    n = 30_000
    preds, labels, topics, cfg, port = _redis_stream(kafka, redis_server, tmp_path, n,
                                                     seed=41, name="rk", max_poll_records=200,
                                                     socket_timeout_seconds=1.0)
    dg = driftgate(cfg, port)
    wait_until(lambda: _predictions_seen(dg) >= 8_000, timeout=120, interval=0.01,
               what="8000 predictions processed")
    redis_server.kill()
    wait_until(lambda: dg.get("/readyz").status_code == 503, timeout=30,
               what="/readyz not ready while redis is down")
    tlist = [topics["predictions_topic"], topics["labels_topic"]]
    group = group_id_of(cfg)
    before = asyncio.run(committed_offsets(kafka.bootstrap_servers, group, tlist))
    time.sleep(3)
    during = asyncio.run(committed_offsets(kafka.bootstrap_servers, group, tlist))
    assert during == before, "a Kafka offset advanced while redis was down"
    assert dg.get("/readyz").status_code == 503
    redis_server.start()  # same port and directory: it reloads its AOF

    wait_until(lambda: all_consumed(dg, n, n), timeout=180,
               what="the whole stream counted after redis came back")
    time.sleep(1.5)
    assert_exact_metrics(parse_metrics(dg.metrics()), preds, labels)
    assert dg.get("/readyz").status_code == 200
    assert dg.terminate() == 0
