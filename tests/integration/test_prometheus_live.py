"""The operations configs against live servers: a real Prometheus scraping a
live driftgate, and a real Alertmanager delivering to a test webhook.

One stack per module (fixture ``live``), all on loopback, all stopped in
``finally`` blocks:

* the embedded broker (``kafka`` fixture) and driftgate itself, run in-process
  by :func:`monitor.serve.runner.run_service` with the demo's configuration
  (:func:`monitor.sandbox.demo.demo_settings`), fed by the demo's :class:`LiveTraffic`.
  The canary's feature pipeline breaks a few seconds in, so there is drift, a
  catch-rate drop, rollback decisions and a signed rollback webhook to a
  :class:`RouterStub`. Besides that traffic, a side producer sends invalid
  records to both topics (dead letters, ``driftgate_invalid_events_total``),
  late predictions and labels, and duplicate predictions and labels.
* Prometheus with a copy of ``deploy/prometheus/prometheus.yml`` and its rule
  files: 1 s scrape and evaluation intervals, the targets rewritten to the
  loopback ports, job names unchanged (the dashboards' ``job`` variable and the
  alert rules select ``job="driftgate"``).
* Alertmanager with a copy of ``deploy/alertmanager/alertmanager.yml`` whose
  webhook receiver points at an aiohttp receiver in this test.

``test_every_query_returns_data_on_live_prometheus`` runs every dashboard
query (panels, annotations, variables; with the variables as a user picks them
and with "All") and every recording and alert rule expression through
``/api/v1/query`` and requires data from each, except those in
``ALLOWED_EMPTY`` (cannot hold in a short test, with the reason) and
``KNOWN_BUGS`` (empty because of a driftgate bug; required empty, so the test
fails once the bug is fixed).
``test_drift_alert_reaches_the_webhook_through_alertmanager`` follows
DriftgateDriftHigh from Prometheus through Alertmanager to the webhook
receiver (Alertmanager webhook v4 payload).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
import yaml
from aiohttp import web
from aiokafka import AIOKafkaProducer

from monitor.config import Settings
from monitor.core.service import Service
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
from monitor.sandbox.traffic import CATEGORIES, TrafficBatch, TrafficGenerator, score
from rollback.signing import new_secret
from tests.integration.helpers import wait_until
from tests.ops_support import (
    AM_CONFIG,
    EXPORTED_METRICS,
    GRAFANA_BUILTINS,
    PROM_CONFIG,
    alert_rules,
    dashboard_exprs,
    dashboards,
    load_yaml,
    metric_names,
    recording_rules,
    tool,
)
from tests.support import running_service

pytestmark = pytest.mark.integration

T = TypeVar("T")

JOB = "driftgate"  # the job name of deploy/prometheus/prometheus.yml, kept
RATE = 1000.0  # transactions/s
CANARY_SHARE = 0.3
BUG_AFTER_S = 8.0  # the canary's pipeline breaks this long after traffic starts
SCRAPE_S = 40.0  # traffic (and scraping) before the queries run
LATE_BY_S = 120.0  # late predictions: older than the 60 s KPI window and the lateness
INVALID_PER_S = 60  # about 3 % of the ~2000 records/s consumed: DriftgateDeadLetterRate
SIDE_TICK_S = 0.5

# The alert rules' `for:` durations shortened in the test's copy of the rules
# (the expressions are kept byte for byte): DriftgateDriftHigh waits 5m in
# production, which no short test can wait.
SHORTENED_FOR = {"DriftgateDriftHigh": "0s"}
# Alertmanager's group_wait (30s for warnings, 10s for critical) shortened
# the same way in the test's copy of alertmanager.yml.
SHORT_GROUP_WAIT = "1s"

# Dashboard variables: the values a user picks (the drifting canary), and
# "All" (the variables' allValue, ".*").
SELECTED = {"job": JOB, "model": MODEL, "version": CANARY, "feature": "txn_velocity_1h"}
ALL = dict.fromkeys(SELECTED, ".*")

# Expressions allowed to return no series, each with why; keys are the
# `where` of the expression (see _expressions()). Each also has a probe in
# QUIET_PROBES: the same selectors without the condition, which must return
# data (so the expression is empty because the condition is false, not
# because it selects nothing). Every other expression must return data.
ALLOWED_EMPTY = {
    "rule DriftgateNotReady": (
        "driftgate_ready == 0 needs an instance that is not ready (no partitions, lag "
        "above http.ready_max_lag, no reference); the live instance is ready throughout, "
        "and being ready is what the rest of this test needs"),
    "rule DriftgateConsumerLagHigh": (
        "needs a consumer more than 50000 records behind on a partition; the test "
        "produces ~2000 records/s that the service keeps up with"),
    "rule DriftgateUndecodableBatches": (
        "needs a record batch that cannot be decoded on the wire (a CRC mismatch or a "
        "wrong codec flag, written with a raw ProduceRequest): "
        "tests/integration/test_codecs.py does that against the broker, and promtool's "
        "unit tests cover the rule"),
    "rule DriftgateDedupeMemoryFull": (
        "needs the dedupe memory to reach dedupe.max_ids (at least 1,000) within the "
        "horizon, which evicts the ids the duplicate checks of this test rely on; "
        "tests/unit/test_metrics_http.py and promtool's unit tests cover it"),
}
QUIET_PROBES = {
    "rule DriftgateNotReady": f'driftgate_ready{{job="{JOB}"}} == 1',
    "rule DriftgateConsumerLagHigh": "instance_topic:driftgate_consumer_lag:max >= 0",
    "rule DriftgateUndecodableBatches": f'driftgate_skipped_batches_total{{job="{JOB}"}} >= 0',
    "rule DriftgateDedupeMemoryFull": f'driftgate_dedupe_evictions_total{{job="{JOB}"}} >= 0',
}

# Expressions that return no data because of a driftgate bug, not because of
# the test: they are required to be empty, so this test fails once the bug is
# fixed (and the entry must go). See test_dead_letter_counter_counts_the_topic.
DEAD_LETTER_BUG = (
    "driftgate_dead_letter_records_total is always 0: monitor/core/metrics.py exports "
    "SourceStatus.dead_lettered, which no source sets (KafkaSource.status() leaves it 0); "
    "the acked dead letters are counted in KafkaDeadLetterSink.sent, never exported")
ROLLBACK_BUG = (
    "two rollback rules firing for the same canary in one evaluation are both suppressed "
    "and no rollback webhook is sent: DecisionLayer._act (monitor/core/decisions.py) takes the "
    "other decisions of the same evaluation, active but never sent, as earlier rollbacks")
# both bugs this test found are fixed; a new one would be listed here with its reason
KNOWN_BUGS: dict[str, str] = {}


# ----------------------------------------------------------------- traffic
class BrokenPipelineTraffic(TrafficGenerator):
    """The demo's traffic, whose broken canary pipeline also zeroes a second feature.

    The demo's bug (``txn_velocity_1h`` served as 0) moves the canary's
    *score* PSI to about 0.05: it trips the demo's rules, but not
    DriftgateDriftHigh (score PSI above 0.25). Here the broken stale cache also
    serves ``distance_from_home_km`` as 0 and the canary scores what it is
    served: its score PSI goes above 1, its catch rate drops further.
    """

    def generate(self, n: int, start_ts: float, rate_per_s: float,
                 canary_share: float | None = None) -> TrafficBatch:
        batch = super().generate(n, start_ts, rate_per_s, canary_share)
        bug_at = self.bug_at
        if bug_at is None:
            return batch
        broken = [p for p in batch.predictions
                  if p["model_version"] == self.canary and p["ts"] >= bug_at]
        if not broken:
            return batch

        def col(name: str) -> Any:
            return np.array([p["features"][name] for p in broken], dtype=np.float64)

        cats = np.array([CATEGORIES.index(p["features"]["merchant_category"]) for p in broken],
                        dtype=np.int64)
        scores = score(col("amount"), col("hour"), col("device_age_days"),
                       np.zeros(len(broken)), col("txn_velocity_1h"), cats)
        for p, s in zip(broken, scores.tolist(), strict=True):
            p["features"]["distance_from_home_km"] = 0.0
            p["score"] = round(s, 6)
            p["decision"] = s >= self.threshold
        return batch


class FixedSplit:
    """The traffic split LiveTraffic follows: fixed, unlike the RouterStub's.

    The rollback still reaches the RouterStub (signed, verified), but the
    canary keeps its traffic, so its drift series stay current until the
    queries run (a canary without traffic has no drift window).
    """

    def canary_share(self, model: str, canary: str) -> float:
        del model, canary
        return CANARY_SHARE


def _invalid_records(n: int) -> list[tuple[str, bytes]]:
    """(``"prediction"`` or ``"label"``, value) of records driftgate must reject."""
    good = {"event_id": f"bad-{n}", "model": MODEL, "model_version": CHAMPION,
            "ts": time.time(), "score": 0.2, "decision": False, "amount": 10.0,
            "features": {"amount": 10.0}}
    return [
        ("prediction", b"{not json"),
        ("prediction", b""),
        ("prediction", json.dumps({"event_id": f"bad-{n}"}).encode()),
        ("prediction", json.dumps({**good, "score": 1.7}).encode()),
        ("prediction", b"[1, 2, 3]"),
        # a producer clock ten years ahead: future_timestamp (DriftgateFutureTimestamps)
        ("prediction", json.dumps({**good, "ts": time.time() + 10 * 365 * 86_400}).encode()),
        # a model nobody configured: unknown_model (DriftgateCardinalityRefusals)
        ("prediction", json.dumps({**good, "model": f"junk-model-{n}"}).encode()),
        ("label", json.dumps({"event_id": f"bad-{n}", "label": 7}).encode()),
        ("label", b"\xff\xfe not utf-8"),
        ("label", json.dumps({"label": 1}).encode()),
    ]


async def _side_traffic(bootstrap: str, settings: Settings, stop: asyncio.Event,
                        sent: dict[str, int]) -> None:
    """Invalid records, late predictions and labels, duplicate predictions and labels."""
    k = settings.kafka
    topic = {"prediction": k.predictions_topic, "label": k.labels_topic}
    gen = TrafficGenerator(seed=99, canary_share=0.0)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1,
                                enable_idempotence=False, linger_ms=10)
    await producer.start()
    pending_labels: list[dict[str, Any]] = []
    tick = 0
    try:
        while not stop.is_set():
            tick += 1
            now = time.time()
            for label in pending_labels:  # labels of the last tick's duplicates
                await producer.send(k.labels_topic, json.dumps(label).encode())
            pending_labels = []
            # invalid records, both topics
            bad = _invalid_records(tick)
            for i in range(int(INVALID_PER_S * SIDE_TICK_S)):
                kind, value = bad[i % len(bad)]
                await producer.send(topic[kind], value)
                sent[f"invalid_{kind}"] += 1
            batch = gen.generate(4, start_ts=now, rate_per_s=1000.0)
            late, dup = batch.predictions[:2], batch.predictions[2:]
            for p in late:  # a prediction 2 minutes late, and its label
                p["ts"] = now - LATE_BY_S
                await producer.send(k.predictions_topic, json.dumps(p).encode())
                await producer.send(k.labels_topic, json.dumps(
                    {"event_id": p["event_id"], "label": 0, "ts": now}).encode())
                sent["late"] += 1
            for p in dup:  # the same prediction twice; its label on the next tick
                value = json.dumps(p).encode()
                key = p["event_id"].encode()
                await producer.send(k.predictions_topic, value, key=key)
                await producer.send(k.predictions_topic, value, key=key)
                pending_labels.append({"event_id": p["event_id"], "label": 0, "ts": now})
                sent["duplicate_prediction"] += 1
            # a label whose prediction never comes, twice
            orphan = json.dumps({"event_id": f"orphan-{tick}", "label": 1, "ts": now}).encode()
            await producer.send(k.labels_topic, orphan)
            await producer.send(k.labels_topic, orphan)
            sent["duplicate_label"] += 1
            await producer.flush()
            await asyncio.sleep(max(0.0, now + SIDE_TICK_S - time.time()))
    finally:
        await producer.stop()


# ---------------------------------------------------------------- receiver
@dataclass
class Receiver:
    """The on-call webhook: Alertmanager's notifications, and a refusing endpoint."""

    notifications: list[dict[str, Any]] = field(default_factory=list)
    refused: int = 0
    port: int = 0
    _runner: web.AppRunner | None = None

    async def _alertmanager(self, request: web.Request) -> web.Response:
        self.notifications.append(await request.json())
        return web.json_response({"ok": True})

    async def _refuse(self, request: web.Request) -> web.Response:
        # driftgate's own alerts (alerting.url) land here and are refused
        # with a 400, a final "rejected" delivery: DriftgateWebhookDeliveryFailures
        await request.read()
        self.refused += 1
        return web.json_response({"error": "unknown integration key"}, status=400)

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/alerts", self._alertmanager)
        app.router.add_post("/driftgate-alerts", self._refuse)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        self.port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


