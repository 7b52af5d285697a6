"""The streaming engine: per (model, version) window state and evaluation.

The engine takes decoded batches (:class:`monitor.ingest.codec.DecodedBatch`) and
keeps, per model version:

* feature and score histograms against the frozen reference bins, in sliced
  event-time windows;
* confusion and amount-weighted counts of joined labels in a (longer) KPI
  window, plus cumulative totals;
* river ADWIN detectors on the joined error indicator and on the score.

A bounded join buffer matches labels to predictions by event id in either
arrival order (labels usually come late, but across topics they may come
first). Each event id counts once within the dedupe horizon
(:class:`monitor.engine.dedupe.SeenIds`): a copy is counted as a duplicate and
nothing else.

Time is event time, kept per source partition: each partition's watermark is
the largest event timestamp read from it, and the engine's *watermark* is the
minimum over active partitions (one with no records for
``windows.idle_partition_seconds`` stops holding the others back), never
going backwards. A prediction older than ``watermark - allowed_lateness`` (or
whose slice has left the window) is counted as late and kept out of the
windows; a faster partition's slices ahead of the watermark are held (up to
``windows.max_ahead_seconds``) and enter the windows when it gets there.

:meth:`Engine.evaluate` computes PSI/KL/JS per feature and for the score
against the reference and canary-vs-champion, and the KPIs with Wilson
intervals, in O(versions x features x bins).
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
import time
import zlib
from collections import Counter, OrderedDict
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import msgspec
import numpy as np
import numpy.typing as npt

from detectors import (
    BatchADWIN,
    ConfusionCounts,
    ReferenceProfile,
    SlicedWindow,
    compare_proportions,
    count_by_group,
    fraud_kpis,
    js_divergence,
    kl_divergence,
    psi,
)
from detectors.kpi import FraudKPIs
from monitor.config import Settings
from monitor.engine.dedupe import SeenIds, decode_ids, encode_ids, hash_ids
from monitor.engine.reservoir import SliceReservoir
from monitor.engine.store import SEP, Commit, JoinLog
from monitor.ingest.codec import DecodedBatch, LabelColumns, PredictionColumns, VersionSlots

__all__ = ["SCORE_FEATURE", "Engine", "Evaluation", "VersionEvaluation", "VersionState"]

#: The ``feature`` label value used for the model score.
SCORE_FEATURE = "model_score"

# KPI window layout: integer cells and float amount cells.
_TP, _FP, _FN, _TN = range(4)
_CAUGHT, _MISSED, _CAUGHT_SQ, _MISSED_SQ = range(4)


@dataclass
class VersionState:
    """Everything the engine keeps for one (model, version)."""

    model: str
    version: str
    numeric: SlicedWindow
    categorical: SlicedWindow
    score: SlicedWindow
    kpi_counts: SlicedWindow
    kpi_amounts: SlicedWindow
    adwin_error: BatchADWIN
    adwin_score: BatchADWIN
    predictions_total: int = 0
    labels_joined_total: int = 0
    late_total: int = 0
    late_labels_total: int = 0
    confusion_total: ConfusionCounts = field(default_factory=ConfusionCounts)
    sample: SliceReservoir | None = None
    adwin_error_detections: int = 0
    adwin_score_detections: int = 0
    last_event_ts: float = math.nan

    @property
    def window_events(self) -> int:
        """Predictions in the drift window."""
        return int(self.score.total.sum())

    def kpi_confusion(self) -> ConfusionCounts:
        """Confusion counts over the KPI window."""
        c = self.kpi_counts.total
        a = self.kpi_amounts.total
        return ConfusionCounts(
            tp=int(c[_TP]), fp=int(c[_FP]), fn=int(c[_FN]), tn=int(c[_TN]),
            caught_amount=float(a[_CAUGHT]), missed_amount=float(a[_MISSED]),
            caught_amount_sq=float(a[_CAUGHT_SQ]), missed_amount_sq=float(a[_MISSED_SQ]),
        )


@dataclass(frozen=True)
class Divergences:
    """PSI/KL/JS per feature name (the score under :data:`SCORE_FEATURE`)."""

    psi: dict[str, float]
    kl: dict[str, float]
    js: dict[str, float]


@dataclass(frozen=True)
class VersionEvaluation:
    """One version's evaluation."""

    model: str
    version: str
    role: str
    window_events: int
    window_bounds: tuple[float, float] | None
    vs_reference: Divergences | None
    kpis: FraudKPIs
    confusion: ConfusionCounts
    adwin: dict[str, dict[str, float]]


@dataclass(frozen=True)
class CanaryComparison:
    """Canary against champion for one model."""

    model: str
    champion: str
    canary: str
    divergences: Divergences | None
    kpi_tests: dict[str, dict[str, float | str]]


@dataclass(frozen=True)
class Evaluation:
    """A full evaluation of the engine's state at one moment."""

    at: float
    watermark: float
    versions: dict[tuple[str, str], VersionEvaluation]
    canaries: dict[str, CanaryComparison]
    reference_hash: str


@dataclass
class BatchStats:
    """What one :meth:`Engine.process` call did."""

    predictions: int = 0
    labels: int = 0
    late: int = 0
    joined: int = 0



