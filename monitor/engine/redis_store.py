"""The Redis state store: several instances in one consumer group.

:class:`RedisStore` keeps the contract of :class:`monitor.engine.store.StateStore`
(tests/integration/test_state_contract.py): the atomic step is a MULTI/EXEC
transaction guarded by the instance's commit sequence, the join buffer lives in
Redis with a TTL (written and read in pipelined batches), and one evaluator at
a time holds a lease (``SET NX PX``, renewed by a Lua script). Key and field
names are encoded by :mod:`monitor.engine.keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from monitor.engine.keys import SEQ_KEY, SliceKey, parse_slice_field, slice_field
from monitor.engine.store import (
    TP,
    Commit,
    StoreRegressedError,
    StoreUnavailableError,
    _sum_counters,
    pack,
)

__all__ = ["RedisStore"]


_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
"""
# the store's clock for join-field names: Redis TIME in ms, but always later
# than every earlier answer (two loads in the same millisecond, or a clock
# stepped back, still get increasing values), atomically
_CLOCK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if now <= last then now = last + 1 end
redis.call('SET', KEYS[1], now)
return now
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisStore:
    """Redis-backed store (redis-py asyncio).

    Keys (all under ``prefix``): ``{p}instances`` (set of instance ids),
    ``{p}s:{instance}`` (hash: slice key -> the instance's count array),
    ``{p}c:{instance}`` (hash: counter -> value), ``{p}offsets`` (hash:
    ``topic/partition`` -> next offset), ``{p}j:{topic}:{partition}`` (hash:
    the label-join buffer of one partition as blobs of changes and snapshots,
    and the ids seen there within the dedupe horizon, see
    :meth:`monitor.engine.Engine.delta`; the key's TTL is refreshed on every
    write and lets an abandoned partition's buffer go), ``{p}lease``,
    ``{p}clock`` (the last value :meth:`load_join` handed out).
    """

    def __init__(self, url: str = "redis://127.0.0.1:6379/0", prefix: str = "driftgate:",
                 join_ttl_s: float = 3600.0, password: str | None = None,
                 username: str | None = None, ssl_ca_file: str | None = None,
                 socket_timeout_s: float = 5.0, client: Any = None) -> None:
        self.url = url
        self.prefix = prefix
        self.join_ttl_ms = int(join_ttl_s * 1000)
        # entries leave the buffer by event time (the engine deletes them); the
        # key TTL only bounds the life of a partition nobody writes any more
        self.join_key_ttl_ms = 2 * self.join_ttl_ms + 3_600_000
        self._password = password
        self._username = username
        self._ssl_ca_file = ssl_ca_file
        self._timeout = socket_timeout_s
        self._client: Any = client
        self.commands = 0
        self.round_trips = 0
        self.bytes_written = 0

    async def start(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis

            kwargs: dict[str, Any] = {"socket_timeout": self._timeout,
                                      "socket_connect_timeout": self._timeout}
            if self._password is not None:
                kwargs["password"] = self._password
            if self._username is not None:
                kwargs["username"] = self._username
            if self._ssl_ca_file is not None:
                kwargs["ssl_ca_certs"] = self._ssl_ca_file
            self._client = aioredis.from_url(self.url, **kwargs)
        self._renew = self._client.register_script(_RENEW)
        self._clock = self._client.register_script(_CLOCK)
        self._release = self._client.register_script(_RELEASE)

    async def stop(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    def _k(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    async def _run(self, coro: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import ResponseError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            return await coro
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            raise StoreUnavailableError(f"redis unavailable: {exc}") from exc
        except ResponseError as exc:
            # out of memory under noeviction: wait and retry, never crash the loop
            if str(exc).startswith(("OOM", "LOADING", "MASTERDOWN", "READONLY")):
                raise StoreUnavailableError(f"redis refused the write: {exc}") from exc
            raise

    async def ping(self) -> bool:
        try:
            return bool(await self._run(self._client.ping()))
        except StoreUnavailableError:
            return False

    async def commit(self, c: Commit) -> None:
        await self._run(self._commit(c))

    async def _commit(self, c: Commit) -> None:
        from redis.exceptions import WatchError

        ckey = self._k("c", c.instance)
        async with self._client.pipeline(transaction=True) as pipe:
            if c.expect_seq is not None:
                try:
                    await pipe.watch(ckey)
                    raw = await pipe.hget(ckey, SEQ_KEY)
                except WatchError as exc:
                    # redis-py turns a connection lost while watching into a
                    # WatchError: the store is unreachable, nothing was written
                    raise StoreUnavailableError(f"redis unavailable: {exc}") from exc
                self.commands += 2
                self.round_trips += 2
                stored = int(float(raw)) if raw is not None else 0
                if stored == c.seq:
                    await pipe.unwatch()
                    return  # applied already (the reply was lost)
                if stored != c.expect_seq:
                    await pipe.unwatch()
                    raise StoreRegressedError(stored, c.expect_seq)
                pipe.multi()
            self._queue(pipe, c)
            try:
                await pipe.execute()
            except WatchError as exc:
                if _connection_lost(exc):  # see above: unreachable, nothing written
                    raise StoreUnavailableError(f"redis unavailable: {exc}") from exc
                # someone else wrote this instance's counters
                raise StoreRegressedError(-1, c.expect_seq or 0) from exc
        self.round_trips += 1

    def _queue(self, pipe: Any, c: Commit) -> None:
        n = 0
        skey = self._k("s", c.instance)
        pipe.sadd(self._k("instances"), c.instance)
        n += 1
        if c.expired:
            pipe.hdel(skey, *[slice_field(k) for k in c.expired])
            n += 1
        if c.slices:
            mapping = {slice_field(k): pack(a) for k, a in c.slices.items()}
            self.bytes_written += sum(len(v) for v in mapping.values())
            pipe.hset(skey, mapping=mapping)
            n += 1
        counters = dict(c.counters)
        if c.seq is not None:
            counters[SEQ_KEY] = float(c.seq)
        if counters:
            pipe.hset(self._k("c", c.instance), mapping={k: repr(float(v))
                                                       for k, v in counters.items()})
            n += 1
        for tp in sorted(c.join_writes.keys() | c.join_drops.keys()):
            key = self._k("j", tp[0], str(tp[1]))
            drops = c.join_drops.get(tp)
            if drops:
                pipe.hdel(key, *drops)
                n += 1
            fields = c.join_writes.get(tp)
            if fields:
                pipe.hset(key, mapping=fields)
                pipe.pexpire(key, self.join_key_ttl_ms)
                self.bytes_written += sum(len(v) for v in fields.values())
                n += 2
        if c.offsets:
            pipe.hset(self._k("offsets"), mapping={f"{t}/{p}": str(o)
                                                   for (t, p), o in c.offsets.items()})
            n += 1
        self.commands += n + 2  # MULTI and EXEC

    async def offsets(self, partitions: Sequence[TP]) -> dict[TP, int]:
        if not partitions:
            return {}
        fields = [f"{t}/{p}" for t, p in partitions]
        values = await self._run(self._client.hmget(self._k("offsets"), fields))
        self.commands += 1
        self.round_trips += 1
        return {tp: int(v) for tp, v in zip(partitions, values, strict=True) if v is not None}

    async def load_instance(self, instance: str
                            ) -> tuple[dict[SliceKey, bytes], dict[str, float]]:
        pipe = self._client.pipeline(transaction=False)
        pipe.hgetall(self._k("s", instance))
        pipe.hgetall(self._k("c", instance))
        raw_s, raw_c = await self._run(pipe.execute())
        self.commands += 2
        self.round_trips += 1
        return ({parse_slice_field(_s(k)): bytes(v) for k, v in raw_s.items()},
                {_s(k): float(v) for k, v in raw_c.items()})

    async def read_global(self) -> tuple[dict[SliceKey, list[bytes]], dict[str, float]]:
        instances = sorted(_s(x) for x in await self._run(
            self._client.smembers(self._k("instances"))))
        pipe = self._client.pipeline(transaction=False)
        for inst in instances:
            pipe.hgetall(self._k("s", inst))
            pipe.hgetall(self._k("c", inst))
        raw = await self._run(pipe.execute())
        self.commands += 1 + 2 * len(instances)
        self.round_trips += 2
        slices: dict[SliceKey, list[bytes]] = {}
        counters: list[dict[str, float]] = []
        for i in range(len(instances)):
            for k, v in raw[2 * i].items():
                slices.setdefault(parse_slice_field(_s(k)), []).append(bytes(v))
            counters.append({_s(k): float(v) for k, v in raw[2 * i + 1].items()})
        return slices, _sum_counters(counters)

    async def load_join(self, partitions: Sequence[TP]
                        ) -> tuple[dict[TP, dict[str, bytes]], int]:
        """The stored join blobs of ``partitions`` (one pipelined round trip),
        and the store's clock (one more) in ms: Redis ``TIME``, raised atomically above
        every earlier answer (``{p}clock``), so it is later than every earlier
        answer, to any instance (orders this instance's next writes after every
        stored field)."""
        clock = await self._run(self._clock(keys=[self._k("clock")]))
        pipe = self._client.pipeline(transaction=False)
        for t, p in partitions:
            pipe.hgetall(self._k("j", t, str(p)))
        raw = await self._run(pipe.execute())
        self.commands += 1 + len(partitions)
        self.round_trips += 2
        out = {tp: {_s(k): bytes(v) for k, v in fields.items()}
               for tp, fields in zip(partitions, raw, strict=True)}
        return out, int(clock)

    async def acquire_lease(self, holder: str, ttl_ms: int) -> bool:
        got = await self._run(self._renew(keys=[self._k("lease")], args=[holder, ttl_ms]))
        self.commands += 1
        return bool(got)

    async def release_lease(self, holder: str) -> None:
        await self._run(self._release(keys=[self._k("lease")], args=[holder]))

    async def claim(self, key: str, value: str) -> str:
        """``SET NX`` a marker (kept 30 days): the value that holds it wins."""
        k = self._k("claim", key)
        won = await self._run(self._client.set(k, value, nx=True, ex=30 * 86_400))
        self.commands += 1
        if won:
            return value
        held = await self._run(self._client.get(k))
        return _s(held) if held is not None else value


def _connection_lost(exc: BaseException) -> bool:
    """Whether redis-py's WatchError reports a connection lost while watching
    ("A ConnectionError occurred while watching ...") rather than a watched key
    written by someone else."""
    return "occurred while watching" in str(exc) or "occurred on while watching" in str(exc)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)