# ----------------------------------------------------------------- driftgate
class Scenario:
    """driftgate, its router stub, the receiver and the traffic, in one event loop."""

    def __init__(self, kafka: EmbeddedBroker, workdir: Path) -> None:
        self.kafka = kafka
        self.workdir = workdir
        self.stack = contextlib.AsyncExitStack()
        self.receiver = Receiver()
        self.router: RouterStub | None = None
        self.settings: Settings | None = None
        self.service: Service | None = None
        self.service_task: asyncio.Task[Service] | None = None
        self.traffic: LiveTraffic | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.stop_traffic = asyncio.Event()
        self.side_sent: dict[str, int] = dict.fromkeys(
            ("invalid_prediction", "invalid_label", "late", "duplicate_prediction",
             "duplicate_label"), 0)
        self.traffic_started = 0.0
        self.bug_at = 0.0

    @property
    def port(self) -> int:
        assert self.settings is not None
        return self.settings.http.port

    async def start(self) -> None:
        await self.receiver.start()
        self.stack.push_async_callback(self.receiver.stop)
        secret = new_secret()
        self.router = await RouterStub(secrets=[secret],
                                       weights={MODEL: {CHAMPION: 90, CANARY: 10}}).start()
        self.stack.push_async_callback(self.router.stop)
        (self.workdir / "reference.json").write_text(fit_demo_reference(7).to_json())
        settings = demo_settings(self.kafka.bootstrap_servers, self.workdir, self.router.url,
                                 secret, free_port(), suffix="promlive")
        self.settings = settings.model_copy(update={
            "alerting": settings.alerting.model_copy(
                update={"url": f"{self.receiver.url}/driftgate-alerts"}),
            # a configured in-control catch rate: the recall CUSUM tests (and
            # exports its threshold and baseline) from the first labelled fraud,
            # instead of waiting for 500 champion frauds this short run may not
            # reach (its dashboard panels must return data here)
            "evaluation": settings.evaluation.model_copy(update={"recall_cusum_p0": 0.7})})
        k = self.settings.kafka
        await self.kafka.create_topics({k.predictions_topic: 2, k.labels_topic: 2,
                                        k.dead_letter_topic: 1, k.decisions_topic: 1})
        run = await self.stack.enter_async_context(running_service(self.settings))
        self.service_task = run.task
        self.service = await run.started(45)

    async def start_traffic(self) -> None:
        assert self.settings is not None
        self.traffic_started = time.time()
        self.bug_at = self.traffic_started + BUG_AFTER_S
        gen = BrokenPipelineTraffic(seed=21, canary_share=CANARY_SHARE, bug_at=self.bug_at)
        self.traffic = LiveTraffic(self.kafka.bootstrap_servers, self.settings, gen, RATE,
                                   FixedSplit())
        self.stack.push_async_callback(self._stop_traffic)
        self.tasks = [
            asyncio.create_task(self.traffic.run(self.stop_traffic)),
            asyncio.create_task(_side_traffic(self.kafka.bootstrap_servers, self.settings,
                                              self.stop_traffic, self.side_sent)),
        ]

    async def dead_letter_count(self) -> int:
        """Records on the dead-letter topic (one partition) written before this
        call, counted by reading them: tansu's ListOffsets "latest" is not
        reliable (it once answered 2,500 with at least 2,520 records written)."""
        from aiokafka import AIOKafkaConsumer, TopicPartition

        assert self.settings is not None
        tp = TopicPartition(self.settings.kafka.dead_letter_topic, 0)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.kafka.bootstrap_servers,
                                    enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            start_ms = time.time() * 1000.0
            count = 0
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 8.0
            # the stream goes on: stop at the first record written after the call
            # (or when no more come), so the loop ends by itself
            while loop.time() < deadline:
                msgs = (await consumer.getmany(tp, timeout_ms=500)).get(tp, [])
                if not msgs:
                    break
                for m in msgs:
                    if m.timestamp > start_ms:
                        return count
                    count += 1
            return count
        finally:
            await consumer.stop()

    async def check(self) -> None:
        """Raise if the service or a producer has died."""
        for task in [*self.tasks, *([self.service_task] if self.service_task else [])]:
            if task.done():
                task.result()
                raise RuntimeError(f"{task!r} ended early")

    async def _stop_traffic(self) -> None:
        self.stop_traffic.set()
        if self.tasks:
            await asyncio.wait_for(asyncio.gather(*self.tasks), timeout=15)

    async def stop(self) -> None:
        await self.stack.aclose()


