"""Integration tests of monitor.sandbox.broker.EmbeddedBroker against the real tansu binary.

Each test talks to a broker process it starts on a loopback port; every wait is
bounded. Producers never use idempotence or transactions (tansu does not
implement InitProducerId).
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.structs import ConsumerRecord

from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.ports import free_port
from tests.support import kcat_command

pytestmark = pytest.mark.integration

LOOPBACK = "127.0.0.1"
CONSUME_DEADLINE_S = 60.0
# tansu answers JoinGroup only after about half the session timeout (aiokafka's
# default of 10 s means ~5 s per join/rebalance); 6 s keeps it at ~3 s.
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
FIXED_LIBRDKAFKA = (2, 2, 0)


def _topic(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _producer(broker: EmbeddedBroker) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=broker.bootstrap_servers,
        acks="all",
        enable_idempotence=False,
        request_timeout_ms=30_000,
    )


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1.0):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """One broker for the module, via the synchronous context manager."""
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(host=LOOPBACK, log_path=log) as started:
        yield started
    assert started.pid is None


@pytest.fixture
async def fresh_broker() -> AsyncIterator[EmbeddedBroker]:
    """A broker of its own for tests that freeze it, via the async context manager."""
    async with EmbeddedBroker(host=LOOPBACK) as started:
        yield started
    assert started.pid is None


async def test_produce_and_consume_1000_in_group(broker: EmbeddedBroker) -> None:
    topic = _topic("roundtrip")
    group = _topic("group")
    total, partitions = 1000, 4
    await broker.create_topics({topic: partitions})

    producer = _producer(broker)
    await producer.start()
    try:
        assert await producer.partitions_for(topic) == set(range(partitions))
        futures = [
            await producer.send(
                topic,
                key=f"key-{i}".encode(),
                value=f"value-{i}".encode(),
                headers=[("seq", str(i).encode()), ("source", b"aiokafka")],
            )
            for i in range(total)
        ]
        metas = await asyncio.wait_for(asyncio.gather(*futures), timeout=30)
    finally:
        await producer.stop()
    produced_partition = {i: m.partition for i, m in enumerate(metas)}
    produced_per_partition = Counter(produced_partition.values())
    assert sum(produced_per_partition.values()) == total
    assert set(produced_per_partition) == set(range(partitions))

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        **GROUP_TUNING,
    )
    t0 = time.monotonic()
    await asyncio.wait_for(consumer.start(), timeout=30)
    records: list[ConsumerRecord[bytes, bytes]] = []
    first_batch_s: float | None = None
    try:
        deadline = t0 + CONSUME_DEADLINE_S
        while len(records) < total and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=300)
            for tp_records in batch.values():
                records.extend(tp_records)
            if batch and first_batch_s is None:
                first_batch_s = time.monotonic() - t0
        print(f"first records {first_batch_s}s after consumer start")
        assert consumer.assignment() == {TopicPartition(topic, p) for p in range(partitions)}
        # No more records than produced.
        extra = await consumer.getmany(timeout_ms=500)
        assert sum(len(v) for v in extra.values()) == 0
        await consumer.commit()
        committed = {
            p: await consumer.committed(TopicPartition(topic, p)) for p in range(partitions)
        }
    finally:
        await consumer.stop()

    assert len(records) == total
    seqs = [int(dict(r.headers)["seq"]) for r in records]
    assert sorted(seqs) == list(range(total))
    consumed_per_partition = Counter(r.partition for r in records)
    assert consumed_per_partition == produced_per_partition
    assert sum(consumed_per_partition.values()) == total
    for r in records:
        i = int(dict(r.headers)["seq"])
        assert r.key == f"key-{i}".encode()
        assert r.value == f"value-{i}".encode()
        assert list(r.headers) == [("seq", str(i).encode()), ("source", b"aiokafka")]
        assert r.partition == produced_partition[i]
        assert r.offset == metas[i].offset
    # Per partition: offsets contiguous from 0, producer order preserved.
    for p in range(partitions):
        in_p = [r for r in records if r.partition == p]
        assert [r.offset for r in in_p] == list(range(len(in_p)))
        p_seqs = [int(dict(r.headers)["seq"]) for r in in_p]
        assert p_seqs == sorted(p_seqs)
        assert committed[p] == produced_per_partition[p]

    # The commit is stored broker-side: a fresh client of the group (manual
    # assignment, so no JoinGroup; a new *member* would wait ~11 s on tansu for
    # the departed one to expire) reads it back and resumes there.
    again = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(again.start(), timeout=30)
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        again.assign(tps)
        for tp in tps:
            assert await again.committed(tp) == produced_per_partition[tp.partition]
            assert await again.position(tp) == produced_per_partition[tp.partition]
        leftover = await again.getmany(timeout_ms=1000)
        assert sum(len(v) for v in leftover.values()) == 0
    finally:
        await again.stop()


async def test_kcat_producer_to_aiokafka_consumer(broker: EmbeddedBroker, tmp_path: Path) -> None:
    topic = _topic("kcat")
    total, partitions = 200, 3
    run_id = uuid.uuid4().hex
    await broker.create_topics({topic: partitions})
    lines = "".join(f"k{i}:msg-{i}\n" for i in range(total))
    kcat, env = kcat_command(tmp_path)
    argv = [kcat, "-P", "-b", broker.bootstrap_servers, "-t", topic, "-K", ":"]
    argv += ["-H", "source=kcat", "-H", f"run={run_id}"]
    argv += ["-X", "acks=all", "-X", "enable.idempotence=false"]
    result = await asyncio.to_thread(
        subprocess.run,
        argv,
        input=lines.encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env=env,
    )
    stderr = result.stderr.decode(errors="replace")
    assert result.returncode == 0, stderr

    consumer = AIOKafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    await asyncio.wait_for(consumer.start(), timeout=30)
    records: list[ConsumerRecord[bytes, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + CONSUME_DEADLINE_S
        while len(records) < total and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for tp_records in batch.values():
                records.extend(tp_records)
        extra = await consumer.getmany(timeout_ms=500)
        assert sum(len(v) for v in extra.values()) == 0
    finally:
        await consumer.stop()

    assert len(records) == total
    by_index = {int(r.key.decode()[1:]): r for r in records}
    assert sorted(by_index) == list(range(total))
    for i, r in by_index.items():
        assert r.value == f"msg-{i}".encode()
        assert list(r.headers) == [("source", b"kcat"), ("run", run_id.encode())]
        assert r.timestamp > 0
    for p in range(partitions):
        idx = [int(r.key.decode()[1:]) for r in records if r.partition == p]
        assert idx == sorted(idx)  # kcat's input order survives within a partition


def test_stop_leaves_no_process_and_frees_port() -> None:
    broker = EmbeddedBroker(host=LOOPBACK)
    broker.stop()  # stop before start is a no-op
    broker.start()
    try:
        pid, port = broker.pid, broker.port
        assert pid is not None
        assert os.getpgid(pid) == pid  # own process group
        assert _port_accepts(port)
    finally:
        broker.stop()
    broker.stop()  # idempotent

    assert broker.pid is None
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not _port_accepts(port)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((LOOPBACK, port))
        sock.listen()
    # And a new broker can take over exactly that port.
    with EmbeddedBroker(host=LOOPBACK, port=port, startup_timeout_s=10) as again:
        assert again.bootstrap_servers == f"{LOOPBACK}:{port}"
    assert not _port_accepts(port)


async def test_pause_resume_then_send_succeeds(fresh_broker: EmbeddedBroker) -> None:
    topic = _topic("pause")
    await fresh_broker.create_topics({topic: 1})
    producer = _producer(fresh_broker)
    await producer.start()
    try:
        first = await asyncio.wait_for(producer.send_and_wait(topic, b"before"), timeout=30)
        fresh_broker.pause()
        try:
            assert fresh_broker.paused
            pending = asyncio.ensure_future(producer.send_and_wait(topic, b"during"))
            await asyncio.sleep(2.0)
            assert not pending.done()  # a frozen broker acknowledges nothing
        finally:
            fresh_broker.resume()
        assert not fresh_broker.paused
        during = await asyncio.wait_for(pending, timeout=30)
        after = await asyncio.wait_for(producer.send_and_wait(topic, b"after"), timeout=30)
    finally:
        await producer.stop()
    assert [first.offset, during.offset, after.offset] == [0, 1, 2]


def test_missing_binary_raises_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALF_TANSU_BIN", "/nonexistent/tansu")
    with pytest.raises(RuntimeError, match="binary not found"):
        EmbeddedBroker().start()


def test_port_in_use_raises_with_log_tail(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind((LOOPBACK, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        broker = EmbeddedBroker(
            host=LOOPBACK, port=port, startup_timeout_s=5, log_path=tmp_path / "b.log"
        )
        with pytest.raises(RuntimeError, match="failed to start") as info:
            broker.start()
    assert "broker log tail" in str(info.value)
    assert "Address in use" in str(info.value)  # tansu's own log lines are included
    assert "\x1b[" not in str(info.value)  # without terminal colour codes
    assert broker.pid is None


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"host": ""}, "''"),
        ({"host": "::1"}, "'::1'"),
        ({"port": 0}, "0"),
        ({"port": 70000}, "70000"),
        ({"port": True}, "True"),
        ({"startup_timeout_s": 0}, "0"),
        ({"startup_timeout_s": float("nan")}, "nan"),
        ({"log_path": "x.log"}, "'x.log'"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], bad: str) -> None:
    with pytest.raises(ValueError, match=f"got {re.escape(bad)}$"):
        EmbeddedBroker(**kwargs)  # type: ignore[arg-type]


async def test_create_topics_validation_and_duplicates(broker: EmbeddedBroker) -> None:
    topic = _topic("dup")
    with pytest.raises(ValueError, match="must be an int >= 1, got 0"):
        await broker.create_topics({topic: 0})
    await broker.create_topics({topic: 6})
    with pytest.raises(RuntimeError, match="already exists"):
        await broker.create_topics({topic: 6})


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as sock:
        sock.bind((LOOPBACK, port))  # free a moment ago; a race here is very unlikely
