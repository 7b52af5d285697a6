"""Benchmark: scaling out with the Redis state store.

One embedded broker (tansu), one real ``redis-server`` (started here, AOF with
``appendfsync everysec`` as recommended in docs/scaling.md), one set of events:
``N`` predictions of the demo shape (:class:`monitor.sandbox.traffic.TrafficGenerator`:
5 numeric + 1 categorical feature, champion v1 / canary v2 90/10) and a label
for every one of them, produced once into a 4-partition predictions topic and a
4-partition labels topic (event ``i`` and its label both in partition
``i % 4``, at the same offset). Then, each with a fresh consumer group (and a
fresh Redis key prefix):

(a) one :class:`monitor.core.service.Service` over KafkaSource with the in-memory
    state (no store);
(b) one Service with :class:`monitor.engine.store.RedisStore` (built by
    :func:`monitor.serve.runner.make_store` from ``state: {backend: redis, ...}``,
    with the stored-offset seek hook, as ``driftgate run`` wires it);
(c) two Services with RedisStore in one consumer group, in this process (one
    event loop: they share one Python thread; the machine's other core runs
    the broker and Redis).

**Label lag.** Labels arrive long after their predictions in production (the
join buffer is why Redis holds per-event state). With everything produced up
front, a consumer would read a label together with its prediction and join
them inside one batch, never touching the buffer. So the benchmark's source
(:class:`LaggedKafkaSource`, a KafkaSource) pauses each label partition while
it is less than ``LABEL_LAG`` records behind its prediction partition
(``LABEL_LAG`` = 2 x ``max_poll_records``: a label never shares a batch with
its prediction). Every prediction therefore waits in the join buffer, and with
RedisStore is persisted there: each batch's join changes go, per partition, as
one blob into the partition's hash ``{prefix}j:{topic}:{partition}`` inside the
batch's MULTI/EXEC (and a snapshot replaces the blobs once they outgrow it);
``join_buffer`` in the result counts them. The same source is used in (a), so
the ratios compare like with like.

Measured per run: records/s (predictions + labels) and predictions/s from the
first batch to the last (group join excluded, reported separately); the time
inside ``handle()`` split into decode, engine, join fetch, delta, store commit
and Kafka commit; RedisStore's own counters (``commands``, ``round_trips``,
``bytes_written``) per 1,000 records, cross-checked against the server's
``INFO commandstats`` / ``total_commands_processed`` deltas (the harness's own
INFO/SCAN/MEMORY calls are left out by command name); wire bytes
(``total_net_input_bytes``), AOF growth and Redis CPU per record. In (b), when
the last prediction is in, the pending buffer is sampled (``MEMORY USAGE`` with
``SAMPLES 0`` of every ``{prefix}j:{predictions topic}:*`` hash, over the
pending predictions the engines hold, and ``used_memory`` growth over the same
count); the sampling pause is left out of the span. (a) and (b) run twice
(fresh groups) and the faster run is reported; besides wall-clock rates, this
process's CPU time over the span is reported (steadier on a shared machine).
Every run's per-version counts (predictions, labels joined, tp/fp/fn/tn;
engines and, for Redis runs, the counters stored in Redis) are checked against
the first (a) run's. If (b)/(a) misses its target, (b) is run once more under
cProfile and the top costs are reported (``profile``).

Run ``python -m benchmarks.bench_scale [--quick]`` from the project root: one
JSON object on one line goes to stdout, everything else to stderr.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import math
import os
import platform
import pstats
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks.bench_ingest import GcTimer, _short, _version, produce
from benchmarks.common import cli_main, json_safe, stderr_log, timed, timed_async
from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.service import Service
from monitor.engine import Evaluation
from monitor.engine.reservoir import attach_sample
from monitor.engine.store import RedisStore
from monitor.ingest.sources import KafkaSource, MemoryDeadLetterSink, SourceBatch
from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator
from monitor.serve.runner import make_store

__all__ = ["run"]

SEED = 20240618
REFERENCE_SEED = 99
MODEL = "card-fraud"
CHAMPION, CANARY = "v1", "v2"
CANARY_SHARE = 0.10
CATEGORICAL = ["merchant_category"]
PARTITIONS = 4
START_TS = 1_700_000_000.0
EVENT_RATE_PER_S = 1_000.0  # event time: 100k events span 100 s, inside the 600 s window
SLICE_SECONDS = 10
WINDOW_SECONDS = 600
KPI_WINDOW_SECONDS = 3600
TICK_SECONDS = 1.0
JOIN_TTL_S = 3600.0
MAX_POLL_RECORDS = 5_000
LABEL_LAG = 2 * MAX_POLL_RECORDS  # per partition
REFERENCE_EVENTS = 20_000
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
PHASE_TIMEOUT_S = 150.0
MEMORY_SAMPLE_KEYS = 2_000
TARGET_B_OVER_A = 0.7
TARGET_BYTES_PER_PENDING = 200.0
REPEATS = 2  # runs of (a) and (b); the faster is reported
PROFILE_TOP = 15
# commands only the harness sends (left out of the server-side counts by name;
# driftgate never sends them)
HARNESS_COMMANDS = frozenset({"info", "scan", "memory|usage", "hlen", "pttl", "dbsize",
                              "flushall"})


_log = stderr_log("bench_scale")

@dataclass(frozen=True)
class Sizes:
    events: int
    profile_events: int


FULL = Sizes(events=100_000, profile_events=50_000)
QUICK = Sizes(events=20_000, profile_events=20_000)


def _rate(n: float, span_s: float) -> float:
    return n / span_s if span_s > 0 else math.nan


# --------------------------------------------------------------------------- data


@dataclass
class Workload:
    values: list[bytes]
    keys: list[bytes]
    partitions: list[int]
    label_values: list[bytes]
    canary_events: int
    mean_prediction_bytes: float
    mean_label_bytes: float

    @property
    def predictions_per_partition(self) -> dict[int, int]:
        out = dict.fromkeys(range(PARTITIONS), 0)
        for p in self.partitions:
            out[p] += 1
        return out


def make_workload(n: int) -> Workload:
    """``n`` demo-shaped predictions and a label for each (same partition, same order)."""
    gen = TrafficGenerator(seed=SEED, canary_share=CANARY_SHARE)
    batch = gen.generate(n, START_TS, EVENT_RATE_PER_S)
    enc = msgspec.json.Encoder().encode
    values = [enc(p) for p in batch.predictions]
    label_values = [enc(x) for x in batch.labels]
    keys = [p["event_id"].encode() for p in batch.predictions]
    canary = sum(1 for p in batch.predictions if p["model_version"] == CANARY)
    return Workload(values, keys, [i % PARTITIONS for i in range(n)], label_values,
                    canary_events=canary,
                    mean_prediction_bytes=statistics.fmean(len(v) for v in values),
                    mean_label_bytes=statistics.fmean(len(v) for v in label_values))


def fit_reference() -> ReferenceProfile:
    """The reference the integration tests use: healthy champion traffic, with a sample."""
    gen = TrafficGenerator(seed=REFERENCE_SEED, canary_share=0.0)
    preds = gen.generate(REFERENCE_EVENTS, start_ts=1_600_000_000.0,
                         rate_per_s=1000.0).predictions
    numeric = {f: np.array([p["features"][f] for p in preds]) for f in NUMERIC_FEATURES}
    cats: dict[str, list[object]] = {c: [p["features"][c] for p in preds] for c in CATEGORICAL}
    scores = np.array([p["score"] for p in preds])
    return attach_sample(ReferenceProfile.fit(numeric, cats, scores), numeric, cats, scores)


# --------------------------------------------------------------------------- redis





def redis_snapshot(r: Any) -> dict[str, Any]:
    """The INFO counters this benchmark compares before and after a phase."""
    info = r.info("all")
    return {
        "total_commands_processed": int(info["total_commands_processed"]),
        "net_input_bytes": int(info["total_net_input_bytes"]),
        "net_output_bytes": int(info["total_net_output_bytes"]),
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "aof_current_size": int(info.get("aof_current_size", 0)),
        "used_memory": int(info["used_memory"]),
        "calls": {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
                  if k.startswith("cmdstat_")},
        "failed_calls": {k[len("cmdstat_"):]: int(v.get("failed_calls", 0))
                         for k, v in info.items() if k.startswith("cmdstat_")},
    }


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Server-side deltas; harness commands (by name) left out of the command counts."""
    calls = {k: v - before["calls"].get(k, 0) for k, v in after["calls"].items()}
    calls = {k: v for k, v in calls.items() if v}
    harness = sum(v for k, v in calls.items() if k in HARNESS_COMMANDS)
    ours = {k: v for k, v in calls.items() if k not in HARNESS_COMMANDS}
    failed = {k: v - before["failed_calls"].get(k, 0)
              for k, v in after["failed_calls"].items()}
    return {
        "commands_total_commands_processed": after["total_commands_processed"]
        - before["total_commands_processed"] - harness,
        "commands_commandstats": sum(ours.values()),
        "calls_by_command": dict(sorted(ours.items(), key=lambda kv: -kv[1])),
        "failed_calls_by_command": {k: v for k, v in failed.items() if v},
        "harness_commands_left_out": harness,
        "net_input_bytes": after["net_input_bytes"] - before["net_input_bytes"],
        "net_output_bytes": after["net_output_bytes"] - before["net_output_bytes"],
        "cpu_s": after["cpu_s"] - before["cpu_s"],
        "aof_bytes": after["aof_current_size"] - before["aof_current_size"],
    }