class LoopThread:
    """An asyncio loop in a thread: the service keeps running while tests block."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="driftgate-live",
                                       daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(15)
        if not self.thread.is_alive():
            self.loop.close()


# ------------------------------------------------------------------ servers
class Server:
    """A Prometheus or Alertmanager child process on a loopback port."""

    def __init__(self, name: str, argv: list[str], port: int, log: Path) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30) -> Server:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not become ready:\n{self.tail()}")
            time.sleep(0.2)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""

    def stop(self) -> None:
        self.http.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def write_prometheus_config(tmp: Path, driftgate: str, dead: str, prometheus: str,
                            alertmanager: str) -> Path:
    """deploy/prometheus/prometheus.yml and its rule files, for loopback and 1 s intervals.

    ``dead`` is a second target of the driftgate job where nothing listens (a
    replica that is down), so ``up{job="driftgate"} == 0`` has a series.
    """
    cfg = load_yaml(PROM_CONFIG)
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    for rel in cfg["rule_files"]:  # same relative paths, next to the copied config
        src, dst = PROM_CONFIG.parent / rel, tmp / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        doc = load_yaml(src)
        changed = False
        for group in doc["groups"]:
            for rule in group["rules"]:
                if rule.get("alert") in SHORTENED_FOR:
                    rule["for"] = SHORTENED_FOR[rule["alert"]]
                    changed = True
        dst.write_text(yaml.safe_dump(doc, sort_keys=False) if changed else src.read_text())
    targets = {JOB: [driftgate, dead], "prometheus": [prometheus],
               "alertmanager": [alertmanager]}
    jobs = {sc["job_name"]: sc for sc in cfg["scrape_configs"]}
    assert set(jobs) == set(targets), f"new scrape jobs in {PROM_CONFIG}: map them here"
    for name, sc in jobs.items():
        (static,) = sc["static_configs"]
        static["targets"] = targets[name]
    (am,) = cfg["alerting"]["alertmanagers"]
    (static,) = am["static_configs"]
    static["targets"] = [alertmanager]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def write_alertmanager_config(tmp: Path, webhook_url: str) -> Path:
    """deploy/alertmanager/alertmanager.yml with the webhook at ``webhook_url``."""
    cfg = load_yaml(AM_CONFIG)
    for receiver in cfg["receivers"]:
        assert set(receiver) <= {"name", "webhook_configs"}, \
            f"receiver {receiver['name']}: only webhooks can be pointed at the test"
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = webhook_url

    def shorten(route: dict[str, Any]) -> None:
        if "group_wait" in route:
            route["group_wait"] = SHORT_GROUP_WAIT
        for child in route.get("routes", []):
            shorten(child)

    shorten(cfg["route"])
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ------------------------------------------------------------------- fixture
@dataclass
class Live:
    prometheus: Server
    alertmanager: Server
    scenario: Scenario
    loop: LoopThread
    dead_target: str
    rules_dir: Path

    @property
    def driftgate_target(self) -> str:
        return f"127.0.0.1:{self.scenario.port}"


@pytest.fixture(scope="module")
def live(kafka: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("prometheus-live")
    scenario = Scenario(kafka, tmp)
    servers: list[Server] = []
    with LoopThread() as loop:
        try:
            loop.run(scenario.start(), timeout=90)
            am_port, prom_port, dead_port = free_port(), free_port(), free_port()
            am_cfg = write_alertmanager_config(tmp, f"{scenario.receiver.url}/alerts")
            am = Server("alertmanager", [
                tool("prometheus-alertmanager", "alertmanager"), f"--config.file={am_cfg}",
                f"--storage.path={tmp / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                f"--web.external-url=http://127.0.0.1:{am_port}/",
                "--cluster.listen-address="], am_port, tmp / "alertmanager.log")
            servers.append(am)
            am.start()
            prom_cfg = write_prometheus_config(
                tmp, f"127.0.0.1:{scenario.port}", f"127.0.0.1:{dead_port}",
                f"127.0.0.1:{prom_port}", f"127.0.0.1:{am_port}")
            prom = Server("prometheus", [
                tool("prometheus"), f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                f"--web.external-url=http://127.0.0.1:{prom_port}/",
                "--web.enable-lifecycle"], prom_port, tmp / "prometheus.log")
            servers.append(prom)
            prom.start()
            dg = f"127.0.0.1:{scenario.port}"
            # scraping before the traffic: counters are seen at 0 before they move
            wait_until(lambda: _query(prom, f'up{{job="{JOB}", instance="{dg}"}} == 1'), 20,
                       what="Prometheus scraping driftgate")
            loop.run(scenario.start_traffic(), timeout=10)
            while time.time() < scenario.traffic_started + SCRAPE_S:
                loop.run(scenario.check(), timeout=10)
                time.sleep(1)
            yield Live(prom, am, scenario, loop, f"127.0.0.1:{dead_port}",
                       prom_cfg.parent / "rules")
        finally:
            for server in reversed(servers):
                server.stop()
            loop.run(scenario.stop(), timeout=90)


# -------------------------------------------------------------------- helpers
def _api(server: Server, path: str, **params: Any) -> Any:
    r = server.http.get(path, params=params)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise AssertionError(f"{path} {params}: HTTP {r.status_code}: {body}")
    return body["data"]


def _query(server: Server, expr: str) -> list[dict[str, Any]]:
    data = _api(server, "/api/v1/query", query=expr)
    assert data["resultType"] == "vector", (expr, data["resultType"])
    return list(data["result"])


def grafana_query(expr: str, values: Mapping[str, str]) -> str:
    """A dashboard expression with Grafana's built-ins (as in the static checks)
    and the dashboard variables set to ``values``."""
    for var, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(var, value)

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in values:
            raise AssertionError(f"unknown dashboard variable ${m.group(1)} in {expr}")
        return values[m.group(1)]

    return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", sub, expr)


def _expressions() -> list[tuple[str, str]]:
    """(where, PromQL) of every rule expression and every dashboard query, the
    dashboards' with the variables as a user picks them and with "All"."""
    out = [(f"rule {name}", rule["expr"]) for name, rule in alert_rules().items()]
    for name, rule in recording_rules().items():
        out += [(f"rule {name}", rule["expr"]), (f"recorded {name}", name)]
    for where, expr in dashboard_exprs():
        out += [(f"{where} [selected]", grafana_query(expr, SELECTED)),
                (f"{where} [All]", grafana_query(expr, ALL))]
    return out


