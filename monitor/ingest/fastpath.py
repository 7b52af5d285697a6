"""The compiled fast path: plain-JSON batches straight to columns, no Python object per value.

What lives here: the import of the C extension ``monitor.ingest._fastdecode``
(``monitor/ingest/_native/fastdecode.c``, parsing with the vendored yyjson),
:data:`FAST_DECODE_AVAILABLE` (whether it was built) and :class:`FastDecoder`,
which calls it with one configuration's keys and buffers.

The extension takes a batch only when every record is one msgspec would decode
to the same values; at the first record it is not certain of it returns that
record's index, and the whole batch takes the msgspec path, which finds and
explains the bad records. ``codec.fast_decode: false`` turns it off.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.config import Settings
from monitor.ingest.columns import RawPredictions

_fast_decode_predictions: Callable[..., object] | None
_fast_decode_labels: Callable[..., object] | None
try:
    from monitor.ingest._fastdecode import decode_labels as _fast_decode_labels
    from monitor.ingest._fastdecode import decode_predictions as _fast_decode_predictions
except ImportError:  # installed without a C compiler: msgspec only
    _fast_decode_predictions = _fast_decode_labels = None

#: whether the compiled fast path (``monitor.ingest._fastdecode``) is installed
FAST_DECODE_AVAILABLE = _fast_decode_predictions is not None

__all__ = ["FAST_DECODE_AVAILABLE", "FastDecoder", "LabelArrays", "lazy_structs"]

#: event ids, label, ts and amount columns, and row i's decoded struct
LabelArrays = tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64],
                    npt.NDArray[np.float64], Callable[[int], Any]]


class FastDecoder:
    """The compiled decoder bound to one configuration's field names and features.

    Build it with :meth:`create`, which returns ``None`` when the extension is
    not installed or ``codec.fast_decode`` is off.
    """

    def __init__(self, settings: Settings, predictions: Callable[..., object],
                 labels: Callable[..., object]) -> None:
        f = settings.fields
        self._predictions = predictions
        self._labels = labels
        self._categorical = list(settings.features.categorical)
        self._n_num = len(settings.features.numeric)
        self._label_keys = tuple(name.encode() for name in (
            f.event_id, f.label, f.ts, f.amount))
        self._keys = tuple(name.encode() for name in (
            f.event_id, f.model, f.model_version, f.ts, f.score, f.decision, f.amount,
            f.features))
        self._features = tuple(
            name.encode() for name in list(settings.features.numeric) + self._categorical)

    @classmethod
    def create(cls, settings: Settings) -> FastDecoder | None:
        """A decoder for ``settings``, or ``None`` (not built, or turned off)."""
        if not settings.codec.fast_decode:
            return None
        if _fast_decode_predictions is None or _fast_decode_labels is None:
            return None
        return cls(settings, _fast_decode_predictions, _fast_decode_labels)

    def predictions(self, values: list[bytes], decoder: msgspec.json.Decoder[Any]
                    ) -> RawPredictions | None:
        """Prediction columns of ``values``, or ``None`` when the extension leaves
        a record of the batch to msgspec. ``decoder`` decodes a row flagged later."""
        n = len(values)
        ts, score, amount = np.empty(n), np.empty(n), np.empty(n)
        decision = np.empty(n, dtype=np.int8)
        numeric = np.empty((n, self._n_num), dtype=np.float64)
        out = self._predictions(values, self._keys, self._features, self._n_num,
                                ts, score, decision, amount, numeric)
        if not isinstance(out, tuple):  # the index of a record left to msgspec
            return None
        ids, models, versions, cats = out
        return RawPredictions(
            event_id=ids, model=models, version=versions, ts=ts, score=score, amount=amount,
            decision=decision, numeric=numeric,
            categorical=dict(zip(self._categorical, cats, strict=True)),
            struct_of=lazy_structs(decoder, values))

    def labels(self, values: list[bytes], decoder: msgspec.json.Decoder[Any]
               ) -> LabelArrays | None:
        """Label columns of ``values`` (and a lazy struct per row), or ``None`` as
        for :meth:`predictions`."""
        n = len(values)
        label, ts, amount = np.empty(n, dtype=np.int64), np.empty(n), np.empty(n)
        out = self._labels(values, self._label_keys, label, ts, amount)
        if not isinstance(out, list):  # the index of a record left to msgspec
            return None
        return out, label, ts, amount, lazy_structs(decoder, values)


def lazy_structs(decoder: msgspec.json.Decoder[Any], values: list[bytes]
                 ) -> Callable[[int], Any]:
    """``i -> the decoded struct of values[i]``: the fast path makes no structs,
    and the reason of a row the column checks flag comes from one."""
    def struct_of(i: int) -> Any:
        return decoder.decode(values[i])
    return struct_of
