"""Shared test helpers: an independent offline oracle, /metrics parsing and a
running service.

The oracle recomputes, with plain Python loops (``bisect``, dicts), what the
engine should report for a known list of events: window histograms, confusion
counts, PSI/KL/JS and KPIs. It shares no code with the engine except the
divergence formulas, which are tested against Evidently and scipy separately.

A service under test is run in a task with :func:`running_service` (through
:func:`monitor.serve.runner.run_service`) or :func:`serving` (a
:class:`~monitor.core.service.Service` built by the test); both stop it on the
way out with :func:`stop_service`. Free ports come from
:func:`monitor.sandbox.ports.free_port`.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from detectors import ReferenceProfile, js_divergence, kl_divergence, psi
from detectors.kpi import wilson_interval
from monitor.config import Settings
from monitor.core.service import Service
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator, healthy_reference
from monitor.serve.runner import run_service

MODEL = "card-fraud"
CATEGORICAL = ["merchant_category"]
SCORE = "model_score"


def fit_reference(seed: int = 99, n: int = 20_000) -> ReferenceProfile:
    """A reference profile fitted on healthy generated champion traffic."""
    return healthy_reference(seed, n, 1_600_000_000.0)


def write_config(path: Path, **sections: Any) -> Path:
    """Write a YAML config with the test defaults, overridden by ``sections``."""
    base: dict[str, Any] = {
        "models": [{"name": MODEL, "champion": "v1", "canary": "v2"}],
        "features": {"numeric": list(NUMERIC_FEATURES), "categorical": CATEGORICAL},
        "windows": {"slice_seconds": 10, "window_seconds": 600, "kpi_window_seconds": 3600,
                    "allowed_lateness_seconds": 600},
        "evaluation": {"tick_seconds": 0.5},
        "log": {"format": "json", "level": "info"},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    path.write_text(yaml.safe_dump(base))
    return path


@dataclass
class Expected:
    """What the engine should report, per (model, version)."""

    predictions: Counter[tuple[str, str]] = field(default_factory=Counter)
    joined: Counter[tuple[str, str]] = field(default_factory=Counter)
    confusion: dict[tuple[str, str], Counter[str]] = field(
        default_factory=lambda: defaultdict(Counter))
    window: dict[tuple[str, str], dict[str, list[int]]] = field(default_factory=dict)
    psi: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    kl: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    js: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    kpi: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    window_events: Counter[tuple[str, str]] = field(default_factory=Counter)


def _bin(edges: list[float], value: float | None, missing_col: int) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing_col
    return bisect.bisect_right(edges, value)


def oracle(predictions: Iterable[dict[str, Any]], labels: Iterable[dict[str, Any]],
           ref: ReferenceProfile, slice_seconds: float, window_seconds: float,
           champion: str = "v1", canary: str = "v2", eps: float = 1e-4) -> Expected:
    """Offline computation over all events (no late events assumed)."""
    preds = list(predictions)
    exp = Expected()
    n_slices = round(window_seconds / slice_seconds)
    head = math.floor(max(p["ts"] for p in preds) / slice_seconds)
    oldest = head - n_slices + 1
    num_edges = [list(map(float, e)) for e in ref.numeric.edges]
    num_cols = ref.numeric.n_columns
    cat_tables = [list(c) for c in ref.categorical.categories]
    cat_cols = ref.categorical.n_columns
    score_edges = list(map(float, ref.score.edges[0]))
    score_cols = ref.score.n_columns
    hist: dict[tuple[str, str], dict[str, list[int]]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for p in preds:
        key = (p["model"], p["model_version"])
        exp.predictions[key] += 1
        by_id[p["event_id"]] = p
        if math.floor(p["ts"] / slice_seconds) < oldest:
            continue
        exp.window_events[key] += 1
        h = hist.setdefault(key, {})
        for j, f in enumerate(ref.numeric.features):
            row = h.setdefault(f, [0] * num_cols)
            row[_bin(num_edges[j], p["features"].get(f), num_cols - 1)] += 1
        for j, f in enumerate(ref.categorical.features):
            row = h.setdefault(f, [0] * cat_cols)
            v = p["features"].get(f)
            if v is None:
                row[cat_cols - 1] += 1
            elif str(v) in cat_tables[j]:
                row[cat_tables[j].index(str(v))] += 1
            else:
                row[cat_cols - 2] += 1
        row = h.setdefault(SCORE, [0] * score_cols)
        row[_bin(score_edges, p["score"], score_cols - 1)] += 1
    exp.window = hist
    for lab in labels:
        pred = by_id.get(lab["event_id"])
        if pred is None:
            continue
        key = (pred["model"], pred["model_version"])
        exp.joined[key] += 1
        y, d = lab["label"] == 1, bool(pred["decision"])
        cell = "tp" if y and d else "fn" if y else "fp" if d else "tn"
        exp.confusion[key][cell] += 1
    ref_rows: dict[str, list[int]] = {}
    for j, f in enumerate(ref.numeric.features):
        ref_rows[f] = ref.numeric_counts[j].tolist()
    for j, f in enumerate(ref.categorical.features):
        ref_rows[f] = ref.categorical_counts[j].tolist()
    ref_rows[SCORE] = ref.score_counts[0].tolist()
    for key, h in hist.items():
        for f, row in h.items():
            for name, divergence, store in (("psi", psi, exp.psi),
                                            ("kl", kl_divergence, exp.kl),
                                            ("js", js_divergence, exp.js)):
                del name
                store[(key[0], key[1], f, "reference")] = float(
                    divergence(ref_rows[f], row, eps))
    champ, can = (MODEL, champion), (MODEL, canary)
    if champ in hist and can in hist:
        for f, row in hist[can].items():
            base = hist[champ][f]
            exp.psi[(MODEL, canary, f, "champion")] = float(psi(base, row, eps))
            exp.kl[(MODEL, canary, f, "champion")] = float(kl_divergence(base, row, eps))
            exp.js[(MODEL, canary, f, "champion")] = float(js_divergence(base, row, eps))
    for key, c in exp.confusion.items():
        tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
        for kpi, k, n in (("catch_rate", tp, tp + fn), ("precision", tp, tp + fp),
                          ("alert_rate", tp + fp, tp + fp + fn + tn)):
            if n == 0:
                continue
            lo, hi = wilson_interval(k, n)
            exp.kpi[(key[0], key[1], kpi, "estimate")] = k / n
            exp.kpi[(key[0], key[1], kpi, "lower")] = float(lo)
            exp.kpi[(key[0], key[1], kpi, "upper")] = float(hi)
    return exp


def parse_metrics(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """``{sample name: {sorted label items: value}}`` from exposition text."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def sample(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]], name: str,
           **labels: str) -> float | None:
    """One sample's value, or None."""
    return metrics.get(name, {}).get(tuple(sorted(labels.items())))