def sample_pending(r: Any, prefix: str, predictions_topic: str, baseline_used_memory: int,
                   pending_predictions: int) -> dict[str, Any]:
    """Bytes the pending-prediction buffer takes in Redis: the partitions' join
    hashes (``{prefix}j:{predictions_topic}:*``) over the pending predictions."""
    t0 = time.perf_counter()
    keys: list[bytes] = []
    cursor = 0
    scans = 0
    while True:
        cursor, found = r.scan(cursor, match=f"{prefix}j:{predictions_topic}:*", count=1_000)
        scans += 1
        keys.extend(found)
        if cursor == 0:
            break
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
        pipe.hlen(k)
        pipe.pttl(k)
    raw = pipe.execute()
    usage = [int(x) for x in raw[0::3] if x is not None]
    fields = [int(x) for x in raw[1::3]]
    pttl = [int(x) for x in raw[2::3]]
    used = int(r.info("memory")["used_memory"])
    total = sum(usage)
    per = total / pending_predictions if pending_predictions else math.nan
    return {
        "join_hashes": len(keys),
        "join_hash_fields": sum(fields),
        "join_hash_bytes": total,
        "pending_predictions": pending_predictions,
        "pttl_ms_min": min(pttl) if pttl else None,
        "used_memory_growth_bytes": used - baseline_used_memory,
        "used_memory_growth_per_pending_prediction": (used - baseline_used_memory)
        / pending_predictions if pending_predictions else math.nan,
        "bytes_per_pending_prediction": per,
        "target_bytes": TARGET_BYTES_PER_PENDING,
        "meets_target": bool(per <= TARGET_BYTES_PER_PENDING),
        "sampling_pause_s": time.perf_counter() - t0,
        "harness_commands": scans + 3 * len(keys) + 1,
    }


