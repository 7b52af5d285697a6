"""Columns: decoded events laid out as one array (or list) per field.

What lives here: :class:`PredictionColumns` and :class:`LabelColumns` (the
valid events of a batch), :class:`DecodedBatch` (both, plus the rejections and
the slot table the batch was admitted by), :class:`RawPredictions` (prediction
columns as decoded, before validation) and the event-time helpers
:func:`ts_seconds` and :func:`ts_column`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import numpy.typing as npt

from monitor.ingest.records import Rejected
from monitor.ingest.slots import VersionSlots

__all__ = [
    "DecodedBatch",
    "LabelColumns",
    "PredictionColumns",
    "RawPredictions",
    "ts_column",
    "ts_seconds",
]


@dataclass
class PredictionColumns:
    """A batch of valid predictions as columns."""

    event_id: list[str]
    model: list[str]
    version: list[str]
    ts: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    decision: npt.NDArray[np.bool_]
    amount: npt.NDArray[np.float64]
    numeric: npt.NDArray[np.float64]
    categorical: dict[str, list[object]]
    #: the Kafka partition each event was read from (the label-join buffer is
    #: kept, persisted and handed over per partition)
    partition: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, index: npt.NDArray[np.intp]) -> PredictionColumns:
        """The rows at ``index``, in that order."""
        idx = index.tolist()
        return PredictionColumns(
            event_id=[self.event_id[i] for i in idx],
            model=[self.model[i] for i in idx],
            version=[self.version[i] for i in idx],
            ts=self.ts[index], score=self.score[index], decision=self.decision[index],
            amount=self.amount[index], numeric=self.numeric[index],
            categorical={k: [v[i] for i in idx] for k, v in self.categorical.items()},
            partition=self.partition[index],
        )


@dataclass
class LabelColumns:
    """A batch of valid labels as columns."""

    event_id: list[str]
    label: npt.NDArray[np.int8]
    ts: npt.NDArray[np.float64]
    amount: npt.NDArray[np.float64]
    partition: npt.NDArray[np.int64] = field(default_factory=lambda: np.empty(0, np.int64))

    def __len__(self) -> int:
        return len(self.event_id)

    def take(self, index: npt.NDArray[np.intp]) -> LabelColumns:
        """The rows at ``index``, in that order (as :meth:`PredictionColumns.take`)."""
        return LabelColumns(
            event_id=[self.event_id[i] for i in index.tolist()], label=self.label[index],
            ts=self.ts[index], amount=self.amount[index],
            partition=(self.partition[index] if self.partition.size == len(self)
                       else self.partition))


@dataclass(slots=True)
class RawPredictions:
    """Prediction columns as decoded, before validation."""

    event_id: list[str]
    model: list[str]
    version: list[str]
    ts: npt.NDArray[np.float64]
    score: npt.NDArray[np.float64]
    amount: npt.NDArray[np.float64]
    #: 1 or 0 as given, -1 when none was given, 2 when not a boolean or 0/1
    decision: npt.NDArray[np.int8]
    numeric: npt.NDArray[np.float64]
    categorical: dict[str, list[object]]
    #: row i's decoded struct (for the reason of a row the column checks flag)
    struct_of: Callable[[int], Any]


@dataclass
class DecodedBatch:
    """The outcome of decoding one batch of records."""

    predictions: PredictionColumns
    labels: LabelColumns
    rejected: list[Rejected] = field(default_factory=list)
    #: the slot table the batch's versions were admitted by (the engine follows
    #: it: drops the state of released versions, reserves slots for new roles)
    slots: VersionSlots | None = None


def ts_seconds(value: float | datetime) -> float:
    """Epoch seconds of a number or a timezone-aware datetime."""
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def ts_column(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Event times as epoch seconds: from numbers, RFC 3339 datetimes or None (nan)."""
    try:
        return np.array(values, dtype=np.float64)  # numbers and None only: one C pass
    except TypeError:  # some are datetimes
        return np.fromiter((math.nan if t is None else ts_seconds(t) for t in values),
                           dtype=np.float64, count=len(values))