def encode(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


FIXED_LIBRDKAFKA = (2, 2, 0)


def _librdkafka_version(kcat: str, env: dict[str, str]) -> tuple[int, ...]:
    out = subprocess.run(
        [kcat, "-V"], capture_output=True, timeout=10, check=False, env=env
    ).stdout.decode(errors="replace")
    match = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
    return tuple(int(g) for g in match.groups()) if match else (0, 0, 0)


def _kcat_env(kcat: str, tmp_path: Path) -> tuple[dict[str, str], tuple[int, ...]]:
    """Environment for kcat, preferring a librdkafka that can talk to tansu.

    librdkafka < 2.2 skips one byte too few per KIP-482 tagged field
    (confluentinc/librdkafka#4278), so it cannot parse tansu's ApiVersions v3
    response (which carries four tagged fields). Debian bookworm's kcat uses
    librdkafka 2.0.2; when that is what is installed and the confluent-kafka
    wheel (which bundles a current librdkafka) is importable, kcat is pointed
    at the bundled library instead.
    """
    env = dict(os.environ)
    version = _librdkafka_version(kcat, env)
    if version >= FIXED_LIBRDKAFKA:
        return env, version
    spec = importlib.util.find_spec("confluent_kafka")
    if spec is None or spec.origin is None:
        return env, version
    libs = Path(spec.origin).parent.parent / "confluent_kafka.libs"
    bundled = sorted(libs.glob("librdkafka*.so*")) if libs.is_dir() else []
    if not bundled:
        return env, version
    shim = tmp_path / "librdkafka"
    shim.mkdir()
    (shim / "librdkafka.so.1").symlink_to(bundled[0])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(shim), str(libs), *filter(None, [os.environ.get("LD_LIBRARY_PATH")])]
    )
    return env, _librdkafka_version(kcat, env)