def _entry_columns(entries: list[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64],
                                                npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """The version index, slice, decision and amount columns of pending-prediction
    entries ``(version index, slice, decision, amount, ts, partition)``."""
    # one C pass into a float matrix: version indexes and slice ids (below 1e11
    # / slice length) are integers far below 2**53, so they come back exactly
    m = np.array(entries, dtype=np.float64).reshape(len(entries), 6)
    return (m[:, 0].astype(np.intp), m[:, 1].astype(np.int64), m[:, 2] != 0.0,
            np.ascontiguousarray(m[:, 3]))

class Engine:
    """Window state for every (model, version), fed by decoded batches.

    Parameters
    ----------
    settings : Settings
        Windows, join, evaluation and model settings.
    reference : ReferenceProfile
        The frozen reference (bins and reference counts).
    clock : callable, optional
        Wall clock for evaluation timestamps (default ``time.time``).
    """

    def __init__(
        self,
        settings: Settings,
        reference: ReferenceProfile,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self._check_reference(reference)
        self.reference = reference
        self.versions: dict[tuple[str, str], VersionState] = {}
        self.roles: dict[str, dict[str, str]] = {
            m.name: {"champion": m.champion, **({"canary": m.canary} if m.canary else {})}
            for m in settings.models
        }
        self.watermark = -math.inf
        # event time per source partition of the predictions topic: its largest
        # timestamp, and when (processing time) it last had records
        self.partition_watermarks: dict[int, float] = {}
        self._partition_seen: dict[int, float] = {}
        # partitions with nothing left to read (consumer position at the high
        # watermark): they do not hold the watermark back (set by the service)
        self._caught_up: set[int] = set()
        # the windows' head slice (the watermark's, or further when a partition
        # ran more than windows.max_ahead_seconds ahead)
        self._head: int | None = None
        ds = settings.dedupe
        horizon = settings.dedupe_horizon_seconds
        self.seen_predictions = SeenIds(horizon, max_ids=ds.max_ids) if ds.enabled else None
        self.seen_labels = SeenIds(horizon, max_ids=ds.max_ids) if ds.enabled else None
        # join buffers, in arrival order: event_id ->
        # (version index into _vkeys, slice id, decision, amount, event time, partition)
        self._pending: OrderedDict[str, Any] = OrderedDict()
        self._vkeys: list[tuple[str, str]] = []
        self._vindex: dict[tuple[str, str], int] = {}
        # labels that arrived before their prediction: event_id ->
        # (label, amount, event time or watermark, partition)
        self._orphans: OrderedDict[str, Any] = OrderedDict()
        # with a shared state store: changes to persist, and the stored blobs
        self._pending_log: JoinLog | None = None
        self._orphan_log: JoinLog | None = None
        self._join_store = _JoinStoreState()
        # persistence: slices changed since the last commit, slices written before
        self.touched: set[tuple[str, str, str, int]] = set()
        self._written: dict[tuple[str, str, str], set[int]] = {}
        # when set (by a shared state store), evaluation reads these summed states
        self.global_view: tuple[dict[tuple[str, str], VersionState], float] | None = None
        self.labels_total = 0
        self.duplicates: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.unmatched_labels: Counter[str] = Counter()
        self.invalid: Counter[tuple[str, str]] = Counter()
        self._evaluation: Evaluation | None = None
        self._dirty = True
        self._unstamped_orphans = False
        # the codec's cardinality caps, once a batch decoded under them arrives
        self.slots: VersionSlots | None = None

    # -------------------------------------------------------------- reference
    def _check_reference(self, reference: ReferenceProfile) -> None:
        feats = self.settings.features
        if list(reference.numeric.features) != feats.numeric:
            raise ValueError(f"reference numeric features {list(reference.numeric.features)!r} "
                             f"differ from the configured features.numeric {feats.numeric!r}")
        if list(reference.categorical.features) != feats.categorical:
            raise ValueError(
                f"reference categorical features {list(reference.categorical.features)!r} "
                f"differ from the configured features.categorical {feats.categorical!r}")

    def set_reference(self, reference: ReferenceProfile) -> None:
        """Swap in a new reference; windows restart (their bins changed)."""
        self._check_reference(reference)
        self.reference = reference
        for key, st in list(self.versions.items()):
            fresh = self._new_state(*key)
            fresh.predictions_total = st.predictions_total
            fresh.labels_joined_total = st.labels_joined_total
            fresh.late_total = st.late_total
            fresh.late_labels_total = st.late_labels_total
            fresh.confusion_total = st.confusion_total
            fresh.last_event_ts = st.last_event_ts
            # KPI windows and ADWIN streams do not depend on the bins: keep them
            fresh.kpi_counts, fresh.kpi_amounts = st.kpi_counts, st.kpi_amounts
            fresh.adwin_error, fresh.adwin_score = st.adwin_error, st.adwin_score
            fresh.adwin_error_detections = st.adwin_error_detections
            fresh.adwin_score_detections = st.adwin_score_detections
            self.versions[key] = fresh
        self._dirty = True

    def set_roles(self, model: str, champion: str, canary: str | None) -> None:
        """Change which version is champion and which is canary."""
        if champion == canary:
            raise ValueError(f"canary must differ from champion, both are {champion!r}")
        self.roles[model] = {"champion": champion, **({"canary": canary} if canary else {})}
        if self.slots is not None:
            # the new champion and canary get reserved slots now (junk is evicted)
            self.slots.reserve(model, set(self.roles[model].values()))
            self.release_versions(self.slots.drain_released())
        self._dirty = True

    def follow_slots(self, slots: VersionSlots) -> None:
        """Keep state only for the (model, version) pairs ``slots`` holds: the
        roles get reserved slots there, and state kept from before (restored
        from a store) takes a slot or goes."""
        self.slots = slots
        for model, roles in self.roles.items():
            slots.reserve(model, set(roles.values()))
        for key in list(self.versions):
            if not slots.holds(*key) and slots.admit(*key) is not None:
                self.release_versions([key])
        self.release_versions(slots.drain_released())

    def release_versions(self, keys: list[tuple[str, str]]) -> None:
        """Forget released versions: their windows, counters and series go;
        their slices expire from a state store at the next :meth:`delta`; labels
        that later meet their pending predictions are counted as
        ``driftgate_join_evictions_total{reason="released"}``."""
        for key in keys:
            if self.versions.pop(key, None) is not None:
                self._dirty = True
        if keys:
            gone = set(keys)
            self.touched = {t for t in self.touched if (t[0], t[1]) not in gone}

    def role_of(self, model: str, version: str) -> str:
        roles = self.roles.get(model, {})
        for role, v in roles.items():
            if v == version:
                return role
        return "other"

    # ------------------------------------------------------------------ state
    def _new_state(self, model: str, version: str) -> VersionState:
        w = self.settings.windows
        ev = self.settings.evaluation
        ref = self.reference
        ahead = w.ahead_slices
        return VersionState(
            model=model,
            version=version,
            numeric=SlicedWindow(w.n_slices, (len(ref.numeric.features), ref.numeric.n_columns),
                                 ahead=ahead),
            categorical=SlicedWindow(
                w.n_slices, (len(ref.categorical.features), ref.categorical.n_columns),
                ahead=ahead),
            score=SlicedWindow(w.n_slices, (1, ref.score.n_columns), ahead=ahead),
            kpi_counts=SlicedWindow(w.kpi_n_slices, (4,), ahead=ahead),
            kpi_amounts=SlicedWindow(w.kpi_n_slices, (4,), dtype="float64", ahead=ahead),
            adwin_error=BatchADWIN(delta=ev.adwin_delta),
            adwin_score=BatchADWIN(delta=ev.adwin_delta),
            sample=(SliceReservoir(ev.report_sample_size, w.n_slices,
                                   len(ref.numeric.features), len(ref.categorical.features),
                                   seed=zlib.crc32(f"{model}/{version}".encode()))
                    if ev.report_sample_size else None),
        )

    def state(self, model: str, version: str) -> VersionState:
        key = (model, version)
        st = self.versions.get(key)
        if st is None:
            st = self.versions[key] = self._new_state(model, version)
        return st

    @property
    def pending_predictions(self) -> int:
        return len(self._pending)

    @property
    def pending_labels(self) -> int:
        return len(self._orphans)

    def record_invalid(self, kind: str, reason: str, n: int = 1) -> None:
        """Count rejected records (the codec's reasons) for exposition."""
        self.invalid[(kind, reason)] += n

    # -------------------------------------------------------------- ingestion
    def process(self, batch: DecodedBatch) -> BatchStats:
        """Apply one decoded batch: predictions first, then labels."""
        stats = BatchStats()
        if batch.slots is not None and batch.slots is not self.slots:
            self.follow_slots(batch.slots)
        if len(batch.predictions):
            self._process_predictions(batch.predictions, stats)
        if len(batch.labels):
            self._process_labels(batch.labels, stats)
        if self.slots is not None:
            # after the batch: a version evicted while it was decoded goes too
            self.release_versions(self.slots.drain_released())
        self._expire()
        self._dirty = True
        return stats

    def _partitions_of(self, partition: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.int64]:
        return partition if partition.size == n else np.zeros(n, dtype=np.int64)

    def _drop_copies(self, seen: SeenIds | None, kind: str, ids: list[str],
                     part: npt.NDArray[np.int64], ts: npt.NDArray[np.float64]
                     ) -> npt.NDArray[np.intp] | None:
        """The rows to keep when some are copies of ids seen within the dedupe
        horizon (or of earlier rows of the batch), counting the copies; None when
        every row is new."""
        if seen is None:
            return None
        dup = seen.check_and_add(hash_ids(ids), part, ts)
        n_dup = int(np.count_nonzero(dup))
        if not n_dup:
            return None
        self.duplicates[kind] += n_dup
        return np.flatnonzero(~dup)

    def _watermarks(self, ts: npt.NDArray[np.float64],
                    part: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
        """The engine watermark before each row (the minimum over active partitions
        of their largest timestamp so far, never going back); updates the
        partitions' watermarks and the engine's."""
        now = self.clock()
        start = self.watermark
        here = np.unique(part).tolist()
        floor_ = min(self._holding(now, exclude=here), default=math.inf)
        n = ts.size
        combined = np.full(n, floor_)
        for p in here:
            run = np.where(part == p, ts, -math.inf)
            run[0] = max(run[0], self.partition_watermarks.get(p, -math.inf))
            np.maximum.accumulate(run, out=run)
            np.minimum(combined, run, out=combined)
            self.partition_watermarks[p] = float(run[-1])
            self._partition_seen[p] = now
        # inf only when no partition is known at all (cannot happen with rows)
        combined[np.isinf(combined) & (combined > 0)] = -math.inf
        np.maximum(combined, start, out=combined)
        np.maximum.accumulate(combined, out=combined)
        self.watermark = float(combined[-1])
        prev: npt.NDArray[np.float64] = np.r_[start, combined[:-1]]
        return prev

    def set_partitions(self, assigned: set[int] | None, caught_up: set[int]) -> None:
        """What the source knows of the predictions partitions: those assigned to
        this instance (None: unknown), and those with nothing more to read now
        (the consumer is at their high watermark).

        An assigned partition that has not delivered a record yet holds the
        watermark back (it may hold older events than the others), as a new
        split does in Flink, until it is caught up or idle; a caught-up one stops
        holding it until it has records again; a revoked one is forgotten. The
        watermark moves on if it can.
        """
        marks = self.partition_watermarks
        if assigned is not None:
            now = self.clock()
            for p in list(marks):
                if p not in assigned:
                    del marks[p]
                    self._partition_seen.pop(p, None)
            for p in assigned:
                if p not in marks:
                    marks[p] = -math.inf
                    self._partition_seen[p] = now
        self._caught_up = set(caught_up)
        self.release_idle()

    def set_caught_up(self, partitions: set[int]) -> None:
        """Only the caught-up partitions (see :meth:`set_partitions`)."""
        self.set_partitions(None, partitions)

    def _holding(self, now: float, exclude: Collection[int] = ()) -> list[float]:
        """Watermarks of the partitions that hold event time back: not caught up,
        and with records within ``idle_partition_seconds`` (``exclude`` aside)."""
        idle_after = now - self.settings.windows.idle_partition_seconds
        return [wm for p, wm in self.partition_watermarks.items()
                if p not in exclude and p not in self._caught_up
                and self._partition_seen.get(p, -math.inf) >= idle_after]

    def release_idle(self) -> None:
        """Move the watermark to the minimum over the partitions still holding it
        (records waiting, and records within ``idle_partition_seconds``), or to
        the largest partition watermark when none holds: the held slices of the
        faster partitions then enter the windows."""
        marks = self.partition_watermarks
        if not marks:
            return
        holding = self._holding(self.clock())
        combined = min(holding) if holding else max(marks.values())
        if not combined > self.watermark:  # also: -inf (a partition with no record yet)
            return
        self.watermark = combined
        w = self.settings.windows
        head = math.floor(combined / w.slice_seconds)
        if self._head is not None:
            head = max(head, self._head)
        self._head = head
        self._advance_windows(head)
        self._expire()
        self._dirty = True

    def _advance_windows(self, head: int) -> None:
        n = self.settings.windows.n_slices
        for st in self.versions.values():
            for win in (st.numeric, st.categorical, st.score, st.kpi_counts, st.kpi_amounts):
                win.advance(head)
            if st.sample is not None:
                st.sample.expire(head - n + 1)

    def _process_predictions(self, cols: PredictionColumns, stats: BatchStats) -> None:
        w = self.settings.windows
        n = len(cols)
        part = self._partitions_of(cols.partition, n)
        keep = self._drop_copies(self.seen_predictions, "prediction", cols.event_id, part,
                                 cols.ts)
        if keep is not None:
            cols, part = cols.take(keep), part[keep]
            n = len(cols)
            if not n:
                return
        stats.predictions += n
        # Event i is late if older than the watermark before it (the minimum over
        # active partitions of their largest timestamp) minus the allowed lateness,
        # or if its slice had already left the window when it came. An in-order
        # event whose slice expires later in the same batch is not late: it is
        # counted and expires, as it would have one event at a time.
        prev = self._watermarks(cols.ts, part)
        sids = np.floor(cols.ts / w.slice_seconds).astype(np.int64)
        with np.errstate(invalid="ignore"):
            prev_head = np.floor(prev / w.slice_seconds)
        # a partition more than max_ahead ahead of the watermark moves the windows
        ahead = w.ahead_slices
        forced = np.maximum.accumulate(np.r_[-np.inf if self._head is None else self._head,
                                             sids - ahead])
        np.maximum(prev_head, forced[:-1], out=prev_head)
        late = (cols.ts < prev - w.allowed_lateness_seconds) | (
            sids <= prev_head - w.n_slices)
        head = (max(math.floor(self.watermark / w.slice_seconds), int(forced[-1]))
                if math.isfinite(self.watermark) else int(forced[-1]))
        self._head = head
        if self._unstamped_orphans:
            self._stamp_orphans()
        ref = self.reference
        num_idx = ref.numeric.bin_index(cols.numeric)
        # with no categorical features, bin_index({}) cannot know the batch length
        # and returns (0, 0): build the (events, 0) index here instead
        cat_idx = (ref.categorical.bin_index(cols.categorical)
                   if ref.categorical.features else np.empty((n, 0), dtype=np.int64))
        score_idx = ref.score.bin_index(cols.score[:, None])
        # group rows by (model, version) with a dict (no np.unique over an object
        # array of joined strings); groups are visited in sorted key order
        keys = list(zip(cols.model, cols.version, strict=True))
        group_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        inverse = np.fromiter(map(group_of.__getitem__, keys), dtype=np.intp, count=n)
        for model, version in sorted(group_of):
            st = self.state(model, version)
            rows = np.flatnonzero(inverse == group_of[(model, version)])
            st.predictions_total += rows.size
            st.last_event_ts = float(np.nanmax(cols.ts[rows]))
            ok = rows[~late[rows]]
            n_late = int(rows.size - ok.size)
            st.late_total += n_late
            stats.late += n_late
            if ok.size:
                u_sids, local = np.unique(sids[ok], return_inverse=True)
                local = local.reshape(-1)
                for win, idx, ncols in (
                    (st.numeric, num_idx, ref.numeric.n_columns),
                    (st.categorical, cat_idx, ref.categorical.n_columns),
                    (st.score, score_idx, ref.score.n_columns),
                ):
                    win.advance(head)
                    win.add_many(u_sids, count_by_group(local, idx[ok], u_sids.size, ncols))
                for sid in u_sids.tolist():
                    for kind in ("numeric", "categorical", "score"):
                        self.touched.add((model, version, kind, sid))
                if st.sample is not None:
                    st.sample.add(sids[ok], cols.numeric[ok], _CatRows(cols, ok),
                                  cols.score[ok])
            if st.sample is not None:
                st.sample.expire(head - w.n_slices + 1)
            res = st.adwin_score.update(cols.score[rows])
            st.adwin_score_detections += int(res.change_positions.size)
        self._advance_windows(head)
        # join buffer
        pending = self._pending
        orphans = self._orphans
        ids = cols.event_id
        vidx = [self._version_index(k) for k in group_of]
        entries = zip(map(vidx.__getitem__, inverse.tolist()), sids.tolist(),
                      cols.decision.tolist(), cols.amount.tolist(), cols.ts.tolist(),
                      part.tolist(), strict=True)
        idset = set(ids)
        if len(idset) == n and pending.keys().isdisjoint(idset):
            # the common case: no duplicate; bulk inserts, and only the events
            # whose label came first are looked at one by one
            hits = orphans.keys() & idset if orphans else None
            if not hits and self._pending_log is None:
                pending.update(zip(ids, entries, strict=True))
                new = {}
            elif not hits:
                new = dict(zip(ids, entries, strict=True))
            else:
                pairs = list(zip(ids, entries, strict=True))
                is_hit = list(map(hits.__contains__, ids))
                new = dict(itertools.compress(pairs, map(operator.not_, is_hit)))
                self._join_orphans([(entry, self._pop_orphan(eid))
                                    for eid, entry in itertools.compress(pairs, is_hit)],
                                   stats)
            if new:
                pending.update(new)
                if self._pending_log is not None:
                    self._pending_log.put_many(new)
        else:
            joins: list[tuple[Any, Any]] = []
            for eid, entry in zip(ids, entries, strict=True):
                if eid in pending:
                    self.duplicates["prediction"] += 1
                    continue
                orphan = self._pop_orphan(eid)
                if orphan is not None:
                    joins.append((entry, orphan))
                    continue
                pending[eid] = entry
                if self._pending_log is not None:
                    self._pending_log.put(eid, entry)
            if joins:
                self._join_orphans(joins, stats)
        cap = self.settings.join.max_pending
        while len(pending) > cap:
            eid, entry = pending.popitem(last=False)
            if self._pending_log is not None:
                self._pending_log.delete(eid, entry[5])
            self.evictions["capacity"] += 1

    def _process_labels(self, cols: LabelColumns, stats: BatchStats) -> None:
        n = len(cols)
        if self.seen_labels is not None:
            # a label without a time of its own is remembered from the watermark
            # (or the wall clock, before any prediction)
            fill = self.watermark if math.isfinite(self.watermark) else self.clock()
            keep = self._drop_copies(self.seen_labels, "label", cols.event_id,
                                     self._partitions_of(cols.partition, n),
                                     np.where(np.isnan(cols.ts), fill, cols.ts))
            if keep is not None:
                cols = cols.take(keep)
                n = len(cols)
                if not n:
                    return
        stats.labels += n
        self.labels_total += n
        pending = self._pending
        orphans = self._orphans
        ids = cols.event_id
        # every label takes its prediction out of the buffer, in order, in C; only
        # the labels without one are looked at one by one (they become orphans)
        found = list(map(pending.pop, ids, itertools.repeat(None, n)))
        hit = np.fromiter(map(operator.is_not, found, itertools.repeat(None, n)),
                          dtype=np.bool_, count=n)
        plog, olog = self._pending_log, self._orphan_log
        if not hit.all():
            labels = cols.label.tolist()
            amounts = cols.amount.tolist()
            label_ts = cols.ts.tolist()
            part = cols.partition.tolist() if cols.partition.size == n else [0] * n
            for i in np.flatnonzero(~hit).tolist():
                eid = ids[i]
                if eid in orphans:
                    self.duplicates["label"] += 1
                    continue
                if self.settings.join.max_orphan_labels == 0:
                    self.unmatched_labels["no_prediction"] += 1
                    continue
                # the orphan's age is judged by its own time, else the watermark
                # at arrival (or, before any prediction, at the next expiry pass)
                t = label_ts[i]
                if not math.isfinite(t):
                    t = self.watermark
                    self._unstamped_orphans |= not math.isfinite(t)
                orphans[eid] = entry = (labels[i], amounts[i], t, part[i])
                if olog is not None:
                    olog.put(eid, entry)
            found = list(itertools.compress(found, hit.tolist()))
        if found:
            if plog is not None:
                for eid, p in zip(itertools.compress(ids, hit.tolist()), found, strict=True):
                    plog.delete(eid, p[5])
            vi, sid, dec, amt = _entry_columns(found)
            self._apply_joined(vi, sid, dec, amt, cols.label[hit].astype(np.bool_),
                               cols.amount[hit], stats)
        cap = self.settings.join.max_orphan_labels
        while len(orphans) > cap:
            eid, o = orphans.popitem(last=False)
            if olog is not None:
                olog.delete(eid, o[3])
            self.unmatched_labels["capacity"] += 1

    def _pop_orphan(self, eid: str) -> Any:
        """The label waiting for prediction ``eid``, taken out of the buffer, or None."""
        orphan = self._orphans.pop(eid, None)
        if orphan is not None and self._orphan_log is not None:
            self._orphan_log.delete(eid, orphan[3])
        return orphan

    def _join_orphans(self, joins: list[tuple[Any, Any]], stats: BatchStats) -> None:
        """Count predictions whose label came first: (pending entry, orphan) pairs."""
        entries, orphans = zip(*joins, strict=True)
        vi, sid, dec, amt = _entry_columns(list(entries))
        self._apply_joined(vi, sid, dec, amt,
                           np.array([o[0] for o in orphans], dtype=np.bool_),
                           np.array([o[1] for o in orphans], dtype=np.float64), stats)

    def _apply_joined(
        self,
        vis: npt.NDArray[np.intp],
        sids: npt.NDArray[np.int64],
        decisions: npt.NDArray[np.bool_],
        pred_amounts: npt.NDArray[np.float64],
        labels: npt.NDArray[np.bool_],
        label_amounts: npt.NDArray[np.float64],
        stats: BatchStats,
    ) -> None:
        """Count joined predictions: one row per (prediction, label) pair, in label
        order, with the prediction's version index, slice, decision and amount and
        the label and its amount."""
        for vi in dict.fromkeys(vis.tolist()):
            key = self._vkeys[vi]
            rows = np.flatnonzero(vis == vi)
            if self.slots is not None and not self.slots.holds(*key):
                self.evictions["released"] += rows.size  # the version's slot was released
                continue
            st = self.state(*key)
            sid = sids[rows]
            d = decisions[rows]
            y = labels[rows]
            pa = pred_amounts[rows]
            la = label_amounts[rows]
            amount = np.where(np.isnan(pa), la, pa)
            amount = np.where(np.isnan(amount), 0.0, amount)
            cell = np.where(y, np.where(d, _TP, _FN), np.where(d, _FP, _TN))
            u_sids, local = np.unique(sid, return_inverse=True)
            local = local.reshape(-1)
            counts = np.zeros((u_sids.size, 4), dtype=np.int64)
            np.add.at(counts, (local, cell), 1)
            amounts = np.zeros((u_sids.size, 4), dtype=np.float64)
            caught = cell == _TP
            missed = cell == _FN
            np.add.at(amounts, (local[caught], _CAUGHT), amount[caught])
            np.add.at(amounts, (local[missed], _MISSED), amount[missed])
            np.add.at(amounts, (local[caught], _CAUGHT_SQ), amount[caught] ** 2)
            np.add.at(amounts, (local[missed], _MISSED_SQ), amount[missed] ** 2)
            refused = st.kpi_counts.add_many(u_sids, counts)
            st.kpi_amounts.add_many(u_sids, amounts)
            for s_id in u_sids.tolist():
                if s_id not in refused:
                    self.touched.add((key[0], key[1], "kpi_counts", s_id))
                    self.touched.add((key[0], key[1], "kpi_amounts", s_id))
            if refused.size:
                st.late_labels_total += int(counts[np.isin(u_sids, refused)].sum())
            st.confusion_total = st.confusion_total + ConfusionCounts(
                tp=int((cell == _TP).sum()), fp=int((cell == _FP).sum()),
                fn=int((cell == _FN).sum()), tn=int((cell == _TN).sum()),
                caught_amount=float(amount[caught].sum()),
                missed_amount=float(amount[missed].sum()),
                caught_amount_sq=float((amount[caught] ** 2).sum()),
                missed_amount_sq=float((amount[missed] ** 2).sum()),
            )
            st.labels_joined_total += rows.size
            stats.joined += rows.size
            res = st.adwin_error.update((d != y).astype(np.float64))
            st.adwin_error_detections += int(res.change_positions.size)

    def _version_index(self, key: tuple[str, str]) -> int:
        vi = self._vindex.get(key)
        if vi is None:
            vi = self._vindex[key] = len(self._vkeys)
            self._vkeys.append(key)
        return vi

    def _stamp_orphans(self) -> None:
        """Give labels that came before any prediction the first finite watermark."""
        for eid, o in self._orphans.items():
            if not math.isfinite(o[2]):
                self._orphans[eid] = entry = (o[0], o[1], self.watermark, o[3])
                if self._orphan_log is not None:
                    self._orphan_log.put(eid, entry)
        self._unstamped_orphans = False

    def _expire(self) -> None:
        if not math.isfinite(self.watermark):
            return
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.expire(self.watermark)
        horizon = self.watermark - self.settings.join.ttl_seconds
        pending = self._pending
        plog, olog = self._pending_log, self._orphan_log
        while pending:
            eid, entry = next(iter(pending.items()))
            if entry[4] >= horizon:
                break
            del pending[eid]
            if plog is not None:
                plog.delete(eid, entry[5])
            self.evictions["ttl"] += 1
        orphans = self._orphans
        while orphans:
            eid, o = next(iter(orphans.items()))
            if o[2] >= horizon:
                break
            del orphans[eid]
            if olog is not None:
                olog.delete(eid, o[3])
            self.unmatched_labels["ttl"] += 1

    # ------------------------------------------------------------- evaluation
    def _divergences(self, ref_num: npt.NDArray[Any], ref_cat: npt.NDArray[Any],
                     ref_score: npt.NDArray[Any], st: VersionState) -> Divergences | None:
        if st.window_events == 0 or ref_score.sum() == 0:
            return None
        eps = self.settings.evaluation.eps
        names = list(self.reference.numeric.features) + list(
            self.reference.categorical.features) + [SCORE_FEATURE]
        out_psi: list[float] = []
        out_kl: list[float] = []
        out_js: list[float] = []
        for ref, cur in ((ref_num, st.numeric.total), (ref_cat, st.categorical.total),
                         (ref_score, st.score.total)):
            if ref.shape[0] == 0:
                continue
            out_psi.extend(np.atleast_1d(psi(ref, cur, eps)).tolist())
            out_kl.extend(np.atleast_1d(kl_divergence(ref, cur, eps)).tolist())
            out_js.extend(np.atleast_1d(js_divergence(ref, cur, eps)).tolist())
        return Divergences(dict(zip(names, out_psi, strict=True)),
                           dict(zip(names, out_kl, strict=True)),
                           dict(zip(names, out_js, strict=True)))

    def evaluate(self) -> Evaluation:
        """Evaluate every version now (O(versions x features x bins))."""
        self.release_idle()
        ref = self.reference
        conf = self.settings.evaluation.confidence
        w = self.settings.windows
        versions: dict[tuple[str, str], VersionEvaluation] = {}
        states, watermark = (self.global_view if self.global_view is not None
                             else (self.versions, self.watermark))
        for key, st in states.items():
            counts = st.kpi_confusion()
            bounds = st.score.bounds
            versions[key] = VersionEvaluation(
                model=st.model,
                version=st.version,
                role=self.role_of(*key),
                window_events=st.window_events,
                window_bounds=(None if bounds is None else
                               (bounds[0] * w.slice_seconds, (bounds[1] + 1) * w.slice_seconds)),
                vs_reference=self._divergences(ref.numeric_counts, ref.categorical_counts,
                                               ref.score_counts, st),
                kpis=fraud_kpis(counts, conf),
                confusion=counts,
                adwin={
                    "error": {"mean": st.adwin_error.mean, "width": st.adwin_error.width,
                              "detections": st.adwin_error_detections},
                    "score": {"mean": st.adwin_score.mean, "width": st.adwin_score.width,
                              "detections": st.adwin_score_detections},
                },
            )
        canaries: dict[str, CanaryComparison] = {}
        for model, roles in self.roles.items():
            champ, canary = roles.get("champion"), roles.get("canary")
            if champ is None or canary is None:
                continue
            cst = states.get((model, champ))
            kst = states.get((model, canary))
            if cst is None or kst is None:
                continue
            div = (self._divergences(cst.numeric.total, cst.categorical.total,
                                     cst.score.total, kst)
                   if cst.window_events else None)
            canaries[model] = CanaryComparison(model, champ, canary, div,
                                               _kpi_tests(cst.kpi_confusion(),
                                                          kst.kpi_confusion()))
        ev = Evaluation(at=self.clock(), watermark=watermark, versions=versions,
                        canaries=canaries, reference_hash=ref.content_hash)
        self._evaluation = ev
        self._dirty = False
        return ev

    # ------------------------------------------------------------ persistence
    def _window(self, st: VersionState, kind: str) -> SlicedWindow:
        win: SlicedWindow = getattr(st, kind)
        return win

    def counters(self) -> dict[str, float]:
        """This instance's cumulative counters, flat (for a state store)."""
        out: dict[str, float] = {}
        for (m, v), st in self.versions.items():
            c = st.confusion_total
            for name, value in (
                ("predictions_total", st.predictions_total),
                ("labels_joined_total", st.labels_joined_total),
                ("late_total", st.late_total), ("late_labels_total", st.late_labels_total),
                ("tp", c.tp), ("fp", c.fp), ("fn", c.fn), ("tn", c.tn),
                ("caught_amount", c.caught_amount), ("missed_amount", c.missed_amount),
                ("caught_amount_sq", c.caught_amount_sq),
                ("missed_amount_sq", c.missed_amount_sq),
                ("adwin_error_detections", st.adwin_error_detections),
                ("adwin_score_detections", st.adwin_score_detections),
            ):
                out[SEP.join((m, v, name))] = float(value)
        g = SEP + SEP
        out[g + "labels_total"] = float(self.labels_total)
        if math.isfinite(self.watermark):
            out[g + "watermark"] = self.watermark
            # a shared store takes the minimum over active instances (state.py)
            out[g + "active_until"] = (self.clock()
                                       + self.settings.windows.idle_partition_seconds)
        for name, ctr in (("duplicates", self.duplicates), ("evictions", self.evictions),
                          ("unmatched", self.unmatched_labels)):
            for k, n in ctr.items():
                out[f"{g}{name}:{k}"] = float(n)
        for (kind, reason), n in self.invalid.items():
            out[f"{g}invalid:{kind}:{reason}"] = float(n)
        return out

    def delta(self, instance: str) -> Commit:
        """What changed since the last call, as a store commit (offsets not set)."""
        commit = Commit(instance=instance)
        for key in self.touched:
            m, v, kind, sid = key
            st = self.versions.get((m, v))
            if st is None:
                continue
            arr = self._window(st, kind).get(sid)
            if arr is not None:
                commit.slices[key] = arr
                self._written.setdefault((m, v, kind), set()).add(sid)
        self.touched = set()
        for (m, v, kind), sids in self._written.items():
            st = self.versions.get((m, v))
            live = self._window(st, kind).slice_ids() if st is not None else set()
            gone = sids - live
            if gone:
                commit.expired |= {(m, v, kind, s) for s in gone}
                sids -= gone
        commit.counters = self.counters()
        self._join_delta(commit)
        return commit

    # ------------------------------------------------------- join persistence
    def track_join_changes(self) -> None:
        """Log join-buffer changes (and ids seen) from now on, for :meth:`delta`
        (a state store)."""
        self._pending_log = JoinLog()
        self._orphan_log = JoinLog()
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.logging = True

    def _join_field(self, kind: str) -> str:
        jss = self._join_store
        jss.n += 1
        return f"{jss.epoch:013d}.{jss.n:010d}.{kind}"

    def _join_delta(self, commit: Commit) -> None:
        """Add this batch's join-buffer changes to ``commit``: one blob per partition
        (puts, then deletes), and a snapshot where the blobs since the last one
        outgrew it (which then replaces them all)."""
        if self._pending_log is None or self._orphan_log is None:
            return
        self._ids_delta(commit)
        jss = self._join_store
        kafka = self.settings.kafka
        touched: list[tuple[str, int]] = []
        for log, topic in ((self._pending_log, kafka.predictions_topic),
                           (self._orphan_log, kafka.labels_topic)):
            puts, deletes = log.drain()
            by_part = _by_partition(puts)
            for part in sorted(by_part.keys() | deletes.keys()):
                tp = (topic, part)
                blob = _JOIN_ENCODE((self._vkeys if topic == kafka.predictions_topic else [],
                                     by_part.get(part, []), deletes.get(part, [])))
                name = self._join_field("d")
                commit.join_writes.setdefault(tp, {})[name] = blob
                jss.fields.setdefault(tp, []).append(name)
                jss.log_bytes[tp] = jss.log_bytes.get(tp, 0) + len(blob)
                jss.live[tp] = max(jss.live.get(tp, 0) + len(by_part.get(part, ()))
                                   - len(deletes.get(part, ())), 0)
                touched.append(tp)
        # snapshot a partition once what is stored for it exceeds twice what its
        # live entries would take (plus a floor): the stored bytes stay within
        # about 2 x the live buffer, and each logged byte is re-encoded about once
        due = [tp for tp in touched
               if jss.snap_bytes.get(tp, 0) + jss.log_bytes[tp] > 2 * jss.live[tp]
               * jss.entry_bytes.get(tp, _ENTRY_BYTES_GUESS) + _SNAPSHOT_MIN_BYTES]
        if due:
            self._join_snapshots(commit, due)

    def _ids_delta(self, commit: Commit) -> None:
        """Add the ids seen since the last commit to ``commit``, one field per
        partition and expiry bucket (``i.{bucket}.{n}``) in the partition's join
        hash; every 32 small fields of a bucket are merged into one, and the
        fields of expired buckets are dropped."""
        jss = self._join_store
        kafka = self.settings.kafka
        for seen, topic in ((self.seen_predictions, kafka.predictions_topic),
                            (self.seen_labels, kafka.labels_topic)):
            if seen is None:
                continue
            for part, (hashes, buckets) in sorted(seen.drain().items()):
                tp = (topic, part)
                per = jss.ids.setdefault(tp, {})
                writes = commit.join_writes.setdefault(tp, {})
                for bucket in np.unique(buckets).tolist():
                    sel = buckets == bucket
                    h = hashes[sel]
                    fields = per.setdefault(int(bucket), _IdFields())
                    name = f"i.{bucket}.{self._join_field('i')}"
                    writes[name] = encode_ids(h, buckets[sel])
                    fields.small.append((name, h))
                    if len(fields.small) >= _IDS_MERGE_FIELDS:
                        merged = np.concatenate([x for _, x in fields.small])
                        for old, _ in fields.small:
                            if writes.pop(old, None) is None:
                                commit.join_drops.setdefault(tp, []).append(old)
                        name = f"i.{bucket}.{self._join_field('i')}"
                        writes[name] = encode_ids(merged, np.full(merged.size, bucket,
                                                                  dtype=np.int64))
                        fields.merged.append(name)
                        fields.small = []
            cutoff = seen.cutoff
            if cutoff is None:
                continue
            for tp, per in jss.ids.items():
                if tp[0] != topic:
                    continue
                for bucket in [b for b in per if b < cutoff]:
                    fields = per.pop(bucket)
                    writes = commit.join_writes.get(tp, {})
                    for name in fields.merged + [x for x, _ in fields.small]:
                        if writes.pop(name, None) is None:
                            commit.join_drops.setdefault(tp, []).append(name)

    def _join_snapshots(self, commit: Commit, due: list[tuple[str, int]]) -> None:
        jss = self._join_store
        kafka = self.settings.kafka
        items: dict[tuple[str, int], list[tuple[str, tuple[Any, ...]]]] = {}
        for buf, topic in ((self._pending, kafka.predictions_topic),
                           (self._orphans, kafka.labels_topic)):
            want = {p for t, p in due if t == topic}
            if want:
                grouped = _by_partition(buf, want)
                for p in want:
                    items[(topic, p)] = grouped.get(p, [])
        for tp in due:
            blob = _JOIN_ENCODE((self._vkeys if tp[0] == kafka.predictions_topic else [],
                                 items[tp], []))
            name = self._join_field("s")
            old = jss.fields.get(tp, [])
            writes = commit.join_writes.setdefault(tp, {})
            stored = [f for f in old if writes.pop(f, None) is None]
            if stored:
                commit.join_drops.setdefault(tp, []).extend(stored)
            writes[name] = blob
            jss.fields[tp] = [name]
            jss.snap_bytes[tp] = len(blob)
            jss.log_bytes[tp] = 0
            jss.live[tp] = len(items[tp])
            if items[tp]:
                jss.entry_bytes[tp] = len(blob) / len(items[tp])

    def load_join_state(self, blobs: dict[tuple[str, int], dict[str, bytes]],
                        epoch: int) -> int:
        """Take over the stored join buffers of newly assigned partitions.

        ``blobs`` maps a topic-partition to its stored fields (as written by
        :meth:`delta`); ``epoch`` (the store's clock, ms) orders the fields this
        instance writes from now on after every field already stored. Local
        entries of these partitions are replaced. Returns the entries loaded.
        """
        jss = self._join_store
        kafka = self.settings.kafka
        self.drop_join_partitions(list(blobs))
        blobs = {tp: self._load_ids(tp, fields) for tp, fields in blobs.items()}
        newest = max((int(f.split(".", 1)[0]) for fields in blobs.values() for f in fields),
                     default=0)
        jss.epoch = max(epoch, newest + 1, jss.epoch + 1)
        jss.n = 0
        loaded_p: list[list[tuple[str, tuple[Any, ...]]]] = []
        loaded_o: list[list[tuple[str, tuple[Any, ...]]]] = []
        for tp, fields in blobs.items():
            names = sorted(fields)
            snaps = [i for i, f in enumerate(names) if f.endswith(".s")]
            start = snaps[-1] if snaps else 0
            entries: dict[str, list[Any]] = {}
            for name in names[start:]:
                versions, puts, deletes = _JOIN_DECODE(fields[name])
                own = [self._version_index((str(m), str(v))) for m, v in versions]
                for eid, e in puts:
                    if versions:
                        e[0] = own[e[0]]
                    entries[eid] = e
                for eid in deletes:
                    entries.pop(eid, None)
            jss.fields[tp] = names
            jss.live[tp] = len(entries)
            jss.snap_bytes[tp] = len(fields[names[start]]) if snaps else 0
            jss.log_bytes[tp] = sum(len(fields[f]) for f in names[start + (1 if snaps else 0):])
            # entries in the order they arrived on their partition
            if tp[0] == kafka.predictions_topic:
                loaded_p.append([(eid, (int(e[0]), int(e[1]), bool(e[2]), float(e[3]),
                                        float(e[4]), int(e[5]))) for eid, e in entries.items()])
            else:
                loaded_o.append([(eid, (int(e[0]), float(e[1]), float(e[2]), int(e[3])))
                                 for eid, e in entries.items()])
        # interleave the partitions (and what is here already) by event time,
        # keeping each one's own arrival order: expiry scans from the front
        if any(loaded_p):
            self._pending = OrderedDict(heapq.merge(
                list(self._pending.items()), *loaded_p, key=lambda kv: kv[1][4]))
        if any(loaded_o):
            self._orphans = OrderedDict(heapq.merge(
                list(self._orphans.items()), *loaded_o, key=lambda kv: kv[1][2]))
        self._unstamped_orphans = any(not math.isfinite(o[2]) for part in loaded_o
                                      for _, o in part)
        self._dirty = True
        return sum(map(len, loaded_p)) + sum(map(len, loaded_o))

    def _load_ids(self, tp: tuple[str, int], fields: dict[str, bytes]) -> dict[str, bytes]:
        """Take the stored ids seen of one partition over (the ``i.`` fields);
        returns the other fields (the join buffer's)."""
        kafka = self.settings.kafka
        seen = (self.seen_predictions if tp[0] == kafka.predictions_topic
                else self.seen_labels if tp[0] == kafka.labels_topic else None)
        rest: dict[str, bytes] = {}
        per = self._join_store.ids.setdefault(tp, {})
        hs: list[npt.NDArray[np.uint64]] = []
        bs: list[npt.NDArray[np.int64]] = []
        for name, blob in fields.items():
            if not name.startswith("i."):
                rest[name] = blob
                continue
            bucket = int(name.split(".")[1])
            per.setdefault(bucket, _IdFields()).merged.append(name)
            h, b = decode_ids(blob)
            hs.append(h)
            bs.append(b)
            # this instance's later field names must sort after the stored ones
            self._join_store.epoch = max(self._join_store.epoch,
                                         int(name.split(".")[2]) + 1)
        if seen is not None and hs:
            seen.load(tp[1], np.concatenate(hs), np.concatenate(bs))
        return rest

    def drop_join_partitions(self, tps: list[tuple[str, int]]) -> None:
        """Forget the local join entries (and ids seen) of revoked partitions (the
        store keeps them)."""
        kafka = self.settings.kafka
        jss = self._join_store
        for seen, topic in ((self.seen_predictions, kafka.predictions_topic),
                            (self.seen_labels, kafka.labels_topic)):
            if seen is not None:
                seen.drop(p for t, p in tps if t == topic)
        for t, p in tps:
            if t == kafka.predictions_topic:
                self.partition_watermarks.pop(p, None)
                self._partition_seen.pop(p, None)
        for buf, log, topic, in ((self._pending, self._pending_log, kafka.predictions_topic),
                                 (self._orphans, self._orphan_log, kafka.labels_topic)):
            parts = {p for t, p in tps if t == topic}
            if not parts:
                continue
            for eid in [e for e, v in buf.items() if v[-1] in parts]:
                del buf[eid]
                if log is not None:
                    log.puts.pop(eid, None)
            if log is not None:
                for p in parts:
                    log.deletes.pop(p, None)
        for tp in tps:
            for per in (jss.fields, jss.log_bytes, jss.snap_bytes, jss.live, jss.entry_bytes,
                        jss.ids):
                per.pop(tp, None)

    def _states_from(self, slices: dict[tuple[str, str, str, int], list[bytes]],
                     counters: dict[str, float], target: dict[tuple[str, str], VersionState],
                     head: int | None) -> None:
        if head is None and slices:
            # no watermark stored yet: the windows end at the newest slice (the
            # slices ahead of a watermark are not told apart)
            head = max(sid for _, _, _, sid in slices)
        for (m, v, kind, sid), blobs in slices.items():
            st = target.get((m, v))
            if st is None:
                st = target[(m, v)] = self._new_state(m, v)
            win = self._window(st, kind)
            if head is not None:
                win.advance(head)
            total = np.zeros(win.shape, dtype=win.dtype)
            for blob in blobs:
                total += np.frombuffer(blob, dtype=win.dtype).reshape(win.shape)
            win.add(sid, total)
        for key, value in counters.items():
            parts = key.split(SEP)
            if len(parts) != 3 or not parts[0]:
                continue
            m, v, name = parts
            st = target.get((m, v))
            if st is None:
                st = target[(m, v)] = self._new_state(m, v)
            if name in ("tp", "fp", "fn", "tn", "caught_amount", "missed_amount",
                        "caught_amount_sq", "missed_amount_sq"):
                cur = st.confusion_total
                kw = {f: getattr(cur, f) for f in ("tp", "fp", "fn", "tn", "caught_amount",
                                                   "missed_amount", "caught_amount_sq",
                                                   "missed_amount_sq")}
                kw[name] = int(value) if name in ("tp", "fp", "fn", "tn") else value
                st.confusion_total = ConfusionCounts(**kw)
            elif hasattr(st, name):
                setattr(st, name, int(value))

    def clear_state(self) -> None:
        """Forget everything counted (before a re-sync from the store)."""
        self.versions = {}
        self.watermark = -math.inf
        self.partition_watermarks = {}
        self._partition_seen = {}
        self._head = None
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.clear()
        self.labels_total = 0
        self.duplicates = Counter()
        self.evictions = Counter()
        self.unmatched_labels = Counter()
        self.invalid = Counter()
        self._pending = OrderedDict()
        self._orphans = OrderedDict()
        if self._pending_log is not None:
            self.track_join_changes()
        self._join_store = _JoinStoreState()
        self.touched = set()
        self._written = {}
        self.global_view = None
        self._dirty = True

    def restore(self, slices: dict[tuple[str, str, str, int], bytes],
                counters: dict[str, float]) -> None:
        """Rebuild this instance's state from what it last committed."""
        g = SEP + SEP
        self.watermark = counters.get(g + "watermark", -math.inf)
        self.labels_total = int(counters.get(g + "labels_total", 0))
        for key, value in counters.items():
            if not key.startswith(g):
                continue
            name = key[len(g):]
            group, _, rest = name.partition(":")
            if group == "duplicates":
                self.duplicates[rest] = int(value)
            elif group == "evictions":
                self.evictions[rest] = int(value)
            elif group == "unmatched":
                self.unmatched_labels[rest] = int(value)
            elif group == "invalid":
                kind, _, reason = rest.partition(":")
                self.invalid[(kind, reason)] = int(value)
        head = (math.floor(self.watermark / self.settings.windows.slice_seconds)
                if math.isfinite(self.watermark) else None)
        self._states_from({k: [b] for k, b in slices.items()}, counters, self.versions, head)
        for (m, v, kind, sid) in slices:
            self._written.setdefault((m, v, kind), set()).add(sid)
        if self.slots is not None:  # what was stored is held to the caps again
            self.follow_slots(self.slots)
        self._dirty = True

    def set_global(self, slices: dict[tuple[str, str, str, int], list[bytes]],
                   counters: dict[str, float]) -> None:
        """Evaluate from every instance's summed slices and counters from now on."""
        wm = counters.get(SEP + SEP + "watermark", -math.inf)
        head = (math.floor(wm / self.settings.windows.slice_seconds)
                if math.isfinite(wm) else None)
        states: dict[tuple[str, str], VersionState] = {}
        self._states_from(slices, counters, states, head)
        for key, st in states.items():
            local = self.versions.get(key)
            if local is not None:  # ADWIN streams stay per instance
                st.adwin_error, st.adwin_score = local.adwin_error, local.adwin_score
                st.sample = local.sample
        self.global_view = (states, wm)
        self._dirty = True

    def snapshot(self) -> Evaluation:
        """The latest evaluation, recomputed if any batch arrived since."""
        if self._dirty or self._evaluation is None:
            return self.evaluate()
        return self._evaluation


#: per partition, stored join bytes beyond 2 x the live entries' size that
#: trigger a snapshot (the floor keeps small buffers from re-snapshotting often)
_SNAPSHOT_MIN_BYTES = 64 * 1024
_ENTRY_BYTES_GUESS = 50.0
_JOIN_ENCODE = msgspec.msgpack.Encoder().encode
# a blob: (version table, [(event id, entry)], [deleted event id]); pending
# entries name their version by its index in the blob's table
_JOIN_DECODE = msgspec.msgpack.Decoder(
    tuple[list[tuple[str, str]], list[tuple[str, list[Any]]], list[str]]).decode


_LAST = operator.itemgetter(-1)


def _by_partition(entries: Mapping[str, tuple[Any, ...]], only: set[int] | None = None
                  ) -> dict[int, list[tuple[str, tuple[Any, ...]]]]:
    """``(event id, entry)`` pairs grouped by partition (an entry's last field), each
    group in the mapping's order; C-level passes, no Python loop per entry."""
    if not entries:
        return {}
    parts = np.fromiter(map(_LAST, entries.values()), dtype=np.int64, count=len(entries))
    uniq = np.unique(parts).tolist()
    if only is not None:
        uniq = [p for p in uniq if p in only]
    items = list(entries.items())
    if len(uniq) == 1 and only is None:
        return {uniq[0]: items}
    return {p: list(itertools.compress(items, (parts == p).tolist())) for p in uniq}


@dataclass
class _JoinStoreState:
    """Which join blobs this instance has stored, per topic-partition."""

    epoch: int = 0
    n: int = 0
    fields: dict[tuple[str, int], list[str]] = field(default_factory=dict)
    log_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    snap_bytes: dict[tuple[str, int], int] = field(default_factory=dict)
    live: dict[tuple[str, int], int] = field(default_factory=dict)  # entries, about
    entry_bytes: dict[tuple[str, int], float] = field(default_factory=dict)
    #: the stored fields of ids seen, per partition and expiry bucket
    ids: dict[tuple[str, int], dict[int, _IdFields]] = field(default_factory=dict)


@dataclass
class _IdFields:
    """One partition's stored fields of ids seen in one expiry bucket: merged
    fields, and small ones (one per commit, with their hashes) not yet merged."""

    merged: list[str] = field(default_factory=list)
    small: list[tuple[str, npt.NDArray[np.uint64]]] = field(default_factory=list)


#: small id fields of one partition and bucket merged into one
_IDS_MERGE_FIELDS = 32


class _CatRows:
    """Row ``i`` of a subset's categorical values, built only when asked for."""

    def __init__(self, cols: PredictionColumns, rows: npt.NDArray[np.intp]) -> None:
        self._cols = [cols.categorical[name] for name in cols.categorical]
        self._rows = rows

    def __len__(self) -> int:
        return int(self._rows.size)

    def __getitem__(self, i: int) -> list[object]:
        r = int(self._rows[i])
        return [c[r] for c in self._cols]


def _kpi_tests(champion: ConfusionCounts,
               canary: ConfusionCounts) -> dict[str, dict[str, float | str]]:
    """Canary-vs-champion proportion tests (canary lower than champion)."""
    out: dict[str, dict[str, float | str]] = {}
    pairs = {
        "catch_rate": ((canary.tp, canary.frauds), (champion.tp, champion.frauds)),
        "precision": ((canary.tp, canary.tp + canary.fp),
                      (champion.tp, champion.tp + champion.fp)),
        "alert_rate": ((canary.tp + canary.fp, canary.n), (champion.tp + champion.fp,
                                                          champion.n)),
    }
    for name, ((sa, na), (sb, nb)) in pairs.items():
        if na < 1 or nb < 1:
            continue
        alternative: Literal["two-sided", "less"] = (
            "two-sided" if name == "alert_rate" else "less")
        r = compare_proportions(sa, na, sb, nb, alternative=alternative)
        out[name] = {"difference": r.difference, "p_value": r.p_value, "method": r.method,
                     "alternative": r.alternative, "canary": r.p_a, "champion": r.p_b,
                     "canary_n": float(na), "champion_n": float(nb)}
    return out
