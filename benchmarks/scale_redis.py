"""The Redis side of bench_scale: what the store writes and what the server saw.

:class:`JoinCountingStore` (the RedisStore ``driftgate run`` builds, also
counting the join-buffer blobs of each commit), the server's INFO counters
before and after a phase (:func:`redis_snapshot`, :func:`redis_delta`), the
pending-buffer sample (:func:`sample_pending`), the counts stored in Redis
(:func:`stored_counts`) and the sizes of the state hashes.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from monitor.config import Settings
from monitor.engine.redis_store import RedisStore
from monitor.engine.store import Commit
from monitor.serve.runner import make_store

__all__ = ["COUNT_NAMES", "JoinCountingStore", "counting_store", "redis_delta",
           "redis_snapshot", "sample_pending", "state_hash_sizes", "stored_counts"]

TARGET_BYTES_PER_PENDING = 200.0
# commands only the harness sends (left out of the server-side counts by name;
# driftgate never sends them)
HARNESS_COMMANDS = frozenset({"info", "scan", "memory|usage", "hlen", "pttl", "dbsize",
                              "flushall"})


class JoinCountingStore(RedisStore):
    """A RedisStore that also counts the join-buffer blobs its commits write."""

    join_blobs = 0
    join_snapshots = 0
    join_blob_bytes = 0
    join_fields_dropped = 0

    async def commit(self, c: Commit) -> None:
        await super().commit(c)
        for fields in c.join_writes.values():
            self.join_blobs += len(fields)
            self.join_snapshots += sum(1 for f in fields if f.endswith(".s"))
            self.join_blob_bytes += sum(len(b) for b in fields.values())
        self.join_fields_dropped += sum(len(d) for d in c.join_drops.values())


def counting_store(settings: Settings) -> JoinCountingStore | None:
    """The store :func:`monitor.serve.runner.make_store` builds from ``settings``
    (None without one), as a :class:`JoinCountingStore`."""
    store = make_store(settings)
    if store is None:
        return None
    if not isinstance(store, RedisStore):
        raise TypeError(f"bench_scale expects a RedisStore, not {type(store).__name__}")
    counting = JoinCountingStore.__new__(JoinCountingStore)
    counting.__dict__.update(vars(store))
    return counting


def redis_snapshot(r: Any) -> dict[str, Any]:
    """The INFO counters this benchmark compares before and after a phase."""
    info = r.info("all")
    return {
        "total_commands_processed": int(info["total_commands_processed"]),
        "net_input_bytes": int(info["total_net_input_bytes"]),
        "net_output_bytes": int(info["total_net_output_bytes"]),
        "cpu_s": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
        "aof_current_size": int(info.get("aof_current_size", 0)),
        "used_memory": int(info["used_memory"]),
        "calls": {k[len("cmdstat_"):]: int(v["calls"]) for k, v in info.items()
                  if k.startswith("cmdstat_")},
        "failed_calls": {k[len("cmdstat_"):]: int(v.get("failed_calls", 0))
                         for k, v in info.items() if k.startswith("cmdstat_")},
    }


def redis_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Server-side deltas; harness commands (by name) left out of the command counts."""
    calls = {k: v - before["calls"].get(k, 0) for k, v in after["calls"].items()}
    calls = {k: v for k, v in calls.items() if v}
    harness = sum(v for k, v in calls.items() if k in HARNESS_COMMANDS)
    ours = {k: v for k, v in calls.items() if k not in HARNESS_COMMANDS}
    failed = {k: v - before["failed_calls"].get(k, 0)
              for k, v in after["failed_calls"].items()}
    return {
        "commands_total_commands_processed": after["total_commands_processed"]
        - before["total_commands_processed"] - harness,
        "commands_commandstats": sum(ours.values()),
        "calls_by_command": dict(sorted(ours.items(), key=lambda kv: -kv[1])),
        "failed_calls_by_command": {k: v for k, v in failed.items() if v},
        "harness_commands_left_out": harness,
        "net_input_bytes": after["net_input_bytes"] - before["net_input_bytes"],
        "net_output_bytes": after["net_output_bytes"] - before["net_output_bytes"],
        "cpu_s": after["cpu_s"] - before["cpu_s"],
        "aof_bytes": after["aof_current_size"] - before["aof_current_size"],
    }


