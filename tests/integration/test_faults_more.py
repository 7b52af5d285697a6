"""More fault tests with real processes: broker pause, failover, webhook outage, secrets.

Every process (broker, redis-server, driftgate, router stub) is started by the
test and stopped by it; every wait is bounded; everything listens on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import uuid
from pathlib import Path
from secrets import token_hex
from typing import Any

import httpx
import pytest
import yaml

from monitor.config import AlertingSettings, WebhookSettings, load_settings
from monitor.core.decisions import DecisionLayer
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.demo import CANARY, CHAMPION, MODEL, LiveTraffic, demo_settings
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.ports import free_port
from monitor.sandbox.router_stub import RouterStub
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator
from rollback.audit import verify_file
from rollback.rules import RuleSpec
from rollback.signing import new_secret
from tests.integration.helpers import (
    GROUP_TUNING,
    committed_offsets,
    end_offsets,
    produce,
    service_config,
    setup_topics,
    wait_until,
)
from tests.support import encode, fit_reference, oracle, parse_metrics, running_service, sample

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
        topics = asyncio.run(setup_topics(broker, 4))
        bootstrap = broker.bootstrap_servers
        port = free_port()
        cfg = service_config(tmp_path, broker, topics, group=f"pause-{uuid.uuid4().hex[:6]}",
                             port=port)
        doc = yaml.safe_load(cfg.read_text())
        doc["kafka"]["max_poll_records"] = 100  # many small batches: the pause lands inside
        # an offset commit after every batch: the frozen broker stops the consumer in the
        # middle of the half already produced (else it finishes its prefetched records)
        doc["kafka"]["commit_interval_ms"] = 0
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
        assert dg.proc.pid == pid
        assert dg.proc.poll() is None
        # the pause landed inside the first half (n records: half predictions, half labels)
        assert 0 < seen_at_pause < n, seen_at_pause
        _assert_counts_exact(metrics, preds, labels)
        assert wait_until(lambda: dg.get("/readyz").status_code == 200, timeout=30,
                          what="ready again")
        assert dg.terminate() == 0
        log = dg.log.read_text()
        assert "Traceback" not in log, log[-3000:]
        # and the group's committed offsets are the end of every partition
        tlist = [topics["predictions_topic"], topics["labels_topic"]]
        committed = asyncio.run(committed_offsets(bootstrap, doc["kafka"]["group_id"], tlist))
        ends = asyncio.run(end_offsets(bootstrap, tlist, 2 * n))
        assert committed == ends


# ------------------------------------------------------------- live helpers
ROLLBACK_RULE = {"name": "canary-velocity-drift", "metric": "psi", "feature": "txn_velocity_1h",
                 "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.25,
                 "sustain_seconds": 2, "min_events": 300, "severity": "rollback",
                 "cooldown_seconds": 600}
ROUTER = "router:card-fraud"


class _FixedShare:
    """Stands in for the router in LiveTraffic: the canary keeps its share (and its bug)."""

    def __init__(self, share: float) -> None:
        self.share = share

    def canary_share(self, model: str, canary: str) -> float:
        return self.share


async def _until(pred: Any, timeout: float, what: str, interval: float = 0.2) -> Any:
    """Await ``pred()`` until truthy (bounded); the event loop keeps running meanwhile."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await pred()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


async def _scrape(dg: Any) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5) as client:
        return parse_metrics((await client.get(dg.url("/metrics"))).text)


async def _assigned(dg: Any) -> int:
    return int(sample(await _scrape(dg), "driftgate_assigned_partitions") or 0)


def _live_config(path: Path, *, bootstrap: str, topics: dict[str, str], group: str,
                 reference: Path, rollback_url: str, audit: Path, webhooks: dict[str, Any],
                 **extra: Any) -> Path:
    """A driftgate config for live (wall-clock) traffic: 1 s slices, 10 s windows."""
    doc: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "group_id": group, **topics,
                  **GROUP_TUNING, "fetch_max_wait_ms": 50},
        "models": [{"name": MODEL, "champion": CHAMPION, "canary": CANARY,
                    "rollback_url": rollback_url}],
        "features": {"numeric": list(NUMERIC_FEATURES), "categorical": ["merchant_category"]},
        "reference": {"path": str(reference)},
        "windows": {"slice_seconds": 1, "window_seconds": 10, "kpi_window_seconds": 60,
                    "allowed_lateness_seconds": 5},
        "join": {"ttl_seconds": 60},
        "evaluation": {"tick_seconds": 0.5},
        "log": {"format": "json", "level": "info"},
        "webhooks": {"max_attempts": 6, "initial_backoff_seconds": 0.2,
                     "max_backoff_seconds": 2.0, "timeout_seconds": 2.0, **webhooks},
        "audit": {"path": str(audit)},
        "rules": [ROLLBACK_RULE],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def _audit_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def _live_topics(kafka: EmbeddedBroker, partitions: int) -> dict[str, str]:
    topics = await setup_topics(kafka, partitions)
    await kafka.create_topics({topics["decisions_topic"]: 1})
    return topics


