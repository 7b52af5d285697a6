"""The compiled fast path (monitor/ingest/_native/fastdecode.c) decodes exactly as msgspec.

The fast path fills the prediction columns straight from yyjson documents. It
may take a batch only if every record is one msgspec decodes to the same
values; anything else must go to msgspec. Each test here decodes the same batch
with the fast path on and off and requires the same columns (types included)
and the same rejections, and checks which path took it.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from monitor.config import Settings, load_settings
from monitor.ingest import fastpath as codec_module
from monitor.ingest.codec import EventCodec
from monitor.ingest.fastpath import FAST_DECODE_AVAILABLE
from monitor.ingest.records import RawRecord, Record
from tests.support import MODEL, assert_fast_path_agrees, write_config

FEATURES = ["amount", "hour", "txn_velocity_1h"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    root = tmp_path_factory.mktemp("fast")
    return load_settings(write_config(
        root / "config.yaml", reference={"fit_from_champion_events": 10},
        codec={"max_message_bytes": 4096},
        features={"numeric": FEATURES, "categorical": ["merchant_category", "country"]},
        models=[{"name": MODEL, "champion": "v1", "canary": "v2", "threshold": 0.6}]))


def base(i: int = 0, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event_id": f"e{i}", "model": MODEL, "model_version": "v1", "ts": 1.7e9 + i,
        "score": 0.25, "decision": False, "amount": 12.5,
        "features": {"amount": 12.5, "hour": 3, "txn_velocity_1h": 0.5,
                     "merchant_category": "fuel", "country": "DE"}}
    ev.update(extra)
    return ev


def records(values: list[bytes]) -> list[Record]:
    return [RawRecord("predictions", i % 3, i, v) for i, v in enumerate(values)]


def test_the_extension_is_built_here() -> None:
    # `make test` installs the package with its C extension (gcc and the Python
    # headers are on this machine kind); without it the fast path is not tested
    assert FAST_DECODE_AVAILABLE, \
        "monitor.ingest._fastdecode was not built: pip install -e . failed?"
    from monitor.ingest import _fastdecode

    assert _fastdecode.YYJSON_VERSION.count(".") == 2


def test_a_plain_batch_takes_the_fast_path(cfg: Settings) -> None:
    values = [json.dumps(base(i)).encode() for i in range(50)]
    assert assert_fast_path_agrees(cfg, records(values))
    c = EventCodec(cfg)
    b = c.decode(records(values))
    assert (c.fast_batches, c.fast_fallbacks, c.msgspec_batches) == (1, 0, 0)
    assert c.fast_path
    assert b.predictions.event_id == [f"e{i}" for i in range(50)]
    assert b.predictions.numeric[:, 1].tolist() == [3.0] * 50
    assert b.predictions.categorical["country"] == ["DE"] * 50


def test_one_bad_record_sends_the_batch_to_msgspec(cfg: Settings) -> None:
    values = [json.dumps(base(i)).encode() for i in range(5)]
    values[3] = values[3].replace(b'"score": 0.25', b'"score": "high"')
    c = EventCodec(cfg)
    b = c.decode(records(values))
    assert (c.fast_batches, c.fast_fallbacks, c.msgspec_batches) == (0, 1, 1)
    assert [rj.reason for rj in b.rejected] == ["wrong_type"]
    assert len(b.predictions) == 4
    assert not assert_fast_path_agrees(cfg, records(values))


def test_switched_off_by_config(cfg: Settings) -> None:
    off = cfg.model_copy(update={"codec": cfg.codec.model_copy(update={"fast_decode": False})})
    c = EventCodec(off)
    c.decode(records([json.dumps(base(i)).encode() for i in range(3)]))
    assert (c.fast_batches, c.fast_fallbacks, c.msgspec_batches) == (0, 0, 1)
    assert not c.fast_path


# values the fast path must either decode exactly as msgspec or leave to it
EDGE_CASES: list[tuple[str, bytes]] = [
    ("escaped strings", json.dumps(base(event_id="e\u00e9\\\"\n\u2028x",
                                        model_version="v\u00b2")).encode()),
    ("ensure_ascii escapes", json.dumps(base(event_id="\u00e9\U0001f600"),
                                        ensure_ascii=True).encode()),
    ("raw utf-8", json.dumps(base(event_id="\u00e9\U0001f600"), ensure_ascii=False).encode()),
    ("escaped key", json.dumps(base()).replace('"score"', '"sc\\u006fre"').encode()),
    ("lone surrogate", json.dumps(base()).replace('"e0"', '"\\ud800"').encode()),
    ("unknown nested", json.dumps(base(trace={"a": [1, {"b": [None, True]}]})).encode()),
    ("unknown deep", json.dumps(base(trace=json.loads("[" * 40 + "]" * 40))).encode()),
    ("unknown very deep", json.dumps(base())[:-1].encode() + b', "t": ' + b"[" * 3000
     + b"]" * 3000 + b"}"),
    ("feature unknown deep",
     json.dumps(base(features={"x": json.loads("[" * 40 + "]" * 40)})).encode()),
    ("int numbers", json.dumps(base(score=1, ts=1700000000, amount=3)).encode()),
    ("negative zero", json.dumps(base(score=-0.0)).replace("-0.0", "-0").encode()),
    ("big int score", json.dumps(base()).replace("0.25", "18446744073709551616").encode()),
    ("uint64 max amount", json.dumps(base(amount=18446744073709551615)).encode()),
    ("int64 min feature",
     json.dumps(base(features={"hour": -9223372036854775808})).encode()),
    ("huge real", json.dumps(base()).replace("12.5,", "1e400,", 1).encode()),
    ("tiny real", json.dumps(base()).replace("12.5,", "1e-400,", 1).encode()),
    ("exponent forms", json.dumps(base()).replace("0.25", "2.5E-1").encode()),
    ("decision 1", json.dumps(base(decision=1)).encode()),
    ("decision 0", json.dumps(base(decision=0)).encode()),
    ("decision 2", json.dumps(base(decision=2)).encode()),
    ("decision -1", json.dumps(base(decision=-1)).encode()),
    ("decision 1.0", json.dumps(base(decision=1.0)).encode()),
    ("decision null", json.dumps(base(decision=None)).encode()),
    ("decision missing", json.dumps({k: v for k, v in base().items() if k != "decision"}
                                    ).encode()),
    ("decision string", json.dumps(base(decision="true")).encode()),
    ("amount null", json.dumps(base(amount=None)).encode()),
    ("amount bool", json.dumps(base(amount=True)).encode()),
    ("score bool", json.dumps(base(score=True)).encode()),
    ("score null", json.dumps(base(score=None)).encode()),
    ("score out of range", json.dumps(base(score=1.5)).encode()),
    ("ts string", json.dumps(base(ts="2024-01-01T00:00:00Z")).encode()),
    ("ts null", json.dumps(base(ts=None)).encode()),
    ("ts negative", json.dumps(base(ts=-1)).encode()),
    ("features null", json.dumps(base(features=None)).encode()),
    ("features missing", json.dumps({k: v for k, v in base().items() if k != "features"}
                                    ).encode()),
    ("features array", json.dumps(base(features=[1, 2])).encode()),
    ("feature null", json.dumps(base(features={"amount": None, "hour": 1})).encode()),
    ("feature bool", json.dumps(base(features={"amount": True})).encode()),
    ("feature string", json.dumps(base(features={"amount": "1"})).encode()),
    ("categorical types", json.dumps(base(features={
        "merchant_category": True, "country": 7, "hour": 1.0})).encode()),
    ("categorical float", json.dumps(base(features={"country": 7.0})).encode()),
    ("categorical big int", json.dumps(base(features={"country": 2**70})).encode()),
    ("categorical object", json.dumps(base(features={"country": {"a": 1}})).encode()),
    ("categorical null", json.dumps(base(features={"country": None})).encode()),
    ("duplicate top key", json.dumps(base())[:-1].encode() + b', "score": 0.5}'),
    ("duplicate feature", json.dumps(base()).replace('"hour": 3', '"hour": 3, "hour": 4'
                                                     ).encode()),
    ("duplicate unknown", json.dumps(base())[:-1].encode() + b', "x": 1, "x": [2]}'),
    ("empty event id", json.dumps(base(event_id="")).encode()),
    ("long event id", json.dumps(base(event_id="x" * 257)).encode()),
    ("event id 256 chars", json.dumps(base(event_id="\u00e9" * 256)).encode()),
    ("model 129 chars", json.dumps(base(model="m" * 129)).encode()),
    ("unknown model", json.dumps(base(model="other")).encode()),
    ("version limit", json.dumps(base(model_version="v" + "9" * 5)).encode()),
    ("missing event id", json.dumps({k: v for k, v in base().items() if k != "event_id"}
                                    ).encode()),
    ("missing score", json.dumps({k: v for k, v in base().items() if k != "score"}).encode()),
    ("whitespace", b" \n\t" + json.dumps(base(), indent=2).encode() + b"\r\n "),
    ("bom", b"\xef\xbb\xbf" + json.dumps(base()).encode()),
    ("nul byte", json.dumps(base()).encode() + b"\x00"),
    ("nul in string", json.dumps(base(event_id="a\u0000b")).encode()),
    ("trailing garbage", json.dumps(base()).encode() + b"x"),
    ("two objects", json.dumps(base()).encode() * 2),
    ("array root", b"[" + json.dumps(base()).encode() + b"]"),
    ("scalar root", b"1"),
    ("empty", b""),
    ("invalid utf-8 in skipped", json.dumps(base())[:-1].encode() + b', "t": "\xff"}'),
    ("overlong utf-8", json.dumps(base())[:-1].encode() + b', "t": "\xc0\xaf"}'),
    ("trailing comma", json.dumps(base())[:-1].encode() + b",}"),
    ("comment", json.dumps(base())[:-1].encode() + b"/* c */}"),
    ("nan literal", json.dumps(base()).replace("0.25", "NaN").encode()),
    ("leading zero", json.dumps(base()).replace("12.5,", "012.5,", 1).encode()),
    ("plus sign", json.dumps(base()).replace("0.25", "+0.25").encode()),
    ("single quotes", json.dumps(base()).replace('"e0"', "'e0'").encode()),
    ("oversize", json.dumps(base(trace="x" * 5000)).encode()),
    ("control char in string", json.dumps(base()).replace('"e0"', '"e\t0"').encode()),
]


@pytest.mark.parametrize("value", [v for _, v in EDGE_CASES],
                         ids=[name for name, _ in EDGE_CASES])
def test_edge_cases_agree_alone_and_in_a_batch(cfg: Settings, value: bytes) -> None:
    good = [json.dumps(base(i)).encode() for i in range(1, 4)]
    assert_fast_path_agrees(cfg, records([value]))
    assert_fast_path_agrees(cfg, records([good[0], value, *good[1:]]))


def test_records_without_a_value_or_with_cloudevents_headers_skip_it(cfg: Settings) -> None:
    ok = json.dumps(base()).encode()
    c = EventCodec(cfg)
    c.decode([RawRecord("p", 0, 0, ok), RawRecord("p", 0, 1, None)])
    ce = cfg.model_copy(update={"cloudevents": cfg.cloudevents.model_copy(
        update={"enabled": True})})
    c2 = EventCodec(ce)
    c2.decode([RawRecord("p", 0, 0, ok, [("ce_specversion", b"1.0")])])
    assert (c.fast_batches, c2.fast_batches) == (0, 0)


# --------------------------------------------------------------------- hypothesis

NUMBER = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**70, 2**70),
                   st.sampled_from([0, -0.0, 1e308, 5e-324]))
TEXT = st.text(max_size=8)
ANY = st.recursive(st.one_of(st.none(), st.booleans(), NUMBER, TEXT),
                   lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                       TEXT, inner, max_size=3), max_leaves=8)


@st.composite
def prediction(draw: st.DrawFn) -> bytes:
    """Mostly valid events in many spellings, sometimes with one wrong field."""
    i = draw(st.integers(0, 10**6))
    feats: dict[str, Any] = {}
    for name in FEATURES:
        if draw(st.integers(0, 9)):
            feats[name] = draw(st.one_of(st.floats(-1e6, 1e6), st.integers(-10**6, 10**6),
                                         st.none()))
    for name in ("merchant_category", "country"):
        if draw(st.booleans()):
            feats[name] = draw(st.one_of(st.none(), st.booleans(), TEXT,
                                         st.integers(-2**63, 2**63 - 1),
                                         st.floats(allow_nan=False, allow_infinity=False)))
    if draw(st.integers(0, 4)) == 0:
        feats[draw(TEXT)] = draw(ANY)
    ev: dict[str, Any] = {
        "event_id": draw(st.one_of(st.just(f"e{i}"), st.text(min_size=1, max_size=12))),
        "model": MODEL, "model_version": draw(st.sampled_from(["v1", "v2", "v3"])),
        "ts": draw(st.one_of(st.floats(1.5e9, 1.9e9), st.integers(1_500_000_000, 1_900_000_000))),
        "score": draw(st.one_of(st.floats(0, 1), st.sampled_from([0, 1]))),
        "features": feats,
    }
    if draw(st.booleans()):
        ev["decision"] = draw(st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1])))
    if draw(st.booleans()):
        ev["amount"] = draw(st.one_of(st.none(), st.floats(0, 1e9), st.integers(0, 10**9)))
    if draw(st.integers(0, 3)) == 0:
        ev[draw(TEXT)] = draw(ANY)
    if draw(st.integers(0, 9)) == 0:  # one wrong field
        ev[draw(st.sampled_from(sorted(ev)))] = draw(ANY)
    keys = draw(st.permutations(list(ev)))
    ev = {k: ev[k] for k in keys}
    sep = draw(st.sampled_from([(",", ":"), (", ", ": "), (" ,", " : ")]))
    return json.dumps(ev, separators=sep, ensure_ascii=draw(st.booleans()),
                      indent=draw(st.sampled_from([None, None, 1]))).encode()


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(prediction(), min_size=1, max_size=8))
def test_fast_path_equals_msgspec(cfg: Settings, values: list[bytes]) -> None:
    took = assert_fast_path_agrees(cfg, records(values))
    event("fast path" if took else "msgspec")


def test_hypothesis_batches_do_take_the_fast_path(cfg: Settings) -> None:
    # the property above is only worth something if many of its batches are taken
    taken = []

    @settings(max_examples=100, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(values=st.lists(prediction(), min_size=1, max_size=3))
    def run(values: list[bytes]) -> None:
        taken.append(assert_fast_path_agrees(cfg, records(values)))

    run()
    assert sum(taken) >= len(taken) // 4, (sum(taken), len(taken))


def test_fast_columns_are_writable_numpy_arrays(cfg: Settings) -> None:
    c = EventCodec(cfg)
    p = c.decode(records([json.dumps(base(i)).encode() for i in range(4)])).predictions
    assert c.fast_batches == 1
    for arr in (p.ts, p.score, p.amount, p.numeric):
        assert arr.dtype == np.float64
        assert arr.flags.writeable
    assert p.decision.dtype == np.bool_
    assert codec_module.FAST_DECODE_AVAILABLE


def test_bad_buffers_are_refused() -> None:
    from monitor.ingest import _fastdecode

    keys = tuple(k.encode() for k in ("a", "b", "c", "d", "e", "f", "g", "h"))
    ok = np.empty(1)
    with pytest.raises(ValueError, match="ts buffer has 16 bytes, need 8"):
        _fastdecode.decode_predictions([b"{}"], keys, (), 0, np.empty(2), ok, np.empty(1, np.int8),
                                       ok, np.empty(0))
    with pytest.raises(ValueError, match="need 8 keys"):
        _fastdecode.decode_predictions([b"{}"], keys[:7], (), 0, ok, ok, np.empty(1, np.int8),
                                       ok, np.empty(0))
    with pytest.raises(TypeError):
        _fastdecode.decode_predictions([b"{}"], keys, ("x",), 1, ok, ok, np.empty(1, np.int8),  # type: ignore[arg-type]
                                       ok, np.empty(1))
    ro = np.empty(1)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        _fastdecode.decode_predictions([b"{}"], keys, (), 0, ro, ok, np.empty(1, np.int8),
                                       ok, np.empty(0))
    # a value that is not bytes: left to msgspec (index 0)
    out = _fastdecode.decode_predictions(["{}"], keys, (), 0, ok, ok,  # type: ignore[list-item]
                                         np.empty(1, np.int8), ok, np.empty(0))
    assert out == 0


# ------------------------------------------------------------------------- labels

def label(i: int = 0, **extra: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"e{i}", "label": 1, "ts": 1.7e9 + i, "amount": 3.5}
    ev.update(extra)
    return ev


def label_records(values: list[bytes]) -> list[Record]:
    return [RawRecord("labels", i % 3, i, v) for i, v in enumerate(values)]


def test_a_plain_label_batch_takes_the_fast_path(cfg: Settings) -> None:
    values = [json.dumps(label(i, label=i % 2 == 0)).encode() for i in range(20)]
    c = EventCodec(cfg)
    b = c.decode([], label_records(values))
    assert (c.fast_batches, c.fast_fallbacks) == (1, 0)
    assert b.labels.label.tolist() == [1, 0] * 10
    assert assert_fast_path_agrees(cfg, [], label_records(values))


LABEL_CASES: list[tuple[str, bytes]] = [
    ("label 0", json.dumps(label(label=0)).encode()),
    ("label true", json.dumps(label(label=True)).encode()),
    ("label 2", json.dumps(label(label=2)).encode()),
    ("label -1", json.dumps(label(label=-1)).encode()),
    ("label 1.0", json.dumps(label(label=1.0)).encode()),
    ("label big", json.dumps(label(label=2**70)).encode()),
    ("label null", json.dumps(label(label=None)).encode()),
    ("label string", json.dumps(label(label="1")).encode()),
    ("label missing", json.dumps({"event_id": "e1"}).encode()),
    ("event id missing", json.dumps({"label": 1}).encode()),
    ("ts null", json.dumps(label(ts=None)).encode()),
    ("ts missing", json.dumps({"event_id": "e1", "label": 0}).encode()),
    ("ts string", json.dumps(label(ts="2024-01-01T00:00:00+02:00")).encode()),
    ("ts negative", json.dumps(label(ts=-5)).encode()),
    ("ts huge", json.dumps(label(ts=1e11)).encode()),
    ("amount null", json.dumps(label(amount=None)).encode()),
    ("amount negative", json.dumps(label(amount=-1)).encode()),
    ("amount bool", json.dumps(label(amount=False)).encode()),
    ("amount int", json.dumps(label(amount=7)).encode()),
    ("duplicate label", json.dumps(label())[:-1].encode() + b', "label": 0}'),
    ("unknown nested", json.dumps(label(extra={"a": [1, {"b": None}]})).encode()),
    ("unknown deep", json.dumps(label())[:-1].encode() + b', "x": ' + b"[" * 100
     + b"]" * 100 + b"}"),
    ("escaped id", json.dumps(label(event_id="\u00e9\\\n")).encode()),
    ("long id", json.dumps(label(event_id="x" * 300)).encode()),
    ("not json", b"{label"),
    ("array", b"[1]"),
    ("empty", b""),
]


@pytest.mark.parametrize("value", [v for _, v in LABEL_CASES],
                         ids=[name for name, _ in LABEL_CASES])
def test_label_edge_cases_agree(cfg: Settings, value: bytes) -> None:
    good = [json.dumps(label(i)).encode() for i in range(1, 4)]
    assert_fast_path_agrees(cfg, [], label_records([value]))
    assert_fast_path_agrees(cfg, [], label_records([good[0], value, *good[1:]]))


@st.composite
def label_value(draw: st.DrawFn) -> bytes:
    ev: dict[str, Any] = {
        "event_id": draw(st.text(min_size=1, max_size=10)),
        "label": draw(st.one_of(st.booleans(), st.sampled_from([0, 1]))),
    }
    if draw(st.booleans()):
        ev["ts"] = draw(st.one_of(st.none(), st.floats(0, 1.9e9), st.integers(0, 2 * 10**9)))
    if draw(st.booleans()):
        ev["amount"] = draw(st.one_of(st.none(), st.floats(0, 1e6), st.integers(0, 10**6)))
    if draw(st.integers(0, 3)) == 0:
        ev[draw(TEXT)] = draw(ANY)
    if draw(st.integers(0, 9)) == 0:
        ev[draw(st.sampled_from(sorted(ev)))] = draw(ANY)
    keys = draw(st.permutations(list(ev)))
    return json.dumps({k: ev[k] for k in keys}, ensure_ascii=draw(st.booleans())).encode()


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(label_value(), min_size=1, max_size=8),
       preds=st.lists(prediction(), max_size=3))
def test_fast_label_path_equals_msgspec(cfg: Settings, values: list[bytes],
                                        preds: list[bytes]) -> None:
    took = assert_fast_path_agrees(cfg, records(preds), label_records(values))
    event("fast path" if took else "msgspec")


def test_bad_label_buffers_are_refused() -> None:
    from monitor.ingest import _fastdecode

    keys = (b"event_id", b"label", b"ts", b"amount")
    one = np.empty(1)
    with pytest.raises(ValueError, match="label buffer has 8 bytes, need 16"):
        _fastdecode.decode_labels([b"{}", b"{}"], keys, np.empty(1, np.int64), one, one)
    with pytest.raises(ValueError, match="need 4 keys"):
        _fastdecode.decode_labels([b"{}"], keys[:3], np.empty(1, np.int64), one, one)
    ok = [json.dumps(label(i)).encode() for i in range(2)]
    lab, ts, amt = np.empty(2, np.int64), np.empty(2), np.empty(2)
    assert _fastdecode.decode_labels(ok, keys, lab, ts, amt) == ["e0", "e1"]
    assert _fastdecode.decode_labels([ok[0], b"{"], keys, lab, ts, amt) == 1


def test_the_service_exports_batches_by_codec_path(tmp_path: Any) -> None:
    from prometheus_client import generate_latest

    from monitor.core.service import Service
    from monitor.ingest.replay import ReplaySource
    from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch
    from tests.support import fit_reference, parse_metrics, sample

    ref = fit_reference()
    (tmp_path / "reference.json").write_text(ref.to_json())
    settings = load_settings(write_config(tmp_path / "c.yaml", reference={
        "path": str(tmp_path / "reference.json")}))
    (tmp_path / "none.jsonl").write_text("")
    service = Service(settings, ReplaySource(tmp_path / "none.jsonl", "predictions", "labels"),
                      MemoryDeadLetterSink(), ref)
    good = [json.dumps(base(i)).encode() for i in range(4)]
    bad = [*good[:2], b"{not json"]

    async def feed() -> None:
        await service.handle(SourceBatch(predictions=records(good),
                                         labels=label_records([json.dumps(label()).encode()])))
        await service.handle(SourceBatch(predictions=records(bad)))

    import asyncio

    asyncio.run(feed())
    metrics = parse_metrics(generate_latest(service.registry).decode())
    assert sample(metrics, "driftgate_decoded_batches_total", path="fast") == 2
    assert sample(metrics, "driftgate_decoded_batches_total", path="msgspec") == 1


def test_without_the_extension_msgspec_decodes_everything(tmp_path: Any) -> None:
    # an install without a C compiler has no monitor.ingest._fastdecode: the codec
    # must import and decode with msgspec alone (run in a fresh interpreter)
    import subprocess
    import sys

    from tests.support import fit_reference

    (tmp_path / "r.json").write_text(fit_reference().to_json())
    cfg = write_config(tmp_path / "c.yaml", reference={"path": str(tmp_path / "r.json")})
    code = f"""
import sys, json
sys.modules["monitor.ingest._fastdecode"] = None  # import fails as if never built
from monitor.ingest.codec import EventCodec
from monitor.ingest.fastpath import FAST_DECODE_AVAILABLE
from monitor.ingest.records import RawRecord
from monitor.config import load_settings
codec = EventCodec(load_settings({str(cfg)!r}))
ev = {{"event_id": "e1", "model": "{MODEL}", "model_version": "v1", "ts": 1.7e9,
       "score": 0.3, "features": {{}}}}
b = codec.decode([RawRecord("p", 0, 0, json.dumps(ev).encode()),
                  RawRecord("p", 0, 1, b"{{")])
print(json.dumps([FAST_DECODE_AVAILABLE, codec.fast_path, b.predictions.event_id,
                  [r.reason for r in b.rejected], codec.msgspec_batches]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [
        False, False, ["e1"], ["not_json"], 1]
