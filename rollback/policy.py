"""The policy: rules evaluated every tick, turned into decisions with evidence.

The policy is pure: it takes neutral *views* of each model's versions (built by
the service from its engine) and the current time, keeps each rule's state
(consecutive breaches, breach start, last firing), and returns the decisions to
act on, the alerts that resolved, and every rule's state. It sends nothing.

* A rule whose samples are below its minimums is ``insufficient_data`` and
  never fires: noise cannot trigger a rollback.
* A breach must hold for ``sustain_evaluations`` consecutive evaluations *and*
  ``sustain_seconds`` before the rule fires; it fires once per breach.
* A rule that fired does not fire again for the same version within its
  ``cooldown_seconds``.
* Rollback decisions stay *active* for their version (the verdict is
  ``rollback``) until acknowledged or the canary changes.
* KPI canary-vs-champion rules with ``test: sequential`` (the default) run the
  anytime-valid mixture SPRT (:mod:`detectors.sequential`) on the cumulative
  counts gained since the rule first looked at the canary (both versions'
  lifetime counts minus their values then: the same period for both). The
  always-valid p-value is the running minimum over the looks, kept in the
  rule's state per (rule, model, canary version): a new canary version starts
  a new test, as do a new champion version and counters that went backwards
  (the engine's state was lost). So ``max_p_value`` bounds the chance of ever
  rolling back a canary as good as the champion over its whole life (per
  test; a restart of the service starts a new one). The mixing sd is the
  rule's ``|threshold|`` (the drop it cares about), else
  :data:`detectors.DEFAULT_MIXING_SD`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from detectors import (
    DEFAULT_MIXING_SD,
    ConfusionCounts,
    FraudKPIs,
    compare_proportions,
    msprt_proportions,
    running_p_value,
)
from rollback.rules import ADWIN_METRICS, DIVERGENCE_METRICS, KPI_METRICS, RuleSpec

__all__ = ["Decision", "ModelView", "Policy", "PolicyOutcome", "Resolution", "RuleState",
           "SequentialState", "VersionView", "format_p_value"]


@dataclass(frozen=True)
class VersionView:
    """What the policy needs to know about one version.

    ``confusion`` covers the KPI window; ``confusion_total`` the version's whole
    life (cumulative, for the sequential test). Views without it (built by
    hand) have ``confusion`` taken as cumulative.
    """

    version: str
    window_events: int
    window_bounds: tuple[float, float] | None
    confusion: ConfusionCounts
    kpis: FraudKPIs
    divergence: Mapping[str, Mapping[str, float]] | None = None
    adwin_detections: Mapping[str, int] = field(default_factory=dict)
    confusion_total: ConfusionCounts | None = None


@dataclass(frozen=True)
class ModelView:
    """One model: champion and canary views and their divergences."""

    model: str
    champion: VersionView | None
    canary: VersionView | None
    canary_vs_champion: Mapping[str, Mapping[str, float]] | None = None


@dataclass
class SequentialState:
    """One sequential test: its baselines and the running always-valid p-value."""

    champion: str
    canary_base: ConfusionCounts
    champion_base: ConfusionCounts
    started_at: float
    p_value: float | None = None
    looks: int = 0


@dataclass
class RuleState:
    """A rule's state for one model and target version."""

    rule: str
    model: str
    version: str | None
    severity: str
    status: str = "insufficient_data"
    detail: str = "not evaluated yet"
    value: float | None = None
    p_value: float | None = None
    consecutive: int = 0
    breach_started_at: float | None = None
    last_fired_at: float | None = None
    fired_decision_id: str | None = None
    evaluations: int = 0
    adwin_seen: int | None = None
    sequential: SequentialState | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "rule", "model", "version", "severity", "status", "detail", "value", "p_value",
            "consecutive", "breach_started_at", "last_fired_at", "fired_decision_id")}


@dataclass(frozen=True)
class Decision:
    """A fired rule: what to do, to which version, and why."""

    decision_id: str
    action: str
    rule: str
    model: str
    version: str
    champion: str | None
    reason: str
    at: float
    breach_started_at: float
    evidence: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"decision_id": self.decision_id, "action": self.action, "rule": self.rule,
                "model": self.model, "version": self.version, "champion": self.champion,
                "reason": self.reason, "at": self.at,
                "breach_started_at": self.breach_started_at, "evidence": self.evidence}


