"""The baselines bench_ingest compares driftgate with, on the same topics.

(1) raw aiokafka ``getmany`` consumption, no decoding (the ceiling), and (3) a
plain faust-streaming agent that only counts events (``stream.take``), started
in the current event loop. Each returns its events/s and batch statistics.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import tempfile
import time
from typing import Any

from benchmarks.common import rate
from benchmarks.harness import Phase, group_name

__all__ = ["GROUP_TUNING", "MAX_POLL_RECORDS", "PHASE_TIMEOUT_S", "bench_faust", "bench_raw"]

MAX_POLL_RECORDS = 5_000
FAUST_TAKE = 5_000
# at Faust's rate here (a few thousand events/s) 5000-event batches need over a second
# to fill; a shorter `within` cuts them at ~2000 events and costs Faust about 20 %
FAUST_WITHIN_S = 2.0
# tansu answers JoinGroup after about half the session timeout: keep it short.
GROUP_TUNING: dict[str, int] = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
# raw consumer fetch tuning for (1): big fetches, short waits
RAW_FETCH: dict[str, int] = {"fetch_max_bytes": 64 * 1024 * 1024,
                             "max_partition_fetch_bytes": 16 * 1024 * 1024,
                             "fetch_max_wait_ms": 100}
PHASE_TIMEOUT_S = 120.0


async def bench_raw(bootstrap: str, topic: str, n: int,
                    fetch: dict[str, int] | None = None) -> dict[str, Any]:
    """(1): count records with ``getmany`` until ``n``; no decoding at all.

    ``fetch`` are the consumer's fetch settings (default :data:`RAW_FETCH`).
    """
    from aiokafka import AIOKafkaConsumer

    fetch = RAW_FETCH if fetch is None else fetch
    phase = Phase()
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=group_name("raw"),
        auto_offset_reset="earliest", enable_auto_commit=False,
        max_poll_records=MAX_POLL_RECORDS, **fetch, **GROUP_TUNING)
    t_start = time.perf_counter()
    await asyncio.wait_for(consumer.start(), timeout=30)
    count = 0
    batches: list[int] = []
    t_first = t_last = math.nan
    try:
        deadline = time.monotonic() + PHASE_TIMEOUT_S
        while count < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"(1) timed out after {PHASE_TIMEOUT_S}s at {count}/{n}")
            data = await consumer.getmany(timeout_ms=200)
            got = sum(len(msgs) for msgs in data.values())
            if not got:
                continue
            now = time.perf_counter()
            if not batches:
                t_first = now
            count += got
            batches.append(got)
            t_last = now
    finally:
        await asyncio.wait_for(consumer.stop(), timeout=30)
    span = t_last - t_first
    return {
        "events": count,
        "events_per_s": rate(count, span),
        "events_per_s_excl_first_batch": rate(count - batches[0], span),
        "span_s": span,
        "join_to_first_record_s": t_first - t_start,
        "batches": len(batches),
        "batch_size_mean": statistics.fmean(batches),
        "batch_size_max": max(batches),
        "consumer": {"max_poll_records": MAX_POLL_RECORDS, **fetch, **GROUP_TUNING},
        "memory": phase.memory(),
    }


async def bench_faust(bootstrap: str, topic: str, n: int) -> dict[str, Any]:
    """(3): a plain Faust agent counting ``stream.take(5000, within=...)`` batches."""
    import faust

    phase = Phase()
    datadir = tempfile.mkdtemp(prefix="bench-faust-")
    app = faust.App(
        group_name("faust"), broker=f"kafka://{bootstrap}", value_serializer="raw",
        key_serializer="raw", store="memory://", web_enabled=False,
        topic_disable_leader=True, topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=GROUP_TUNING["session_timeout_ms"] / 1000.0,
        broker_heartbeat_interval=GROUP_TUNING["heartbeat_interval_ms"] / 1000.0,
        broker_rebalance_timeout=10.0, processing_guarantee="at_least_once",
        datadir=datadir, autodiscover=False, loop=asyncio.get_running_loop(),
    )
    source = app.topic(topic, value_serializer="raw", key_serializer="raw")
    done = asyncio.Event()
    state: dict[str, Any] = {"count": 0, "batches": [], "t_first": math.nan,
                             "t_last": math.nan}

    async def counter(stream: Any) -> None:
        async for values in stream.take(FAUST_TAKE, within=FAUST_WITHIN_S):
            now = time.perf_counter()
            if not state["batches"]:
                state["t_first"] = now
            state["count"] += len(values)
            state["batches"].append(len(values))
            state["t_last"] = now
            if state["count"] >= n:
                done.set()

    counter.__name__ = counter.__qualname__ = "bench_counter"
    app.agent(source, name="bench-counter")(counter)
    t_start = time.perf_counter()
    try:
        await asyncio.wait_for(app.start(), timeout=60)
        await asyncio.wait_for(done.wait(), timeout=PHASE_TIMEOUT_S)
    except TimeoutError as exc:
        raise RuntimeError(f"(3) timed out at {state['count']}/{n}") from exc
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(app.stop(), timeout=30)
        import shutil

        shutil.rmtree(datadir, ignore_errors=True)
    batches: list[int] = state["batches"]
    span = float(state["t_last"] - state["t_first"])
    count = int(state["count"])
    return {
        "events": count,
        "events_per_s": rate(count, span),
        "events_per_s_excl_first_batch": rate(count - batches[0], span),
        "span_s": span,
        "join_to_first_batch_s": float(state["t_first"]) - t_start,
        "batches": len(batches),
        "batch_size_mean": statistics.fmean(batches),
        "batch_size_max": max(batches),
        "faust_cython": _faust_cython(),
        "how": f"faust.App in the current event loop (app.start(), no Worker, web disabled), "
               f"value_serializer='raw', one agent: stream.take({FAUST_TAKE}, "
               f"within={FAUST_WITHIN_S}) counting len(values); Faust consumer defaults "
               f"otherwise",
        "memory": phase.memory(),
    }


def _faust_cython() -> bool:
    """Whether Faust runs its Cython stream iterator (as in a normal install)."""
    try:
        import faust.streams
    except ImportError:
        return False
    return getattr(faust.streams, "_CStreamIterator", None) is not None
