"""KafkaSource's fetch-error classification: an undecodable record batch (CRC
mismatch, unknown codec, a payload that does not decompress, a garbled header)
is skipped on its partition, reported and dead-lettered, while every other
partition and every record around it flows; transient errors retry as before.

The consumer is a stub, but the draining and decoding are aiokafka's own code:
``Fetcher.fetched_records``, ``FetchResult`` and ``PartitionRecords`` run over
record batches built with aiokafka's builder and patched, so the traceback the
source reads is the real one (an aiokafka upgrade that renames those frames
fails here). The real-broker path is tests/integration/test_codecs.py.
"""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.fetcher import (
    READ_UNCOMMITTED,
    Fetcher,
    FetchResult,
    PartitionRecords,
)
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaTimeoutError,
    NotLeaderForPartitionError,
    RebalanceInProgressError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition
from prometheus_client import generate_latest
from structlog.testing import capture_logs
from structlog.typing import EventDict

from monitor.config import KafkaSettings, load_settings
from monitor.core.service import Service
from monitor.ingest.kafka import KafkaSource
from monitor.ingest.poison import SKIP_REASONS
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import encode, fit_reference, parse_metrics, sample, write_config

PRED = "predictions"
LAB = "labels"
P0, P1 = TopicPartition(PRED, 0), TopicPartition(PRED, 1)
SKIP_EVENT = "undecodable record batch skipped"


# ------------------------------------------------------------ record batches
def _crc32c(data: bytes) -> int:
    from aiokafka.record.util import calc_crc32c

    return int(calc_crc32c(data))


def batch(base: int, n: int, codec: int = 0) -> bytes:
    """A v2 record batch of ``n`` records at offsets ``base..base+n-1``, as a
    broker stores it (the base offset is the broker's)."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=codec, is_transactional=0,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i in range(n):
        b.append(i, timestamp=None, key=None, value=b"v%d" % (base + i), headers=[])
    buf = bytearray(b.build())
    struct.pack_into(">q", buf, 0, base)
    return bytes(buf)


def with_codec_flag(data: bytes, codec: int) -> bytes:
    """The codec bits of the attributes set to ``codec`` (payload unchanged), CRC
    recomputed: the CRC passes and decoding fails."""
    buf = bytearray(data)
    attrs = struct.unpack_from(">h", buf, 21)[0]
    struct.pack_into(">h", buf, 21, (attrs & ~7) | codec)
    struct.pack_into(">I", buf, 17, _crc32c(bytes(buf[21:])))
    return bytes(buf)


def with_bad_crc(data: bytes) -> bytes:
    buf = bytearray(data)
    struct.pack_into(">I", buf, 17, struct.unpack_from(">I", buf, 17)[0] ^ 0x5A5A5A5A)
    return bytes(buf)


def with_garbled_delta(data: bytes) -> bytes:
    """lastOffsetDelta garbled (so the CRC fails too): the batch's own end is
    not to be trusted."""
    buf = bytearray(data)
    struct.pack_into(">i", buf, 23, 1_700_000_000)
    return bytes(buf)


# ------------------------------------------------------------------- the stub
class Log:
    """One partition's log: (first offset, end offset, batch bytes) segments."""

    def __init__(self) -> None:
        self.segments: list[tuple[int, int, bytes]] = []

    def append(self, first: int, n: int, data: bytes) -> None:
        self.segments.append((first, first + n, data))

    @property
    def end(self) -> int:
        return self.segments[-1][1] if self.segments else 0

    def read(self, position: int) -> bytes:
        """What a fetch at ``position`` returns: the batch holding it and all after."""
        return b"".join(d for _, end, d in self.segments if end > position)


