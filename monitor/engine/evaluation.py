"""Evaluation of the engine's windows: divergences, KPIs, canary tests.

:func:`evaluate` computes, for every version, PSI/KL/JS per feature and for
the score against the reference, the KPIs with Wilson intervals over the KPI
window, the ADWIN summaries and the recall CUSUM's; and for every model with a canary, the
canary-vs-champion divergences and one-sided proportion tests
(:func:`kpi_tests`), in O(versions x features x bins). The results are the
frozen dataclasses :class:`Evaluation`, :class:`VersionEvaluation`,
:class:`CanaryComparison` and :class:`Divergences`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from detectors import (
    ConfusionCounts,
    ReferenceProfile,
    compare_proportions,
    fraud_kpis,
    js_divergence,
    kl_divergence,
    psi,
)
from detectors.kpi import FraudKPIs
from monitor.config import Settings
from monitor.engine.state import SCORE_FEATURE, VersionState

__all__ = [
    "CanaryComparison",
    "Divergences",
    "Evaluation",
    "VersionEvaluation",
    "evaluate",
    "kpi_tests",
]


@dataclass(frozen=True)
class Divergences:
    """PSI/KL/JS per feature name (the score under :data:`SCORE_FEATURE`)."""

    psi: dict[str, float]
    kl: dict[str, float]
    js: dict[str, float]


@dataclass(frozen=True)
class VersionEvaluation:
    """One version's evaluation."""

    model: str
    version: str
    role: str
    window_events: int
    window_bounds: tuple[float, float] | None
    vs_reference: Divergences | None
    kpis: FraudKPIs
    confusion: ConfusionCounts
    adwin: dict[str, dict[str, float]]
    confusion_total: ConfusionCounts | None = None   # lifetime (sequential KPI tests)
    #: the recall CUSUM (detectors.cusum): statistic, threshold and p0 of the
    #: last monitored batch (NaN before one), detections, and the labelled
    #: frauds tested (monitored) and fed with no in-control rate (unmonitored)
    recall_cusum: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CanaryComparison:
    """Canary against champion for one model."""

    model: str
    champion: str
    canary: str
    divergences: Divergences | None
    kpi_tests: dict[str, dict[str, float | str]]


@dataclass(frozen=True)
class Evaluation:
    """A full evaluation of the engine's state at one moment."""

    at: float
    watermark: float
    versions: dict[tuple[str, str], VersionEvaluation]
    canaries: dict[str, CanaryComparison]
    reference_hash: str


def divergences(reference: ReferenceProfile, eps: float, ref_num: npt.NDArray[Any],
                ref_cat: npt.NDArray[Any], ref_score: npt.NDArray[Any],
                st: VersionState) -> Divergences | None:
    """``st``'s windows against the given counts (a reference or a champion's
    windows); None when either side is empty."""
    if st.window_events == 0 or ref_score.sum() == 0:
        return None
    names = list(reference.numeric.features) + list(
        reference.categorical.features) + [SCORE_FEATURE]
    out_psi: list[float] = []
    out_kl: list[float] = []
    out_js: list[float] = []
    for ref, cur in ((ref_num, st.numeric.total), (ref_cat, st.categorical.total),
                     (ref_score, st.score.total)):
        if ref.shape[0] == 0:
            continue
        out_psi.extend(np.atleast_1d(psi(ref, cur, eps)).tolist())
        out_kl.extend(np.atleast_1d(kl_divergence(ref, cur, eps)).tolist())
        out_js.extend(np.atleast_1d(js_divergence(ref, cur, eps)).tolist())
    return Divergences(dict(zip(names, out_psi, strict=True)),
                       dict(zip(names, out_kl, strict=True)),
                       dict(zip(names, out_js, strict=True)))


def evaluate(settings: Settings, ref: ReferenceProfile,
             states: Mapping[tuple[str, str], VersionState], watermark: float,
             roles: Mapping[str, Mapping[str, str]], role_of: Callable[[str, str], str],
             clock: Callable[[], float]) -> Evaluation:
    """Evaluate every version of ``states`` and every model's canary."""
    conf = settings.evaluation.confidence
    eps = settings.evaluation.eps
    w = settings.windows
    versions: dict[tuple[str, str], VersionEvaluation] = {}
    for key, st in states.items():
        counts = st.kpi_confusion()
        bounds = st.score.bounds
        versions[key] = VersionEvaluation(
            model=st.model,
            version=st.version,
            role=role_of(*key),
            window_events=st.window_events,
            window_bounds=(None if bounds is None else
                           (bounds[0] * w.slice_seconds, (bounds[1] + 1) * w.slice_seconds)),
            vs_reference=divergences(ref, eps, ref.numeric_counts, ref.categorical_counts,
                                     ref.score_counts, st),
            kpis=fraud_kpis(counts, conf),
            confusion=counts,
            confusion_total=st.confusion_total,
            adwin={
                "error": {"mean": st.adwin_error.mean, "width": st.adwin_error.width,
                          "detections": st.adwin_error_detections},
                "score": {"mean": st.adwin_score.mean, "width": st.adwin_score.width,
                          "detections": st.adwin_score_detections},
            },
            recall_cusum=recall_cusum_summary(st),
        )
    canaries: dict[str, CanaryComparison] = {}
    for model, model_roles in roles.items():
        champ, canary = model_roles.get("champion"), model_roles.get("canary")
        if champ is None or canary is None:
            continue
        cst = states.get((model, champ))
        kst = states.get((model, canary))
        if cst is None or kst is None:
            continue
        div = (divergences(ref, eps, cst.numeric.total, cst.categorical.total,
                           cst.score.total, kst)
               if cst.window_events else None)
        canaries[model] = CanaryComparison(model, champ, canary, div,
                                           kpi_tests(cst.kpi_confusion(),
                                                     kst.kpi_confusion()))
    return Evaluation(at=clock(), watermark=watermark, versions=versions,
                      canaries=canaries, reference_hash=ref.content_hash)


def recall_cusum_summary(st: VersionState) -> dict[str, float]:
    """The recall CUSUM of ``st`` as plain numbers (see
    :attr:`VersionEvaluation.recall_cusum`)."""
    c = st.recall_cusum
    p0, _, h = c.last_rates
    return {"statistic": c.statistic, "threshold": h, "p0": p0,
            "detections": float(st.recall_cusum_detections),
            "monitored": float(c.n_monitored), "unmonitored": float(c.n_unmonitored)}


def kpi_tests(champion: ConfusionCounts,
              canary: ConfusionCounts) -> dict[str, dict[str, float | str]]:
    """Canary-vs-champion proportion tests (canary lower than champion)."""
    out: dict[str, dict[str, float | str]] = {}
    pairs = {
        "catch_rate": ((canary.tp, canary.frauds), (champion.tp, champion.frauds)),
        "precision": ((canary.tp, canary.tp + canary.fp),
                      (champion.tp, champion.tp + champion.fp)),
        "alert_rate": ((canary.tp + canary.fp, canary.n), (champion.tp + champion.fp,
                                                          champion.n)),
    }
    for name, ((sa, na), (sb, nb)) in pairs.items():
        if na < 1 or nb < 1:
            continue
        alternative: Literal["two-sided", "less"] = (
            "two-sided" if name == "alert_rate" else "less")
        r = compare_proportions(sa, na, sb, nb, alternative=alternative)
        out[name] = {"difference": r.difference, "p_value": r.p_value, "method": r.method,
                     "alternative": r.alternative, "canary": r.p_a, "champion": r.p_b,
                     "canary_n": float(na), "champion_n": float(nb)}
    return out
