"""Every Kafka codec is consumed, and an undecodable batch poisons nothing.

On the embedded broker (tansu), with a real `driftgate run`:

* each codec (none, gzip, snappy, lz4, zstd) is produced by a librdkafka
  producer (confluent-kafka) and by an aiokafka producer; a raw fetch checks
  that the broker holds batches of each codec, and every event is counted
  exactly once (the offline oracle), nothing dead-lettered;
* undecodable record batches are written into one partition with a raw
  ProduceRequest (aiokafka's record builder, bytes patched): a batch whose CRC
  does not match (tansu stores it as given) and batches whose codec flag says
  gzip or zstd over a plain payload (CRC recomputed, so only decompression
  fails). tansu refuses codec ids 5..7 at produce time (error -1), so an
  unknown codec cannot reach a consumer through it: that case is covered by
  tests/unit/test_kafka_source_poison.py. The bad batches are skipped, counted
  by reason, dead-lettered with their offset range and logged once; the other
  partitions and the records around the bad batches are counted exactly, and
  the committed offsets end at the end of every partition.
"""

from __future__ import annotations

import asyncio
import json
import struct
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.record.util import calc_crc32c

from monitor.sandbox.broker import EmbeddedBroker
from tests.integration.helpers import (
    committed_offsets,
    read_dead_letters,
    service_config,
    setup_topics,
    wait_until,
)
from tests.support import (
    MODEL,
    all_consumed,
    assert_exact_metrics,
    e2e_stream,
    encode,
    group_id_of,
    parse_metrics,
    produce_aiokafka,
    produce_librdkafka,
    sample,
)

pytestmark = pytest.mark.integration

CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CODEC_IDS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}
SKIP_EVENT = "undecodable record batch skipped"


# ------------------------------------------------------- raw batches on the wire
def record_batch(values: list[bytes]) -> bytes:
    """A plain (uncompressed) v2 record batch built by aiokafka's builder."""
    b = DefaultRecordBatchBuilder(magic=2, compression_type=0, is_transactional=0,
                                  producer_id=-1, producer_epoch=-1, base_sequence=-1,
                                  batch_size=1 << 20)
    for i, v in enumerate(values):
        assert b.append(i, timestamp=None, key=None, value=v, headers=[]) is not None
    return bytes(b.build())


def with_bad_crc(data: bytes) -> bytes:
    buf = bytearray(data)
    struct.pack_into(">I", buf, 17, struct.unpack_from(">I", buf, 17)[0] ^ 0x5A5A5A5A)
    return bytes(buf)


def with_codec_flag(data: bytes, codec: int) -> bytes:
    """The attributes' codec bits set over the unchanged plain payload; CRC
    recomputed, so the batch passes the CRC check and fails to decompress."""
    buf = bytearray(data)
    attrs = struct.unpack_from(">h", buf, 21)[0]
    struct.pack_into(">h", buf, 21, (attrs & ~7) | codec)
    struct.pack_into(">I", buf, 17, calc_crc32c(bytes(buf[21:])))
    return bytes(buf)


async def produce_raw(bootstrap: str, topic: str, partition: int, data: bytes) -> int:
    """One record batch as given, in a ProduceRequest; returns its base offset."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(TopicPartition(topic, partition))
        resp = await client.send(node, ProduceRequest(
            required_acks=-1, timeout=10_000, topics=[(topic, [(partition, data)])],
            transactional_id=None))
        (_, parts), = resp.topics
        (_, error_code, base_offset, *_), = parts
        assert error_code == 0, f"the broker refused the raw batch (error {error_code})"
        return int(base_offset)
    finally:
        await client.close()


async def stored_batches(bootstrap: str, topic: str, partitions: int
                         ) -> list[tuple[int, int, int, int]]:
    """(partition, base offset, end offset, codec id) of every stored batch, read
    with raw Fetch requests (no decoding, so bad batches are listed too)."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    out: list[tuple[int, int, int, int]] = []
    try:
        await client.force_metadata_update()
        for p in range(partitions):
            node = client.cluster.leader_for_partition(TopicPartition(topic, p))
            offset = 0
            while True:
                resp = await client.send(node, FetchRequest(
                    100, 1, 16 << 20, 0, [(topic, [(p, offset, 8 << 20)])]))
                (_, parts), = resp.topics
                (_, error_code, highwater, *part_data), = parts
                assert error_code == 0, error_code
                records = MemoryRecords(part_data[-1])
                got = False
                while records.has_next():
                    b = records.next_batch()
                    if b is None:
                        break
                    if b.next_offset > offset:
                        out.append((p, b.base_offset, b.next_offset, b.compression_type))
                        offset = b.next_offset
                        got = True
                if not got or offset >= highwater:
                    break
    finally:
        await client.close()
    return out