class AiokafkaStub:
    """An AIOKafkaConsumer without a broker: a "fetch" buffers, for each partition
    with nothing buffered, its log from the position on; ``getmany`` is
    aiokafka's ``Fetcher.fetched_records`` over those buffers."""

    def __init__(self, logs: dict[TopicPartition, Log], max_records: int = 5000) -> None:
        self.logs = logs
        self.max_records = max_records
        self.subs = SubscriptionState()
        self.subs.assign_from_user(set(logs))
        for tp in logs:
            self.subs.seek(tp, 0)
        self.fetcher = SimpleNamespace(_subscriptions=self.subs, _records={},
                                       _wait_consume_future=None,
                                       _notify=lambda fut: None, _closed=False)
        self.commits: list[dict[Any, Any]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []

    def position(self, tp: TopicPartition) -> int:
        return int(self.subs.subscription.assignment.state_value(tp).position)

    def assignment(self) -> set[TopicPartition]:
        return set(self.logs)

    def highwater(self, tp: TopicPartition) -> int:
        return self.logs[tp].end

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))
        self.subs.seek(tp, offset)
        self.fetcher._records.pop(tp, None)

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append(offsets)

    def _fetch(self) -> None:
        assignment = self.subs.subscription.assignment
        for tp, log in self.logs.items():
            if tp in self.fetcher._records:
                continue
            position = self.position(tp)
            data = log.read(position)
            if data:
                records = PartitionRecords(tp, MemoryRecords(data), [], position, None, None,
                                           True, READ_UNCOMMITTED)
                self.fetcher._records[tp] = FetchResult(tp, assignment=assignment,
                                                        partition_records=records, backoff=0)

    async def getmany(self, timeout_ms: int) -> dict[TopicPartition, list[Any]]:
        self._fetch()
        result: dict[TopicPartition, list[Any]] = await Fetcher.fetched_records(
            self.fetcher, (), 0, self.max_records)
        return result


def _source(stub: Any) -> KafkaSource:
    src = KafkaSource(KafkaSettings(commit_interval_ms=0, predictions_topic=PRED,
                                    labels_topic=LAB))
    src._consumer = stub
    src._assigned = {(tp.topic, tp.partition) for tp in stub.logs} if hasattr(
        stub, "logs") else {(PRED, 0)}
    return src


async def _drain(src: KafkaSource, polls: int = 6
                 ) -> tuple[list[SourceBatch], list[EventDict]]:
    """Poll like the service does (commit each batch's offsets), ``polls`` times."""
    batches: list[SourceBatch] = []
    with capture_logs() as logs:
        for _ in range(polls):
            b = await src.poll(0.01)
            batches.append(b)
            if b.next_offsets:
                await src.commit(b.next_offsets)
    return batches, logs


def _offsets(batches: list[SourceBatch], partition: int) -> list[int]:
    return [r.offset for b in batches for r in b.predictions if r.partition == partition]


# -------------------------------------------------------------------- tests
@pytest.mark.parametrize("bad_first", [False, True], ids=["good-partition-drained-first",
                                                          "bad-partition-first"])
async def test_a_crc_mismatch_skips_that_batch_only(bad_first: bool) -> None:
    p0, p1 = Log(), Log()
    p0.append(0, 3, batch(0, 3))
    p0.append(3, 3, batch(3, 3, codec=1))
    p1.append(0, 3, batch(0, 3))
    p1.append(3, 4, with_bad_crc(batch(3, 4)))
    p1.append(7, 2, batch(7, 2))
    stub = AiokafkaStub({P1: p1, P0: p0} if bad_first else {P0: p0, P1: p1})
    src = _source(stub)
    batches, logs = await _drain(src)
    # every good record once, in order; the bad batch's 4 offsets not at all
    assert _offsets(batches, 0) == [0, 1, 2, 3, 4, 5]
    assert _offsets(batches, 1) == [0, 1, 2, 7, 8]
    skipped = [s for b in batches for s in b.skipped]
    assert [(s.topic, s.partition, s.first_offset, s.last_offset, s.reason, s.offsets)
            for s in skipped] == [(PRED, 1, 3, 6, "crc_mismatch", 4)]
    assert "CorruptRecordException" in skipped[0].detail
    assert "offsets 3-6 of predictions/1 skipped" in skipped[0].detail
    first = next(b for b in batches if b.skipped)
    assert first.next_offsets[(PRED, 1)] == 7  # the skipped offsets are committed
    assert stub.seeks == [(P1, 7)]
    # logged once, with the reason; nothing was treated as transient
    assert [e["event"] for e in logs] == [SKIP_EVENT]
    assert logs[0]["reason"] == "crc_mismatch"
    assert logs[0]["log_level"] == "error"
    assert src.committed == {(PRED, 0): 6, (PRED, 1): 9}
    assert src.status().connected


