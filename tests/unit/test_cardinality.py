"""Cardinality caps (issue #12): version slots reserved for the champion and
canary, a global model cap, idle release, and the exported-series bound."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.core.metrics import EngineCollector, max_series
from monitor.engine import Engine
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.ingest.slots import VersionSlots
from tests.support import MODEL, encode, fit_reference, write_config

TS = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = TS + 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def ref() -> ReferenceProfile:
    return fit_reference(n=3000)


def _settings(tmp_path: Path, codec: dict[str, Any] | None = None,
              max_versions: int = 4) -> Settings:
    return load_settings(write_config(
        tmp_path / "config.yaml",
        models=[{"name": MODEL, "champion": "v1", "canary": "v2",
                 "max_versions": max_versions}],
        reference={"fit_from_champion_events": 10},
        codec={"max_message_bytes": 4096, **(codec or {})},
        evaluation={"tick_seconds": 1, "report_sample_size": 0}))


def _pred(n: int, model: str = MODEL, version: str = "v1") -> RawRecord:
    return RawRecord("predictions", 0, n, encode({
        "event_id": f"e{n}-{model}-{version}", "model": model, "model_version": version,
        "ts": TS + n * 0.01, "score": 0.3,
        "features": {"amount": 10.0, "hour": 3.0, "merchant_category": "fuel"}}))


class Rig:
    """A codec and the engine following its slots, on one fake wall clock."""

    def __init__(self, settings: Settings, ref: ReferenceProfile) -> None:
        self.clock = Clock()
        self.codec = EventCodec(settings, clock=self.clock)
        self.engine = Engine(settings, ref, clock=self.clock)
        self.n = 0

    def feed(self, *pairs: tuple[str, str]) -> list[str]:
        """One batch, one prediction per pair; returns the rejection reasons
        (also counted on the engine, as the service does)."""
        recs = []
        for model, version in pairs:
            self.n += 1
            recs.append(_pred(self.n, model, version))
        batch = self.codec.decode(recs)
        for rj in batch.rejected:
            self.engine.record_invalid("prediction", rj.reason)
        self.engine.process(batch)
        return [rj.reason for rj in batch.rejected]


def test_reserved_slots_junk_never_takes(tmp_path: Path, ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path), ref)
    # 4 slots, 2 reserved (v1, v2 not seen yet): junk gets the other 2 only
    reasons = rig.feed(*[(MODEL, f"junk{i}") for i in range(50)])
    assert reasons == ["too_many_versions"] * 48
    assert rig.feed((MODEL, "v1"), (MODEL, "v2")) == []
    assert set(rig.engine.versions) == {(MODEL, "v1"), (MODEL, "v2"), (MODEL, "junk0"),
                                        (MODEL, "junk1")}
    assert rig.engine.invalid[("prediction", "too_many_versions")] == 48


def test_canary_set_later_gets_a_slot(tmp_path: Path, ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path), ref)
    rig.feed((MODEL, "v1"), (MODEL, "junk0"))
    rig.clock.now += 1
    rig.feed((MODEL, "junk1"))
    rig.clock.now += 1
    rig.feed((MODEL, "v2"))
    assert rig.feed((MODEL, "v3")) == ["too_many_versions"]
    # the admin API makes v3 the canary: the least recently seen other version
    # (junk0) is evicted at once, with its state and series
    rig.engine.set_roles(MODEL, "v1", "v3")
    assert (MODEL, "junk0") not in rig.engine.versions
    assert rig.feed(*[(MODEL, "v3")] * 5) == []
    assert rig.engine.versions[(MODEL, "v3")].predictions_total == 5
    # v2 lost its reservation and now competes like any other version; junk
    # cannot take v3's slot back
    assert rig.feed(*[(MODEL, f"junk{i}") for i in range(2, 20)]) == ["too_many_versions"] * 18
    assert rig.feed((MODEL, "v3")) == []
    assert rig.codec.slots is not None
    assert rig.codec.slots.holds(MODEL, "v3")


def test_reserved_version_evicts_when_full(tmp_path: Path, ref: ReferenceProfile) -> None:
    # roles changed before the engine followed the slots: the reserved version's
    # first event makes room itself
    s = _settings(tmp_path)
    slots = VersionSlots(s, clock=Clock())
    for v in ("j0", "j1"):
        assert slots.admit(MODEL, v) is None
    slots._reserved[MODEL] = {"v1", "v2", "v3"}  # as if reserved with no room made
    assert slots.admit(MODEL, "v3") is None
    assert slots.drain_released() == [(MODEL, "j0")]


def test_idle_versions_release_their_slot(tmp_path: Path, ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path, {"version_idle_seconds": 600}), ref)
    rig.feed((MODEL, "v1"), (MODEL, "v2"), (MODEL, "old0"), (MODEL, "old1"))
    assert rig.feed((MODEL, "new")) == ["too_many_versions"]
    rig.clock.now += 601
    rig.feed((MODEL, "v1"))  # a sweep: old0, old1 idle; v2 is reserved and stays
    assert set(rig.engine.versions) == {(MODEL, "v1"), (MODEL, "v2")}
    assert rig.feed((MODEL, "new")) == []
    text = _scrape(rig.engine)
    assert 'version="old0"' not in text
    assert 'version="new"' in text


def test_released_version_pending_labels_are_counted(tmp_path: Path,
                                                     ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path, {"version_idle_seconds": 600}), ref)
    rig.feed((MODEL, "old"))
    rig.clock.now += 601
    rig.feed((MODEL, "v1"))
    assert (MODEL, "old") not in rig.engine.versions
    lab = RawRecord("labels", 0, 0, encode({"event_id": f"e1-{MODEL}-old", "label": 1}))
    rig.engine.process(rig.codec.decode([], [lab]))
    assert (MODEL, "old") not in rig.engine.versions
    assert rig.engine.evictions["released"] == 1


def test_model_cap_with_unknown_models(tmp_path: Path, ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path, {"allow_unknown_models": True, "max_models": 3,
                                   "unknown_model_max_versions": 2}), ref)
    reasons = rig.feed(*[(f"m{i}", f"x{j}") for i in range(10) for j in range(3)])
    # 2 unknown models (3 minus the configured one), 2 versions each
    assert reasons.count("too_many_models") == 24
    assert reasons.count("too_many_versions") == 2
    assert {m for m, _ in rig.engine.versions} == {"m0", "m1"}
    assert rig.feed((MODEL, "v1"), (MODEL, "v2")) == []
    slots = rig.codec.slots
    assert slots is not None
    assert slots.max_pairs == 4 + 2 * 2
    assert len(rig.engine.versions) <= slots.max_pairs


def test_unknown_models_refused_without_allow(tmp_path: Path, ref: ReferenceProfile) -> None:
    rig = Rig(_settings(tmp_path), ref)
    assert rig.feed(("other", "v1")) == ["unknown_model"]
    assert rig.codec.slots is not None
    assert rig.codec.slots.max_pairs == 4


def test_restored_state_over_the_caps_is_dropped(tmp_path: Path,
                                                 ref: ReferenceProfile) -> None:
    s = _settings(tmp_path, max_versions=3)
    rig = Rig(s, ref)
    for v in ("v1", "a", "b", "c"):  # e.g. restored from a store after a restart
        rig.engine.state(MODEL, v)
    rig.feed((MODEL, "v1"))
    assert set(rig.engine.versions) == {(MODEL, "v1"), (MODEL, "a")}


def _scrape(engine: Engine) -> str:
    reg = CollectorRegistry()
    reg.register(EngineCollector(engine))
    return generate_latest(reg).decode()


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def test_series_stay_under_the_bound(tmp_path: Path, ref: ReferenceProfile) -> None:
    s = _settings(tmp_path, {"allow_unknown_models": True, "max_models": 4,
                             "unknown_model_max_versions": 3})
    rig = Rig(s, ref)
    for i in range(40):
        rig.feed(*[(f"m{i}", f"x{j}") for j in range(5)], *[(MODEL, f"j{i}-{j}")
                                                            for j in range(5)],
                 (MODEL, "v1"), (MODEL, "v2"))
    slots = rig.codec.slots
    assert slots is not None
    assert len(rig.engine.versions) == slots.max_pairs == 4 + 3 * 3
    n = _series(_scrape(rig.engine))
    assert n <= max_series(s), (n, max_series(s))
