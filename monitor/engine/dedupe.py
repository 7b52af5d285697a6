"""Each event id counted once: a compact memory of the ids seen, by event time.

Producers retry, upstream systems replay, and a consumer restarted before its
commit reads a batch twice: the same event id arrives again. The engine asks
:class:`SeenIds` which ids of a batch it has seen within the *dedupe horizon*
(event time), and counts only the others.

Layout, per instance: a 64-bit hash of every id (:func:`hash_ids`, XXH3), the
event-time bucket it expires with and the source partition it came from, in
numpy arrays: one large sorted run plus a few small sorted runs (merged into
the large one when they reach a quarter of it). A large run has an index on
the top bits of the hash (an int32 start position per prefix, one prefix per
two ids), so looking an id up costs about two memory reads instead of a
binary search's twenty. Per id: 8 B hash + 4 B bucket (relative to a base) +
2 B partition + about 2 B of index = 16 bytes. A batch is looked up sorted,
in a few vectorised passes. A bucket leaves
the memory once the watermark is a horizon past its end; ``max_ids`` caps the
memory (the oldest buckets go first, counted as evictions).

Per partition, the ids added since the last :meth:`SeenIds.drain` are handed
to a state store (so the memory survives restarts and moves with its partition
on hand-over), and :meth:`SeenIds.load` / :meth:`SeenIds.drop` take partitions
over and give them up.

False duplicates: two different ids share a 64-bit hash with probability
2**-64 per pair, so with ``N`` ids in memory a new id is wrongly taken for a
copy with probability at most ``N / 2**64`` (about 5e-13 at 10 million ids).

>>> seen = SeenIds(horizon_seconds=3600.0)
>>> h = hash_ids(["a", "b", "a"])
>>> seen.check_and_add(h, np.zeros(3, np.int64), np.full(3, 100.0)).tolist()
[False, False, True]
>>> seen.check_and_add(hash_ids(["b", "c"]), np.zeros(2, np.int64),
...                    np.full(2, 200.0)).tolist()
[True, False]
>>> seen.expire(100.0 + 3600.0 + 3 * seen.bucket_seconds)   # the expired buckets
[0]
>>> seen.check_and_add(hash_ids(["a"]), np.zeros(1, np.int64), np.full(1, 9000.0)).tolist()
[False]
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
from xxhash import xxh3_64_intdigest

__all__ = ["SeenIds", "hash_ids"]

U64 = npt.NDArray[np.uint64]
# a record of a stored blob: hash (u8), bucket (i8), little-endian
_BLOB = np.dtype([("h", "<u8"), ("b", "<i8")])


def _encode(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")


def hash_ids(ids: Sequence[str]) -> U64:
    """A stable 64-bit hash of each id: XXH3-64 of its UTF-8 bytes (the same
    in every process, run and version; lone surrogates are kept as such).

    >>> a = hash_ids(["evt-1", "evt-2", "evt-1", ""])
    >>> a.dtype.name, bool(a[0] == a[2]), bool(a[0] != a[1]), len(set(a.tolist()))
    ('uint64', True, True, 3)
    >>> hex(int(hash_ids(["abc"])[0]))   # XXH3-64 of b"abc"
    '0x78af5f94892f3950'
    """
    n = len(ids)
    try:
        raw = list(map(str.encode, ids))
    except UnicodeEncodeError:
        raw = list(map(_encode, ids))
    return np.fromiter(map(xxh3_64_intdigest, raw), dtype=np.uint64, count=n)


class SeenIds:
    """Ids seen within a horizon of event time, per source partition.

    Parameters
    ----------
    horizon_seconds : float
        How long (event time) an id is remembered after its event's time.
    bucket_seconds : float, optional
        Expiry granularity (default: a sixteenth of the horizon, at least 1 s);
        an id is kept between ``horizon`` and ``horizon + bucket`` seconds.
    max_ids : int, default 50_000_000
        Memory cap; past it the oldest buckets are dropped early.
    """

    def __init__(self, horizon_seconds: float, bucket_seconds: float | None = None,
                 max_ids: int = 50_000_000) -> None:
        if not (horizon_seconds > 0 and math.isfinite(horizon_seconds)):
            raise ValueError(f"horizon_seconds must be > 0 and finite, got {horizon_seconds!r}")
        if bucket_seconds is None:
            bucket_seconds = max(horizon_seconds / 16.0, 1.0)
        if not bucket_seconds > 0:
            raise ValueError(f"bucket_seconds must be > 0, got {bucket_seconds!r}")
        if max_ids < 1:
            raise ValueError(f"max_ids must be >= 1, got {max_ids!r}")
        self.horizon_seconds = float(horizon_seconds)
        self.bucket_seconds = float(bucket_seconds)
        self.max_ids = int(max_ids)
        #: hand added ids to :meth:`drain` (a state store persists them)
        self.logging = False
        self._reset()

    def _reset(self) -> None:
        # runs of (sorted hashes, their buckets, their partitions); runs[0] the largest
        self._h: list[U64] = []
        self._b: list[npt.NDArray[np.int32]] = []  # bucket - self._base
        self._p: list[npt.NDArray[np.uint16]] = []
        # per run: (start position of each hash prefix, prefix shift) or None
        self._ix: list[tuple[npt.NDArray[np.int32], np.uint64] | None] = []
        self._base: int | None = None
        self._min_bucket: int | None = None
        self._cutoff: int | None = None
        # added since the last drain: partition -> list of (hashes, buckets)
        self._new: dict[int, list[tuple[U64, npt.NDArray[np.int64]]]] = {}
        self.evicted = 0

    def __len__(self) -> int:
        return sum(int(h.size) for h in self._h)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays (hash, bucket, partition and index)."""
        return sum(int(h.nbytes + b.nbytes + p.nbytes) + (0 if ix is None else ix[0].nbytes)
                   for h, b, p, ix in zip(self._h, self._b, self._p, self._ix, strict=True))

    @property
    def cutoff(self) -> int | None:
        """The oldest bucket still remembered (None before any expiry)."""
        return self._cutoff

    def bucket_of(self, ts: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The expiry bucket of each event time."""
        with np.errstate(invalid="ignore"):
            b = np.floor(ts / self.bucket_seconds)
        b = np.where(np.isfinite(b), b, -(2 ** 62))
        out: npt.NDArray[np.int64] = b.astype(np.int64)
        if self._cutoff is not None:  # older than the horizon: kept the shortest time
            np.maximum(out, self._cutoff, out=out)
        return out

    def contains(self, hashes: U64) -> npt.NDArray[np.bool_]:
        """Whether each hash is in the memory."""
        found = np.zeros(hashes.size, dtype=np.bool_)
        if not hashes.size:
            return found
        for run, ix in zip(self._h, self._ix, strict=True):
            if ix is not None:
                _lookup_indexed(run, ix[0], ix[1], hashes, found)
            elif run.size:
                pos = np.searchsorted(run, hashes)
                np.minimum(pos, run.size - 1, out=pos)
                found |= run[pos] == hashes
        return found

    def check_and_add(self, hashes: U64, partitions: npt.NDArray[np.int64],
                      ts: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Which rows are copies (of an id in memory, or of an earlier row of the
        batch); the others are added. Returns the boolean copy mask."""
        n = hashes.size
        if not n:
            return np.zeros(0, dtype=np.bool_)
        order = np.argsort(hashes, kind="stable")
        hs = hashes[order]
        # within the batch, every occurrence after an id's first is a copy
        # (stable sort: equal hashes stay in arrival order)
        dup_s = np.zeros(n, dtype=np.bool_)
        np.equal(hs[1:], hs[:-1], out=dup_s[1:])
        dup_s |= self.contains(hs)
        keep = order[~dup_s]
        if keep.size:
            parts = partitions[keep] if partitions.size == n else np.zeros(keep.size, np.int64)
            self.add(hs[~dup_s], parts, self.bucket_of(ts[keep]), presorted=True)
        dup = np.empty(n, dtype=np.bool_)
        dup[order] = dup_s
        return dup

    def new_rows(self, hashes: U64, partitions: npt.NDArray[np.int64],
                 ts: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.intp] | None, int]:
        """:meth:`check_and_add`, as the rows to keep (None: every row is new)
        and the number of copies."""
        dup = self.check_and_add(hashes, partitions, ts)
        n_dup = int(np.count_nonzero(dup))
        if not n_dup:
            return None, 0
        return np.flatnonzero(~dup), n_dup

    def add(self, hashes: U64, partitions: npt.NDArray[np.int64],
            buckets: npt.NDArray[np.int64], log: bool = True,
            presorted: bool = False) -> None:
        """Add ids not in memory (``log``: hand them to the next :meth:`drain`;
        ``presorted``: the hashes are sorted already)."""
        if not hashes.size:
            return
        if partitions.size and (partitions.min() < 0 or partitions.max() > _MAX_PARTITION):
            raise ValueError(f"partitions must be in [0, {_MAX_PARTITION}], got "
                             f"{int(partitions.min())}..{int(partitions.max())}")
        if presorted:
            h, b, p = hashes, buckets, partitions.astype(np.uint16)
        else:
            order = np.argsort(hashes, kind="stable")
            h, b = hashes[order], buckets[order]
            p = partitions[order].astype(np.uint16)
        if self._base is None:
            self._base = int(b.min()) - 2 ** 30
        rel = np.clip(b - self._base, 0, 2 ** 31 - 1).astype(np.int32)
        self._h.append(h)
        self._b.append(rel)
        self._p.append(p)
        self._ix.append(_index(h))
        lo = int(b.min())
        self._min_bucket = lo if self._min_bucket is None else min(self._min_bucket, lo)
        if log and self.logging:
            for part in np.unique(p).tolist():
                sel = p == part
                self._new.setdefault(int(part), []).append((h[sel], b[sel]))
        self._compact()
        if len(self) > self.max_ids:
            self._evict_to(self.max_ids)

    def _compact(self) -> None:
        """Keep few runs: more than eight small runs merge into one, and the small
        runs merge into the large one once they reach a quarter of it (each id
        is re-sorted about five times in all; the merges are timsort over runs)."""
        runs = self._h
        if len(runs) < 2:
            return
        small = sum(int(r.size) for r in runs[1:])
        if small * 4 >= runs[0].size:
            self._merge(0)
        elif len(runs) > 8:
            self._merge(1)

    def _merge(self, start: int) -> None:
        h = np.concatenate(self._h[start:])
        order = np.argsort(h, kind="stable")
        self._h[start:] = [h[order]]
        self._b[start:] = [np.concatenate(self._b[start:])[order]]
        self._p[start:] = [np.concatenate(self._p[start:])[order]]
        self._ix[start:] = [_index(self._h[start])]

    def _filter(self, keep_of: Iterable[tuple[int, npt.NDArray[np.bool_]]]) -> None:
        for i, keep in keep_of:
            if keep.all():
                continue
            self._h[i] = self._h[i][keep]
            self._b[i] = self._b[i][keep]
            self._p[i] = self._p[i][keep]
            self._ix[i] = _index(self._h[i])
        nonempty = [i for i, h in enumerate(self._h) if h.size]
        self._h = [self._h[i] for i in nonempty]
        self._b = [self._b[i] for i in nonempty]
        self._p = [self._p[i] for i in nonempty]
        self._ix = [self._ix[i] for i in nonempty]
        base = self._base or 0
        self._min_bucket = min((int(b.min()) + base for b in self._b), default=None)

    def expire(self, watermark: float) -> list[int]:
        """Forget the buckets that ended a horizon before ``watermark``; returns
        the expired bucket ids (a store drops their blobs)."""
        if not math.isfinite(watermark):
            return []
        cutoff = math.floor((watermark - self.horizon_seconds) / self.bucket_seconds)
        if self._cutoff is not None and cutoff <= self._cutoff:
            return []
        self._cutoff = cutoff
        if self._min_bucket is None or self._min_bucket >= cutoff:
            return []
        base = self._base or 0
        rel = cutoff - base
        gone = sorted({int(x) + base for b in self._b for x in np.unique(b[b < rel]).tolist()})
        self._filter((i, b >= rel) for i, b in enumerate(self._b))
        for part, chunks in self._new.items():
            self._new[part] = [(h[b >= cutoff], b[b >= cutoff]) for h, b in chunks]
        return gone

    def _evict_to(self, target: int) -> None:
        buckets = np.concatenate(self._b)
        values, counts = np.unique(buckets, return_counts=True)
        excess = len(self) - target
        # the oldest buckets whose ids make up the excess
        last = int(np.searchsorted(np.cumsum(counts), excess))
        cut = int(values[min(last, values.size - 1)])  # relative to the base
        before = len(self)
        self._filter((i, b > cut) for i, b in enumerate(self._b))
        self.evicted += before - len(self)

    def drain(self) -> dict[int, tuple[U64, npt.NDArray[np.int64]]]:
        """Ids added since the last call, per partition: ``(hashes, buckets)``."""
        out = {p: (np.concatenate([h for h, _ in c]), np.concatenate([b for _, b in c]))
               for p, c in self._new.items() if c}
        self._new = {}
        return out

    def partition_ids(self, partition: int) -> tuple[U64, npt.NDArray[np.int64]]:
        """Every id of one partition in memory: ``(hashes, buckets)`` (for a snapshot)."""
        hs, bs = [], []
        for h, b, p in zip(self._h, self._b, self._p, strict=True):
            sel = p == partition
            hs.append(h[sel])
            bs.append(b[sel].astype(np.int64) + (self._base or 0))
        if not hs:
            return np.empty(0, np.uint64), np.empty(0, np.int64)
        return np.concatenate(hs), np.concatenate(bs)

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget the ids of revoked partitions (their new owner loads them)."""
        parts = np.array(sorted(set(partitions)), dtype=np.uint16)
        if not parts.size:
            return
        self._filter((i, ~np.isin(p, parts)) for i, p in enumerate(self._p))
        for part in parts.tolist():
            self._new.pop(int(part), None)

    def load(self, partition: int, hashes: U64, buckets: npt.NDArray[np.int64]) -> None:
        """Take over a partition's stored ids (not logged again)."""
        if self._cutoff is not None:
            keep = buckets >= self._cutoff
            hashes, buckets = hashes[keep], buckets[keep]
        if hashes.size:
            present = self.contains(hashes)
            _, first = np.unique(hashes, return_index=True)
            sel = np.zeros(hashes.size, dtype=np.bool_)
            sel[first] = True
            sel &= ~present
            self.add(hashes[sel], np.full(int(sel.sum()), partition, np.int64), buckets[sel],
                     log=False)

    def clear(self) -> None:
        """Forget everything."""
        self._reset()


