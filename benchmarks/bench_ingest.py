"""Benchmark: end-to-end ingest through the embedded broker.

One run, one embedded broker (tansu), one set of generated prediction events
(about 600 bytes of JSON each, 20 numeric features ``f00`` .. ``f19``, model
``card-fraud`` v1/v2 90/10), produced once into a 4-partition predictions topic
(plus a 4-partition labels topic holding labels for a fraction of them). Then,
one after another in the same process, each with a fresh consumer group:

(1) raw aiokafka ``getmany`` consumption, no decoding (the ceiling), with large
    fetches; (1b) the same with the fetch settings KafkaSource's consumer gets;
(2) the full driftgate path: :class:`monitor.core.service.Service` over
    :class:`monitor.ingest.sources.KafkaSource` (consume + decode + bins + windows +
    label join + ADWIN + evaluator ticks + commits) until the engine's
    ``predictions_total`` reaches the event count; per-batch ``handle()`` time
    is measured around the call, and CPython's GC time is recorded
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
import io
import math
import os
import platform
import pstats
import resource
import statistics
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from benchmarks.common import cli_main, json_safe, stderr_log, timed, timed_async
from detectors import ReferenceProfile
from monitor.config import KafkaSettings, Settings, load_settings
from monitor.core.service import Service
from monitor.engine import Engine, Evaluation
from monitor.ingest.codec import FAST_DECODE_AVAILABLE
from monitor.ingest.sources import KafkaSource, MemoryDeadLetterSink, SourceBatch
from monitor.sandbox.broker import EmbeddedBroker

__all__ = ["run"]

FloatArray = npt.NDArray[np.float64]

SEED = 20240607
REFERENCE_SEED = SEED + 1
MODEL = "card-fraud"
CHAMPION, CANARY = "v1", "v2"
CANARY_SHARE = 0.10
N_FEATURES = 20
PARTITIONS = 4
LABEL_SHARE = 0.20
TARGET_EVENT_BYTES = 600
START_TS = 1_700_000_000.0
EVENT_RATE_PER_S = 1_000.0  # event time: 200k events span 200 s, inside the 600 s window
SLICE_SECONDS = 10
WINDOW_SECONDS = 600
TICK_SECONDS = 1.0
MAX_POLL_RECORDS = 5_000
FAUST_TAKE = 5_000
# at Faust's rate here (a few thousand events/s) 5000-event batches need over a second
# to fill; a shorter `within` cuts them at ~2000 events and costs Faust about 20 %
FAUST_WITHIN_S = 2.0
REFERENCE_EVENTS = 20_000
# tansu answers JoinGroup after about half the session timeout: keep it short.
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
# raw consumer fetch tuning for (1): big fetches, short waits
RAW_FETCH: dict[str, int] = {"fetch_max_bytes": 64 * 1024 * 1024,
                             "max_partition_fetch_bytes": 16 * 1024 * 1024,
                             "fetch_max_wait_ms": 100}
# what KafkaSource's consumer gets: the kafka.* fetch settings' defaults
SOURCE_FETCH: dict[str, int] = {
    name: getattr(KafkaSettings(), name)
    for name in ("fetch_max_bytes", "max_partition_fetch_bytes", "fetch_max_wait_ms")}
PHASE_TIMEOUT_S = 120.0
FAUST_ELSEWHERE_EVENTS_PER_S = 9_500.0
TARGET_VS_RAW = 0.5
TARGET_VS_FAUST = 8.0
PROFILE_TOP = 15
REPEATS = 3  # runs of (1) and (2), each with a fresh group; the best one is reported
LZ4_REPEATS = 2  # runs of (1) and (2) on the lz4-compressed topics
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])


_log = stderr_log("bench_ingest")

@dataclass(frozen=True)
class Sizes:
    """Problem sizes; ``quick`` shrinks them for smoke runs."""

    events: int
    profile_events: int  # predictions consumed by the cProfile run of (2)


FULL = Sizes(events=200_000, profile_events=100_000)
QUICK = Sizes(events=20_000, profile_events=20_000)


def feature_names() -> list[str]:
    """``f00`` .. ``f19``."""
    return [f"f{j:02d}" for j in range(N_FEATURES)]


# --------------------------------------------------------------------------- data


def make_features(rng: np.random.Generator, n: int) -> FloatArray:
    """``(n, 20)`` features with mixed marginals (normal, lognormal, exponential, uniform)."""
    out = np.empty((n, N_FEATURES), dtype=np.float64)
    for j in range(N_FEATURES):
        kind = j % 4
        if kind == 0:
            out[:, j] = rng.normal(100.0 * (j + 1), 15.0, n)
        elif kind == 1:
            out[:, j] = rng.lognormal(3.0, 0.8, n)
        elif kind == 2:
            out[:, j] = rng.exponential(2.0, n)
        else:
            out[:, j] = rng.uniform(0.0, 1.0, n)
    return np.round(out, 6)


def make_scores(features: FloatArray) -> FloatArray:
    """A fixed logistic model over a few features (rare positives, like fraud)."""
    logit = (-4.0 + 0.02 * (features[:, 0] - 100.0) + 0.4 * np.log1p(features[:, 1])
             + 0.3 * features[:, 2] - 1.5 * features[:, 3])
    out: FloatArray = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
    return out


@dataclass
class Workload:
    """Encoded events, labels and their partitions."""

    values: list[bytes]
    keys: list[bytes]
    partitions: list[int]
    label_values: list[bytes]
    label_keys: list[bytes]
    label_partitions: list[int]
    canary_events: int
    mean_bytes: float
    min_bytes: int
    max_bytes: int


def make_workload(n: int, seed: int = SEED) -> Workload:
    """``n`` prediction events (JSON, ~600 bytes) and labels for ``LABEL_SHARE`` of them.

    Event ``i`` goes to partition ``i % PARTITIONS``; its label (if any) to the
    same partition of the labels topic (co-partitioned, as the range assignor
    expects). A ``trace`` string pads each event to about 600 bytes.
    """
    rng = np.random.default_rng(seed)
    feats = make_features(rng, n)
    scores = make_scores(feats)
    canary = rng.random(n) < CANARY_SHARE
    amounts = np.round(rng.lognormal(3.5, 1.0, n), 2)
    ts = START_TS + np.arange(n, dtype=np.float64) / EVENT_RATE_PER_S
    labelled = rng.random(n) < LABEL_SHARE
    fraud = rng.random(n) < np.clip(scores * 1.5, 0.0, 1.0)
    delays = rng.uniform(1.0, 30.0, n)
    names = feature_names()
    encode = msgspec.json.Encoder().encode
    values: list[bytes] = []
    keys: list[bytes] = []
    parts: list[int] = []
    label_values: list[bytes] = []
    label_keys: list[bytes] = []
    label_parts: list[int] = []
    feat_rows = feats.tolist()
    score_l = scores.tolist()
    amount_l = amounts.tolist()
    ts_l = ts.tolist()
    for i in range(n):
        eid = f"evt-{seed}-{i:09d}"
        event: dict[str, Any] = {
            "event_id": eid, "model": MODEL,
            "model_version": CANARY if canary[i] else CHAMPION,
            "ts": round(ts_l[i], 3), "score": score_l[i], "decision": score_l[i] >= 0.5,
            "amount": amount_l[i],
            "features": dict(zip(names, feat_rows[i], strict=True)),
            "trace": "",
        }
        raw = encode(event)
        pad = TARGET_EVENT_BYTES - len(raw)
        if pad > 0:
            event["trace"] = (eid * (pad // len(eid) + 1))[:pad]
            raw = encode(event)
        values.append(raw)
        keys.append(eid.encode())
        parts.append(i % PARTITIONS)
        if labelled[i]:
            label_values.append(encode({"event_id": eid, "label": int(fraud[i]),
                                        "ts": round(ts_l[i] + float(delays[i]), 3)}))
            label_keys.append(eid.encode())
            label_parts.append(i % PARTITIONS)
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=n)
    return Workload(values, keys, parts, label_values, label_keys, label_parts,
                    canary_events=int(canary.sum()), mean_bytes=float(lengths.mean()),
                    min_bytes=int(lengths.min()), max_bytes=int(lengths.max()))


def fit_reference(n: int = REFERENCE_EVENTS, seed: int = REFERENCE_SEED) -> ReferenceProfile:
    """A reference profile fitted on separately generated events of the same distribution."""
    rng = np.random.default_rng(seed)
    feats = make_features(rng, n)
    return ReferenceProfile.fit(
        {name: feats[:, j] for j, name in enumerate(feature_names())}, {},
        make_scores(feats), metadata={"source": "bench_ingest", "seed": seed})


# --------------------------------------------------------------------------- helpers


def _vm_hwm_kib() -> int | None:
    """This process's peak RSS (``VmHWM``) since the last reset, in KiB."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _vm_rss_kib(pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class Phase:
    """Peak RSS of one phase: VmHWM reset at the start, read at the end."""

    def __init__(self) -> None:
        self.reset = _reset_hwm()
        self.rss_start_kib = _vm_rss_kib()

    def memory(self) -> dict[str, Any]:
        hwm = _vm_hwm_kib() if self.reset else None
        return {"vm_hwm_mib": None if hwm is None else hwm / 1024.0,
                "rss_at_start_mib": None if self.rss_start_kib is None
                else self.rss_start_kib / 1024.0}


