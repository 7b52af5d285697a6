"""Evidently data-drift reports from bounded reservoir samples.

The samples are kept by the engine (:mod:`monitor.engine.reservoir`): per
model version and slice of the drift window, and a sample of the reference rows
in the reference profile's metadata. :func:`build_report` runs Evidently's
``DataDriftPreset`` on the two and returns the HTML report plus a JSON
summary naming the drifted features.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import BrokenExecutor, Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from detectors import ReferenceProfile
from monitor.engine.reservoir import SAMPLE_KEY, SliceReservoir

__all__ = ["ReportBusyError", "ReportInputs", "ReportRenderer", "build_report",
           "reference_sample_frame", "render_report", "report_inputs"]

def reference_sample_frame(profile: ReferenceProfile) -> Any:
    """The reference sample as a pandas DataFrame (ValueError if there is none)."""
    sample = profile.metadata.get(SAMPLE_KEY)
    if not isinstance(sample, dict):
        raise ValueError("the reference profile has no row sample: refit it with "
                         "`driftgate reference fit` to get Evidently reports")
    return _sample_frame(sample)


def _sample_frame(sample: Mapping[str, Any]) -> Any:
    """A stored row sample (``numeric``, ``categorical``, ``score``) as a DataFrame."""
    import pandas as pd

    cols: dict[str, Any] = {}
    for k, v in sample.get("numeric", {}).items():
        cols[k] = pd.to_numeric(pd.Series(v, dtype="float64"))
    for k, v in sample.get("categorical", {}).items():
        cols[k] = pd.Series(v, dtype="object")
    cols["model_score"] = pd.Series(sample.get("score", []), dtype="float64")
    return pd.DataFrame(cols)


@dataclass(frozen=True)
class ReportInputs:
    """Everything one report render needs, copied out of the engine (picklable).

    Built on the event loop by :func:`report_inputs` (a copy of the reservoir's
    rows, well under a millisecond), rendered anywhere by :func:`render_report`.
    """

    reference_sample: Mapping[str, Any]
    numeric: npt.NDArray[np.float64]
    categorical: list[list[object]]
    score: npt.NDArray[np.float64]
    numeric_names: tuple[str, ...]
    categorical_names: tuple[str, ...]
    title: str
    method: str = "psi"


def report_inputs(reference: ReferenceProfile, reservoir: SliceReservoir,
                  numeric_names: Sequence[str], categorical_names: Sequence[str],
                  title: str, method: str = "psi") -> ReportInputs:
    """A snapshot of ``reservoir`` and the reference sample for :func:`render_report`.

    ValueError (cheap, before any rendering) when the reference has no row
    sample or the window holds fewer than 30 sampled rows.
    """
    sample = reference.metadata.get(SAMPLE_KEY)
    if not isinstance(sample, dict):
        raise ValueError("the reference profile has no row sample: refit it with "
                         "`driftgate reference fit` to get Evidently reports")
    num, cat, score = reservoir.sample()
    if score.size < 30:
        raise ValueError(f"only {score.size} sampled rows in the current window (need 30)")
    return ReportInputs(sample, num, [list(row) for row in cat], score, tuple(numeric_names),
                        tuple(categorical_names), title, method)


def _current_frame(inputs: ReportInputs) -> Any:
    import pandas as pd

    cols: dict[str, Any] = {name: inputs.numeric[:, j]
                            for j, name in enumerate(inputs.numeric_names)}
    for j, name in enumerate(inputs.categorical_names):
        cols[name] = pd.Series([None if row[j] is None else str(row[j])
                                for row in inputs.categorical], dtype="object")
    cols["model_score"] = inputs.score
    return pd.DataFrame(cols)


def render_report(inputs: ReportInputs) -> tuple[str, dict[str, Any]]:
    """Run Evidently's DataDriftPreset on ``inputs``: ``(html, summary)``.

    CPU-bound for seconds; :class:`ReportRenderer` runs it in a worker process.
    The summary lists every column's method, value, threshold and whether it
    drifted (distance methods drift at ``value >= threshold``, p-value methods
    at ``value < threshold``), and ``drifted_features``.
    """
    import tempfile
    from pathlib import Path

    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    ref_df = _sample_frame(inputs.reference_sample)
    cur_df = _current_frame(inputs)
    if len(cur_df) < 30:
        raise ValueError(f"only {len(cur_df)} sampled rows in the current window (need 30)")
    definition = DataDefinition(numerical_columns=[*inputs.numeric_names, "model_score"],
                                categorical_columns=list(inputs.categorical_names))
    method = inputs.method
    snapshot = Report([DataDriftPreset(method=method)]).run(
        Dataset.from_pandas(cur_df, data_definition=definition),
        Dataset.from_pandas(ref_df, data_definition=definition))
    columns: dict[str, dict[str, Any]] = {}
    for metric in snapshot.dict()["metrics"]:
        cfg = metric.get("config", {})
        if not str(cfg.get("type", "")).endswith("ValueDrift"):
            continue
        method = str(cfg.get("method", ""))
        value = float(metric["value"])
        threshold = float(cfg.get("threshold", 0.1))
        p_value_method = "p_value" in method.replace("-", "_").lower()
        drifted = value < threshold if p_value_method else value >= threshold
        columns[str(cfg["column"])] = {"method": method, "value": value,
                                       "threshold": threshold, "drifted": drifted}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "report.html"
        snapshot.save_html(str(path))
        html = path.read_text()
    summary = {"title": inputs.title, "method": method, "current_rows": len(cur_df),
               "reference_rows": len(ref_df),
               "columns": columns,
               "drifted_features": sorted(c for c, v in columns.items() if v["drifted"])}
    return html, summary


def build_report(reference: ReferenceProfile, reservoir: SliceReservoir,
                 numeric_names: Sequence[str], categorical_names: Sequence[str],
                 title: str, method: str = "psi") -> tuple[str, dict[str, Any]]:
    """Run Evidently's DataDriftPreset here: ``(html, summary)`` (see :func:`render_report`)."""
    return render_report(report_inputs(reference, reservoir, numeric_names,
                                       categorical_names, title, method))


