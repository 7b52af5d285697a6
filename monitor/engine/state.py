"""What the engine keeps per (model, version), and the confusion field names.

:class:`VersionState` holds one version's sliced windows (feature, score and
KPI), ADWIN detectors, recall CUSUM, cumulative counters and row sample; :func:`new_state`
builds an empty one for the configured windows and reference bins. The eight
confusion fields (:data:`CONFUSION_FIELDS`) are named here once: the KPI
windows' cells, the persisted counters and :class:`detectors.ConfusionCounts`
use these names in this order.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any

from detectors import BatchADWIN, BernoulliCUSUM, ConfusionCounts, ReferenceProfile, SlicedWindow
from monitor.config import Settings
from monitor.engine.reservoir import SliceReservoir

__all__ = [
    "CONFUSION_AMOUNTS",
    "CONFUSION_COUNTS",
    "CONFUSION_FIELDS",
    "SCORE_FEATURE",
    "BatchStats",
    "VersionState",
    "new_state",
]

#: The ``feature`` label value used for the model score.
SCORE_FEATURE = "model_score"

#: integer confusion fields, in the order of the KPI count window's cells
CONFUSION_COUNTS = ("tp", "fp", "fn", "tn")
#: float amount fields, in the order of the KPI amount window's cells
CONFUSION_AMOUNTS = ("caught_amount", "missed_amount", "caught_amount_sq", "missed_amount_sq")
CONFUSION_FIELDS = CONFUSION_COUNTS + CONFUSION_AMOUNTS

# KPI window layout: the cells of the fields above, in their order
TP, FP, FN, TN = range(4)
CAUGHT, MISSED, CAUGHT_SQ, MISSED_SQ = range(4)


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
    recall_cusum: BernoulliCUSUM
    predictions_total: int = 0
    labels_joined_total: int = 0
    late_total: int = 0
    late_labels_total: int = 0
    confusion_total: ConfusionCounts = field(default_factory=ConfusionCounts)
    sample: SliceReservoir | None = None
    adwin_error_detections: int = 0
    adwin_score_detections: int = 0
    recall_cusum_detections: int = 0
    last_event_ts: float = math.nan

    @property
    def window_events(self) -> int:
        """Predictions in the drift window."""
        return int(self.score.total.sum())

    def kpi_confusion(self) -> ConfusionCounts:
        """Confusion counts over the KPI window."""
        c = self.kpi_counts.total
        a = self.kpi_amounts.total
        kw: dict[str, Any] = {f: int(c[i]) for i, f in enumerate(CONFUSION_COUNTS)}
        kw.update({f: float(a[i]) for i, f in enumerate(CONFUSION_AMOUNTS)})
        return ConfusionCounts(**kw)

    def advance(self, head: int, n_slices: int) -> None:
        """Move every window's head to slice ``head`` (the row sample keeps the
        drift window's ``n_slices``)."""
        for win in (self.numeric, self.categorical, self.score, self.kpi_counts,
                    self.kpi_amounts):
            win.advance(head)
        if self.sample is not None:
            self.sample.expire(head - n_slices + 1)

    def rebinned(self, fresh: VersionState) -> VersionState:
        """``fresh`` (empty windows under new reference bins) with this state's
        counters, KPI windows, ADWIN streams and recall CUSUM (they do not
        depend on the bins)."""
        fresh.predictions_total = self.predictions_total
        fresh.labels_joined_total = self.labels_joined_total
        fresh.late_total = self.late_total
        fresh.late_labels_total = self.late_labels_total
        fresh.confusion_total = self.confusion_total
        fresh.last_event_ts = self.last_event_ts
        fresh.kpi_counts, fresh.kpi_amounts = self.kpi_counts, self.kpi_amounts
        fresh.adwin_error, fresh.adwin_score = self.adwin_error, self.adwin_score
        fresh.adwin_error_detections = self.adwin_error_detections
        fresh.adwin_score_detections = self.adwin_score_detections
        fresh.recall_cusum = self.recall_cusum
        fresh.recall_cusum_detections = self.recall_cusum_detections
        return fresh

    def window(self, kind: str) -> SlicedWindow:
        """The sliced window of one kind (one of
        :data:`monitor.engine.store.KINDS`)."""
        win: SlicedWindow = getattr(self, kind)
        return win


@dataclass
class BatchStats:
    """What one :meth:`monitor.engine.Engine.process` call did."""

    predictions: int = 0
    labels: int = 0
    late: int = 0
    joined: int = 0


def new_state(settings: Settings, ref: ReferenceProfile, model: str,
              version: str) -> VersionState:
    """An empty state for one version: windows sized by ``settings.windows``
    and the reference's bins."""
    w = settings.windows
    ev = settings.evaluation
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
        kpi_counts=SlicedWindow(w.kpi_n_slices, (len(CONFUSION_COUNTS),), ahead=ahead),
        kpi_amounts=SlicedWindow(w.kpi_n_slices, (len(CONFUSION_AMOUNTS),), dtype="float64",
                                 ahead=ahead),
        adwin_error=BatchADWIN(delta=ev.adwin_delta),
        adwin_score=BatchADWIN(delta=ev.adwin_delta),
        recall_cusum=BernoulliCUSUM(delta=ev.recall_cusum_delta, arl0=ev.recall_cusum_arl0),
        sample=(SliceReservoir(ev.report_sample_size, w.n_slices,
                               len(ref.numeric.features), len(ref.categorical.features),
                               seed=zlib.crc32(f"{model}/{version}".encode()))
                if ev.report_sample_size else None),
    )
