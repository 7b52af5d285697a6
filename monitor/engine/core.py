"""The streaming engine: per (model, version) window state, fed by batches.

:class:`Engine` takes decoded batches (:class:`monitor.ingest.columns.DecodedBatch`)
and keeps, per model version (:class:`monitor.engine.state.VersionState`):

* feature and score histograms against the frozen reference bins, in sliced
  event-time windows;
* confusion and amount-weighted counts of joined labels in a (longer) KPI
  window, plus cumulative totals;
* river ADWIN detectors on the joined error indicator and on the score, and a
  Bernoulli CUSUM on the recall stream (caught or not, per labelled fraud).

It composes the parts that do each job: the join buffer that matches labels
to predictions by event id in either arrival order (:mod:`.join`), event time
per source partition (:mod:`.event_time`), the counting of rows into a
version's windows (:mod:`.counting`), evaluation (:mod:`.evaluation`) and what
is written to a state store (:mod:`.persistence`, :mod:`.join`). Each event id
counts once within the dedupe horizon (:class:`monitor.engine.dedupe.SeenIds`):
a copy is counted as a duplicate and nothing else.

Time is event time: the engine's *watermark* is the minimum over active
partitions of their largest timestamp, never going backwards. A prediction
older than ``watermark - allowed_lateness`` (or whose slice has left the
window) is counted as late and kept out of the windows; a faster partition's
slices ahead of the watermark are held (up to ``windows.max_ahead_seconds``)
and enter the windows when it gets there.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from detectors import ReferenceProfile
from monitor.config import Settings
from monitor.engine import persistence
from monitor.engine.counting import (
    bin_columns,
    count_joined,
    count_predictions,
    entry_columns,
    recall_baseline,
)
from monitor.engine.dedupe import SeenIds, hash_ids
from monitor.engine.evaluation import (
    CanaryComparison,
    Divergences,
    Evaluation,
    VersionEvaluation,
    evaluate,
)
from monitor.engine.event_time import EventTime
from monitor.engine.join import O_AMOUNT, O_LABEL, JoinBuffer, OrphanEntry, PendingEntry
from monitor.engine.keys import SliceKey
from monitor.engine.state import SCORE_FEATURE, BatchStats, VersionState, new_state
from monitor.engine.store import Commit
from monitor.ingest.columns import DecodedBatch, LabelColumns, PredictionColumns
from monitor.ingest.slots import VersionSlots

__all__ = [
    "SCORE_FEATURE",
    "BatchStats",
    "CanaryComparison",
    "Divergences",
    "Engine",
    "Evaluation",
    "VersionEvaluation",
    "VersionState",
]


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
        self.event_time = EventTime(settings, clock)
        ds = settings.dedupe
        horizon = settings.dedupe_horizon_seconds
        self.seen_predictions = SeenIds(horizon, max_ids=ds.max_ids) if ds.enabled else None
        self.seen_labels = SeenIds(horizon, max_ids=ds.max_ids) if ds.enabled else None
        self.labels_total = 0
        self.duplicates: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.unmatched_labels: Counter[str] = Counter()
        self.invalid: Counter[tuple[str, str]] = Counter()
        self.join = JoinBuffer(settings, self.seen_predictions, self.seen_labels,
                               self.duplicates, self.evictions, self.unmatched_labels)
        # persistence: slices changed since the last commit, slices written before
        self.slice_log = persistence.SliceLog()
        # when set (by a shared state store), evaluation reads these summed states
        self.global_view: tuple[dict[tuple[str, str], VersionState], float] | None = None
        self._evaluation: Evaluation | None = None
        self._dirty = True
        # the codec's cardinality caps, once a batch decoded under them arrives
        self.slots: VersionSlots | None = None

    # ---------------------------------------------------- views of the parts
    @property
    def watermark(self) -> float:
        """Event time: the minimum over active partitions, never going back."""
        return self.event_time.watermark

    @property
    def partition_watermarks(self) -> dict[int, float]:
        return self.event_time.partitions

    @property
    def _pending(self) -> OrderedDict[str, PendingEntry]:
        return self.join.pending

    @property
    def _orphans(self) -> OrderedDict[str, OrphanEntry]:
        return self.join.orphans

    @property
    def pending_predictions(self) -> int:
        return len(self.join.pending)

    @property
    def pending_labels(self) -> int:
        return len(self.join.orphans)

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
            self.versions[key] = st.rebinned(self._new_state(*key))
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
            self.slice_log.forget_versions(set(keys))

    def role_of(self, model: str, version: str) -> str:
        roles = self.roles.get(model, {})
        for role, v in roles.items():
            if v == version:
                return role
        return "other"

    # ------------------------------------------------------------------ state
    def _new_state(self, model: str, version: str) -> VersionState:
        return new_state(self.settings, self.reference, model, version)

    def state(self, model: str, version: str) -> VersionState:
        key = (model, version)
        st = self.versions.get(key)
        if st is None:
            st = self.versions[key] = self._new_state(model, version)
        return st

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
        keep, n_dup = seen.new_rows(hash_ids(ids), part, ts)
        if n_dup:
            self.duplicates[kind] += n_dup
        return keep

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
        sids, late, head = self.event_time.place(cols.ts, part)
        if self.join.unstamped:
            self.join.stamp_orphans(self.event_time.watermark)
        bins = bin_columns(self.reference, cols)
        # group rows by (model, version) with a dict (no np.unique over an object
        # array of joined strings); groups are visited in sorted key order
        keys = list(zip(cols.model, cols.version, strict=True))
        group_of = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        inverse = np.fromiter(map(group_of.__getitem__, keys), dtype=np.intp, count=n)
        touched = self.slice_log.touched
        for model, version in sorted(group_of):
            rows = np.flatnonzero(inverse == group_of[(model, version)])
            n_late, new_sids = count_predictions(self.state(model, version), cols, rows,
                                                 late, sids, bins, head, w.n_slices)
            stats.late += n_late
            for sid in new_sids:
                for kind in ("numeric", "categorical", "score"):
                    touched.add((model, version, kind, sid))
        self._advance_windows(head)
        # join buffer: entries (plain tuples, see join.PendingEntry) built in C
        # from the columns
        vidx = [self.join.version_index(k) for k in group_of]
        entries: Iterator[PendingEntry] = zip(
            map(vidx.__getitem__, inverse.tolist()), sids.tolist(), cols.decision.tolist(),
            cols.amount.tolist(), cols.ts.tolist(), part.tolist(), strict=True)
        joins = self.join.add_predictions(cols.event_id, entries)
        if joins:
            preds, orphans = zip(*joins, strict=True)
            self._apply_joined(*entry_columns(list(preds)),
                               np.array([o[O_LABEL] for o in orphans], dtype=np.bool_),
                               np.array([o[O_AMOUNT] for o in orphans], dtype=np.float64), stats)

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
        hit, found = self.join.match_labels(cols, self.watermark)
        if found:
            vi, sid, dec, amt = entry_columns(found)
            self._apply_joined(vi, sid, dec, amt, cols.label[hit].astype(np.bool_),
                               cols.amount[hit], stats)

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
        touched = self.slice_log.touched
        for vi in dict.fromkeys(vis.tolist()):
            key = self.join.vkeys[vi]
            rows = np.flatnonzero(vis == vi)
            if self.slots is not None and not self.slots.holds(*key):
                self.evictions["released"] += rows.size  # the version's slot was released
                continue
            st = self.state(*key)
            p0 = recall_baseline(self.settings.evaluation, self.roles.get(key[0], {}),
                                 self.versions, key)
            for s_id in count_joined(st, sids[rows], decisions[rows], labels[rows],
                                     pred_amounts[rows], label_amounts[rows], p0):
                touched.add((key[0], key[1], "kpi_counts", s_id))
                touched.add((key[0], key[1], "kpi_amounts", s_id))
            stats.joined += rows.size

    def _expire(self) -> None:
        wm = self.watermark
        if not math.isfinite(wm):
            return
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.expire(wm)
        self.join.expire(wm - self.settings.join.ttl_seconds)

    # ------------------------------------------------------------- event time
    def set_partitions(self, assigned: set[int] | None, caught_up: set[int]) -> None:
        """What the source knows of the predictions partitions (see
        :meth:`monitor.engine.event_time.EventTime.set_partitions`); the
        watermark moves on if it can."""
        self.event_time.set_partitions(assigned, caught_up)
        self.release_idle()

    def set_caught_up(self, partitions: set[int]) -> None:
        """Only the caught-up partitions (see :meth:`set_partitions`)."""
        self.set_partitions(None, partitions)

    def release_idle(self) -> None:
        """Move the watermark to the minimum over the partitions still holding it
        (records waiting, and records within ``idle_partition_seconds``), or to
        the largest partition watermark when none holds: the held slices of the
        faster partitions then enter the windows."""
        head = self.event_time.release_idle()
        if head is None:
            return
        self._advance_windows(head)
        self._expire()
        self._dirty = True

    def _advance_windows(self, head: int) -> None:
        for st in self.versions.values():
            st.advance(head, self.settings.windows.n_slices)

    # ------------------------------------------------------------- evaluation
    def evaluate(self) -> Evaluation:
        """Evaluate every version now (O(versions x features x bins))."""
        self.release_idle()
        states, watermark = (self.global_view if self.global_view is not None
                             else (self.versions, self.watermark))
        ev = evaluate(self.settings, self.reference, states, watermark, self.roles,
                      self.role_of, self.clock)
        self._evaluation = ev
        self._dirty = False
        return ev

    def snapshot(self) -> Evaluation:
        """The latest evaluation, recomputed if any batch arrived since."""
        if self._dirty or self._evaluation is None:
            return self.evaluate()
        return self._evaluation

    # ------------------------------------------------------------ persistence
    def counters(self) -> dict[str, float]:
        """This instance's cumulative counters, flat (for a state store)."""
        out = persistence.version_counters(self.versions)
        out.update(persistence.global_counters(
            self.labels_total, self.watermark,
            lambda: self.clock() + self.settings.windows.idle_partition_seconds,
            self._groups(), self.invalid))
        return out

    def _groups(self) -> dict[str, Counter[str]]:
        return {"duplicates": self.duplicates, "evictions": self.evictions,
                "unmatched": self.unmatched_labels}

    def delta(self, instance: str) -> Commit:
        """What changed since the last call, as a store commit (offsets not set)."""
        commit = Commit(instance=instance)
        self.slice_log.write(commit, self.versions)
        commit.counters = self.counters()
        self.join.delta(commit)
        return commit

    def track_join_changes(self) -> None:
        """Log join-buffer changes (and ids seen) from now on, for :meth:`delta`
        (a state store)."""
        self.join.track_changes()

    def load_join_state(self, blobs: dict[tuple[str, int], dict[str, bytes]],
                        epoch: int) -> int:
        """Take over the stored join buffers of newly assigned partitions.

        ``blobs`` maps a topic-partition to its stored fields (as written by
        :meth:`delta`); ``epoch`` (the store's clock, ms) orders the fields this
        instance writes from now on after every field already stored. Local
        entries of these partitions are replaced. Returns the entries loaded.
        """
        self._drop_event_time(list(blobs))
        loaded = self.join.load(blobs, epoch)
        self._dirty = True
        return loaded

    def drop_join_partitions(self, tps: list[tuple[str, int]]) -> None:
        """Forget the local join entries (and ids seen) of revoked partitions (the
        store keeps them)."""
        self._drop_event_time(tps)
        self.join.drop_partitions(tps)

    def _drop_event_time(self, tps: list[tuple[str, int]]) -> None:
        topic = self.settings.kafka.predictions_topic
        self.event_time.drop(p for t, p in tps if t == topic)

    def clear_state(self) -> None:
        """Forget everything counted (before a re-sync from the store)."""
        self.versions = {}
        self.event_time.reset()
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.clear()
        self.labels_total = 0
        self.duplicates = Counter()
        self.evictions = Counter()
        self.unmatched_labels = Counter()
        self.invalid = Counter()
        join = self.join
        join.duplicates, join.evictions = self.duplicates, self.evictions
        join.unmatched = self.unmatched_labels
        join.clear()
        self.slice_log = persistence.SliceLog()
        self.global_view = None
        self._dirty = True

    def restore(self, slices: dict[SliceKey, bytes], counters: dict[str, float]) -> None:
        """Rebuild this instance's state from what it last committed."""
        wm, self.labels_total = persistence.restore_globals(counters, self._groups(),
                                                            self.invalid)
        self.event_time.watermark = wm
        persistence.states_from({k: [b] for k, b in slices.items()}, counters, self.versions,
                                persistence.head_of(wm, self.settings.windows.slice_seconds),
                                self._new_state)
        self.slice_log.note_written(slices)
        if self.slots is not None:  # what was stored is held to the caps again
            self.follow_slots(self.slots)
        self._dirty = True

    def set_global(self, slices: dict[SliceKey, list[bytes]],
                   counters: dict[str, float]) -> None:
        """Evaluate from every instance's summed slices and counters from now on."""
        self.global_view = persistence.global_states(
            slices, counters, self.versions, self._new_state,
            self.settings.windows.slice_seconds)
        self._dirty = True

