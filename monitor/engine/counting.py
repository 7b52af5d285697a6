"""Counting a batch's rows into one version's windows.

:func:`count_predictions` adds the on-time predictions of one version to its
feature and score windows, row sample and score ADWIN; :func:`count_joined`
adds joined (prediction, label) pairs to its KPI windows, cumulative confusion
counts, error ADWIN and recall CUSUM (caught or not, per labelled fraud).
Both work on column arrays (one numpy pass per version and batch, never a
Python loop per row).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors import ConfusionCounts, ReferenceProfile, count_by_group
from monitor.config.sections import EvaluationSettings
from monitor.engine.join import PendingEntry
from monitor.engine.state import (
    CAUGHT,
    CAUGHT_SQ,
    CONFUSION_AMOUNTS,
    CONFUSION_COUNTS,
    FN,
    FP,
    MISSED,
    MISSED_SQ,
    TN,
    TP,
    VersionState,
)
from monitor.ingest.columns import PredictionColumns

__all__ = ["CatRows", "bin_columns", "count_joined", "count_predictions", "entry_columns",
           "recall_baseline"]


def entry_columns(entries: list[PendingEntry]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.int64],
                                               npt.NDArray[np.bool_], npt.NDArray[np.float64]]:
    """The version index, slice, decision and amount columns of pending-prediction
    entries (:data:`monitor.engine.join.PendingEntry`)."""
    # one C pass into a float matrix (fromiter over the chained fields): version
    # indexes and slice ids (below 1e11 / slice length) are integers far below
    # 2**53, so they come back exactly
    m = np.fromiter(itertools.chain.from_iterable(entries), dtype=np.float64,
                    count=6 * len(entries)).reshape(len(entries), 6)
    return (m[:, 0].astype(np.intp), m[:, 1].astype(np.int64), m[:, 2] != 0.0,
            np.ascontiguousarray(m[:, 3]))


class CatRows:
    """Row ``i`` of a subset's categorical values, built only when asked for."""

    def __init__(self, cols: PredictionColumns, rows: npt.NDArray[np.intp]) -> None:
        self._cols = [cols.categorical[name] for name in cols.categorical]
        self._rows = rows

    def __len__(self) -> int:
        return int(self._rows.size)

    def __getitem__(self, i: int) -> list[object]:
        r = int(self._rows[i])
        return [c[r] for c in self._cols]


Bins = tuple[tuple[npt.NDArray[np.int64], int], ...]


def bin_columns(ref: ReferenceProfile, cols: PredictionColumns) -> Bins:
    """The batch's bin indexes and numbers of bins: numeric, categorical, score."""
    # with no categorical features, bin_index({}) cannot know the batch length
    # and returns (0, 0): build the (events, 0) index here instead
    cat_idx = (ref.categorical.bin_index(cols.categorical)
               if ref.categorical.features else np.empty((len(cols), 0), dtype=np.int64))
    return ((ref.numeric.bin_index(cols.numeric), ref.numeric.n_columns),
            (cat_idx, ref.categorical.n_columns),
            (ref.score.bin_index(cols.score[:, None]), ref.score.n_columns))


def count_predictions(st: VersionState, cols: PredictionColumns, rows: npt.NDArray[np.intp],
                      late: npt.NDArray[np.bool_], sids: npt.NDArray[np.int64], bins: Bins,
                      head: int, n_slices: int) -> tuple[int, list[int]]:
    """Count rows ``rows`` of ``cols`` (one version's; slice ids ``sids``, bin
    indexes ``bins``) into ``st``: the on-time ones into its windows and row
    sample, all into its totals and score ADWIN. Returns the number of late
    rows and the slice ids whose windows changed."""
    st.predictions_total += rows.size
    st.last_event_ts = float(np.nanmax(cols.ts[rows]))
    ok = rows[~late[rows]]
    n_late = int(rows.size - ok.size)
    st.late_total += n_late
    touched: list[int] = []
    if ok.size:
        u_sids, local = np.unique(sids[ok], return_inverse=True)
        local = local.reshape(-1)
        for win, (idx, ncols) in zip((st.numeric, st.categorical, st.score), bins,
                                     strict=True):
            win.advance(head)
            win.add_many(u_sids, count_by_group(local, idx[ok], u_sids.size, ncols))
        touched = u_sids.tolist()
        if st.sample is not None:
            st.sample.add(sids[ok], cols.numeric[ok], CatRows(cols, ok), cols.score[ok])
    if st.sample is not None:
        st.sample.expire(head - n_slices + 1)
    res = st.adwin_score.update(cols.score[rows])
    st.adwin_score_detections += int(res.change_positions.size)
    return n_late, touched


