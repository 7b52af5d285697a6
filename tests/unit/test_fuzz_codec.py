"""Property-based fuzzing of monitor.ingest.codec (and of Service.handle on top of it).

Every hypothesis example carries a *batch* of inputs decoded in one
``codec.decode`` call, so that the file feeds well over 100,000 generated and
mutated records to the codec in about a minute: truncated events, wrong types
for every field, huge numbers, deep nesting, invalid UTF-8, oversize values,
random bytes, random JSON, byte-level mutations of valid events, CloudEvents
binary-mode headers that are missing or wrong, on both the predictions and the
labels topic. The properties are the codec's contract:

* ``decode`` never raises for bad input;
* every input ends up either as a decoded row or as exactly one
  :class:`Rejected` whose reason is in :data:`REASONS` (per topic:
  decoded + rejected == inputs), and decoded columns hold only sane values;
* valid events mixed into the same batch are all decoded.

``INPUTS`` counts the records fed per test; the last test asserts the total.
Bugs found here (fixed since) are kept as regression tests at the end.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config import Settings, load_settings
from monitor.core.service import Service
from monitor.ingest.codec import REASONS, EventCodec
from monitor.ingest.columns import DecodedBatch
from monitor.ingest.records import RawRecord, Record, Rejected
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.sandbox.traffic import NUMERIC_FEATURES
from tests.support import MODEL, assert_fast_path_agrees, fit_reference, write_config

LIMIT = 2048  # max_message_bytes of the codec under test
ROOMY = 1 << 16  # for inputs that must not be cut short by the size limit
MAX_AMOUNT = 1e12
NUMERIC = list(NUMERIC_FEATURES)
CATEGORICAL = "merchant_category"
PRED_TOPIC, LABEL_TOPIC = "predictions", "labels"
HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
          HealthCheck.filter_too_much]


def fuzz(max_examples: int) -> Callable[[Any], Any]:
    return settings(max_examples=max_examples, deadline=None, suppress_health_check=HEALTH)


#: records fed to ``codec.decode`` (or ``Service.handle``), per test
INPUTS: Counter[str] = Counter()
MIN_TOTAL_INPUTS = 100_000
#: batches decoded with the fast path on and off by ``check``, and those it took
FAST: Counter[str] = Counter()

# ---------------------------------------------------------------------------
# codecs
# ---------------------------------------------------------------------------


def _settings(root: Path, name: str, limit: int) -> Settings:
    # timestamps anywhere up to 1e11 are valid here: the wall-clock future check
    # (windows.max_future_skew_seconds) has tests of its own in test_codec.py
    return load_settings(write_config(
        root / f"{name}.yaml", reference={"fit_from_champion_events": 10},
        codec={"max_message_bytes": limit, "max_amount": MAX_AMOUNT},
        windows={"max_future_skew_seconds": None}))


@pytest.fixture(scope="module")
def cfg_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-codec")


@pytest.fixture(scope="module")
def small_settings(cfg_root: Path) -> Settings:
    return _settings(cfg_root, "small", LIMIT)


@pytest.fixture(scope="module")
def codec(small_settings: Settings) -> EventCodec:
    """The codec under test: 2 KiB limit, default version cap (v1, v2 always fit)."""
    return EventCodec(small_settings)


@pytest.fixture(scope="module")
def roomy(cfg_root: Path) -> EventCodec:
    return EventCodec(_settings(cfg_root, "roomy", ROOMY))


def _any_version(model: str, version: str) -> bool:
    return True


@pytest.fixture(scope="module")
def ce_codecs(small_settings: Settings, cfg_root: Path) -> tuple[EventCodec, EventCodec]:
    """(codec under test, plain-JSON oracle); no version cap, so both stay in step."""
    return (EventCodec(small_settings, version_allowed=_any_version),
            EventCodec(_settings(cfg_root, "oracle", ROOMY), version_allowed=_any_version))


# ---------------------------------------------------------------------------
# records and the accounting property
# ---------------------------------------------------------------------------


def P(value: bytes | None, headers: Sequence[tuple[str, Any]] = (),  # noqa: N802
      offset: int = 0) -> RawRecord:
    return RawRecord(PRED_TOPIC, 0, offset, value, list(headers))


def L(value: bytes | None, headers: Sequence[tuple[str, Any]] = (),  # noqa: N802
      offset: int = 0) -> RawRecord:
    return RawRecord(LABEL_TOPIC, 0, offset, value, list(headers))


def enc(event: Any, ascii_only: bool = True) -> bytes:
    return json.dumps(event, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _check_columns(codec: EventCodec, b: DecodedBatch) -> None:
    p = b.predictions
    n = len(p)
    assert len(p.model) == len(p.version) == n
    for arr in (p.ts, p.score, p.decision, p.amount):
        assert arr.shape == (n,)
    assert p.decision.dtype == np.bool_
    assert p.numeric.shape == (n, len(NUMERIC))
    assert not np.isinf(p.numeric).any()
    assert np.isfinite(p.score).all()
    assert ((p.score >= 0) & (p.score <= 1)).all()
    assert np.isfinite(p.ts).all()
    assert ((p.ts >= 0) & (p.ts < 1e11)).all()
    amt = p.amount[~np.isnan(p.amount)]
    assert ((amt >= 0) & (amt <= MAX_AMOUNT)).all()
    for eid in p.event_id:
        assert isinstance(eid, str)
        assert 1 <= len(eid) <= 256
        assert _utf8(eid)
    for name in (*p.model, *p.version):
        assert isinstance(name, str)
        assert 1 <= len(name) <= 128
        assert _utf8(name)
    if not codec.settings.codec.allow_unknown_models:
        assert set(p.model) <= {MODEL}
    assert set(p.categorical) == {CATEGORICAL}
    cats = p.categorical[CATEGORICAL]
    assert len(cats) == n
    for v in cats:
        assert v is None or isinstance(v, str | int | float)
        assert not isinstance(v, str) or _utf8(v)
        assert not isinstance(v, float) or math.isfinite(v)
    lab = b.labels
    m = len(lab)
    assert lab.label.shape == lab.ts.shape == lab.amount.shape == (m,)
    assert set(lab.label.tolist()) <= {0, 1}
    ts = lab.ts[~np.isnan(lab.ts)]
    assert ((ts >= 0) & (ts < 1e11)).all()
    amt = lab.amount[~np.isnan(lab.amount)]
    assert ((amt >= 0) & (amt <= MAX_AMOUNT)).all()
    for eid in lab.event_id:
        assert isinstance(eid, str)
        assert 1 <= len(eid) <= 256
        assert _utf8(eid)


def check(codec: EventCodec, test: str, preds: Sequence[RawRecord],
          labels: Sequence[RawRecord] = (), ok_preds: Sequence[str] = (),
          ok_labels: Sequence[str] = ()) -> tuple[DecodedBatch, dict[int, str]]:
    """Decode one batch and check the contract; returns it and ``{id(record): reason}``."""
    batch = codec.decode(preds, labels)  # any exception fails the test
    INPUTS[test] += len(preds) + len(labels)
    # the compiled fast path must agree with msgspec on every batch, bad ones too
    FAST["compared"] += 1
    FAST["taken"] += assert_fast_path_agrees(codec.settings, preds, labels)
    pred_ids = {id(r) for r in preds}
    label_ids = {id(r) for r in labels}
    assert len(pred_ids) == len(preds)
    assert len(label_ids) == len(labels)
    reasons: dict[int, str] = {}
    rejected_preds = rejected_labels = 0
    for rj in batch.rejected:
        assert isinstance(rj, Rejected)
        assert rj.reason in REASONS, rj
        assert isinstance(rj.detail, str)
        assert rj.detail
        key = id(rj.record)
        assert key not in reasons, f"rejected twice: {rj}"
        reasons[key] = rj.reason
        if key in pred_ids:
            rejected_preds += 1
        else:
            assert key in label_ids, f"rejected a record that was not fed: {rj}"
            rejected_labels += 1
    assert len(batch.predictions) + rejected_preds == len(preds)
    assert len(batch.labels) + rejected_labels == len(labels)
    limit = codec.settings.codec.max_message_bytes
    for rec in (*preds, *labels):
        if rec.value and len(rec.value) <= limit and not _valid_utf8(rec.value):
            assert reasons.get(id(rec)) == "not_utf8", (rec.value[:80], reasons.get(id(rec)))
    _check_columns(codec, batch)
    decoded = Counter(batch.predictions.event_id)
    missing = [e for e in ok_preds if not decoded[e]]
    assert not missing, (missing, [(r.record.value, r.reason, r.detail) for r in batch.rejected])
    decoded = Counter(batch.labels.event_id)
    missing = [e for e in ok_labels if not decoded[e]]
    assert not missing, (missing, [(r.record.value, r.reason, r.detail) for r in batch.rejected])
    return batch, reasons


def outcome(codec: EventCodec, record: RawRecord, kind: str) -> str:
    """"decoded" or the rejection reason of one record."""
    b = codec.decode([record]) if kind == "prediction" else codec.decode([], [record])
    return b.rejected[0].reason if b.rejected else "decoded"


def as_records(records: Sequence[Record]) -> list[Record]:
    """``records`` (the same objects) as the ``list[Record]`` a SourceBatch holds."""
    return list(records)


def mix(bad: list[RawRecord], ok: list[RawRecord]) -> list[RawRecord]:
    """``ok`` records spread evenly among ``bad`` ones (first, middle, last...)."""
    out = list(bad)
    for i, rec in enumerate(ok):
        out.insert(min(len(out), (i * (len(bad) + 1)) // max(1, len(ok))), rec)
    for i, rec in enumerate(out):
        rec.offset = i
    return out


# ---------------------------------------------------------------------------
# valid events
# ---------------------------------------------------------------------------

FINITE = st.floats(allow_nan=False, allow_infinity=False)
INT64 = st.integers(-(2**63), 2**63 - 1)
OFFSET = st.integers(-(23 * 60 + 59), 23 * 60 + 59).map(
    lambda m: timezone(timedelta(minutes=m)))
RFC3339 = st.builds(lambda dt, tz: dt.replace(tzinfo=tz).isoformat(),
                    st.datetimes(min_value=datetime(1970, 1, 3), max_value=datetime(3000, 1, 1)),
                    OFFSET)
TS = st.one_of(st.floats(0, 1e11, exclude_max=True), st.integers(0, 10**11 - 1), RFC3339)
EVENT_ID = st.text(min_size=1, max_size=24)
CATEGORY = st.one_of(st.none(), st.booleans(), INT64, FINITE, st.text(max_size=12))
FEATURES = st.fixed_dictionaries(
    {}, optional={**{f: st.one_of(st.none(), FINITE, INT64) for f in NUMERIC},
                  CATEGORICAL: CATEGORY, "unmonitored": st.text(max_size=8)})
PREDICTION = st.fixed_dictionaries(
    {"event_id": EVENT_ID, "model": st.just(MODEL), "model_version": st.sampled_from(["v1", "v2"]),
     "ts": TS, "score": st.floats(0, 1)},
    optional={"decision": st.sampled_from([True, False, 0, 1, None]),
              "amount": st.one_of(st.none(), st.floats(0, MAX_AMOUNT)),
              "features": FEATURES, "trace": st.text(max_size=8)})
LABEL = st.fixed_dictionaries(
    {"event_id": EVENT_ID, "label": st.sampled_from([0, 1, True, False])},
    optional={"ts": st.one_of(st.none(), TS),
              "amount": st.one_of(st.none(), st.floats(0, MAX_AMOUNT))})


def ok_records(preds: list[dict[str, Any]], labels: list[dict[str, Any]], tag: str
               ) -> tuple[list[RawRecord], list[str], list[RawRecord], list[str]]:
    """Valid events with unique ids ``ok-<tag>-p<i>`` / ``ok-<tag>-l<i>`` as records."""
    pids = [f"ok-{tag}-p{i}" for i in range(len(preds))]
    lids = [f"ok-{tag}-l{i}" for i in range(len(labels))]
    precs = [P(enc({**ev, "event_id": e})) for ev, e in zip(preds, pids, strict=True)]
    lrecs = [L(enc({**ev, "event_id": e})) for ev, e in zip(labels, lids, strict=True)]
    return precs, pids, lrecs, lids


OK_PREDS = st.lists(PREDICTION, min_size=1, max_size=2)
OK_LABELS = st.lists(LABEL, min_size=1, max_size=2)

# Each drawn item fans out into many inputs (every cut of an event, every field
# for a value, every pair of mutations...): hypothesis draws cost ~0.1 ms each,
# decoding a record a few microseconds, so this is how 100,000+ inputs fit in a
# minute while hypothesis still controls (and shrinks) everything that varies.


# ---------------------------------------------------------------------------
# 1. truncated valid JSON
# ---------------------------------------------------------------------------


@fuzz(160)
@given(pred=PREDICTION, label=LABEL, ascii_only=st.booleans(), start=st.integers(0, 64),
       stride=st.integers(1, 6), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_truncated_events(codec: EventCodec, pred: dict[str, Any], label: dict[str, Any],
                          ascii_only: bool, start: int, stride: int,
                          ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    pv, lv = enc(pred, ascii_only), enc(label, ascii_only)
    # cut at every stride-th byte (and at 0, 1 and len - 1): inside keys, strings,
    # numbers, escapes and multi-byte characters
    bad_p = [P(pv[:c]) for c in {0, 1, len(pv) - 1, *range(start % len(pv), len(pv), stride)}]
    bad_l = [L(lv[:c]) for c in {0, 1, len(lv) - 1, *range(start % len(lv), len(lv), stride)}]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "trunc")
    _, reasons = check(codec, "truncated", mix(bad_p, okp), mix(bad_l, okl), pids, lids)
    # a strict prefix of a JSON object is never a JSON object
    for rec in (*bad_p, *bad_l):
        assert id(rec) in reasons, rec.value
        if not rec.value:
            assert reasons[id(rec)] == "empty"


# ---------------------------------------------------------------------------
# 2. wrong types for every field
# ---------------------------------------------------------------------------

JSON_SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), FINITE, st.text(max_size=10))
JSON = st.recursive(JSON_SCALAR, lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=5)

BASE_PRED: dict[str, Any] = {
    "event_id": "e1", "model": MODEL, "model_version": "v1", "ts": 1_700_000_000.5,
    "score": 0.7, "decision": True, "amount": 12.5,
    "features": {**{f: 1.0 for f in NUMERIC}, CATEGORICAL: "fuel"}}
BASE_LABEL: dict[str, Any] = {"event_id": "e1", "label": 1, "ts": 1_700_000_000.5,
                              "amount": 3.0}

# JSON types each field accepts (anything else must be rejected)
NUM, INT, BOOL, STR, NULL, ARR, OBJ = "num", "int", "bool", "str", "null", "arr", "obj"
PRED_TYPES: dict[str, set[str]] = {
    "event_id": {STR}, "model": {STR}, "model_version": {STR}, "ts": {NUM, INT, STR},
    "score": {NUM, INT}, "decision": {BOOL, INT, NULL}, "amount": {NUM, INT, NULL},
    "features": {OBJ}, **{f"features.{f}": {NUM, INT, NULL} for f in NUMERIC},
    f"features.{CATEGORICAL}": {STR, NUM, INT, BOOL, NULL}}
LABEL_TYPES: dict[str, set[str]] = {"event_id": {STR}, "label": {INT, BOOL},
                                    "ts": {NUM, INT, STR, NULL}, "amount": {NUM, INT, NULL}}
# what a value of the wrong JSON type may be rejected as
TYPE_REASONS = ("wrong_type", "bad_timestamp", "bad_event_id", "bad_label")


def json_type(v: Any) -> str:
    if v is None:
        return NULL
    if isinstance(v, bool):
        return BOOL
    if isinstance(v, int):
        return INT
    if isinstance(v, float):
        return NUM
    if isinstance(v, str):
        return STR
    return ARR if isinstance(v, list) else OBJ


def with_field(base: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(base))
    if path.startswith("features."):
        out["features"][path.split(".", 1)[1]] = value
    else:
        out[path] = value
    return out


def without_field(base: dict[str, Any], path: str) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(base))
    if path.startswith("features."):
        del out["features"][path.split(".", 1)[1]]
    else:
        del out[path]
    return out


WRONG = st.one_of(JSON, st.sampled_from([[], {}, "", "1", "true", "null", [0.5], {"a": 1}, 1.0,
                                         0, -1, True, False, None]))
REQUIRED_PRED = ("event_id", "model", "model_version", "ts", "score")
REQUIRED_LABEL = ("event_id", "label")


@fuzz(140)
@given(values=st.lists(WRONG, min_size=6, max_size=6), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_wrong_types_for_every_field(codec: EventCodec, values: list[Any],
                                     ok_p: list[dict[str, Any]],
                                     ok_l: list[dict[str, Any]]) -> None:
    # every drawn value in every field of both event kinds, and every field deleted
    cases_p = [(path, v, P(enc(with_field(BASE_PRED, path, v))))
               for v in values for path in PRED_TYPES]
    cases_l = [(path, v, L(enc(with_field(BASE_LABEL, path, v))))
               for v in values for path in LABEL_TYPES]
    gone_p = [(path, P(enc(without_field(BASE_PRED, path)))) for path in PRED_TYPES]
    gone_l = [(path, L(enc(without_field(BASE_LABEL, path)))) for path in LABEL_TYPES]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "types")
    _, reasons = check(codec, "wrong_types", mix([c[2] for c in cases_p] + [g[1] for g in gone_p],
                                                 okp),
                       mix([c[2] for c in cases_l] + [g[1] for g in gone_l], okl), pids, lids)
    for types, cases in ((PRED_TYPES, cases_p), (LABEL_TYPES, cases_l)):
        for path, v, rec in cases:
            if json_type(v) not in types[path]:
                assert reasons.get(id(rec)) in TYPE_REASONS, (path, v, reasons.get(id(rec)))
    for required, gone in ((REQUIRED_PRED, gone_p), (REQUIRED_LABEL, gone_l)):
        for path, rec in gone:
            want = "missing_field" if path in required else None
            assert reasons.get(id(rec)) == want, (path, reasons.get(id(rec)))


# ---------------------------------------------------------------------------
# 3. huge numbers
# ---------------------------------------------------------------------------

HUGE = [b"1e308", b"-1e308", b"1.7976931348623157e308", b"1.8e308", b"1e999", b"-1e999",
        b"1E+400", b"1" + b"0" * 400, b"-1" + b"0" * 400, b"-0.0", b"-0", b"0e0", b"-1",
        b"-1e-400", b"1e-400", b"4.9e-324", b"9223372036854775807", b"9223372036854775808",
        b"18446744073709551615", b"18446744073709551616", b"-9223372036854775809",
        b"1" + b"0" * 4299, b"1" + b"0" * 4300, b"9" * 20000, b"0." + b"0" * 500 + b"1",
        b"1e-99999", b"1e99999", b"123456789012345678901234567890.5e-5"]
NUMBER_TEXT = st.from_regex(r"\A-?(0|[1-9][0-9]{0,40})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,4})?\Z")
LITERAL = st.one_of(st.sampled_from(HUGE), NUMBER_TEXT.map(str.encode),
                    st.integers().map(lambda i: str(i).encode()),
                    FINITE.map(lambda f: repr(f).encode()),
                    st.integers(1, 5000).map(lambda n: b"-" * (n % 2) + b"7" * n))
HOLE = b"@HOLE@"
PRED_SLOTS = list(PRED_TYPES)
LABEL_SLOTS = list(LABEL_TYPES)
PRED_TEMPLATES = [enc(with_field(BASE_PRED, s, "@HOLE@")).replace(b'"' + HOLE + b'"', HOLE)
                  for s in PRED_SLOTS]
LABEL_TEMPLATES = [enc(with_field(BASE_LABEL, s, "@HOLE@")).replace(b'"' + HOLE + b'"', HOLE)
                   for s in LABEL_SLOTS]


@fuzz(100)
@example(literals=HUGE, ok_p=[BASE_PRED], ok_l=[BASE_LABEL])
@given(literals=st.lists(LITERAL, min_size=8, max_size=8), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_huge_numbers(roomy: EventCodec, literals: list[bytes],
                      ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    # every literal in every field of both event kinds
    bad_p = [P(tpl.replace(HOLE, lit)) for lit in literals for tpl in PRED_TEMPLATES]
    bad_l = [L(tpl.replace(HOLE, lit)) for lit in literals for tpl in LABEL_TEMPLATES]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "huge")
    check(roomy, "huge_numbers", mix(bad_p, okp), mix(bad_l, okl), pids, lids)


@pytest.mark.parametrize(("slot", "literal", "reason"), [
    ("score", b"1e999", "score_not_finite"),
    ("score", b"1" + b"0" * 400, "score_not_finite"),
    ("score", b"1e308", "score_out_of_range"),
    ("score", b"-0.0", "decoded"),
    ("score", b"4.9e-324", "decoded"),
    ("ts", b"1e308", "bad_timestamp"),
    ("ts", b"-1", "bad_timestamp"),
    ("ts", b"-0.0", "decoded"),
    ("amount", b"1e308", "bad_amount"),
    ("amount", b"-1e-400", "decoded"),  # underflows to -0.0
    ("amount", b"-0.0", "decoded"),
    ("decision", b"1" + b"0" * 400, "wrong_type"),
    ("decision", b"-0", "decoded"),
    ("features.hour", b"1e308", "decoded"),
    ("features.hour", b"-1e308", "decoded"),
    ("features.hour", b"1e999", "wrong_type"),
    (f"features.{CATEGORICAL}", b"1" + b"0" * 400, "decoded"),
    (f"features.{CATEGORICAL}", b"1" + b"0" * 4300, "wrong_type"),
])
def test_huge_number_outcomes(roomy: EventCodec, slot: str, literal: bytes, reason: str) -> None:
    value = PRED_TEMPLATES[PRED_SLOTS.index(slot)].replace(HOLE, literal)
    assert outcome(roomy, P(value), "prediction") == reason


# ---------------------------------------------------------------------------
# 4. deep nesting
# ---------------------------------------------------------------------------


def nest(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"[" * depth + b"]" * depth
    if kind == "object":
        return b'{"a":' * depth + b"1" + b"}" * depth
    # alternating, innermost an empty array
    opens = b"".join(b"[" if i % 2 else b'{"k":' for i in range(depth))
    closes = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(depth)))
    return opens + b"[]" + closes


# Where a nested value meets a typed field the decoder stops at its first byte, at
# any depth (wrong_type). Where it is skipped (unknown keys) or kept raw
# (CloudEvents data) the decoder recurses: decoded when shallow, too_deep when not.
SKIPPED = ["pred-unknown-key", "pred-unknown-feature", "pred-document-object",
           "label-unknown-key", "pred-cloudevents", "label-cloudevents"]
CE_OK: list[tuple[str, bytes]] = [
    ("ce_id", b"ce-1"), ("ce_specversion", b"1.0"), ("ce_type", b"org.kubeflow.serving"),
    ("ce_source", b"http://card-fraud"), ("ce_time", b"2024-01-01T00:00:00Z"),
    ("ce_inferenceservicename", MODEL.encode()), ("ce_modelversion", b"v2")]


def deep_record(where: str, depth: int, kind: str, index: int = 0) -> RawRecord:
    value = nest(depth, kind)
    if where == "pred-unknown-key":
        return P(enc(BASE_PRED)[:-1] + b',"extra":' + value + b"}")
    if where == "pred-unknown-feature":
        return P(enc({**BASE_PRED, "features": {"hour": 1.0}})[:-2] + b',"zz":' + value + b"}}")
    if where == "pred-document-object":
        return P(nest(depth, "object"))
    if where == "label-unknown-key":
        return L(enc(BASE_LABEL)[:-1] + b',"extra":' + value + b"}")
    if where == "pred-cloudevents":
        return P(PRED_TEMPLATES[index % len(PRED_TEMPLATES)].replace(HOLE, value), CE_OK)
    if where == "label-cloudevents":
        return L(LABEL_TEMPLATES[index % len(LABEL_TEMPLATES)].replace(HOLE, value), CE_OK)
    raise AssertionError(where)


def typed_deep(depth: int, kind: str) -> tuple[list[RawRecord], list[RawRecord]]:
    """The nested value in every typed field, and as the whole document."""
    value = nest(depth, kind)
    arrays = nest(depth, "array")
    preds = [P(tpl.replace(HOLE, arrays if slot == "features" else value))
             for slot, tpl in zip(PRED_SLOTS, PRED_TEMPLATES, strict=True)]
    labels = [L(tpl.replace(HOLE, value)) for tpl in LABEL_TEMPLATES]
    return [*preds, P(arrays)], [*labels, L(arrays)]


@fuzz(100)
@example(depths=[(1000, "array"), (1000, "object"), (1000, "mixed"), (1200, "array")],
         ok_p=[BASE_PRED], ok_l=[BASE_LABEL])
@given(depths=st.lists(st.tuples(st.integers(1, 1200),
                                 st.sampled_from(["array", "object", "mixed"])),
                       min_size=4, max_size=4), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_deep_nesting(roomy: EventCodec, depths: list[tuple[int, str]],
                      ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    typed_p: list[RawRecord] = []
    typed_l: list[RawRecord] = []
    skipped: list[RawRecord] = []
    for depth, kind in depths:
        p, lab = typed_deep(depth, kind)
        typed_p += p
        typed_l += lab
        skipped += [deep_record(w, depth, kind, depth + i) for i, w in enumerate(SKIPPED)]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "deep")
    preds = typed_p + [r for r in skipped if r.topic == PRED_TOPIC]
    labels = typed_l + [r for r in skipped if r.topic == LABEL_TOPIC]
    _, reasons = check(roomy, "deep_nesting", mix(preds, okp), mix(labels, okl), pids, lids)
    for rec in (*typed_p, *typed_l):
        assert reasons.get(id(rec)) in ("wrong_type", "bad_timestamp"), (
            (rec.value or b"")[:60], reasons.get(id(rec)))
    for rec in skipped:
        assert reasons.get(id(rec)) in (None, "too_deep", "missing_field", "wrong_type",
                                        "bad_timestamp"), reasons.get(id(rec))


# ---------------------------------------------------------------------------
# 5. invalid UTF-8 inserted anywhere
# ---------------------------------------------------------------------------

INVALID_UTF8 = [b"\xff", b"\xfe", b"\x80", b"\xbf", b"\xc3\x28", b"\xc0\xaf", b"\xc1\xbf",
                b"\xe2\x28\xa1", b"\xe2\x82", b"\xed\xa0\x80", b"\xed\xbf\xbf",
                b"\xf0\x28\x8c\x28", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
                b"\xfc\x84\x80\x80\x80\x80", b"\xf0\x9f\x98"]


JUNK = st.one_of(st.sampled_from(INVALID_UTF8),
                 st.binary(min_size=1, max_size=4).filter(lambda b: not _valid_utf8(b)))


def insertions(value: bytes, junk: bytes, start: int, stride: int) -> list[bytes]:
    """``junk`` just after every quote (inside every key and string, or right after
    one) and at every stride-th byte."""
    quotes = [i + 1 for i, c in enumerate(value) if c == 0x22]
    at = sorted({*quotes, *range(start % (len(value) + 1), len(value) + 1, stride)})
    return [value[:i] + junk + value[i:] for i in at]


def insert_one(value: bytes, junk: bytes, k: int) -> bytes:
    options = insertions(value, junk, 0, 7)
    return options[k % len(options)]


@fuzz(110)
@given(pred=PREDICTION, label=LABEL, ascii_only=st.booleans(),
       junk=st.lists(JUNK, min_size=3, max_size=3), start=st.integers(0, 64),
       stride=st.integers(8, 40), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_invalid_utf8_anywhere(codec: EventCodec, pred: dict[str, Any], label: dict[str, Any],
                               ascii_only: bool, junk: list[bytes], start: int, stride: int,
                               ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    pv, lv = enc(pred, ascii_only), enc(label, ascii_only)
    bad_p: list[RawRecord] = []
    bad_l: list[RawRecord] = []
    for j in junk:
        for i, v in enumerate(insertions(pv, j, start, stride)):
            bad_p.append(P(v, CE_OK if i % 2 else ()))  # plain and CloudEvents
        for i, v in enumerate(insertions(lv, j, start, stride)):
            bad_l.append(L(v, CE_OK if i % 2 else ()))
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "utf8")
    _, reasons = check(codec, "invalid_utf8", mix(bad_p, okp), mix(bad_l, okl), pids, lids)
    # (check() asserts not_utf8 for each value that is not UTF-8; junk next to a
    # multi-byte character can complete it, so not all of them are)
    assert any(id(r) in reasons for r in (*bad_p, *bad_l))


# ---------------------------------------------------------------------------
# 6. oversize values
# ---------------------------------------------------------------------------

OVERSIZE_KINDS = ["pad", "event_id", "category", "label-pad", "string-document",
                  "cloudevents-pad"]


def sized(kind: str, total: int, wide: int) -> RawRecord:
    """A record of exactly ``total`` bytes (``wide`` two-byte characters in the filler)."""
    def build(filler: str) -> RawRecord:
        if kind == "pad":
            return P(enc({**BASE_PRED, "pad": filler}, False))
        if kind == "event_id":
            return P(enc({**BASE_PRED, "event_id": "id" + filler}, False))
        if kind == "category":
            return P(enc(with_field(BASE_PRED, f"features.{CATEGORICAL}", filler), False))
        if kind == "label-pad":
            return L(enc({**BASE_LABEL, "pad": filler}, False))
        if kind == "string-document":
            return P(enc(filler, False))
        return P(enc({**BASE_PRED, "pad": filler}, False), CE_OK)

    base = len(build("").value or b"")
    room = max(0, total - base)
    wide = min(wide, room // 2)
    rec = build("é" * wide + "x" * (room - 2 * wide))
    assert rec.value is not None
    return rec


@fuzz(100)
@given(cases=st.lists(st.tuples(st.integers(-3, 3 * LIMIT), st.integers(0, 2000)),
                      min_size=4, max_size=4), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_oversize_values(codec: EventCodec, cases: list[tuple[int, int]],
                         ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    # every kind at the drawn size, and at the limit - 1, the limit and the limit + 1
    recs = [(kind, sized(kind, LIMIT + excess, wide))
            for drawn, wide in cases for kind in OVERSIZE_KINDS
            for excess in (drawn, -1, 0, 1)]
    bad_p = [r for _, r in recs if r.topic == PRED_TOPIC]
    bad_l = [r for _, r in recs if r.topic == LABEL_TOPIC]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "size")
    _, reasons = check(codec, "oversize", mix(bad_p, okp), mix(bad_l, okl), pids, lids)
    for kind, rec in recs:
        n = len(rec.value or b"")
        got = reasons.get(id(rec))
        if n > LIMIT:
            assert got == "too_large", (kind, n)
        elif kind in ("pad", "label-pad", "cloudevents-pad"):
            assert got is None, (kind, n, got)
        elif kind == "event_id":
            long_id = len(json.loads(rec.value or b"")["event_id"]) > 256
            assert got == ("bad_event_id" if long_id else None), (kind, n, got)
        else:
            assert got != "too_large", (kind, n)


def test_size_limit_boundary(codec: EventCodec) -> None:
    at, over = sized("pad", LIMIT, 0), sized("pad", LIMIT + 1, 0)
    assert len(at.value or b"") == LIMIT
    assert len(over.value or b"") == LIMIT + 1
    assert outcome(codec, at, "prediction") == "decoded"
    assert outcome(codec, over, "prediction") == "too_large"


# ---------------------------------------------------------------------------
# 7. random bytes and JSON token soup
# ---------------------------------------------------------------------------

TOKENS = [b"{", b"}", b"[", b"]", b",", b":", b'"', b"\\", b"\\u", b"\\ud83d", b"\\ude00",
          b"\\u0000", b"true", b"false", b"null", b"NaN", b"-Infinity", b"0", b"-", b"1e",
          b"1.5", b".5", b"00", b" ", b"\n", b"\t", b"\x00", b"\xff", b"\xc3", b"\xa9",
          b'"event_id"', b'"model"', b'"model_version"', b'"ts"', b'"score"', b'"label"',
          b'"features"', b'"amount"', b'"decision"', b'"card-fraud"', b'"v1"', b"0.5",
          b"1700000000", b'"2024-01-01T00:00:00Z"', b"/*", b"*/", b"'"]


RAW = st.one_of(st.binary(max_size=48), st.binary(max_size=200).map(lambda b: b"".join(soup(b))),
                st.none(), st.just(b""))


def pieces(blob: bytes) -> list[bytes]:
    """Split a drawn blob into records: each length is read from the blob itself."""
    out, i = [], 0
    while i < len(blob):
        n = blob[i] % 80
        out.append(blob[i + 1: i + 1 + n])
        i += 1 + n
    return out


def soup(blob: bytes) -> list[bytes]:
    """JSON-ish token soup: the blob's bytes pick tokens, a zero byte ends a record."""
    return [b"".join(TOKENS[c % len(TOKENS)] for c in part) for part in blob.split(b"\x00")]


