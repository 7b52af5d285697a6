"""The service loop: poll a source, decode, apply to the engine, commit.

One batch, end to end: the source's ``poll`` returns records of both topics;
the codec turns them into columns and rejections; rejections go to the
dead-letter sink (and are counted); the engine applies the valid events; once
the dead letters are acknowledged and the engine state stored, the batch's
offsets are committed (at-least-once). An evaluator task ticks every
``evaluation.tick_seconds`` and hands the evaluation to the registered tick
handlers (the decision layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from detectors import ReferenceProfile
from monitor.config import Settings
from monitor.core.metrics import (
    EngineCollector,
    ServiceMetrics,
    codec_metrics,
    skipped_batch_metrics,
)
from monitor.engine import Engine, Evaluation
from monitor.engine.reservoir import attach_sample
from monitor.engine.store import SEQ_KEY, StateStore, StoreRegressedError, StoreUnavailableError
from monitor.ingest.codec import EventCodec
from monitor.ingest.columns import DecodedBatch
from monitor.ingest.fastpath import FAST_DECODE_AVAILABLE
from monitor.ingest.poison import SKIP_REASONS
from monitor.ingest.sources import DeadLetterSink, Source, SourceBatch, SourceStatus

__all__ = ["STAGES", "Service", "StageTimer", "TickHandler"]

log = structlog.get_logger("driftgate.service")

TickHandler = Callable[[Evaluation], Awaitable[Any]]
StageTimer = Callable[[str, float], None]
"""Called with a stage name (one of :data:`STAGES`) and the seconds it took."""

STAGES = ("decode", "engine", "delta", "store", "commit", "handle", "tick")
"""The stages a :data:`StageTimer` hears about, see :class:`Service`."""


class Service:
    """Runs a source through the codec and engine, with an evaluator tick.

    Parameters
    ----------
    settings : Settings
        The validated configuration.
    source : Source
        Kafka, Faust or replay source.
    dead_letters : DeadLetterSink
        Where rejected records go.
    reference : ReferenceProfile, optional
        The frozen reference; when None, ``reference.fit_from_champion_events``
        champion predictions are buffered, the profile fitted on them, and the
        buffered batches then applied.
    registry : CollectorRegistry, optional
        Registry for the metrics (a new one by default; never the global one).
    stage_timer : StageTimer, optional
        A per-stage timing hook (benchmarks, profiling): called with the stage
        name and the seconds spent (``time.perf_counter``) once per stage run,
        after the stage returns. Per batch :meth:`handle` reports ``decode``
        (the codec), ``engine`` (``Engine.process``), with a state store
        ``delta`` (``Engine.delta``) and ``store`` (the store commit, retries
        included), then ``commit`` (the source's offset commit), and last
        ``handle`` (the whole call, those stages included); :meth:`tick`
        reports ``tick``. Empty polls report nothing; while the reference is
        still being fitted a batch reports ``decode``, ``handle`` and, when the
        buffered offsets are committed, ``commit``. A stage that raises is not
        reported. Without a hook (the default) nothing is timed: one ``is
        None`` check per stage.
    """

    def __init__(
        self,
        settings: Settings,
        source: Source,
        dead_letters: DeadLetterSink,
        reference: ReferenceProfile | None = None,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        store: StateStore | None = None,
        instance_id: str = "local",
        stage_timer: StageTimer | None = None,
    ) -> None:
        self.settings = settings
        self.stage_timer = stage_timer
        self.store = store
        self.instance_id = instance_id
        self.store_ok = True
        self.has_lease = store is None
        self.store_failures = 0
        self.resyncs = 0
        self._seq = 0
        self.source = source
        self.dead_letters = dead_letters
        self.clock = clock
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        self.codec = EventCodec(settings)
        self.engine: Engine | None = None
        self._bootstrap: list[DecodedBatch] = []
        self._bootstrap_n = 0
        self._bootstrap_offsets: dict[tuple[str, int], int] = {}
        self._pending_invalid: list[tuple[str, str]] = []
        self._join_to_load: list[tuple[str, int]] = []
        if reference is not None:
            self._set_engine(Engine(settings, reference, clock))
        elif settings.reference.fit_from_champion_events <= 0:
            raise ValueError("no reference profile given and reference.fit_from_champion_"
                             "events is 0")
        self.tick_handlers: list[TickHandler] = []
        # undecodable Kafka batches skipped, per (topic, reason); zeros up front so
        # that the first skip is an increase Prometheus can see
        self.skipped_batches: dict[tuple[str, str], int] = {
            (t, r): 0 for t in (settings.kafka.predictions_topic, settings.kafka.labels_topic)
            for r in SKIP_REASONS}
        self.skipped_offsets: dict[tuple[str, str], int] = dict(self.skipped_batches)
        self.extra_metrics: list[Callable[[], Any]] = [self._codec_metrics,
                                                       self._skipped_metrics]
        self.batches = 0
        self.records = 0
        self.started_at = clock()
        self.stopping = asyncio.Event()
        self.last_evaluation: Evaluation | None = None
        self.decisions: Any = None
        self.http_port: int | None = None

    # ---------------------------------------------------------------- helpers
    def _set_engine(self, engine: Engine) -> None:
        self.engine = engine
        if self.store is not None:
            engine.track_join_changes()
        self.registry.register(EngineCollector(engine, status=self.status,
                                               extra=self._extra, ready=self.ready))

    def _codec_metrics(self) -> Iterator[Metric]:
        return codec_metrics(self.codec.fast_batches, self.codec.msgspec_batches)

    def _skipped_metrics(self) -> Iterator[Metric]:
        return skipped_batch_metrics(self.skipped_batches, self.skipped_offsets)

    def _extra(self) -> Any:
        for fn in self.extra_metrics:
            yield from fn()

    def status(self) -> SourceStatus:
        st = self.source.status()
        st.dead_lettered = self.dead_letters.sent
        return st

    def ready(self) -> bool:
        """Engine built, store reachable, partitions assigned, connected, lag bounded."""
        if self.engine is None or not self.store_ok:
            return False
        st = self.source.status()
        if not st.connected or not st.assigned:
            return False
        return all(lag <= self.settings.http.ready_max_lag for lag in st.lag.values())

    # ------------------------------------------------------------- processing
    async def handle(self, batch: SourceBatch) -> None:
        """Process one polled batch and commit its offsets."""
        if not len(batch) and not batch.skipped:
            self._note_partitions(batch.next_offsets)
            return
        t0 = time.perf_counter()
        for sk in batch.skipped:
            # an undecodable Kafka batch the source stepped over: dead-lettered (with
            # its offset range) before its offsets are committed with the rest
            await self.dead_letters.send(sk.dead_letter(), sk.reason, sk.detail)
            key = (sk.topic, sk.reason)
            self.skipped_batches[key] = self.skipped_batches.get(key, 0) + 1
            self.skipped_offsets[key] = self.skipped_offsets.get(key, 0) + sk.offsets
        # before: the partitions of this batch are not caught up yet (the consumer's
        # position already counts the records in hand), and assigned partitions
        # that have not delivered yet hold event time back
        self._note_partitions({}, in_hand=batch.next_offsets.keys())
        timer = self.stage_timer
        if timer is None:
            decoded = self.codec.decode(batch.predictions, batch.labels)
        else:
            t = time.perf_counter()
            decoded = self.codec.decode(batch.predictions, batch.labels)
            timer("decode", time.perf_counter() - t)
        for rec in batch.unknown:
            await self.dead_letters.send(rec, "unknown_topic", f"topic {rec.topic!r} is not "
                                         "a predictions or labels topic")
        for rj in decoded.rejected:
            kind = "label" if rj.record.topic == self.settings.kafka.labels_topic else \
                "prediction"
            await self.dead_letters.send(rj.record, rj.reason, rj.detail)
            self._count_invalid(kind, rj.reason)
        for _rec in batch.unknown:
            self._count_invalid("unknown", "unknown_topic")
        await self.dead_letters.flush()
        if self.engine is not None and self.store is not None:
            await self._handle_with_store(decoded, batch)
        elif self.engine is None:
            self._bootstrap_offsets.update(batch.next_offsets)
            self._buffer_for_reference(decoded)
            if self.engine is not None:  # the reference was just fitted
                if self._join_to_load:
                    todo, self._join_to_load = self._join_to_load, []
                    await self._load_join(todo)
                await self._commit_offsets(self._bootstrap_offsets)
                self._bootstrap_offsets = {}
        else:
            self._process(self.engine, decoded)
            await self._commit_offsets(batch.next_offsets)
        self._note_partitions(batch.next_offsets)
        self.batches += 1
        self.records += len(batch)
        took = time.perf_counter() - t0
        self.metrics.batch_duration.observe(took)
        self.metrics.batch_events.observe(len(batch))
        if timer is not None:
            timer("handle", took)

    def _process(self, engine: Engine, decoded: DecodedBatch) -> None:
        """``engine.process`` (the ``engine`` stage)."""
        timer = self.stage_timer
        if timer is None:
            engine.process(decoded)
            return
        t = time.perf_counter()
        engine.process(decoded)
        timer("engine", time.perf_counter() - t)

    async def _commit_offsets(self, offsets: dict[tuple[str, int], int]) -> None:
        """The source's offset commit (the ``commit`` stage)."""
        timer = self.stage_timer
        if timer is None:
            await self.source.commit(offsets)
            return
        t = time.perf_counter()
        await self.source.commit(offsets)
        timer("commit", time.perf_counter() - t)

    def _note_partitions(self, after: dict[tuple[str, int], int],
                         in_hand: Iterable[tuple[str, int]] = ()) -> None:
        """Tell the engine which predictions partitions are assigned and which have
        nothing more to read (``after`` the offsets given; never those with
        records ``in_hand``, not processed yet): event time waits for the others.
        Sources that cannot tell leave it to the idle timeout."""
        caught_up = getattr(self.source, "caught_up", None)
        if self.engine is None or caught_up is None:
            return
        topic = self.settings.kafka.predictions_topic
        busy = set(in_hand)
        self.engine.set_partitions(
            {p for t, p in self.source.status().assigned if t == topic},
            {p for t, p in caught_up(after) if t == topic and (t, p) not in busy})

    async def _store_call(self, make: Callable[[], Awaitable[Any]]) -> Any:
        """Run a store operation, retrying with backoff while the store is down.

        Nothing is committed to Kafka meanwhile; /readyz reports not ready.
        """
        delay = 0.2
        while True:
            try:
                result = await make()
            except StoreUnavailableError as exc:
                self.store_ok = False
                self.store_failures += 1
                log.warning("state store unavailable; retrying", error=str(exc),
                            retry_in_s=delay)
                if self.stopping.is_set():
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            self.store_ok = True
            return result

    async def _handle_with_store(self, decoded: DecodedBatch, batch: SourceBatch) -> None:
        store, engine = self.store, self.engine
        if store is None or engine is None:
            return
        self._process(engine, decoded)
        timer = self.stage_timer
        if timer is None:
            commit = engine.delta(self.instance_id)
            t = 0.0
        else:
            t = time.perf_counter()
            commit = engine.delta(self.instance_id)
            now = time.perf_counter()
            timer("delta", now - t)
            t = now
        commit.offsets = dict(batch.next_offsets)
        commit.seq, commit.expect_seq = self._seq + 1, self._seq
        try:
            await self._store_call(lambda: store.commit(commit))
        except StoreRegressedError as exc:
            await self._resync(str(exc))
            return
        if timer is not None:
            timer("store", time.perf_counter() - t)
        self._seq += 1
        await self._commit_offsets(batch.next_offsets)

    async def _resync(self, why: str) -> None:
        """The store lost commits: roll back to what it holds and replay from there.

        The engine is rebuilt from the instance's stored slices and counters, and
        every assigned partition is rewound to the offsets stored with them, so the
        lost batches are counted again, once.
        """
        store, engine = self.store, self.engine
        if store is None or engine is None:
            return
        self.resyncs += 1
        log.warning("state store lost commits; re-syncing from it", reason=why)
        slices, counters = await self._store_call(lambda: store.load_instance(self.instance_id))
        engine.clear_state()
        engine.restore(slices, counters)
        self._seq = int(counters.get(SEQ_KEY, 0))
        assigned = sorted(self.source.status().assigned)
        await self._load_join(assigned)
        seek_to = getattr(self.source, "seek_to", None)
        if seek_to is not None:
            await seek_to(await self._store_call(lambda: store.offsets(assigned)))

    async def seek_offsets(self, partitions: Sequence[tuple[str, int]]
                           ) -> dict[tuple[str, int], int] | None:
        """Where to start assigned partitions: the offsets stored with the counts.

        The stored label-join buffers of these partitions are taken over too.
        """
        store = self.store
        if store is None:
            return None
        await self._load_join(list(partitions))
        found: dict[tuple[str, int], int] = await self._store_call(
            lambda: store.offsets(list(partitions)))
        if found:
            log.info("seeking to stored offsets", offsets={f"{t}/{p}": o
                                                           for (t, p), o in found.items()})
        return found

    async def _load_join(self, partitions: list[tuple[str, int]]) -> None:
        store, engine = self.store, self.engine
        if store is None:
            return
        if engine is None:  # the reference is still being fitted: load once it is
            self._join_to_load = sorted(set(self._join_to_load) | set(partitions))
            return
        blobs, epoch = await self._store_call(lambda: store.load_join(partitions))
        loaded = engine.load_join_state(blobs, epoch)
        if loaded:
            log.info("join buffer taken over", entries=loaded, partitions=len(partitions))

    def wire_rebalance_hooks(self, source: Any) -> None:
        """With a state store: a KafkaSource asks :meth:`seek_offsets` where to start
        assigned partitions (and takes their join buffers over) and tells
        :meth:`release_partitions` about revoked ones."""
        if self.store is not None:
            source.set_assign_hook(self.seek_offsets)
            source.set_revoke_hook(self.release_partitions)

    async def release_partitions(self, partitions: Sequence[tuple[str, int]]) -> None:
        """Revoked partitions: their join entries now belong to another instance
        (this one's last commit holds them)."""
        if self.store is not None and self.engine is not None:
            self.engine.drop_join_partitions(list(partitions))
        self._join_to_load = [tp for tp in self._join_to_load if tp not in set(partitions)]

    def _count_invalid(self, kind: str, reason: str) -> None:
        if self.engine is not None:
            self.engine.record_invalid(kind, reason)
        else:
            self._pending_invalid.append((kind, reason))

    def _buffer_for_reference(self, decoded: DecodedBatch) -> None:
        import numpy as np

        self._bootstrap.append(decoded)
        champions = {m.name: m.champion for m in self.settings.models}
        preds = decoded.predictions
        self._bootstrap_n += sum(1 for m, v in zip(preds.model, preds.version, strict=True)
                                 if champions.get(m) == v)
        need = self.settings.reference.fit_from_champion_events
        if self._bootstrap_n < need:
            return
        num: list[Any] = []
        scores: list[Any] = []
        cats: dict[str, list[object]] = {c: [] for c in self.settings.features.categorical}
        for b in self._bootstrap:
            p = b.predictions
            mask = np.array([champions.get(m) == v for m, v in zip(p.model, p.version,
                                                                     strict=True)], dtype=bool)
            num.append(p.numeric[mask])
            scores.append(p.score[mask])
            for c in cats:
                cats[c].extend(x for x, keep in zip(p.categorical[c], mask, strict=True)
                               if keep)
        matrix = np.concatenate(num) if num else np.empty((0, 0))
        numeric = {f: matrix[:, j] for j, f in enumerate(self.settings.features.numeric)}
        score_arr = np.concatenate(scores)
        ref = attach_sample(ReferenceProfile.fit(
            numeric, cats, score_arr, n_bins=self.settings.reference.n_bins,
            top_k=self.settings.reference.top_k,
            metadata={"source": "champion events", "events": int(matrix.shape[0])},
        ), numeric, cats, score_arr)
        log.info("reference fitted from champion events", events=int(matrix.shape[0]),
                 hash=ref.content_hash[:16])
        engine = Engine(self.settings, ref, self.clock)
        self._set_engine(engine)
        for kind, reason in self._pending_invalid:
            engine.record_invalid(kind, reason)
        self._pending_invalid = []
        for b in self._bootstrap:
            engine.process(b)
        self._bootstrap = []

    # ---------------------------------------------------------------- running
    async def tick(self) -> Evaluation | None:
        """Evaluate now and run the tick handlers."""
        if self.engine is None:
            return None
        if self.stage_timer is None:
            return await self._tick(self.engine)
        t = time.perf_counter()
        ev = await self._tick(self.engine)
        self.stage_timer("tick", time.perf_counter() - t)
        return ev

    async def _tick(self, engine: Engine) -> Evaluation:
        """:meth:`tick` once the engine is built."""
        if self.store is not None:
            try:
                self.has_lease = await self.store.acquire_lease(
                    self.instance_id, self.settings.state.lease_ttl_ms)
                slices, counters = await self.store.read_global()
                engine.set_global(slices, counters)
                self.store_ok = True
            except StoreUnavailableError as exc:
                self.has_lease = False
                self.store_ok = False
                log.warning("state store unavailable at tick", error=str(exc))
        ev = engine.evaluate()
        self.last_evaluation = ev
        if not self.has_lease:
            return ev  # another instance holds the evaluator lease
        for handler in list(self.tick_handlers):
            try:
                await handler(ev)
            except Exception:
                log.exception("tick handler failed")
        return ev

    async def _ticker(self) -> None:
        period = self.settings.evaluation.tick_seconds
        while not self.stopping.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), timeout=period)
            await self.tick()

    async def run(self, until_exhausted: bool = False) -> None:
        """Poll until :attr:`stopping` is set (or the source is exhausted).

        On stop the batch in hand is finished and committed before returning
        (the drain on SIGTERM).
        """
        # the imported stack (river pulls in sklearn, scipy and pandas) is ~150k
        # long-lived objects: keep them out of every full GC pass from here on
        gc.collect()
        gc.freeze()
        # a batch allocates tens of thousands of short-lived containers: collect
        # the young generation per ~batch rather than every 700 allocations
        gen0, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(max(gen0, 50_000), gen1, gen2)
        log.info("codec", fast_path="on" if self.codec.fast_path else "off",
                 fast_path_built=FAST_DECODE_AVAILABLE)
        if self.store is None:
            log.warning(
                "state not durable", backend=self.settings.state.backend,
                restart_loses=["window slices and counters", "pending label joins",
                               "ids seen (copies of earlier events count again)",
                               "ADWIN state"],
                keeps="committed Kafka offsets (nothing is read twice)",
                avoid="state.backend: redis")
        if self.store is not None:
            await self.store.start()
            if self.engine is not None:
                slices, counters = await self._store_call(
                    lambda: self.store.load_instance(self.instance_id)  # type: ignore[union-attr]
                )
                self.engine.restore(slices, counters)
                self._seq = int(counters.get(SEQ_KEY, 0))
                log.info("state restored", instance=self.instance_id, slices=len(slices),
                         seq=self._seq)
        await self.source.start()
        ticker = asyncio.create_task(self._ticker(), name="driftgate-evaluator")
        try:
            while not self.stopping.is_set():
                batch = await self.source.poll(0.2)
                await self.handle(batch)
                if until_exhausted and self.source.exhausted:
                    break
        finally:
            self.stopping.set()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            await self.tick()
            await self.source.stop()
            if self.store is not None:
                if self.has_lease:
                    with contextlib.suppress(StoreUnavailableError):
                        await self.store.release_lease(self.instance_id)
                await self.store.stop()
            log.info("stopped", batches=self.batches, records=self.records)
