"""State stores: where an instance's aggregates and offsets live.

Every instance writes, per batch and in **one atomic step**, the slices its
windows changed (its own cumulative count array per model version, kind and
slice), its cumulative counters, its label-join buffer changes and the
partition offsets those effects cover. Because an instance only ever writes
its own slices, and always together with the offsets, a crash followed by a
replay from the stored offsets never counts an event twice and never skips
one; windows for evaluation are read by summing every instance's slices.

* :class:`MemoryStore` — the embedded default (one process); same contract.
* :class:`RedisStore` — several instances in one consumer group: the atomic
  step is a MULTI/EXEC transaction, the join buffer lives in Redis with a TTL
  (written and read in pipelined batches), and one evaluator at a time holds a
  lease (``SET NX PX``, renewed).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

__all__ = [
    "KINDS",
    "SEQ_KEY",
    "Commit",
    "JoinLog",
    "MemoryStore",
    "RedisStore",
    "StateStore",
    "StoreRegressedError",
    "StoreUnavailableError",
]

#: window kinds kept per version (dtype float64 for kpi_amounts, int64 otherwise)
KINDS = ("numeric", "categorical", "score", "kpi_counts", "kpi_amounts")
SliceKey = tuple[str, str, str, int]  # model, version, kind, slice id
TP = tuple[str, int]
SEP = "\x1f"


class StoreUnavailableError(RuntimeError):
    """The store could not be reached; nothing was written."""


class StoreRegressedError(RuntimeError):
    """The store's commit sequence for this instance is not the expected one
    (it lost commits, e.g. Redis restarted from an AOF missing its last second):
    nothing was written; the instance must re-sync from the store."""

    def __init__(self, stored: int, expected: int) -> None:
        super().__init__(f"stored commit sequence {stored}, expected {expected}")
        self.stored = stored
        self.expected = expected


#: counter field holding an instance's last commit sequence number
SEQ_KEY = SEP + SEP + "seq"


class JoinLog:
    """Changes to one label-join buffer since the last :meth:`drain`.

    ``puts`` maps event id to entry (arrival order); ``deletes`` maps partition
    to the ids removed there that were put in an earlier drain. A delete of an
    id put since the last drain cancels that put instead.
    """

    __slots__ = ("deletes", "puts")

    def __init__(self) -> None:
        self.puts: dict[str, tuple[Any, ...]] = {}
        self.deletes: dict[int, list[str]] = {}

    def put_many(self, entries: Mapping[str, tuple[Any, ...]]) -> None:
        self.puts.update(entries)

    def put(self, eid: str, entry: tuple[Any, ...]) -> None:
        self.puts[eid] = entry

    def delete(self, eid: str, partition: int) -> None:
        if self.puts.pop(eid, None) is None:
            self.deletes.setdefault(partition, []).append(eid)

    def drain(self) -> tuple[dict[str, tuple[Any, ...]], dict[int, list[str]]]:
        puts, deletes = self.puts, self.deletes
        self.puts, self.deletes = {}, {}
        return puts, deletes


@dataclass
class Commit:
    """One atomic write: an instance's changed state and the offsets it covers."""

    instance: str
    slices: dict[SliceKey, npt.NDArray[Any]] = field(default_factory=dict)
    expired: set[SliceKey] = field(default_factory=set)
    counters: dict[str, float] = field(default_factory=dict)
    #: label-join buffer changes per topic-partition: field -> blob to write,
    #: and fields to delete (superseded by a snapshot)
    join_writes: dict[TP, dict[str, bytes]] = field(default_factory=dict)
    join_drops: dict[TP, list[str]] = field(default_factory=dict)
    offsets: dict[TP, int] = field(default_factory=dict)
    #: the instance's commit sequence: the store must hold ``expect_seq`` (else
    #: StoreRegressedError) and holds ``seq`` afterwards; None skips the check
    seq: int | None = None
    expect_seq: int | None = None


