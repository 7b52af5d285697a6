"""driftgate detectors: pure maths over numpy arrays, no I/O.

Public API: frozen reference bins, sliced windows, the PSI/KL/JS divergences,
a batch ADWIN wrapper over river, and fraud KPIs with intervals and tests.

May import: numpy, scipy, river and the standard library only; nothing of
:mod:`rollback` or :mod:`monitor` (it is the bottom layer).
"""

from detectors.adwin import ADWINResult, BatchADWIN
from detectors.binning import CategoricalBins, NumericBins, count_by_group
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
from detectors.windows import SlicedWindow, slice_ids

__all__ = [
    "DEFAULT_EPS",
    "ADWINResult",
    "BatchADWIN",
    "CategoricalBins",
    "ConfusionCounts",
    "FraudKPIs",
    "NumericBins",
    "Proportion",
    "ProportionComparison",
    "ReferenceProfile",
    "SlicedWindow",
    "compare_proportions",
    "count_by_group",
    "fraud_kpis",
    "js_divergence",
    "kl_divergence",
    "psi",
    "slice_ids",
    "wilson_interval",
]