class GcTimer:
    """Wall time spent in CPython's cyclic GC while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = int(info.get("generation", 0))
            self.seconds[gen] += time.perf_counter() - self._t0
            self.collections[gen] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict[str, Any]:
        return {"total_s": sum(self.seconds), "seconds_by_generation": self.seconds,
                "collections_by_generation": self.collections}


def _pct(samples: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0..100) with linear interpolation."""
    if not samples:
        return math.nan
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def _rate(events: int, span_s: float) -> float:
    return events / span_s if span_s > 0 else math.nan


async def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes],
                  partitions: list[int], compression: str | None = None) -> int:
    """Produce with explicit partitions and wait for every ack; returns acked records."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False,
                                linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=8 * 1024 * 1024,
                                compression_type=compression)
    await asyncio.wait_for(producer.start(), timeout=30)
    acked = 0
    try:
        futs: list[asyncio.Future[Any]] = []
        for v, k, p in zip(values, keys, partitions, strict=True):
            futs.append(await producer.send(topic, v, key=k, partition=p))
            if len(futs) >= 20_000:
                acked += len(await asyncio.gather(*futs))
                futs = []
        acked += len(await asyncio.gather(*futs))
    finally:
        await asyncio.wait_for(producer.stop(), timeout=30)
    return acked


def _group(prefix: str) -> str:
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- (1)


async def bench_raw(bootstrap: str, topic: str, n: int,
                    fetch: dict[str, int] | None = None) -> dict[str, Any]:
    """(1): count records with ``getmany`` until ``n``; no decoding at all.

    ``fetch`` are the consumer's fetch settings (default :data:`RAW_FETCH`).
    """
    from aiokafka import AIOKafkaConsumer

    fetch = RAW_FETCH if fetch is None else fetch
    phase = Phase()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=_group("raw"),
        auto_offset_reset="earliest", enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS, **fetch, **GROUP_TUNING)
    t_start = time.perf_counter()
    await asyncio.wait_for(consumer.start(), timeout=30)
    count = 0
    batches: list[int] = []
    t_first = t_last = math.nan
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"(1) timed out after {PHASE_TIMEOUT_S}s at {count}/{n}")
            data = await consumer.getmany(timeout_ms=200)
            got = sum(len(msgs) for msgs in data.values())
            if not got:
                continue
            now = time.perf_counter()
            if not batches:
                t_first = now
            count += got
            batches.append(got)
            t_last = now
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=30)
    span = t_last - t_first
    return {
        "events": count,
        "events_per_s": _rate(count, span),
        "events_per_s_excl_first_batch": _rate(count - batches[0], span),
        "span_s": span,
        "join_to_first_record_s": t_first - t_start,
        "batches": len(batches),
        "batch_size_mean": statistics.fmean(batches),
        "batch_size_max": max(batches),
        "consumer": {"max_poll_records": MAX_POLL_RECORDS, **fetch, **GROUP_TUNING},
        "memory": phase.memory(),
    }


# --------------------------------------------------------------------------- (2)


class TimedService(Service):
    """A Service that times every ``handle()`` and stops at ``target`` predictions."""

    def __init__(self, *args: Any, target: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.target = target
        self.reached = asyncio.Event()
        self.handle_s: list[float] = []
        self.batch_sizes: list[int] = []
        self.batch_predictions: list[int] = []
        self.tick_s: list[float] = []
        self.t_first = math.nan
        self.t_last = math.nan
        self.t_run = math.nan
        self.stage_s: dict[str, float] = {"decode": 0.0, "engine": 0.0, "commit": 0.0}
        self._wrap_stages()

    def _wrap_stages(self) -> None:
        """Time the codec, the engine and the commit inside ``handle()`` (instance wrappers)."""
        stage = self.stage_s
        setattr(self.codec, "decode", timed(self.codec.decode, stage, "decode"))  # noqa: B010
        assert self.engine is not None
        setattr(self.engine, "process", timed(self.engine.process, stage, "engine"))  # noqa: B010
        setattr(self.source, "commit",  # noqa: B010
                timed_async(self.source.commit, stage, "commit"))

    def predictions_total(self) -> int:
        engine: Engine | None = self.engine
        if engine is None:
            return 0
        return sum(st.predictions_total for st in engine.versions.values())

    async def handle(self, batch: SourceBatch) -> None:
        size = len(batch)
        if not size:
            await super().handle(batch)
            return
        t0 = time.perf_counter()
        if not self.handle_s:
            self.t_first = t0
        await super().handle(batch)
        t1 = time.perf_counter()
        self.handle_s.append(t1 - t0)
        self.batch_sizes.append(size)
        self.batch_predictions.append(len(batch.predictions))
        self.t_last = t1
        if not self.reached.is_set() and self.predictions_total() >= self.target:
            self.reached.set()
            self.stopping.set()

    async def tick(self) -> Evaluation | None:
        t = time.perf_counter()
        try:
            return await super().tick()
        finally:
            self.tick_s.append(time.perf_counter() - t)

    async def run(self, until_exhausted: bool = False) -> None:
        self.t_run = time.perf_counter()
        await super().run(until_exhausted)


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


async def run_service(settings: Settings, reference: ReferenceProfile,
                      n: int) -> tuple[TimedService, MemoryDeadLetterSink]:
    """Run a TimedService over KafkaSource until ``n`` predictions are applied."""
    sink = MemoryDeadLetterSink()
    service = TimedService(settings, KafkaSource(settings.kafka), sink, reference, target=n)
    task = asyncio.create_task(service.run(), name="bench-driftgate-service")
    try:
        reached = asyncio.create_task(service.reached.wait())
        done, _ = await asyncio.wait({task, reached}, timeout=PHASE_TIMEOUT_S,
                                     return_when=asyncio.FIRST_COMPLETED)
        if reached not in done:
            reached.cancel()
            if task in done:
                task.result()
                raise RuntimeError("service stopped before applying every event")
            raise RuntimeError(f"(2) timed out after {PHASE_TIMEOUT_S}s at "
                               f"{service.predictions_total()}/{n}")
    finally:
        service.stopping.set()
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
    return service, sink


async def bench_service(bootstrap: str, topics: dict[str, str], reference: ReferenceProfile,
                        reference_path: Path, n: int, fast_decode: bool = True,
                        dedupe: bool = True) -> dict[str, Any]:
    """(2): the full driftgate path until ``predictions_total`` reaches ``n``."""
    phase = Phase()
    settings = service_settings(bootstrap, topics, _group("service"), reference_path,
                                fast_decode, dedupe)
    gc_threshold = gc.get_threshold()
    try:
        with GcTimer() as gc_timer:
            service, sink = await run_service(settings, reference, n)
    finally:
        # Service.run froze the heap and raised the young-generation threshold:
        # undo both so that every run (and phase) starts alike
        gc.unfreeze()
        gc.set_threshold(*gc_threshold)
    engine = service.engine
    assert engine is not None
    span = service.t_last - service.t_first
    records = sum(service.batch_sizes)
    preds = service.predictions_total()
    handle_ms = [s * 1e3 for s in service.handle_s]
    busy = sum(service.handle_s)
    versions = {f"{m}/{v}": {"predictions": st.predictions_total,
                             "labels_joined": st.labels_joined_total,
                             "late": st.late_total, "window_events": st.window_events}
                for (m, v), st in sorted(engine.versions.items())}
    return {
        "events": preds,
        "events_per_s": _rate(preds, span),
        "events_per_s_excl_first_batch": _rate(preds - service.batch_predictions[0], span),
        "records_per_s_incl_labels": _rate(records, span),
        "span_s": span,
        "join_to_first_batch_s": service.t_first - service.t_run,
        "records_handled": records,
        "labels_handled": records - sum(service.batch_predictions),
        "labels_total_in_engine": engine.labels_total,
        "labels_joined": sum(st.labels_joined_total for st in engine.versions.values()),
        "dead_letters": len(sink.records),
        "batches": len(handle_ms),
        "batch_size_mean": statistics.fmean(service.batch_sizes),
        "batch_size_p50": _pct(service.batch_sizes, 50),
        "batch_size_max": max(service.batch_sizes),
        "batch_size_min": min(service.batch_sizes),
        "handle_ms_p50": _pct(handle_ms, 50),
        "handle_ms_p99": _pct(handle_ms, 99),
        "handle_ms_max": max(handle_ms),
        "handle_us_per_record_mean": busy / records * 1e6,
        "handle_share_of_span": busy / span if span > 0 else math.nan,
        "handle_breakdown_s": {**service.stage_s,
                               "other": busy - sum(service.stage_s.values())},
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
        "ticks": len(service.tick_s),
        "tick_ms_p50": _pct([t * 1e3 for t in service.tick_s], 50),
        "tick_ms_max": max(service.tick_s) * 1e3 if service.tick_s else math.nan,
        "versions": versions,
        "pending_predictions_at_stop": engine.pending_predictions,
        "memory": phase.memory(),
    }


async def profile_service(bootstrap: str, topics: dict[str, str], reference: ReferenceProfile,
                          reference_path: Path, n: int) -> dict[str, Any]:
    """cProfile of a second (2) run (fresh group, ``n`` predictions): the top costs."""
    settings = service_settings(bootstrap, topics, _group("profile"), reference_path)
    prof = cProfile.Profile()
    with GcTimer() as gc_timer:
        prof.enable()
        try:
            service, _ = await run_service(settings, reference, n)
        finally:
            prof.disable()
    span = service.t_last - service.t_first
    stats = pstats.Stats(prof, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    for (filename, line, func), (cc, nc, tt, ct, _callers) in raw.items():
        del cc
        rows.append({"function": f"{_short(filename)}:{line}({func})", "ncalls": int(nc),
                     "tottime_s": round(float(tt), 4), "cumtime_s": round(float(ct), 4)})
    # the event loop waiting in epoll is idle time (broker round trips, group join)
    idle = sum(r["tottime_s"] for r in rows if "'poll' of 'select." in r["function"])
    busy = total - idle
    by_self = sorted((r for r in rows if "'poll' of 'select." not in r["function"]),
                     key=lambda r: r["tottime_s"], reverse=True)[:PROFILE_TOP]
    for r in by_self:
        r["share_of_busy"] = r["tottime_s"] / busy if busy > 0 else math.nan
    interesting = ("monitor/", "detectors/", "fetcher.py", "aiokafka/consumer/consumer.py")
    by_cum = sorted((r for r in rows if any(k in r["function"] for k in interesting)),
                    key=lambda r: r["cumtime_s"], reverse=True)[:PROFILE_TOP]
    for r in by_cum:
        r["share_of_busy"] = r["cumtime_s"] / busy if busy > 0 else math.nan
    return {
        "events": service.predictions_total(),
        "profiled_events_per_s": _rate(service.predictions_total(), span),
        "profiled_total_s": total,
        "idle_in_epoll_s": idle,
        "busy_s": busy,
        "gc_during_profiled_run": gc_timer.report(),
        "gc_note": "cProfile charges a cyclic-GC pass to the function whose allocation "
                   "triggered it: the self time of allocation-heavy functions (e.g. "
                   "sources._record, fetcher._consumer_record) includes GC passes",
        "how": "cProfile over the whole event-loop thread during a second path-(2) run "
               "(fresh group, same topics, run() from start to stop: includes the group join, "
               "which is idle time); top_self sorted by tottime (self time) with the epoll "
               "wait left out, top_cumulative by cumtime for driftgate and consumer code",
        "top_self": by_self,
        "top_cumulative": by_cum,
    }


def _short(filename: str) -> str:
    """A readable path: relative to site-packages or the project, else the stdlib name."""
    for marker in ("site-packages/", f"{PROJECT_ROOT}/"):
        idx = filename.find(marker)
        if idx >= 0:
            return filename[idx + len(marker):]
    if "/lib/python3" in filename:
        return "stdlib/" + filename.rsplit("/", 1)[-1]
    return filename


# --------------------------------------------------------------------------- (3)


async def bench_faust(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    """(3): a plain Faust agent counting ``stream.take(5000, within=...)`` batches."""
    import faust

    phase = Phase()
    datadir = tempfile.mkdtemp(prefix="bench-faust-")
    app = faust.App(
        _group("faust"), broker=f"kafka://{bootstrap}", value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False,
        topic_disable_leader=True, topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=GROUP_TUNING["session_timeout_ms"] / 1000.0,
        broker_heartbeat_interval=GROUP_TUNING["heartbeat_interval_ms"] / 1000.0,
        broker_rebalance_timeout=10.0, processing_guarantee="at_least_once",
        datadir=datadir, autodiscover=False, loop=asyncio.get_running_loop(),
    )
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    done = asyncio.Event()
    state: dict[str, Any] = {"count": 0, "batches": [], "t_first": math.nan,
                             "t_last": math.nan}

    async def counter(stream: Any) -> None:
        async for values in stream.take(FAUST_TAKE, within=FAUST_WITHIN_S):
            now = time.perf_counter()
            if not state["batches"]:
                state["t_first"] = now
            state["count"] += len(values)
            state["batches"].append(len(values))
            state["t_last"] = now
            if state["count"] >= n:
                done.set()

    counter.__name__ = counter.__qualname__ = "bench_counter"
    app.agent(source, name="bench-counter")(counter)
    t_start = time.perf_counter()
    try:
        await asyncio.wait_for(app.start(), timeout=60)
        await asyncio.wait_for(done.wait(), timeout=PHASE_TIMEOUT_S)
    except TimeoutError as exc:
        raise RuntimeError(f"(3) timed out at {state['count']}/{n}") from exc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=30)
        import shutil

        shutil.rmtree(datadir, ignore_errors=True)
    batches: list[int] = state["batches"]
    span = float(state["t_last"] - state["t_first"])
    count = int(state["count"])
    return {
        "events": count,
        "events_per_s": _rate(count, span),
        "events_per_s_excl_first_batch": _rate(count - batches[0], span),
        "span_s": span,
        "join_to_first_batch_s": float(state["t_first"]) - t_start,
        "batches": len(batches),
        "batch_size_mean": statistics.fmean(batches),
        "batch_size_max": max(batches),
        "faust_cython": _faust_cython(),
        "how": f"faust.App in the current event loop (app.start(), no Worker, web disabled), "
               f"value_serializer='raw', one agent: stream.take({FAUST_TAKE}, "
               f"within={FAUST_WITHIN_S}) counting len(values); Faust consumer defaults "
               f"otherwise",
        "memory": phase.memory(),
    }


def _faust_cython() -> bool:
    """Whether Faust runs its Cython stream iterator (as in a normal install)."""
    try:
        import faust.streams
    except ImportError:
        return False
    return getattr(faust.streams, "_CStreamIterator", None) is not None


# --------------------------------------------------------------------------- run


def _best(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the highest events/s, plus every run's events/s."""
    best = dict(max(runs, key=lambda r: r["events_per_s"]))
    best["runs_events_per_s"] = [r["events_per_s"] for r in runs]
    return best


def _version(dist: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


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
            raw = _best(raw_runs)
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
            svc = _best(svc_runs)
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
            lz4_raw, lz4_svc = _best(lz4_raw_runs), _best(lz4_svc_runs)

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
            broker_rss = _vm_rss_kib(broker_pid) if broker_pid is not None else None
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
            "driftgate_service": "TimedService subclasses Service: handle() timed per call "
            "(perf_counter around Service.handle), the run stopped when the engine's "
            "predictions_total reaches the event count; the service also consumed the "
            "labels topic in that time (records_per_s_incl_labels); handle_breakdown_s "
            "times codec.decode, engine.process and source.commit inside handle(); "
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
        "aiokafka": _version("aiokafka"),
        "faust_streaming": _version("faust-streaming"),
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