# --------------------------------------------------------------------------- source


class LaggedKafkaSource(KafkaSource):
    """KafkaSource whose label partitions trail their prediction partitions.

    Label partition ``p`` is paused while ``label_next[p] + lag > pred_next[p]``
    and the predictions of ``p`` are not all consumed yet (label ``o`` of
    partition ``p`` belongs to prediction ``o`` of partition ``p``).
    """

    def __init__(self, cfg: Any, pred_end: dict[int, int], lag: int) -> None:
        super().__init__(cfg, on_assign=self._assign)
        self.pred_end = pred_end
        self.lag = lag
        self.pred_next: dict[int, int] = {}
        self.label_next: dict[int, int] = {}
        self._inner_assign: Any = None
        self.pauses = 0

    def set_assign_hook(self, on_assign: Any) -> None:
        self._inner_assign = on_assign

    async def _assign(self, tps: Any) -> dict[tuple[str, int], int] | None:
        seek = await self._inner_assign(tps) if self._inner_assign is not None else None
        for (t, p) in tps:
            if seek and (t, p) in seek:
                if t == self.cfg.predictions_topic:
                    self.pred_next[p] = seek[(t, p)]
                elif t == self.cfg.labels_topic:
                    self.label_next[p] = seek[(t, p)]
        self._gate()
        return seek

    async def poll(self, timeout_s: float) -> SourceBatch:
        batch = await super().poll(timeout_s)
        for (t, p), o in batch.next_offsets.items():
            if t == self.cfg.predictions_topic:
                self.pred_next[p] = o
            elif t == self.cfg.labels_topic:
                self.label_next[p] = o
        self._gate()
        return batch

    def _gate(self) -> None:
        from aiokafka import TopicPartition as KafkaTP

        consumer = self._consumer
        if consumer is None:
            return
        paused = consumer.paused()
        pause, resume = [], []
        for t, p in self._assigned:
            if t != self.cfg.labels_topic:
                continue
            pn = self.pred_next.get(p, 0)
            hold = pn < self.pred_end[p] and self.label_next.get(p, 0) + self.lag > pn
            tp = KafkaTP(t, p)
            if hold and tp not in paused:
                pause.append(tp)
            elif not hold and tp in paused:
                resume.append(tp)
        if pause:
            consumer.pause(*pause)
            self.pauses += len(pause)
        if resume:
            consumer.resume(*resume)


# --------------------------------------------------------------------------- service


@dataclass
class Progress:
    """Shared by the instances of one phase: when every event is applied, stop all."""

    predictions: int
    labels: int
    services: list[TimedService] = field(default_factory=list)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    predictions_done_at: float = math.nan
    t_reached: float = math.nan
    cpu_first: float = math.nan
    cpu_reached: float = math.nan
    excluded_s: float = 0.0
    excluded_cpu_s: float = 0.0
    on_predictions_done: Callable[[], float] | None = None  # returns the pause to exclude
    on_reached: Callable[[], None] | None = None

    def totals(self) -> tuple[int, int]:
        p = lab = 0
        for s in self.services:
            if s.engine is not None:
                p += sum(st.predictions_total for st in s.engine.versions.values())
                lab += s.engine.labels_total
        return p, lab

    def check(self) -> None:
        if self.reached.is_set():
            return
        p, lab = self.totals()
        if p >= self.predictions and math.isnan(self.predictions_done_at):
            self.predictions_done_at = time.perf_counter()
            if self.on_predictions_done is not None:
                cpu = time.process_time()
                self.excluded_s += self.on_predictions_done()
                self.excluded_cpu_s += time.process_time() - cpu
        if p >= self.predictions and lab >= self.labels:
            self.t_reached = time.perf_counter()
            self.cpu_reached = time.process_time()
            if self.on_reached is not None:
                self.on_reached()
            self.reached.set()
            for s in self.services:
                s.stopping.set()


