"""``driftgate demo``: the whole loop on embedded defaults, ending in a rollback.

1. Starts the embedded Kafka-protocol broker (tansu) on a free loopback port.
2. Fits a reference profile on healthy synthetic card traffic.
3. Starts a router stub that verifies signed webhooks and holds the traffic
   split (champion v1 90 %, canary v2 10 %).
4. Runs the real service (Kafka consumer group, codec, engine, rules,
   webhooks, audit log, ``/metrics``) against the broker.
5. Produces live traffic at ``rate`` transactions/s with labels 1-4 s later;
   part-way through, the canary's feature pipeline breaks (its
   ``txn_velocity_1h`` feature is served as 0): its velocity and score
   distributions drift and its catch rate drops.
6. Shows a live terminal view; when the rollback webhook reaches the router,
   the canary's traffic goes to 0. It ends by explaining what happened.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.service import Service
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.ports import free_port
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator, healthy_reference

__all__ = ["LiveTraffic", "demo_settings", "fit_demo_reference", "run_demo"]

MODEL = "card-fraud"
CHAMPION, CANARY = "v1", "v2"


def fit_demo_reference(seed: int) -> ReferenceProfile:
    """The demo's reference profile: 30,000 events of healthy champion traffic
    (generator seed ``seed + 1000``) from a day ago; also used by tests and the
    latency benchmark."""
    return healthy_reference(seed + 1000, 30_000, time.time() - 86_400,
                             metadata={"source": "synthetic healthy champion traffic",
                                       "seed": seed + 1000})


def demo_settings(bootstrap: str, workdir: Path, router_url: str, secret: str,
                  http_port: int, suffix: str = "demo") -> Settings:
    """The demo's configuration (also used by tests and the latency benchmark)."""
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": f"driftgate-{suffix}",
               "predictions_topic": f"predictions-{suffix}",
               "labels_topic": f"labels-{suffix}",
               "dead_letter_topic": f"dead-letter-{suffix}",
               "decisions_topic": f"decisions-{suffix}",
               "session_timeout_ms": 6000, "heartbeat_interval_ms": 1000,
               "fetch_max_wait_ms": 50},
        models=[{"name": MODEL, "champion": CHAMPION, "canary": CANARY,
                 "rollback_url": f"{router_url}/rollback"}],
        features={"numeric": list(NUMERIC_FEATURES), "categorical": ["merchant_category"]},
        reference={"path": str(workdir / "reference.json")},
        windows={"slice_seconds": 1, "window_seconds": 10, "kpi_window_seconds": 60,
                 "allowed_lateness_seconds": 5},
        join={"ttl_seconds": 60},
        evaluation={"tick_seconds": 0.5},
        http={"host": "127.0.0.1", "port": http_port},
        log={"format": "console", "level": "warning"},
        webhooks={"secrets": [secret], "max_attempts": 6, "initial_backoff_seconds": 0.2,
                  "max_backoff_seconds": 2.0, "timeout_seconds": 2.0},
        alerting={"url": f"{router_url}/alerts", "external_url": f"http://127.0.0.1:{http_port}"},
        audit={"path": str(workdir / "audit.jsonl")},
        rules=[
            {"name": "canary-velocity-drift", "metric": "psi", "feature": "txn_velocity_1h",
             "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.25,
             "sustain_seconds": 5, "sustain_evaluations": 3, "min_events": 500,
             "severity": "rollback", "cooldown_seconds": 600,
             "description": "the canary's inputs left the champion's"},
            {"name": "canary-catch-rate-drop", "metric": "catch_rate",
             "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.10,
             "max_p_value": 0.01, "min_labelled_frauds": 30, "sustain_seconds": 5,
             "sustain_evaluations": 3, "severity": "rollback", "cooldown_seconds": 600},
            {"name": "canary-score-drift", "metric": "psi", "feature": "model_score",
             "scope": "canary_vs_reference", "comparison": ">", "threshold": 0.04,
             "sustain_seconds": 3, "min_events": 500, "severity": "alert",
             "cooldown_seconds": 600},
            {"name": "canary-error-change", "metric": "adwin_error",
             "scope": "canary_vs_reference", "comparison": ">", "threshold": 0,
             "min_events": 500, "severity": "alert", "cooldown_seconds": 600},
        ],
    )


