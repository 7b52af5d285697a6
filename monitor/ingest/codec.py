"""Event codec: Kafka records to columnar numpy batches, or a rejection reason.

Prediction and label events are decoded with msgspec into typed structs built
from the configured field names, then laid out as columns (one numpy array per
field, a ``(events, features)`` float matrix for numeric features). Plain JSON
and CloudEvents binary mode (``ce_*`` headers carry the event attributes, the
value carries the data, as KServe's inference logger writes) are accepted.

Plain-JSON prediction and label batches first go through a compiled fast path
(``monitor/_native/fastdecode.c``, parsing with the vendored yyjson) that fills
the columns directly, with no Python object per event or per value. It accepts
a batch only when every record is one msgspec would decode to the same values;
at the first record it is not certain of, the whole batch takes the msgspec
path, which finds and explains the bad records. :data:`FAST_DECODE_AVAILABLE`
says whether the extension was built; ``codec.fast_decode: false`` turns it off.

A record that does not decode or validate becomes a :class:`Rejected` with one
of the :data:`REASONS`; the valid records of the same batch are unaffected.
The only exception :meth:`EventCodec.decode` can raise for bad *input* is none:
bad input is always returned as a rejection.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.config import Settings

_fast_decode_predictions: Callable[..., object] | None
_fast_decode_labels: Callable[..., object] | None
try:
    from monitor.ingest._fastdecode import decode_labels as _fast_decode_labels
    from monitor.ingest._fastdecode import decode_predictions as _fast_decode_predictions
except ImportError:  # installed without a C compiler: msgspec only
    _fast_decode_predictions = _fast_decode_labels = None

#: whether the compiled fast path (``monitor.ingest._fastdecode``) is installed
FAST_DECODE_AVAILABLE = _fast_decode_predictions is not None

__all__ = [
    "FAST_DECODE_AVAILABLE",
    "REASONS",
    "DecodedBatch",
    "EventCodec",
    "LabelColumns",
    "PredictionColumns",
    "RawRecord",
    "Record",
    "Rejected",
    "VersionSlots",
]

#: Every reason a record can be rejected for (the ``reason`` metric label).
REASONS = (
    "empty",
    "too_large",
    "not_json",
    "not_utf8",
    "wrong_type",
    "missing_field",
    "bad_event_id",
    "bad_timestamp",
    "future_timestamp",
    "score_out_of_range",
    "score_not_finite",
    "bad_amount",
    "bad_label",
    "unknown_model",
    "too_many_models",
    "too_many_versions",
    "cloudevents_header",
    "unknown_topic",
    "too_deep",
)

_CE_REQUIRED = ("ce_id", "ce_specversion", "ce_type", "ce_source")
EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Timestamp = float | Annotated[datetime, msgspec.Meta(tz=True)]


class Record(Protocol):
    """What the codec reads of a record: aiokafka's ``ConsumerRecord`` and
    :class:`RawRecord` both fit, so Kafka records are decoded without a copy."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...

    @property
    def key(self) -> bytes | None: ...


