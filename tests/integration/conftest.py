"""Fixtures for integration tests: a real broker, real driftgate processes and a
real Redis, each stopped after use (the helpers they use are in
:mod:`tests.integration.helpers`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from monitor.sandbox.broker import EmbeddedBroker
from monitor.sandbox.local_redis import LocalRedis
from monitor.sandbox.ports import free_port
from tests.integration.helpers import DriftgateProcess


@pytest.fixture(scope="module")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    """A real Kafka-protocol broker (tansu) on a free loopback port."""
    log = tmp_path_factory.mktemp("broker") / "broker.log"
    with EmbeddedBroker(log_path=log) as b:
        yield b


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[LocalRedis]:
    """A real redis-server (Debian package) on a free loopback port, AOF everysec."""
    server = LocalRedis(tmp_path / "redis").start()
    yield server
    server.stop()
