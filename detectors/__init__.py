"""driftgate detectors: pure maths over numpy arrays, no I/O.

Public API: frozen reference bins, sliced windows, the PSI/KL/JS divergences,
a batch ADWIN wrapper over river, fraud KPIs with intervals and tests, the
anytime-valid mixture SPRT for canary-vs-champion proportions, and a
Bernoulli CUSUM for a drop in a proportion (the recall stream).

May import: numpy, scipy, river and the standard library only; nothing of
:mod:`rollback` or :mod:`monitor` (it is the bottom layer).
"""

from detectors.adwin import ADWINResult, BatchADWIN
from detectors.binning import CategoricalBins, NumericBins, count_by_group
from detectors.cusum import BernoulliCUSUM, CUSUMResult, bernoulli_threshold
from detectors.divergence import DEFAULT_EPS, js_divergence, kl_divergence, psi
from detectors.kpi import (
    ConfusionCounts,
    FraudKPIs,
    Proportion,
    ProportionComparison,
    compare_proportions,
    fraud_kpis,
    wilson_interval,
)
from detectors.reference import ReferenceProfile
from detectors.sequential import (
    DEFAULT_MIXING_SD,
    SequentialComparison,
    msprt_log_lr,
    msprt_proportions,
    running_p_value,
)
from detectors.windows import SlicedWindow, slice_ids

__all__ = [
    "DEFAULT_EPS",
    "DEFAULT_MIXING_SD",
    "ADWINResult",
    "BatchADWIN",
    "BernoulliCUSUM",
    "CUSUMResult",
    "CategoricalBins",
    "ConfusionCounts",
    "FraudKPIs",
    "NumericBins",
    "Proportion",
    "ProportionComparison",
    "ReferenceProfile",
    "SequentialComparison",
    "SlicedWindow",
    "bernoulli_threshold",
    "compare_proportions",
    "count_by_group",
    "fraud_kpis",
    "js_divergence",
    "kl_divergence",
    "msprt_log_lr",
    "msprt_proportions",
    "psi",
    "running_p_value",
    "slice_ids",
    "wilson_interval",
]
