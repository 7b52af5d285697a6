"""Bounded cardinality under a flood of junk names (issue #12), end to end.

A real ``driftgate run`` on the embedded broker gets 10,000 distinct
model/version names through Kafka, mixed with real champion and canary
traffic: with ``codec.allow_unknown_models: true`` (2,500 junk models of 4
versions each) and with it false (10,000 junk versions of the real model,
then a canary ``v3`` set through the admin API). The exported series stay
under :func:`monitor.core.metrics.max_series`, the process's memory grows by a
bounded amount, ``/healthz`` answers quickly throughout, the refusals are
counted by reason, and the real canary is still monitored.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.config import load_settings
from monitor.core.metrics import max_series
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.traffic import TrafficGenerator
from tests.integration.helpers import GROUP_TUNING, setup_topics, wait_until
from tests.support import (
    MODEL,
    encode,
    fit_reference,
    parse_metrics,
    produce_aiokafka,
    sample,
    write_config,
)

pytestmark = pytest.mark.integration

START = 1_700_000_000.0
N_JUNK = 10_000
PARTITIONS = 2
TOKEN = "cardinality-admin-token"  # noqa: S105 (a test token)
# RSS growth allowed during the flood. What the flood may add is bounded by the
# caps: at most VersionSlots.max_pairs (132 with the defaults here) version
# states of ~120 KB each (windows, ADWIN, report reservoir: 124 states measured
# at 15 MB), plus decode buffers for one fetch and allocator slack. Before the
# caps, 3,000 junk events took the process from 226 to 497 MB.
RSS_GROWTH_MIB = 64
HEALTHZ_MAX_S = 1.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/<pid>/status")


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def _real(n: int, seed: int, start: float, canary: str = "v2") -> list[dict[str, Any]]:
    gen = TrafficGenerator(seed=seed, canary=canary, canary_share=0.4)
    return gen.generate(n, start, 50.0).predictions


def _junk(i: int, allow_unknown: bool) -> dict[str, Any]:
    model, version = (f"jm{i % 2500}", f"jv{i}") if allow_unknown else (MODEL, f"junk{i}")
    return {"event_id": f"junk-{i}", "model": model, "model_version": version,
            "ts": START + i * 0.01, "score": 0.5,
            "features": {"amount": 10.0, "hour": 3.0, "merchant_category": "fuel"}}


class HealthProbe:
    """Polls /healthz from a thread, recording each answer's latency."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    code = client.get(self.url).status_code
                except httpx.HTTPError as exc:
                    self.failures.append(repr(exc))
                else:
                    self.latencies.append(time.perf_counter() - t0)
                    if code != 200:
                        self.failures.append(f"status {code}")
                time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _refusals(m: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for labels, v in m.get("driftgate_invalid_events_total", {}).items():
        d = dict(labels)
        out[d["reason"]] = out.get(d["reason"], 0.0) + v
    return out


def _pairs(m: dict[str, Any]) -> set[tuple[str, str]]:
    return {(dict(k)["model"], dict(k)["version"])
            for k in m.get("driftgate_events_total", {})}


@pytest.mark.parametrize("allow_unknown", [True, False], ids=["unknown-models", "junk-versions"])
def test_flood_of_names_stays_within_the_caps(kafka: EmbeddedBroker, driftgate: Any,
                                             tmp_path: Path, allow_unknown: bool) -> None:
    topics = asyncio.run(setup_topics(kafka, PARTITIONS))
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(fit_reference().to_json())
    cfg = write_config(
        tmp_path / "config.yaml",
        kafka={"bootstrap_servers": kafka.bootstrap_servers, "group_id": f"card-{allow_unknown}",
               **topics, **GROUP_TUNING},
        reference={"path": str(ref_path)},
        codec={"max_message_bytes": 4096, "allow_unknown_models": allow_unknown},
        admin={"token": TOKEN})
    settings = load_settings(cfg)
    bound = max_series(settings, partitions=PARTITIONS)
    dg = driftgate(cfg)
    assert dg.proc is not None
    bootstrap, preds_topic = kafka.bootstrap_servers, topics["predictions_topic"]

    def produce(events: list[dict[str, Any]]) -> None:
        asyncio.run(produce_aiokafka(bootstrap, preds_topic, None, [encode(e) for e in events],
                                     [i % PARTITIONS for i in range(len(events))]))

    def counted(version: str) -> float:
        return sample(parse_metrics(dg.metrics()), "driftgate_events_total", model=MODEL,
                      version=version, kind="prediction") or 0.0

    # warm-up: real champion and canary traffic
    warm = _real(1000, seed=1, start=START)
    produce(warm)
    wait_until(lambda: counted("v1") + counted("v2") >= len(warm), 60, what="warm-up counted")
    rss_before = _rss_mib(dg.proc.pid)

    # the flood, interleaved with more real traffic
    real = _real(2000, seed=2, start=START + 100)
    junk = [_junk(i, allow_unknown) for i in range(N_JUNK)]
    mixed: list[dict[str, Any]] = []
    for i in range(0, N_JUNK, 5):
        mixed.extend(junk[i:i + 5])
        mixed.append(real[i // 5])
    mixed.extend(real[N_JUNK // 5:])
    admitted = 124 if allow_unknown else 6  # 31 models x 4 versions, or 8 - 2 reserved
    refused = N_JUNK - admitted
    peak_series = 0
    with HealthProbe(dg.url("/healthz")) as probe:
        produce(mixed)

        def done() -> dict[str, Any] | None:
            nonlocal peak_series
            text = dg.metrics()
            peak_series = max(peak_series, _series(text))
            m = parse_metrics(text)
            r = _refusals(m)
            return m if r.get("too_many_models", 0) + r.get("too_many_versions", 0) >= refused \
                else None

        m = wait_until(done, 120, interval=0.5, what="the flood counted")
    rss_after = _rss_mib(dg.proc.pid)

    # refusals counted by reason, exactly
    r = _refusals(m)
    if allow_unknown:
        assert r.get("too_many_models", 0) + r.get("too_many_versions", 0) == refused, r
        assert r.get("too_many_models", 0) > 0, r
    else:
        assert r.get("too_many_versions") == refused, r
    # series and versions within the caps
    pairs = _pairs(m)
    real_pairs = {(MODEL, "v1"), (MODEL, "v2")}
    assert real_pairs <= pairs
    assert len(pairs - real_pairs) == admitted, sorted(pairs)[:20]
    assert peak_series <= bound, (peak_series, bound)
    # memory and health
    assert rss_after - rss_before < RSS_GROWTH_MIB, (rss_before, rss_after)
    assert not probe.failures, probe.failures[:5]
    assert probe.latencies, "no /healthz answer during the flood"
    assert max(probe.latencies) < HEALTHZ_MAX_S, sorted(probe.latencies)[-5:]
    # the real champion and canary are still monitored, every event counted
    n_v2 = sum(1 for e in warm + real if e["model_version"] == "v2")
    n_v1 = len(warm) + len(real) - n_v2
    assert counted("v1") == n_v1
    assert counted("v2") == n_v2
    verdict = dg.get(f"/v1/verdict?model={MODEL}&version=v2")
    assert verdict.status_code == 200, verdict.text
    assert verdict.json()["role"] == "canary", verdict.text
    status = dg.get("/v1/status").json()
    assert status["models"][MODEL]["versions"]["v2"]["predictions"] == n_v2

    if allow_unknown:
        return
    # a canary set later through the admin API gets a slot though junk holds every
    # other one (the least recently seen junk version is evicted), and is monitored
    resp = httpx.post(dg.url("/v1/admin/roles"), timeout=5,
                      headers={"Authorization": f"Bearer {TOKEN}"},
                      json={"model": MODEL, "champion": "v1", "canary": "v3"})
    assert resp.status_code == 200, resp.text
    v3 = _real(1000, seed=3, start=START + 200, canary="v3")
    produce(v3 + [_junk(N_JUNK + i, False) for i in range(100)])
    n_v3 = sum(1 for e in v3 if e["model_version"] == "v3")
    wait_until(lambda: counted("v3") >= n_v3, 60, what="the new canary counted")
    m = parse_metrics(dg.metrics())
    assert counted("v3") == n_v3
    assert _refusals(m)["too_many_versions"] == refused + 100
    assert len(_pairs(m)) <= settings.models[0].max_versions
    assert _series(dg.metrics()) <= bound
    doc = dg.get(f"/v1/verdict?model={MODEL}&version=v3").json()
    assert doc["role"] == "canary", doc
    assert dg.get("/v1/status").json()["models"][MODEL]["versions"]["v3"]["predictions"] == n_v3