class LiveTraffic:
    """Produces live predictions and (delayed) labels into the broker."""

    def __init__(self, bootstrap: str, settings: Settings, gen: TrafficGenerator,
                 rate: float, router: Any) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.gen = gen
        self.rate = rate
        self.router = router
        self.sent = 0
        self.sent_canary = 0
        self._labels: list[tuple[float, int, bytes, bytes]] = []
        self._n = 0
        self._producer: Any = None

    async def start(self) -> None:
        """Connect the producer now (else :meth:`run` does); :meth:`run` stops it."""
        if self._producer is None:
            from aiokafka import AIOKafkaProducer

            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks=1,
                                        enable_idempotence=False, linger_ms=10)
            await producer.start()
            self._producer = producer

    def on_prediction(self, at: float, value: bytes, event: dict[str, Any]) -> None:
        """Called for every prediction just before it is sent (a hook)."""

    async def run(self, stop: asyncio.Event) -> None:
        await self.start()
        producer = self._producer
        k = self.settings.kafka
        step = 0.1
        try:
            next_t = time.time()
            while not stop.is_set():
                now = time.time()
                share = self.router.canary_share(MODEL, CANARY)
                batch = self.gen.generate(max(int(self.rate * step), 1), start_ts=now,
                                          rate_per_s=self.rate, canary_share=share)
                for p, lab in zip(batch.predictions, batch.labels, strict=True):
                    key = p["event_id"].encode()
                    value = json.dumps(p).encode()
                    self.on_prediction(time.time(), value, p)
                    await producer.send(k.predictions_topic, value, key=key)
                    self._n += 1
                    heapq.heappush(self._labels, (lab["ts"], self._n, key,
                                                  json.dumps(lab).encode()))
                    self.sent += 1
                    self.sent_canary += p["model_version"] == CANARY
                while self._labels and self._labels[0][0] <= now:
                    _, _, key, value = heapq.heappop(self._labels)
                    await producer.send(k.labels_topic, value, key=key)
                next_t += step
                await asyncio.sleep(max(0.0, next_t - time.time()))
        finally:
            self._producer = None
            await producer.stop()


def _view(service: Service | None, traffic: LiveTraffic, router: Any, t0: float,
          bug_at: float, rollback_at: float | None) -> Group:
    elapsed = time.time() - t0
    head = Table.grid(padding=(0, 2))
    head.add_row(f"[b]t = {elapsed:5.1f}s[/b]",
                 f"sent {traffic.sent:,} ({traffic.sent / max(elapsed, 1e-9):,.0f}/s)",
                 f"canary traffic {router.canary_share(MODEL, CANARY):.0%}",
                 ("[red]canary pipeline BROKEN[/red]" if time.time() >= bug_at
                  else f"bug in {bug_at - time.time():4.1f}s"),
                 (f"[green]rolled back at t+{rollback_at - t0:.1f}s[/green]"
                  if rollback_at else ""))
    parts: list[Any] = [head]
    if service is not None and service.engine is not None:
        ev = service.engine.snapshot()
        t = Table(title="versions (window vs frozen reference)", expand=True)
        for col in ("version", "role", "window events", "PSI score", "PSI velocity",
                    "catch rate [95% CI]", "labelled frauds"):
            t.add_column(col)
        for (model, version), ve in sorted(ev.versions.items()):
            del model
            psi = ve.vs_reference.psi if ve.vs_reference else {}
            cr = ve.kpis.catch_rate
            t.add_row(version, ve.role, f"{ve.window_events:,}",
                      f"{psi.get('model_score', math.nan):.3f}",
                      f"{psi.get('txn_velocity_1h', math.nan):.3f}",
                      (f"{cr.value:.2f} [{cr.lower:.2f}, {cr.upper:.2f}]"
                       if math.isfinite(cr.value) else "-"),
                      f"{ve.confusion.frauds}")
        parts.append(t)
        layer = service.decisions
        if layer is not None:
            r = Table(title="rules", expand=True)
            for col in ("rule", "severity", "state", "value", "detail"):
                r.add_column(col)
            for s in sorted(layer.policy.states.values(), key=lambda s: s.rule):
                colour = {"firing": "red", "breaching": "yellow", "ok": "green"}.get(
                    s.status, "dim")
                r.add_row(s.rule, s.severity, f"[{colour}]{s.status}[/{colour}]",
                          "-" if s.value is None else f"{s.value:.3f}", s.detail[:70])
            parts.append(r)
    return Group(*parts)


