"""Fixtures for integration tests: a real broker and real driftgate processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.ports import free_port

DRIFTGATE = str(Path(sys.executable).parent / "driftgate")
# tansu answers JoinGroup after about half the session timeout: keep it short.
GROUP_TUNING = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (tansu) on a free loopback port."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


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


@pytest.fixture
def driftgate(tmp_path: Path) -> Iterator[Any]:
    """Factory: ``driftgate(config_path)`` starts a process; all are stopped after."""
    procs: list[DriftgateProcess] = []

    def start(config: Path, port: int | None = None) -> DriftgateProcess:
        p = DriftgateProcess(config, port or free_port(), tmp_path / f"dg{len(procs)}.log")
        procs.append(p)
        return p.start()

    yield start
    for p in procs:
        p.kill()


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A real redis-server (Debian package) on a free loopback port, AOF everysec."""
    server = LocalRedis(tmp_path / "redis").start()
    yield server
    server.stop()
