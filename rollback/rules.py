"""Decision rules: what to watch, against what, and for how long.

A rule names a metric, a scope, a comparison with a threshold, a sustain
condition, minimum sample sizes, a severity and a cooldown. Rules are plain
pydantic models so the service config can hold a list of them; evaluation is
in :mod:`rollback.policy`.

Metrics
-------
* ``psi`` / ``kl`` / ``js`` of a ``feature`` (the score is ``model_score``);
* ``catch_rate`` / ``precision`` / ``alert_rate`` /
  ``amount_weighted_catch_rate``;
* ``adwin_error`` / ``adwin_score``: an ADWIN change detected since the
  previous evaluation (the value is the number of new detections).

Scopes
------
* ``canary_vs_champion``: divergences of the canary's window against the
  champion's; for KPIs, ``champion - canary`` (a *drop*, in proportion points)
  which must also be significant (p < ``max_p_value``). ``test: sequential``
  (the default for these rules) uses the anytime-valid mixture SPRT of
  :mod:`detectors.sequential` on the counts since the canary was first
  evaluated, so ``max_p_value`` bounds the chance of *ever* rolling back a
  canary as good as the champion; ``test: fixed`` re-runs the one-sided
  two-proportion test on the KPI window at every tick (repeated looks inflate
  its error rate);
* ``canary_vs_reference`` / ``champion_vs_reference``: the version's window
  against the frozen reference (KPIs: the version's own value).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["DIVERGENCE_METRICS", "KPI_METRICS", "RuleSpec"]

DIVERGENCE_METRICS = ("psi", "kl", "js")
KPI_METRICS = ("catch_rate", "precision", "alert_rate", "amount_weighted_catch_rate")
ADWIN_METRICS = ("adwin_error", "adwin_score")

Metric = Literal["psi", "kl", "js", "catch_rate", "precision", "alert_rate",
                 "amount_weighted_catch_rate", "adwin_error", "adwin_score"]
Scope = Literal["canary_vs_champion", "canary_vs_reference", "champion_vs_reference"]


class RuleSpec(BaseModel):
    """One rule from the config file.

    Examples
    --------
    >>> r = RuleSpec(name="canary-score-psi", metric="psi", feature="model_score",
    ...              scope="canary_vs_reference", comparison=">", threshold=0.25,
    ...              sustain_seconds=30, severity="rollback")
    >>> r.breached(0.3), r.breached(0.2)
    (True, False)
    >>> try:
    ...     RuleSpec(name="x", metric="catch_rate", scope="canary_vs_champion",
    ...              comparison=">", threshold=0.05, severity="rollback")
    ... except ValueError as exc:
    ...     print("needs min_labelled_frauds >= 1" in str(exc))
    True
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")
    model: str | None = None
    metric: Metric
    feature: str = "model_score"
    scope: Scope = "canary_vs_reference"
    comparison: Literal[">", ">=", "<", "<="] = ">"
    threshold: float
    max_p_value: float = Field(0.01, gt=0, le=1)
    sustain_evaluations: int = Field(1, ge=1, le=100_000)
    sustain_seconds: float = Field(0.0, ge=0)
    min_events: int = Field(0, ge=0)
    min_labelled_frauds: int = Field(0, ge=0)
    severity: Literal["alert", "rollback"] = "alert"
    cooldown_seconds: float = Field(300.0, ge=0)
    test: Literal["sequential", "fixed"] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> RuleSpec:
        if (self.metric in KPI_METRICS and self.scope == "canary_vs_champion"
                and self.min_labelled_frauds < 1):
            raise ValueError(f"{self.metric} with scope canary_vs_champion measures a drop "
                             "(champion - canary) and needs min_labelled_frauds >= 1")
        if self.test is not None and not self.is_kpi_comparison:
            raise ValueError(f"test: {self.test} applies only to KPI metrics "
                             f"{list(KPI_METRICS)} with scope canary_vs_champion, not to "
                             f"{self.metric} with scope {self.scope}")
        if self.metric in ADWIN_METRICS and self.scope == "canary_vs_champion":
            raise ValueError(f"{self.metric} watches one version's stream; use scope "
                             "canary_vs_reference or champion_vs_reference")
        return self

    @property
    def is_kpi_comparison(self) -> bool:
        """A KPI metric compared canary against champion (a significance test)."""
        return self.metric in KPI_METRICS and self.scope == "canary_vs_champion"

    @property
    def kpi_test(self) -> str | None:
        """The test of a KPI comparison (``sequential`` unless set); else None."""
        if not self.is_kpi_comparison:
            return None
        return self.test or "sequential"

    @property
    def target_role(self) -> str:
        """The version role the rule judges (and would roll back)."""
        return "champion" if self.scope == "champion_vs_reference" else "canary"

    def breached(self, value: float) -> bool:
        """Whether ``value`` breaches the threshold."""
        t = self.threshold
        if self.comparison == ">":
            return value > t
        if self.comparison == ">=":
            return value >= t
        if self.comparison == "<":
            return value < t
        return value <= t
