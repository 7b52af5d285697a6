"""The Redis ACL documented in docs/scaling.md is enough for the store, and no more.

A real redis-server gets an ACL user restricted to one key prefix and to the
command list the page gives; a RedisStore logged in as that user runs every
call the service makes (commit with the sequence check and join blobs,
restore, global read, offsets, join take-over, lease, claim). A store with
another prefix is refused.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from secrets import token_hex

import numpy as np
import pytest
import redis

from monitor.engine.redis_store import RedisStore
from monitor.engine.store import SEP, Commit, StoreRegressedError
from monitor.sandbox.local_redis import LocalRedis

pytestmark = pytest.mark.integration

PREFIX = "driftgate:prod:"
DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def documented_rule() -> list[str]:
    """The ACL SETUSER arguments in docs/scaling.md, with PREFIX and PASSWORD."""
    text = DOC.read_text()
    block = re.search(r"ACL SETUSER driftgate (.*?)\n\s*```", text, re.S)
    assert block is not None, "no ACL SETUSER block in docs/scaling.md"
    return block.group(1).split()


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[tuple[LocalRedis, str]]:
    server = LocalRedis(tmp_path / "redis", aof=False).start()
    password = token_hex(16)
    admin = redis.Redis(host="127.0.0.1", port=server.port)
    rule = [password.join(a.split("PASSWORD")) if "PASSWORD" in a else a
            for a in documented_rule()]
    setuser = admin.execute_command(  # type: ignore[no-untyped-call]  # unannotated in redis-py
        "ACL", "SETUSER", "driftgate", *rule)
    assert setuser in (b"OK", "OK", True)
    admin.close()
    try:
        yield server, password
    finally:
        server.stop()


async def test_the_documented_acl_covers_every_store_call(
        acl_redis: tuple[LocalRedis, str]) -> None:
    server, password = acl_redis
    store = RedisStore(server.url, prefix=PREFIX, username="driftgate", password=password)
    await store.start()
    try:
        key = ("m", "v1", "score", 7)
        await store.commit(Commit(
            "i1", slices={key: np.arange(3, dtype=np.int64)},
            counters={f"m{SEP}v1{SEP}predictions_total": 3.0},
            join_writes={("preds", 0): {"1.1.d": b"blob"}}, offsets={("preds", 0): 3},
            seq=1, expect_seq=0))
        await store.commit(Commit("i1", expired={key}, join_writes={("preds", 0): {"1.2.s": b"s"}},
                                  join_drops={("preds", 0): ["1.1.d"]}, seq=2, expect_seq=1))
        with pytest.raises(StoreRegressedError):
            await store.commit(Commit("i1", seq=9, expect_seq=8))
        slices, counters = await store.load_instance("i1")
        assert slices == {}
        assert counters[f"m{SEP}v1{SEP}predictions_total"] == 3.0
        assert (await store.read_global())[1][f"m{SEP}v1{SEP}predictions_total"] == 3.0
        assert await store.offsets([("preds", 0)]) == {("preds", 0): 3}
        blobs, epoch = await store.load_join([("preds", 0)])
        assert blobs == {("preds", 0): {"1.2.s": b"s"}}
        assert epoch > 0
        assert await store.acquire_lease("i1", 1000)
        await store.release_lease("i1")
        assert await store.claim("rollback:m:v2", "d1") == "d1"
        assert await store.ping()
    finally:
        await store.stop()


async def test_another_prefix_is_refused(acl_redis: tuple[LocalRedis, str]) -> None:
    from redis.exceptions import NoPermissionError

    server, password = acl_redis
    store = RedisStore(server.url, prefix="other:", username="driftgate", password=password)
    await store.start()
    try:
        with pytest.raises(NoPermissionError):
            await store.commit(Commit("i1", counters={"x": 1.0}))
    finally:
        await store.stop()
