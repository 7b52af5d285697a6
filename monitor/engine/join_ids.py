"""The ids seen by dedupe, stored next to the join buffer of their partition.

Each commit adds, per partition and expiry bucket, one field of the hashes
seen since the last one (``i.{bucket}.{name}`` in the partition's join hash,
see :mod:`.join`); every :data:`IDS_MERGE_FIELDS` small fields of a bucket are
merged into one, and the fields of expired buckets are dropped. A restart
loads them back into :class:`monitor.engine.dedupe.SeenIds`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from monitor.engine.dedupe import SeenIds, decode_ids, encode_ids
from monitor.engine.store import Commit

__all__ = ["IDS_MERGE_FIELDS", "IdFields", "drop_expired_ids", "ids_delta", "load_ids"]

TP = tuple[str, int]

#: small id fields of one partition and bucket merged into one
IDS_MERGE_FIELDS = 32


@dataclass
class IdFields:
    """One partition's stored fields of ids seen in one expiry bucket: merged
    fields, and small ones (one per commit, with their hashes) not yet merged."""

    merged: list[str] = field(default_factory=list)
    small: list[tuple[str, npt.NDArray[np.uint64]]] = field(default_factory=list)


def ids_delta(seen: SeenIds, topic: str, stored: dict[TP, dict[int, IdFields]],
              commit: Commit, field_name: Callable[[str], str]) -> None:
    """Add the ids ``seen`` since the last commit to ``commit``, one field per
    partition and expiry bucket, merging every :data:`IDS_MERGE_FIELDS` small
    fields of a bucket into one (``field_name`` names a new field)."""
    for part, (hashes, buckets) in sorted(seen.drain().items()):
        tp = (topic, part)
        per = stored.setdefault(tp, {})
        writes = commit.join_writes.setdefault(tp, {})
        for bucket in np.unique(buckets).tolist():
            sel = buckets == bucket
            h = hashes[sel]
            fields = per.setdefault(int(bucket), IdFields())
            name = f"i.{bucket}.{field_name('i')}"
            writes[name] = encode_ids(h, buckets[sel])
            fields.small.append((name, h))
            if len(fields.small) >= IDS_MERGE_FIELDS:
                merged = np.concatenate([x for _, x in fields.small])
                for old, _ in fields.small:
                    if writes.pop(old, None) is None:
                        commit.join_drops.setdefault(tp, []).append(old)
                name = f"i.{bucket}.{field_name('i')}"
                writes[name] = encode_ids(merged, np.full(merged.size, bucket,
                                                          dtype=np.int64))
                fields.merged.append(name)
                fields.small = []


def drop_expired_ids(seen: SeenIds, topic: str, stored: dict[TP, dict[int, IdFields]],
                     commit: Commit) -> None:
    """Drop the stored fields of ``topic``'s buckets that ``seen`` expired."""
    cutoff = seen.cutoff
    if cutoff is None:
        return
    for tp, per in stored.items():
        if tp[0] != topic:
            continue
        for bucket in [b for b in per if b < cutoff]:
            fields = per.pop(bucket)
            writes = commit.join_writes.get(tp, {})
            for name in fields.merged + [x for x, _ in fields.small]:
                if writes.pop(name, None) is None:
                    commit.join_drops.setdefault(tp, []).append(name)


def load_ids(seen: SeenIds | None, partition: int, fields: dict[str, bytes],
             per: dict[int, IdFields]) -> tuple[dict[str, bytes], int]:
    """Take the stored ids seen of one partition over (the ``i.`` fields) into
    ``seen`` and ``per``; returns the other fields (the join buffer's) and the
    newest epoch among the id fields (-1 with none)."""
    rest: dict[str, bytes] = {}
    newest = -1
    hs: list[npt.NDArray[np.uint64]] = []
    bs: list[npt.NDArray[np.int64]] = []
    for name, blob in fields.items():
        if not name.startswith("i."):
            rest[name] = blob
            continue
        bucket = int(name.split(".")[1])
        per.setdefault(bucket, IdFields()).merged.append(name)
        h, b = decode_ids(blob)
        hs.append(h)
        bs.append(b)
        # this instance's later field names must sort after the stored ones
        newest = max(newest, int(name.split(".")[2]))
    if seen is not None and hs:
        seen.load(partition, np.concatenate(hs), np.concatenate(bs))
    return rest, newest