def _ends(batches: list[tuple[int, int, int, int]], topic: str) -> dict[tuple[str, int], int]:
    ends: dict[tuple[str, int], int] = {}
    for p, _, end, _ in batches:
        ends[(topic, p)] = max(ends.get((topic, p), 0), end)
    return ends


def _settled(dg: Any, n_preds: int) -> dict[str, Any]:
    """/metrics once every prediction is in the windows too: a partition read
    ahead of another has its slices held until the watermark (the minimum over
    partitions) catches up."""
    def check() -> dict[str, Any] | None:
        m = parse_metrics(dg.metrics())
        return m if sum(m.get("driftgate_window_events", {}).values()) >= n_preds else None

    result: dict[str, Any] = wait_until(check, timeout=60, what="windows settled")
    return result


# ---------------------------------------------------------------------- tests
def test_every_codec_from_librdkafka_and_aiokafka_is_counted_exactly(
        kafka: EmbeddedBroker, driftgate: Any, tmp_path: Path) -> None:
    parts = 2
    topics = asyncio.run(setup_topics(kafka, parts))
    preds, labels = e2e_stream(seed=21)
    partition_of = {p["event_id"]: i % parts for i, p in enumerate(preds)}
    runs = [(client, codec) for client in ("librdkafka", "aiokafka") for codec in CODECS]
    per_codec: Counter[int] = Counter()
    for name, events in (("predictions_topic", preds), ("labels_topic", labels)):
        topic = topics[name]
        for k, (client, codec) in enumerate(runs):
            chunk = events[k::len(runs)]
            values = [encode(e) for e in chunk]
            where = [partition_of[e["event_id"]] for e in chunk]
            if client == "librdkafka":
                produce_librdkafka(kafka.bootstrap_servers, topic, codec, values, where)
            else:
                asyncio.run(produce_aiokafka(kafka.bootstrap_servers, topic,
                                             None if codec == "none" else codec, values,
                                             where))
            if name == "predictions_topic":
                per_codec[CODEC_IDS[codec]] += len(chunk)
    # the broker holds batches of every codec, as many records in each as produced
    stored = asyncio.run(stored_batches(kafka.bootstrap_servers,
                                        topics["predictions_topic"], parts))
    held: Counter[int] = Counter()
    for _, base, end, codec_id in stored:
        held[codec_id] += end - base
    assert held == per_codec, (held, per_codec)
    assert set(held) == set(CODEC_IDS.values())

    cfg = service_config(tmp_path, kafka, topics, group=f"codec-{uuid.uuid4().hex[:6]}")
    dg = driftgate(cfg)
    wait_until(lambda: all_consumed(dg, len(preds), len(labels)), timeout=90,
               what="every codec consumed")
    metrics = _settled(dg, len(preds))
    assert_exact_metrics(metrics, preds, labels)
    assert not any(metrics.get("driftgate_invalid_events_total", {}).values())
    assert not any(metrics.get("driftgate_skipped_batches_total", {}).values())
    assert sample(metrics, "driftgate_dead_letter_records_total") == 0
    assert dg.terminate() == 0
    log = dg.log.read_text()
    assert "Traceback" not in log
    assert "retrying" not in log


def _poison_values(tag: str, n: int) -> list[bytes]:
    """Valid predictions: were the batch decoded, they would be counted."""
    return [encode({"event_id": f"poison-{tag}-{i}", "model": MODEL, "model_version": "v1",
                    "ts": 1_700_000_000.0, "score": 0.5, "decision": 0,
                    "features": {}}) for i in range(n)]


def _skip_lines(dg: Any) -> list[dict[str, Any]]:
    out = []
    for line in dg.log.read_text().splitlines():
        if SKIP_EVENT in line:
            out.append(json.loads(line))
    return out