# --------------------------------------------------------------------------- 2
async def test_failover_kill9_lease_holder_one_rollback_even_after_restart(
        kafka: EmbeddedBroker, redis_server: LocalRedis, driftgate: Any,
        tmp_path: Path) -> None:
    """Two RedisStore instances; kill -9 the lease holder before the canary degrades.

    The survivor takes the evaluator lease within the lease TTL and every
    partition, and sends the one rollback. The killed instance is restarted and
    then made the only one left (the survivor is stopped): it evaluates the
    still-broken canary, fires the rule again, and the shared claim suppresses
    a second webhook. The router accepts exactly one rollback.
    """
    import redis.asyncio as aioredis

    partitions, lease_ttl_ms, tick = 4, 3000, 0.5
    secret = new_secret()
    (tmp_path / "webhook-secrets").write_text(f"{secret}\n")
    router = RouterStub(secrets=[secret], weights={MODEL: {CHAMPION: 70, CANARY: 30}})
    await router.start()
    rdb = aioredis.from_url(redis_server.url)
    traffic_task: asyncio.Task[None] | None = None
    stop = asyncio.Event()
    try:
        topics = await _live_topics(kafka, partitions)
        ref = tmp_path / "reference.json"
        ref.write_text(fit_reference().to_json())
        group, prefix = f"fo-{uuid.uuid4().hex[:6]}", f"fo{uuid.uuid4().hex[:6]}:"
        cfgs, ports = {}, {}
        for name in ("dg-a", "dg-b"):
            cfgs[name] = _live_config(
                tmp_path / f"{name}.yaml", bootstrap=kafka.bootstrap_servers, topics=topics,
                group=group, reference=ref, rollback_url=f"{router.url}/rollback",
                audit=tmp_path / f"audit-{name}.jsonl",
                webhooks={"secrets_file": str(tmp_path / "webhook-secrets")},
                state={"backend": "redis", "redis_url": redis_server.url, "instance_id": name,
                       "key_prefix": prefix, "lease_ttl_ms": lease_ttl_ms})
            ports[name] = free_port()
        procs = {}
        for name in ("dg-a", "dg-b"):  # one after the other: the factory names the logs
            procs[name] = await asyncio.to_thread(driftgate, cfgs[name], ports[name])

        async def split() -> bool:
            a, b = await _assigned(procs["dg-a"]), await _assigned(procs["dg-b"])
            return a > 0 and b > 0 and a + b == 2 * partitions

        await _until(split, 60, "both instances hold partitions")
        # healthy live traffic; the canary's pipeline breaks only after the kill
        gen = TrafficGenerator(seed=23, canary_share=0.3, bug_at=None)
        settings = load_settings(cfgs["dg-a"])
        traffic = LiveTraffic(kafka.bootstrap_servers, settings, gen, 600.0,
                              _FixedShare(0.3))
        traffic_task = asyncio.create_task(traffic.run(stop))

        async def lease() -> str | None:
            v = await rdb.get(f"{prefix}lease")
            return v.decode() if isinstance(v, bytes) else v

        holder = await _until(lease, 10, "an evaluator lease holder")
        await asyncio.sleep(3)  # both instances consume and commit live traffic
        assert await lease() == holder
        survivor = "dg-b" if holder == "dg-a" else "dg-a"
        # only the lease holder evaluates rules: its /metrics shows them, the other's not
        holder_m, other_m = await _scrape(procs[holder]), await _scrape(procs[survivor])
        rule = {"rule": str(ROLLBACK_RULE["name"]), "model": MODEL, "version": CANARY,
                "severity": "rollback"}
        assert sample(holder_m, "driftgate_rule_state", **rule, state="firing") == 0
        assert sum(sample(holder_m, "driftgate_rule_state", **rule, state=st) or 0
                   for st in ("ok", "insufficient_data")) == 1
        assert "driftgate_rule_state" not in other_m
        assert router.received == []

        await asyncio.to_thread(procs[holder].kill)  # kill -9 the lease holder
        killed_at = time.monotonic()
        gen.bug_at = time.time()  # now the canary's velocity feature is served as 0
        await _until(lambda: _eq(lease, survivor), lease_ttl_ms / 1000 + 5,
                     "the survivor takes the lease", interval=0.05)
        took_lease = time.monotonic() - killed_at
        # the lease must first expire (at most its TTL after the last renewal), then the
        # survivor's next tick takes it; 1.5 s for scheduling on a loaded machine
        assert took_lease <= lease_ttl_ms / 1000 + tick + 1.5, took_lease
        await _until(lambda: _eq(lambda: _assigned(procs[survivor]), 2 * partitions), 45,
                     "the survivor holds every partition")
        m = await _scrape(procs[survivor])
        assert sample(m, "driftgate_assigned_partitions") == 2 * partitions

        async def accepted() -> list[Any]:
            return [r for r in router.received if not r.duplicate]

        await _until(accepted, 45, "the rollback at the router")
        rollback_at = time.monotonic()

        # restart the killed instance, then leave it alone: it evaluates the same
        # broken canary and must not send a second rollback
        restarted = await asyncio.to_thread(driftgate, cfgs[holder], free_port())
        await _until(lambda: _gt(lambda: _assigned(restarted), 0), 45,
                     "the restarted instance gets partitions")
        assert await asyncio.to_thread(procs[survivor].terminate) == 0
        await _until(lambda: _eq(lease, holder), lease_ttl_ms / 1000 + 5,
                     "the restarted instance takes the lease")
        audit_restarted = tmp_path / f"audit-{holder}.jsonl"

        async def suppressed() -> list[dict[str, Any]]:
            return [r for r in _audit_records(audit_restarted) if r["kind"] == "suppressed"]

        sup = await _until(suppressed, 45, "the restarted instance's rollback is suppressed")
        await asyncio.sleep(max(0.0, 3 - (time.monotonic() - rollback_at)))
        stop.set()
        await asyncio.wait_for(traffic_task, 10)
        assert await asyncio.to_thread(restarted.terminate) == 0
    finally:
        stop.set()
        if traffic_task is not None and not traffic_task.done():
            traffic_task.cancel()
        await router.stop()
        await rdb.aclose()
    acc = [r for r in router.received if not r.duplicate]
    assert len(acc) == 1, router.received
    assert len(router.received) == 1, router.received
    assert router.rejected == []
    body = acc[0].body
    assert (body["model"], body["canary_version"], body["champion_version"]) == \
        (MODEL, CANARY, CHAMPION)
    assert body["decision_id"] == acc[0].webhook_id
    assert body["evidence"]["value"] > 0.25
    assert traffic.sent_canary > 1000
    # the survivor decided and delivered; the restarted one decided, was suppressed
    surv = _audit_records(tmp_path / f"audit-{survivor}.jsonl")
    assert [r["decision_id"] for r in surv if r["kind"] == "decision"] == [body["decision_id"]]
    assert [r["outcome"] for r in surv if r["kind"] == "delivery"] == ["delivered"]
    restarted_records = _audit_records(tmp_path / f"audit-{holder}.jsonl")
    decided = [r for r in restarted_records if r["kind"] == "decision"]
    assert len(decided) == 1
    assert decided[0]["action"] == "rollback"
    assert body["decision_id"] in sup[0]["reason"]
    assert not [r for r in restarted_records if r["kind"] in ("attempt", "delivery")
                and r.get("target") == ROUTER]
    for name in ("dg-a", "dg-b"):
        check = verify_file(tmp_path / f"audit-{name}.jsonl")
        assert check.ok, (name, check)