def kcat_command(tmp_path: Path) -> tuple[str, dict[str, str]]:
    """kcat's path and an environment in which it can talk to tansu.

    Fails (never skips) when kcat is missing or only an old librdkafka is there:
    ``make test`` installs kcat, and confluent-kafka is in the dev extra.
    """
    kcat = shutil.which("kcat")
    if kcat is None:
        raise RuntimeError("kcat is not installed (make test installs it)")
    env, version = _kcat_env(kcat, tmp_path)
    if version < FIXED_LIBRDKAFKA:
        raise RuntimeError(f"kcat runs on librdkafka {version}, which cannot talk to tansu; "
                           "install the dev extra (confluent-kafka bundles a fixed one)")
    return kcat, env


def _codec_variant(settings: Any, fast: bool) -> Any:
    from monitor.ingest.codec import EventCodec

    codec_cfg = settings.codec.model_copy(update={"fast_decode": fast})
    return EventCodec(settings.model_copy(update={"codec": codec_cfg}),
                      version_allowed=lambda model, version: True)


def decoded_outcome(batch: Any) -> tuple[str, list[tuple[int, str, str]]]:
    """A decoded batch as comparable data: every column (types kept: ``True``,
    ``1`` and ``1.0`` differ; nan kept) and every rejection's record, reason
    and detail, in order."""
    p, lab = batch.predictions, batch.labels
    cols = {
        "event_id": p.event_id, "model": p.model, "version": p.version,
        "ts": p.ts.tolist(), "score": p.score.tolist(), "decision": p.decision.tolist(),
        "amount": p.amount.tolist(), "numeric": p.numeric.tolist(),
        "numeric_shape": list(p.numeric.shape),
        "categorical": {k: [[type(v).__name__, v] for v in vs]
                        for k, vs in p.categorical.items()},
        "partition": p.partition.tolist(), "dtypes": [str(a.dtype) for a in (
            p.ts, p.score, p.decision, p.amount, p.numeric, p.partition)],
        "labels": [lab.event_id, lab.label.tolist(), lab.ts.tolist(), lab.amount.tolist()],
    }
    rejected = [(id(rj.record), rj.reason, rj.detail) for rj in batch.rejected]
    return json.dumps(cols, default=repr), rejected


def assert_fast_path_agrees(settings: Any, preds: Any, labels: Any = ()) -> bool:
    """Decode one batch with the compiled fast path on and off (fresh codecs, no
    version cap) and require the same outcome; returns whether the fast path
    took the batch."""
    fast, slow = _codec_variant(settings, True), _codec_variant(settings, False)
    got, want = decoded_outcome(fast.decode(preds, labels)), decoded_outcome(
        slow.decode(preds, labels))
    if got != want:
        raise AssertionError(f"fast path differs from msgspec:\nfast: {got}\nslow: {want}")
    return bool(fast.fast_batches)


# ------------------------------------------------------------ test producers
def produce_librdkafka(bootstrap: str, topic: str, codec: str, values: list[bytes],
                       partitions: list[int]) -> None:
    """confluent-kafka (its wheel bundles a current librdkafka), no idempotence
    (the embedded broker has none), every ack awaited."""
    from confluent_kafka import Producer

    errors: list[str] = []

    def delivered(err: Any, msg: Any) -> None:
        if err is not None:
            errors.append(str(err))

    producer = Producer({"bootstrap.servers": bootstrap, "compression.type": codec,
                         "enable.idempotence": False, "linger.ms": 5, "acks": "all"})
    for value, part in zip(values, partitions, strict=True):
        producer.produce(topic, value=value, partition=part, on_delivery=delivered)
        producer.poll(0)
    assert producer.flush(60) == 0, "librdkafka did not deliver everything"
    assert not errors, errors[:3]


async def produce_aiokafka(bootstrap: str, topic: str, codec: str | None,
                           values: list[bytes], partitions: list[int],
                           max_batch_size: int = 256 * 1024) -> None:
    """aiokafka to explicit partitions, every ack awaited."""
    import asyncio

    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=5,
                                compression_type=codec, max_batch_size=max_batch_size)
    await producer.start()
    try:
        futs = [await producer.send(topic, v, partition=p)
                for v, p in zip(values, partitions, strict=True)]
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


