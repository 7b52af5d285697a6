"""RedisStore turns redis-py's WatchError for a connection lost while watching
into StoreUnavailableError (retried), not a crash or a re-sync. A real lost
connection is an integration test (test_faults.py kills redis-server); this
drives the two places redis-py raises it, with a stub client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import WatchError

from monitor.engine.redis_store import RedisStore
from monitor.engine.store import Commit, StoreRegressedError, StoreUnavailableError

LOST = "A ConnectionError occurred while watching one or more keys"


class StubPipe:
    def __init__(self, fail_on: str, message: str) -> None:
        self.fail_on, self.message = fail_on, message

    async def __aenter__(self) -> StubPipe:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def watch(self, key: str) -> None:
        if self.fail_on == "watch":
            raise WatchError(self.message)

    async def hget(self, key: str, field: str) -> bytes:
        return b"0"

    async def unwatch(self) -> None:
        return None

    def multi(self) -> None:
        return None

    def __getattr__(self, name: str) -> Any:  # queued commands: sadd, hset, ...
        return lambda *a, **kw: None

    async def execute(self) -> list[Any]:
        if self.fail_on == "execute":
            raise WatchError(self.message)
        return []


class StubClient:
    def __init__(self, fail_on: str, message: str = LOST) -> None:
        self.fail_on, self.message = fail_on, message

    def pipeline(self, transaction: bool = True) -> StubPipe:
        return StubPipe(self.fail_on, self.message)


@pytest.mark.parametrize("where", ["watch", "execute"])
def test_a_connection_lost_while_watching_is_unavailable(where: str) -> None:
    store = RedisStore(client=StubClient(where))
    with pytest.raises(StoreUnavailableError, match="while watching"):
        asyncio.run(store.commit(Commit("a", seq=1, expect_seq=0)))


def test_a_watched_key_written_by_someone_else_is_a_regression() -> None:
    store = RedisStore(client=StubClient("execute", "Watched variable changed."))
    with pytest.raises(StoreRegressedError):
        asyncio.run(store.commit(Commit("a", seq=1, expect_seq=0)))
