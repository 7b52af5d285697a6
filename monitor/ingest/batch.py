"""The msgspec batch path: a whole batch decoded in one call, structs laid out as columns.

What lives here: :func:`plain_values` (whether a batch may be decoded whole, by
the compiled fast path or here), :func:`decode_lines` (every value of a batch
decoded to typed structs with one ``decode_lines`` call) and the transposes of
decoded structs into columns, :func:`prediction_columns` and
:func:`label_columns`. The per-record path (:mod:`monitor.ingest.codec`) takes
any batch this one does not.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.ingest.columns import RawPredictions, ts_column
from monitor.ingest.records import Record

__all__ = ["decode_lines", "label_columns", "plain_values", "prediction_columns"]

_HEADERS = operator.attrgetter("headers")


def plain_values(records: Sequence[Record], cloudevents: bool, max_bytes: int
                 ) -> list[bytes] | None:
    """The record values, if the batch may be decoded whole (by the fast path
    or :func:`decode_lines`): no CloudEvents headers (when ``cloudevents`` is
    on), every value present and within ``max_bytes``. Otherwise ``None``: the
    per-record path decides."""
    if not records or (cloudevents and any(map(_HEADERS, records))):
        return None
    values = [r.value for r in records]
    if None in values or max(map(len, values)) > max_bytes:  # type: ignore[arg-type]
        return None
    return values  # type: ignore[return-value]


def decode_lines(records: Sequence[Record], decoder: msgspec.json.Decoder[Any],
                 cloudevents: bool, max_bytes: int) -> list[Any] | None:
    """Decode a whole batch in one call, or ``None`` if it does not qualify.

    A batch qualifies when every value is a plain (not CloudEvents) JSON
    object within the size limit that starts with ``{`` and ends with ``}``,
    and the whole batch is UTF-8. Values are then joined by newlines and
    decoded with :meth:`msgspec.json.Decoder.decode_lines`. Each value
    ending in ``}`` either completes a top-level object or leaves the parser
    inside a container where the next value's ``{`` is a syntax error, so
    values can never merge; with no merge, the decoded count equals the
    record count only if no value held two objects either. Any error sends
    the batch to the per-record path, which finds the bad records.
    """
    if len(records) < 2:
        return None
    vals = plain_values(records, cloudevents, max_bytes)
    if (vals is None
            or not all(map(bytes.startswith, vals, itertools.repeat(b"{")))
            or not all(map(bytes.endswith, vals, itertools.repeat(b"}")))):
        return None
    joined = b"\n".join(vals)
    try:
        # the whole value must be UTF-8, also in fields the decoder skips
        # (ASCII, the usual case, is checked without building a str)
        if not joined.isascii():
            joined.decode("utf-8")
        out: list[Any] = decoder.decode_lines(joined)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
            RecursionError):
        return None
    if len(out) != len(records):
        return None
    return out


def prediction_columns(structs: list[Any], n_num: int,
                       categorical_features: Sequence[str]) -> RawPredictions:
    """Columns of msgspec-decoded Prediction structs (``n_num`` numeric features)."""
    n = len(structs)
    if n == 0:
        return RawPredictions(
            event_id=[], model=[], version=[], ts=np.empty(0), score=np.empty(0),
            amount=np.empty(0), decision=np.empty(0, dtype=np.int8),
            numeric=np.empty((0, n_num)),
            categorical={name: [] for name in categorical_features},
            struct_of=structs.__getitem__)
    astuple = msgspec.structs.astuple
    # one C-level transpose: event_id, model, version, ts, score, decision, amount,
    # features (the field order of the Prediction struct)
    eid_c, model_c, version_c, ts_c, score_c, dec_c, amt_c, feat_c = zip(
        *map(astuple, structs), strict=True)
    if set(map(type, dec_c)) == {bool}:
        decision = np.array(dec_c, dtype=np.int8)
    else:
        decision = np.fromiter(
            (-1 if d is None else int(d) if isinstance(d, bool) or d in (0, 1) else 2
             for d in dec_c), dtype=np.int8, count=n)
    numeric = np.empty((n, n_num), dtype=np.float64)
    if n_num:
        # the Features struct lists the numeric fields first (n0, n1, ...):
        # one astuple() per event instead of one getattr() per value
        rows: Any = map(astuple, feat_c)
        if categorical_features:
            rows = (r[:n_num] for r in rows)
        numeric[:] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64,
                                 count=n * n_num).reshape(n, n_num)  # None -> nan
    return RawPredictions(
        event_id=list(eid_c), model=list(model_c), version=list(version_c),
        ts=ts_column(ts_c), score=np.array(score_c, dtype=np.float64),
        amount=np.array(amt_c, dtype=np.float64),  # None -> nan
        decision=decision, numeric=numeric,
        categorical={name: list(map(operator.attrgetter(f"c{i}"), feat_c))
                     for i, name in enumerate(categorical_features)},
        struct_of=structs.__getitem__)


def label_columns(structs: list[Any]
                  ) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64],
                             npt.NDArray[np.float64]]:
    """Event ids, label, ts and amount columns of msgspec-decoded Label structs
    (at least one). A label beyond int64 becomes 2, so the checks flag it."""
    eid_t, label_c, ts_c, amt_c = zip(*map(msgspec.structs.astuple, structs), strict=True)
    try:
        label = np.array(label_c, dtype=np.int64)
    except OverflowError:  # an integer beyond int64: flagged by the label checks
        label = np.array([x if -2 <= x <= 2 else 2 for x in label_c], dtype=np.int64)
    ts = ts_column(ts_c)  # None (no time given) -> nan
    amount = np.array(amt_c, dtype=np.float64)
    return list(eid_t), label, ts, amount
