"""Kafka: the consumer-group source and the dead-letter producer.

What lives here: :func:`kafka_client_options` (brokers and security, for every
aiokafka client), :class:`KafkaSource` and :class:`KafkaDeadLetterSink`.

:class:`KafkaSource` is an aiokafka consumer group over the predictions and
labels topics: ``getmany()`` batches, ``enable_auto_commit=False``; offsets are
committed by the service only after a batch's effects are stored. A rebalance
listener commits processed offsets on revoke and asks an optional hook for
stored offsets on assign. A record batch that cannot be decoded (unsupported or
unknown codec, CRC mismatch, corrupt or undecompressable batch) is skipped on
its partition and reported in :attr:`SourceBatch.skipped` (see
:func:`monitor.ingest.poison.locate_undecodable`); every other fetch failure is
transient and retried.
"""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import structlog

from monitor.config import KafkaSettings
from monitor.ingest.poison import SkippedBatch, Undecodable, locate_undecodable
from monitor.ingest.records import Record
from monitor.ingest.sources import SourceBatch, SourceStatus, TopicPartition

__all__ = ["KafkaDeadLetterSink", "KafkaSource", "kafka_client_options"]

log = structlog.get_logger("driftgate.source")


def kafka_client_options(cfg: KafkaSettings) -> dict[str, Any]:
    """aiokafka keyword arguments for brokers and security."""
    opts: dict[str, Any] = {
        "bootstrap_servers": cfg.bootstrap_servers,
        "client_id": cfg.client_id,
        "security_protocol": cfg.security_protocol,
    }
    if cfg.security_protocol in ("SSL", "SASL_SSL"):
        ctx = ssl.create_default_context(
            cafile=str(cfg.ssl_cafile) if cfg.ssl_cafile else None)
        if cfg.ssl_certfile is not None:
            ctx.load_cert_chain(str(cfg.ssl_certfile),
                                str(cfg.ssl_keyfile) if cfg.ssl_keyfile else None)
        opts["ssl_context"] = ctx
    if cfg.security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = cfg.sasl_mechanism
        opts["sasl_plain_username"] = cfg.sasl_username
        opts["sasl_plain_password"] = cfg.password()
    return opts


OnAssign = Callable[[Sequence[TopicPartition]], Awaitable[dict[TopicPartition, int] | None]]
OnRevoke = Callable[[Sequence[TopicPartition]], Awaitable[None]]