class ReportBusyError(Exception):
    """Too many distinct reports are waiting for the renderer; retry later."""


Rendered = tuple[str, dict[str, Any]]


class ReportRenderer:
    """Renders reports off the event loop, one at a time per version, cached per window.

    * Rendering runs in ``executor`` (by default one worker process, started on
      first use, so Evidently's pure-Python work never holds the service's GIL).
    * Per version at most one render is in flight; concurrent requests for the
      same version and window await that render (a request for a newer window
      waits for it to finish, then renders).
    * The result is kept per version, keyed by ``window`` (the window bounds and
      reference hash): the same window is served from the cache. At most
      ``max_cached`` versions are kept (least recently used goes first).
    * At most ``max_pending`` versions may be rendering or waiting to render;
      beyond that :class:`ReportBusyError` is raised.

    Examples
    --------
    >>> import asyncio
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> calls = []
    >>> def make() -> str:
    ...     calls.append(1)
    ...     return "inputs"
    >>> r = ReportRenderer(ThreadPoolExecutor(1), render=lambda i: ("<html/>", {"i": i}))
    >>> async def twice() -> list[Rendered]:
    ...     return list(await asyncio.gather(r.get(("m", "v"), (0, 1, "h"), make),
    ...                                      r.get(("m", "v"), (0, 1, "h"), make)))
    >>> asyncio.run(twice())[1], len(calls)
    (('<html/>', {'i': 'inputs'}), 1)
    >>> r.close()
    """

    def __init__(self, executor: Executor | None = None, *,
                 render: Callable[[Any], Rendered] = render_report,
                 max_cached: int = 32, max_pending: int = 16) -> None:
        self._executor = executor
        self._own_executor = executor is None
        self._render = render
        self.max_cached = max_cached
        self.max_pending = max_pending
        self._cache: OrderedDict[tuple[str, str], tuple[Hashable, Rendered]] = OrderedDict()
        self._inflight: dict[tuple[str, str], tuple[Hashable, asyncio.Future[Rendered]]] = {}
        self.renders = 0
        self.cache_hits = 0

    def _pool(self) -> Executor:
        if self._executor is None:
            import multiprocessing

            # spawn: the service's threads (asyncio's executor, Kafka clients)
            # must not be forked; the worker stays up between renders
            self._executor = ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return self._executor

    async def get(self, version: tuple[str, str], window: Hashable,
                  make_inputs: Callable[[], Any]) -> Rendered:
        """The report of ``version`` for ``window``, rendering it if needed.

        ``make_inputs`` is called on the loop just before a render; its
        ValueError propagates (no render is started).
        """
        while True:
            hit = self._cache.get(version)
            if hit is not None and hit[0] == window:
                self._cache.move_to_end(version)
                self.cache_hits += 1
                return hit[1]
            running = self._inflight.get(version)
            if running is None:
                break
            if running[0] == window:
                return await asyncio.shield(running[1])
            # an older window is rendering: wait for it, then render this one
            with contextlib.suppress(Exception):
                await asyncio.shield(running[1])
        if len(self._inflight) >= self.max_pending:
            raise ReportBusyError(f"{len(self._inflight)} reports are rendering or queued")
        inputs = make_inputs()
        future = asyncio.get_running_loop().run_in_executor(self._pool(), self._render, inputs)
        self._inflight[version] = (window, future)
        self.renders += 1
        future.add_done_callback(lambda f: self._finished(version, window, f))
        # shielded: a request that goes away does not cancel the render others await
        return await asyncio.shield(future)

    def _finished(self, version: tuple[str, str], window: Hashable,
                  future: asyncio.Future[Rendered]) -> None:
        if self._inflight.get(version, (None, None))[1] is future:
            del self._inflight[version]
        if future.cancelled():
            return
        exc = future.exception()
        if exc is None:
            self._cache[version] = (window, future.result())
            self._cache.move_to_end(version)
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        elif (isinstance(exc, BrokenExecutor) and self._own_executor
              and self._executor is not None):
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None  # a fresh worker next time

    def close(self) -> None:
        """Stop the worker (pending renders are cancelled)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