#: partitions are kept as 16 bits
_MAX_PARTITION = 65_535
#: runs at least this long get a prefix index
_INDEX_MIN = 1 << 15


def _index(run: U64) -> tuple[npt.NDArray[np.int32], np.uint64] | None:
    """Start position of every ``k``-bit hash prefix in a sorted run (``k`` about
    log2(len) - 1, so two ids per prefix on average), and the shift ``64 - k``."""
    n = int(run.size)
    if n < _INDEX_MIN:
        return None
    k = max(n.bit_length() - 2, 1)
    shift = np.uint64(64 - k)
    starts = np.arange(1 << k, dtype=np.uint64) << shift
    ix = np.empty((1 << k) + 1, dtype=np.int32)
    ix[:-1] = np.searchsorted(run, starts)
    ix[-1] = n
    return ix, shift


def _lookup_indexed(run: U64, ix: npt.NDArray[np.int32], shift: np.uint64, hashes: U64,
                    found: npt.NDArray[np.bool_]) -> None:
    """Set ``found`` where a hash is in the indexed run: scan each hash's prefix
    range, all hashes at once, one position per pass (a range holds ~2 ids)."""
    top = (hashes >> shift).astype(np.intp)
    hi = ix[top + 1]
    act = np.flatnonzero(ix[top] < hi)
    pos = ix[top][act].astype(np.intp)
    while act.size:
        v = run[pos]
        want = hashes[act]
        hit = v == want
        found[act[hit]] = True
        more = (v < want) & (pos + 1 < hi[act])
        act = act[more]
        pos = pos[more] + 1


def encode_ids(hashes: U64, buckets: npt.NDArray[np.int64]) -> bytes:
    """A stored blob of ids: ``(hash u64, bucket i64)`` records, little-endian."""
    rec = np.empty(hashes.size, dtype=_BLOB)
    rec["h"] = hashes
    rec["b"] = buckets
    return rec.tobytes()


def decode_ids(blob: bytes) -> tuple[U64, npt.NDArray[np.int64]]:
    """Inverse of :func:`encode_ids`."""
    if len(blob) % _BLOB.itemsize:
        raise ValueError(f"a dedupe blob must be a multiple of {_BLOB.itemsize} bytes, "
                         f"got {len(blob)}")
    rec = np.frombuffer(blob, dtype=_BLOB)
    return rec["h"].astype(np.uint64), rec["b"].astype(np.int64)