@pytest.mark.parametrize(("codec", "reason"), [
    (5, "unsupported_codec"),        # no such codec id
    (7, "unsupported_codec"),
    (1, "decompression_failed"),     # gzip flag on a plain payload
    (2, "decompression_failed"),     # snappy
    (3, "decompression_failed"),     # lz4
    (4, "decompression_failed"),     # zstd
])
async def test_codec_failures_are_classified(codec: int, reason: str) -> None:
    p0, p1 = Log(), Log()
    p0.append(0, 2, batch(0, 2))
    p1.append(0, 2, batch(0, 2))
    p1.append(2, 5, with_codec_flag(batch(2, 5), codec))
    p1.append(7, 1, batch(7, 1))
    p0.append(2, 2, batch(2, 2))
    src = _source(AiokafkaStub({P0: p0, P1: p1}))
    batches, logs = await _drain(src)
    assert _offsets(batches, 0) == [0, 1, 2, 3]
    assert _offsets(batches, 1) == [0, 1, 7]
    skipped = [s for b in batches for s in b.skipped]
    assert [(s.first_offset, s.last_offset, s.reason) for s in skipped] == [(2, 6, reason)]
    assert reason in SKIP_REASONS
    assert [e["event"] for e in logs] == [SKIP_EVENT]


async def test_a_garbled_batch_end_is_capped_by_the_next_batch() -> None:
    # lastOffsetDelta says the batch runs 1.7e9 offsets on: past the high
    # watermark, so it is not believed; the batch after it in the same fetch
    # starts at 6, which bounds it
    p1 = Log()
    p1.append(0, 3, batch(0, 3))
    p1.append(3, 3, with_garbled_delta(batch(3, 3)))
    p1.append(6, 2, batch(6, 2))
    src = _source(AiokafkaStub({P1: p1}))
    batches, logs = await _drain(src)
    assert _offsets(batches, 1) == [0, 1, 2, 6, 7]
    assert [(s.first_offset, s.last_offset, s.reason) for s in
            (s for b in batches for s in b.skipped)] == [(3, 5, "crc_mismatch")]
    assert [e["event"] for e in logs] == [SKIP_EVENT]
    assert logs[0]["bounds_known"] is True


async def test_unknown_bounds_skip_one_offset_at_a_time_and_log_once() -> None:
    # the garbled batch is the last one: nothing bounds it, so offsets 3, 4 and 5
    # are skipped one per poll (each fetch meets the batch again), then a batch
    # produced later flows
    p1 = Log()
    p1.append(0, 3, batch(0, 3))
    p1.append(3, 3, with_garbled_delta(batch(3, 3)))
    stub = AiokafkaStub({P1: p1})
    src = _source(stub)
    batches, logs = await _drain(src, polls=5)
    p1.append(6, 2, batch(6, 2))
    more, more_logs = await _drain(src, polls=2)
    assert _offsets(batches + more, 1) == [0, 1, 2, 6, 7]
    skipped = [s for b in batches for s in b.skipped]
    assert [(s.first_offset, s.last_offset) for s in skipped] == [(3, 3), (4, 4), (5, 5)]
    assert all("batch bounds unknown" in s.detail for s in skipped)
    assert [e["event"] for e in logs + more_logs] == [SKIP_EVENT]
    assert logs[0]["bounds_known"] is False
    assert src.committed == {(PRED, 1): 8}


async def test_records_before_the_bad_batch_in_a_partial_drain_are_kept() -> None:
    # max_poll_records splits the fetch: the bad batch is met in a later getmany
    # that continues aiokafka's half-drained buffer
    p1 = Log()
    p1.append(0, 4, batch(0, 4))
    p1.append(4, 2, with_bad_crc(batch(4, 2)))
    p1.append(6, 1, batch(6, 1))
    src = _source(AiokafkaStub({P1: p1}, max_records=3))
    batches, _ = await _drain(src)
    assert _offsets(batches, 1) == [0, 1, 2, 3, 6]
    assert [(s.first_offset, s.last_offset) for b in batches for s in b.skipped] == [(4, 5)]


class RaisingConsumer:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc
        self.seeks: list[Any] = []

    async def getmany(self, timeout_ms: int) -> dict[Any, Any]:
        raise self.exc

    async def commit(self, offsets: dict[Any, Any]) -> None:
        return None

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))

    def highwater(self, tp: Any) -> int | None:
        return None