def sample_pending(r: Any, prefix: str, predictions_topic: str, baseline_used_memory: int,
                   pending_predictions: int) -> dict[str, Any]:
    """Bytes the pending-prediction buffer takes in Redis: the partitions' join
    hashes (``{prefix}j:{predictions_topic}:*``) over the pending predictions."""
    t0 = time.perf_counter()
    keys: list[bytes] = []
    cursor = 0
    scans = 0
    while True:
        cursor, found = r.scan(cursor, match=f"{prefix}j:{predictions_topic}:*", count=1_000)
        scans += 1
        keys.extend(found)
        if cursor == 0:
            break
    pipe = r.pipeline(transaction=False)
    for k in keys:
        pipe.memory_usage(k, samples=0)
        pipe.hlen(k)
        pipe.pttl(k)
    raw = pipe.execute()
    usage = [int(x) for x in raw[0::3] if x is not None]
    fields = [int(x) for x in raw[1::3]]
    pttl = [int(x) for x in raw[2::3]]
    used = int(r.info("memory")["used_memory"])
    total = sum(usage)
    per = total / pending_predictions if pending_predictions else math.nan
    return {
        "join_hashes": len(keys),
        "join_hash_fields": sum(fields),
        "join_hash_bytes": total,
        "pending_predictions": pending_predictions,
        "pttl_ms_min": min(pttl) if pttl else None,
        "used_memory_growth_bytes": used - baseline_used_memory,
        "used_memory_growth_per_pending_prediction": (used - baseline_used_memory)
        / pending_predictions if pending_predictions else math.nan,
        "bytes_per_pending_prediction": per,
        "target_bytes": TARGET_BYTES_PER_PENDING,
        "meets_target": bool(per <= TARGET_BYTES_PER_PENDING),
        "sampling_pause_s": time.perf_counter() - t0,
        "harness_commands": scans + 3 * len(keys) + 1,
    }


COUNT_NAMES = ("predictions_total", "labels_joined_total", "tp", "fp", "fn", "tn")


def stored_counts(r: Any, prefix: str) -> dict[str, list[int]]:
    """The same counts as stored in Redis (every instance's counters hash, summed)."""
    out: dict[str, list[int]] = {}
    for inst in r.smembers(f"{prefix}instances"):
        for k, v in r.hgetall(f"{prefix}c:{inst.decode()}").items():
            parts = k.decode().split("\x1f")
            if len(parts) == 3 and parts[2] in COUNT_NAMES:
                row = out.setdefault(f"{parts[0]}/{parts[1]}", [0] * len(COUNT_NAMES))
                row[COUNT_NAMES.index(parts[2])] += int(float(v))
    return dict(sorted(out.items()))


def state_hash_sizes(r: Any, prefix: str) -> dict[str, Any]:
    """Bytes per stored slice by kind, and the other per-instance hashes (after a phase)."""
    by_kind: dict[str, list[int]] = {}
    instances = [x.decode() for x in r.smembers(f"{prefix}instances")]
    counters_bytes = 0
    for inst in instances:
        for fld, blob in r.hgetall(f"{prefix}s:{inst}").items():
            kind = fld.decode().split("\x1f")[2]
            by_kind.setdefault(kind, []).append(len(fld) + len(blob))
        counters_bytes += sum(len(k) + len(v) for k, v in
                              r.hgetall(f"{prefix}c:{inst}").items())
    per_slice = {k: statistics.fmean(v) for k, v in by_kind.items()}
    return {
        "instances": len(instances),
        "slice_fields_by_kind": {k: len(v) for k, v in by_kind.items()},
        "bytes_per_slice_field_by_kind": per_slice,
        "counters_hash_bytes_per_instance": counters_bytes / max(len(instances), 1),
    }