@dataclass(frozen=True)
class Resolution:
    """A rule that had fired and is no longer breaching."""

    rule: str
    model: str
    version: str
    severity: str
    decision_id: str | None
    fired_at: float | None
    at: float


@dataclass
class PolicyOutcome:
    """What one evaluation produced."""

    decisions: list[Decision]
    resolved: list[Resolution]
    states: list[RuleState]


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


class Policy:
    """Evaluates rules against model views and keeps their state.

    Parameters
    ----------
    rules : sequence of RuleSpec
        The configured rules (rule names must be unique).
    """

    def __init__(self, rules: Sequence[RuleSpec]) -> None:
        names = [r.name for r in rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique, got duplicates {dupes!r}")
        self.rules = list(rules)
        self.states: dict[tuple[str, str, str | None], RuleState] = {}
        self.active: dict[tuple[str, str], dict[str, Decision]] = {}
        self.decisions: dict[str, Decision] = {}
        self.acknowledged: set[str] = set()

    # ---------------------------------------------------------------- verdicts
    def verdict(self, model: str, version: str) -> tuple[str, list[Decision], list[RuleState]]:
        """``(ok | alert | rollback, active rollback decisions, firing states)``."""
        active = list(self.active.get((model, version), {}).values())
        firing = [s for s in self.states.values()
                  if s.model == model and s.version == version and s.status == "firing"]
        if active:
            return "rollback", active, firing
        if firing:
            return "alert", active, firing
        return "ok", active, firing

    def acknowledge(self, decision_id: str) -> bool:
        """Clear an active decision (e.g. the router confirmed); False if unknown."""
        found = False
        for key, decs in list(self.active.items()):
            if decision_id in decs:
                del decs[decision_id]
                found = True
                if not decs:
                    del self.active[key]
        if decision_id in self.decisions:
            self.acknowledged.add(decision_id)
            found = True
        return found

    def forget_version(self, model: str, version: str) -> None:
        """Drop active decisions for a version (its role changed)."""
        self.active.pop((model, version), None)

    # -------------------------------------------------------------- evaluation
    def evaluate(self, views: Sequence[ModelView], now: float,
                 context: Mapping[str, Any] | None = None) -> PolicyOutcome:
        """Evaluate every rule on every matching model view."""
        ctx = dict(context or {})
        decisions: list[Decision] = []
        resolved: list[Resolution] = []
        states: list[RuleState] = []
        for view in views:
            for rule in self.rules:
                if rule.model is not None and rule.model != view.model:
                    continue
                target = view.champion if rule.target_role == "champion" else view.canary
                key = (rule.name, view.model, target.version if target else None)
                st = self.states.get(key)
                if st is None:
                    st = self.states[key] = RuleState(
                        rule.name, view.model, target.version if target else None,
                        rule.severity)
                self._step(rule, view, target, st, now, ctx, decisions, resolved)
                states.append(st)
        return PolicyOutcome(decisions, resolved, states)

    def _measure(self, rule: RuleSpec, view: ModelView, target: VersionView | None,
                 st: RuleState, now: float = 0.0
                 ) -> tuple[float | None, float | None, str, dict[str, Any]]:
        """``(value, p_value, detail, samples)``; value None = insufficient data."""
        if target is None:
            return None, None, f"no {rule.target_role} version seen for {view.model}", {}
        samples: dict[str, Any] = {f"{rule.target_role}_window_events": target.window_events,
                                   f"{rule.target_role}_labelled": target.confusion.n,
                                   f"{rule.target_role}_labelled_frauds":
                                       target.confusion.frauds}
        if target.window_events < rule.min_events:
            return None, None, (f"{target.window_events} events in the window, rule needs "
                                f"{rule.min_events}"), samples
        champ = view.champion
        if rule.scope == "canary_vs_champion":
            if champ is None:
                return None, None, "no champion version seen", samples
            samples.update({"champion_window_events": champ.window_events,
                            "champion_labelled": champ.confusion.n,
                            "champion_labelled_frauds": champ.confusion.frauds})
            if champ.window_events < rule.min_events:
                return None, None, (f"champion has {champ.window_events} events, rule needs "
                                    f"{rule.min_events}"), samples
        if rule.metric in DIVERGENCE_METRICS:
            source = (view.canary_vs_champion if rule.scope == "canary_vs_champion"
                      else target.divergence)
            value = (source or {}).get(rule.metric, {}).get(rule.feature)
            if not _finite(value):
                return None, None, f"no {rule.metric} for feature {rule.feature!r} yet", samples
            return value, None, f"{rule.metric}({rule.feature}) = {value:.4f}", samples
        if rule.metric in ADWIN_METRICS:
            stream = rule.metric.split("_", 1)[1]
            total = int(target.adwin_detections.get(stream, 0))
            seen = st.adwin_seen if st.adwin_seen is not None else total
            st.adwin_seen = total
            new = float(total - seen)
            return new, None, f"{int(new)} new ADWIN change(s) in the {stream} stream", samples
        # KPI metrics
        if rule.kpi_test == "sequential" and champ is not None:
            return _sequential(rule, target, champ, st, now, samples)
        if target.confusion.frauds < rule.min_labelled_frauds:
            return None, None, (f"{target.confusion.frauds} labelled frauds, rule needs "
                                f"{rule.min_labelled_frauds}"), samples
        tk = getattr(target.kpis, rule.metric)
        if rule.scope != "canary_vs_champion":
            if not _finite(tk.value):
                return None, None, f"{rule.metric} undefined (no denominator yet)", samples
            samples[f"{rule.metric}_interval"] = [tk.lower, tk.upper]
            return float(tk.value), None, f"{rule.metric} = {tk.value:.4f}", samples
        if champ is None or champ.confusion.frauds < rule.min_labelled_frauds:
            n = champ.confusion.frauds if champ else 0
            return None, None, (f"champion has {n} labelled frauds, rule needs "
                                f"{rule.min_labelled_frauds}"), samples
        ck = getattr(champ.kpis, rule.metric)
        if not (_finite(tk.value) and _finite(ck.value)) or tk.trials < 1 or ck.trials < 1:
            return None, None, f"{rule.metric} undefined for one version", samples
        if rule.metric == "amount_weighted_catch_rate":
            # weighted proportions: test at the Kish effective sample sizes
            na = max(round(_kish(target.confusion)), 1)
            nb = max(round(_kish(champ.confusion)), 1)
            sa, sb = round(tk.value * na), round(ck.value * nb)
        else:
            sa, na, sb, nb = int(tk.successes), int(tk.trials), int(ck.successes), int(
                ck.trials)
        test = compare_proportions(sa, na, sb, nb, alternative="less")
        drop = float(ck.value - tk.value)
        samples.update({"canary_kpi": tk.value, "champion_kpi": ck.value,
                        "canary_interval": [tk.lower, tk.upper],
                        "champion_interval": [ck.lower, ck.upper],
                        "test": test.method, "canary_n": na, "champion_n": nb})
        shown = format_p_value(test.p_value, rule.max_p_value)
        return drop, test.p_value, (f"{rule.metric} canary {tk.value:.4f} vs champion "
                                    f"{ck.value:.4f} (drop {drop:.4f}, p {shown}, fixed test)"
                                    ), samples

    def _step(self, rule: RuleSpec, view: ModelView, target: VersionView | None,
              st: RuleState, now: float, ctx: dict[str, Any], decisions: list[Decision],
              resolved: list[Resolution]) -> None:
        value, p_value, detail, samples = self._measure(rule, view, target, st, now)
        st.evaluations += 1
        st.value, st.p_value = value, p_value
        was_firing = st.status == "firing"
        if value is None:
            breach = False
            st.status, st.detail = "insufficient_data", detail
        else:
            breach = rule.breached(value) and (p_value is None or p_value < rule.max_p_value)
            st.detail = detail
        if not breach:
            if was_firing and target is not None:
                resolved.append(Resolution(rule.name, view.model, target.version,
                                           rule.severity, st.fired_decision_id,
                                           st.last_fired_at, now))
            st.consecutive = 0
            st.breach_started_at = None
            if value is not None:
                st.status = "ok"
            return
        if target is None or value is None:  # a breach needs a value, a value a target
            return
        st.consecutive += 1
        if st.breach_started_at is None:
            st.breach_started_at = now
        sustained = (st.consecutive >= rule.sustain_evaluations
                     and now - st.breach_started_at >= rule.sustain_seconds)
        if was_firing:
            if st.last_fired_at is not None and st.last_fired_at < st.breach_started_at:
                st.detail = (f"{detail}; suppressed: in cooldown since the decision at "
                             f"{st.last_fired_at:.3f}")
            return
        if not sustained:
            st.status = "breaching"
            return
        st.status = "firing"
        if st.last_fired_at is not None and now - st.last_fired_at < rule.cooldown_seconds:
            st.detail = (f"{detail}; suppressed: in cooldown since the decision at "
                         f"{st.last_fired_at:.3f}")
            return
        decision = self._decide(rule, view, target, st, now, value, p_value, samples, ctx)
        st.last_fired_at = now
        st.fired_decision_id = decision.decision_id
        self.decisions[decision.decision_id] = decision
        if rule.severity == "rollback":
            self.active.setdefault((view.model, target.version), {})[
                decision.decision_id] = decision
        decisions.append(decision)

    def _decide(self, rule: RuleSpec, view: ModelView, target: VersionView, st: RuleState,
                now: float, value: float, p_value: float | None, samples: dict[str, Any],
                ctx: dict[str, Any]) -> Decision:
        start = st.breach_started_at if st.breach_started_at is not None else now
        digest = hashlib.sha256(
            f"{rule.name}|{view.model}|{target.version}|{start:.6f}".encode()).hexdigest()
        decision_id = f"dec_{digest[:24]}"
        champion = view.champion.version if view.champion else None
        what = (f"{rule.metric}({rule.feature})" if rule.metric in DIVERGENCE_METRICS
                else rule.metric)
        scope = rule.scope.replace("_", " ")
        reason = (f"{rule.name}: {what} {scope} = {value:.4f} {rule.comparison} "
                  f"{rule.threshold} for {st.consecutive} evaluation(s) over "
                  f"{now - start:.1f}s")
        if p_value is not None:
            test = f", {rule.kpi_test} test" if rule.kpi_test else ""
            shown = format_p_value(p_value, rule.max_p_value)
            reason += f" (p {shown} < {rule.max_p_value}{test})"
        evidence: dict[str, Any] = {
            "rule": rule.model_dump(mode="json"),
            "value": value,
            "threshold": rule.threshold,
            "comparison": rule.comparison,
            "p_value": p_value,
            "max_p_value": rule.max_p_value if p_value is not None else None,
            "consecutive_evaluations": st.consecutive,
            "breach_seconds": now - start,
            "window": {"target": target.window_bounds,
                       "champion": view.champion.window_bounds if view.champion else None},
            "samples": samples,
            "kpis": {"target": _kpi_summary(target.kpis),
                     "champion": _kpi_summary(view.champion.kpis) if view.champion else None},
            **ctx,
        }
        return Decision(decision_id, rule.severity, rule.name, view.model, target.version,
                        champion, reason, now, start, evidence)


def format_p_value(p: float, threshold: float | None = None) -> str:
    """``"= <p>"`` with 3 significant digits, more when needed so that the shown
    value compares with the shown ``threshold`` as ``p`` does (0.0099999 is not
    shown as 0.01 against 0.01); ``"< 1e-16"`` below that.

    >>> format_p_value(0.0099, 0.01), format_p_value(0.0099999, 0.01)
    ('= 0.0099', '= 0.0099999')
    >>> format_p_value(0.01, 0.01), format_p_value(0.123456), format_p_value(0.0)
    ('= 0.01', '= 0.123', '< 1e-16')
    """
    if not math.isfinite(p):
        return f"= {p}"
    if p < 1e-16:
        return "< 1e-16"
    for digits in range(3, 18):
        shown = f"{p:.{digits}g}"
        if threshold is None or (float(shown) < threshold) == (p < threshold):
            return f"= {shown}"
    return f"= {p!r}"


def _delta(total: ConfusionCounts, base: ConfusionCounts) -> ConfusionCounts | None:
    """``total - base``; None when a counter went backwards (state was lost)."""
    names = ("tp", "fp", "fn", "tn", "caught_amount", "missed_amount", "caught_amount_sq",
             "missed_amount_sq")
    diff = {n: getattr(total, n) - getattr(base, n) for n in names}
    if any(v < 0 for v in diff.values()):
        return None
    return ConfusionCounts(**diff)


def _pair(metric: str, c: ConfusionCounts) -> tuple[float, float]:
    """``(successes, trials)`` of a KPI (the weighted one at its Kish size)."""
    if metric == "catch_rate":
        return float(c.tp), float(c.tp + c.fn)
    if metric == "precision":
        return float(c.tp), float(c.tp + c.fp)
    if metric == "alert_rate":
        return float(c.tp + c.fp), float(c.n)
    total = c.caught_amount + c.missed_amount
    n_eff = _kish(c)
    return (c.caught_amount / total * n_eff if total > 0 else 0.0), n_eff


def _sequential(rule: RuleSpec, target: VersionView, champ: VersionView, st: RuleState,
                now: float, samples: dict[str, Any]
                ) -> tuple[float | None, float | None, str, dict[str, Any]]:
    """One look of the rule's sequential test (see the module docstring)."""
    tot_a = target.confusion_total or target.confusion
    tot_b = champ.confusion_total or champ.confusion
    seq = st.sequential
    da = db = None
    if seq is not None and seq.champion == champ.version:
        da, db = _delta(tot_a, seq.canary_base), _delta(tot_b, seq.champion_base)
    if seq is None or da is None or db is None:
        seq = st.sequential = SequentialState(champ.version, tot_a, tot_b, now)
        da, db = ConfusionCounts(), ConfusionCounts()
    samples.update({"test": "sequential", "test_started_at": seq.started_at,
                    "canary_labelled_frauds_tested": da.frauds,
                    "champion_labelled_frauds_tested": db.frauds})
    need = rule.min_labelled_frauds
    if da.frauds < need or db.frauds < need:
        return None, None, (f"sequential test: {da.frauds} canary and {db.frauds} champion "
                            f"labelled frauds since {seq.started_at:.3f}, rule needs {need} "
                            "each"), samples
    (sa, na), (sb, nb) = _pair(rule.metric, da), _pair(rule.metric, db)
    if na <= 0 or nb <= 0:
        return None, None, f"{rule.metric} undefined for one version", samples
    tau = abs(rule.threshold) or DEFAULT_MIXING_SD
    look = msprt_proportions(sa, na, sb, nb, mixing_sd=tau, alternative="less")
    seq.p_value = running_p_value(seq.p_value, look.p_value)
    seq.looks += 1
    drop = -look.difference
    samples.update({"canary_kpi": sa / na, "champion_kpi": sb / nb, "canary_n": na,
                    "champion_n": nb, "always_valid_p_value": seq.p_value,
                    "look_p_value": look.p_value, "looks": seq.looks, "mixing_sd": tau,
                    "method": "mSPRT, normal mixture (Johari, Pekelis & Walsh 2022)"})
    shown = format_p_value(seq.p_value, rule.max_p_value)
    return drop, seq.p_value, (f"{rule.metric} canary {sa / na:.4f} vs champion "
                               f"{sb / nb:.4f} since {seq.started_at:.3f} (drop {drop:.4f}, "
                               f"always-valid p {shown}, {seq.looks} looks)"), samples


def _kish(c: ConfusionCounts) -> float:
    total = c.caught_amount + c.missed_amount
    sq = c.caught_amount_sq + c.missed_amount_sq
    return total * total / sq if sq > 0 else 0.0


def _kpi_summary(k: FraudKPIs) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in KPI_METRICS:
        p = getattr(k, name)
        out[name] = {"estimate": p.value if math.isfinite(p.value) else None,
                     "lower": p.lower, "upper": p.upper, "n": p.trials}
    return out