#: grid of an estimated in-control catch rate (its CUSUM design is cached per value)
BASELINE_GRID = 0.005


def recall_baseline(ev: EvaluationSettings, roles: Mapping[str, str],
                    versions: Mapping[tuple[str, str], VersionState],
                    key: tuple[str, str]) -> float | None:
    """The in-control catch rate of version ``key``'s recall CUSUM: the
    configured ``recall_cusum_p0``; else, for the canary, its champion's
    cumulative catch rate ((tp + 1/2) / (frauds + 1), never 0 or 1; rounded to
    :data:`BASELINE_GRID`) once the champion has ``recall_cusum_min_frauds``
    labelled frauds; else None (no baseline: not monitored, never "ok")."""
    if ev.recall_cusum_p0 is not None:
        return ev.recall_cusum_p0
    champ = versions.get((key[0], roles.get("champion", "")))
    if roles.get("canary") != key[1] or champ is None:
        return None
    c = champ.confusion_total
    if c.frauds < ev.recall_cusum_min_frauds:
        return None
    return round((c.tp + 0.5) / (c.frauds + 1) / BASELINE_GRID) * BASELINE_GRID


def count_joined(st: VersionState, sid: npt.NDArray[np.int64], d: npt.NDArray[np.bool_],
                 y: npt.NDArray[np.bool_], pa: npt.NDArray[np.float64],
                 la: npt.NDArray[np.float64], recall_p0: float | None = None) -> list[int]:
    """Count joined pairs of one version: slice ids, decisions, labels, and the
    prediction's and label's amounts; the frauds' decisions (in label order)
    feed the recall CUSUM with in-control catch rate ``recall_p0`` (None: the
    configured one, if any; without one they are counted as unmonitored).
    Returns the slice ids the KPI windows took (the others had left them:
    counted as late labels)."""
    amount = np.where(np.isnan(pa), la, pa)
    amount = np.where(np.isnan(amount), 0.0, amount)
    cell = np.where(y, np.where(d, TP, FN), np.where(d, FP, TN))
    u_sids, local = np.unique(sid, return_inverse=True)
    local = local.reshape(-1)
    counts = np.zeros((u_sids.size, len(CONFUSION_COUNTS)), dtype=np.int64)
    np.add.at(counts, (local, cell), 1)
    amounts = np.zeros((u_sids.size, len(CONFUSION_AMOUNTS)), dtype=np.float64)
    caught = cell == TP
    missed = cell == FN
    np.add.at(amounts, (local[caught], CAUGHT), amount[caught])
    np.add.at(amounts, (local[missed], MISSED), amount[missed])
    np.add.at(amounts, (local[caught], CAUGHT_SQ), amount[caught] ** 2)
    np.add.at(amounts, (local[missed], MISSED_SQ), amount[missed] ** 2)
    refused = st.kpi_counts.add_many(u_sids, counts)
    st.kpi_amounts.add_many(u_sids, amounts)
    if refused.size:
        st.late_labels_total += int(counts[np.isin(u_sids, refused)].sum())
    # cell i of each window is field i of CONFUSION_COUNTS / CONFUSION_AMOUNTS
    sums = (int((cell == TP).sum()), int((cell == FP).sum()), int((cell == FN).sum()),
            int((cell == TN).sum()), float(amount[caught].sum()), float(amount[missed].sum()),
            float((amount[caught] ** 2).sum()), float((amount[missed] ** 2).sum()))
    kw: dict[str, Any] = dict(zip(CONFUSION_COUNTS + CONFUSION_AMOUNTS, sums, strict=True))
    st.confusion_total = st.confusion_total + ConfusionCounts(**kw)
    st.labels_joined_total += sid.size
    res = st.adwin_error.update((d != y).astype(np.float64))
    st.adwin_error_detections += int(res.change_positions.size)
    if y.any():
        cusum = st.recall_cusum.update(d[y], recall_p0)
        st.recall_cusum_detections += int(cusum.alarm_positions.size)
    return [s for s in u_sids.tolist() if s not in refused]
