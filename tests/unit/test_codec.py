"""Tests of monitor.ingest.codec: decoding to columns, every rejection reason, CloudEvents."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from monitor.config import Settings, load_settings
from monitor.ingest.codec import REASONS, EventCodec
from monitor.ingest.columns import DecodedBatch
from monitor.ingest.records import RawRecord
from monitor.sandbox.traffic import NUMERIC_FEATURES
from tests.support import MODEL, encode, write_config

PROPERTY = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
TS = 1_700_000_000.5
NUMERIC = list(NUMERIC_FEATURES)
CE_HEADERS: list[tuple[str, bytes]] = [
    ("ce_id", b"ce-42"), ("ce_specversion", b"1.0"), ("ce_type", b"org.kubeflow.serving"),
    ("ce_source", b"http://card-fraud"), ("ce_time", b"2024-01-01T00:00:00Z"),
    ("ce_inferenceservicename", MODEL.encode()), ("ce_modelversion", b"v2"),
]


def _settings(tmp_path: Path, **sections: Any) -> Settings:
    sections.setdefault("reference", {"fit_from_champion_events": 10})
    sections.setdefault("codec", {"max_message_bytes": 1024})
    sections.setdefault("models", [{"name": MODEL, "champion": "v1", "canary": "v2",
                                    "threshold": 0.6, "max_versions": 3}])
    return load_settings(write_config(tmp_path / "config.yaml", **sections))


@pytest.fixture
def codec(tmp_path: Path) -> EventCodec:
    return EventCodec(_settings(tmp_path))


def pred(**over: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": "e1", "model": MODEL, "model_version": "v1", "ts": TS,
                          "score": 0.7, "amount": 12.5,
                          "features": {"amount": 12.5, "hour": 3.0, "device_age_days": 10.0,
                                       "distance_from_home_km": 1.5, "txn_velocity_1h": 2.0,
                                       "merchant_category": "fuel"}}
    ev.update(over)
    return ev


def P(value: bytes | dict[str, Any] | None,  # noqa: N802
      headers: Sequence[tuple[str, bytes]] = (), offset: int = 0) -> RawRecord:
    v = encode(value) if isinstance(value, dict) else value
    return RawRecord("predictions", 0, offset, v, list(headers))


def L(value: bytes | dict[str, Any] | None,  # noqa: N802
      headers: Sequence[tuple[str, bytes]] = (), offset: int = 0) -> RawRecord:
    v = encode(value) if isinstance(value, dict) else value
    return RawRecord("labels", 0, offset, v, list(headers))


def reasons(batch: DecodedBatch) -> list[str]:
    return [r.reason for r in batch.rejected]


def one_reason(codec: EventCodec, record: RawRecord, kind: str = "prediction") -> str:
    batch = codec.decode([record]) if kind == "prediction" else codec.decode([], [record])
    assert len(batch.predictions) == 0
    assert len(batch.labels) == 0
    assert len(batch.rejected) == 1, batch.rejected
    rj = batch.rejected[0]
    assert rj.record is record
    assert rj.reason in REASONS
    assert rj.detail
    return rj.reason


# ---------------------------------------------------------------------------
# valid predictions
# ---------------------------------------------------------------------------


def test_valid_prediction_to_columns(codec: EventCodec) -> None:
    b = codec.decode([P(pred())])
    assert b.rejected == []
    p = b.predictions
    assert len(p) == 1
    assert p.event_id == ["e1"]
    assert p.model == [MODEL]
    assert p.version == ["v1"]
    assert p.ts.dtype == np.float64
    assert p.ts.tolist() == [TS]
    assert p.score.dtype == np.float64
    assert p.score.tolist() == [0.7]
    assert p.decision.dtype == np.bool_
    assert p.amount.tolist() == [12.5]
    assert p.numeric.shape == (1, len(NUMERIC))
    assert p.numeric.dtype == np.float64
    assert p.numeric[0].tolist() == [12.5, 3.0, 10.0, 1.5, 2.0]
    assert p.categorical == {"merchant_category": ["fuel"]}


def test_missing_features_are_nan_and_none(codec: EventCodec) -> None:
    b = codec.decode([P(pred(features={"hour": 5})), P(pred(event_id="e2", amount=None))])
    assert b.rejected == []
    num = b.predictions.numeric
    assert num[0, 1] == 5.0
    assert np.isnan(num[0, [0, 2, 3, 4]]).all()
    assert b.predictions.categorical["merchant_category"][0] is None
    assert math.isnan(b.predictions.amount[1])


def test_features_object_may_be_absent(codec: EventCodec) -> None:
    ev = pred()
    del ev["features"]
    b = codec.decode([P(ev)])
    assert b.rejected == []
    assert np.isnan(b.predictions.numeric).all()
    assert b.predictions.categorical["merchant_category"] == [None]


def test_non_string_categories_are_kept(codec: EventCodec) -> None:
    b = codec.decode([P(pred(features={"merchant_category": 5411}))])
    assert b.rejected == []
    assert b.predictions.categorical["merchant_category"] == [5411]


def test_decision_from_threshold_when_absent(codec: EventCodec) -> None:
    # the model's threshold is 0.6: at or above is a decline
    evs = [pred(event_id=f"e{i}", score=s) for i, s in enumerate((0.59, 0.6, 0.95, 0.0))]
    b = codec.decode([P(e) for e in evs])
    assert b.predictions.decision.tolist() == [False, True, True, False]


def test_explicit_decision_is_respected(codec: EventCodec) -> None:
    evs = [pred(event_id="a", score=0.9, decision=False), pred(event_id="b", score=0.1,
                                                                decision=True),
           pred(event_id="c", score=0.9, decision=0), pred(event_id="d", score=0.1,
                                                            decision=1)]
    b = codec.decode([P(e) for e in evs])
    assert b.rejected == []
    assert b.predictions.decision.tolist() == [False, True, False, True]


@pytest.mark.parametrize(("text", "epoch"), [
    ("2024-01-01T00:00:00Z", 1_704_067_200.0),
    ("2024-01-01T01:00:00+01:00", 1_704_067_200.0),
    ("2023-12-31T19:00:00.250-05:00", 1_704_067_200.25),
])
def test_rfc3339_timestamp_to_epoch(codec: EventCodec, text: str, epoch: float) -> None:
    b = codec.decode([P(pred(ts=text))])
    assert b.rejected == []
    assert b.predictions.ts.tolist() == [pytest.approx(epoch, abs=1e-6)]
    assert datetime.fromtimestamp(b.predictions.ts[0], UTC).year in (2023, 2024)


def test_integer_epoch_timestamp(codec: EventCodec) -> None:
    b = codec.decode([P(pred(ts=1_700_000_000))])
    assert b.predictions.ts.tolist() == [1_700_000_000.0]


def test_valid_records_survive_invalid_neighbours(codec: EventCodec) -> None:
    preds = [P(pred(event_id="ok-1"), offset=0), P(b"{broken", offset=1),
             P(pred(event_id="ok-2", score=2.0), offset=2), P(None, offset=3),
             P(pred(event_id="ok-3"), offset=4), P(pred(event_id="", score=0.1), offset=5),
             P(pred(event_id="ok-4", model="nope"), offset=6), P(pred(event_id="ok-5"),
                                                                 offset=7)]
    labels = [L({"event_id": "ok-1", "label": 1}, offset=0), L({"event_id": "x", "label": 3},
                                                              offset=1),
              L({"event_id": "ok-3", "label": 0}, offset=2), L(b"", offset=3)]
    b = codec.decode(preds, labels)
    assert b.predictions.event_id == ["ok-1", "ok-3", "ok-5"]
    assert b.labels.event_id == ["ok-1", "ok-3"]
    assert b.labels.label.tolist() == [1, 0]
    assert sorted((r.record.topic, r.record.offset, r.reason) for r in b.rejected) == [
        ("labels", 1, "bad_label"), ("labels", 3, "empty"),
        ("predictions", 1, "not_json"), ("predictions", 2, "score_out_of_range"),
        ("predictions", 3, "empty"), ("predictions", 5, "bad_event_id"),
        ("predictions", 6, "unknown_model"),
    ]


# ---------------------------------------------------------------------------
# rejection reasons
# ---------------------------------------------------------------------------

# regression: msgspec raises UnicodeDecodeError (not its own error) for invalid
# UTF-8 inside a JSON string; the codec must reject it as not_utf8, not raise.


def _params(rows: list[Any]) -> list[Any]:
    """pytest params with readable ids; rows already wrapped in pytest.param stay."""
    return [r if hasattr(r, "marks") else pytest.param(*r, id=f"{r[0]}-{i}")
            for i, r in enumerate(rows)]


REJECTIONS: list[Any] = [
    ("empty", None),
    ("empty", b""),
    ("too_large", pred(pad="x" * 2000)),
    ("not_json", b"{not json"),
    ("not_json", b'{"event_id": "e1",'),
    ("not_json", b'{"event_id":"e","model":"card-fraud","model_version":"v1","ts":1,'
                 b'"score":NaN}'),
    ("not_utf8", b"\xff\xfe\x00garbage"),
    pytest.param("not_utf8", b'{"event_id": "\xc3\x28"}', id="not_utf8-in-string"),
    ("wrong_type", b"[1, 2, 3]"),
    ("wrong_type", b'"a string"'),
    ("wrong_type", pred(score="high")),
    ("wrong_type", pred(score=True)),
    ("wrong_type", pred(features={"amount": "lots"})),
    ("wrong_type", pred(features=[1, 2])),
    ("wrong_type", pred(decision=2)),
    ("wrong_type", pred(model_version=3)),
    ("missing_field", {k: v for k, v in pred().items() if k != "score"}),
    ("missing_field", {k: v for k, v in pred().items() if k != "model_version"}),
    ("missing_field", {k: v for k, v in pred().items() if k != "event_id"}),
    ("missing_field", {k: v for k, v in pred().items() if k != "ts"}),
    ("bad_event_id", pred(event_id="")),
    ("bad_event_id", pred(event_id="x" * 257)),
    ("bad_timestamp", pred(ts="2024-01-01T00:00:00")),
    ("bad_timestamp", pred(ts="yesterday")),
    ("bad_timestamp", pred(ts=-1.0)),
    ("bad_timestamp", pred(ts=1e15)),
    ("score_out_of_range", pred(score=1.5)),
    ("score_out_of_range", pred(score=-0.01)),
    ("score_not_finite", b'{"event_id":"e","model":"card-fraud","model_version":"v1",'
                         b'"ts":1700000000,"score":1e999}'),
    ("bad_amount", pred(amount=-0.5)),
    ("bad_amount", pred(amount=1e13)),
    ("unknown_model", pred(model="some-other-model")),
]


@pytest.mark.parametrize(("reason", "value"), _params(REJECTIONS))
def test_prediction_rejections(codec: EventCodec, reason: str,
                               value: bytes | dict[str, Any] | None) -> None:
    assert one_reason(codec, P(value)) == reason


def test_event_id_at_the_length_limit_is_accepted(codec: EventCodec) -> None:
    b = codec.decode([P(pred(event_id="x" * 256))])
    assert b.rejected == []


def test_too_large_names_the_limit(codec: EventCodec) -> None:
    b = codec.decode([P(pred(pad="x" * 2000))])
    assert "1024" in b.rejected[0].detail


def test_too_many_versions(codec: EventCodec) -> None:
    # max_versions 3: champion v1 and canary v2 always fit, plus one more
    evs = [pred(event_id=f"e{i}", model_version=v)
           for i, v in enumerate(["v3", "v4", "v1", "v2", "v3", "v5"])]
    b = codec.decode([P(e, offset=i) for i, e in enumerate(evs)])
    assert b.predictions.version == ["v3", "v1", "v2", "v3"]
    assert [(r.record.offset, r.reason) for r in b.rejected] == [
        (1, "too_many_versions"), (5, "too_many_versions")]
    # the cap holds across batches
    assert reasons(codec.decode([P(pred(model_version="v6"))])) == ["too_many_versions"]


def test_version_allowed_hook(tmp_path: Path) -> None:
    c = EventCodec(_settings(tmp_path), version_allowed=lambda m, v: v.startswith("v"))
    b = c.decode([P(pred(model_version="v9")), P(pred(model_version="x1"))])
    assert b.predictions.version == ["v9"]
    assert reasons(b) == ["too_many_versions"]


def test_unknown_models_allowed_by_setting(tmp_path: Path) -> None:
    c = EventCodec(_settings(tmp_path, codec={"allow_unknown_models": True}))
    b = c.decode([P(pred(model="other", score=0.55))])
    assert b.rejected == []
    assert b.predictions.model == ["other"]
    # unknown models use the default threshold 0.5
    assert b.predictions.decision.tolist() == [True]


# ---------------------------------------------------------------------------
# labels
# ---------------------------------------------------------------------------


def test_labels_decode(codec: EventCodec) -> None:
    b = codec.decode([], [L({"event_id": "a", "label": 1, "ts": TS, "amount": 99.5}),
                          L({"event_id": "b", "label": 0}),
                          L({"event_id": "c", "label": True}),
                          L({"event_id": "d", "label": False, "ts": "2024-01-01T00:00:00Z"})])
    assert b.rejected == []
    lab = b.labels
    assert lab.event_id == ["a", "b", "c", "d"]
    assert lab.label.dtype == np.int8
    assert lab.label.tolist() == [1, 0, 1, 0]
    assert lab.ts[0] == TS
    assert math.isnan(lab.ts[1])
    assert lab.ts[3] == 1_704_067_200.0
    assert lab.amount[0] == 99.5
    assert math.isnan(lab.amount[1])


LABEL_REJECTIONS: list[Any] = [
    ("empty", b""),
    ("not_json", b"label=1"),
    ("not_utf8", b"\x80\x81"),
    pytest.param("not_utf8", b'{"event_id": "\xe2\x28\xa1", "label": 1}',
                 id="not_utf8-in-string"),
    ("wrong_type", {"event_id": "a", "label": "1"}),
    ("wrong_type", b"[]"),
    ("missing_field", {"label": 1}),
    ("missing_field", {"event_id": "a"}),
    ("bad_event_id", {"event_id": "", "label": 1}),
    ("bad_label", {"event_id": "a", "label": 2}),
    ("bad_label", {"event_id": "a", "label": -1}),
    ("bad_timestamp", {"event_id": "a", "label": 1, "ts": "2024-01-01 00:00"}),
    ("bad_timestamp", {"event_id": "a", "label": 1, "ts": -3}),
    ("bad_amount", {"event_id": "a", "label": 1, "amount": -2}),
]


@pytest.mark.parametrize(("reason", "value"), _params(LABEL_REJECTIONS))
def test_label_rejections(codec: EventCodec, reason: str,
                          value: bytes | dict[str, Any] | None) -> None:
    assert one_reason(codec, L(value), kind="label") == reason


# ---------------------------------------------------------------------------
# CloudEvents binary mode
# ---------------------------------------------------------------------------


def test_cloudevents_headers_fill_missing_attributes(codec: EventCodec) -> None:
    body = {"score": 0.2, "features": {"amount": 3.0, "merchant_category": "travel"}}
    b = codec.decode([P(body, CE_HEADERS)])
    assert b.rejected == []
    p = b.predictions
    assert p.event_id == ["ce-42"]
    assert p.model == [MODEL]
    assert p.version == ["v2"]
    assert p.ts.tolist() == [1_704_067_200.0]
    assert p.score.tolist() == [0.2]
    assert p.numeric[0, 0] == 3.0
    assert p.categorical["merchant_category"] == ["travel"]


def test_cloudevents_body_wins_over_headers(codec: EventCodec) -> None:
    b = codec.decode([P(pred(event_id="body-id", model_version="v1", ts=TS), CE_HEADERS)])
    assert b.rejected == []
    assert b.predictions.event_id == ["body-id"]
    assert b.predictions.version == ["v1"]
    assert b.predictions.ts.tolist() == [TS]


def test_cloudevents_label(codec: EventCodec) -> None:
    b = codec.decode([], [L({"label": True}, CE_HEADERS)])
    assert b.rejected == []
    assert b.labels.event_id == ["ce-42"]
    assert b.labels.label.tolist() == [1]
    assert b.labels.ts.tolist() == [1_704_067_200.0]


def test_plain_records_with_other_headers_are_plain(codec: EventCodec) -> None:
    b = codec.decode([P(pred(), [("traceparent", b"00-abc-def-01")])])
    assert b.rejected == []
    assert b.predictions.event_id == ["e1"]


def _headers(drop: str = "", **replace: bytes) -> list[tuple[str, bytes]]:
    return [(k, replace.get(k, v)) for k, v in CE_HEADERS if k != drop]


@pytest.mark.parametrize("headers", [
    pytest.param(_headers(drop="ce_id"), id="no-ce_id"),
    pytest.param(_headers(ce_id=b""), id="empty-ce_id"),
    pytest.param(_headers(drop="ce_type"), id="no-ce_type"),
    pytest.param(_headers(drop="ce_source"), id="no-ce_source"),
    pytest.param(_headers(ce_specversion=b"0.3"), id="specversion-0.3"),
    pytest.param(_headers(ce_source=b"\xff\xfe"), id="not-utf8-header"),
])
def test_cloudevents_header_rejections(codec: EventCodec,
                                       headers: list[tuple[str, bytes]]) -> None:
    assert one_reason(codec, P({"score": 0.2}, headers)) == "cloudevents_header"
    assert one_reason(codec, L({"label": 1}, headers), kind="label") == "cloudevents_header"


def test_cloudevents_disabled_ignores_headers(tmp_path: Path) -> None:
    c = EventCodec(_settings(tmp_path, cloudevents={"enabled": False}))
    assert reasons(c.decode([P({"score": 0.2}, CE_HEADERS)])) == ["missing_field"]


def test_cloudevents_data_must_be_an_object(codec: EventCodec) -> None:
    assert one_reason(codec, P(b"[0.2]", CE_HEADERS)) == "wrong_type"
    assert one_reason(codec, P(b"{nope", CE_HEADERS)) == "not_json"


def test_cloudevents_data_not_utf8(codec: EventCodec) -> None:
    assert one_reason(codec, P(b'{"score": 0.2, "note": "\xc3\x28"}', CE_HEADERS)) == "not_utf8"


def test_cloudevents_score_not_finite(codec: EventCodec) -> None:
    assert one_reason(codec, P(b'{"score":1e999}', CE_HEADERS)) == "score_not_finite"


# ---------------------------------------------------------------------------
# field-name mapping
# ---------------------------------------------------------------------------

MAPPING = {"event_id": "txn_id", "model": "service", "model_version": "revision",
           "ts": "time", "score": "fraud_probability", "decision": "declined",
           "amount": "value", "features": "x", "label": "is_fraud"}


@pytest.fixture
def mapped(tmp_path: Path) -> EventCodec:
    return EventCodec(_settings(tmp_path, fields=MAPPING))


def test_field_mapping_predictions(mapped: EventCodec) -> None:
    ev = {"txn_id": "t1", "service": MODEL, "revision": "v2", "time": TS,
          "fraud_probability": 0.9, "value": 5.0, "declined": False,
          "x": {"hour": 23, "merchant_category": "gambling"}}
    b = mapped.decode([P(ev)])
    assert b.rejected == []
    p = b.predictions
    assert (p.event_id, p.model, p.version) == (["t1"], [MODEL], ["v2"])
    assert p.score.tolist() == [0.9]
    assert p.decision.tolist() == [False]
    assert p.amount.tolist() == [5.0]
    assert p.numeric[0, 1] == 23.0
    assert p.categorical["merchant_category"] == ["gambling"]
    # the default names are no longer recognised
    assert reasons(mapped.decode([P(pred())])) == ["missing_field"]


def test_field_mapping_labels(mapped: EventCodec) -> None:
    b = mapped.decode([], [L({"txn_id": "t1", "is_fraud": True, "time": TS, "value": 3})])
    assert b.rejected == []
    assert b.labels.event_id == ["t1"]
    assert b.labels.label.tolist() == [1]
    assert b.labels.amount.tolist() == [3.0]


def test_field_mapping_rejections(mapped: EventCodec) -> None:
    base = {"txn_id": "t1", "service": MODEL, "revision": "v1", "time": TS,
            "fraud_probability": 0.9}
    assert reasons(mapped.decode([P({**base, "fraud_probability": 1.2})])) == [
        "score_out_of_range"]
    raw = json.dumps({**base, "fraud_probability": 0}).replace(
        '"fraud_probability": 0', '"fraud_probability": 1e999').encode()
    assert reasons(mapped.decode([P(raw)])) == ["score_not_finite"]
    assert reasons(mapped.decode([P({**base, "time": "noon"})])) == ["bad_timestamp"]


def test_field_mapping_bad_event_id(mapped: EventCodec) -> None:
    base = {"service": MODEL, "revision": "v1", "time": TS, "fraud_probability": 0.9}
    assert reasons(mapped.decode([P({**base, "txn_id": ""})])) == ["bad_event_id"]


def test_cloudevents_with_field_mapping(mapped: EventCodec) -> None:
    b = mapped.decode([P({"fraud_probability": 0.3}, CE_HEADERS)])
    assert b.rejected == []
    assert b.predictions.event_id == ["ce-42"]
    assert b.predictions.version == ["v2"]


# ---------------------------------------------------------------------------
# properties: bad input never raises
# ---------------------------------------------------------------------------


def _check_accounted(codec: EventCodec, preds: list[RawRecord],
                     labels: list[RawRecord]) -> DecodedBatch:
    b = codec.decode(preds, labels)
    assert len(b.predictions) + len(b.labels) + len(b.rejected) == len(preds) + len(labels)
    assert all(r.reason in REASONS for r in b.rejected)
    assert len(b.predictions.ts) == len(b.predictions.score) == len(b.predictions.decision)
    assert b.predictions.numeric.shape == (len(b.predictions), len(NUMERIC))
    return b


# bytes that reach the JSON parser's string and number paths, not only its first byte
PREFIXES = [b"", b'{"event_id": "', b'{"event_id": "e", "model": "card-fraud", "score": ',
            b'{"label": 1, "event_id": "', b'{"features": {"merchant_category": "', b"[", b'"']
ARBITRARY = st.builds(lambda prefix, tail: prefix + tail, st.sampled_from(PREFIXES),
                      st.binary(max_size=200))
UTF8 = st.builds(lambda prefix, tail: prefix + tail.encode(), st.sampled_from(PREFIXES),
                 st.text(max_size=100))


@PROPERTY
@given(preds=st.lists(UTF8, max_size=8), labels=st.lists(UTF8, max_size=8))
def test_arbitrary_utf8_never_raises(codec: EventCodec, preds: list[bytes],
                                     labels: list[bytes]) -> None:
    _check_accounted(codec, [P(v, offset=i) for i, v in enumerate(preds)],
                     [L(v, offset=i) for i, v in enumerate(labels)])


@PROPERTY
@example(preds=[b'{"event_id": "\xc3\x28"}'], labels=[])
@given(preds=st.lists(ARBITRARY, max_size=8), labels=st.lists(ARBITRARY, max_size=8))
def test_arbitrary_bytes_never_raise(codec: EventCodec, preds: list[bytes],
                                     labels: list[bytes]) -> None:
    _check_accounted(codec, [P(v, offset=i) for i, v in enumerate(preds)],
                     [L(v, offset=i) for i, v in enumerate(labels)])


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=6,
)
KEYS = ["event_id", "model", "model_version", "ts", "score", "decision", "amount",
        "features", "label"]


@st.composite
def json_events(draw: st.DrawFn) -> bytes:
    base: dict[str, Any] = dict(pred())
    base["label"] = 1
    for key in draw(st.lists(st.sampled_from(KEYS), unique=True, max_size=4)):
        if draw(st.booleans()):
            base.pop(key, None)
        else:
            base[key] = draw(JSON_VALUES)
    if draw(st.booleans()):
        base["features"] = {f: draw(JSON_VALUES) for f in
                            draw(st.lists(st.sampled_from([*NUMERIC, "merchant_category"]),
                                          unique=True, max_size=3))}
    return json.dumps(base).encode()  # may contain NaN/Infinity: invalid JSON


@st.composite
def ce_headers(draw: st.DrawFn) -> list[tuple[str, bytes]]:
    if not draw(st.booleans()):
        return []
    out = []
    for key, value in CE_HEADERS:
        if draw(st.integers(0, 5)) == 0:
            continue
        if draw(st.integers(0, 4)) == 0:
            value = draw(st.binary(max_size=20))
        out.append((key, value))
    return out


@PROPERTY
@given(events=st.lists(st.tuples(json_events(), ce_headers(), st.booleans()), max_size=6))
def test_arbitrary_json_events_never_raise(codec: EventCodec,
                                           events: list[tuple[bytes, list[tuple[str, bytes]],
                                                              bool]]) -> None:
    preds = [P(v, h, i) for i, (v, h, is_label) in enumerate(events) if not is_label]
    labels = [L(v, h, i) for i, (v, h, is_label) in enumerate(events) if is_label]
    b = _check_accounted(codec, preds, labels)
    assert np.all((b.predictions.score >= 0) & (b.predictions.score <= 1))
    assert np.all(np.isfinite(b.predictions.ts))
    assert set(b.labels.label.tolist()) <= {0, 1}


def test_refused_predictions_are_reported_per_version(codec: EventCodec) -> None:
    # the decision layer hears which versions' events are refused, so that a
    # canary whose events all bounce is reported unmonitored, never "ok"
    heard: list[tuple[str, str, str, int]] = []
    codec.on_refused = lambda *a: heard.append(a)
    batch = codec.decode([P(pred(event_id="a", model_version="v2", score=1.7)),
                          P(pred(event_id="b", model_version="v2", score=2.0)),
                          P(pred(event_id="c", model_version="v1")),
                          P(pred(event_id="d", model_version="v1", score=-1.0))])
    assert len(batch.predictions) == 1
    assert sorted(heard) == [(MODEL, "v1", "score_out_of_range", 1),
                             (MODEL, "v2", "score_out_of_range", 2)]
