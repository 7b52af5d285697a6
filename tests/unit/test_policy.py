"""Rules and policy: sustain, cooldown, significance, insufficient data."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from detectors import ConfusionCounts, fraud_kpis
from rollback.policy import ModelView, Policy, VersionView, format_p_value
from rollback.rules import RuleSpec

MODEL = "card-fraud"


def version(name: str, psi: float = 0.0, events: int = 1000,
            counts: ConfusionCounts | None = None, adwin: int = 0) -> VersionView:
    c = counts or ConfusionCounts(tp=70, fp=10, fn=30, tn=890)
    return VersionView(version=name, window_events=events, window_bounds=(0.0, 60.0),
                       confusion=c, kpis=fraud_kpis(c),
                       divergence={"psi": {"model_score": psi}, "kl": {}, "js": {}},
                       adwin_detections={"error": adwin, "score": 0})


def view(canary_psi: float = 0.0, canary_counts: ConfusionCounts | None = None,
         events: int = 1000, adwin: int = 0) -> ModelView:
    return ModelView(MODEL, champion=version("v1"),
                     canary=version("v2", canary_psi, events, canary_counts, adwin))


PSI_RULE = RuleSpec(name="score-psi", metric="psi", scope="canary_vs_reference",
                    comparison=">", threshold=0.25, sustain_seconds=30, min_events=500,
                    severity="rollback", cooldown_seconds=600)


def run(policy: Policy, views: list[ModelView], times: list[float]) -> list[list[str]]:
    return [[d.rule for d in policy.evaluate([v], t, {"config_hash": "c"}).decisions]
            for v, t in zip(views, times, strict=True)]


def test_breach_shorter_than_sustain_fires_nothing() -> None:
    policy = Policy([PSI_RULE])
    times = [float(t) for t in range(0, 29)]  # 28 s of breach < 30 s
    fired = run(policy, [view(0.5)] * len(times), times)
    assert all(not f for f in fired)
    state = next(iter(policy.states.values()))
    assert state.status == "breaching"
    # the breach clears: nothing fired, state back to ok
    assert run(policy, [view(0.1)], [29.0]) == [[]]
    assert state.status == "ok"
    assert policy.verdict(MODEL, "v2")[0] == "ok"


def test_breach_longer_than_sustain_fires_exactly_once() -> None:
    policy = Policy([PSI_RULE])
    times = [float(t) for t in range(0, 120)]
    fired = run(policy, [view(0.5)] * len(times), times)
    flat = [(i, r) for i, f in enumerate(fired) for r in f]
    assert flat == [(30, "score-psi")]
    verdict, active, _ = policy.verdict(MODEL, "v2")
    assert verdict == "rollback"
    d = active[0]
    assert d.evidence["value"] == pytest.approx(0.5)
    assert d.evidence["threshold"] == 0.25
    assert d.evidence["config_hash"] == "c"
    assert d.evidence["consecutive_evaluations"] == 31
    assert d.breach_started_at == 0.0
    assert d.version == "v2"
    assert d.champion == "v1"
    assert d.decision_id.startswith("dec_")


def test_cooldown_suppresses_a_repeat_and_expires() -> None:
    policy = Policy([PSI_RULE])
    fired = run(policy, [view(0.5)] * 31, [float(t) for t in range(31)])
    assert sum(map(len, fired)) == 1
    # clears, then breaches again for longer than sustain, inside the cooldown
    run(policy, [view(0.0)], [40.0])
    again = run(policy, [view(0.5)] * 40, [50.0 + t for t in range(40)])
    assert sum(map(len, again)) == 0
    assert "cooldown" in next(iter(policy.states.values())).detail
    # after the cooldown (600 s from the first firing) a new breach fires again
    run(policy, [view(0.0)], [650.0])
    late = run(policy, [view(0.5)] * 40, [700.0 + t for t in range(40)])
    assert sum(map(len, late)) == 1


def test_too_few_events_is_insufficient_data_never_fires() -> None:
    policy = Policy([PSI_RULE])
    fired = run(policy, [view(5.0, events=100)] * 100, [float(t) for t in range(100)])
    assert sum(map(len, fired)) == 0
    state = next(iter(policy.states.values()))
    assert state.status == "insufficient_data"
    assert "100 events in the window, rule needs 500" in state.detail


CATCH_RULE = RuleSpec(name="catch-drop", metric="catch_rate", scope="canary_vs_champion",
                      comparison=">", threshold=0.05, max_p_value=0.01,
                      min_labelled_frauds=200, severity="rollback", cooldown_seconds=0,
                      test="fixed")


def test_kpi_drop_needs_significance_not_just_a_difference() -> None:
    # a 10-point drop on 20 frauds: large but not significant -> insufficient/ok
    policy = Policy([CATCH_RULE])
    small = ConfusionCounts(tp=12, fp=2, fn=8, tn=978)
    policy.evaluate([view(canary_counts=small)], 0.0)
    st = next(iter(policy.states.values()))
    assert st.status == "insufficient_data"
    assert "20 labelled frauds, rule needs 200" in st.detail
    # enough frauds, drop of 10 points, significant -> fires
    policy2 = Policy([CATCH_RULE])
    big = ConfusionCounts(tp=120, fp=10, fn=80, tn=790)   # 0.60 vs champion's 0.70
    champ_big = ConfusionCounts(tp=700, fp=20, fn=300, tn=8980)
    mv = ModelView(MODEL, champion=version("v1", counts=champ_big),
                   canary=version("v2", counts=big))
    out = policy2.evaluate([mv], 0.0)
    assert [d.rule for d in out.decisions] == ["catch-drop"]
    assert out.decisions[0].evidence["p_value"] < 0.01
    assert out.decisions[0].evidence["value"] == pytest.approx(0.1)
    # same drop on barely enough frauds is not significant: no fire
    policy3 = Policy([CATCH_RULE.model_copy(update={"min_labelled_frauds": 1})])
    few = ConfusionCounts(tp=12, fp=1, fn=8, tn=979)      # 0.60 on 20 frauds
    mv3 = ModelView(MODEL, champion=version("v1", counts=ConfusionCounts(tp=14, fp=1, fn=6,
                                                                          tn=979)),
                    canary=version("v2", counts=few))
    out3 = policy3.evaluate([mv3], 0.0)
    assert out3.decisions == []
    st3 = next(iter(policy3.states.values()))
    assert st3.status == "ok"
    assert st3.p_value is not None
    assert st3.p_value > 0.01


def test_adwin_rule_fires_on_new_detections_only() -> None:
    rule = RuleSpec(name="adwin", metric="adwin_error", scope="canary_vs_reference",
                    comparison=">", threshold=0, severity="alert", cooldown_seconds=0)
    policy = Policy([rule])
    assert policy.evaluate([view(adwin=3)], 0.0).decisions == []  # history, not news
    out = policy.evaluate([view(adwin=4)], 1.0)
    assert [d.action for d in out.decisions] == ["alert"]
    resolved = policy.evaluate([view(adwin=4)], 2.0).resolved
    assert [r.rule for r in resolved] == ["adwin"]


def test_acknowledge_clears_the_verdict() -> None:
    policy = Policy([PSI_RULE.model_copy(update={"sustain_seconds": 0})])
    out = policy.evaluate([view(1.0)], 0.0)
    (d,) = out.decisions
    assert policy.verdict(MODEL, "v2")[0] == "rollback"
    assert policy.acknowledge(d.decision_id)
    assert policy.verdict(MODEL, "v2")[0] == "alert"  # the rule is still firing
    assert not policy.acknowledge("dec_unknown")


def test_rule_validation_names_the_problem() -> None:
    with pytest.raises(ValueError, match="needs min_labelled_frauds >= 1"):
        RuleSpec(name="x", metric="precision", scope="canary_vs_champion", threshold=0.1)
    with pytest.raises(ValueError, match="watches one version's stream"):
        RuleSpec(name="x", metric="adwin_score", scope="canary_vs_champion", threshold=0)
    with pytest.raises(ValueError, match="rule names must be unique"):
        Policy([PSI_RULE, PSI_RULE])


# ------------------------------------------------------- sequential KPI test
SEQ_RULE = CATCH_RULE.model_copy(update={"test": None, "min_labelled_frauds": 20,
                                         "max_p_value": 0.05})


def totals_view(canary: ConfusionCounts, champion: ConfusionCounts,
                canary_version: str = "v2", window: ConfusionCounts | None = None) -> ModelView:
    """Views whose lifetime counts are given (the KPI window is a fixed stand-in)."""
    w = window or ConfusionCounts(tp=70, fp=10, fn=30, tn=890)

    def one(name: str, total: ConfusionCounts) -> VersionView:
        return VersionView(version=name, window_events=1000, window_bounds=(0.0, 60.0),
                           confusion=w, kpis=fraud_kpis(w), confusion_total=total)

    return ModelView(MODEL, champion=one("v1", champion), canary=one(canary_version, canary))


def stream(seed: int, canary_rate: float, ticks: int, champion_rate: float = 0.7
           ) -> list[tuple[ConfusionCounts, ConfusionCounts]]:
    """Cumulative (canary, champion) counts per tick: Poisson(4) champion frauds and
    Poisson(1) canary frauds a tick, each caught with the version's catch rate."""
    rng = np.random.default_rng(seed)
    fa, fb = np.cumsum(rng.poisson(1.0, ticks)), np.cumsum(rng.poisson(4.0, ticks))
    ca = np.cumsum(rng.binomial(np.diff(fa, prepend=0), canary_rate))
    cb = np.cumsum(rng.binomial(np.diff(fb, prepend=0), champion_rate))
    return [(ConfusionCounts(tp=int(ca[i]), fn=int(fa[i] - ca[i]), tn=100 * i),
             ConfusionCounts(tp=int(cb[i]), fn=int(fb[i] - cb[i]), tn=400 * i))
            for i in range(ticks)]


