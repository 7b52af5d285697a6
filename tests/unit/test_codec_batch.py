"""The codec's whole-batch decode equals decoding every record on its own.

``EventCodec`` decodes a batch of plain JSON objects in one msgspec call and
validates whole columns; only when that does not apply (or fails) does it go
record by record. Both paths must give the same events, in the same order, and
the same rejection reasons, also for values crafted to merge or split when
joined (two objects in one value, an object left open, pretty-printed JSON).
"""

from __future__ import annotations

import json
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from monitor.config import Settings, load_settings
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from tests.support import MODEL, write_config


def _settings(root: Path) -> Settings:
    return load_settings(write_config(
        root / "config.yaml", reference={"fit_from_champion_events": 10},
        codec={"max_message_bytes": 2048},
        models=[{"name": MODEL, "champion": "v1", "canary": "v2", "threshold": 0.6,
                 "max_versions": 3}]))


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return _settings(tmp_path_factory.mktemp("batch"))


def _event(i: int, version: str, score: float, amount: float | None, ts: Any,
           decision: Any) -> dict[str, Any]:
    ev: dict[str, Any] = {"event_id": f"e{i}", "model": MODEL, "model_version": version,
                          "ts": ts, "score": score,
                          "features": {"amount": 10.0 + i, "hour": 3.0,
                                       "merchant_category": "fuel"}}
    if amount is not None:
        ev["amount"] = amount
    if decision is not None:
        ev["decision"] = decision
    return ev


EVENT = st.builds(
    _event, st.integers(0, 10_000),
    st.sampled_from(["v1", "v2", "v3", "v4", "v5"]),
    st.one_of(st.floats(0, 1), st.sampled_from([-0.1, 1.5])),
    st.one_of(st.none(), st.floats(0, 1e6), st.just(-5.0)),
    st.one_of(st.floats(1.6e9, 1.8e9), st.just("2024-01-01T00:00:00Z"), st.just(-1.0),
              st.just("yesterday")),
    st.one_of(st.none(), st.booleans(), st.sampled_from([0, 1, 2, "yes"])),
)


@st.composite
def value(draw: st.DrawFn) -> bytes:
    ev = draw(EVENT)
    raw = json.dumps(ev).encode()
    # mostly plain objects, so that whole batches often qualify for the one-call path
    kind = draw(st.sampled_from(["plain"] * 40 + ["pretty", "two", "open", "array",
                                                   "lead_space", "truncated", "bad_utf8"]))
    if kind == "pretty":
        return json.dumps(ev, indent=1).encode()  # newlines inside the value
    if kind == "two":
        return raw + b"\n" + raw  # two objects in one value (a split)
    if kind == "open":
        return raw[:-1] + b',"x": {"y": 1}'[:-1] + b"}"  # ends in } but stays open
    if kind == "array":
        return b"[" + raw + b"]"
    if kind == "lead_space":
        return b"  " + raw
    if kind == "truncated":
        return raw[: draw(st.integers(1, len(raw) - 1))]
    if kind == "bad_utf8":
        return raw[:-1] + b',"trace": "\xff\xfe"}'
    return raw


def _outcome(codec: EventCodec, records: list[RawRecord]) -> tuple[Any, ...]:
    b = codec.decode(records)
    p = b.predictions
    reasons = [(rj.record.offset, rj.reason) for rj in b.rejected]
    cols = (p.event_id, p.model, p.version, p.ts.tolist(), p.score.tolist(),
            p.decision.tolist(), [None if np.isnan(a) else a for a in p.amount.tolist()],
            p.numeric.tolist(), p.categorical, p.partition.tolist())
    return json.dumps(cols, default=str), reasons


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.lists(value(), min_size=2, max_size=12))
def test_whole_batch_equals_record_by_record(cfg: Settings, values: list[bytes]) -> None:
    records = [RawRecord("predictions", i % 3, i, v) for i, v in enumerate(values)]
    probe = EventCodec(cfg)
    event("batch path" if probe._batch_decode(records, probe._pred_decoder) is not None
          else "record path")
    batch = _outcome(EventCodec(cfg), records)
    one = EventCodec(cfg)
    singles = [_outcome(one, [r]) for r in records]
    cols = [json.loads(c) for c, _ in singles]
    merged = [list(chain.from_iterable(c[k] for c in cols)) if k != 8 else None
              for k in range(10)]
    got = json.loads(batch[0])
    for k in range(10):
        if k == 8:  # categorical: per feature
            for name in got[8]:
                assert got[8][name] == list(chain.from_iterable(c[8][name] for c in cols))
        else:
            assert got[k] == merged[k], k
    assert batch[1] == [r for _, rs in singles for r in rs]


def test_values_that_would_split_or_merge_take_the_record_path(cfg: Settings) -> None:
    ok = json.dumps(_event(1, "v1", 0.2, 5.0, 1.7e9, None)).encode()
    ok2 = json.dumps(_event(2, "v1", 0.3, 5.0, 1.7e9, None)).encode()
    opened = ok[:-1] + b',"x": {"y": 1}'  # leaves the object open, ends in }
    records = [RawRecord("p", 0, 0, ok), RawRecord("p", 0, 1, opened),
               RawRecord("p", 0, 2, ok2 + b" " + ok2), RawRecord("p", 0, 3, ok2)]
    b = EventCodec(cfg).decode(records)
    assert b.predictions.event_id == ["e1", "e2"]
    assert [(rj.record.offset, rj.reason) for rj in b.rejected] == [(1, "not_json"),
                                                                    (2, "not_json")]


def test_a_batch_of_plain_objects_is_decoded_in_one_call(cfg: Settings) -> None:
    codec = EventCodec(cfg)
    values = [json.dumps(_event(i, "v1", 0.2, 5.0, 1.7e9, None)).encode() for i in range(5)]
    records = [RawRecord("p", 0, i, v) for i, v in enumerate(values)]
    structs = codec._batch_decode(records, codec._pred_decoder)
    assert structs is not None
    assert [s.event_id for s in structs] == [f"e{i}" for i in range(5)]
    # one value holding two objects: the count check refuses the batch
    records[2] = RawRecord("p", 0, 2, values[2] + b" " + values[3])
    assert codec._batch_decode(records, codec._pred_decoder) is None
