"""Benchmark: time from a drifting canary to the signed rollback at the router.

One embedded broker (tansu) for the whole run. Each seeded trial gets fresh
topics, a fresh consumer group, a fresh router stub and a fresh service
(:func:`monitor.serve.runner.run_service`, the real Kafka source, codec, engine,
policy, signed webhook delivery and audit log), configured from
:func:`monitor.sandbox.demo.demo_settings` with a single rollback rule:

    psi(txn_velocity_1h), canary_vs_champion, > 0.25, sustain 2 s
    (1 evaluation), min_events 300, cooldown 600 s; evaluator tick 0.25 s.

Once the service has its partitions, live traffic is produced at 1,500 tx/s
(canary share 30 %, labels 1-4 s later); 3 s in, the canary's feature pipeline
breaks (``TrafficGenerator(bug_at=...)``: its ``txn_velocity_1h`` is served as
0). Every prediction's wall-clock production time is recorded. The trial ends
when the router stub has verified the signed rollback webhook (or after 30 s).

Afterwards, offline, the produced predictions are replayed in production order
through a fresh :class:`monitor.engine.Engine` with the same settings and
reference, evaluating after every 10 events; in the first chunk whose
evaluation breaches the rule (canary-vs-champion PSI of ``txn_velocity_1h`` >
0.25 with both versions' windows >= ``min_events``) the replay is repeated one
event at a time to find the exact event that pushes the window over the rule.
With ``t_push`` its production time and ``S`` the rule's sustain period::

    latency  = router_received_at - (t_push + S)
    decision = decision.at        - (t_push + S)   (ingest + tick quantization)
    delivery = router_received_at - decision.at    (signing + HTTP + verification)
    detect   = breach_started_at  - t_push         (first tick that saw the breach)

Over 20 trials (3 with ``--quick``) it reports p50 / p99 / max (numpy
percentiles, linear interpolation) against the target p99 <= 1 s. For scale:
Flagger's shortest analysis interval is 10 s; Argo Rollouts behind a
Prometheus scrape typically reacts in 1-2 minutes.

Run ``python -m benchmarks.bench_latency [--quick]`` from the project root:
one JSON object on one line goes to stdout, progress to stderr. A ``make
bench`` aggregator can call :func:`run` instead.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import cli_main, json_safe, stderr_log
from benchmarks.latency_replay import CHUNK_EVENTS, Produced, Push, find_push
from detectors import ReferenceProfile
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
from monitor.sandbox.traffic import TrafficGenerator
from rollback.policy import Decision
from rollback.rules import RuleSpec

__all__ = ["run"]

BASE_SEED = 20240611  # trial i uses seed BASE_SEED + i
REFERENCE_SEED = 7  # the demo's default seed (the reference is fitted on seed + 1000)
FULL_TRIALS = 20
QUICK_TRIALS = 3
RATE_PER_S = 1500.0
CANARY_SHARE = 0.3
BUG_AFTER_S = 3.0
TICK_SECONDS = 0.25
SUSTAIN_SECONDS = 2.0
PARTITIONS = 4  # predictions and labels topics, as in the demo
TRIAL_TIMEOUT_S = 30.0
ASSIGN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
TARGET_P99_S = 1.0
RULE: dict[str, Any] = {
    "name": "canary-velocity-drift", "metric": "psi", "feature": "txn_velocity_1h",
    "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.25,
    "sustain_seconds": SUSTAIN_SECONDS, "sustain_evaluations": 1, "min_events": 300,
    "severity": "rollback", "cooldown_seconds": 600,
    "description": "the canary's inputs left the champion's",
}


_log = stderr_log("bench_latency")

class RecordingTraffic(LiveTraffic):
    """:class:`LiveTraffic` that records every prediction's production time.

    Call :meth:`start` before the trial's clock starts; :meth:`run` stops the
    producer when it returns.
    """

    def __init__(self, bootstrap: str, settings: Settings, gen: TrafficGenerator,
                 rate: float, router: RouterStub) -> None:
        super().__init__(bootstrap, settings, gen, rate, router)
        self.produced: list[Produced] = []

    def on_prediction(self, at: float, value: bytes, event: dict[str, Any]) -> None:
        self.produced.append(Produced(at, value, event["model_version"]))


# --------------------------------------------------------------------------- one trial


@dataclass
class Trial:
    """What one trial measured (times are epoch seconds unless named ``*_s``)."""

    index: int
    seed: int
    ok: bool = False
    error: str | None = None
    join_s: float = math.nan
    t0: float = math.nan
    bug_at: float = math.nan
    events: int = 0
    push: Push | None = None
    decision: Decision | None = None
    received_at: float | None = None
    trial_s: float = math.nan
    stop_s: float = math.nan
    replay_s: float = math.nan
    attempt_at: float | None = None  # the first router attempt's start (audit log)
    notes: list[str] = field(default_factory=list)

    @property
    def ideal_at(self) -> float:
        return self.push.at + SUSTAIN_SECONDS if self.push is not None else math.nan

    def latency(self) -> float | None:
        if self.push is None or self.received_at is None:
            return None
        return self.received_at - self.ideal_at

    def decision_delay(self) -> float | None:
        if self.push is None or self.decision is None:
            return None
        return self.decision.at - self.ideal_at

    def delivery(self) -> float | None:
        if self.decision is None or self.received_at is None:
            return None
        return self.received_at - self.decision.at

    def to_attempt(self) -> float | None:
        """Decision to the first HTTP attempt (audit append, decisions topic, spawn)."""
        if self.decision is None or self.attempt_at is None:
            return None
        return self.attempt_at - self.decision.at

    def http(self) -> float | None:
        """First attempt's start to the router's receipt (sign, connect, POST, verify)."""
        if self.attempt_at is None or self.received_at is None:
            return None
        return self.received_at - self.attempt_at

    def detect(self) -> float | None:
        if self.push is None or self.decision is None:
            return None
        return self.decision.breach_started_at - self.push.at

    def summary(self) -> dict[str, Any]:
        push = self.push
        return {
            "trial": self.index, "seed": self.seed, "ok": self.ok, "error": self.error,
            "latency_s": self.latency(), "decision_delay_s": self.decision_delay(),
            "delivery_s": self.delivery(), "detect_s": self.detect(),
            "decision_to_attempt_s": self.to_attempt(), "attempt_to_router_s": self.http(),
            "push_after_bug_s": None if push is None else push.at - self.bug_at,
            "push_event_index": None if push is None else push.index,
            "push_event_version": None if push is None else push.version,
            "psi_at_push": None if push is None else push.value,
            "chunk_vs_event_s": None if push is None else push.chunk_last_at - push.at,
            "decision_psi": (None if self.decision is None
                             else self.decision.evidence.get("value")),
            "events_produced": self.events, "group_join_s": self.join_s,
            "trial_s": self.trial_s, "stop_s": self.stop_s, "replay_s": self.replay_s,
            "notes": self.notes,
        }


def _first_attempt_at(path: Path, webhook_id: str, model: str) -> float | None:
    """When the first attempt to deliver ``webhook_id`` to the router started."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        rec = json.loads(line)
        if (rec.get("kind") == "attempt" and rec.get("webhook_id") == webhook_id
                and rec.get("target") == f"router:{model}" and rec.get("number") == 1):
            return float(rec["at"])
    return None


