"""Tests of monitor.engine against the offline oracle of tests/support.py.

Events are fed in order unless a test says otherwise; the oracle recomputes the
window histograms, confusion counts and divergences with plain loops.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from detectors import ReferenceProfile
from monitor.engine import SCORE_FEATURE, Engine
from monitor.sandbox.traffic import TrafficGenerator
from tests.support import MODEL, fit_reference, oracle
from tests.unit.engine_support import SLICE, START, WINDOW, Feeder, label, make_settings, pred


@pytest.fixture(scope="module")
def ref() -> ReferenceProfile:
    return fit_reference(n=5000)


@pytest.fixture(scope="module")
def stream() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """180 s of traffic (3x the 60 s window), canary broken half-way."""
    gen = TrafficGenerator(seed=11, canary_share=0.3, fraud_rate=0.03, bug_at=START + 90)
    batch = gen.generate(3600, START, 20.0)
    return batch.predictions, batch.labels


def window_rows(engine: Engine, key: tuple[str, str]) -> dict[str, list[int]]:
    st = engine.versions[key]
    ref = engine.reference
    out = {f: st.numeric.total[j].tolist() for j, f in enumerate(ref.numeric.features)}
    out.update({f: st.categorical.total[j].tolist()
                for j, f in enumerate(ref.categorical.features)})
    out[SCORE_FEATURE] = st.score.total[0].tolist()
    return out


# ---------------------------------------------------------------------------
# windows against the oracle
# ---------------------------------------------------------------------------


def test_window_expiry_matches_oracle(tmp_path: Path, ref: ReferenceProfile,
                                      stream: tuple[list[dict[str, Any]],
                                                    list[dict[str, Any]]]) -> None:
    preds, labels = stream
    assert preds[-1]["ts"] - preds[0]["ts"] > 2.9 * WINDOW
    f = Feeder(make_settings(tmp_path), ref)
    f.feed_in(37, preds, labels)
    eng = f.engine
    exp = oracle(preds, labels, ref, SLICE, WINDOW)
    assert set(eng.versions) == set(exp.predictions) == {(MODEL, "v1"), (MODEL, "v2")}
    for key, n in exp.predictions.items():
        st = eng.versions[key]
        assert st.predictions_total == n
        assert st.late_total == 0
        # far fewer than all events are still in the window
        assert 0 < st.window_events == exp.window_events[key] < n / 2
        assert window_rows(eng, key) == exp.window[key]
        c = st.confusion_total
        assert {"tp": c.tp, "fp": c.fp, "fn": c.fn, "tn": c.tn} == {
            cell: exp.confusion[key][cell] for cell in ("tp", "fp", "fn", "tn")}
        assert st.labels_joined_total == exp.joined[key] == n
    ev = eng.evaluate()
    assert ev.at == 123.0
    assert ev.watermark == max(p["ts"] for p in preds)
    for key in exp.predictions:
        ve = ev.versions[key]
        lo, hi = ve.window_bounds or (0.0, 0.0)
        assert hi - lo == WINDOW
        assert lo <= ev.watermark < hi
        assert ve.vs_reference is not None
        for feature, value in ve.vs_reference.psi.items():
            assert value == pytest.approx(exp.psi[(*key, feature, "reference")], rel=1e-9,
                                          abs=1e-12)
            assert ve.vs_reference.kl[feature] == pytest.approx(
                exp.kl[(*key, feature, "reference")], rel=1e-9, abs=1e-12)
            assert ve.vs_reference.js[feature] == pytest.approx(
                exp.js[(*key, feature, "reference")], rel=1e-9, abs=1e-12)
        for (m, v, kpi, bound), value in exp.kpi.items():
            if (m, v) == key:
                got = getattr(ve.kpis, kpi)
                assert {"estimate": got.value, "lower": got.lower,
                        "upper": got.upper}[bound] == pytest.approx(value)
    cmp = ev.canaries[MODEL]
    assert cmp.divergences is not None
    for feature, value in cmp.divergences.psi.items():
        assert value == pytest.approx(exp.psi[(MODEL, "v2", feature, "champion")], rel=1e-9,
                                      abs=1e-12)
    # the canary's velocity feature is broken in the whole window: it drifted
    assert cmp.divergences.psi["txn_velocity_1h"] > 0.5
    assert ev.versions[(MODEL, "v1")].vs_reference.psi["txn_velocity_1h"] < 0.1  # type: ignore[union-attr]


def test_batch_split_does_not_matter(tmp_path: Path, ref: ReferenceProfile,
                                     stream: tuple[list[dict[str, Any]],
                                                   list[dict[str, Any]]]) -> None:
    preds, labels = stream
    settings = make_settings(tmp_path)
    one, many = Feeder(settings, ref), Feeder(settings, ref)
    one.feed_in(1, preds, labels)
    many.feed_in(37, preds, labels)
    ev1, ev37 = one.engine.evaluate(), many.engine.evaluate()
    assert set(one.engine.versions) == set(many.engine.versions)
    for key, a in one.engine.versions.items():
        b = many.engine.versions[key]
        assert window_rows(one.engine, key) == window_rows(many.engine, key)
        assert a.window_events == b.window_events
        assert a.predictions_total == b.predictions_total
        assert a.labels_joined_total == b.labels_joined_total
        for c1, c2 in ((a.confusion_total, b.confusion_total),
                       (a.kpi_confusion(), b.kpi_confusion())):
            assert (c1.tp, c1.fp, c1.fn, c1.tn) == (c2.tp, c2.fp, c2.fn, c2.tn)
            assert c1.caught_amount == pytest.approx(c2.caught_amount)
            assert c1.missed_amount == pytest.approx(c2.missed_amount)
        r1, r2 = ev1.versions[key].vs_reference, ev37.versions[key].vs_reference
        assert r1 is not None
        assert r2 is not None
        assert r1.psi == pytest.approx(r2.psi)
        assert r1.js == pytest.approx(r2.js)
        assert ev1.versions[key].kpis.catch_rate.value == pytest.approx(
            ev37.versions[key].kpis.catch_rate.value, nan_ok=True)
    d1, d2 = ev1.canaries[MODEL].divergences, ev37.canaries[MODEL].divergences
    assert d1 is not None
    assert d2 is not None
    assert d1.psi == pytest.approx(d2.psi)
    assert ev1.watermark == ev37.watermark


def test_in_order_events_are_never_late(tmp_path: Path, ref: ReferenceProfile,
                                        stream: tuple[list[dict[str, Any]],
                                                      list[dict[str, Any]]]) -> None:
    preds, labels = stream
    f = Feeder(make_settings(tmp_path), ref)
    stats = f.feed(preds, labels)
    assert stats.late == 0
    assert all(st.late_total == 0 for st in f.engine.versions.values())


# ---------------------------------------------------------------------------
# lateness
# ---------------------------------------------------------------------------


def test_allowed_lateness(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)  # lateness 30 s, window 60 s
    f.feed([pred(f"p{i}", START + i) for i in range(51)])
    eng = f.engine
    st = eng.versions[(MODEL, "v1")]
    before = st.window_events
    assert eng.watermark == START + 50
    # 35 s behind the watermark: its slice is still in the window, but it is too late
    stats = f.feed([pred("late", START + 15)])
    assert stats.late == 1
    assert st.late_total == 1
    assert st.predictions_total == 52
    assert st.window_events == before
    # 25 s behind: within the allowed lateness, counted in the window
    stats = f.feed([pred("ok", START + 25)])
    assert stats.late == 0
    assert st.late_total == 1
    assert st.window_events == before + 1
    assert eng.watermark == START + 50


def test_late_within_one_batch(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    stats = f.feed([pred("a", START + 40), pred("b", START + 5), pred("c", START + 20)])
    assert stats.late == 1  # b is 35 s behind a
    assert f.engine.versions[(MODEL, "v1")].window_events == 2


def test_prediction_outside_the_window_is_late(tmp_path: Path,
                                                       ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("a", START + 100)])
    f.feed([pred("b", START)])  # 100 s behind: outside the window too
    st = f.engine.versions[(MODEL, "v1")]
    assert (st.late_total, st.window_events, st.predictions_total) == (1, 1, 2)


# ---------------------------------------------------------------------------
# the label join
# ---------------------------------------------------------------------------


def test_labels_before_predictions(tmp_path: Path, ref: ReferenceProfile,
                                   stream: tuple[list[dict[str, Any]],
                                                 list[dict[str, Any]]]) -> None:
    preds, labels = stream
    preds, labels = preds[:500], labels[:500]
    f = Feeder(make_settings(tmp_path), ref)
    stats = f.feed(labels=labels)
    eng = f.engine
    assert stats.labels == 500
    assert stats.joined == 0
    assert eng.pending_labels == 500
    assert eng.labels_total == 500
    stats = f.feed(preds)
    assert stats.joined == 500
    assert eng.pending_labels == 0
    assert eng.pending_predictions == 0
    exp = oracle(preds, labels, ref, SLICE, WINDOW)
    for key, counts in exp.confusion.items():
        c = eng.versions[key].confusion_total
        assert (c.tp, c.fp, c.fn, c.tn) == (counts["tp"], counts["fp"], counts["fn"],
                                            counts["tn"])
        assert eng.versions[key].labels_joined_total == exp.joined[key]
    assert sum(eng.unmatched_labels.values()) == 0


def test_confusion_cells_and_amounts(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("tp", START, score=0.9, amount=100.0), pred("fn", START, score=0.1,
                                                            amount=30.0),
            pred("fp", START, score=0.8), pred("tn", START, score=0.2),
            {**pred("fn2", START, score=0.1), "amount": None}],
           [label("tp", 1), label("fn", 1), label("fp", 0), label("tn", 0),
            label("fn2", 1, amount=7.0)])
    c = f.engine.versions[(MODEL, "v1")].confusion_total
    assert (c.tp, c.fp, c.fn, c.tn) == (1, 1, 2, 1)
    assert c.caught_amount == 100.0
    assert c.missed_amount == 37.0  # the label's amount when the prediction has none
    assert f.engine.versions[(MODEL, "v1")].kpi_confusion() == c


def test_duplicate_ids_are_counted(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred("a", START), pred("a", START + 1), pred("b", START + 1)])
    f.feed([pred("a", START + 2)])
    eng = f.engine
    assert eng.duplicates["prediction"] == 2
    assert eng.pending_predictions == 2
    f.feed(labels=[label("x", 1), label("x", 1)])
    assert eng.duplicates["label"] == 1
    assert eng.pending_labels == 1
    stats = f.feed(labels=[label("a", 1)])
    assert stats.joined == 1
    assert eng.versions[(MODEL, "v1")].labels_joined_total == 1


def test_pending_capacity_eviction(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"max_pending": 5}), ref)
    f.feed([pred(f"p{i}", START + i) for i in range(20)])
    eng = f.engine
    assert eng.evictions["capacity"] == 15
    assert eng.pending_predictions == 5
    # the oldest were evicted: their labels cannot join, the newest still can
    stats = f.feed(labels=[label(f"p{i}") for i in range(20)])
    assert stats.joined == 5
    assert eng.pending_labels == 15
    assert eng.evictions["ttl"] == 0


def test_pending_ttl_eviction_by_event_time(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"ttl_seconds": 100}), ref)
    f.feed([pred(f"p{i}", START + i) for i in range(10)])
    eng = f.engine
    f.feed([pred("q", START + 105)])  # p0..p4 are now older than 100 s
    assert eng.evictions["ttl"] == 5
    assert eng.pending_predictions == 6
    f.feed([pred("r", START + 300)])
    assert eng.evictions["ttl"] == 11
    assert eng.pending_predictions == 1
    assert eng.evictions["capacity"] == 0


def test_orphan_label_capacity(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"max_orphan_labels": 3}), ref)
    f.feed(labels=[label(f"l{i}", ts=START) for i in range(10)])
    eng = f.engine
    assert eng.unmatched_labels["capacity"] == 7
    assert eng.pending_labels == 3
    stats = f.feed([pred(f"l{i}", START) for i in range(10)])
    assert stats.joined == 3  # the newest three were kept


def test_orphan_labels_disabled(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"max_orphan_labels": 0}), ref)
    f.feed(labels=[label(f"l{i}") for i in range(4)])
    assert f.engine.unmatched_labels["no_prediction"] == 4
    assert f.engine.pending_labels == 0


def test_orphan_label_ttl(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"ttl_seconds": 100}), ref)
    f.feed(labels=[label(f"l{i}", ts=START + i) for i in range(4)])
    eng = f.engine
    f.feed([pred("x", START + 102)])  # l0 and l1 are older than 100 s
    assert eng.unmatched_labels["ttl"] == 2
    assert eng.pending_labels == 2
    f.feed([pred("y", START + 500)])
    assert eng.unmatched_labels["ttl"] == 4
    assert eng.pending_labels == 0


def test_orphans_without_time_expire_together(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, join={"ttl_seconds": 100}), ref)
    f.feed(labels=[label(f"l{i}") for i in range(3)])  # no ts, no watermark yet
    f.feed([pred("a", START)])
    f.feed([pred("b", START + 101)])
    assert f.engine.unmatched_labels["ttl"] == 3


# ---------------------------------------------------------------------------
# roles, canary comparison, reference swap
# ---------------------------------------------------------------------------


def test_canary_comparison_needs_both_versions(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path), ref)
    eng = f.engine
    f.feed([pred(f"a{i}", START + i, score=0.0) for i in range(10)],
           [label(f"a{i}") for i in range(10)])
    ev = eng.evaluate()
    assert ev.canaries == {}
    assert ev.versions[(MODEL, "v1")].role == "champion"
    f.feed([pred(f"b{i}", START + i, version="v2", score=0.7) for i in range(10)],
           [label(f"b{i}", 1) for i in range(10)])
    ev = eng.snapshot()
    cmp = ev.canaries[MODEL]
    assert (cmp.champion, cmp.canary) == ("v1", "v2")
    assert ev.versions[(MODEL, "v2")].role == "canary"
    assert cmp.divergences is not None
    assert cmp.divergences.psi[SCORE_FEATURE] > 1.0
    # the champion saw no fraud and raised no alert: only the alert rate can be compared
    assert set(cmp.kpi_tests) == {"alert_rate"}
    assert cmp.kpi_tests["alert_rate"]["canary"] == 1.0
    # a version outside the roles is "other" and never compared
    f.feed([pred("c0", START, version="v3")])
    ev = eng.snapshot()
    assert ev.versions[(MODEL, "v3")].role == "other"
    assert set(ev.canaries) == {MODEL}
    eng.set_roles(MODEL, "v1", None)
    assert eng.snapshot().canaries == {}
    eng.set_roles(MODEL, "v3", "v1")
    ev = eng.snapshot()
    assert (ev.canaries[MODEL].champion, ev.canaries[MODEL].canary) == ("v3", "v1")
    assert ev.versions[(MODEL, "v2")].role == "other"


def test_set_roles_validation(tmp_path: Path, ref: ReferenceProfile) -> None:
    eng = Engine(make_settings(tmp_path), ref)
    assert eng.roles == {MODEL: {"champion": "v1", "canary": "v2"}}
    with pytest.raises(ValueError, match="canary must differ from champion"):
        eng.set_roles(MODEL, "v2", "v2")
    assert eng.roles[MODEL] == {"champion": "v1", "canary": "v2"}
    eng.set_roles(MODEL, "v2", "v3")
    assert eng.role_of(MODEL, "v2") == "champion"
    assert eng.role_of(MODEL, "v3") == "canary"
    assert eng.role_of(MODEL, "v1") == "other"
    assert eng.role_of("unknown", "v1") == "other"


def test_reference_must_match_features(tmp_path: Path, ref: ReferenceProfile) -> None:
    settings = make_settings(tmp_path, features={"numeric": ["amount"],
                                                 "categorical": ["merchant_category"]})
    with pytest.raises(ValueError, match=r"features\.numeric"):
        Engine(settings, ref)
    eng = Engine(make_settings(tmp_path), ref)
    other = ReferenceProfile.fit({"amount": np.arange(10.0)}, {}, np.linspace(0, 1, 10))
    with pytest.raises(ValueError, match="differ from the configured"):
        eng.set_reference(other)
    assert eng.reference is ref


def test_set_reference_keeps_counters(tmp_path: Path, ref: ReferenceProfile,
                                      stream: tuple[list[dict[str, Any]],
                                                    list[dict[str, Any]]]) -> None:
    preds, labels = stream
    f = Feeder(make_settings(tmp_path), ref)
    f.feed_in(5, preds[:1000], labels[:1000])
    f.feed([pred("late", START)])  # a late prediction
    eng = f.engine
    before = {k: (st.predictions_total, st.labels_joined_total, st.late_total,
                  st.confusion_total, st.kpi_confusion()) for k, st in eng.versions.items()}
    assert eng.versions[(MODEL, "v1")].late_total == 1
    new_ref = fit_reference(seed=5, n=3000)
    eng.set_reference(new_ref)
    after = {k: (st.predictions_total, st.labels_joined_total, st.late_total,
                 st.confusion_total, st.kpi_confusion()) for k, st in eng.versions.items()}
    assert after == before
    # the windows restart on the new bins
    assert all(st.window_events == 0 for st in eng.versions.values())
    ev = eng.snapshot()
    assert ev.reference_hash == new_ref.content_hash != ref.content_hash
    assert all(ve.vs_reference is None for ve in ev.versions.values())
    # and fill again
    f.feed_in(2, preds[1000:1400], labels[1000:1400])
    assert eng.versions[(MODEL, "v1")].window_events > 0
    assert eng.versions[(MODEL, "v1")].predictions_total == before[(MODEL, "v1")][0] + sum(
        1 for p in preds[1000:1400] if p["model_version"] == "v1")


def test_set_reference_keeps_every_counter(tmp_path: Path, ref: ReferenceProfile) -> None:
    f = Feeder(make_settings(tmp_path, windows={"kpi_window_seconds": 60}), ref)
    # a step in the score stream: ADWIN detects a change
    f.feed([pred(f"s{i}", START + i * 0.01, score=0.01) for i in range(1000)])
    f.feed([pred(f"t{i}", START + 10 + i * 0.01, score=0.99) for i in range(1000)])
    f.feed([pred("new", START + 200)])
    f.feed(labels=[label("s0", 1)])  # its slice left the 60 s KPI window
    st = f.engine.versions[(MODEL, "v1")]
    assert st.late_labels_total == 1
    assert st.adwin_score_detections > 0
    counters = (st.late_labels_total, st.adwin_score_detections, st.adwin_error_detections)
    f.engine.set_reference(fit_reference(seed=5, n=3000))
    st = f.engine.versions[(MODEL, "v1")]
    assert (st.late_labels_total, st.adwin_score_detections,
            st.adwin_error_detections) == counters


# ---------------------------------------------------------------------------
# canary-vs-champion KPI tests
# ---------------------------------------------------------------------------


def _kpi_tests(tmp_path: Path, ref: ReferenceProfile, bug_at: float | None
               ) -> dict[str, dict[str, float | str]]:
    gen = TrafficGenerator(seed=21, canary_share=0.5, fraud_rate=0.05, bug_at=bug_at)
    batch = gen.generate(8000, START, 200.0)
    f = Feeder(make_settings(tmp_path), ref)
    f.feed_in(8, batch.predictions, batch.labels)
    return f.engine.evaluate().canaries[MODEL].kpi_tests


def test_kpi_tests_flag_a_broken_canary(tmp_path: Path, ref: ReferenceProfile) -> None:
    tests = _kpi_tests(tmp_path, ref, bug_at=START)
    catch = tests["catch_rate"]
    assert catch["alternative"] == "less"
    assert float(catch["canary"]) < float(catch["champion"])
    assert float(catch["difference"]) < -0.1
    assert float(catch["p_value"]) < 1e-3
    assert float(catch["canary_n"]) > 100
    assert float(catch["champion_n"]) > 100
    assert tests["alert_rate"]["alternative"] == "two-sided"


def test_kpi_tests_quiet_for_a_healthy_canary(tmp_path: Path, ref: ReferenceProfile) -> None:
    tests = _kpi_tests(tmp_path, ref, bug_at=None)
    assert float(tests["catch_rate"]["p_value"]) > 0.2
    assert float(tests["alert_rate"]["p_value"]) > 0.05
    assert float(tests["catch_rate"]["canary_n"]) > 100