@pytest.mark.parametrize("exc", [
    KafkaConnectionError("broker unreachable"), KafkaTimeoutError(),
    NotLeaderForPartitionError(), RebalanceInProgressError(),
], ids=lambda e: type(e).__name__)
async def test_transient_fetch_errors_still_retry(exc: BaseException) -> None:
    stub = RaisingConsumer(exc)
    src = _source(stub)
    with capture_logs() as logs:
        batch_ = await src.poll(0.01)
    assert not batch_.skipped
    assert not batch_.next_offsets
    assert stub.seeks == []
    assert [e["event"] for e in logs] == ["fetch failed; retrying"]
    assert not src.status().connected


async def test_an_unexpected_error_outside_decoding_is_not_swallowed() -> None:
    src = _source(RaisingConsumer(RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="bug"):
        await src.poll(0.01)


# ------------------------------------------------------- the service's side
class OneBatchSource:
    def __init__(self, batch_: SourceBatch) -> None:
        self.batch = batch_
        self.committed: dict[tuple[str, int], int] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def poll(self, timeout_s: float) -> SourceBatch:
        b, self.batch = self.batch, SourceBatch()
        return b

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.committed.update(offsets)

    def status(self) -> SourceStatus:
        return SourceStatus(assigned={(PRED, 0), (PRED, 1)}, connected=True)

    @property
    def exhausted(self) -> bool:
        return True


async def test_the_service_dead_letters_counts_and_commits_a_skipped_batch(tmp_path: Path) -> None:
    settings = load_settings(write_config(tmp_path / "c.yaml", kafka={
        "predictions_topic": PRED, "labels_topic": LAB},
        reference={"fit_from_champion_events": 10}))
    p1 = Log()
    p1.append(0, 2, batch(0, 2))
    p1.append(2, 3, with_codec_flag(batch(2, 3), 6))
    src = _source(AiokafkaStub({P1: p1}))
    polled = await src.poll(0.01)
    assert len(polled.skipped) == 1
    # the two good records carry real predictions
    gen = TrafficGenerator(seed=5, canary_share=0.0)
    events = gen.generate(2, 1_700_000_000.0, 10.0).predictions
    polled.predictions = [SimpleNamespace(topic=r.topic, partition=r.partition, offset=r.offset,
                                          value=encode(e), headers=(), key=None)
                          for r, e in zip(polled.predictions, events, strict=True)]
    source = OneBatchSource(polled)
    dlq = MemoryDeadLetterSink()
    service = Service(settings, source, dlq, fit_reference(n=2000))
    await service.handle(polled)
    # only-skipped batches are handled too (nothing else in them)
    only = SourceBatch(next_offsets={(PRED, 0): 9}, skipped=[
        polled.skipped[0].__class__(PRED, 0, 5, 8, "crc_mismatch", "x")])
    await service.handle(only)
    assert source.committed == {(PRED, 1): 5, (PRED, 0): 9}
    assert [(r.topic, r.partition, r.offset, r.value, dict(r.headers)["driftgate-offsets"],
             reason) for r, reason, _ in dlq.records] == [
        (PRED, 1, 2, None, b"2-4", "unsupported_codec"),
        (PRED, 0, 5, None, b"5-8", "crc_mismatch")]
    assert "offsets 2-4 of predictions/1 skipped" in dlq.records[0][2]
    m = parse_metrics(generate_latest(service.registry).decode())
    assert sample(m, "driftgate_skipped_batches_total", topic=PRED,
                  reason="unsupported_codec") == 1
    assert sample(m, "driftgate_skipped_offsets_total", topic=PRED,
                  reason="unsupported_codec") == 3
    assert sample(m, "driftgate_skipped_offsets_total", topic=PRED, reason="crc_mismatch") == 4
    # every (topic, reason) is there from the start, at 0
    assert sample(m, "driftgate_skipped_batches_total", topic=LAB, reason="corrupt_batch") == 0
    assert sample(m, "driftgate_events_total", model="card-fraud", version="v1",
                  kind="prediction") == 2
    assert sample(m, "driftgate_dead_letter_records_total") == 2