@dataclass(slots=True)
class RawRecord:
    """One record as read from a source other than the Kafka consumer."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None
    key: bytes | None = None


@dataclass(slots=True)
class Rejected:
    """A record that was not accepted, with the reason and a readable detail."""

    record: Record
    reason: str
    detail: str


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
class _RawPredictions:
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


def _ts_seconds(value: float | datetime) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value)


def _ts_column(values: Sequence[Any]) -> npt.NDArray[np.float64]:
    """Event times as epoch seconds: from numbers, RFC 3339 datetimes or None (nan)."""
    try:
        return np.array(values, dtype=np.float64)  # numbers and None only: one C pass
    except TypeError:  # some are datetimes
        return np.fromiter((math.nan if t is None else _ts_seconds(t) for t in values),
                           dtype=np.float64, count=len(values))


def _flagged_problems(bad: npt.NDArray[np.bool_], struct_of: Callable[[int], Any],
                      validate: Callable[[Any], tuple[str, str] | None]
                      ) -> dict[int, tuple[str, str]]:
    """The reason and detail of every row the column checks flagged in ``bad``,
    from the per-record rules (``struct_of(i)`` is row i's decoded event); a
    row those accept is unflagged in ``bad``."""
    problems: dict[int, tuple[str, str]] = {}
    if bad.any():
        for i in np.flatnonzero(bad).tolist():
            problem = validate(struct_of(i))
            if problem is None:
                bad[i] = False
            else:
                problems[i] = problem
    return problems


_PARTITION = operator.attrgetter("partition")
_HEADERS = operator.attrgetter("headers")
_MISSING_RE = re.compile(r"missing required field `([^`]*)`")
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")


class VersionSlots:
    """Which (model, version) pairs may hold state: the cardinality caps.

    Every model has ``max_versions`` slots (``models[].max_versions``, or
    ``codec.unknown_model_max_versions`` for a model that is not configured),
    and at most ``codec.max_models`` models hold slots (configured models
    always do; the others share what is left). The champion and canary of a
    model hold *reserved* slots: they are counted against the cap before any
    other version is, are always admitted, and never released. When a version
    becomes reserved while the model's slots are full (a canary set at run time
    through the admin API, see :meth:`reserve`), the least recently seen other
    version is evicted to make room. A version that is not reserved and has not
    been admitted for ``codec.version_idle_seconds`` of wall clock releases its
    slot (then an unknown model with no version left releases its own).

    Released pairs are queued for the engine (:meth:`drain_released`), which
    drops their state, so their exported series go with them. At most
    :attr:`max_pairs` pairs hold a slot at any time.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        codec = settings.codec
        self.clock = clock
        self._configured = {m.name: m.max_versions for m in settings.models}
        self._unknown_cap = codec.unknown_model_max_versions
        # models that are not configured share what the configured leave (none
        # unless codec.allow_unknown_models: they are refused as unknown_model)
        self._unknown_models_cap = (max(0, codec.max_models - len(self._configured))
                                    if codec.allow_unknown_models else 0)
        self._idle = codec.version_idle_seconds
        self._reserved: dict[str, set[str]] = {
            m.name: {v for v in (m.champion, m.canary) if v} for m in settings.models}
        # model -> version -> wall-clock time last admitted, least recent first
        self._held: dict[str, OrderedDict[str, float]] = {m: OrderedDict()
                                                          for m in self._configured}
        self._unknown_models = 0
        self._released: list[tuple[str, str]] = []
        self._next_sweep = -math.inf
        #: pairs refused, per reason (too_many_models, too_many_versions)
        self.refused: Counter[str] = Counter()

    # ----------------------------------------------------------------- queries
    @property
    def max_pairs(self) -> int:
        """The most (model, version) pairs that can hold a slot at once."""
        configured = sum(max(cap, len(self._reserved[m])) for m, cap in
                         self._configured.items())
        return configured + self._unknown_models_cap * self._unknown_cap

    def cap(self, model: str) -> int:
        return self._configured.get(model, self._unknown_cap)

    def holds(self, model: str, version: str) -> bool:
        held = self._held.get(model)
        return held is not None and version in held

    def reserved(self, model: str) -> set[str]:
        return set(self._reserved.get(model, ()))

    def pairs(self) -> list[tuple[str, str]]:
        return [(m, v) for m, held in self._held.items() for v in held]

    # ----------------------------------------------------------------- changes
    def admit(self, model: str, version: str) -> str | None:
        """Admit one (model, version) seen now: ``None``, or the reason it is
        refused (``too_many_models`` or ``too_many_versions``)."""
        now = self.clock()
        self.tick(now)
        held = self._held.get(model)
        if held is not None and version in held:
            held[version] = now
            held.move_to_end(version)
            return None
        if held is None:
            if self._unknown_models >= self._unknown_models_cap:
                self.refused["too_many_models"] += 1
                return "too_many_models"
            held = self._held[model] = OrderedDict()
            self._unknown_models += 1
        reserved = self._reserved.get(model, set())
        if version not in reserved and self._others(model) + len(reserved) >= self.cap(model):
            self.refused["too_many_versions"] += 1
            if not held:  # an unknown model refused its first version: no slot taken
                self._drop_model(model)
            return "too_many_versions"
        held[version] = now
        if version in reserved:
            self._make_room(model)
        return None

    def reserve(self, model: str, versions: set[str]) -> None:
        """Make ``versions`` the model's reserved versions (its champion and
        canary); room is made for them at once by evicting the least recently
        seen other versions."""
        if model not in self._configured:
            return  # roles exist for configured models only
        self._reserved[model] = set(versions)
        self._make_room(model)

    def tick(self, now: float | None = None) -> None:
        """Release idle slots if a sweep is due (every tenth of the idle time,
        at most a minute apart)."""
        now = self.clock() if now is None else now
        if now >= self._next_sweep:
            self.release_idle(now)

    def release_idle(self, now: float | None = None) -> None:
        """Release the slots of versions not admitted for ``version_idle_seconds``."""
        if self._idle is None:
            return
        now = self.clock() if now is None else now
        self._next_sweep = now + min(self._idle / 10, 60.0)
        horizon = now - self._idle
        for model in list(self._held):
            held = self._held[model]
            reserved = self._reserved.get(model, set())
            for version in [v for v, t in held.items() if t < horizon and v not in reserved]:
                del held[version]
                self._released.append((model, version))
            if not held and model not in self._configured:
                self._drop_model(model)

    def drain_released(self) -> list[tuple[str, str]]:
        """The pairs released since the last call."""
        out, self._released = self._released, []
        return out

    def _others(self, model: str) -> int:
        reserved = self._reserved.get(model, set())
        return sum(1 for v in self._held[model] if v not in reserved)

    def _make_room(self, model: str) -> None:
        held = self._held[model]
        reserved = self._reserved.get(model, set())
        excess = self._others(model) + len(reserved) - self.cap(model)
        for version in [v for v in held if v not in reserved][:max(excess, 0)]:
            del held[version]  # least recently seen first
            self._released.append((model, version))

    def _drop_model(self, model: str) -> None:
        if self._held.pop(model, None) is not None and model not in self._configured:
            self._unknown_models -= 1