def test_p_value_formatting_never_shows_the_value_at_the_threshold() -> None:
    assert format_p_value(0.0099, 0.01) == "= 0.0099"
    assert format_p_value(0.00999999, 0.01) == "= 0.00999999"
    assert format_p_value(0.0100001, 0.01) == "= 0.01"   # not below: shown not below
    assert format_p_value(3.2e-9, 0.01) == "= 3.2e-09"
    # a fixed-test decision whose p is just below max_p_value: the reason says so
    policy = Policy([CATCH_RULE.model_copy(update={"min_labelled_frauds": 1,
                                                   "threshold": 0.0})])
    champ = ConfusionCounts(tp=700, fp=20, fn=300, tn=8980)
    for tp in range(700, 600, -1):   # the first canary drop significant at 1 %
        canary = ConfusionCounts(tp=tp, fp=20, fn=1000 - tp, tn=8980)
        out = policy.evaluate([ModelView(MODEL, champion=version("v1", counts=champ),
                                         canary=version(f"v{tp}", counts=canary))], 0.0)
        if out.decisions:
            break
    (d,) = out.decisions
    p = d.evidence["p_value"]
    assert 0.005 < p < 0.01
    shown = float(d.reason.split("(p = ")[1].split(" <")[0])
    assert shown < 0.01
    assert "< 0.01, fixed test)" in d.reason