async def _eq(fn: Any, value: Any) -> bool:
    return bool(await fn() == value)


async def _gt(fn: Any, value: Any) -> bool:
    return bool(await fn() > value)


# --------------------------------------------------------------------------- 3
async def test_webhook_receiver_down_30s_retried_then_delivered_once(
        kafka: EmbeddedBroker, tmp_path: Path) -> None:
    """The router is down (connection refused) for 30 s; the rollback still lands once."""
    down_for, max_attempts, initial, cap = 30.0, 12, 0.5, 8.0
    secret = new_secret()
    router_port = free_port()  # reserved now, served only 30 s after driftgate starts
    router = RouterStub(secrets=[secret], weights={MODEL: {CHAMPION: 90, CANARY: 10}},
                        port=router_port)
    (tmp_path / "reference.json").write_text(fit_reference().to_json())
    http_port = free_port()
    settings = demo_settings(kafka.bootstrap_servers, tmp_path, router.url, secret, http_port,
                             suffix=f"down-{uuid.uuid4().hex[:6]}")
    settings = settings.model_copy(update={
        "rules": [RuleSpec(**ROLLBACK_RULE)],
        "alerting": AlertingSettings(),  # the router's rollback endpoint only
        "webhooks": WebhookSettings(secrets=[secret], max_attempts=max_attempts,
                                    initial_backoff_seconds=initial, max_backoff_seconds=cap,
                                    timeout_seconds=2.0),
    })
    k = settings.kafka
    await kafka.create_topics({k.predictions_topic: 2, k.labels_topic: 2,
                               k.dead_letter_topic: 1, k.decisions_topic: 1})
    started_at = time.monotonic()
    stop = asyncio.Event()
    traffic_task: asyncio.Task[None] | None = None
    try:
        async with running_service(settings) as run:
            service = await run.started(30)
            layer: DecisionLayer = service.decisions
            gen = TrafficGenerator(seed=29, canary_share=0.1, bug_at=time.time())  # broken now
            traffic = LiveTraffic(kafka.bootstrap_servers, settings, gen, 1000.0, router)
            traffic_task = asyncio.create_task(traffic.run(stop))

            async def refused() -> int:
                return layer.attempts[(ROUTER, "retry")]

            await _until(refused, down_for - 5, "a refused delivery attempt")
            await asyncio.sleep(max(0.0, started_at + down_for - time.monotonic()))
            # still down: several refused attempts, nothing delivered, nothing given up
            assert layer.outcomes == {}
            retries_while_down = layer.attempts[(ROUTER, "retry")]
            assert retries_while_down >= 3, layer.attempts
            await router.start()
            assert router.port == router_port
            router_up = time.time()

            async def delivered() -> bool:
                return layer.outcomes[(ROUTER, "delivered")] == 1

            # the longest wait is one capped, jittered backoff plus an attempt
            await _until(delivered, cap * 1.2 + 2 * settings.webhooks.timeout_seconds + 5,
                         "the retried rollback delivered")
            await asyncio.sleep(2)  # time for a duplicate to show up
            async with httpx.AsyncClient(timeout=5) as client:
                metrics = parse_metrics((await client.get(
                    f"http://127.0.0.1:{http_port}/metrics")).text)
            stop.set()
            await asyncio.wait_for(traffic_task, 10)
    finally:
        stop.set()
        if traffic_task is not None and not traffic_task.done():
            traffic_task.cancel()
        await router.stop()
    # exactly one signed rollback reached the router, after it came up
    assert len(router.received) == 1, router.received
    got = router.received[0]
    assert not got.duplicate
    assert router.rejected == []
    assert got.at >= router_up
    assert (got.body["model"], got.body["canary_version"]) == (MODEL, CANARY)
    # the audit chain: the decision, every refused attempt, the delivered one, the outcome
    audit = Path(settings.audit.path)
    check = verify_file(audit)
    assert check.ok, check
    records = _audit_records(audit)
    decisions = [r for r in records if r["kind"] == "decision"]
    assert [d["action"] for d in decisions] == ["rollback"]
    assert decisions[0]["decision_id"] == got.webhook_id
    attempts = [r for r in records if r["kind"] == "attempt" and r["target"] == ROUTER]
    assert [a["number"] for a in attempts] == list(range(1, len(attempts) + 1))
    assert retries_while_down < len(attempts) <= max_attempts
    *failed, last = attempts
    for a in failed:
        assert a["outcome"] == "retry", a
        assert a["status"] is None, a
        assert "Connect" in a["error"] or "refused" in a["error"].lower(), a
        assert a["webhook_id"] == got.webhook_id
        # doubling backoff from 0.5 s, capped at 8 s, +-20 % jitter never above the cap
        base = min(cap, initial * 2 ** (a["number"] - 1))
        assert base * 0.8 - 1e-9 <= a["next_delay_s"] <= min(cap, base * 1.2) + 1e-9, a
    assert last["outcome"] == "delivered"
    assert last["status"] == 200
    assert last["at"] >= router_up - 1
    assert all(a["at"] < router_up for a in failed)
    deliveries = [r for r in records if r["kind"] == "delivery"]
    assert len(deliveries) == 1
    assert deliveries[0]["outcome"] == "delivered"
    assert deliveries[0]["delivered"] is True
    assert deliveries[0]["attempts"] == len(attempts)
    assert deliveries[0]["webhook_id"] == got.webhook_id
    # the same story in /metrics
    assert sample(metrics, "driftgate_webhook_attempts_total", target=ROUTER,
                  outcome="retry") == len(failed)
    assert sample(metrics, "driftgate_webhook_attempts_total", target=ROUTER,
                  outcome="delivered") == 1
    assert sample(metrics, "driftgate_webhook_deliveries_total", target=ROUTER,
                  outcome="delivered") == 1
    assert sample(metrics, "driftgate_webhook_deliveries_total", target=ROUTER,
                  outcome="exhausted") == 0