def test_an_undecodable_batch_skips_itself_and_nothing_else(
        kafka: EmbeddedBroker, driftgate: Any, tmp_path: Path) -> None:
    parts, bad_part = 3, 1
    topics = asyncio.run(setup_topics(kafka, parts))
    pred_topic = topics["predictions_topic"]
    preds, labels = e2e_stream(seed=22)
    where = {p["event_id"]: i % parts for i, p in enumerate(preds)}
    bootstrap = kafka.bootstrap_servers

    def send(events: list[dict[str, Any]], topic: str) -> None:
        asyncio.run(produce_aiokafka(bootstrap, topic, "lz4", [encode(e) for e in events],
                                     [where[e["event_id"]] for e in events]))

    def send_bad(data: bytes) -> tuple[int, int]:
        n = MemoryRecords(data).next_batch()
        count = n.next_offset - n.base_offset
        base = asyncio.run(produce_raw(bootstrap, pred_topic, bad_part, data))
        return base, base + count - 1

    # a backlog: good records, two undecodable batches on partition 1, good records
    send(preds[:2000], pred_topic)
    bad = {
        "crc_mismatch": [send_bad(with_bad_crc(record_batch(_poison_values("crc", 7))))],
        "decompression_failed": [send_bad(with_codec_flag(
            record_batch(_poison_values("gzip", 5)), 1))],
    }
    send(preds[2000:4000], pred_topic)
    cfg = service_config(tmp_path, kafka, topics, group=f"poison-{uuid.uuid4().hex[:6]}")
    dg = driftgate(cfg)

    def predictions_counted() -> float:
        m = parse_metrics(dg.metrics())
        return sum(v for k, v in m.get("driftgate_events_total", {}).items()
                   if ("kind", "prediction") in k)

    wait_until(lambda: predictions_counted() >= 4000, timeout=90,
               what="the backlog around the bad batches consumed")
    assert predictions_counted() == 4000
    # live: another bad batch (zstd flag over a plain payload) between good records
    send(preds[4000:5000], pred_topic)
    bad["decompression_failed"].append(send_bad(with_codec_flag(
        record_batch(_poison_values("zstd", 3)), 4)))
    send(preds[5000:], pred_topic)
    send(labels, topics["labels_topic"])
    wait_until(lambda: all_consumed(dg, len(preds), len(labels)), timeout=90,
               what="everything after the bad batches consumed")
    metrics = _settled(dg, len(preds))
    assert_exact_metrics(metrics, preds, labels)  # no poison record counted, no good one lost
    assert not any(metrics.get("driftgate_invalid_events_total", {}).values())
    for reason, ranges in bad.items():
        assert sample(metrics, "driftgate_skipped_batches_total", topic=pred_topic,
                      reason=reason) == len(ranges), reason
        assert sample(metrics, "driftgate_skipped_offsets_total", topic=pred_topic,
                      reason=reason) == sum(b - a + 1 for a, b in ranges), reason
    assert sample(metrics, "driftgate_skipped_batches_total", topic=pred_topic,
                  reason="unsupported_codec") == 0
    assert sample(metrics, "driftgate_dead_letter_records_total") == 3
    assert dg.get("/readyz").status_code == 200
    # dead-lettered with what can be recovered: where, which offsets, why
    dlq = asyncio.run(read_dead_letters(bootstrap, topics["dead_letter_topic"], 3))
    got = sorted((dict(m.headers)["driftgate-reason"].decode(),
                  dict(m.headers)["driftgate-offsets"].decode(),
                  dict(m.headers)["driftgate-source"].decode()) for m in dlq)
    want = sorted((reason, f"{a}-{b}", f"{pred_topic}/{bad_part}/{a}")
                  for reason, ranges in bad.items() for a, b in ranges)
    assert got == want
    assert all(m.value in (b"", None) for m in dlq)
    assert all(f"offsets {a}-{b} of {pred_topic}/{bad_part} skipped".encode()
               in dict(m.headers)["driftgate-detail"] for m in dlq
               for a, b in [map(int, dict(m.headers)["driftgate-offsets"].split(b"-"))])
    # logged once per bad batch, with the reason
    lines = _skip_lines(dg)
    assert sorted((x["reason"], x["first_offset"], x["last_offset"]) for x in lines) == \
        sorted((reason, a, b) for reason, ranges in bad.items() for a, b in ranges)
    assert "fetch failed; retrying" not in dg.log.read_text()
    # SIGTERM: committed offsets are the ends of every partition, bad batches included
    assert dg.terminate() == 0
    ends = {**_ends(asyncio.run(stored_batches(bootstrap, pred_topic, parts)), pred_topic),
            **_ends(asyncio.run(stored_batches(bootstrap, topics["labels_topic"], parts)),
                    topics["labels_topic"])}
    committed = asyncio.run(committed_offsets(bootstrap, group_id_of(cfg),
                                              [pred_topic, topics["labels_topic"]]))
    assert committed == ends
    assert "Traceback" not in dg.log.read_text()