class TimedService(Service):
    """A Service that times its stages and stops the phase when every event is in."""

    def __init__(self, *args: Any, progress: Progress, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.progress = progress
        progress.services.append(self)
        self.t_run = math.nan
        self.t_first = math.nan
        self.t_last = math.nan
        self.handle_s: list[float] = []
        self.batch_sizes: list[int] = []
        self.batch_predictions = 0
        self.tick_s: list[float] = []
        self.stage_s: dict[str, float] = {"decode": 0.0, "engine_process": 0.0,
                                          "engine_delta": 0.0,
                                          "store_commit": 0.0, "kafka_commit": 0.0}
        self.join_blobs = 0
        self.join_snapshots = 0
        self.join_blob_bytes = 0
        self.join_fields_dropped = 0
        self._wrap()

    def _wrap(self) -> None:
        stage = self.stage_s
        setattr(self.codec, "decode", timed(self.codec.decode, stage, "decode"))  # noqa: B010
        assert self.engine is not None
        setattr(self.engine, "process",  # noqa: B010
                timed(self.engine.process, stage, "engine_process"))
        setattr(self.engine, "delta", timed(self.engine.delta, stage, "engine_delta"))  # noqa: B010
        setattr(self.source, "commit",  # noqa: B010
                timed_async(self.source.commit, stage, "kafka_commit"))
        store = self.store
        if store is not None:
            raw_commit = timed_async(store.commit, stage, "store_commit")

            async def commit(c: Any) -> None:
                await raw_commit(c)
                for fields in c.join_writes.values():
                    self.join_blobs += len(fields)
                    self.join_snapshots += sum(1 for f in fields if f.endswith(".s"))
                    self.join_blob_bytes += sum(len(b) for b in fields.values())
                self.join_fields_dropped += sum(len(d) for d in c.join_drops.values())

            setattr(store, "commit", commit)  # noqa: B010

    async def handle(self, batch: SourceBatch) -> None:
        size = len(batch)
        if not size:
            await super().handle(batch)
            return
        t0 = time.perf_counter()
        if not self.handle_s:
            self.t_first = t0
            if math.isnan(self.progress.cpu_first):
                self.progress.cpu_first = time.process_time()
        await super().handle(batch)
        t1 = time.perf_counter()
        self.handle_s.append(t1 - t0)
        self.batch_sizes.append(size)
        self.batch_predictions += len(batch.predictions)
        self.t_last = t1
        self.progress.check()

    async def tick(self) -> Evaluation | None:
        t = time.perf_counter()
        try:
            return await super().tick()
        finally:
            self.tick_s.append(time.perf_counter() - t)

    async def run(self, until_exhausted: bool = False) -> None:
        self.t_run = time.perf_counter()
        await super().run(until_exhausted)


def phase_settings(bootstrap: str, topics: dict[str, str], group: str, ref_path: Path,
                   state: dict[str, Any] | None) -> Settings:
    """The demo's model/features with 10 s / 600 s windows; ``state`` as in the YAML."""
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": group, "client_id": group,
               "max_poll_records": MAX_POLL_RECORDS, **topics, **GROUP_TUNING},
        models=[{"name": MODEL, "champion": CHAMPION, "canary": CANARY}],
        features={"numeric": list(NUMERIC_FEATURES), "categorical": CATEGORICAL},
        reference={"path": str(ref_path)},
        windows={"slice_seconds": SLICE_SECONDS, "window_seconds": WINDOW_SECONDS,
                 "kpi_window_seconds": KPI_WINDOW_SECONDS,
                 "allowed_lateness_seconds": WINDOW_SECONDS},
        join={"ttl_seconds": JOIN_TTL_S},
        evaluation={"tick_seconds": TICK_SECONDS},
        state=state or {"backend": "memory"},
        log={"format": "json", "level": "warning"},
    )


@dataclass
class Ctx:
    bootstrap: str
    topics: dict[str, str]
    ref_path: Path
    reference: ReferenceProfile
    pred_end: dict[int, int]
    n: int
    redis: LocalRedis | None = None
    client: Any = None  # a sync redis client of the harness