def test_sequential_is_the_default_and_only_for_kpi_comparisons() -> None:
    assert SEQ_RULE.kpi_test == "sequential"
    assert CATCH_RULE.kpi_test == "fixed"
    assert PSI_RULE.kpi_test is None
    with pytest.raises(ValueError, match="test: sequential applies only to KPI metrics"):
        RuleSpec(name="x", metric="psi", scope="canary_vs_champion", threshold=0.2,
                 test="sequential")
    with pytest.raises(ValueError, match="test: fixed applies only to KPI metrics"):
        RuleSpec(name="x", metric="catch_rate", scope="canary_vs_reference", threshold=0.2,
                 test="fixed")
    with pytest.raises(ValueError, match="test"):
        RuleSpec(name="x", metric="catch_rate", scope="canary_vs_champion", threshold=0.2,
                 min_labelled_frauds=1, test="bonferroni")


def test_sequential_p_value_is_a_running_minimum_reset_with_the_canary() -> None:
    policy = Policy([SEQ_RULE])
    seen: list[float] = []
    for i, (ca, cb) in enumerate(stream(3, 0.7, 200)):
        policy.evaluate([totals_view(ca, cb)], float(i))
        st = policy.states[("catch-drop", MODEL, "v2")]
        if st.p_value is not None:
            seen.append(st.p_value)
    assert len(seen) > 100
    assert all(b <= a for a, b in itertools.pairwise(seen))
    assert st.sequential is not None
    assert st.sequential.looks == len(seen)
    # the test started at the first look: earlier lifetime counts are not in it
    assert st.sequential.started_at == 0.0
    # a new canary version starts a new test with its own state
    ca, cb = stream(3, 0.7, 200)[-1]
    policy.evaluate([totals_view(ca, cb, canary_version="v3")], 300.0)
    fresh = policy.states[("catch-drop", MODEL, "v3")]
    assert fresh.status == "insufficient_data"
    assert fresh.sequential is not None
    assert fresh.sequential.started_at == 300.0
    assert "0 canary and 0 champion labelled frauds" in fresh.detail
    # counters that went backwards (engine state lost) restart the test too
    policy.evaluate([totals_view(ConfusionCounts(), ConfusionCounts(), "v3")], 301.0)
    assert fresh.sequential.started_at == 301.0
    assert fresh.sequential.p_value is None


