"""The engine: windows, the label join and what is persisted of them.

What lives here: :class:`Engine` (ingest of decoded columns into per-version
drift windows, ADWIN and KPI slices; the prediction-label join; evaluation),
the dedupe memory of event ids (:mod:`.dedupe`), the bounded row samples for
reports (:mod:`.reservoir`) and the shared state stores (:mod:`.store`,
memory and Redis).

May import: :mod:`detectors`, :mod:`monitor.config`, :mod:`monitor.logs` and
the record and column types of :mod:`monitor.ingest`. Never the service loop,
HTTP or the sandbox.
"""

from monitor.engine.core import (
    SCORE_FEATURE,
    Engine,
    Evaluation,
    VersionEvaluation,
    VersionState,
)

__all__ = ["SCORE_FEATURE", "Engine", "Evaluation", "VersionEvaluation", "VersionState"]
