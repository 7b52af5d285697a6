"""One phase of bench_scale: Services in one consumer group until every event is in.

:func:`run_phase` starts ``instances`` :class:`Instance` objects (a Service
over a :class:`~benchmarks.scale_workload.LaggedKafkaSource`, with a
:class:`~benchmarks.scale_redis.JoinCountingStore` when Redis is used, timed
by its ``stage_timer`` hook), stops them all once :class:`Progress` counts
every prediction and label applied, and reports rates, CPU, the ``handle()``
breakdown, Redis counters and the per-version counts.
"""

from __future__ import annotations

import asyncio
import cProfile
import math
import statistics
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import rate, stderr_log
from benchmarks.harness import GcTimer, ServiceClock
from benchmarks.scale_redis import (
    JoinCountingStore,
    counting_store,
    redis_delta,
    redis_snapshot,
    sample_pending,
    state_hash_sizes,
    stored_counts,
)
from benchmarks.scale_workload import (
    CANARY,
    CATEGORICAL,
    CHAMPION,
    MODEL,
    LaggedKafkaSource,
)
from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.service import Service
from monitor.ingest.sources import MemoryDeadLetterSink
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.traffic import NUMERIC_FEATURES

__all__ = ["LABEL_LAG", "MAX_POLL_RECORDS", "Ctx", "run_phase"]

SLICE_SECONDS = 10
WINDOW_SECONDS = 600
KPI_WINDOW_SECONDS = 3600
TICK_SECONDS = 1.0
JOIN_TTL_S = 3600.0
MAX_POLL_RECORDS = 5_000
LABEL_LAG = 2 * MAX_POLL_RECORDS  # per partition
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
PHASE_TIMEOUT_S = 150.0
# the Service's stages (stage_timer hook) -> the fields of handle_breakdown_s
STAGE_SLOTS = {"decode": "decode", "engine": "engine_process", "delta": "engine_delta",
               "store": "store_commit", "commit": "kafka_commit"}

_log = stderr_log("bench_scale")


@dataclass
class Progress:
    """Shared by the instances of one phase: when every event is applied, stop all."""

    predictions: int
    labels: int
    instances: list[Instance] = field(default_factory=list)
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    predictions_done_at: float = math.nan
    t_reached: float = math.nan
    cpu_reached: float = math.nan
    excluded_s: float = 0.0
    excluded_cpu_s: float = 0.0
    on_predictions_done: Callable[[], float] | None = None  # returns the pause to exclude
    on_reached: Callable[[], None] | None = None

    def totals(self) -> tuple[int, int]:
        p = lab = 0
        for i in self.instances:
            engine = i.service.engine
            if engine is not None:
                p += sum(st.predictions_total for st in engine.versions.values())
                lab += engine.labels_total
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
            for i in self.instances:
                i.service.stopping.set()


class Instance:
    """One Service of a phase over a LaggedKafkaSource, timed by its ``stage_timer``
    hook (a :class:`ServiceClock`); every batch it handles checks the phase's progress."""

    def __init__(self, settings: Settings, ctx: Ctx, progress: Progress) -> None:
        self.store: JoinCountingStore | None = counting_store(settings)
        self.source = LaggedKafkaSource(settings.kafka, ctx.pred_end, LABEL_LAG)
        self.clock = ServiceClock(self.source, STAGE_SLOTS, on_batch=progress.check)
        self.service = Service(settings, self.source, MemoryDeadLetterSink(), ctx.reference,
                               store=self.store, instance_id=settings.state.instance_id,
                               stage_timer=self.clock)
        if self.store is not None:
            self.service.wire_rebalance_hooks(self.source)
        progress.instances.append(self)


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
        Instance(phase_settings(ctx.bootstrap, ctx.topics, group, ctx.ref_path, state), ctx,
                 progress)
    insts = progress.instances
    stores = [x.store for x in insts if x.store is not None]

    def tracked_pending() -> int:
        return sum(x.service.engine.pending_predictions for x in insts
                   if x.service.engine is not None)

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
    for x in insts:
        x.clock.t_run = time.perf_counter()
    tasks = [asyncio.create_task(x.service.run(), name=f"bench-scale-{label}-{i}")
             for i, x in enumerate(insts)]
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
        for x in insts:
            x.service.stopping.set()
        results = await asyncio.gather(*(asyncio.wait_for(t, 30) for t in tasks),
                                       return_exceptions=True)
        for t in tasks:
            if not t.done():
                t.cancel()
        errors = [x for x in results if isinstance(x, BaseException)]
        if errors and progress.reached.is_set():
            _log(f"({label}) an instance failed while stopping: {errors[0]!r}")

    clocks = [x.clock for x in insts]
    t_first = min(c.t_first for c in clocks if not math.isnan(c.t_first))
    span = progress.t_reached - t_first - progress.excluded_s
    # this process's CPU time over the same span (one event-loop thread: less
    # sensitive than wall time to other load on a shared machine)
    cpu_first = min(x.source.cpu_first for x in insts if not math.isnan(x.source.cpu_first))
    cpu = progress.cpu_reached - cpu_first - progress.excluded_cpu_s
    preds, labels = progress.totals()
    records = sum(sum(c.batch_sizes) for c in clocks)
    busy = sum(sum(c.handle_s) for c in clocks)
    stage = {k: sum(c.stage_s[k] for c in clocks) for k in clocks[0].stage_s}
    stage["other"] = busy - sum(stage.values())
    batches = [b for c in clocks for b in c.batch_sizes]
    ticks = [t * 1e3 for c in clocks for t in c.tick_s]
    out: dict[str, Any] = {
        "instances": instances,
        "predictions": preds,
        "labels": labels,
        "records": records,
        "records_per_s": rate(records, span),
        "predictions_per_s": rate(preds, span),
        "span_s": span,
        "process_cpu_s": cpu,
        "records_per_cpu_s": rate(records, cpu),
        "cpu_us_per_record": cpu / records * 1e6 if records else math.nan,
        "join_to_first_batch_s": t_first - min(c.t_run for c in clocks),
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
        "ticks": len(ticks),
        "tick_ms_p50": float(np.percentile(ticks, 50)) if ticks else math.nan,
        "rebalances": [x.source.rebalances for x in insts],
        "label_partition_pauses": sum(x.source.pauses for x in insts),
        "per_instance": [{"instance": x.service.instance_id,
                          "records": sum(x.clock.batch_sizes),
                          "predictions": sum(x.clock.batch_predictions),
                          "first_batch_after_start_s": x.clock.t_first - x.clock.t_run}
                         for x in insts],
    }
    if use_redis:
        assert before is not None
        assert after is not None
        delta = redis_delta(before, after)
        k = 1000.0 / records
        kp = 1000.0 / preds
        out["join_buffer"] = {
            "blobs_written": sum(x.join_blobs for x in stores),
            "snapshots_written": sum(x.join_snapshots for x in stores),
            "blob_bytes_written": sum(x.join_blob_bytes for x in stores),
            "blob_bytes_per_prediction": sum(x.join_blob_bytes for x in stores) / preds
            if preds else math.nan,
            "fields_dropped": sum(x.join_fields_dropped for x in stores),
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
    out["counts"] = engine_counts([x.service for x in insts])
    return out


def engine_counts(services: list[Service]) -> dict[str, list[int]]:
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