async def _demo(duration: float, seed: int, rate: float, console: Console) -> int:
    from monitor.sandbox.router_stub import RouterStub
    from monitor.serve.runner import run_service
    from rollback.audit import verify_file
    from rollback.signing import new_secret

    workdir = Path(tempfile.mkdtemp(prefix="driftgate-demo-"))
    console.print(f"[b]driftgate demo[/b]: seed {seed}, {duration:.0f}s, {rate:.0f} tx/s, "
                  f"output in {workdir}")
    secret = new_secret()
    router = RouterStub(secrets=[secret], weights={MODEL: {CHAMPION: 90, CANARY: 10}})
    await router.start()
    with EmbeddedBroker(log_path=workdir / "broker.log") as broker:
        console.print(f"embedded broker (tansu) on {broker.bootstrap_servers}; "
                      f"router stub on {router.url}")
        ref = fit_demo_reference(seed)
        (workdir / "reference.json").write_text(ref.to_json())
        port = free_port()
        settings = demo_settings(broker.bootstrap_servers, workdir, router.url, secret, port)
        k = settings.kafka
        await broker.create_topics({k.predictions_topic: 4, k.labels_topic: 4,
                                    k.dead_letter_topic: 1, k.decisions_topic: 1})
        holder: dict[str, Service] = {}
        service_task = asyncio.create_task(run_service(
            settings, install_signals=False, started=lambda s: holder.__setitem__("s", s)))
        deadline = time.time() + 30
        while "s" not in holder and time.time() < deadline and not service_task.done():
            await asyncio.sleep(0.05)
        if "s" not in holder:
            if service_task.done():
                service_task.result()
            console.print("[red]the service did not start[/red]")
            return 1
        service = holder["s"]
        # wait for the consumer group to get its partitions before traffic starts
        while not service.source.status().assigned and time.time() < deadline:
            await asyncio.sleep(0.1)
        console.print(f"service ready: /metrics on http://127.0.0.1:{port}/metrics")
        t0 = time.time()
        bug_at = t0 + duration * 0.35
        gen = TrafficGenerator(seed=seed, bug_at=bug_at)
        traffic = LiveTraffic(broker.bootstrap_servers, settings, gen, rate, router)
        stop_traffic = asyncio.Event()
        traffic_task = asyncio.create_task(traffic.run(stop_traffic))
        rollback_at: float | None = None
        try:
            with Live(_view(service, traffic, router, t0, bug_at, None), console=console,
                      refresh_per_second=4, transient=False) as live:
                while time.time() - t0 < duration:
                    await asyncio.sleep(0.25)
                    if rollback_at is None and router.received:
                        rollback_at = router.received[0].at
                    live.update(_view(service, traffic, router, t0, bug_at, rollback_at))
                    if rollback_at is not None and time.time() - rollback_at > 8:
                        break
                    if traffic_task.done():
                        traffic_task.result()
        finally:
            stop_traffic.set()
            await asyncio.wait_for(traffic_task, timeout=10)
            service.stopping.set()
            await asyncio.wait_for(service_task, timeout=30)
            await router.stop()
    layer = service.decisions
    decisions = [d for d in layer.policy.decisions.values()] if layer else []
    rollbacks = [d for d in decisions if d.action == "rollback"]
    audit_path = settings.audit.path
    check = verify_file(Path(audit_path))
    console.print()
    console.rule("[b]what happened")
    console.print(f"drift began        t+{bug_at - t0:5.1f}s  (canary v2's velocity feature "
                  "served as 0 by a broken feature pipeline)")
    if not rollbacks:
        console.print("[red]no rollback decision was taken in the demo's time[/red]")
        for s in (layer.policy.states.values() if layer else []):
            console.print(f"  {s.rule}: {s.status} - {s.detail}")
        return 1
    first = min(rollbacks, key=lambda d: d.at)
    timeline: list[tuple[float, str]] = [
        (first.breach_started_at, f"drift detected     t+{first.breach_started_at - t0:5.1f}s  "
                                  f"(rule {first.rule} first breached)"),
        (first.at, f"rollback decided   t+{first.at - t0:5.1f}s  {first.reason}"),
    ]
    alerts = [d for d in decisions if d.action == "alert"]
    if alerts:
        a = min(alerts, key=lambda d: d.at)
        timeline.append((a.at, f"first alert        t+{a.at - t0:5.1f}s  {a.reason}"))
    if router.received:
        got = router.received[0]
        timeline.append((got.at, f"rollback delivered t+{got.at - t0:5.1f}s  signed webhook "
                                 f"{got.webhook_id} verified by the router; canary traffic "
                                 f"now {router.canary_share(MODEL, CANARY):.0%}"))
    else:
        timeline.append((math.inf, "[red]the rollback webhook did not reach the router[/red]"))
    for _, line in sorted(timeline, key=lambda x: x[0]):
        console.print(line)
    console.print(f"decision id        {first.decision_id}")
    ev = first.evidence
    p_text = "" if ev.get("p_value") is None else f", p = {ev['p_value']:.2g}"
    console.print(f"evidence           value {ev['value']:.4f} {ev['comparison']} "
                  f"{ev['threshold']}{p_text}, config {ev['config_hash'][:12]}, "
                  f"reference {ev['reference_hash'][:12]}, window {ev['window']['target']}")
    console.print(f"audit log          {audit_path} ({check.records} records, chain "
                  f"{'intact' if check.ok else 'BROKEN: ' + str(check.reason)}; check it with "
                  f"`driftgate audit verify {audit_path}`)")
    return 0 if router.received and check.ok else 1


def run_demo(duration: float = 60.0, seed: int = 7, rate: float = 2000.0) -> int:
    """Run the demo; returns the process exit code (0 when the rollback landed)."""
    if not 20 <= duration <= 600:
        raise ValueError(f"duration must be between 20 and 600 seconds, got {duration!r}")
    from monitor.logs import configure_logging

    configure_logging("console", "warning")
    console = Console()
    return asyncio.run(_demo(duration, seed, rate, console))
