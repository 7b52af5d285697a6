"""Event time per source partition: watermarks, holding and idle release.

Each partition of the predictions topic has a watermark, the largest event
timestamp read from it; the engine's watermark is the minimum over the
partitions that hold event time back (not caught up, and with records within
``windows.idle_partition_seconds``), never going backwards. :class:`EventTime`
keeps these and the windows' head slice; the engine moves its windows when
:meth:`EventTime.release_idle` says the head moved.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterable

import numpy as np
import numpy.typing as npt

from monitor.config import Settings

__all__ = ["EventTime"]


class EventTime:
    """The watermark of each predictions partition and the engine's."""

    def __init__(self, settings: Settings, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.clock = clock
        self.watermark = -math.inf
        # event time per source partition of the predictions topic: its largest
        # timestamp, and when (processing time) it last had records
        self.partitions: dict[int, float] = {}
        self.seen: dict[int, float] = {}
        # partitions with nothing left to read (consumer position at the high
        # watermark): they do not hold the watermark back (set by the service)
        self.caught_up: set[int] = set()
        # the windows' head slice (the watermark's, or further when a partition
        # ran more than windows.max_ahead_seconds ahead)
        self.head: int | None = None

    def advance(self, ts: npt.NDArray[np.float64],
                part: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """The engine watermark before each row (the minimum over active partitions
        of their largest timestamp so far, never going back); updates the
        partitions' watermarks and the engine's."""
        now = self.clock()
        start = self.watermark
        here = np.unique(part).tolist()
        floor_ = min(self.holding(now, exclude=here), default=math.inf)
        n = ts.size
        combined = np.full(n, floor_)
        for p in here:
            run = np.where(part == p, ts, -math.inf)
            run[0] = max(run[0], self.partitions.get(p, -math.inf))
            np.maximum.accumulate(run, out=run)
            np.minimum(combined, run, out=combined)
            self.partitions[p] = float(run[-1])
            self.seen[p] = now
        # inf only when no partition is known at all (cannot happen with rows)
        combined[np.isinf(combined) & (combined > 0)] = -math.inf
        np.maximum(combined, start, out=combined)
        np.maximum.accumulate(combined, out=combined)
        self.watermark = float(combined[-1])
        prev: npt.NDArray[np.float64] = np.r_[start, combined[:-1]]
        return prev

    def place(self, ts: npt.NDArray[np.float64], part: npt.NDArray[np.int64]
              ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.bool_], int]:
        """Advance event time over a batch of predictions (times ``ts`` read from
        partitions ``part``): their slice ids, which are late, and the windows'
        new head slice.

        Event i is late if older than the watermark before it (the minimum over
        active partitions of their largest timestamp) minus the allowed lateness,
        or if its slice had already left the window when it came. An in-order
        event whose slice expires later in the same batch is not late: it is
        counted and expires, as it would have one event at a time.
        """
        w = self.settings.windows
        prev = self.advance(ts, part)
        sids = np.floor(ts / w.slice_seconds).astype(np.int64)
        with np.errstate(invalid="ignore"):
            prev_head = np.floor(prev / w.slice_seconds)
        # a partition more than max_ahead ahead of the watermark moves the windows
        forced = np.maximum.accumulate(np.r_[-np.inf if self.head is None else self.head,
                                             sids - w.ahead_slices])
        np.maximum(prev_head, forced[:-1], out=prev_head)
        late = (ts < prev - w.allowed_lateness_seconds) | (sids <= prev_head - w.n_slices)
        head = (max(math.floor(self.watermark / w.slice_seconds), int(forced[-1]))
                if math.isfinite(self.watermark) else int(forced[-1]))
        self.head = head
        return sids, late, head

    def set_partitions(self, assigned: set[int] | None, caught_up: set[int]) -> None:
        """What the source knows of the predictions partitions: those assigned to
        this instance (None: unknown), and those with nothing more to read now
        (the consumer is at their high watermark).

        An assigned partition that has not delivered a record yet holds the
        watermark back (it may hold older events than the others), as a new
        split does in Flink, until it is caught up or idle; a caught-up one stops
        holding it until it has records again; a revoked one is forgotten.
        """
        marks = self.partitions
        if assigned is not None:
            now = self.clock()
            for p in list(marks):
                if p not in assigned:
                    del marks[p]
                    self.seen.pop(p, None)
            for p in assigned:
                if p not in marks:
                    marks[p] = -math.inf
                    self.seen[p] = now
        self.caught_up = set(caught_up)

    def holding(self, now: float, exclude: Collection[int] = ()) -> list[float]:
        """Watermarks of the partitions that hold event time back: not caught up,
        and with records within ``idle_partition_seconds`` (``exclude`` aside)."""
        idle_after = now - self.settings.windows.idle_partition_seconds
        return [wm for p, wm in self.partitions.items()
                if p not in exclude and p not in self.caught_up
                and self.seen.get(p, -math.inf) >= idle_after]

    def release_idle(self) -> int | None:
        """Move the watermark to the minimum over the partitions still holding it,
        or to the largest partition watermark when none holds; the new head slice
        when the watermark moved, else None."""
        marks = self.partitions
        if not marks:
            return None
        holding = self.holding(self.clock())
        combined = min(holding) if holding else max(marks.values())
        if not combined > self.watermark:  # also: -inf (a partition with no record yet)
            return None
        self.watermark = combined
        head = math.floor(combined / self.settings.windows.slice_seconds)
        if self.head is not None:
            head = max(head, self.head)
        self.head = head
        return head

    def reset(self) -> None:
        """Forget event time (before a re-sync from the store); which partitions
        are caught up stays."""
        self.watermark = -math.inf
        self.partitions = {}
        self.seen = {}
        self.head = None

    def drop(self, partitions: Iterable[int]) -> None:
        """Forget revoked partitions (their watermarks stop counting)."""
        for p in partitions:
            self.partitions.pop(p, None)
            self.seen.pop(p, None)
