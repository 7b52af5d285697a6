"""Helpers shared by the integration tests: ``driftgate run`` as a child process
(:class:`DriftgateProcess`), a bounded :func:`wait_until`, a producer that
waits for every ack, topics on the embedded broker, a driftgate config for it,
and reads of committed offsets, end offsets and dead letters through aiokafka
consumers. The fixtures that start servers are in ``conftest.py``."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from monitor.sandbox.broker import EmbeddedBroker
from tests.support import fit_reference, write_config

DRIFTGATE = str(Path(sys.executable).parent / "driftgate")
# tansu answers JoinGroup after about half the session timeout: keep it short.
GROUP_TUNING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


class DriftgateProcess:
    """``driftgate run --config FILE`` as a child process, with its HTTP port."""

    def __init__(self, config: Path, port: int, log: Path) -> None:
        self.config = config
        self.port = port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DriftgateProcess:
        fh = self.log.open("ab")
        self.proc = subprocess.Popen([DRIFTGATE, "run", "--config", str(self.config)],
                                     stdout=fh, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1",
                                          # the env overrides the file's http.port
                                          "DRIFTGATE_HTTP__PORT": str(self.port)})
        fh.close()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"driftgate exited early ({self.proc.returncode}):\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"driftgate did not serve /healthz:\n{self.log.read_text()[-3000:]}")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url(path), timeout=5)

    def metrics(self) -> str:
        return self.get("/metrics").text

    def terminate(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return int(self.proc.returncode)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def wait_until(predicate: Any, timeout: float, interval: float = 0.2,
               what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value (bounded)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last={last!r}")


async def produce(bootstrap: str, topic: str, values: list[bytes],
                  keys: list[bytes] | None = None,
                  headers: list[list[tuple[str, bytes]]] | None = None) -> None:
    """Produce records and wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all",
                                enable_idempotence=False, linger_ms=5,
                                max_batch_size=512 * 1024)
    await producer.start()
    try:
        futs = []
        for i, v in enumerate(values):
            futs.append(await producer.send(
                topic, v, key=keys[i] if keys else None,
                headers=headers[i] if headers else None))
        await asyncio.gather(*futs)
    finally:
        await producer.stop()


async def setup_topics(kafka: EmbeddedBroker, partitions: int) -> dict[str, str]:
    """Fresh prediction and label topics of ``partitions`` partitions and a
    one-partition dead-letter topic on ``kafka``; returns the config's topic keys
    (``predictions_topic``, ``labels_topic``, ``dead_letter_topic``,
    ``decisions_topic``; the decisions topic is named, not created)."""
    suffix = uuid.uuid4().hex[:8]
    topics = {"predictions_topic": f"preds-{suffix}", "labels_topic": f"labels-{suffix}",
              "dead_letter_topic": f"dlq-{suffix}", "decisions_topic": f"dec-{suffix}"}
    await kafka.create_topics({topics["predictions_topic"]: partitions,
                               topics["labels_topic"]: partitions,
                               topics["dead_letter_topic"]: 1})
    return topics


def service_config(tmp_path: Path, kafka: EmbeddedBroker, topics: dict[str, str], group: str,
                   port: int | None = None, **extra: Any) -> Path:
    """A config file in ``tmp_path`` for ``driftgate run`` on ``kafka`` (consumer
    ``group``, GROUP_TUNING, the reference of :func:`tests.support.fit_reference`,
    4 KiB max message); ``port`` sets http.port, ``extra`` adds sections."""
    ref = fit_reference()
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(ref.to_json())
    http = {"port": port} if port else {}
    return write_config(
        tmp_path / f"config-{group}.yaml",
        kafka={"bootstrap_servers": kafka.bootstrap_servers, "group_id": group,
               **topics, **GROUP_TUNING},
        reference={"path": str(ref_path)},
        codec={"max_message_bytes": 4096},
        http=http,
        **extra,
    )


async def committed_offsets(bootstrap: str, group: str,
                            topics: list[str]) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed, by (topic, partition); -1 where none."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group,
                                enable_auto_commit=False)
    await consumer.start()
    try:
        out: dict[tuple[str, int], int] = {}
        for t in topics:
            for p in consumer.partitions_for_topic(t) or await partitions_of(consumer, t):
                off = await consumer.committed(TopicPartition(t, p))
                out[(t, p)] = -1 if off is None else off
        return out
    finally:
        await consumer.stop()


async def partitions_of(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The partitions of ``topic`` after a forced metadata update."""
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic) or set()


async def end_offsets(bootstrap: str, topics: list[str],
                      expected_total: int) -> dict[tuple[str, int], int]:
    """Last offset + 1 per partition, found by reading every record.

    (tansu answers ListOffsets "latest" wrongly, like its offsets_for_times.)
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t in topics for p in await partitions_of(consumer, t)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = {(tp.topic, tp.partition): 0 for tp in tps}
        seen = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while seen < expected_total and loop.time() < deadline:
            for tp, msgs in (await consumer.getmany(timeout_ms=500)).items():
                seen += len(msgs)
                ends[(tp.topic, tp.partition)] = msgs[-1].offset + 1
        return ends
    finally:
        await consumer.stop()


async def read_dead_letters(bootstrap: str, topic: str, n: int) -> list[Any]:
    """The records of the dead-letter ``topic`` from its start: ``n`` or more, or
    what arrived within 30 s."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    out: list[Any] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while len(out) < n and loop.time() < deadline:
            data = await consumer.getmany(timeout_ms=500)
            for msgs in data.values():
                out.extend(msgs)
        return out
    finally:
        await consumer.stop()