def test_sequential_rolls_back_a_real_drop_with_its_evidence() -> None:
    policy = Policy([SEQ_RULE])
    decisions = []
    for i, (ca, cb) in enumerate(stream(5, 0.5, 400)):
        decisions += policy.evaluate([totals_view(ca, cb)], float(i)).decisions
    (d,) = decisions
    s = d.evidence["samples"]
    assert s["test"] == "sequential"
    assert s["always_valid_p_value"] == d.evidence["p_value"] < 0.05
    assert s["canary_n"] >= 20
    assert s["champion_n"] >= 20
    assert s["mixing_sd"] == 0.05
    assert d.evidence["value"] > 0.05
    assert "sequential test)" in d.reason
    shown = float(d.reason.split("(p = ")[1].split(" <")[0])
    assert shown < 0.05


def test_healthy_canaries_through_the_policy_stay_within_alpha() -> None:
    # 100 healthy canaries, 250 looks each, through Policy itself (the numpy
    # simulation in test_sequential.py covers 400 runs and the fixed test)
    runs, alpha = 100, 0.05
    window = totals_view(ConfusionCounts(), ConfusionCounts())
    false_rollbacks = 0
    lowest: list[float] = []
    for seed in range(runs):
        policy = Policy([SEQ_RULE])
        fired = False
        for i, (ca, cb) in enumerate(stream(1000 + seed, 0.7, 250)):
            assert window.canary is not None
            assert window.champion is not None
            mv = ModelView(MODEL,
                           champion=dataclasses.replace(window.champion, confusion_total=cb),
                           canary=dataclasses.replace(window.canary, confusion_total=ca))
            fired |= bool(policy.evaluate([mv], float(i)).decisions)
        false_rollbacks += fired
        st = policy.states[("catch-drop", MODEL, "v2")]
        assert st.p_value is not None
        lowest.append(st.p_value)
    se = (alpha * (1 - alpha) / runs) ** 0.5
    assert false_rollbacks / runs <= alpha + 3 * se, false_rollbacks
    # the always-valid p-values are spread, not stuck at 1 (the test is looking)
    assert min(lowest) < 0.5
