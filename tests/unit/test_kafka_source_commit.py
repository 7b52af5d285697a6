"""KafkaSource's deferred offset commit: a failure is reported as a commit
failure (not a fetch failure), skips that poll's fetch and is retried first at
the next poll. The consumer is a stub: the real-broker paths are integration
tests (tests/integration/test_faults*.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka.errors import KafkaConnectionError
from structlog.testing import capture_logs

from monitor.config import KafkaSettings
from monitor.ingest.kafka import KafkaSource


class StubConsumer:
    def __init__(self) -> None:
        self.fail_commit = True
        self.fail_fetch = False
        self.commits: list[dict[Any, Any]] = []
        self.fetches = 0

    async def commit(self, offsets: dict[Any, Any]) -> None:
        if self.fail_commit:
            raise KafkaConnectionError("coordinator unreachable")
        self.commits.append(offsets)

    async def getmany(self, timeout_ms: int) -> dict[Any, Any]:
        self.fetches += 1
        if self.fail_fetch:
            raise KafkaConnectionError("broker unreachable")
        return {}


def _source(stub: StubConsumer) -> KafkaSource:
    src = KafkaSource(KafkaSettings(commit_interval_ms=0))
    src._consumer = stub
    src._assigned = {("predictions", 0)}
    src._processed = {("predictions", 0): 10}
    return src


def test_a_failed_commit_is_named_and_retried_before_the_next_fetch() -> None:
    stub = StubConsumer()
    src = _source(stub)
    with capture_logs() as logs:
        batch = asyncio.run(src.poll(0.01))
    assert not batch.predictions
    assert [e["event"] for e in logs] == ["offset commit failed; retrying"]
    assert "coordinator unreachable" in logs[0]["error"]
    assert stub.fetches == 0
    assert src.committed == {}
    stub.fail_commit = False
    asyncio.run(src.poll(0.01))
    assert src.committed == {("predictions", 0): 10}
    assert stub.fetches == 1
    assert len(stub.commits) == 1


def test_a_failed_fetch_is_named_as_such() -> None:
    stub = StubConsumer()
    stub.fail_commit = False
    stub.fail_fetch = True
    src = _source(stub)
    with capture_logs() as logs:
        asyncio.run(src.poll(0.01))
    assert [e["event"] for e in logs] == ["fetch failed; retrying"]
    assert src.committed == {("predictions", 0): 10}


class _State:
    def __init__(self, position: int | None) -> None:
        self.has_valid_position = position is not None
        self.position = position


class _Assignment:
    def __init__(self, positions: dict[Any, int | None]) -> None:
        self.positions = positions

    def state_value(self, tp: Any) -> _State:
        return _State(self.positions[(tp.topic, tp.partition)])


class PositionConsumer:
    """Highwater and position as aiokafka keeps them per assigned partition."""

    def __init__(self, highwater: dict[Any, int | None], positions: dict[Any, int | None]
                 ) -> None:
        self._highwater = highwater

        class _Sub:
            pass

        self._subscription = _Sub()
        self._subscription.subscription = _Sub()  # type: ignore[attr-defined]
        self._subscription.subscription.assignment = _Assignment(positions)  # type: ignore[attr-defined]

    def highwater(self, tp: Any) -> int | None:
        return self._highwater[(tp.topic, tp.partition)]


def test_caught_up_partitions_are_those_at_their_high_watermark() -> None:
    p = "predictions"
    src = KafkaSource(KafkaSettings())
    src._assigned = {(p, 0), (p, 1), (p, 2), (p, 3), (p, 4)}
    src._consumer = PositionConsumer(
        # 0: read to the end; 1: records waiting; 2: nothing fetched yet;
        # 3: position not known yet (being sought); 4: an empty partition
        {(p, 0): 100, (p, 1): 100, (p, 2): None, (p, 3): 50, (p, 4): 0},
        {(p, 0): 100, (p, 1): 60, (p, 2): 0, (p, 3): None, (p, 4): 0})
    assert src.caught_up({}) == {(p, 0), (p, 4)}
    # the batch in hand takes partition 1 to its end
    assert src.caught_up({(p, 1): 100}) == {(p, 0), (p, 1), (p, 4)}
    # position unknown: what was processed decides
    src._processed = {(p, 3): 50}
    assert (p, 3) in src.caught_up({})