def assert_divergences_and_kpis(metrics: dict[str, dict[tuple[tuple[str, str], ...], float]],
                                exp: Expected, kpis: bool = True) -> None:
    """The exported PSI/KL/JS (and KPI estimates and bounds) equal the oracle's."""
    import math

    assert exp.psi, "the oracle produced no PSI values"
    for store, metric in ((exp.psi, "driftgate_psi"), (exp.kl, "driftgate_kl_divergence"),
                          (exp.js, "driftgate_js_divergence")):
        for (model, version, feature, baseline), value in store.items():
            got = sample(metrics, metric, model=model, version=version, feature=feature,
                         baseline=baseline)
            assert got is not None, (metric, version, feature, baseline)
            assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), \
                (metric, version, feature, baseline, got, value)
    if not kpis:
        return
    assert exp.kpi, "the oracle produced no KPI values"
    for (model, version, kpi, bound), value in exp.kpi.items():
        got = sample(metrics, "driftgate_kpi_ratio", model=model, version=version, kpi=kpi,
                     bound=bound)
        assert got is not None, (version, kpi, bound)
        assert math.isclose(got, value, rel_tol=1e-9, abs_tol=1e-12), \
            (version, kpi, bound, got, value)


def in_process_service(tmp: Path, settings: Any, reference: ReferenceProfile,
                       n_events: int, chunk: int = 3000) -> tuple[Any, Any]:
    """A Service (no source: an empty replay file) and its DecisionLayer, its
    engine fed ``n_events`` predictions of a canary broken from the start, in
    ``chunk``-event batches: an HTTP API with something to answer about."""
    import json

    from monitor.core.decisions import DecisionLayer
    from monitor.core.service import Service
    from monitor.ingest.codec import EventCodec
    from monitor.ingest.records import RawRecord
    from monitor.ingest.replay import ReplaySource
    from monitor.ingest.sources import MemoryDeadLetterSink
    from monitor.sandbox.traffic import TrafficGenerator

    (tmp / "none.jsonl").write_text("")
    service = Service(settings, ReplaySource(tmp / "none.jsonl", "p", "l"),
                      MemoryDeadLetterSink(), reference)
    layer = DecisionLayer(settings, lambda: service.engine)
    batch = TrafficGenerator(seed=8, canary_share=0.3, bug_at=0.0).generate(
        n_events, 1_700_000_000.0, 100.0)
    codec = EventCodec(settings)
    engine = service.engine
    if engine is None:
        raise RuntimeError("the service was built without a reference")
    for start in range(0, n_events, chunk):
        engine.process(codec.decode(
            [RawRecord("p", 0, i, json.dumps(p).encode())
             for i, p in enumerate(batch.predictions[start:start + chunk], start)]))
    return service, layer


# ------------------------------------------------------------ a running service
async def stop_service(service: Service | None, task: asyncio.Task[Any],
                       timeout_s: float = 30.0) -> None:
    """Stop the service running in ``task`` and await the task.

    Sets ``service.stopping`` (or, when the service never came up and
    ``service`` is None, cancels the task) and awaits the task for at most
    ``timeout_s`` seconds: after that the task is cancelled and
    ``TimeoutError`` raised. An error the task ended with is raised; the
    cancellation made here is not. A task that is already done is only awaited.
    """
    if service is not None:
        service.stopping.set()
    else:
        task.cancel()
    try:
        await asyncio.wait_for(task, timeout_s)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if service is not None or (current is not None and current.cancelling()):
            raise