# ================================================================ Prometheus
def test_every_query_returns_data_on_live_prometheus(live: Live) -> None:
    prom = live.prometheus
    # the targets: driftgate, Prometheus and Alertmanager up; the dead replica down
    health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"]
              for t in _api(prom, "/api/v1/targets")["activeTargets"]}
    assert health == {(JOB, live.driftgate_target): "up", (JOB, live.dead_target): "down",
                      ("prometheus", prom.url.removeprefix("http://")): "up",
                      ("alertmanager", live.alertmanager.url.removeprefix("http://")): "up"}
    # driftgate answered (nearly) every scrape: nothing below comes from a gappy series
    (up,) = _query(prom, f'avg_over_time(up{{instance="{live.driftgate_target}"}}[30s])')
    assert float(up["value"][1]) >= 0.9, up

    # every rule loaded from the copies of the rule files, and evaluates cleanly
    loaded = [r for g in _api(prom, "/api/v1/rules")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted([*alert_rules(), *recording_rules()])
    bad = [(r["name"], r["health"], r.get("lastError")) for r in loaded if r["health"] != "ok"]
    assert not bad, bad
    for r in loaded:  # the copies' expressions are the committed ones
        committed = {**alert_rules(), **recording_rules()}[r["name"]]["expr"]
        assert _query_text(prom, r["query"]) == _query_text(prom, committed), r["name"]

    # every dashboard query is found by dashboard_exprs(): no collapsed row hides panels
    for name, dash in dashboards().items():
        for panel in dash["panels"]:
            assert not panel.get("panels"), f"{name}: row {panel['title']!r} holds panels"

    # the queries
    exprs = _expressions()
    may_be_empty = {**ALLOWED_EMPTY, **KNOWN_BUGS}
    assert set(may_be_empty) <= {w for w, _ in exprs}, "stale ALLOWED_EMPTY/KNOWN_BUGS entry"
    assert set(QUIET_PROBES) == set(ALLOWED_EMPTY)
    empty: dict[str, str] = {}
    for where, expr in exprs:
        if not _query(prom, expr):
            empty[where] = expr
    if set(empty) - set(may_be_empty):  # one retry after a few scrapes (a 1 s gap)
        time.sleep(3)
        empty = {w: e for w, e in empty.items() if not _query(prom, e)}
    missing = {w: e for w, e in empty.items() if w not in may_be_empty}
    assert not missing, "no data:\n" + "\n".join(f"{w}: {e}" for w, e in missing.items())
    # the allowed-empty alerts are quiet on a healthy instance, and their selectors match
    assert set(ALLOWED_EMPTY) <= set(empty), set(ALLOWED_EMPTY) - set(empty)
    for where, probe in QUIET_PROBES.items():
        assert _query(prom, probe), (where, probe)
    fixed = set(KNOWN_BUGS) - set(empty)
    assert not fixed, f"{sorted(fixed)} return data now: remove them from KNOWN_BUGS"
    n_rules = len(alert_rules()) + 2 * len(recording_rules())
    print(f"\n{len(exprs)} expressions: {len(alert_rules())} alert rules, "
          f"{len(recording_rules())} recording rules (expression and recorded series), "
          f"{len(exprs) - n_rules} dashboard queries ({(len(exprs) - n_rules) // 2} queries x "
          f"selected/All variables); empty: {sorted(empty)}")

    # alert states: firing without `for:` (or shortened), pending otherwise
    states = {a["labels"]["alertname"]: a["state"] for a in _api(prom, "/api/v1/alerts")["alerts"]}
    expected = {name: "firing" if SHORTENED_FOR.get(name, rule.get("for", "0s")) == "0s"
                else "pending" for name, rule in alert_rules().items()
                if f"rule {name}" not in may_be_empty}
    assert {n: states.get(n) for n in expected} == expected

    # the dashboards' variables offer the live values
    for label, selector, wanted in (
            ("job", "driftgate_reference_info", {JOB}),
            ("model", f'driftgate_events_total{{job=~"{JOB}"}}', {MODEL}),
            ("version", f'driftgate_events_total{{job=~"{JOB}", model=~"{MODEL}"}}',
             {CHAMPION, CANARY}),
            ("feature", f'driftgate_psi{{job=~"{JOB}", model=~"{MODEL}", '
                        f'feature!="model_score"}}', {"txn_velocity_1h", "amount"})):
        values = set(_api(prom, f"/api/v1/label/{label}/values", **{"match[]": selector}))
        assert wanted <= values, (label, values)

    # every metric the dashboards and rules read is in Prometheus; what driftgate
    # exports is exactly the list the static checks read from the code
    names = set(_api(prom, "/api/v1/label/__name__/values"))
    used = set().union(*(metric_names(e) for _, e in exprs))
    assert used <= names, sorted(used - names)
    live_driftgate = {n for n in names if n.startswith("driftgate_")
                      and not n.endswith("_created")}
    assert live_driftgate == EXPORTED_METRICS, (sorted(live_driftgate - EXPORTED_METRICS),
                                                sorted(EXPORTED_METRICS - live_driftgate))

    # the conditions the side traffic makes happened, and were scraped
    def total(expr: str) -> float:
        return sum(float(s["value"][1]) for s in _query(prom, expr))

    for expr in ('driftgate_invalid_events_total{kind="prediction"}',
                 'driftgate_invalid_events_total{kind="label"}',
                 "driftgate_late_events_total", "driftgate_late_labels_total",
                 'driftgate_duplicate_events_total{kind="prediction"}',
                 'driftgate_duplicate_events_total{kind="label"}',
                 'driftgate_decisions_total{action="rollback"}',
                 'driftgate_webhook_deliveries_total{target="alertmanager", '
                 'outcome="rejected"}'):
        assert total(expr) > 0, expr
    reasons = {s["metric"]["reason"] for s in _query(prom, "driftgate_invalid_events_total")}
    assert len(reasons) >= 4, reasons
    # every rejected record is on the dead-letter topic
    rejected = total("driftgate_invalid_events_total")
    wait_until(lambda: live.loop.run(live.scenario.dead_letter_count(), 10) >= rejected, 10,
               what=f"{rejected:.0f} records on the dead-letter topic")


def test_rollback_webhook_reaches_the_router(live: Live) -> None:
    """The rollback decision reaches the router, and Prometheus counts the delivery.

    Regression (ROLLBACK_BUG, fixed): both rollback rules of the demo often fire
    in the same evaluation; exactly one rollback must still be sent.
    """
    scenario = live.scenario
    assert scenario.router is not None
    assert scenario.settings is not None
    audit = [json.loads(line)
             for line in Path(scenario.settings.audit.path).read_text().splitlines()]
    rollbacks = {r["decision_id"] for r in audit
                 if r["kind"] == "decision" and r["action"] == "rollback"}
    assert rollbacks, "no rollback decision"
    sent = {r["decision_id"] for r in audit
            if r["kind"] == "delivery" and r["target"] == f"router:{MODEL}"}
    assert sent & rollbacks, (ROLLBACK_BUG, audit)
    (got,) = [r for r in scenario.router.received if not r.duplicate]
    assert got.webhook_id in rollbacks
    assert got.body["canary_version"] == CANARY
    delivered = _query(live.prometheus, f'driftgate_webhook_deliveries_total{{job="{JOB}", '
                                        f'target="router:{MODEL}", outcome="delivered"}}')
    assert [float(s["value"][1]) for s in delivered] == [1.0]


def test_dead_letter_counter_counts_the_topic(live: Live) -> None:
    # the counter first (its value as of Prometheus's last scrape), the topic after:
    # the stream goes on, so the topic holds at least what was counted by then
    counted = sum(float(s["value"][1]) for s in _query(
        live.prometheus, f'driftgate_dead_letter_records_total{{job="{JOB}"}}'))
    on_topic = live.loop.run(live.scenario.dead_letter_count(), 10)
    assert on_topic > 0
    assert 0.9 * on_topic <= counted <= on_topic, (counted, on_topic)
    (ratio,) = _query(live.prometheus, "instance:driftgate_dead_letter:ratio_rate5m")
    assert float(ratio["value"][1]) > 0.01, ratio


def _query_text(prom: Server, expr: str) -> str:
    """``expr`` parsed and printed by Prometheus (to compare expressions, not text)."""
    return str(_api(prom, "/api/v1/format_query", query=expr))


# ============================================================== Alertmanager
def test_drift_alert_reaches_the_webhook_through_alertmanager(live: Live) -> None:
    # the test's copy keeps DriftgateDriftHigh's expression, only `for:` is shorter
    copied = {r["alert"]: r for f in sorted(live.rules_dir.glob("*.yml"))
              for g in load_yaml(f)["groups"] for r in g["rules"] if "alert" in r}
    assert copied["DriftgateDriftHigh"]["expr"] == alert_rules()["DriftgateDriftHigh"]["expr"]
    assert copied["DriftgateDriftHigh"]["for"] == "0s"
    assert alert_rules()["DriftgateDriftHigh"]["for"] == "5m"
    receiver = live.scenario.receiver

    def notification(alertname: str) -> dict[str, Any] | None:
        for body in list(receiver.notifications):
            if body["status"] == "firing" and body["groupLabels"].get("alertname") == alertname:
                return body
        return None

    drift = wait_until(lambda: notification("DriftgateDriftHigh"), 30,
                       what="DriftgateDriftHigh at the webhook receiver")
    assert drift["version"] == "4"
    assert drift["receiver"] == "oncall"
    assert drift["groupLabels"] == {"alertname": "DriftgateDriftHigh", "model": MODEL}
    assert drift["externalURL"] == live.alertmanager.url
    assert drift["alerts"]
    for alert in drift["alerts"]:
        labels = alert["labels"]
        assert alert["status"] == "firing"
        assert labels["alertname"] == "DriftgateDriftHigh"
        assert labels["model"] == MODEL
        assert labels["version"] == CANARY  # the drifting canary, not the champion
        assert labels["job"] == JOB
        assert labels["instance"] == live.driftgate_target
        assert labels["severity"] == "warning"
        assert labels["feature"] == "model_score"
        assert labels["stack"] == "driftgate"  # Prometheus' external label
        assert alert["annotations"]["runbook_url"].endswith("#driftgatedrifthigh")
        assert f"{MODEL} {CANARY}: score PSI" in alert["annotations"]["summary"]
        assert alert["generatorURL"].startswith(live.prometheus.url)
    assert {a["labels"]["baseline"] for a in drift["alerts"]} <= {"reference", "champion"}
    # the critical route (own group_wait) delivers too: the rollback decision
    rollback = wait_until(lambda: notification("DriftgateRollbackDecided"), 30,
                          what="DriftgateRollbackDecided at the webhook receiver")
    assert {a["labels"]["severity"] for a in rollback["alerts"]} == {"critical"}
    assert {(a["labels"]["model"], a["labels"]["version"]) for a in rollback["alerts"]} == \
        {(MODEL, CANARY)}
    # and Alertmanager holds them active, not inhibited or silenced
    active = {a["labels"]["alertname"]: a["status"]["state"]
              for a in httpx.get(f"{live.alertmanager.url}/api/v2/alerts", timeout=10).json()}
    assert active.get("DriftgateDriftHigh") == "active", active
    assert active.get("DriftgateRollbackDecided") == "active", active