@fuzz(200)
@given(raw=st.binary(min_size=300, max_size=3000), tokens=st.binary(min_size=100, max_size=1500),
       ok_p=OK_PREDS,
       ok_l=OK_LABELS)
def test_random_bytes(codec: EventCodec, raw: bytes, tokens: bytes,
                      ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    values: list[bytes | None] = [None, b"", *pieces(raw), *soup(tokens)]
    bad_p = [P(v, CE_OK if i % 3 == 0 else ()) for i, v in enumerate(values) if i % 2 == 0]
    bad_l = [L(v, CE_OK if i % 3 == 0 else ()) for i, v in enumerate(values) if i % 2 == 1]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "bytes")
    _, reasons = check(codec, "random_bytes", mix(bad_p, okp), mix(bad_l, okl), pids, lids)
    for rec in (*bad_p, *bad_l):
        if not rec.value:
            assert reasons.get(id(rec)) == "empty"


# ---------------------------------------------------------------------------
# 8. random JSON values
# ---------------------------------------------------------------------------

KEY = st.one_of(st.sampled_from([*BASE_PRED, "label", *NUMERIC, CATEGORICAL]),
                st.text(max_size=6))
ANY_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=12)),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEY, inner, max_size=6),
    max_leaves=12)


@fuzz(140)
@given(docs=st.lists(ANY_JSON, min_size=6, max_size=6), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_random_json_values(codec: EventCodec, docs: list[Any],
                            ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    # json.dumps writes NaN/Infinity for non-finite floats: not JSON, must be rejected.
    # Each document: as a prediction and as a label, plain and as CloudEvents data,
    # and as the value of every field
    whole_p: list[RawRecord] = []
    whole_l: list[RawRecord] = []
    fields_p: list[RawRecord] = []
    fields_l: list[RawRecord] = []
    for d in docs:
        v = enc(d)
        whole_p += [P(v), P(v, CE_OK)]
        whole_l += [L(v), L(v, CE_OK)]
        fields_p += [P(enc(with_field(BASE_PRED, path, d))) for path in PRED_SLOTS]
        fields_l += [L(enc(with_field(BASE_LABEL, path, d))) for path in LABEL_SLOTS]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "json")
    _, reasons = check(codec, "random_json", mix(whole_p + fields_p, okp),
                       mix(whole_l + fields_l, okl), pids, lids)
    for rec in (*whole_p, *whole_l):
        if rec.value and not rec.value.startswith(b"{"):
            assert reasons.get(id(rec)) in ("wrong_type", "not_json", "too_large"), rec.value


# ---------------------------------------------------------------------------
# 9. mutated valid events
# ---------------------------------------------------------------------------

STRUCTURAL = b'{}[]",:\\ 0-.eE'
MUTATION = st.tuples(st.sampled_from(["flip", "set", "delete", "duplicate", "insert",
                                      "structural", "swap"]),
                     st.integers(0, 10**6), st.integers(1, 24), st.integers(0, 255))


def mutate(value: bytes, op: tuple[str, int, int, int]) -> bytes:
    kind, pos, n, byte = op
    b = bytearray(value)
    if not b:
        return bytes([byte])
    at = pos % len(b)
    if kind == "flip":
        b[at] ^= 1 << (byte % 8)
    elif kind == "set":
        b[at] = byte
    elif kind == "delete":
        del b[at: at + n]
    elif kind == "duplicate":
        b[at + n: at + n] = b[at: at + n]
    elif kind == "insert":
        b[at:at] = bytes([byte]) * n
    elif kind == "structural":
        b[at:at] = STRUCTURAL[byte % len(STRUCTURAL): byte % len(STRUCTURAL) + 1]
    else:
        other = (at + n) % len(b)
        b[at], b[other] = b[other], b[at]
    return bytes(b)


def mutants(value: bytes, ops: list[tuple[str, int, int, int]]) -> list[bytes]:
    """Each mutation alone, every pair of them, and the running chain of all."""
    single = [mutate(value, op) for op in ops]
    pairs = [mutate(single[i], ops[j]) for i in range(len(ops)) for j in range(len(ops))
             if i != j]
    chain, chained = value, []
    for op in ops:
        chain = mutate(chain, op)
        chained.append(chain)
    return single + pairs + chained


@fuzz(150)
@given(pred=PREDICTION, label=LABEL, ascii_only=st.booleans(),
       pred_ops=st.lists(MUTATION, min_size=8, max_size=8),
       label_ops=st.lists(MUTATION, min_size=6, max_size=6), ok_p=OK_PREDS, ok_l=OK_LABELS)
def test_mutated_valid_events(codec: EventCodec, pred: dict[str, Any], label: dict[str, Any],
                              ascii_only: bool, pred_ops: list[tuple[str, int, int, int]],
                              label_ops: list[tuple[str, int, int, int]],
                              ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    bad_p = [P(v, CE_OK if i % 4 == 0 else ())
             for i, v in enumerate(mutants(enc(pred, ascii_only), pred_ops))]
    bad_l = [L(v, CE_OK if i % 4 == 0 else ())
             for i, v in enumerate(mutants(enc(label, ascii_only), label_ops))]
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "mut")
    check(codec, "mutated", mix(bad_p, okp), mix(bad_l, okl), pids, lids)


# ---------------------------------------------------------------------------
# 10. CloudEvents binary mode: headers missing or wrong
# ---------------------------------------------------------------------------

CE_REQUIRED = ("ce_id", "ce_specversion", "ce_type", "ce_source")
ATTRIBUTES = ("event_id", "ts", "model", "model_version")
NOT_UTF8 = st.sampled_from(INVALID_UTF8)
CE_TIMES = ["2024-01-01T00:00:00Z", "2024-01-01t00:00:00z", "2024-01-01T00:00:00",
            "2024-01-01 00:00:00Z", "1700000000", "1700000000.5", "", "yesterday",
            "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00+24:00", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
            "1969-12-31T23:59:59Z", "2024-01-01T00:00:00.123456789Z", "2024-W01-1", "null"]
CE_TIME = st.one_of(RFC3339, st.sampled_from(CE_TIMES), st.text(max_size=30))
HEADER_VALUE = st.one_of(st.text(max_size=20).map(str.encode), NOT_UTF8, st.just(b""))


@st.composite
def ce_record(draw: st.DrawFn) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    kind = draw(st.sampled_from(["prediction", "label"]))
    body = dict(draw(PREDICTION if kind == "prediction" else LABEL))
    attrs = ATTRIBUTES if kind == "prediction" else ATTRIBUTES[:2]
    for key in draw(st.lists(st.sampled_from(attrs), unique=True)):
        body.pop(key, None)  # the header is to fill it in
    headers: dict[str, bytes] = {
        "ce_id": draw(st.one_of(EVENT_ID, st.just("x" * 257), st.just(""))).encode(),
        "ce_specversion": draw(st.sampled_from(["1.0", "1.0", "1.0", "0.3", "1", "1.0 ", "",
                                                "1.1", "v1.0"])).encode(),
        "ce_type": b"org.kubeflow.serving.inference.response",
        "ce_source": b"http://card-fraud.default/",
    }
    if draw(st.booleans()):
        headers["ce_time"] = draw(CE_TIME).encode()
    if kind == "prediction":
        if draw(st.booleans()):
            headers["ce_inferenceservicename"] = draw(
                st.sampled_from([MODEL, MODEL, "other-model", ""])).encode()
        if draw(st.booleans()):
            headers["ce_modelversion"] = draw(st.sampled_from(["v1", "v2", "v9", ""])).encode()
    for key in draw(st.lists(st.sampled_from(CE_REQUIRED), unique=True, max_size=2)):
        if draw(st.booleans()):
            del headers[key]
        else:
            headers[key] = draw(HEADER_VALUE)
    for key in draw(st.lists(st.sampled_from(sorted(headers)), unique=True, max_size=1)):
        headers[key] = draw(NOT_UTF8)
    out = list(headers.items())
    if draw(st.booleans()):
        out.append(("traceparent", draw(st.binary(max_size=8))))
    if draw(st.booleans()):
        out.insert(0, ("ce_extension", draw(HEADER_VALUE)))
    return kind, enc(body, draw(st.booleans())), out


def header_variants(headers: list[tuple[str, bytes]]) -> list[list[tuple[str, bytes]]]:
    """The drawn headers, then each required one dropped, emptied or not UTF-8, a wrong
    specversion, no specversion at all (plain JSON), every ce_time format, and the
    complete valid set."""
    out = [headers]
    for h in CE_REQUIRED:
        out.append([(k, v) for k, v in headers if k != h])
        out.append([*headers, (h, b"")])  # a later duplicate wins
        out.append([*headers, (h, b"\xc3\x28")])
    out.append([*headers, ("ce_specversion", b"0.3")])
    out.append([(k, v) for k, v in CE_OK if k != "ce_time"])
    out += [[*CE_OK, ("ce_time", t.encode())] for t in CE_TIMES]
    return out


def ce_oracle(oracle: EventCodec, kind: str, value: bytes,
              headers: list[tuple[str, bytes]]) -> str:
    """The outcome binary-mode CloudEvents should have, from the plain JSON decoder."""
    if len(value) > LIMIT:
        return "too_large"
    hdr = dict(headers)
    if "ce_specversion" not in hdr:
        return outcome(oracle, P(value) if kind == "prediction" else L(value), kind)
    if any(not hdr.get(h) for h in CE_REQUIRED):
        return "cloudevents_header"
    ce = {k: v for k, v in hdr.items() if k.startswith("ce_")}
    if not all(_valid_utf8(v) for v in ce.values()):
        return "cloudevents_header"
    hv = {k: v.decode() for k, v in ce.items()}
    if hv["ce_specversion"] != "1.0":
        return "cloudevents_header"
    body = json.loads(value)
    fills = {"event_id": hv["ce_id"]}
    if "ce_time" in hv:
        fills["ts"] = hv["ce_time"]
    if kind == "prediction":
        if "ce_inferenceservicename" in hv:
            fills["model"] = hv["ce_inferenceservicename"]
        if "ce_modelversion" in hv:
            fills["model_version"] = hv["ce_modelversion"]
    for key, v in fills.items():
        body.setdefault(key, v)
    merged = enc(body)
    return outcome(oracle, P(merged) if kind == "prediction" else L(merged), kind)


@fuzz(120)
@given(records=st.lists(ce_record(), min_size=3, max_size=3), ok_p=OK_PREDS,
       ok_l=OK_LABELS)
def test_cloudevents_headers(ce_codecs: tuple[EventCodec, EventCodec],
                             records: list[tuple[str, bytes, list[tuple[str, bytes]]]],
                             ok_p: list[dict[str, Any]], ok_l: list[dict[str, Any]]) -> None:
    codec, oracle = ce_codecs
    recs = [(kind, P(v, h) if kind == "prediction" else L(v, h))
            for kind, v, headers in records for h in header_variants(headers)]
    bad_p = [r for k, r in recs if k == "prediction"]
    bad_l = [r for k, r in recs if k == "label"]
    # valid CloudEvents too: bodies without the event id, which is in the headers
    okp, pids, okl, lids = ok_records(ok_p, ok_l, "ce")
    for rec, eid in ((*zip(okp, pids, strict=True), *zip(okl, lids, strict=True))):
        body = json.loads(rec.value or b"")
        del body["event_id"]
        rec.value = enc(body)
        rec.headers = [(k, eid.encode() if k == "ce_id" else v) for k, v in CE_OK]
    _, reasons = check(codec, "cloudevents", mix(bad_p, okp), mix(bad_l, okl), pids, lids)
    for kind, rec in recs:
        want = ce_oracle(oracle, kind, rec.value or b"", list(rec.headers))
        assert reasons.get(id(rec), "decoded") == want, (rec.value, rec.headers)


# ---------------------------------------------------------------------------
# 11. the service: dead letters, invalid counts, engine counts, keeps going
# ---------------------------------------------------------------------------


class _Source:
    """A source that only records commits (the batches are handed in directly)."""

    exhausted = False

    def __init__(self) -> None:
        self.commits: list[dict[tuple[str, int], int]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def poll(self, timeout_s: float) -> SourceBatch:
        return SourceBatch()

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        self.commits.append(dict(offsets))

    def status(self) -> SourceStatus:
        return SourceStatus(assigned={(PRED_TOPIC, 0), (LABEL_TOPIC, 0)}, connected=True)


@pytest.fixture(scope="module")
def reference() -> Any:
    return fit_reference()


BAD_VALUE = st.one_of(
    RAW,
    st.builds(lambda ev, c: enc(ev)[: c % len(enc(ev))], PREDICTION, st.integers(0, 4096)),
    st.builds(lambda ev, op: mutate(enc(ev), op), PREDICTION, MUTATION),
    st.builds(lambda path, v: enc(with_field(BASE_PRED, path, v)),
              st.sampled_from(list(PRED_TYPES)), WRONG),
    st.builds(lambda i, lit: PRED_TEMPLATES[i % len(PRED_TEMPLATES)].replace(HOLE, lit),
              st.integers(0, 100), LITERAL),
    st.builds(lambda ev, junk, k: insert_one(enc(ev, False), junk, k), PREDICTION, JUNK,
              st.integers(0, 10**6)),
    st.builds(lambda n: enc({**BASE_PRED, "pad": "x" * n}), st.integers(LIMIT, 2 * LIMIT)),
    ANY_JSON.map(enc))
BAD_LABEL_VALUE = st.one_of(
    RAW,
    st.integers(1, 1000).map(lambda d: deep_record("label-unknown-key", d, "array").value),
    st.builds(lambda ev, op: mutate(enc(ev), op), LABEL, MUTATION),
    st.builds(lambda path, v: enc(with_field(BASE_LABEL, path, v)),
              st.sampled_from(list(LABEL_TYPES)), WRONG),
    st.builds(lambda i, lit: LABEL_TEMPLATES[i % len(LABEL_TEMPLATES)].replace(HOLE, lit),
              st.integers(0, 100), LITERAL))
HEADERS: st.SearchStrategy[list[tuple[str, bytes]]] = st.one_of(
    st.just([]), st.just(CE_OK), ce_record().map(lambda r: r[2]))


@fuzz(300)
@given(ok_p=st.lists(PREDICTION, min_size=1, max_size=6),
       ok_l=st.lists(st.tuples(LABEL, st.booleans()), max_size=6),
       bad_p=st.lists(st.tuples(BAD_VALUE, HEADERS), min_size=1, max_size=8),
       bad_l=st.lists(st.tuples(BAD_LABEL_VALUE, HEADERS), max_size=6),
       unknown=st.lists(RAW, max_size=2), after=st.lists(PREDICTION, min_size=1, max_size=4))
async def test_service_dead_letters_and_counts(
        small_settings: Settings, reference: Any, ok_p: list[dict[str, Any]],
        ok_l: list[tuple[dict[str, Any], bool]],
        bad_p: list[tuple[bytes | None, list[tuple[str, bytes]]]],
        bad_l: list[tuple[bytes | None, list[tuple[str, bytes]]]],
        unknown: list[bytes | None], after: list[dict[str, Any]]) -> None:
    source, sink = _Source(), MemoryDeadLetterSink()
    service = Service(small_settings, source, sink, reference=reference)
    engine = service.engine
    assert engine is not None
    okp, pids, _, _ = ok_records(ok_p, [], "svc")
    # labels: half of them for the valid predictions (they join), half orphans
    okl = [L(enc({**lab, "event_id": pids[i % len(pids)] if joins else f"orphan-{i}"}))
           for i, (lab, joins) in enumerate(ok_l)]
    preds = mix([P(v, h) for v, h in bad_p], okp)
    labels = mix([L(v, h) for v, h in bad_l], okl)
    others = [RawRecord("some-other-topic", 3, i, v) for i, v in enumerate(unknown)]
    offsets = {(PRED_TOPIC, 0): len(preds), (LABEL_TOPIC, 0): len(labels)}
    # what a fresh codec makes of the same records
    expected = check(EventCodec(small_settings), "service", preds, labels, pids)[0]
    want = Counter((id(r.record), r.reason) for r in expected.rejected)
    want.update((id(r), "unknown_topic") for r in others)

    await service.handle(SourceBatch(as_records(preds), as_records(labels), as_records(others),
                                     dict(offsets)))

    got = Counter((id(rec), reason) for rec, reason, _ in sink.records)
    assert got == want
    assert all(detail for _, _, detail in sink.records)
    kinds = {id(r): "prediction" for r in preds} | {id(r): "label" for r in labels} | {
        id(r): "unknown" for r in others}
    assert engine.invalid == Counter((kinds[id(rec)], reason) for rec, reason, _ in sink.records)
    # each event id counts once (dedupe); copies are counted as duplicates
    n_preds, n_labels = (len(set(expected.predictions.event_id)),
                         len(set(expected.labels.event_id)))
    assert sum(st_.predictions_total for st_ in engine.versions.values()) == n_preds
    assert engine.labels_total == n_labels
    assert engine.duplicates["prediction"] == len(expected.predictions) - n_preds
    assert engine.duplicates["label"] == len(expected.labels) - n_labels
    assert source.commits == [offsets]

    # the service keeps handling: a following valid batch is all counted
    nxt, _, _, _ = ok_records(after, [], "next")
    before = sum(st_.predictions_total for st_ in engine.versions.values())
    await service.handle(SourceBatch(predictions=as_records(nxt),
                                     next_offsets={(PRED_TOPIC, 0): 99}))
    INPUTS["service"] += len(nxt)
    assert len(sink.records) == sum(want.values())
    assert sum(st_.predictions_total for st_ in engine.versions.values()) == before + len(nxt)
    assert source.commits[-1] == {(PRED_TOPIC, 0): 99}
    assert service.batches == 2


# ---------------------------------------------------------------------------
# bugs found by this fuzzing, fixed in 1f2f2d9: regressions
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("where", SKIPPED)
def test_deep_nesting_in_skipped_values_is_rejected(roomy: EventCodec, where: str) -> None:
    # msgspec raised RecursionError out of decode() (and Service.handle) for ~1000
    # levels where it skips a value (unknown keys) or keeps it raw (CloudEvents data)
    rec = deep_record(where, 1000, "array")
    preds, labels = ([rec], []) if rec.topic == PRED_TOPIC else ([], [rec])
    _, reasons = check(roomy, "regressions", preds, labels)
    assert reasons[id(rec)] == "too_deep"


@pytest.mark.parametrize("value", [
    pytest.param(enc(BASE_PRED)[:-1] + b',"note":"\xff"}', id="pred-unknown-value"),
    pytest.param(enc(BASE_PRED)[:-1] + b',"\xc3\x28":1}', id="pred-unknown-key"),
    pytest.param(enc(BASE_PRED)[:-1] + b',"note":"\xed\xa0\x80"}', id="pred-surrogate"),
    pytest.param(enc(BASE_PRED)[:-2] + b',"zz":"\xfe"}}', id="pred-unknown-feature"),
    pytest.param(enc(BASE_LABEL)[:-1] + b',"note":"\xff"}', id="label-unknown-value"),
])
def test_invalid_utf8_in_skipped_strings_is_rejected(codec: EventCodec, value: bytes) -> None:
    # the plain-JSON path accepted invalid UTF-8 in strings the decoder skips, while
    # the same value under CloudEvents headers was rejected as not_utf8
    kind = "label" if b'"label"' in value else "prediction"
    assert outcome(codec, P(value) if kind == "prediction" else L(value), kind) == "not_utf8"


@pytest.mark.parametrize("kind", ["prediction", "label"])
def test_null_cloudevents_header_value_is_handled(codec: EventCodec, kind: str) -> None:
    # Kafka header values may be null (aiokafka gives None): a ce_* one raised
    # AttributeError out of decode()
    headers = [*CE_OK[:4], ("ce_time", None), ("ce_modelversion", None)]
    value = (enc({k: v for k, v in BASE_PRED.items() if k != "event_id"})
             if kind == "prediction" else b'{"label":1}')
    rec = P(value, headers) if kind == "prediction" else L(value, headers)
    b, _ = check(codec, "regressions", [rec] if kind == "prediction" else [],
                 [rec] if kind == "label" else [])
    assert (b.predictions.event_id if kind == "prediction" else b.labels.event_id) == ["ce-1"]


def test_rejected_events_take_no_version_slot(cfg_root: Path) -> None:
    # the version check ran before the decision check: a prediction rejected for its
    # decision still took one of the model's max_versions slots
    s = load_settings(write_config(
        cfg_root / "three.yaml", reference={"fit_from_champion_events": 10},
        models=[{"name": MODEL, "champion": "v1", "canary": "v2", "max_versions": 3}]))
    c = EventCodec(s)
    bad = P(enc({**BASE_PRED, "model_version": "v9", "decision": 2}))
    good = P(enc({**BASE_PRED, "model_version": "v3"}))
    b = c.decode([bad, good])
    assert [r.reason for r in b.rejected] == ["wrong_type"]
    assert b.predictions.version == ["v3"]


# ---------------------------------------------------------------------------
# the total
# ---------------------------------------------------------------------------

FUZZ_TESTS = ("truncated", "wrong_types", "huge_numbers", "deep_nesting", "invalid_utf8",
              "oversize", "random_bytes", "random_json", "mutated", "cloudevents", "service")


def test_total_inputs_fed_to_the_codec() -> None:
    ran = [t for t in FUZZ_TESTS if INPUTS[t]]
    if len(ran) < len(FUZZ_TESTS):
        pytest.skip(f"only {ran} of the fuzz tests ran in this session")
    total = sum(INPUTS[t] for t in FUZZ_TESTS)
    print(f"fuzz inputs: {total} {dict(INPUTS)}; fast path: {dict(FAST)}")
    assert total >= MIN_TOTAL_INPUTS, dict(INPUTS)
    # the fast-path equivalence ran on every batch (tests/unit/test_codec_fast.py
    # covers batches it accepts: here nearly every batch holds a bad record)
    assert FAST["compared"] >= 1_000, dict(FAST)