def _trial_settings(broker: EmbeddedBroker, workdir: Path, router: RouterStub, secret: str,
                    suffix: str) -> Settings:
    base = demo_settings(broker.bootstrap_servers, workdir, router.url, secret, free_port(),
                         suffix=suffix)
    return base.model_copy(update={
        "rules": [RuleSpec(**RULE)],
        "evaluation": base.evaluation.model_copy(update={"tick_seconds": TICK_SECONDS}),
    })


async def _stop_task(task: asyncio.Task[Any], timeout: float, what: str,
                     trial: Trial) -> None:
    try:
        await asyncio.wait_for(task, timeout=timeout)
    except TimeoutError:
        trial.notes.append(f"{what} did not stop within {timeout:g}s (cancelled)")
    except Exception as exc:  # reported, the next trial still runs
        trial.notes.append(f"{what} failed: {type(exc).__name__}: {exc}")


async def _run_trial(broker: EmbeddedBroker, root: Path, reference: ReferenceProfile,
                     index: int) -> Trial:
    from monitor.serve.runner import run_service
    from rollback.signing import new_secret

    seed = BASE_SEED + index
    trial = Trial(index, seed)
    started = time.time()
    suffix = f"lat-{index:02d}-{os.getpid()}"
    workdir = root / suffix
    workdir.mkdir()
    (workdir / "reference.json").write_text(reference.to_json())
    secret = new_secret()
    share = round(CANARY_SHARE * 100)
    router = RouterStub(secrets=[secret], weights={MODEL: {CHAMPION: 100 - share,
                                                           CANARY: share}})
    await router.start()
    settings = _trial_settings(broker, workdir, router, secret, suffix)
    k = settings.kafka
    await broker.create_topics({k.predictions_topic: PARTITIONS, k.labels_topic: PARTITIONS,
                                k.dead_letter_topic: 1, k.decisions_topic: 1})
    holder: dict[str, Service] = {}
    service_task = asyncio.create_task(run_service(
        settings, install_signals=False, started=lambda s: holder.__setitem__("s", s)))
    traffic: RecordingTraffic | None = None
    traffic_task: asyncio.Task[None] | None = None
    stop_traffic = asyncio.Event()
    try:
        deadline = time.time() + ASSIGN_TIMEOUT_S
        while "s" not in holder and time.time() < deadline and not service_task.done():
            await asyncio.sleep(0.02)
        if "s" not in holder:
            if service_task.done():
                service_task.result()
            raise RuntimeError("the service did not start")
        service = holder["s"]
        while not service.source.status().assigned and time.time() < deadline:
            if service_task.done():
                service_task.result()
            await asyncio.sleep(0.02)
        if not service.source.status().assigned:
            raise RuntimeError(f"no partitions assigned within {ASSIGN_TIMEOUT_S:g}s")
        trial.join_s = time.time() - started
        gen = TrafficGenerator(seed=seed, canary_share=CANARY_SHARE)
        traffic = RecordingTraffic(broker.bootstrap_servers, settings, gen, RATE_PER_S, router)
        await traffic.start()
        trial.t0 = time.time()
        trial.bug_at = gen.bug_at = trial.t0 + BUG_AFTER_S
        traffic_task = asyncio.create_task(traffic.run(stop_traffic))
        deadline = trial.t0 + TRIAL_TIMEOUT_S
        while time.time() < deadline:
            if any(r.path == "/rollback" and not r.duplicate for r in router.received):
                break
            if traffic_task.done():
                traffic_task.result()
                raise RuntimeError("traffic stopped early")
            if service_task.done():
                service_task.result()
                raise RuntimeError("the service stopped early")
            await asyncio.sleep(0.01)
        got = [r for r in router.received if r.path == "/rollback" and not r.duplicate]
        if got:
            trial.received_at = got[0].at
        else:
            layer = service.decisions
            states = ([f"{s.rule}: {s.status} - {s.detail}"
                       for s in layer.policy.states.values()] if layer is not None else [])
            trial.error = (f"no rollback at the router within {TRIAL_TIMEOUT_S:g}s; "
                           f"rules: {states}")
        layer = service.decisions
        if layer is not None:
            rollbacks = sorted((d for d in layer.policy.decisions.values()
                                if d.action == "rollback"), key=lambda d: d.at)
            if rollbacks:
                trial.decision = rollbacks[0]
            if len(rollbacks) > 1:
                trial.notes.append(f"{len(rollbacks)} rollback decisions")
        if router.rejected:
            trial.notes.append(f"router rejected: {router.rejected}")
    except Exception as exc:  # one failed trial is reported, the others still run
        trial.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop_at = time.time()
        stop_traffic.set()
        if traffic_task is not None:
            await _stop_task(traffic_task, 10.0, "traffic", trial)
        elif traffic is not None and traffic._producer is not None:
            await traffic._producer.stop()
        if "s" in holder:
            holder["s"].stopping.set()
        await _stop_task(service_task, STOP_TIMEOUT_S, "service", trial)
        await router.stop()
        trial.stop_s = time.time() - stop_at
    trial.trial_s = time.time() - started
    if trial.decision is not None:
        trial.attempt_at = _first_attempt_at(Path(settings.audit.path),
                                             trial.decision.decision_id, MODEL)
    if traffic is not None:
        trial.events = len(traffic.produced)
        t = time.perf_counter()
        trial.push, notes = find_push(settings, reference, traffic.produced,
                                      RuleSpec(**RULE))
        trial.notes.extend(notes)
        trial.replay_s = time.perf_counter() - t
        if trial.push is None and trial.error is None:
            trial.error = "the offline replay never breached the rule"
        elif trial.push is not None and trial.push.at < trial.bug_at:
            trial.notes.append("the replay breached before the canary broke (noise)")
    trial.ok = trial.error is None and trial.latency() is not None
    return trial


