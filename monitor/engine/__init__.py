"""The engine: windows, the label join and what is persisted of them.

What lives here:

* :mod:`.core` — :class:`Engine`, the front that composes the parts below:
  ingest of decoded columns into per-version drift windows, ADWIN and KPI
  slices, and the calls into them;
* :mod:`.state` — :class:`VersionState` (one version's windows and counters)
  and the confusion field names;
* :mod:`.counting` — counting a batch's rows into a version's windows;
* :mod:`.join` — the prediction-label join buffer (:class:`JoinBuffer`, typed
  entries) and its blobs in a state store; :mod:`.join_ids` — the ids seen,
  stored next to it;
* :mod:`.event_time` — per-partition watermarks, holding and idle release;
* :mod:`.evaluation` — :class:`Evaluation`, :class:`VersionEvaluation`, the
  divergences, KPIs and canary tests;
* :mod:`.persistence` — counters, changed slices, restore and the global view;
* :mod:`.keys` — how slices and counters are named in a store;
* :mod:`.store` — the state store protocol, commits and the in-memory store;
  :mod:`.redis_store` — the Redis store;
* :mod:`.dedupe` — the dedupe memory of event ids; :mod:`.reservoir` — the
  bounded row samples for reports.

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
