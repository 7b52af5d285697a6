"""The timing harness of the broker benchmarks (bench_ingest, bench_scale).

What they share around a :class:`monitor.core.service.Service` run over the
embedded broker: :class:`ServiceClock`, the Service's ``stage_timer`` hook
(stage seconds, per-batch ``handle()`` times and sizes, evaluator ticks);
:class:`MeteredKafkaSource`, a KafkaSource that remembers the batch it handed
out; peak memory per phase (:class:`Phase`), CPython GC time (:class:`GcTimer`),
producing the workload (:func:`produce`), fresh consumer groups and the
cProfile summary (:func:`profile_summary`).
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import math
import pstats
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from monitor.ingest.kafka import KafkaSource
from monitor.ingest.sources import SourceBatch

__all__ = ["GcTimer", "MeteredKafkaSource", "Phase", "ServiceClock", "group_name",
           "produce", "profile_summary", "short_path", "vm_rss_kib"]

PROJECT_ROOT = str(Path(__file__).resolve().parents[1])
PROFILE_TOP = 15
EPOLL_WAIT = "'poll' of 'select."


# --------------------------------------------------------------------------- service


class MeteredKafkaSource(KafkaSource):
    """A KafkaSource that remembers the size of the batch it handed out last.

    ``polled`` is (records, predictions) of the last poll, which the Service
    handles next; ``cpu_first`` is this process's CPU time when the first
    non-empty batch came.
    """

    polled: tuple[int, int] = (0, 0)
    cpu_first: float = math.nan

    async def poll(self, timeout_s: float) -> SourceBatch:
        batch = await super().poll(timeout_s)
        size = len(batch)
        self.polled = (size, len(batch.predictions))
        if size and math.isnan(self.cpu_first):
            self.cpu_first = time.process_time()
        return batch


class ServiceClock:
    """A Service's ``stage_timer`` hook: where one run's time went.

    ``slots`` maps the hook's stages (``decode``, ``engine``, ``delta``,
    ``store``, ``commit``) to the names of :attr:`stage_s` (the JSON fields of
    ``handle_breakdown_s``); stages not in it are not summed. Every non-empty
    batch's ``handle()`` time goes to :attr:`handle_s` with its size (from the
    source), then ``on_batch`` is called; evaluator ticks go to :attr:`tick_s`.
    """

    def __init__(self, source: MeteredKafkaSource, slots: Mapping[str, str],
                 on_batch: Callable[[], None] | None = None) -> None:
        self.source = source
        self.slots = dict(slots)
        self.on_batch = on_batch
        self.stage_s: dict[str, float] = dict.fromkeys(self.slots.values(), 0.0)
        self.handle_s: list[float] = []
        self.batch_sizes: list[int] = []
        self.batch_predictions: list[int] = []
        self.tick_s: list[float] = []
        self.t_first = math.nan  # when the first non-empty batch's handle() began
        self.t_last = math.nan  # when the last one's ended
        self.t_run = math.nan  # set by the caller when it starts Service.run()

    def __call__(self, stage: str, seconds: float) -> None:
        if stage == "handle":
            size, predictions = self.source.polled
            if not size:
                return
            now = time.perf_counter()
            if not self.handle_s:
                self.t_first = now - seconds
            self.handle_s.append(seconds)
            self.batch_sizes.append(size)
            self.batch_predictions.append(predictions)
            self.t_last = now
            if self.on_batch is not None:
                self.on_batch()
        elif stage == "tick":
            self.tick_s.append(seconds)
        else:
            slot = self.slots.get(stage)
            if slot is not None:
                self.stage_s[slot] += seconds

    def breakdown(self) -> dict[str, float]:
        """:attr:`stage_s` plus ``other``: the rest of the ``handle()`` time."""
        busy = sum(self.handle_s)
        return {**self.stage_s, "other": busy - sum(self.stage_s.values())}


# --------------------------------------------------------------------------- memory, GC


def _status_kib(field: str, pid: int | str = "self") -> int | None:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def vm_rss_kib(pid: int | str = "self") -> int | None:
    """A process's resident set (``VmRSS``) in KiB."""
    return _status_kib("VmRSS:", pid)


def _reset_hwm() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux ``clear_refs`` 5); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


