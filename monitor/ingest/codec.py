"""Event codec: Kafka records to columnar numpy batches, or a rejection reason.

Prediction and label events are decoded with msgspec into typed structs built
from the configured field names (:mod:`monitor.ingest.records`), then laid out
as columns (:mod:`monitor.ingest.columns`: one numpy array per field, a
``(events, features)`` float matrix for numeric features). Plain JSON and
CloudEvents binary mode (:mod:`monitor.ingest.cloudevents`: ``ce_*`` headers
carry the event attributes, the value carries the data, as KServe's inference
logger writes) are accepted.

What lives here: :class:`EventCodec`, the front, which picks a path per batch;
the per-record path; validation and the :data:`REASONS` a record is rejected
for. A plain-JSON batch first goes through the compiled fast path
(:mod:`monitor.ingest.fastpath`), then, if that leaves any record to msgspec,
the msgspec batch path (:mod:`monitor.ingest.batch`), then, if that fails too,
the per-record path, which finds and explains the bad records.
``codec.fast_decode: false`` turns the fast path off.

A record that does not decode or validate becomes a
:class:`~monitor.ingest.records.Rejected` with one of the :data:`REASONS`; the
valid records of the same batch are unaffected. The only exception
:meth:`EventCodec.decode` can raise for bad *input* is none: bad input is
always returned as a rejection.
"""

from __future__ import annotations

import itertools
import math
import operator
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import numpy as np
import numpy.typing as npt

from monitor.config import Settings
from monitor.ingest.batch import decode_lines, label_columns, plain_values, prediction_columns
from monitor.ingest.cloudevents import CloudEventReader
from monitor.ingest.columns import (
    DecodedBatch,
    LabelColumns,
    PredictionColumns,
    RawPredictions,
    ts_seconds,
)
from monitor.ingest.fastpath import FastDecoder, LabelArrays
from monitor.ingest.records import Record, Rejected, RejectError, event_types
from monitor.ingest.slots import VersionSlots

__all__ = ["REASONS", "EventCodec"]

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
_MISSING_RE = re.compile(r"missing required field `([^`]*)`")
_PATH_RE = re.compile(r"at `\$\.?([^`]*)`")


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
        self.numeric_features = list(settings.features.numeric)
        self.categorical_features = list(settings.features.categorical)
        types = event_types(settings)
        self._features_type = types.features
        self._prediction_type = types.prediction
        self._label_type = types.label
        self._pred_decoder = msgspec.json.Decoder(self._prediction_type)
        self._label_decoder = msgspec.json.Decoder(self._label_type)
        self._cloudevent = CloudEventReader(settings)
        self._models = {m.name: m for m in settings.models}
        self._version_allowed = version_allowed
        self._n_num = len(self.numeric_features)
        # per-record hot path: settings are frozen, so look these up once
        self._max_bytes = settings.codec.max_message_bytes
        self._max_amount = settings.codec.max_amount
        self._allow_unknown_models = settings.codec.allow_unknown_models
        self._cloudevents = settings.cloudevents.enabled
        self._fast = FastDecoder.create(settings)
        #: batches (predictions and labels apart) decoded by the fast path, those
        #: it left to msgspec, and all that msgspec decoded
        self.fast_batches = 0
        self.fast_fallbacks = 0
        self.msgspec_batches = 0

    # ------------------------------------------------------------------ helpers
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

    def _decode_one(self, rec: Record, decoder: msgspec.json.Decoder[Any], typ: Any,
                    kind: str) -> Any:
        if self._cloudevents and rec.headers:
            body = self._cloudevent.body(rec, kind)
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
        """Decode a whole batch in one call, or ``None`` if it does not qualify
        (see :func:`monitor.ingest.batch.decode_lines`)."""
        return decode_lines(records, decoder, self._cloudevents, self._max_bytes)

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
            except RejectError as rj:
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

    def _fast_predictions(self, records: Sequence[Record]) -> RawPredictions | None:
        """The batch's columns from the compiled fast path, or ``None`` when it is
        not installed, not enabled, or leaves any record of the batch to msgspec."""
        fast = self._fast
        values = self._plain_values(records) if fast is not None else None
        if fast is None or values is None:
            return None
        raw = fast.predictions(values, self._pred_decoder)
        if raw is None:  # a record left to msgspec
            self.fast_fallbacks += 1
            return None
        self.fast_batches += 1
        return raw

    def _struct_columns(self, structs: list[Any]) -> RawPredictions:
        """Columns of msgspec-decoded Prediction structs."""
        return prediction_columns(structs, self._n_num, self.categorical_features)

    def _validate_prediction(self, ev: Any) -> tuple[str, str] | None:
        """The first problem of one decoded prediction (the per-record rules that
        :meth:`_prediction_columns` applies to whole columns), or ``None``."""
        f = self.settings.fields
        score = ev.score
        if not math.isfinite(score):
            return "score_not_finite", f"{f.score} must be finite, got {score!r}"
        if not 0.0 <= score <= 1.0:
            return "score_out_of_range", f"{f.score} must be in [0, 1], got {score!r}"
        ts = ts_seconds(ev.ts)
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

    def _prediction_columns(self, raw: RawPredictions, recs: Sequence[Record],
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
        t = math.nan if ev.ts is None else ts_seconds(ev.ts)
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
        """The record values, if the batch may be decoded whole (see
        :func:`monitor.ingest.batch.plain_values`), else ``None``."""
        return plain_values(records, self._cloudevents, self._max_bytes)

    def _fast_labels_columns(self, records: Sequence[Record]) -> LabelArrays | None:
        """Event ids, label, ts and amount columns (and a lazy struct per row) from
        the compiled fast path, or ``None`` as for :meth:`_fast_predictions`."""
        fast = self._fast
        values = self._plain_values(records) if fast is not None else None
        if fast is None or values is None:
            return None
        out = fast.labels(values, self._label_decoder)
        if out is None:  # a record left to msgspec
            self.fast_fallbacks += 1
            return None
        self.fast_batches += 1
        return out

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
            eid_c, label, ts, amount = label_columns(structs)
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


def _in_record_order(rejected: list[Rejected], records: Sequence[Record]) -> None:
    """Sort rejections (decode failures first, then validation failures) back
    into the order of their records."""
    if len(rejected) > 1:
        pos = {id(r): i for i, r in enumerate(records)}
        rejected.sort(key=lambda rj: pos.get(id(rj.record), -1))

