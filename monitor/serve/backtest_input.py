"""Backtest input: read prediction and label files and merge them by event time.

A backtest reads one file (predictions and labels mixed) or two (a predictions
file and a labels file), JSON lines or Parquet, with the format rules of
:class:`monitor.ingest.replay.ReplaySource`: one event per row; a row is a
label when it has the label field and no score field, otherwise a prediction.
Every row is then placed at its *event time* and the rows are fed in event-time
order, whatever their order in the files, so a file holding all predictions
first and all labels after joins as the same events would live.

The event time of a row:

* a prediction: its own ``ts`` (the configured ``fields.ts``);
* a label with a ``ts`` of its own: that ``ts`` (when the label became known);
* a label without one: the event time of the prediction it labels (same event
  id) when that prediction is in the input, so it is fed right after it (a
  label delay of zero: give labels their own ``ts`` for realistic delays); else
  the event time of the row before it in its own file;
* a row whose ``ts`` is missing or unreadable (the codec will refuse it and
  count it as invalid): the event time of the row before it in its file.

Ties are broken deterministically: predictions before labels, then by file,
then by row. The result is a :class:`MergedInput` (row bytes, event times and
kinds, in feeding order).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "e.jsonl").write_text(
...     '{"event_id": "a", "ts": 10, "score": 0.5}\\n'
...     '{"event_id": "b", "ts": 12, "score": 0.5}\\n'
...     '{"event_id": "a", "label": 1, "ts": 11}\\n'
...     '{"event_id": "b", "label": 0}\\n')
>>> m = read_inputs([d / "e.jsonl"], FieldNames())
>>> [(t, k) for t, k in zip(m.times.tolist(), m.kinds.tolist())]
[(10.0, 0), (11.0, 1), (12.0, 0), (12.0, 1)]
>>> m.labels_without_ts
1
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

__all__ = ["LABEL", "PREDICTION", "FieldNames", "MergedInput", "event_seconds", "read_inputs"]

PREDICTION = 0
LABEL = 1

_SUFFIXES = (".jsonl", ".json", ".ndjson", ".parquet")


@dataclass(frozen=True)
class FieldNames:
    """The field names the merge needs (``settings.fields``)."""

    event_id: str = "event_id"
    ts: str = "ts"
    score: str = "score"
    label: str = "label"


@dataclass
class MergedInput:
    """All rows of the input, in feeding (event-time) order."""

    values: list[bytes]
    times: npt.NDArray[np.float64]
    kinds: npt.NDArray[np.int8]
    files: list[str] = field(default_factory=list)
    labels_without_ts: int = 0
    rows_without_time: int = 0

    def __len__(self) -> int:
        return len(self.values)

    @property
    def first_time(self) -> float:
        return float(self.times[0]) if len(self.times) else 0.0

    @property
    def last_time(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def event_seconds(value: Any) -> float | None:
    """Epoch seconds of a ``ts`` value (number, ISO 8601 string or datetime), or None.

    >>> event_seconds(1.5), event_seconds("1970-01-01T00:00:10Z"), event_seconds("x")
    (1.5, 10.0, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, dt.datetime):
        stamp = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
        out = stamp.timestamp()
    elif isinstance(value, str):
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return event_seconds(parsed)
    else:
        return None
    return out if math.isfinite(out) else None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise ValueError(f"input file {str(path)!r} does not exist")
    if path.suffix.lower() not in _SUFFIXES:
        raise ValueError(f"input file {str(path)!r} must be .jsonl or .parquet, got "
                         f"{path.suffix.lower()!r}")


@dataclass
class _FileRows:
    values: list[bytes]
    times: list[float | None]
    kinds: list[int]
    ids: list[Any]


def _head_type(names: FieldNames) -> Any:
    """A msgspec struct decoding only the four fields the merge looks at."""
    rename = {"f_id": names.event_id, "f_ts": names.ts, "f_score": names.score,
              "f_label": names.label}
    return msgspec.defstruct("Head", [(k, Any, msgspec.UNSET) for k in rename],
                             rename=rename)


def _json_rows(path: Path, names: FieldNames) -> Iterator[tuple[bytes, Any]]:
    decoder = msgspec.json.Decoder(_head_type(names))
    with path.open("rb") as fh:
        for raw in fh:
            line = raw.strip()
            if not line:
                continue
            try:
                head = decoder.decode(line)
            except (msgspec.DecodeError, ValueError):
                head = None
            yield line, head


def _read_file(path: Path, names: FieldNames) -> _FileRows:
    rows = _FileRows([], [], [], [])
    unset = msgspec.UNSET
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        enc = msgspec.json.Encoder()
        for row in pq.read_table(path).to_pylist():
            clean = {k: v for k, v in row.items() if v is not None}
            rows.values.append(enc.encode(clean))
            is_label = names.label in clean and names.score not in clean
            rows.kinds.append(LABEL if is_label else PREDICTION)
            rows.times.append(event_seconds(clean.get(names.ts)))
            rows.ids.append(clean.get(names.event_id))
        return rows
    lf, sf = f'"{names.label}"'.encode(), f'"{names.score}"'.encode()
    for line, head in _json_rows(path, names):
        rows.values.append(line)
        if head is None:  # not a JSON object: the codec refuses it, ReplaySource's rule
            rows.kinds.append(LABEL if lf in line and sf not in line else PREDICTION)
            rows.times.append(None)
            rows.ids.append(None)
            continue
        is_label = head.f_label is not unset and head.f_score is unset
        rows.kinds.append(LABEL if is_label else PREDICTION)
        rows.times.append(None if head.f_ts is unset else event_seconds(head.f_ts))
        rows.ids.append(None if head.f_id is unset else head.f_id)
    return rows


def read_inputs(paths: Sequence[Path], names: FieldNames) -> MergedInput:
    """Read ``paths`` (one mixed file, or predictions then labels) and merge them
    by event time (see the module docstring for the rules)."""
    if not paths:
        raise ValueError("no input file given")
    for p in paths:
        _check_file(p)
    per_file = [_read_file(p, names) for p in paths]
    pred_time: dict[str, float] | None = None
    labels_without_ts = 0
    rows_without_time = 0
    values: list[bytes] = []
    times: list[float] = []
    kinds: list[int] = []
    file_no: list[int] = []
    row_no: list[int] = []
    first = next((t for fr in per_file for t in fr.times if t is not None), 0.0)
    for f, fr in enumerate(per_file):
        prev = first
        for i, (value, t, kind, eid) in enumerate(zip(fr.values, fr.times, fr.kinds, fr.ids,
                                                      strict=True)):
            if t is None and kind == LABEL:
                labels_without_ts += 1
                if pred_time is None:
                    pred_time = {str(e): pt for r in per_file
                                 for e, pt, k in zip(r.ids, r.times, r.kinds, strict=True)
                                 if k == PREDICTION and pt is not None and e is not None}
                t = pred_time.get(str(eid)) if eid is not None else None
            if t is None:  # placed after the row before it in its file
                rows_without_time += 1
                t = prev
            prev = t
            values.append(value)
            times.append(t)
            kinds.append(kind)
            file_no.append(f)
            row_no.append(i)
    t_arr = np.asarray(times, dtype=np.float64)
    k_arr = np.asarray(kinds, dtype=np.int8)
    order = np.lexsort((np.asarray(row_no), np.asarray(file_no), k_arr, t_arr))
    return MergedInput(values=[values[i] for i in order.tolist()], times=t_arr[order],
                       kinds=k_arr[order], files=[str(p) for p in paths],
                       labels_without_ts=labels_without_ts,
                       rows_without_time=rows_without_time)