async def run_phase(ctx: Ctx, label: str, instances: int, use_redis: bool,
                    n_predictions: int | None = None, sample_memory: bool = False,
                    profile: cProfile.Profile | None = None) -> dict[str, Any]:
    """Run ``instances`` Services in one group until every event is applied."""
    n_pred = ctx.n if n_predictions is None else n_predictions
    n_lab = ctx.n if n_predictions is None else 0
    group = f"bench-scale-{label}-{uuid.uuid4().hex[:8]}"
    prefix = f"bs{uuid.uuid4().hex[:6]}:"
    progress = Progress(predictions=n_pred, labels=n_lab)
    services: list[TimedService] = []
    stores: list[RedisStore] = []
    r = ctx.client
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    pending_info: dict[str, Any] | None = None
    if use_redis:
        assert r is not None
        assert ctx.redis is not None
        r.flushall()
        before = redis_snapshot(r)
    for i in range(instances):
        state = ({"backend": "redis", "redis_url": ctx.redis.url, "key_prefix": prefix,
                  "instance_id": f"bench-{label}-{i}"} if use_redis and ctx.redis else None)
        settings = phase_settings(ctx.bootstrap, ctx.topics, group, ctx.ref_path, state)
        store = make_store(settings)
        source = LaggedKafkaSource(settings.kafka, ctx.pred_end, LABEL_LAG)
        svc = TimedService(settings, source, MemoryDeadLetterSink(), ctx.reference,
                           store=store, instance_id=settings.state.instance_id,
                           progress=progress)
        if store is not None:
            svc.wire_rebalance_hooks(source)
            assert isinstance(store, RedisStore)
            stores.append(store)
        services.append(svc)

    def tracked_pending() -> int:
        return sum(s.engine.pending_predictions for s in services if s.engine is not None)

    if sample_memory and use_redis:
        assert before is not None

        def on_predictions_done() -> float:
            nonlocal pending_info
            assert before is not None
            pending_info = sample_pending(r, prefix, ctx.topics["predictions_topic"],
                                          before["used_memory"], tracked_pending())
            return float(pending_info["sampling_pause_s"])

        progress.on_predictions_done = on_predictions_done
    store_counts: dict[str, int] = {}

    def on_reached() -> None:
        nonlocal after
        store_counts.update(commands=sum(s.commands for s in stores),
                            round_trips=sum(s.round_trips for s in stores),
                            bytes_written=sum(s.bytes_written for s in stores))
        if use_redis:
            after = redis_snapshot(r)

    progress.on_reached = on_reached
    gc_timer = GcTimer()
    if profile is not None:
        profile.enable()
    tasks = [asyncio.create_task(s.run(), name=f"bench-scale-{label}-{i}")
             for i, s in enumerate(services)]
    try:
        with gc_timer:
            reached = asyncio.create_task(progress.reached.wait())
            done, _ = await asyncio.wait({reached, *tasks}, timeout=PHASE_TIMEOUT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            if reached not in done:
                reached.cancel()
                for t in tasks:
                    if t.done():
                        t.result()
                p, lab = progress.totals()
                raise RuntimeError(f"({label}) stopped or timed out after "
                                   f"{PHASE_TIMEOUT_S}s at {p}/{n_pred} predictions, "
                                   f"{lab}/{n_lab} labels")
    finally:
        if profile is not None:
            profile.disable()
        for s in services:
            s.stopping.set()
        results = await asyncio.gather(*(asyncio.wait_for(t, 30) for t in tasks),
                                       return_exceptions=True)
        for t in tasks:
            if not t.done():
                t.cancel()
        errors = [x for x in results if isinstance(x, BaseException)]
        if errors and progress.reached.is_set():
            _log(f"({label}) an instance failed while stopping: {errors[0]!r}")

    t_first = min(s.t_first for s in services if not math.isnan(s.t_first))
    span = progress.t_reached - t_first - progress.excluded_s
    # this process's CPU time over the same span (one event-loop thread: less
    # sensitive than wall time to other load on a shared machine)
    cpu = progress.cpu_reached - progress.cpu_first - progress.excluded_cpu_s
    preds, labels = progress.totals()
    records = sum(sum(s.batch_sizes) for s in services)
    busy = sum(sum(s.handle_s) for s in services)
    stage = {k: sum(s.stage_s[k] for s in services) for k in services[0].stage_s}
    stage["other"] = busy - sum(stage.values())
    batches = [b for s in services for b in s.batch_sizes]
    out: dict[str, Any] = {
        "instances": instances,
        "predictions": preds,
        "labels": labels,
        "records": records,
        "records_per_s": _rate(records, span),
        "predictions_per_s": _rate(preds, span),
        "span_s": span,
        "process_cpu_s": cpu,
        "records_per_cpu_s": _rate(records, cpu),
        "cpu_us_per_record": cpu / records * 1e6 if records else math.nan,
        "join_to_first_batch_s": t_first - min(s.t_run for s in services),
        "excluded_sampling_pause_s": progress.excluded_s,
        "batches": len(batches),
        "batch_size_mean": statistics.fmean(batches),
        "batch_size_max": max(batches),
        "handle_busy_s": busy,
        "handle_us_per_record": busy / records * 1e6 if records else math.nan,
        "handle_share_of_span": busy / span if span > 0 else math.nan,
        "handle_breakdown_s": stage,
        "handle_breakdown_us_per_record": {k: v / records * 1e6 for k, v in stage.items()},
        "gc_during_run_s": gc_timer.report()["total_s"],
        "ticks": sum(len(s.tick_s) for s in services),
        "tick_ms_p50": float(np.percentile([t * 1e3 for s in services for t in s.tick_s], 50))
        if any(s.tick_s for s in services) else math.nan,
        "rebalances": [s.source.rebalances for s in services  # type: ignore[attr-defined]
                       ],
        "label_partition_pauses": sum(s.source.pauses for s in services  # type: ignore[attr-defined]
                                      ),
        "per_instance": [{"instance": s.instance_id, "records": sum(s.batch_sizes),
                          "predictions": s.batch_predictions,
                          "first_batch_after_start_s": s.t_first - s.t_run}
                         for s in services],
    }
    if use_redis:
        assert before is not None
        assert after is not None
        delta = redis_delta(before, after)
        k = 1000.0 / records
        kp = 1000.0 / preds
        out["join_buffer"] = {
            "blobs_written": sum(s.join_blobs for s in services),
            "snapshots_written": sum(s.join_snapshots for s in services),
            "blob_bytes_written": sum(s.join_blob_bytes for s in services),
            "blob_bytes_per_prediction": sum(s.join_blob_bytes for s in services) / preds
            if preds else math.nan,
            "fields_dropped": sum(s.join_fields_dropped for s in services),
        }
        out["redis"] = {
            "store_commands": store_counts["commands"],
            "store_round_trips": store_counts["round_trips"],
            "store_bytes_written": store_counts["bytes_written"],
            "commands_per_1000_records": store_counts["commands"] * k,
            "commands_per_1000_predictions": store_counts["commands"] * kp,
            "round_trips_per_1000_records": store_counts["round_trips"] * k,
            "round_trips_per_1000_predictions": store_counts["round_trips"] * kp,
            "bytes_written_per_record": store_counts["bytes_written"] / records,
            "bytes_written_per_prediction": store_counts["bytes_written"] / preds,
            "server": {
                **delta,
                "commands_per_1000_records_commandstats": delta["commands_commandstats"] * k,
                "commands_per_1000_records_total_commands_processed":
                    delta["commands_total_commands_processed"] * k,
                "net_input_bytes_per_record": delta["net_input_bytes"] / records,
                "net_output_bytes_per_record": delta["net_output_bytes"] / records,
                "aof_bytes_per_record": delta["aof_bytes"] / records,
                "cpu_us_per_record": delta["cpu_s"] / records * 1e6,
                "cpu_share_of_span": delta["cpu_s"] / (progress.t_reached - t_first)
                if progress.t_reached > t_first else math.nan,
            },
            "store_vs_server_commands": store_counts["commands"]
            - delta["commands_commandstats"],
        }
        if pending_info is not None:
            out["pending_buffer"] = pending_info
        if sample_memory:
            out["state_hashes"] = state_hash_sizes(r, prefix)
        out["counts_in_redis"] = stored_counts(r, prefix)
    out["counts"] = engine_counts(services)
    return out


COUNT_NAMES = ("predictions_total", "labels_joined_total", "tp", "fp", "fn", "tn")


def engine_counts(services: list[TimedService]) -> dict[str, list[int]]:
    """Per version, summed over the instances' engines: predictions, joined, tp fp fn tn."""
    out: dict[str, list[int]] = {}
    for s in services:
        assert s.engine is not None
        for (m, v), st in s.engine.versions.items():
            c = st.confusion_total
            row = [st.predictions_total, st.labels_joined_total, c.tp, c.fp, c.fn, c.tn]
            acc = out.setdefault(f"{m}/{v}", [0] * len(row))
            out[f"{m}/{v}"] = [x + y for x, y in zip(acc, row, strict=True)]
    return dict(sorted(out.items()))


def stored_counts(r: Any, prefix: str) -> dict[str, list[int]]:
    """The same counts as stored in Redis (every instance's counters hash, summed)."""
    out: dict[str, list[int]] = {}
    for inst in r.smembers(f"{prefix}instances"):
        for k, v in r.hgetall(f"{prefix}c:{inst.decode()}").items():
            parts = k.decode().split("\x1f")
            if len(parts) == 3 and parts[2] in COUNT_NAMES:
                row = out.setdefault(f"{parts[0]}/{parts[1]}", [0] * len(COUNT_NAMES))
                row[COUNT_NAMES.index(parts[2])] += int(float(v))
    return dict(sorted(out.items()))


def state_hash_sizes(r: Any, prefix: str) -> dict[str, Any]:
    """Bytes per stored slice by kind, and the other per-instance hashes (after a phase)."""
    by_kind: dict[str, list[int]] = {}
    instances = [x.decode() for x in r.smembers(f"{prefix}instances")]
    counters_bytes = 0
    for inst in instances:
        for fld, blob in r.hgetall(f"{prefix}s:{inst}").items():
            kind = fld.decode().split("\x1f")[2]
            by_kind.setdefault(kind, []).append(len(fld) + len(blob))
        counters_bytes += sum(len(k) + len(v) for k, v in
                              r.hgetall(f"{prefix}c:{inst}").items())
    per_slice = {k: statistics.fmean(v) for k, v in by_kind.items()}
    return {
        "instances": len(instances),
        "slice_fields_by_kind": {k: len(v) for k, v in by_kind.items()},
        "bytes_per_slice_field_by_kind": per_slice,
        "counters_hash_bytes_per_instance": counters_bytes / max(len(instances), 1),
    }


def profile_rows(prof: cProfile.Profile) -> dict[str, Any]:
    stats = pstats.Stats(prof, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        rows.append({"function": f"{_short(filename)}:{line}({func})", "ncalls": int(nc),
                     "tottime_s": round(float(tt), 4), "cumtime_s": round(float(ct), 4)})
    idle = sum(r["tottime_s"] for r in rows if "'poll' of 'select." in r["function"])
    busy = total - idle
    top_self = sorted((r for r in rows if "'poll' of 'select." not in r["function"]),
                      key=lambda r: r["tottime_s"], reverse=True)[:PROFILE_TOP]
    keys = ("monitor/", "redis/", "detectors/", "fetcher.py")
    top_cum = sorted((r for r in rows if any(k in r["function"] for k in keys)),
                     key=lambda r: r["cumtime_s"], reverse=True)[:PROFILE_TOP]
    redis_self = sum(r["tottime_s"] for r in rows if r["function"].startswith("redis/"))
    for r in (*top_self, *top_cum):
        r["share_of_busy"] = r["cumtime_s" if r in top_cum else "tottime_s"] / busy \
            if busy > 0 else math.nan
    return {"profiled_total_s": total, "idle_in_epoll_s": idle, "busy_s": busy,
            "redis_py_self_time_s": redis_self,
            "redis_py_share_of_busy": redis_self / busy if busy > 0 else math.nan,
            "top_self": top_self, "top_cumulative": top_cum}


# --------------------------------------------------------------------------- run


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(max(runs, key=lambda r: r["records_per_s"]))
    best["runs_records_per_s"] = [r["records_per_s"] for r in runs]
    return best


def _brief(name: str, r: dict[str, Any]) -> str:
    s = (f"({name}) {r['records_per_s']:,.0f} records/s, {r['predictions_per_s']:,.0f} "
         f"predictions/s (join {r['join_to_first_batch_s']:.1f} s, span {r['span_s']:.1f} s)")
    if "redis" in r:
        s += (f", {r['redis']['commands_per_1000_records']:.1f} cmds and "
              f"{r['redis']['round_trips_per_1000_records']:.2f} round trips per 1k records")
    return s


async def _run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    n = sizes.events
    started = time.perf_counter()
    load_start = os.getloadavg()
    _log(f"generating {n:,} predictions + {n:,} labels and a reference")
    t = time.perf_counter()
    work = make_workload(n)
    reference = fit_reference()
    gen_s = time.perf_counter() - t
    import redis

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        ref_path = Path(tmp) / "reference.json"
        ref_path.write_text(reference.to_json())
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log")
        redis_server = LocalRedis(Path(tmp) / "redis")
        await asyncio.to_thread(broker.start)
        try:
            await asyncio.to_thread(redis_server.start)
            client = redis.Redis(host="127.0.0.1", port=redis_server.port, socket_timeout=30)
            suffix = uuid.uuid4().hex[:8]
            topics = {"predictions_topic": f"scale-preds-{suffix}",
                      "labels_topic": f"scale-labels-{suffix}",
                      "dead_letter_topic": f"scale-dlq-{suffix}"}
            await broker.create_topics({topics["predictions_topic"]: PARTITIONS,
                                        topics["labels_topic"]: PARTITIONS,
                                        topics["dead_letter_topic"]: 1})
            t = time.perf_counter()
            acked = await produce(broker.bootstrap_servers, topics["predictions_topic"],
                                  work.values, work.keys, work.partitions)
            acked_l = await produce(broker.bootstrap_servers, topics["labels_topic"],
                                    work.label_values, work.keys, work.partitions)
            produce_s = time.perf_counter() - t
            if acked != n or acked_l != n:
                raise RuntimeError(f"produced {acked}/{n} predictions, {acked_l}/{n} labels")
            _log(f"produced {n:,} predictions and {n:,} labels in {produce_s:.1f} s")
            ctx = Ctx(broker.bootstrap_servers, topics, ref_path, reference,
                      work.predictions_per_partition, n, redis_server, client)
            meta = {"mean_prediction_bytes": work.mean_prediction_bytes,
                    "mean_label_bytes": work.mean_label_bytes,
                    "canary_events": work.canary_events}
            del work
            # as `driftgate run` does: keep the long-lived objects out of every GC pass
            gc.collect()
            gc.freeze()

            runs_a: list[dict[str, Any]] = []
            runs_b: list[dict[str, Any]] = []
            runs_c: list[dict[str, Any]] = []
            for rep in range(REPEATS):
                runs_a.append(await run_phase(ctx, "a", 1, use_redis=False))
                _log(_brief("a", runs_a[-1]))
                runs_b.append(await run_phase(ctx, "b", 1, use_redis=True,
                                              sample_memory=True))
                _log(_brief("b", runs_b[-1]))
                if rep == 0:
                    runs_c.append(await run_phase(ctx, "c", 2, use_redis=True))
                    _log(_brief("c", runs_c[-1]))
            a, b, c = _best(runs_a), _best(runs_b), _best(runs_c)
            b_over_a = b["records_per_s"] / a["records_per_s"]
            c_over_a = c["records_per_s"] / a["records_per_s"]
            pending = b.get("pending_buffer", {})
            expected = a["counts"]
            counts_exact = {
                name: all(r["counts"] == expected and r.get("counts_in_redis", expected)
                          == expected for r in runs)
                for name, runs in (("a", runs_a), ("b", runs_b), ("c", runs_c))}
            targets = {"b_over_a_ge_0.7": b_over_a >= TARGET_B_OVER_A,
                       "bytes_per_pending_prediction_le_200":
                           bool(pending.get("meets_target", False))}
            profile: dict[str, Any] | None = None
            if not targets["b_over_a_ge_0.7"]:
                m = min(sizes.profile_events, n)
                _log(f"(b)/(a) = {b_over_a:.2f} < {TARGET_B_OVER_A}: profiling (b) over "
                     f"{m:,} predictions")
                prof = cProfile.Profile()
                prun = await run_phase(ctx, "p", 1, use_redis=True, n_predictions=m,
                                       profile=prof)
                profile = {"events": prun["predictions"], "records": prun["records"],
                           "profiled_records_per_s": prun["records_per_s"],
                           **profile_rows(prof),
                           "how": "cProfile over the event-loop thread during one more (b) "
                                  "run (fresh group and prefix, stopped at the prediction "
                                  "count: labels trail by LABEL_LAG, so fewer labels), "
                                  "from Service.run() start to stop (includes the join)"}
            info = client.info("server")
            redis_version = info.get("redis_version")
            client.close()
        finally:
            await asyncio.to_thread(redis_server.stop)
            await asyncio.to_thread(broker.stop)

    result: dict[str, Any] = {
        "benchmark": "bench_scale",
        "quick": quick,
        "predictions": n,
        "labels": n,
        "records": 2 * n,
        "partitions": PARTITIONS,
        **meta,
        "label_lag_records_per_partition": LABEL_LAG,
        "max_poll_records": MAX_POLL_RECORDS,
        "generate_s": gen_s,
        "produce_s": produce_s,
        "a_memory_1_instance": a,
        "b_redis_1_instance": b,
        "c_redis_2_instances_in_process": c,
        "ratio_b_over_a": b_over_a,
        "ratio_c_over_a": c_over_a,
        "ratio_c_over_b": c["records_per_s"] / b["records_per_s"],
        "ratio_b_over_a_cpu": b["records_per_cpu_s"] / a["records_per_cpu_s"],
        "ratio_c_over_a_cpu": c["records_per_cpu_s"] / a["records_per_cpu_s"],
        "bytes_per_pending_prediction": pending.get("bytes_per_pending_prediction"),
        "redis_commands_per_1000_records": b["redis"]["commands_per_1000_records"],
        "redis_round_trips_per_1000_records": b["redis"]["round_trips_per_1000_records"],
        "redis_bytes_written_per_record": b["redis"]["bytes_written_per_record"],
        "targets": targets,
        "counts_equal_across_runs": counts_exact,
        "profile": profile,
        "notes": {
            "events_per_s": "records_per_s = (predictions + labels handled) / (time every "
            "event was applied - time the first batch was received); predictions_per_s the "
            "same with predictions only; the consumer-group join is excluded "
            "(join_to_first_batch_s) and so is (b)'s pending-buffer sampling pause",
            "cpu": "process_cpu_s = time.process_time() of this process over the same span "
            "(the event-loop thread does all the work; both (c) instances share it); "
            "records_per_cpu_s and the *_cpu ratios are less sensitive to other load on a "
            "shared machine than the wall-clock rates",
            "label_lag": "label partitions are paused while fewer than "
            "label_lag_records_per_partition records behind their prediction partition: a "
            "label never shares a batch with its prediction, so every prediction waits in "
            "the join buffer (persisted to Redis in (b) and (c))",
            "store_counters": "RedisStore.commands/round_trips/bytes_written summed over the "
            "phase's stores at the moment every event was applied (includes the group join "
            "period's evaluator ticks); bytes_written counts slice arrays and join blobs, "
            "not keys, counters, offsets or protocol framing (see "
            "server.net_input_bytes_per_record for the wire)",
            "server": "INFO deltas from phase start to the same moment: commandstats calls "
            "and total_commands_processed, harness commands (info/scan/memory/strlen/pttl/"
            "object/dbsize/flushall) left out; cpu = used_cpu_user + used_cpu_sys of "
            "redis-server; aof_bytes = aof_current_size growth (appendfsync everysec)",
            "pending_buffer": "sampled in (b) when the last prediction was applied: MEMORY "
            "USAGE (SAMPLES 0) of every {prefix}j:{predictions topic}:{partition} hash over "
            "the pending predictions the engine holds; used_memory growth since the phase "
            "start over the same count includes the slice and counter hashes, the labels' "
            "join hashes and allocator overhead",
            "c_in_process": "(c) runs two Service objects in this process: one Python thread "
            "for both, so it measures coordination cost, not parallel speed-up; the machine "
            "has cpu_count cores shared with the broker and redis-server",
            "redis_py_parser": "hiredis when importable (not a driftgate dependency), else "
            "redis-py's pure-Python RESP parser",
            "counts_equal_across_runs": "per version: predictions, labels joined, tp, fp, "
            "fn, tn from every run's engines (and, for Redis runs, from the counters stored in "
            "Redis) equal to the first (a) run's",
            "repeats": f"(a) and (b) run {REPEATS} times (fresh groups), the faster is "
            "reported with runs_records_per_s; (c) once",
        },
        "loadavg_1m_start_end": [load_start[0], os.getloadavg()[0]],
        "python": platform.python_version(),
        "redis_server": redis_version,
        "redis_py": _version("redis"),
        "redis_py_parser": "hiredis" if _has_hiredis() else "python",
        "aiokafka": _version("aiokafka"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "seed": SEED,
    }
    result["total_seconds"] = time.perf_counter() - started
    out: dict[str, Any] = json_safe(result)
    return out


def _has_hiredis() -> bool:
    import importlib.util

    return importlib.util.find_spec("hiredis") is not None


def run(quick: bool = False) -> dict[str, Any]:
    """Run (a), (b), (c) (and the profile if needed); one JSON-able dict."""
    from monitor.logs import configure_logging

    configure_logging("json", "warning")
    try:
        return asyncio.run(_run(quick))
    finally:
        gc.unfreeze()


def main(argv: list[str] | None = None) -> int:
    """CLI: print the result of :func:`run` as one JSON line on stdout."""
    return cli_main("bench_scale", run, __doc__, "20,000 events for smoke runs", argv)


if __name__ == "__main__":
    raise SystemExit(main())