class StateStore(Protocol):
    """The contract both stores pass (tests/unit/test_state_contract.py)."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def commit(self, c: Commit) -> None: ...

    async def offsets(self, partitions: Sequence[TP]) -> dict[TP, int]: ...

    async def load_instance(self, instance: str
                            ) -> tuple[dict[SliceKey, bytes], dict[str, float]]: ...

    async def read_global(self) -> tuple[dict[SliceKey, list[bytes]], dict[str, float]]: ...

    async def load_join(self, partitions: Sequence[TP]
                        ) -> tuple[dict[TP, dict[str, bytes]], int]: ...

    async def acquire_lease(self, holder: str, ttl_ms: int) -> bool: ...

    async def release_lease(self, holder: str) -> None: ...

    async def ping(self) -> bool: ...

    async def claim(self, key: str, value: str) -> str: ...


def pack(arr: npt.NDArray[Any]) -> bytes:
    return np.ascontiguousarray(arr).tobytes()


class MemoryStore:
    """In-process store with the same semantics as :class:`RedisStore`.

    TTLs use a monotonic clock; ``clock`` is injectable for tests.
    """

    def __init__(self, join_ttl_s: float = 3600.0, clock: Any = time.monotonic) -> None:
        self.join_ttl_s = join_ttl_s
        self.clock = clock
        self._slices: dict[str, dict[SliceKey, bytes]] = {}
        self._counters: dict[str, dict[str, float]] = {}
        self._offsets: dict[TP, int] = {}
        self._join: dict[TP, dict[str, bytes]] = {}
        self._epoch = 0
        self._lease: tuple[str, float] | None = None
        self._claims: dict[str, str] = {}
        self.commits = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def ping(self) -> bool:
        return True

    async def commit(self, c: Commit) -> None:
        ctr = self._counters.setdefault(c.instance, {})
        if c.expect_seq is not None:
            stored = int(ctr.get(SEQ_KEY, 0))
            if stored == c.seq:
                return  # this very commit was applied already
            if stored != c.expect_seq:
                raise StoreRegressedError(stored, c.expect_seq)
        if c.seq is not None:
            ctr[SEQ_KEY] = float(c.seq)
        sl = self._slices.setdefault(c.instance, {})
        for key in c.expired:
            sl.pop(key, None)
        for key, arr in c.slices.items():
            sl[key] = pack(arr)
        self._counters.setdefault(c.instance, {}).update(c.counters)
        for tp, names in c.join_drops.items():
            for name in names:
                self._join.get(tp, {}).pop(name, None)
        for tp, fields in c.join_writes.items():
            self._join.setdefault(tp, {}).update(fields)
        self._offsets.update(c.offsets)
        self.commits += 1

    async def offsets(self, partitions: Sequence[TP]) -> dict[TP, int]:
        return {tp: self._offsets[tp] for tp in partitions if tp in self._offsets}

    async def load_instance(self, instance: str
                            ) -> tuple[dict[SliceKey, bytes], dict[str, float]]:
        return dict(self._slices.get(instance, {})), dict(self._counters.get(instance, {}))

    async def read_global(self) -> tuple[dict[SliceKey, list[bytes]], dict[str, float]]:
        slices: dict[SliceKey, list[bytes]] = {}
        for per in self._slices.values():
            for key, blob in per.items():
                slices.setdefault(key, []).append(blob)
        return slices, _sum_counters(self._counters.values())

    async def load_join(self, partitions: Sequence[TP]
                        ) -> tuple[dict[TP, dict[str, bytes]], int]:
        """The stored join blobs of ``partitions``, and a clock (ms) that is
        later than every earlier answer."""
        self._epoch = max(self._epoch + 1, int(time.time() * 1000))
        return {tp: dict(self._join.get(tp, {})) for tp in partitions}, self._epoch

    async def acquire_lease(self, holder: str, ttl_ms: int) -> bool:
        now = self.clock()
        if self._lease is None or self._lease[1] <= now or self._lease[0] == holder:
            self._lease = (holder, now + ttl_ms / 1000.0)
            return True
        return False

    async def release_lease(self, holder: str) -> None:
        if self._lease is not None and self._lease[0] == holder:
            self._lease = None

    async def claim(self, key: str, value: str) -> str:
        """Set ``key`` once: returns the value that holds it (``value`` if this won)."""
        return self._claims.setdefault(key, value)


#: counter of an instance's event-time watermark (the minimum over its active
#: partitions), and until when (wall clock) that instance counts as active
WATERMARK_KEY = SEP + SEP + "watermark"
ACTIVE_UNTIL_KEY = SEP + SEP + "active_until"


def _sum_counters(per_instance: Iterable[Mapping[str, float]],
                  now: float | None = None) -> dict[str, float]:
    """Every instance's counters added up; the watermark is the minimum over the
    active instances (each one's is already the minimum over its partitions),
    so a faster instance never makes a slower one's events late; an instance
    that has not committed for its idle time stops holding the others back,
    and with none active the largest watermark stands."""
    out: dict[str, float] = {}
    active: list[float] = []
    marks: list[float] = []
    now = time.time() if now is None else now
    for counters in per_instance:
        for k, v in counters.items():
            if k == WATERMARK_KEY:
                marks.append(v)
                if counters.get(ACTIVE_UNTIL_KEY, math.inf) >= now:
                    active.append(v)
            elif k == ACTIVE_UNTIL_KEY:
                out[k] = max(out.get(k, -math.inf), v)
            else:
                out[k] = out.get(k, 0.0) + v
    if marks:
        out[WATERMARK_KEY] = min(active) if active else max(marks)
    return out


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
            pipe.hdel(skey, *[_slice_field(k) for k in c.expired])
            n += 1
        if c.slices:
            mapping = {_slice_field(k): pack(a) for k, a in c.slices.items()}
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
        return ({_parse_slice_field(k): bytes(v) for k, v in raw_s.items()},
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
                slices.setdefault(_parse_slice_field(k), []).append(bytes(v))
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


def _slice_field(key: SliceKey) -> str:
    m, v, kind, sid = key
    return SEP.join((m, v, kind, str(sid)))


def _parse_slice_field(raw: Any) -> SliceKey:
    m, v, kind, sid = _s(raw).split(SEP)
    return (m, v, kind, int(sid))


async def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll an async predicate until true (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval_s)
    return False
