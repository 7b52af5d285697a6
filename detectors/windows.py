"""Sliced windows: a ring of per-slice count arrays with an incremental sum.

Event time is cut into slices of fixed length (e.g. 10 s); slice ``s`` covers
``[s * slice_seconds, (s + 1) * slice_seconds)``. A window is the sum of the
last ``n_slices`` slices ending at the newest slice seen (the *head*). Adding
counts to a slice adds them to the running total; moving the head forward
subtracts the slices that fall out. Reading the window is a view of the total:
O(size of one count array), whatever the number of events.

Windows are mergeable: two windows fed disjoint parts of a stream, merged,
equal the window fed the whole stream (:meth:`SlicedWindow.merge`).

A window may also hold up to ``ahead`` slices *newer* than its head, outside
the total until the head reaches them. With event time kept per source
partition, the head follows the slowest active partition (the watermark)
while a partition read ahead of it (a backlog consumed at uneven speeds)
still lands its counts; they enter the window when the watermark gets there,
as in Flink's and Beam's event-time windows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["SlicedWindow", "slice_ids"]

IntArray = npt.NDArray[np.int64]


def slice_ids(timestamps: npt.ArrayLike, slice_seconds: float) -> IntArray:
    """Slice id ``floor(ts / slice_seconds)`` of each epoch-seconds timestamp.

    >>> slice_ids([0.0, 9.99, 10.0, 25.0], 10).tolist()
    [0, 0, 1, 2]
    """
    if not slice_seconds > 0:
        raise ValueError(f"slice_seconds must be > 0, got {slice_seconds!r}")
    ts = np.asarray(timestamps, dtype=np.float64)
    if ts.size and not np.all(np.isfinite(ts)):
        raise ValueError(f"timestamps must be finite, got {ts[~np.isfinite(ts)][:3]!r}")
    return np.floor(ts / slice_seconds).astype(np.int64)


class SlicedWindow:
    """A window over the last ``n_slices`` slices of integer counts.

    Parameters
    ----------
    n_slices : int
        Number of slices in the window (window length / slice length).
    shape : tuple of int
        Shape of one slice's count array, e.g. ``(features, bins)``.
    dtype : {"int64", "float64"}, default "int64"
        Element type; float64 is for weighted sums such as fraud amounts.
    ahead : int, default 0
        Slices newer than the head that may be held without moving it (kept
        apart, sparse, and out of :attr:`total` until the head reaches them).
        A slice further ahead moves the head to ``slice - ahead``.

    Examples
    --------
    >>> w = SlicedWindow(n_slices=3, shape=(2,))
    >>> w.add(10, np.array([1, 0]))
    True
    >>> w.add(11, np.array([0, 2]))
    True
    >>> w.total.tolist(), w.bounds
    ([1, 2], (9, 11))
    >>> w.add(13, np.array([5, 5]))   # slice 10 falls out of (11, 13)
    True
    >>> w.total.tolist(), w.bounds
    ([5, 7], (11, 13))
    >>> w.add(10, np.array([1, 1]))   # older than the window: refused (late)
    False

    Slices ahead of the head wait outside the total:

    >>> v = SlicedWindow(n_slices=2, shape=(1,), ahead=5)
    >>> v.advance(10)
    >>> v.add(13, np.array([4]))      # held, head stays at 10
    True
    >>> v.total.tolist(), v.head, sorted(v.slice_ids())
    ([0], 10, [13])
    >>> v.advance(13)                 # the head reaches it
    >>> v.total.tolist(), v.bounds
    ([4], (12, 13))
    """

    def __init__(self, n_slices: int, shape: tuple[int, ...], dtype: str = "int64",
                 ahead: int = 0) -> None:
        if isinstance(n_slices, bool) or not isinstance(n_slices, int) or n_slices < 1:
            raise ValueError(f"n_slices must be an integer >= 1, got {n_slices!r}")
        if any((not isinstance(d, int)) or d < 0 for d in shape):
            raise ValueError(f"shape must be non-negative integers, got {shape!r}")
        if dtype not in ("int64", "float64"):
            raise ValueError(f"dtype must be 'int64' or 'float64', got {dtype!r}")
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0:
            raise ValueError(f"ahead must be an integer >= 0, got {ahead!r}")
        self.ahead = ahead
        self.n_slices = n_slices
        self.shape = tuple(shape)
        self.dtype = dtype
        self._reset()

    def _reset(self) -> None:
        self._ring: npt.NDArray[Any] = np.zeros((self.n_slices, *self.shape), dtype=self.dtype)
        self._ids = np.full(self.n_slices, np.iinfo(np.int64).min, dtype=np.int64)
        self._total: npt.NDArray[Any] = np.zeros(self.shape, dtype=self.dtype)
        self._head: int | None = None
        # slices newer than the head (at most ``ahead`` of them), out of the total
        self._ahead: dict[int, npt.NDArray[Any]] = {}

    @property
    def head(self) -> int | None:
        """The newest slice id seen, or None before any counts."""
        return self._head

    @property
    def bounds(self) -> tuple[int, int] | None:
        """``(oldest, newest)`` slice ids the window covers, inclusive."""
        if self._head is None:
            return None
        return (self._head - self.n_slices + 1, self._head)

    @property
    def total(self) -> npt.NDArray[Any]:
        """Read-only view of the window's summed counts."""
        view = self._total.view()
        view.setflags(write=False)
        return view

    def accepts(self, slice_id: int) -> bool:
        """Whether counts for ``slice_id`` would be inside the window."""
        return self._head is None or slice_id > self._head - self.n_slices

    def advance(self, slice_id: int) -> None:
        """Move the head to ``slice_id`` (if newer), expiring old slices; held
        slices the head now reaches enter the window."""
        if self._head is not None and slice_id <= self._head:
            return
        empty = np.iinfo(np.int64).min
        if self._head is None or slice_id - self._head >= self.n_slices:
            self._ring[...] = 0
            self._ids[:] = empty
            self._total[...] = 0
        else:
            for s in range(self._head + 1, slice_id + 1):
                pos = s % self.n_slices
                if self._ids[pos] != empty:
                    self._total -= self._ring[pos]
                    self._ring[pos] = 0
                    self._ids[pos] = empty
        self._head = int(slice_id)
        if self._ahead:
            for sid in sorted(s for s in self._ahead if s <= slice_id):
                counts = self._ahead.pop(sid)
                if sid > slice_id - self.n_slices:
                    pos = sid % self.n_slices
                    self._ring[pos] = counts
                    self._ids[pos] = sid
                    self._total += counts

    def add(self, slice_id: int, counts: npt.ArrayLike) -> bool:
        """Add ``counts`` to slice ``slice_id``; False if it is older than the window.

        A slice up to ``ahead`` slices newer than the head is held outside the
        total; one further ahead (or any newer slice, with ``ahead=0``) moves the
        head forward first.
        """
        arr = np.asarray(counts)
        if arr.shape != self.shape:
            raise ValueError(f"counts must have shape {self.shape}, got {arr.shape}")
        if arr.size and not np.all(np.isfinite(arr)):  # NaN/inf would never expire from total
            raise ValueError(f"counts must be finite, got {arr[~np.isfinite(arr)][:3]!r}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"counts must be >= 0, got minimum {arr.min()!r}")
        sid = int(slice_id)
        if not self.accepts(sid):
            return False
        if self._head is None:
            self.advance(sid)
        elif sid > self._head:
            if sid - self._head <= self.ahead:
                held = self._ahead.get(sid)
                self._ahead[sid] = arr.astype(self.dtype) if held is None else held + arr
                return True
            self.advance(sid - self.ahead)
            if sid > self._head:  # exactly ``ahead`` slices ahead now: nothing held there
                self._ahead[sid] = arr.astype(self.dtype)
                return True
        pos = sid % self.n_slices
        self._ring[pos] += arr
        self._ids[pos] = sid
        self._total += arr
        return True

    def add_many(self, slice_ids_: npt.ArrayLike, counts: npt.ArrayLike) -> IntArray:
        """Add a stack of per-slice counts (``counts[i]`` to ``slice_ids_[i]``).

        Returns the slice ids refused as too old (late), oldest first. The head
        first moves to the newest id (less ``ahead``), so an old slice in the same
        call is judged against the window that the new one opens.
        """
        ids = np.asarray(slice_ids_, dtype=np.int64)
        stack = np.asarray(counts)
        if stack.shape != (ids.size, *self.shape):
            raise ValueError(
                f"counts must have shape {(ids.size, *self.shape)}, got {stack.shape}"
            )
        if ids.size == 0:
            return ids
        if self._head is None or int(ids.max()) - self._head > self.ahead:
            self.advance(int(ids.max()) - (self.ahead if self._head is not None else 0))
        refused = [int(s) for s, c in zip(ids, stack, strict=True) if not self.add(int(s), c)]
        return np.array(sorted(refused), dtype=np.int64)

    def slice_ids(self) -> set[int]:
        """Ids of the slices the window holds, those ahead of the head included
        (no copies)."""
        empty = np.iinfo(np.int64).min
        return {int(s) for s in self._ids.tolist() if s != empty} | self._ahead.keys()

    def get(self, slice_id: int) -> npt.NDArray[Any] | None:
        """A copy of one slice's counts, or None if the window does not hold it.

        >>> w = SlicedWindow(n_slices=2, shape=(1,))
        >>> w.add(5, np.array([3]))
        True
        >>> w.get(5).tolist(), w.get(4), w.slice_ids()
        ([3], None, {5})
        """
        held = self._ahead.get(int(slice_id))
        if held is not None:
            return held.copy()
        pos = int(slice_id) % self.n_slices
        if self._ids[pos] != slice_id:
            return None
        out: npt.NDArray[Any] = self._ring[pos].copy()
        return out

    def slices(self) -> dict[int, npt.NDArray[Any]]:
        """The non-empty slices the window holds, ``{slice_id: counts}``."""
        out = {sid: self._ring[sid % self.n_slices].copy()
               for sid in sorted(self.slice_ids() - self._ahead.keys())}
        out.update((sid, self._ahead[sid].copy()) for sid in sorted(self._ahead))
        return out

    def merge(self, other: SlicedWindow) -> SlicedWindow:
        """A new window holding the slices of both (e.g. of two instances)."""
        if (other.n_slices, other.shape, other.dtype) != (self.n_slices, self.shape, self.dtype):
            raise ValueError(
                f"cannot merge windows of ({self.n_slices}, {self.shape}) and "
                f"({other.n_slices}, {other.shape})"
            )
        merged = SlicedWindow(self.n_slices, self.shape, self.dtype,
                              max(self.ahead, other.ahead))
        heads = [h for h in (self._head, other._head) if h is not None]
        if heads:
            merged.advance(max(heads))
        for src in (self, other):
            for sid, counts in src.slices().items():
                merged.add(sid, counts)
        return merged

    def state(self) -> dict[str, Any]:
        """Plain-data snapshot (for state stores)."""
        return {"n_slices": self.n_slices, "shape": list(self.shape), "dtype": self.dtype,
                "ahead": self.ahead, "head": self._head,
                "slices": {str(k): v.tolist() for k, v in self.slices().items()}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SlicedWindow:
        """Inverse of :meth:`state`."""
        w = cls(int(state["n_slices"]), tuple(int(d) for d in state["shape"]),
                str(state.get("dtype", "int64")), int(state.get("ahead", 0)))
        if state["head"] is not None:
            w.advance(int(state["head"]))
        for sid, counts in state["slices"].items():
            w.add(int(sid), np.asarray(counts, dtype=w.dtype))
        return w