# --------------------------------------------------------------------------- the run


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"n": 0, "p50": None, "p99": None, "max": None, "min": None, "mean": None}
    a = np.asarray(values, dtype=np.float64)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p99": float(np.percentile(a, 99)), "max": float(a.max()),
            "min": float(a.min()), "mean": float(a.mean())}


async def _run(quick: bool) -> dict[str, Any]:
    begun = time.perf_counter()
    n_trials = QUICK_TRIALS if quick else FULL_TRIALS
    trials: list[Trial] = []
    with tempfile.TemporaryDirectory(prefix="driftgate-bench-latency-") as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        reference = fit_demo_reference(REFERENCE_SEED)
        _log(f"reference fitted in {time.perf_counter() - t:.1f}s")
        async with EmbeddedBroker(log_path=root / "tansu.log") as broker:
            _log(f"embedded broker on {broker.bootstrap_servers}; {n_trials} trials")
            for i in range(n_trials):
                trial = await _run_trial(broker, root, reference, i)
                trials.append(trial)
                lat = trial.latency()
                _log(f"trial {i + 1}/{n_trials} seed {trial.seed}: "
                     + (f"latency {lat:.3f}s (decision {trial.decision_delay() or 0:.3f}s, "
                        f"delivery {trial.delivery() or 0:.3f}s, detect "
                        f"{trial.detect() or 0:.3f}s, to attempt "
                        f"{trial.to_attempt() or 0:.3f}s, http {trial.http() or 0:.3f}s), "
                        if lat is not None else f"FAILED {trial.error}, ")
                     + f"join {trial.join_s:.1f}s, trial {trial.trial_s:.1f}s, "
                       f"replay {trial.replay_s:.2f}s"
                     + (f"; notes: {trial.notes}" if trial.notes else ""))
    ok = [tr for tr in trials if tr.ok]
    latencies = [v for tr in ok if (v := tr.latency()) is not None]
    decisions = [v for tr in ok if (v := tr.decision_delay()) is not None]
    deliveries = [v for tr in ok if (v := tr.delivery()) is not None]
    detects = [v for tr in ok if (v := tr.detect()) is not None]
    to_attempts = [v for tr in ok if (v := tr.to_attempt()) is not None]
    https = [v for tr in ok if (v := tr.http()) is not None]
    lat_stats = _stats(latencies)
    p99 = lat_stats["p99"]
    result: dict[str, Any] = {
        "benchmark": "bench_latency",
        "quick": quick,
        "definition": "router_received_at - (t_push + sustain_seconds); t_push = production "
                      "time of the first event whose arrival puts the window over the rule "
                      "(offline replay in production order, evaluated every "
                      f"{CHUNK_EVENTS} events, then event by event)",
        "trials": len(trials),
        "completed": len(ok),
        "failed": [{"trial": tr.index, "seed": tr.seed, "error": tr.error} for tr in trials
                   if not tr.ok],
        "latency_s": lat_stats,
        "latencies_s": latencies,
        "decision_delay_s": _stats(decisions),
        "delivery_s": _stats(deliveries),
        "detect_s": _stats(detects),
        "decision_to_attempt_s": _stats(to_attempts),
        "attempt_to_router_s": _stats(https),
        "decomposition": "latency = decision_delay + delivery; decision_delay = detect "
                         "(breach_started_at - t_push: produce, broker, fetch, decode, first "
                         "tick that saw the breach) + (decision.at - breach_started_at - "
                         "sustain: tick quantization of the sustain period); delivery = "
                         "decision_to_attempt (decision audit record, decisions-topic publish "
                         "acked, task spawn) + attempt_to_router (sign, connect, POST, verify)",
        "target_p99_s": TARGET_P99_S,
        "target_p99_le_1s": bool(len(ok) == len(trials) and p99 is not None
                                 and p99 <= TARGET_P99_S),
        "tick_seconds": TICK_SECONDS,
        "sustain_seconds": SUSTAIN_SECONDS,
        "rate_per_s": RATE_PER_S,
        "canary_share": CANARY_SHARE,
        "bug_after_s": BUG_AFTER_S,
        "partitions": PARTITIONS,
        "replay_chunk_events": CHUNK_EVENTS,
        "rule": RULE,
        "seeds": [tr.seed for tr in trials],
        "reference_seed": REFERENCE_SEED,
        "per_trial": [tr.summary() for tr in trials],
        "for_scale_s": {"flagger_min_analysis_interval": 10.0,
                        "argo_rollouts_prometheus_typical": [60.0, 120.0]},
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "total_seconds": time.perf_counter() - begun,
    }
    out: dict[str, Any] = json_safe(result)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Run the trials; one JSON-able dict (see the module docstring)."""
    from monitor.logs import configure_logging

    configure_logging("json", "error")
    return asyncio.run(_run(quick))


def main(argv: list[str] | None = None) -> int:
    """CLI: print the result of :func:`run` as one JSON line on stdout."""
    return cli_main("bench_latency", run, __doc__,
                    f"{QUICK_TRIALS} trials instead of {FULL_TRIALS}", argv)


if __name__ == "__main__":
    raise SystemExit(main())
