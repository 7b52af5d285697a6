"""Decisions end to end through the embedded broker.

Two canaries run side by side for the same duration, each with its own
topics, service, router stub and audit log: one whose feature pipeline breaks
from the start, one healthy. The broken one must produce exactly one signed
rollback at its router and one firing alert; the healthy one none.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.demo import (
    CANARY,
    CHAMPION,
    MODEL,
    LiveTraffic,
    demo_settings,
    fit_demo_reference,
)
from monitor.sandbox.ports import free_port
from monitor.sandbox.router_stub import RouterStub
from monitor.sandbox.traffic import TrafficGenerator
from rollback.audit import verify_file
from rollback.rules import RuleSpec
from rollback.signing import new_secret
from tests.support import running_service

pytestmark = pytest.mark.integration

DURATION = 20.0
RULES = [{"name": "canary-velocity-drift", "metric": "psi", "feature": "txn_velocity_1h",
          "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.25,
          "sustain_seconds": 3, "sustain_evaluations": 3, "min_events": 300,
          "severity": "rollback", "cooldown_seconds": 600}]


async def _scenario(kafka: EmbeddedBroker, workdir: Path, broken: bool,
                    suffix: str) -> dict[str, Any]:
    workdir.mkdir()
    secret = new_secret()
    router = RouterStub(secrets=[secret], weights={MODEL: {CHAMPION: 90, CANARY: 10}})
    await router.start()
    (workdir / "reference.json").write_text(fit_demo_reference(3).to_json())
    port = free_port()
    settings = demo_settings(kafka.bootstrap_servers, workdir, router.url, secret, port,
                             suffix=suffix)
    settings = settings.model_copy(update={"rules": [RuleSpec(**r) for r in RULES]})
    k = settings.kafka
    await kafka.create_topics({k.predictions_topic: 2, k.labels_topic: 2,
                               k.dead_letter_topic: 1, k.decisions_topic: 1})
    async with running_service(settings) as run:
        service = await run.started(30)
        t0 = time.time()
        gen = TrafficGenerator(seed=21, canary_share=0.3, bug_at=t0 if broken else None)
        traffic = LiveTraffic(kafka.bootstrap_servers, settings, gen, 1500.0, router)
        stop = asyncio.Event()
        ttask = asyncio.create_task(traffic.run(stop))
        await asyncio.sleep(DURATION)
        async with httpx.AsyncClient() as client:
            verdict = (await client.get(f"http://127.0.0.1:{port}/v1/verdict",
                                        params={"model": MODEL, "version": CANARY})).json()
            flagger = await client.post(f"http://127.0.0.1:{port}/v1/flagger/rollback",
                                        json={"name": "card-fraud", "namespace": "risk",
                                              "phase": "Progressing",
                                              "metadata": {"model": MODEL}})
            metrics = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        stop.set()
        await asyncio.wait_for(ttask, 10)
    await router.stop()
    return {"router": router, "service": service, "settings": settings, "verdict": verdict,
            "flagger": flagger.status_code, "metrics": metrics, "traffic": traffic}


async def _both(kafka: EmbeddedBroker, tmp: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    bad, good = await asyncio.gather(_scenario(kafka, tmp / "broken", True, "broken"),
                                     _scenario(kafka, tmp / "healthy", False, "healthy"))
    return bad, good


def test_degrading_canary_one_rollback_healthy_none(kafka: EmbeddedBroker,
                                                    tmp_path: Path) -> None:
    bad, good = asyncio.run(_both(kafka, tmp_path))
    router: RouterStub = bad["router"]
    # exactly one rollback reached the router, signed and verified
    accepted = [r for r in router.received if not r.duplicate]
    assert len(accepted) == 1, router.received
    assert router.rejected == []
    body = accepted[0].body
    assert body["model"] == MODEL
    assert body["canary_version"] == CANARY
    assert body["champion_version"] == CHAMPION
    assert body["decision_id"] == accepted[0].webhook_id
    assert body["evidence"]["value"] > 0.25
    assert router.weights[MODEL][CANARY] == 0
    # exactly one firing alert, Alertmanager v4 shaped
    firing = [a for a in router.alerts if a.body["status"] == "firing"]
    assert len(firing) == 1
    assert firing[0].body["version"] == "4"
    assert firing[0].body["alerts"][0]["labels"]["version"] == CANARY
    # verdict and Flagger hook agree
    assert bad["verdict"]["verdict"] == "rollback"
    assert bad["flagger"] == 200
    assert 'driftgate_webhook_deliveries_total{outcome="delivered",target="router:card-fraud"}' \
        in bad["metrics"]
    # the audit chain holds the decision and the delivery
    audit = Path(bad["settings"].audit.path)
    check = verify_file(audit)
    assert check.ok
    kinds = [line for line in audit.read_text().splitlines()]
    assert any('"kind":"decision"' in k for k in kinds)
    assert any('"kind":"delivery"' in k and '"outcome":"delivered"' in k for k in kinds)
    # the healthy canary: nothing
    assert good["router"].received == []
    assert good["router"].alerts == []
    assert good["verdict"]["verdict"] == "ok"
    assert good["flagger"] == 409
    assert good["traffic"].sent_canary > 1000