class EventCodec:
    """Decodes records of the predictions and labels topics.

    Parameters
    ----------
    settings : Settings
        Field names, features, models, size limit and CloudEvents options.
    version_allowed : callable, optional
        ``(model, version) -> bool`` (a refusal is ``too_many_versions``);
        by default the :class:`VersionSlots` cardinality caps decide.
    slots : VersionSlots, optional
        The slot table (default: a new one on ``settings`` and ``clock``).
    """

    def __init__(
        self,
        settings: Settings,
        version_allowed: Callable[[str, str], bool] | None = None,
        clock: Callable[[], float] = time.time,
        slots: VersionSlots | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        #: called with (model, version, reason, count) for the decoded predictions
        #: a batch refused (a refused canary is unmonitored: its verdict says so)
        self.on_refused: Callable[[str, str, str, int], None] | None = None
        #: the cardinality caps (None with a ``version_allowed`` hook)
        self.slots = (slots or VersionSlots(settings, clock)) if version_allowed is None \
            else None
        # events stamped later than this (wall clock + allowed skew, set per
        # decode call) are refused as future_timestamp; inf: no check
        self._future_skew = settings.future_skew_seconds
        self._not_after = math.inf
        f = settings.fields
        self.numeric_features = list(settings.features.numeric)
        self.categorical_features = list(settings.features.categorical)
        feat_fields: list[tuple[str, Any, Any]] = []
        rename: dict[str, str] = {}
        for i, name in enumerate(self.numeric_features):
            feat_fields.append((f"n{i}", float | None, None))
            rename[f"n{i}"] = name
        for i, name in enumerate(self.categorical_features):
            feat_fields.append((f"c{i}", str | int | float | bool | None, None))
            rename[f"c{i}"] = name
        # gc=False: decoded events hold only scalars (and the Features struct), so
        # they can never be part of a reference cycle; untracked, a batch of
        # thousands of them does not trigger and lengthen cyclic-GC passes
        features_type = msgspec.defstruct("Features", feat_fields, rename=rename, gc=False)
        self._features_type = features_type
        pred_rename = {
            "event_id": f.event_id, "model": f.model, "model_version": f.model_version,
            "ts": f.ts, "score": f.score, "decision": f.decision, "amount": f.amount,
            "features": f.features,
        }
        self._prediction_type = msgspec.defstruct(
            "Prediction",
            [
                ("event_id", EventId),
                ("model", Name),
                ("model_version", Name),
                ("ts", Timestamp),
                ("score", float),
                ("decision", bool | int | None, None),
                ("amount", float | None, None),
                ("features", features_type, msgspec.field(default_factory=features_type)),
            ],
            rename=pred_rename,
            gc=False,
        )
        self._label_type = msgspec.defstruct(
            "Label",
            [("event_id", EventId), ("label", int | bool), ("ts", Timestamp | None, None),
             ("amount", float | None, None)],
            rename={"event_id": f.event_id, "label": f.label, "ts": f.ts, "amount": f.amount},
            gc=False,
        )
        self._pred_decoder = msgspec.json.Decoder(self._prediction_type)
        self._label_decoder = msgspec.json.Decoder(self._label_type)
        self._any_decoder = msgspec.json.Decoder()
        self._raw_object_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self._models = {m.name: m for m in settings.models}
        self._version_allowed = version_allowed
        self._n_num = len(self.numeric_features)
        # per-record hot path: settings are frozen, so look these up once
        self._max_bytes = settings.codec.max_message_bytes
        self._max_amount = settings.codec.max_amount
        self._allow_unknown_models = settings.codec.allow_unknown_models
        self._cloudevents = settings.cloudevents.enabled
        self._fast = _fast_decode_predictions if settings.codec.fast_decode else None
        self._fast_labels = _fast_decode_labels if settings.codec.fast_decode else None
        self._fast_label_keys = tuple(name.encode() for name in (
            f.event_id, f.label, f.ts, f.amount))
        self._fast_keys = tuple(name.encode() for name in (
            f.event_id, f.model, f.model_version, f.ts, f.score, f.decision, f.amount,
            f.features))
        self._fast_features = tuple(
            name.encode() for name in self.numeric_features + self.categorical_features)
        #: batches (predictions and labels apart) decoded by the fast path, those
        #: it left to msgspec, and all that msgspec decoded
        self.fast_batches = 0
        self.fast_fallbacks = 0
        self.msgspec_batches = 0

    # ------------------------------------------------------------------ helpers
    def _admit(self, model: str, version: str) -> tuple[str, str] | None:
        """``None`` when (model, version) may hold state, else the reason and detail."""
        if self.slots is None:
            if self._version_allowed is None or self._version_allowed(model, version):
                return None
            return self._too_many_versions(model, version)
        reason = self.slots.admit(model, version)
        if reason is None:
            return None
        if reason == "too_many_models":
            return reason, (f"{self.settings.fields.model} {model!r} exceeds the model limit "
                            f"(codec.max_models {self.settings.codec.max_models})")
        return self._too_many_versions(model, version)

    def threshold(self, model: str) -> float:
        cfg = self._models.get(model)
        return cfg.threshold if cfg is not None else 0.5

    def _classify(self, exc: Exception, score_field: str, value: bytes | None = None
                  ) -> tuple[str, str]:
        msg = str(exc)
        if isinstance(exc, UnicodeDecodeError):
            return "not_utf8", f"a string in the value is not UTF-8: {exc}"
        if isinstance(exc, RecursionError):
            return "too_deep", "the value nests too deeply"
        if isinstance(exc, msgspec.DecodeError) and not isinstance(exc, msgspec.ValidationError):
            try:
                (value or b"").decode("utf-8")
            except UnicodeDecodeError as uexc:
                return "not_utf8", f"value is not UTF-8: {uexc}"
            return "not_json", msg
        missing = _MISSING_RE.search(msg)
        if missing:
            return "missing_field", msg
        path = _PATH_RE.search(msg)
        where = path.group(1) if path else ""
        if where == score_field and "out of range" in msg:
            return "score_not_finite", msg
        if "RFC3339" in msg or "timezone" in msg.lower() or "datetime" in msg:
            return "bad_timestamp", msg
        if "length" in msg and where == self.settings.fields.event_id:
            return "bad_event_id", msg
        return "wrong_type", msg

    def _precheck(self, rec: Record) -> Rejected | None:
        if rec.value is None or len(rec.value) == 0:
            return Rejected(rec, "empty", "record has no value")
        limit = self._max_bytes
        if len(rec.value) > limit:
            return Rejected(rec, "too_large", f"value of {len(rec.value)} bytes exceeds the "
                            f"limit of {limit} bytes")
        try:
            rec.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            return Rejected(rec, "not_utf8", f"value is not UTF-8: {exc}")
        return None

    def _cloudevent_body(self, rec: Record, kind: str) -> Any:
        headers: dict[str, bytes] = {}
        for k, v in rec.headers:
            headers[k] = v
        if "ce_specversion" not in headers:
            return None
        missing = [h for h in _CE_REQUIRED if not headers.get(h)]
        if missing:
            raise _RejectError("cloudevents_header", f"binary-mode CloudEvent lacks header(s) "
                          f"{missing!r}")
        try:
            hv = {k: v.decode("utf-8") for k, v in headers.items()
                  if k.startswith("ce_") and v is not None}
        except UnicodeDecodeError as exc:
            raise _RejectError("cloudevents_header", f"a ce_* header is not UTF-8: {exc}") from exc
        if hv["ce_specversion"] != "1.0":
            raise _RejectError("cloudevents_header", f"unsupported ce_specversion "
                          f"{hv['ce_specversion']!r} (want '1.0')")
        # keep the body's values raw, so the typed decode below reports field
        # paths (and reasons) exactly as for plain JSON events
        try:
            (rec.value or b"").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _RejectError("not_utf8", f"value is not UTF-8: {exc}") from exc
        try:
            body = self._raw_object_decoder.decode(rec.value or b"")
        except msgspec.ValidationError as exc:
            raise _RejectError("wrong_type", f"CloudEvent data must be a JSON object: "
                               f"{exc}") from exc
        f = self.settings.fields
        ce = self.settings.cloudevents
        fills = {f.event_id: hv["ce_id"]}
        if "ce_time" in hv:
            fills[f.ts] = hv["ce_time"]
        if kind == "prediction":
            if ce.model_header in hv:
                fills[f.model] = hv[ce.model_header]
            if ce.version_header in hv:
                fills[f.model_version] = hv[ce.version_header]
        for key, value in fills.items():
            if key not in body:
                body[key] = msgspec.Raw(msgspec.json.encode(value))
        return msgspec.json.encode(body)

    def _decode_one(self, rec: Record, decoder: msgspec.json.Decoder[Any], typ: Any,
                    kind: str) -> Any:
        if self._cloudevents and rec.headers:
            body = self._cloudevent_body(rec, kind)
            if body is not None:
                return decoder.decode(body)
        return decoder.decode(rec.value or b"")

    # -------------------------------------------------------------- public API
    def decode(
        self,
        predictions: Sequence[Record],
        labels: Sequence[Record] = (),
    ) -> DecodedBatch:
        """Decode prediction and label records into columns plus rejections."""
        if self._future_skew is not None:
            self._not_after = self.clock() + self._future_skew
        if self.slots is not None:
            self.slots.tick()
        rejected: list[Rejected] = []
        preds = self._decode_predictions(predictions, rejected)
        _in_record_order(rejected, predictions)
        label_rejected: list[Rejected] = []
        labs = self._decode_labels(labels, label_rejected)
        _in_record_order(label_rejected, labels)
        rejected += label_rejected
        return DecodedBatch(preds, labs, rejected, slots=self.slots)

    def _batch_decode(self, records: Sequence[Record],
                      decoder: msgspec.json.Decoder[Any]) -> list[Any] | None:
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
        vals = self._plain_values(records)
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

    def _decode_structs(self, records: Sequence[Record], decoder: msgspec.json.Decoder[Any],
                        typ: Any, kind: str, score_field: str,
                        rejected: list[Rejected]) -> tuple[list[Any], Sequence[Record]]:
        """Typed structs of the records that decode, and those records."""
        fast = self._batch_decode(records, decoder)
        if fast is not None:
            return fast, records
        structs: list[Any] = []
        kept: list[Record] = []
        for rec in records:
            pre = self._precheck(rec)
            if pre is not None:
                rejected.append(pre)
                continue
            try:
                ev = self._decode_one(rec, decoder, typ, kind)
            except _RejectError as rj:
                rejected.append(Rejected(rec, rj.reason, rj.detail))
                continue
            except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError,
                    RecursionError) as exc:
                reason, detail = self._classify(exc, score_field, rec.value)
                rejected.append(Rejected(rec, reason, detail))
                continue
            structs.append(ev)
            kept.append(rec)
        return structs, kept

    def _decode_predictions(self, records: Sequence[Record],
                            rejected: list[Rejected]) -> PredictionColumns:
        raw = self._fast_predictions(records)
        if raw is not None:
            return self._prediction_columns(raw, records, rejected)
        if records:
            self.msgspec_batches += 1
        structs, kept = self._decode_structs(
            records, self._pred_decoder, self._prediction_type, "prediction",
            self.settings.fields.score, rejected)
        return self._prediction_columns(self._struct_columns(structs), kept, rejected)

    @property
    def fast_path(self) -> bool:
        """Whether plain-JSON batches try the compiled fast path (built and on)."""
        return self._fast is not None

    def _fast_predictions(self, records: Sequence[Record]) -> _RawPredictions | None:
        """The batch's columns from the compiled fast path, or ``None`` when it is
        not installed, not enabled, or leaves any record of the batch to msgspec."""
        fast = self._fast
        values = self._plain_values(records) if fast is not None else None
        if fast is None or values is None:
            return None
        n = len(values)
        ts, score, amount = np.empty(n), np.empty(n), np.empty(n)
        decision = np.empty(n, dtype=np.int8)
        numeric = np.empty((n, self._n_num), dtype=np.float64)
        out = fast(values, self._fast_keys, self._fast_features, self._n_num,
                   ts, score, decision, amount, numeric)
        if not isinstance(out, tuple):  # the index of a record left to msgspec
            self.fast_fallbacks += 1
            return None
        self.fast_batches += 1
        ids, models, versions, cats = out
        return _RawPredictions(
            event_id=ids, model=models, version=versions, ts=ts, score=score, amount=amount,
            decision=decision, numeric=numeric,
            categorical=dict(zip(self.categorical_features, cats, strict=True)),
            struct_of=_lazy_structs(self._pred_decoder, values))

    def _struct_columns(self, structs: list[Any]) -> _RawPredictions:
        """Columns of msgspec-decoded Prediction structs."""
        n = len(structs)
        if n == 0:
            return _RawPredictions(
                event_id=[], model=[], version=[], ts=np.empty(0), score=np.empty(0),
                amount=np.empty(0), decision=np.empty(0, dtype=np.int8),
                numeric=np.empty((0, self._n_num)),
                categorical={name: [] for name in self.categorical_features},
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
        numeric = np.empty((n, self._n_num), dtype=np.float64)
        if self._n_num:
            # the Features struct lists the numeric fields first (n0, n1, ...):
            # one astuple() per event instead of one getattr() per value
            n_num = self._n_num
            rows: Any = map(astuple, feat_c)
            if self.categorical_features:
                rows = (r[:n_num] for r in rows)
            numeric[:] = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64,
                                     count=n * n_num).reshape(n, n_num)  # None -> nan
        return _RawPredictions(
            event_id=list(eid_c), model=list(model_c), version=list(version_c),
            ts=_ts_column(ts_c), score=np.array(score_c, dtype=np.float64),
            amount=np.array(amt_c, dtype=np.float64),  # None -> nan
            decision=decision, numeric=numeric,
            categorical={name: list(map(operator.attrgetter(f"c{i}"), feat_c))
                         for i, name in enumerate(self.categorical_features)},
            struct_of=structs.__getitem__)

    def _validate_prediction(self, ev: Any) -> tuple[str, str] | None:
        """The first problem of one decoded prediction (the per-record rules that
        :meth:`_prediction_columns` applies to whole columns), or ``None``."""
        f = self.settings.fields
        score = ev.score
        if not math.isfinite(score):
            return "score_not_finite", f"{f.score} must be finite, got {score!r}"
        if not 0.0 <= score <= 1.0:
            return "score_out_of_range", f"{f.score} must be in [0, 1], got {score!r}"
        ts = _ts_seconds(ev.ts)
        if not math.isfinite(ts) or not 0.0 <= ts < 1e11:
            return "bad_timestamp", f"{f.ts} must be epoch seconds or RFC 3339, got {ev.ts!r}"
        if ts > self._not_after:
            return "future_timestamp", self._future_detail(ev.ts)
        amount = ev.amount
        if amount is not None and not 0 <= amount <= self._max_amount:
            return "bad_amount", (f"{f.amount} must be in [0, {self._max_amount:g}]"
                                  f", got {amount!r}")
        if ev.model not in self._models and not self._allow_unknown_models:
            return "unknown_model", f"{f.model} {ev.model!r} is not configured"
        decision = ev.decision
        if decision is not None and not isinstance(decision, bool) and decision not in (0, 1):
            return "wrong_type", f"{f.decision} must be a boolean or 0/1, got {decision!r}"
        return None

    def _future_detail(self, raw_ts: Any) -> str:
        return (f"{self.settings.fields.ts} {raw_ts!r} is more than "
                f"{self._future_skew:g} s ahead of the wall clock; events from the "
                "future never move event time (windows.max_future_skew_seconds)")

    def _too_many_versions(self, model: str, version: str) -> tuple[str, str]:
        f = self.settings.fields
        cap = f" ({self.slots.cap(model)} slots)" if self.slots is not None else ""
        return "too_many_versions", (f"{f.model_version} {version!r} of model "
                                     f"{model!r} exceeds the version limit{cap}")

    def _prediction_columns(self, raw: _RawPredictions, recs: Sequence[Record],
                            rejected: list[Rejected]) -> PredictionColumns:
        """Columns of the valid predictions; the invalid ones join ``rejected``.

        Validation runs over whole columns; only flagged rows are looked at one
        by one, for the reason and a readable detail.
        """
        n = len(raw.event_id)
        score, ts, amount, dec = raw.score, raw.ts, raw.amount, raw.decision
        model_c, version_c = raw.model, raw.version
        with np.errstate(invalid="ignore"):
            bad = ~((score >= 0.0) & (score <= 1.0)) | ~((ts >= 0.0) & (ts < 1e11)) | (
                amount < 0.0) | (amount > self._max_amount) | (dec > 1) | (
                ts > self._not_after)
        if not self._allow_unknown_models:
            unknown = set(model_c).difference(self._models)
            if unknown:
                bad |= np.fromiter(map(unknown.__contains__, model_c), dtype=np.bool_, count=n)
        decision = dec == 1
        for i in np.flatnonzero(dec < 0).tolist():  # none given: the model's threshold
            decision[i] = score[i] >= self.threshold(model_c[i])
        problems = _flagged_problems(bad, raw.struct_of, self._validate_prediction)
        # last: a version takes one of the model's slots only with a valid event,
        # in the order of their first valid events
        pairs = zip(model_c, version_c, strict=True)
        first = dict.fromkeys(itertools.compress(pairs, (~bad).tolist()) if problems else pairs)
        denied = {p: why for p in first if (why := self._admit(*p)) is not None}
        if denied:
            for i, pair in enumerate(zip(model_c, version_c, strict=True)):
                if pair in denied and not bad[i]:
                    bad[i] = True
                    problems[i] = denied[pair]
        cols = PredictionColumns(
            event_id=raw.event_id, model=model_c, version=version_c, ts=ts,
            score=score, decision=decision, amount=amount, numeric=raw.numeric,
            categorical=raw.categorical,
            partition=np.fromiter(map(_PARTITION, recs), dtype=np.int64, count=n))
        if not problems:
            return cols
        for i in sorted(problems):
            rejected.append(Rejected(recs[i], *problems[i]))
        if self.on_refused is not None:
            refused = Counter((model_c[i], version_c[i], why[0]) for i, why in problems.items())
            for (model, version, reason), k in refused.items():
                self.on_refused(model, version, reason, k)
        return cols.take(np.flatnonzero(~bad))

    def _validate_label(self, ev: Any) -> tuple[str, str] | None:
        """The first problem of one decoded label, or ``None``."""
        f = self.settings.fields
        lab = ev.label
        if isinstance(lab, bool):
            lab = int(lab)
        if lab not in (0, 1):
            return "bad_label", f"{f.label} must be 0 or 1, got {ev.label!r}"
        t = math.nan if ev.ts is None else _ts_seconds(ev.ts)
        if ev.ts is not None and (not math.isfinite(t) or not 0.0 <= t < 1e11):
            return "bad_timestamp", (f"{f.ts} must be epoch seconds or RFC 3339, "
                                     f"got {ev.ts!r}")
        if t > self._not_after:
            return "future_timestamp", self._future_detail(ev.ts)
        amt = ev.amount
        if amt is not None and not 0 <= amt <= self._max_amount:
            return "bad_amount", (f"{f.amount} must be in [0, {self._max_amount:g}], "
                                  f"got {amt!r}")
        return None

    def _plain_values(self, records: Sequence[Record]) -> list[bytes] | None:
        """The record values, if the batch may be decoded whole (by the fast path
        or :meth:`_batch_decode`): no CloudEvents headers, every value present and
        within the size limit. Otherwise ``None``: the per-record path decides."""
        if not records or (self._cloudevents and any(map(_HEADERS, records))):
            return None
        values = [r.value for r in records]
        if None in values or max(map(len, values)) > self._max_bytes:  # type: ignore[arg-type]
            return None
        return values  # type: ignore[return-value]

    def _fast_labels_columns(
        self, records: Sequence[Record],
    ) -> tuple[list[str], npt.NDArray[np.int64], npt.NDArray[np.float64],
               npt.NDArray[np.float64], Callable[[int], Any]] | None:
        """Event ids, label, ts and amount columns (and a lazy struct per row) from
        the compiled fast path, or ``None`` as for :meth:`_fast_predictions`."""
        fast = self._fast_labels
        values = self._plain_values(records) if fast is not None else None
        if fast is None or values is None:
            return None
        n = len(values)
        label, ts, amount = np.empty(n, dtype=np.int64), np.empty(n), np.empty(n)
        out = fast(values, self._fast_label_keys, label, ts, amount)
        if not isinstance(out, list):  # the index of a record left to msgspec
            self.fast_fallbacks += 1
            return None
        self.fast_batches += 1
        return out, label, ts, amount, _lazy_structs(self._label_decoder, values)

    def _decode_labels(self, records: Sequence[Record],
                       rejected: list[Rejected]) -> LabelColumns:
        fast = self._fast_labels_columns(records)
        if fast is not None:
            eid_c, label, ts, amount, struct_of = fast
            recs = records
            n = len(recs)
        else:
            if records:
                self.msgspec_batches += 1
            structs, recs = self._decode_structs(
                records, self._label_decoder, self._label_type, "label", "", rejected)
            n = len(structs)
            if n == 0:
                return LabelColumns(event_id=[], label=np.empty(0, dtype=np.int8),
                                    ts=np.empty(0), amount=np.empty(0))
            eid_t, label_c, ts_c, amt_c = zip(*map(msgspec.structs.astuple, structs),
                                              strict=True)
            eid_c = list(eid_t)
            try:
                label = np.array(label_c, dtype=np.int64)
            except OverflowError:  # an integer beyond int64: flagged below
                label = np.array([x if -2 <= x <= 2 else 2 for x in label_c], dtype=np.int64)
            ts = _ts_column(ts_c)  # None (no time given) -> nan
            amount = np.array(amt_c, dtype=np.float64)
            struct_of = structs.__getitem__
        with np.errstate(invalid="ignore"):
            bad = ((label != 0) & (label != 1)) | (ts < 0.0) | (ts >= 1e11) | np.isinf(ts) | (
                amount < 0.0) | (amount > self._max_amount) | (ts > self._not_after)
        keep: npt.NDArray[np.intp] | None = None
        problems = _flagged_problems(bad, struct_of, self._validate_label)
        if problems:
            rejected.extend(Rejected(recs[i], *problems[i]) for i in sorted(problems))
            keep = np.flatnonzero(~bad)
        ids = eid_c
        part = np.fromiter(map(_PARTITION, recs), dtype=np.int64, count=n)
        if keep is not None and keep.size < n:
            ids = [ids[i] for i in keep.tolist()]
            label, ts, amount, part = label[keep], ts[keep], amount[keep], part[keep]
        return LabelColumns(event_id=ids, label=label.astype(np.int8), ts=ts, amount=amount,
                            partition=part)


def _lazy_structs(decoder: msgspec.json.Decoder[Any], values: list[bytes]
                  ) -> Callable[[int], Any]:
    """``i -> the decoded struct of values[i]``: the fast path makes no structs,
    and the reason of a row the column checks flag comes from one."""
    def struct_of(i: int) -> Any:
        return decoder.decode(values[i])
    return struct_of


def _in_record_order(rejected: list[Rejected], records: Sequence[Record]) -> None:
    """Sort rejections (decode failures first, then validation failures) back
    into the order of their records."""
    if len(rejected) > 1:
        pos = {id(r): i for i, r in enumerate(records)}
        rejected.sort(key=lambda rj: pos.get(id(rj.record), -1))


class _RejectError(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