class ServiceRun:
    """:func:`monitor.serve.runner.run_service` running in :attr:`task`, without
    signal handlers; :attr:`service` is set once it has started."""

    def __init__(self, settings: Settings, **run_kwargs: Any) -> None:
        self.service: Service | None = None
        self.task: asyncio.Task[Service] = asyncio.create_task(
            run_service(settings, install_signals=False, started=self._started, **run_kwargs),
            name="driftgate-service")

    def _started(self, service: Service) -> None:
        self.service = service

    async def started(self, timeout_s: float, assigned: bool = True) -> Service:
        """The service once it has started and (with ``assigned``) its source has
        partitions; raises the task's error if it ended first, ``RuntimeError``
        if that takes more than ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.task.done():
                self.task.result()
                raise RuntimeError("driftgate stopped before it started")
            service = self.service
            if service is not None and (not assigned or service.source.status().assigned):
                return service
            if time.monotonic() > deadline:
                what = "start" if service is None else "get partitions"
                raise RuntimeError(f"driftgate did not {what} within {timeout_s:g} s")
            await asyncio.sleep(0.05)

    async def stop(self, timeout_s: float = 30.0) -> None:
        """:func:`stop_service` on this run (a no-op but for awaiting once done)."""
        await stop_service(self.service, self.task, timeout_s)


@contextlib.asynccontextmanager
async def running_service(settings: Settings, stop_timeout_s: float = 30.0,
                          **run_kwargs: Any) -> AsyncIterator[ServiceRun]:
    """Run the whole service (``run_service(settings, install_signals=False,
    **run_kwargs)``) in a task for the body of an ``async with``, then stop it
    and await it (at most ``stop_timeout_s`` seconds), also when the body fails.

    Typical use::

        async with running_service(settings) as run:
            service = await run.started(30)
            ...
    """
    run = ServiceRun(settings, **run_kwargs)
    try:
        yield run
    finally:
        await run.stop(stop_timeout_s)


@contextlib.asynccontextmanager
async def serving(service: Service, stop_timeout_s: float = 30.0
                  ) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``service.run()`` in a task for the body of an ``async with`` (which
    gets the task), then stop it and await it (at most ``stop_timeout_s``
    seconds), also when the body fails."""
    task = asyncio.create_task(service.run(), name="driftgate-service")
    try:
        yield task
    finally:
        await stop_service(service, task, stop_timeout_s)


# ------------------------------------------------- the end-to-end test stream
#: event time of the first event of :func:`e2e_stream`
STREAM_START = 1_700_000_000.0
#: predictions in :func:`e2e_stream`
STREAM_EVENTS = 6000
STREAM_RATE = 50.0  # events/s of event time: the stream spans 120 s


def e2e_stream(seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(predictions, labels) of the end-to-end tests: STREAM_EVENTS predictions
    from STREAM_START at STREAM_RATE, 30 % canary, the canary breaking half-way."""
    gen = TrafficGenerator(seed=seed, canary_share=0.3,
                           bug_at=STREAM_START + STREAM_EVENTS / STREAM_RATE / 2)
    batch = gen.generate(STREAM_EVENTS, STREAM_START, STREAM_RATE)
    return batch.predictions, batch.labels


def assert_exact_metrics(metrics: dict[str, Any], preds: list[dict[str, Any]],
                         labels: list[dict[str, Any]]) -> None:
    """Every count, confusion cell, PSI/KL/JS and KPI scraped from a service with
    the test config (10 s slices, 600 s window) equals the oracle's over
    ``preds`` and ``labels``, and the drift of :func:`e2e_stream` shows."""
    ref = fit_reference()
    exp = oracle(preds, labels, ref, slice_seconds=10, window_seconds=600)
    for (model, version), n in exp.predictions.items():
        assert sample(metrics, "driftgate_events_total", model=model, version=version,
                      kind="prediction") == n
        assert sample(metrics, "driftgate_events_total", model=model, version=version,
                      kind="label") == exp.joined[(model, version)]
        assert sample(metrics, "driftgate_window_events", model=model,
                      version=version) == exp.window_events[(model, version)]
        assert sample(metrics, "driftgate_late_events_total", model=model,
                      version=version) == 0
        for cell in ("tp", "fp", "fn", "tn"):
            assert sample(metrics, "driftgate_confusion_total", model=model, version=version,
                          cell=cell) == exp.confusion[(model, version)][cell], cell
    assert_divergences_and_kpis(metrics, exp)
    assert sample(metrics, "driftgate_labels_received_total") == len(labels)
    # the drift half-way shows: the canary's velocity feature moved, the champion's not
    assert exp.psi[(MODEL, "v2", "txn_velocity_1h", "reference")] > 0.2
    assert exp.psi[(MODEL, "v1", "txn_velocity_1h", "reference")] < 0.05


def all_consumed(dg: Any, n_preds: int, n_labels: int) -> dict[str, Any] | None:
    """The parsed /metrics of ``dg`` (a process with ``metrics()``) once it has
    counted ``n_preds`` predictions and received ``n_labels`` labels, else None."""
    m = parse_metrics(dg.metrics())
    preds = sum(v for k, v in m.get("driftgate_events_total", {}).items()
                if ("kind", "prediction") in k)
    rx = sample(m, "driftgate_labels_received_total") or 0
    return m if preds >= n_preds and rx >= n_labels else None


def group_id_of(cfg: Path) -> str:
    """The Kafka consumer group of a YAML config file."""
    return str(yaml.safe_load(cfg.read_text())["kafka"]["group_id"])