class Phase:
    """Peak RSS of one phase: VmHWM reset at the start, read at the end."""

    def __init__(self) -> None:
        self.reset = _reset_hwm()
        self.rss_start_kib = vm_rss_kib()

    def memory(self) -> dict[str, Any]:
        hwm = _status_kib("VmHWM:") if self.reset else None
        return {"vm_hwm_mib": None if hwm is None else hwm / 1024.0,
                "rss_at_start_mib": None if self.rss_start_kib is None
                else self.rss_start_kib / 1024.0}


class GcTimer:
    """Wall time spent in CPython's cyclic GC while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = [0.0, 0.0, 0.0]
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            gen = int(info.get("generation", 0))
            self.seconds[gen] += time.perf_counter() - self._t0
            self.collections[gen] += 1

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)

    def report(self) -> dict[str, Any]:
        return {"total_s": sum(self.seconds), "seconds_by_generation": self.seconds,
                "collections_by_generation": self.collections}


# --------------------------------------------------------------------------- broker


def group_name(prefix: str) -> str:
    """A fresh consumer group name."""
    return f"bench-{prefix}-{uuid.uuid4().hex[:8]}"


async def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes],
                  partitions: list[int], compression: str | None = None) -> int:
    """Produce with explicit partitions and wait for every ack; returns acked records."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, enable_idempotence=False,
                                linger_ms=20, max_batch_size=512 * 1024,
                                max_request_size=8 * 1024 * 1024,
                                compression_type=compression)
    await asyncio.wait_for(producer.start(), timeout=30)
    acked = 0
    try:
        futs: list[asyncio.Future[Any]] = []
        for v, k, p in zip(values, keys, partitions, strict=True):
            futs.append(await producer.send(topic, v, key=k, partition=p))
            if len(futs) >= 20_000:
                acked += len(await asyncio.gather(*futs))
                futs = []
        acked += len(await asyncio.gather(*futs))
    finally:
        await asyncio.wait_for(producer.stop(), timeout=30)
    return acked


# --------------------------------------------------------------------------- profile


def short_path(filename: str) -> str:
    """A readable path: relative to site-packages or the project, else the stdlib name."""
    for marker in ("site-packages/", f"{PROJECT_ROOT}/"):
        idx = filename.find(marker)
        if idx >= 0:
            return filename[idx + len(marker):]
    if "/lib/python3" in filename:
        return "stdlib/" + filename.rsplit("/", 1)[-1]
    return filename


def profile_summary(prof: cProfile.Profile, interesting: Sequence[str]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The top costs of a cProfile run, and every row.

    ``top_self`` by self time (the epoll wait, idle time, left out),
    ``top_cumulative`` by cumulative time over functions whose location
    contains one of ``interesting``; each with its ``share_of_busy``.
    """
    stats = pstats.Stats(prof, stream=io.StringIO())
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    total = float(stats.total_tt)  # type: ignore[attr-defined]
    rows: list[dict[str, Any]] = []
    for (filename, line, func), (_cc, nc, tt, ct, _callers) in raw.items():
        rows.append({"function": f"{short_path(filename)}:{line}({func})", "ncalls": int(nc),
                     "tottime_s": round(float(tt), 4), "cumtime_s": round(float(ct), 4)})
    # the event loop waiting in epoll is idle time (broker round trips, group join)
    idle = sum(r["tottime_s"] for r in rows if EPOLL_WAIT in r["function"])
    busy = total - idle
    top_self = sorted((dict(r) for r in rows if EPOLL_WAIT not in r["function"]),
                      key=lambda r: r["tottime_s"], reverse=True)[:PROFILE_TOP]
    for r in top_self:
        r["share_of_busy"] = r["tottime_s"] / busy if busy > 0 else math.nan
    top_cum = sorted((dict(r) for r in rows if any(k in r["function"] for k in interesting)),
                     key=lambda r: r["cumtime_s"], reverse=True)[:PROFILE_TOP]
    for r in top_cum:
        r["share_of_busy"] = r["cumtime_s"] / busy if busy > 0 else math.nan
    return ({"profiled_total_s": total, "idle_in_epoll_s": idle, "busy_s": busy,
             "top_self": top_self, "top_cumulative": top_cum}, rows)
