"""Benchmark: end-to-end ingest through the embedded broker.

One run, one embedded broker (tansu), one set of generated prediction events
(about 600 bytes of JSON each, 20 numeric features ``f00`` .. ``f19``, model
``card-fraud`` v1/v2 90/10), produced once into a 4-partition predictions topic
(plus a 4-partition labels topic holding labels for a fraction of them). Then,
one after another in the same process, each with a fresh consumer group:

(1) raw aiokafka ``getmany`` consumption, no decoding (the ceiling), with large
    fetches; (1b) the same with the fetch settings KafkaSource's consumer gets;
(2) the full driftgate path: :class:`monitor.core.service.Service` over
    :class:`monitor.ingest.kafka.KafkaSource` (consume + decode + bins + windows +
    label join + ADWIN + evaluator ticks + commits) until the engine's
    ``predictions_total`` reaches the event count; per-batch ``handle()`` time
    and its stages come from the Service's ``stage_timer`` hook
    (:class:`benchmarks.harness.ServiceClock`), and CPython's GC time is recorded
    (``Service.run`` freezes the start-up heap and collects the young
    generation about once per batch, as ``driftgate run`` does);
(2b) once, the same with ``codec.fast_decode: false``: every batch decoded by
    msgspec, without the compiled yyjson fast path (what the fast path is worth);
(2c) once, the same with ``dedupe.enabled: false`` (what counting each event id
    once costs; (2) runs with it on, the default);
(4) the same events produced again, lz4-compressed (as librdkafka producers
    often send them), into a second pair of topics: (1) and (2) on them, twice
    each, the best reported (the raw ceiling and driftgate, both on lz4);
(3) a plain faust-streaming agent (``stream.take(5000, within=...)``) that only
    counts events, started in the current loop (no worker, no web server).

(1) and (2) run three times each (fresh groups) and the faster run is reported.
Throughput is measured from the first batch/record the application receives to
the last one, so group-join time is excluded (and reported separately). When a
target is missed, path (2) is run once more under cProfile (fresh group,
fewer events) and the top costs are reported in ``profile_top``.

Run ``python -m benchmarks.bench_ingest [--quick]`` from the project root: one
JSON object on one line goes to stdout, everything else to stderr. A
``make bench`` aggregator can call :func:`run` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import gc
import math
import os
import platform
import resource
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from benchmarks.common import (
    Sizes,
    best_of,
    cli_main,
    dist_version,
    json_safe,
    pct,
    rate,
    stderr_log,
)
from benchmarks.harness import (
    GcTimer,
    MeteredKafkaSource,
    Phase,
    ServiceClock,
    group_name,
    produce,
    profile_summary,
    vm_rss_kib,
)
from benchmarks.ingest_baselines import (
    GROUP_TUNING,
    MAX_POLL_RECORDS,
    PHASE_TIMEOUT_S,
    bench_faust,
    bench_raw,
)
from benchmarks.ingest_workload import (
    CANARY,
    CHAMPION,
    MODEL,
    N_FEATURES,
    PARTITIONS,
    REFERENCE_EVENTS,
    SEED,
    feature_names,
    fit_reference,
    make_workload,
)
from detectors import ReferenceProfile
from monitor.config import KafkaSettings, Settings, load_settings
from monitor.core.service import Service
from monitor.ingest.fastpath import FAST_DECODE_AVAILABLE
from monitor.ingest.sources import MemoryDeadLetterSink
from monitor.sandbox.broker import EmbeddedBroker

__all__ = ["run"]

SLICE_SECONDS = 10
WINDOW_SECONDS = 600
TICK_SECONDS = 1.0
# what KafkaSource's consumer gets: the kafka.* fetch settings' defaults
SOURCE_FETCH: dict[str, int] = {
    name: getattr(KafkaSettings(), name)
    for name in ("fetch_max_bytes", "max_partition_fetch_bytes", "fetch_max_wait_ms")}
FAUST_ELSEWHERE_EVENTS_PER_S = 9_500.0
TARGET_VS_RAW = 0.5
TARGET_VS_FAUST = 8.0
REPEATS = 3  # runs of (1) and (2), each with a fresh group; the best one is reported
LZ4_REPEATS = 2  # runs of (1) and (2) on the lz4-compressed topics
# the Service's stages (stage_timer hook) -> the fields of handle_breakdown_s
STAGE_SLOTS = {"decode": "decode", "engine": "engine", "commit": "commit"}

_log = stderr_log("bench_ingest")

FULL = Sizes(events=200_000, profile_events=100_000)
QUICK = Sizes(events=20_000, profile_events=20_000)


# --------------------------------------------------------------------------- (2)


class BenchService:
    """A Service over a metered KafkaSource, timed by its ``stage_timer`` hook,
    stopped once the engine has applied ``target`` predictions."""

    def __init__(self, settings: Settings, reference: ReferenceProfile, target: int) -> None:
        self.target = target
        self.reached = asyncio.Event()
        self.sink = MemoryDeadLetterSink()
        self.source = MeteredKafkaSource(settings.kafka)
        self.clock = ServiceClock(self.source, STAGE_SLOTS, on_batch=self._check)
        self.service = Service(settings, self.source, self.sink, reference,
                               stage_timer=self.clock)

    def predictions_total(self) -> int:
        engine = self.service.engine
        if engine is None:
            return 0
        return sum(st.predictions_total for st in engine.versions.values())

    def _check(self) -> None:
        if not self.reached.is_set() and self.predictions_total() >= self.target:
            self.reached.set()
            self.service.stopping.set()


def service_settings(bootstrap: str, topics: dict[str, str], group: str,
                     reference_path: Path, fast_decode: bool = True,
                     dedupe: bool = True) -> Settings:
    """Settings of (2): 20 numeric features, v1 champion / v2 canary, 10 s / 600 s windows
    (``fast_decode=False``: the codec without its compiled fast path, for (2b);
    ``dedupe=False``: no memory of ids seen, for (2c))."""
    return load_settings(
        None,
        kafka={"bootstrap_servers": bootstrap, "group_id": group, "client_id": group,
               "max_poll_records": MAX_POLL_RECORDS, **topics, **GROUP_TUNING},
        models=[{"name": MODEL, "champion": CHAMPION, "canary": CANARY}],
        features={"numeric": feature_names(), "categorical": []},
        reference={"path": str(reference_path)},
        windows={"slice_seconds": SLICE_SECONDS, "window_seconds": WINDOW_SECONDS,
                 "kpi_window_seconds": 3600, "allowed_lateness_seconds": WINDOW_SECONDS},
        evaluation={"tick_seconds": TICK_SECONDS},
        log={"format": "json", "level": "warning"},
        codec={"fast_decode": fast_decode},
        dedupe={"enabled": dedupe},
    )


async def run_service(settings: Settings, reference: ReferenceProfile, n: int) -> BenchService:
    """Run a Service over KafkaSource until ``n`` predictions are applied."""
    bench = BenchService(settings, reference, n)
    service = bench.service
    bench.clock.t_run = time.perf_counter()
    task = asyncio.create_task(service.run(), name="bench-driftgate-service")
    try:
        reached = asyncio.create_task(bench.reached.wait())
        done, _ = await asyncio.wait({task, reached}, timeout=PHASE_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if reached not in done:
            reached.cancel()
            if task in done:
                task.result()
                raise RuntimeError("service stopped before applying every event")
            raise RuntimeError(f"(2) timed out after {PHASE_TIMEOUT_S}s at "
                               f"{bench.predictions_total()}/{n}")
    finally:
        service.stopping.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return bench


async def bench_service(bootstrap: str, topics: dict[str, str], reference: ReferenceProfile,
                        reference_path: Path, n: int, fast_decode: bool = True,
                        dedupe: bool = True) -> dict[str, Any]:
    """(2): the full driftgate path until ``predictions_total`` reaches ``n``."""
    phase = Phase()
    settings = service_settings(bootstrap, topics, group_name("service"), reference_path,
                                fast_decode, dedupe)
    gc_threshold = gc.get_threshold()
    try:
        with GcTimer() as gc_timer:
            bench = await run_service(settings, reference, n)
    finally:
        # Service.run froze the heap and raised the young-generation threshold:
        # undo both so that every run (and phase) starts alike
        gc.unfreeze()
        gc.set_threshold(*gc_threshold)
    service, clock = bench.service, bench.clock
    engine = service.engine
    assert engine is not None
    span = clock.t_last - clock.t_first
    records = sum(clock.batch_sizes)
    preds = bench.predictions_total()
    handle_ms = [s * 1e3 for s in clock.handle_s]
    busy = sum(clock.handle_s)
    versions = {f"{m}/{v}": {"predictions": st.predictions_total,
                             "labels_joined": st.labels_joined_total,
                             "late": st.late_total, "window_events": st.window_events}
                for (m, v), st in sorted(engine.versions.items())}
    return {
        "events": preds,
        "events_per_s": rate(preds, span),
        "events_per_s_excl_first_batch": rate(preds - clock.batch_predictions[0], span),
        "records_per_s_incl_labels": rate(records, span),
        "span_s": span,
        "join_to_first_batch_s": clock.t_first - clock.t_run,
        "records_handled": records,
        "labels_handled": records - sum(clock.batch_predictions),
        "labels_total_in_engine": engine.labels_total,
        "labels_joined": sum(st.labels_joined_total for st in engine.versions.values()),
        "dead_letters": len(bench.sink.records),
        "batches": len(handle_ms),
        "batch_size_mean": statistics.fmean(clock.batch_sizes),
        "batch_size_p50": pct(clock.batch_sizes, 50),
        "batch_size_max": max(clock.batch_sizes),
        "batch_size_min": min(clock.batch_sizes),
        "handle_ms_p50": pct(handle_ms, 50),
        "handle_ms_p99": pct(handle_ms, 99),
        "handle_ms_max": max(handle_ms),
        "handle_us_per_record_mean": busy / records * 1e6,
        "handle_share_of_span": busy / span if span > 0 else math.nan,
        "handle_breakdown_s": clock.breakdown(),
        "gc_during_run": gc_timer.report(),
        "codec_fast_path": {"enabled": fast_decode, "available": FAST_DECODE_AVAILABLE,
                            "batches": service.codec.fast_batches,
                            "left_to_msgspec": service.codec.fast_fallbacks},
        "dedupe": {"enabled": dedupe,
                   "duplicates": dict(engine.duplicates),
                   "ids_in_memory": (len(engine.seen_predictions) + len(engine.seen_labels)
                                     if engine.seen_predictions is not None
                                     and engine.seen_labels is not None else 0),
                   "bytes_per_id": ((engine.seen_predictions.nbytes
                                     / max(len(engine.seen_predictions), 1))
                                    if engine.seen_predictions is not None else None)},
        "ticks": len(clock.tick_s),
        "tick_ms_p50": pct([t * 1e3 for t in clock.tick_s], 50),
        "tick_ms_max": max(clock.tick_s) * 1e3 if clock.tick_s else math.nan,
        "versions": versions,
        "pending_predictions_at_stop": engine.pending_predictions,
        "memory": phase.memory(),
    }


async def profile_service(bootstrap: str, topics: dict[str, str], reference: ReferenceProfile,
                          reference_path: Path, n: int) -> dict[str, Any]:
    """cProfile of a second (2) run (fresh group, ``n`` predictions): the top costs."""
    settings = service_settings(bootstrap, topics, group_name("profile"), reference_path)
    prof = cProfile.Profile()
    with GcTimer() as gc_timer:
        prof.enable()
        try:
            bench = await run_service(settings, reference, n)
        finally:
            prof.disable()
    span = bench.clock.t_last - bench.clock.t_first
    summary, _rows = profile_summary(
        prof, ("monitor/", "detectors/", "fetcher.py", "aiokafka/consumer/consumer.py"))
    return {
        "events": bench.predictions_total(),
        "profiled_events_per_s": rate(bench.predictions_total(), span),
        "profiled_total_s": summary["profiled_total_s"],
        "idle_in_epoll_s": summary["idle_in_epoll_s"],
        "busy_s": summary["busy_s"],
        "gc_during_profiled_run": gc_timer.report(),
        "gc_note": "cProfile charges a cyclic-GC pass to the function whose allocation "
                   "triggered it: the self time of allocation-heavy functions (e.g. "
                   "sources._record, fetcher._consumer_record) includes GC passes",
        "how": "cProfile over the whole event-loop thread during a second path-(2) run "
               "(fresh group, same topics, run() from start to stop: includes the group join, "
               "which is idle time); top_self sorted by tottime (self time) with the epoll "
               "wait left out, top_cumulative by cumtime for driftgate and consumer code",
        "top_self": summary["top_self"],
        "top_cumulative": summary["top_cumulative"],
    }


# --------------------------------------------------------------------------- run


async def _run(quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    n = sizes.events
    started = time.perf_counter()
    load_start = os.getloadavg()
    _log(f"generating {n:,} events and a {REFERENCE_EVENTS:,}-event reference")
    t = time.perf_counter()
    work = make_workload(n)
    reference = fit_reference()
    gen_s = time.perf_counter() - t
    _log(f"generated in {gen_s:.1f} s: mean {work.mean_bytes:.1f} B/event, "
         f"{len(work.label_values):,} labels")

    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        ref_path = Path(tmp) / "reference.json"
        ref_path.write_text(reference.to_json())
        broker = EmbeddedBroker(log_path=Path(tmp) / "tansu.log")
        await asyncio.to_thread(broker.start)
        try:
            suffix = uuid.uuid4().hex[:8]
            topics = {"predictions_topic": f"bench-preds-{suffix}",
                      "labels_topic": f"bench-labels-{suffix}",
                      "dead_letter_topic": f"bench-dlq-{suffix}"}
            await broker.create_topics({topics["predictions_topic"]: PARTITIONS,
                                        topics["labels_topic"]: PARTITIONS,
                                        topics["dead_letter_topic"]: 1})
            bootstrap = broker.bootstrap_servers
            t = time.perf_counter()
            acked = await produce(bootstrap, topics["predictions_topic"], work.values,
                                  work.keys, work.partitions)
            produce_s = time.perf_counter() - t
            t = time.perf_counter()
            label_acked = await produce(bootstrap, topics["labels_topic"], work.label_values,
                                        work.label_keys, work.label_partitions)
            label_produce_s = time.perf_counter() - t
            if acked != n or label_acked != len(work.label_values):
                raise RuntimeError(f"produced {acked}/{n} events, {label_acked} labels")
            _log(f"produced {acked:,} events in {produce_s:.1f} s, {label_acked:,} labels in "
                 f"{label_produce_s:.1f} s")
            broker_pid = broker.pid

            raw_runs: list[dict[str, Any]] = []
            for rep in range(REPEATS):
                _log(f"(1) raw aiokafka getmany, run {rep + 1}/{REPEATS}")
                raw_runs.append(await bench_raw(bootstrap, topics["predictions_topic"], n))
                _log(f"(1) {raw_runs[-1]['events_per_s']:,.0f} events/s "
                     f"(join {raw_runs[-1]['join_to_first_record_s']:.1f} s)")
            raw = best_of(raw_runs, "events_per_s")
            _log("(1b) raw aiokafka getmany with KafkaSource's fetch settings")
            raw_src = await bench_raw(bootstrap, topics["predictions_topic"], n,
                                      fetch=SOURCE_FETCH)
            _log(f"(1b) {raw_src['events_per_s']:,.0f} events/s")

            svc_runs: list[dict[str, Any]] = []
            for rep in range(REPEATS):
                _log(f"(2) driftgate Service over KafkaSource, run {rep + 1}/{REPEATS}")
                svc_runs.append(await bench_service(bootstrap, topics, reference, ref_path, n))
                _log(f"(2) {svc_runs[-1]['events_per_s']:,.0f} events/s, handle p50 "
                     f"{svc_runs[-1]['handle_ms_p50']:.1f} ms p99 "
                     f"{svc_runs[-1]['handle_ms_p99']:.1f} ms, GC "
                     f"{svc_runs[-1]['gc_during_run']['total_s']:.2f} s")
            svc = best_of(svc_runs, "events_per_s")
            _log("(2b) the same with codec.fast_decode: false (msgspec only)")
            svc_msgspec = await bench_service(bootstrap, topics, reference, ref_path, n,
                                              fast_decode=False)
            _log(f"(2b) {svc_msgspec['events_per_s']:,.0f} events/s")
            _log("(2c) the same with dedupe.enabled: false")
            svc_nodedupe = await bench_service(bootstrap, topics, reference, ref_path, n,
                                               dedupe=False)
            _log(f"(2c) {svc_nodedupe['events_per_s']:,.0f} events/s")

            lz4_topics = {"predictions_topic": f"bench-preds-lz4-{suffix}",
                          "labels_topic": f"bench-labels-lz4-{suffix}",
                          "dead_letter_topic": topics["dead_letter_topic"]}
            await broker.create_topics({lz4_topics["predictions_topic"]: PARTITIONS,
                                        lz4_topics["labels_topic"]: PARTITIONS})
            t = time.perf_counter()
            lz4_acked = await produce(bootstrap, lz4_topics["predictions_topic"], work.values,
                                      work.keys, work.partitions, compression="lz4")
            lz4_acked += await produce(bootstrap, lz4_topics["labels_topic"],
                                       work.label_values, work.label_keys,
                                       work.label_partitions, compression="lz4")
            _log(f"(4) produced {lz4_acked:,} records lz4-compressed in "
                 f"{time.perf_counter() - t:.1f} s")
            lz4_raw_runs: list[dict[str, Any]] = []
            lz4_svc_runs: list[dict[str, Any]] = []
            for rep in range(LZ4_REPEATS):
                lz4_raw_runs.append(await bench_raw(bootstrap, lz4_topics["predictions_topic"],
                                                    n))
                lz4_svc_runs.append(await bench_service(bootstrap, lz4_topics, reference,
                                                        ref_path, n))
                _log(f"(4) lz4 run {rep + 1}/{LZ4_REPEATS}: raw "
                     f"{lz4_raw_runs[-1]['events_per_s']:,.0f}, driftgate "
                     f"{lz4_svc_runs[-1]['events_per_s']:,.0f} events/s")
            lz4_raw = best_of(lz4_raw_runs, "events_per_s")
            lz4_svc = best_of(lz4_svc_runs, "events_per_s")

            _log("(3) faust-streaming agent")
            fst = await bench_faust(bootstrap, topics["predictions_topic"], n)
            _log(f"(3) {fst['events_per_s']:,.0f} events/s")

            ratio_raw = svc["events_per_s"] / raw["events_per_s"]
            ratio_faust = svc["events_per_s"] / fst["events_per_s"]
            targets = {"service_ge_0.5x_raw": ratio_raw >= TARGET_VS_RAW,
                       "service_ge_8x_faust": ratio_faust >= TARGET_VS_FAUST}
            profile: dict[str, Any] | None = None
            if not all(targets.values()):
                m = min(sizes.profile_events, n)
                _log(f"a target was missed: profiling path (2) over {m:,} events")
                profile = await profile_service(bootstrap, topics, reference, ref_path, m)
            broker_rss = vm_rss_kib(broker_pid) if broker_pid is not None else None
        finally:
            await asyncio.to_thread(broker.stop)

    ru_maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result: dict[str, Any] = {
        "benchmark": "bench_ingest",
        "quick": quick,
        "events": n,
        "partitions": PARTITIONS,
        "event_bytes_mean": work.mean_bytes,
        "event_bytes_min": work.min_bytes,
        "event_bytes_max": work.max_bytes,
        "numeric_features": N_FEATURES,
        "canary_events": work.canary_events,
        "labels": len(work.label_values),
        "label_share": len(work.label_values) / n,
        "generate_s": gen_s,
        "produce_s": produce_s,
        "produce_events_per_s": n / produce_s,
        "produce_labels_s": label_produce_s,
        "raw_aiokafka": raw,
        "raw_aiokafka_source_fetch_settings": raw_src,
        "driftgate_service": svc,
        "driftgate_service_msgspec_only": svc_msgspec,
        "ratio_fast_path_over_msgspec_only": svc["events_per_s"] / svc_msgspec["events_per_s"],
        "driftgate_service_dedupe_off": svc_nodedupe,
        "ratio_dedupe_on_over_off": svc["events_per_s"] / svc_nodedupe["events_per_s"],
        "lz4": {"raw_aiokafka": lz4_raw, "driftgate_service": lz4_svc,
                "raw_events_per_s": lz4_raw["events_per_s"],
                "driftgate_events_per_s": lz4_svc["events_per_s"],
                "ratio_service_over_raw": lz4_svc["events_per_s"] / lz4_raw["events_per_s"]},
        "faust_agent": fst,
        "ratio_service_over_raw": ratio_raw,
        "ratio_service_over_faust": ratio_faust,
        "ratio_service_over_faust_elsewhere_9500": svc["events_per_s"]
        / FAUST_ELSEWHERE_EVENTS_PER_S,
        "targets": targets,
        "profile_top": profile,
        "peak_rss_mib_ru_maxrss": ru_maxrss_kib / 1024.0,
        "broker_rss_mib_at_end": None if broker_rss is None else broker_rss / 1024.0,
        "notes": {
            "events_per_s": "events / (time the last batch was done - time the first batch "
            "was received by the application); group join excluded (join_to_first_* = from "
            "start to the first batch); *_excl_first_batch leaves the first batch's events "
            "out of the numerator (a conservative variant)",
            "driftgate_service": "Service with a stage_timer hook: handle() timed per call "
            "(the hook's handle stage), the run stopped when the engine's "
            "predictions_total reaches the event count; the service also consumed the "
            "labels topic in that time (records_per_s_incl_labels); handle_breakdown_s "
            "is the hook's decode, engine and commit stages inside handle(); "
            "KafkaSource's consumer uses the kafka.* fetch settings' defaults "
            "(SOURCE_FETCH)",
            "memory": "peak_rss_mib_ru_maxrss: resource.getrusage(RUSAGE_SELF).ru_maxrss of "
            "the whole process (includes the generated events kept in memory); each phase's "
            "memory.vm_hwm_mib: /proc/self/status VmHWM after resetting it via "
            "/proc/self/clear_refs at the phase start (process-wide peak during the phase, "
            "so it includes the workload; compare with rss_at_start_mib); the broker is a "
            "separate process (broker_rss_mib_at_end)",
            "targets": f"(2) >= {TARGET_VS_RAW} x (1) and (2) >= {TARGET_VS_FAUST} x (3), "
            "events/s",
            "repeats": f"(1) and (2) run {REPEATS} times each (fresh consumer groups, same "
            "topics); the fastest run is reported, runs_events_per_s lists all; (1b) and (3) "
            "run once; the machine may be shared (loadavg_1m_start_end)",
            "raw_aiokafka_source_fetch_settings": "(1b): as (1) but with the fetch settings "
            "KafkaSource's consumer actually gets (the kafka.* defaults)",
            "driftgate_service_msgspec_only": "(2b): one run of (2) with codec.fast_decode "
            "false, i.e. every batch decoded by msgspec (the compiled yyjson fast path off); "
            "driftgate_service.codec_fast_path counts the batches the fast path took",
            "gc_during_run": "wall time inside CPython's cyclic GC during the (2) run "
            "(gc.callbacks), by generation",
            "driftgate_service_dedupe_off": "(2c): one run of (2) with dedupe.enabled false "
            "(no memory of ids seen); (2) itself runs with dedupe on, the default",
            "lz4": f"(4): the same events and labels produced lz4-compressed into their own "
            f"topics; (1) and (2) on them, {LZ4_REPEATS} runs each, the best reported",
        },
        "loadavg_1m_start_end": [load_start[0], os.getloadavg()[0]],
        "python": platform.python_version(),
        "aiokafka": dist_version("aiokafka"),
        "faust_streaming": dist_version("faust-streaming"),
        "msgspec": msgspec.__version__,
        "numpy": np.__version__,
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "machine": platform.machine(),
        "seed": SEED,
    }
    result["total_seconds"] = time.perf_counter() - started
    out: dict[str, Any] = json_safe(result)
    return out


def run(quick: bool = False) -> dict[str, Any]:
    """Run the three measurements (and the profile if needed); one JSON-able dict."""
    from monitor.logs import configure_logging

    configure_logging("json", "warning")
    return asyncio.run(_run(quick))


def main(argv: list[str] | None = None) -> int:
    """CLI: print the result of :func:`run` as one JSON line on stdout."""
    return cli_main("bench_ingest", run, __doc__, "20,000 events for smoke runs", argv)


if __name__ == "__main__":
    raise SystemExit(main())