class KafkaSource:
    """aiokafka consumer-group source over the predictions and labels topics.

    Parameters
    ----------
    cfg : KafkaSettings
        Brokers, topics, group and tuning.
    on_assign : async callable, optional
        Called with newly assigned partitions; may return ``{tp: offset}`` to
        seek to (a state store that keeps offsets with its counts).
    on_revoke : async callable, optional
        Called with partitions about to be revoked, before the final commit.
    """

    def __init__(self, cfg: KafkaSettings, on_assign: OnAssign | None = None,
                 on_revoke: OnRevoke | None = None) -> None:
        self.cfg = cfg
        self._on_assign = on_assign
        self._on_revoke = on_revoke
        self._consumer: Any = None
        self._processed: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._assigned: set[TopicPartition] = set()
        self._connected = False
        self._last_commit = -math.inf
        self._copartition_checked = False
        self._single_skips: dict[TopicPartition, int] = {}
        self.rebalances = 0

    @property
    def exhausted(self) -> bool:
        return False

    async def seek_to(self, offsets: dict[TopicPartition, int]) -> None:
        """Rewind every assigned partition: to ``offsets`` where given, else to
        the beginning (a re-sync after the state store lost commits)."""
        from aiokafka import TopicPartition as KafkaTP

        consumer = self._consumer
        if consumer is None:
            return
        for tp in list(consumer.assignment()):
            key = (tp.topic, tp.partition)
            if key in offsets:
                consumer.seek(tp, offsets[key])
            else:
                await consumer.seek_to_beginning(KafkaTP(tp.topic, tp.partition))
            self._processed.pop(key, None)

    def set_assign_hook(self, on_assign: OnAssign) -> None:
        """Ask ``on_assign`` where to start newly assigned partitions."""
        self._on_assign = on_assign

    def set_revoke_hook(self, on_revoke: OnRevoke) -> None:
        """Tell ``on_revoke`` about partitions about to be revoked."""
        self._on_revoke = on_revoke

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
        from aiokafka.coordinator.assignors.range import RangePartitionAssignor

        source = self

        class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
            async def on_partitions_revoked(self, revoked: Any) -> None:
                tps = [(tp.topic, tp.partition) for tp in revoked]
                if source._on_revoke is not None:
                    await source._on_revoke(tps)
                await source._commit_processed(tps)
                source._assigned -= set(tps)

            async def on_partitions_assigned(self, assigned: Any) -> None:
                source.rebalances += 1
                tps = [(tp.topic, tp.partition) for tp in assigned]
                source._assigned = set(tps)
                consumer = source._consumer
                # aiokafka starts fetching from the group's committed offsets while
                # this callback runs, and a getmany() already waiting could return
                # those records: keep the partitions paused (fetched records are
                # then discarded, positions untouched) until they are sought
                consumer.pause(*assigned)
                try:
                    if source._on_assign is not None:
                        seek = await source._on_assign(tps)
                        for tp in assigned:
                            key = (tp.topic, tp.partition)
                            if seek and key in seek:
                                consumer.seek(tp, seek[key])
                finally:
                    consumer.resume(*assigned)
                log.info("partitions assigned", partitions=sorted(tps))
                source._check_copartitioned()

        cfg = self.cfg
        self._consumer = AIOKafkaConsumer(
            **kafka_client_options(cfg),
            group_id=cfg.group_id,
            enable_auto_commit=False,
            auto_offset_reset=cfg.auto_offset_reset,
            max_poll_records=cfg.max_poll_records,
            fetch_max_wait_ms=cfg.fetch_max_wait_ms,
            max_partition_fetch_bytes=cfg.max_partition_fetch_bytes,
            fetch_max_bytes=cfg.fetch_max_bytes,
            session_timeout_ms=cfg.session_timeout_ms,
            heartbeat_interval_ms=cfg.heartbeat_interval_ms,
            metadata_max_age_ms=30_000,
            # range assignment keeps partition i of the predictions and labels
            # topics on one instance: co-partitioned (same key) events join locally
            partition_assignment_strategy=(RangePartitionAssignor,),
        )
        self._consumer.subscribe([cfg.predictions_topic, cfg.labels_topic], listener=_Listener())
        await self._consumer.start()
        self._connected = True

    def _check_copartitioned(self) -> None:
        """Warn once when the two topics' partition counts differ: a label then
        lands on another partition number than its prediction, and with several
        instances (or the Redis state) it cannot join."""
        if self._copartition_checked or self._consumer is None:
            return
        preds = self._consumer.partitions_for_topic(self.cfg.predictions_topic)
        labels = self._consumer.partitions_for_topic(self.cfg.labels_topic)
        if not preds or not labels:
            return
        self._copartition_checked = True
        if len(preds) != len(labels):
            log.warning("predictions and labels topics are not co-partitioned: the label "
                        "join needs the same partition count and key on both",
                        predictions_partitions=len(preds), labels_partitions=len(labels))

    async def stop(self) -> None:
        if self._consumer is not None:
            from aiokafka.errors import KafkaError

            try:
                await self._commit_processed(sorted(self._assigned))
            except KafkaError as exc:
                log.warning("final offset commit failed", error=str(exc))
            consumer, self._consumer = self._consumer, None
            try:
                await consumer.stop()
            finally:
                self._connected = False

    async def poll(self, timeout_s: float) -> SourceBatch:
        """One ``getmany``. A fetch failure is either an undecodable batch (skipped
        on its partition, reported in ``skipped``, the rest of the fetch kept) or
        transient (logged, retried at the next poll)."""
        from aiokafka.errors import KafkaError

        batch = SourceBatch()
        step = "offset commit"
        try:
            if self._processed != self._committed:
                await self._commit_due()
            step = "fetch"
            data = await self._consumer.getmany(timeout_ms=int(timeout_s * 1000))
            self._connected = True
        except Exception as exc:
            bad = locate_undecodable(exc, self._highwater) if step == "fetch" else None
            if bad is None:
                if not isinstance(exc, KafkaError):
                    raise
                self._connected = False
                # the processed offsets stay pending: the next poll commits them first
                log.warning(f"{step} failed; retrying", error=str(exc))
                await asyncio.sleep(min(timeout_s, 1.0))
                return batch
            self._connected = True
            assigned = self._consumer.assignment()
            data = {tp: msgs for tp, msgs in bad.kept.items() if tp in assigned}
            self._skip(bad, batch)
        pred_topic, label_topic = self.cfg.predictions_topic, self.cfg.labels_topic
        for tp, msgs in data.items():
            if not msgs:
                continue
            target = (batch.predictions if tp.topic == pred_topic else
                      batch.labels if tp.topic == label_topic else batch.unknown)
            # aiokafka's ConsumerRecord fits records.Record: no copy per record
            target.extend(msgs)
            key = (tp.topic, tp.partition)
            batch.next_offsets[key] = max(msgs[-1].offset + 1, batch.next_offsets.get(key, 0))
        return batch

    def _highwater(self, tp: Any) -> int | None:
        try:
            hw = self._consumer.highwater(tp)
        except (AssertionError, KeyError):  # not assigned (any more)
            return None
        return None if hw is None else int(hw)

    def _skip(self, bad: Undecodable, batch: SourceBatch) -> None:
        """Seek past an undecodable batch and report it (logged once per batch;
        when its bounds are unknown, once per run of single skipped offsets)."""
        consumer, tp = self._consumer, bad.tp
        key = (tp.topic, tp.partition)
        if tp not in consumer.assignment():
            return  # revoked meanwhile: its new owner meets the batch
        consumer.seek(tp, bad.end)
        last = bad.end - 1
        detail = (f"{bad.error}; offsets {bad.start}-{last} of {tp.topic}/{tp.partition} "
                  "skipped")
        if not bad.exact:
            detail += " (batch bounds unknown: skipping one offset at a time)"
        skipped = SkippedBatch(tp.topic, tp.partition, bad.start, last, bad.reason, detail)
        batch.skipped.append(skipped)
        batch.next_offsets[key] = max(bad.end, batch.next_offsets.get(key, 0))
        continued = not bad.exact and self._single_skips.get(key) == bad.start
        self._single_skips.pop(key, None)
        if not bad.exact:
            self._single_skips[key] = bad.end
        if not continued:
            log.error("undecodable record batch skipped", topic=tp.topic,
                      partition=tp.partition, first_offset=bad.start, last_offset=last,
                      reason=bad.reason, error=bad.error, bounds_known=bad.exact)
        if not bad.kept_known:
            log.warning("records fetched with the undecodable batch could not be "
                        "recovered from aiokafka; other partitions may miss some",
                        aiokafka_frames="Fetcher.fetched_records not found")

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Record offsets as processed; commit them to the group when
        ``commit_interval_ms`` has passed since the last commit (else at the next
        poll, revoke or stop after it)."""
        self._processed.update(offsets)
        await self._commit_due()

    async def _commit_due(self) -> None:
        now = time.monotonic()
        if now - self._last_commit < self.cfg.commit_interval_ms / 1000.0:
            return
        self._last_commit = now
        await self._commit_processed([tp for tp in self._processed if tp in self._assigned])

    async def _commit_processed(self, tps: Sequence[TopicPartition]) -> None:
        from aiokafka import TopicPartition as KafkaTP
        from aiokafka.structs import OffsetAndMetadata

        todo = {KafkaTP(t, p): OffsetAndMetadata(self._processed[(t, p)], "")
                for t, p in tps
                if (t, p) in self._processed and self._committed.get((t, p))
                != self._processed[(t, p)]}
        if not todo or self._consumer is None:
            return
        await self._consumer.commit(todo)
        for tp, om in todo.items():
            self._committed[(tp.topic, tp.partition)] = om.offset

    def caught_up(self, after: Mapping[TopicPartition, int]) -> set[TopicPartition]:
        """Assigned partitions with nothing more to read now: the next offset
        (``after`` a batch in hand, else the last processed or committed one) is
        at the high watermark of the latest fetch. Event time does not wait for
        them (monitor.engine)."""
        out: set[TopicPartition] = set()
        consumer = self._consumer
        if consumer is None:
            return out
        from aiokafka import TopicPartition as KafkaTP

        for t, p in self._assigned:
            ktp = KafkaTP(t, p)
            hw = consumer.highwater(ktp)
            pos = after.get((t, p))
            if pos is None:  # not in this batch: where the consumer stands
                pos = _consumer_position(consumer, ktp)
            if pos is None:
                pos = self._processed.get((t, p), self._committed.get((t, p)))
            if hw is not None and pos is not None and pos >= hw:
                out.add((t, p))
        return out

    def status(self) -> SourceStatus:
        lag: dict[TopicPartition, int] = {}
        consumer = self._consumer
        if consumer is not None:
            from aiokafka import TopicPartition as KafkaTP

            for t, p in self._assigned:
                hw = consumer.highwater(KafkaTP(t, p))
                if hw is None:
                    continue
                done = self._processed.get((t, p), self._committed.get((t, p), 0))
                lag[(t, p)] = max(int(hw) - done, 0)
        return SourceStatus(assigned=set(self._assigned), lag=lag,
                            committed=dict(self._committed), connected=self._connected)

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return dict(self._committed)


def _consumer_position(consumer: Any, tp: Any) -> int | None:
    """The consumer's position on ``tp`` (the offset of the next record it will
    return), without waiting: ``None`` while unknown (e.g. a partition still to
    be sought). ``AIOKafkaConsumer.position`` is a coroutine that waits for it;
    this reads the same assignment state that ``highwater`` reads."""
    try:
        state = consumer._subscription.subscription.assignment.state_value(tp)
        return int(state.position) if state is not None and state.has_valid_position else None
    except Exception:  # not assigned any more, or an aiokafka without this state
        return None


class KafkaDeadLetterSink:
    """Produces rejected records to the dead-letter topic, reason in headers.

    Headers added: ``driftgate-reason``, ``driftgate-detail`` (truncated to
    1 KiB), ``driftgate-source`` (``topic/partition/offset``); the original
    headers and key are kept. :meth:`flush` waits until every send is acked,
    so the service commits source offsets only after the dead letters are safe.
    """

    def __init__(self, cfg: KafkaSettings) -> None:
        self.cfg = cfg
        self._producer: Any = None
        self._futures: list[asyncio.Future[Any]] = []
        self.sent = 0

    async def start(self) -> None:
        from aiokafka import AIOKafkaProducer

        self._producer = AIOKafkaProducer(**kafka_client_options(self.cfg), acks="all",
                                          enable_idempotence=False, linger_ms=5)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            await producer.stop()

    async def send(self, record: Record, reason: str, detail: str) -> None:
        headers = [*record.headers,
                   ("driftgate-reason", reason.encode()),
                   ("driftgate-detail", detail.encode("utf-8", "replace")[:1024]),
                   ("driftgate-source",
                    f"{record.topic}/{record.partition}/{record.offset}".encode())]
        fut = await self._producer.send(self.cfg.dead_letter_topic, value=record.value or b"",
                                        key=record.key, headers=headers)
        self._futures.append(fut)

    async def flush(self) -> None:
        futures, self._futures = self._futures, []
        if futures:
            await asyncio.gather(*futures)
            self.sent += len(futures)

    async def publish(self, topic: str, value: bytes, key: bytes | None = None,
                      headers: Sequence[tuple[str, bytes]] = ()) -> None:
        """Produce one record to another topic and wait for the ack."""
        await self._producer.send_and_wait(topic, value=value, key=key, headers=list(headers))
