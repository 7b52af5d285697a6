"""State stores: where an instance's aggregates and offsets live.

Every instance writes, per batch and in **one atomic step**, the slices its
windows changed (its own cumulative count array per model version, kind and
slice), its cumulative counters, its label-join buffer changes and the
partition offsets those effects cover. Because an instance only ever writes
its own slices, and always together with the offsets, a crash followed by a
replay from the stored offsets never counts an event twice and never skips
one; windows for evaluation are read by summing every instance's slices.

* :class:`MemoryStore` — the embedded default (one process); same contract.
* :class:`monitor.engine.redis_store.RedisStore` — several instances in one
  consumer group: the atomic step is a MULTI/EXEC transaction, the join buffer
  lives in Redis with a TTL (written and read in pipelined batches), and one
  evaluator at a time holds a lease (``SET NX PX``, renewed).

What lives here: the :class:`StateStore` protocol, :class:`Commit` and
:class:`JoinLog`, the store errors and :class:`MemoryStore`; the key encoding
is in :mod:`monitor.engine.keys` (``SEP`` and the counter keys are re-exported
here).
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

from monitor.engine.keys import ACTIVE_UNTIL_KEY, SEP, SEQ_KEY, WATERMARK_KEY, SliceKey

__all__ = [
    "KINDS",
    "SEP",
    "SEQ_KEY",
    "Commit",
    "JoinLog",
    "MemoryStore",
    "StateStore",
    "StoreRegressedError",
    "StoreUnavailableError",
]

#: window kinds kept per version (dtype float64 for kpi_amounts, int64 otherwise)
KINDS = ("numeric", "categorical", "score", "kpi_counts", "kpi_amounts")
TP = tuple[str, int]


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


async def wait_for(predicate: Any, timeout_s: float, interval_s: float = 0.05) -> bool:
    """Poll an async predicate until true (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(interval_s)
    return False