# --------------------------------------------------------------------------- 4
def _password_redis(workdir: Path, password: str) -> LocalRedis:
    """redis-server with ``--requirepass``: a client without the password gets NOAUTH."""
    import redis

    server = LocalRedis(workdir, password=password, aof=False).start()
    anonymous = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=1)
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    return server


def _secret_forms(value: str) -> set[str]:
    """A secret and the parts of it a leak could show (a webhook key without its prefix)."""
    forms = {value}
    if value.startswith("whsec_"):
        forms.add(value.removeprefix("whsec_"))
    return forms


async def test_secrets_never_in_logs_audit_status_or_metrics(
        kafka: EmbeddedBroker, driftgate: Any, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Redis password, webhook secret and admin token: given by env, then by files."""
    redis_pw = "rpw-" + token_hex(16)
    server = await asyncio.to_thread(lambda: _password_redis(tmp_path / "redis", redis_pw))
    runs = {mode: {"redis": redis_pw, "admin": "adm-" + token_hex(16), "webhook": new_secret()}
            for mode in ("env", "file")}
    router = RouterStub(secrets=[runs["env"]["webhook"], runs["file"]["webhook"]],
                        weights={MODEL: {CHAMPION: 90, CANARY: 10}})
    await router.start()
    n = 4000
    try:
        for mode, secret in runs.items():
            workdir = tmp_path / mode
            workdir.mkdir()
            topics = await _live_topics(kafka, 2)
            gen = TrafficGenerator(seed=61, canary_share=0.3, bug_at=START)  # broken canary
            batch = gen.generate(n, START, 50.0)
            keys = [p["event_id"].encode() for p in batch.predictions]
            await produce(kafka.bootstrap_servers, topics["predictions_topic"],
                          [encode(p) for p in batch.predictions], keys=keys)
            await produce(kafka.bootstrap_servers, topics["labels_topic"],
                          [encode(x) for x in batch.labels], keys=keys)
            state: dict[str, Any] = {"backend": "redis", "redis_url": server.url,
                                     "instance_id": f"sec-{mode}",
                                     "key_prefix": f"sec{uuid.uuid4().hex[:6]}:"}
            webhooks: dict[str, Any] = {"max_attempts": 4, "initial_backoff_seconds": 0.2,
                                        "max_backoff_seconds": 1.0}
            admin: dict[str, Any] = {}
            if mode == "env":
                monkeypatch.setenv("DRIFTGATE_STATE__PASSWORD", secret["redis"])
                monkeypatch.setenv("DRIFTGATE_ADMIN__TOKEN", secret["admin"])
                monkeypatch.setenv("DRIFTGATE_WEBHOOKS__SECRETS", json.dumps([secret["webhook"]]))
            else:
                for var in ("DRIFTGATE_STATE__PASSWORD", "DRIFTGATE_ADMIN__TOKEN",
                            "DRIFTGATE_WEBHOOKS__SECRETS"):
                    monkeypatch.delenv(var, raising=False)
                for name, value in (("redis-password", secret["redis"]),
                                    ("admin-token", secret["admin"]),
                                    ("webhook-secrets", secret["webhook"])):
                    f = workdir / name
                    f.write_text(value + "\n")
                    f.chmod(0o600)
                state["password_file"] = str(workdir / "redis-password")
                admin["token_file"] = str(workdir / "admin-token")
                webhooks["secrets_file"] = str(workdir / "webhook-secrets")
            port = free_port()
            audit = workdir / "audit.jsonl"
            cfg = service_config(workdir, kafka, topics,
                                 group=f"sec-{mode}-{uuid.uuid4().hex[:6]}", port=port,
                                 models=[{"name": MODEL, "champion": CHAMPION, "canary": CANARY,
                                          "rollback_url": f"{router.url}/rollback"}],
                                 rules=[{**ROLLBACK_RULE, "sustain_seconds": 1}],
                                 log={"format": "json", "level": "debug"},
                                 audit={"path": str(audit)},
                                 state=state, webhooks=webhooks, admin=admin)
            before = len(router.received)
            dg = await asyncio.to_thread(driftgate, cfg, port)

            async def consumed(dg: Any = dg) -> bool:
                m = await _scrape(dg)
                p = sum(v for k, v in m.get("driftgate_events_total", {}).items()
                        if ("kind", "prediction") in k)
                return p >= n and (sample(m, "driftgate_labels_received_total") or 0) >= n

            await _until(consumed, 60, f"{mode}: the stream consumed")

            async def rolled_back(before: int = before) -> list[Any]:
                return router.received[before:]

            got = await _until(rolled_back, 30, f"{mode}: the signed rollback")
            bodies: dict[str, str] = {}
            async with httpx.AsyncClient(timeout=5) as client:
                for path in ("/v1/status", "/metrics", "/readyz",
                             f"/v1/verdict?model={MODEL}"):
                    r = await client.get(dg.url(path))
                    assert r.status_code == 200, (path, r.text)
                    bodies[path] = r.text
                # the admin token works (so it was loaded) and a wrong one does not
                ack = dg.url(f"/v1/admin/decisions/{got[0].webhook_id}/ack")
                wrong = await client.post(ack, headers={"Authorization": "Bearer nope"})
                assert wrong.status_code == 401
                right = await client.post(
                    ack, headers={"Authorization": f"Bearer {secret['admin']}"})
                assert right.status_code == 200, right.text
                bodies["ack"] = right.text + wrong.text
            assert json.loads(bodies["/v1/status"])["ready"] is True
            assert await asyncio.to_thread(dg.terminate) == 0
            log = dg.log.read_text()
            assert '"event": "decision"' in log  # the log did see the interesting parts
            assert verify_file(audit).ok
            texts = {"log": log, "audit": audit.read_text(), **bodies}
            for what, value in secret.items():
                for form in _secret_forms(value):
                    for where, text in texts.items():
                        assert form not in text, f"{mode}: the {what} secret is in {where}"
    finally:
        await router.stop()
        await asyncio.to_thread(server.stop)
    accepted = [r for r in router.received if not r.duplicate]
    assert len(accepted) == 2  # one rollback per run, each signed with that run's secret
    assert router.rejected == []


def test_config_error_does_not_echo_secret_values(tmp_path: Path) -> None:
    """A config error names each bad secret key but never prints the secret."""
    from tests.integration.helpers import DRIFTGATE

    bad = {
        # a single secret where a list is expected: the commonest slip
        ("webhooks", "secrets"): "whsec_" + "c2VjcmV0LWxlYWstY2hlY2stMDEyMzQ1Njc4OWFiY2RlZg==",
        # unquoted digits in YAML are an int, not a string
        ("admin", "token"): 918273645546372819,
        ("state", "password"): 564738291029384756,
    }
    doc: dict[str, Any] = {"models": [{"name": MODEL, "champion": CHAMPION}],
                           "reference": {"fit_from_champion_events": 100}}
    for (section, key), value in bad.items():
        doc.setdefault(section, {})[key] = value
    cfg = tmp_path / "bad-secrets.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    r = subprocess.run([DRIFTGATE, "run", "--config", str(cfg)], capture_output=True,
                       timeout=60, env=env)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert r.returncode == 2, out
    assert "Traceback" not in out
    for section, key in bad:
        assert f"{section}.{key}" in out, out  # the key is named ...
    leaked = [f"{s}.{k}" for (s, k), v in bad.items() if str(v) in out]
    assert leaked == [], f"secret values printed for {leaked}: {out}"  # ... its value not


def test_env_secret_not_a_json_list_is_a_config_error(tmp_path: Path) -> None:
    from tests.integration.helpers import DRIFTGATE

    secret = new_secret()
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(yaml.safe_dump({"models": [{"name": MODEL, "champion": CHAMPION}],
                                   "reference": {"fit_from_champion_events": 100}}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIFTGATE_")}
    env["DRIFTGATE_WEBHOOKS__SECRETS"] = secret  # should have been '["whsec_..."]'
    r = subprocess.run([DRIFTGATE, "run", "--config", str(cfg)], capture_output=True,
                       timeout=60, env=env)
    out = (r.stdout + r.stderr).decode(errors="replace")
    assert secret not in out
    assert secret.removeprefix("whsec_") not in out
    assert "Traceback" not in out, out[-2000:]
    assert r.returncode == 2, out[-2000:]
    assert "webhooks" in out
