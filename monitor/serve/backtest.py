"""Event-time backtests: a file of events through the engine and the policy.

``driftgate backtest`` replays predictions and labels (one file or two, JSON
lines or Parquet, merged by event time: :mod:`monitor.serve.backtest_input`)
through the same :class:`~monitor.core.service.Service`, engine, decision layer
and policy as a live service, with every clock on *event time*:

* one :class:`EventClock` is the ``clock`` of the service, the engine, the
  codec, the decision layer (hence the policy's ``now``: ``sustain_seconds`` and
  ``cooldown_seconds`` count event seconds) and the audit log. While events are
  fed it reads the event time of the last event fed; at a tick it reads the
  tick's boundary;
* the evaluator ticks once per ``evaluation.tick_seconds`` of event time, at
  the multiples of ``tick_seconds``: every boundary crossed is ticked, in order,
  after the events before it and before any event at or after it (an event
  stamped exactly on a boundary belongs to the next tick); one last tick
  follows the last event. There is no wall-clock ticker and no HTTP server;
* nothing is sent: the rollback webhooks and alerts a live service would have
  sent are recorded in the timeline (``would_send``), with their bodies.

So the same input and configuration give the same decisions at the same event
times on every run and machine: ``timeline.jsonl`` and ``audit.jsonl`` are
byte-identical across runs (``summary.json`` differs only in its
``performance`` section, measured on the wall clock).

Outputs (in the output folder only): ``timeline.jsonl`` (one line per tick: the
tick's event time, the watermark, per version the window counts, per rule its
state, value, threshold and p-value, and the tick's decisions, resolutions and
would-be deliveries), ``audit.jsonl`` (a fresh hash chain, stamped in event
time) and ``summary.json`` (see :func:`run_backtest`).
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from monitor.config import Settings
from monitor.core.decisions import DecisionLayer, json_safe
from monitor.core.service import Service
from monitor.engine import Engine, Evaluation
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.ingest.sources import MemoryDeadLetterSink, SourceBatch, SourceStatus
from monitor.serve.backtest_input import LABEL, FieldNames, MergedInput, read_inputs
from monitor.serve.backtest_score import Incident, score_incidents
from monitor.serve.reference_io import load_reference
from monitor.serve.routes import status_document
from rollback.audit import AuditLog
from rollback.policy import Decision, Resolution

__all__ = ["OUTPUT_FILES", "BacktestOptions", "EventClock", "prepare_out", "run_backtest"]

#: the files a backtest writes into its output folder
OUTPUT_FILES = ("timeline.jsonl", "audit.jsonl", "summary.json")

Progress = Callable[[dict[str, Any]], None]


class EventClock:
    """The backtest's one clock: "now" is event time, moved only forward.

    >>> c = EventClock(100.0)
    >>> c.advance(105.0); c.advance(101.0); c()
    105.0
    """

    def __init__(self, start: float) -> None:
        self.now = float(start)

    def __call__(self) -> float:
        return self.now

    def advance(self, t: float) -> None:
        """Move to event time ``t`` (never backwards)."""
        if t > self.now:
            self.now = float(t)


class _BacktestSource:
    """A source that never polls: the backtest hands batches to the service."""

    exhausted = True

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def poll(self, timeout_s: float) -> SourceBatch:
        return SourceBatch()

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        return None

    def status(self) -> SourceStatus:
        return SourceStatus(assigned={("backtest", 0)}, connected=True)


def _dumps(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"), default=str)


class RecordingDecisionLayer(DecisionLayer):
    """The decision layer with nothing sent: what would have been delivered (the
    rollback webhook to the model's router, the firing and resolved alerts) is
    recorded in :attr:`would_send` instead.

    Built on a copy of ``settings`` without URLs (so no sender exists and no
    secret is needed); ``config_hash`` is that of the settings as given.
    """

    def __init__(self, settings: Settings, engine: Callable[[], Engine | None],
                 clock: Callable[[], float], audit: AuditLog, config_hash: str) -> None:
        self.router_urls = {m.name: m.rollback_url for m in settings.models if m.rollback_url}
        self.alert_url = settings.alerting.url
        quiet = settings.model_copy(update={
            "models": [m.model_copy(update={"rollback_url": None}) for m in settings.models],
            "alerting": settings.alerting.model_copy(update={"url": None})})
        super().__init__(quiet, engine, clock=clock, audit=audit)
        self.config_hash = config_hash
        self.would_send: list[dict[str, Any]] = []

    async def _act(self, d: Decision) -> None:
        await super()._act(d)
        url = self.router_urls.get(d.model)
        if d.action == "rollback" and url and d.decision_id in self._rollbacks_requested:
            self.would_send.append({"target": f"router:{d.model}", "url": url,
                                    "webhook_id": d.decision_id,
                                    "body": self._rollback_body(d)})
        if self.alert_url:
            self.would_send.append({"target": "alertmanager", "url": self.alert_url,
                                    "webhook_id": f"{d.decision_id}:firing",
                                    "body": self._alert_body(d, None)})

    def _resolve(self, r: Resolution) -> None:
        super()._resolve(r)
        d = self.policy.decisions.get(r.decision_id) if r.decision_id else None
        if self.alert_url and d is not None:
            self.would_send.append({"target": "alertmanager", "url": self.alert_url,
                                    "webhook_id": f"{d.decision_id}:resolved",
                                    "body": self._alert_body(d, r.at)})


@dataclass
class BacktestOptions:
    """How to run a backtest."""

    inputs: Sequence[Path]
    out: Path
    incidents: list[Incident] | None = None
    batch_size: int = 50_000
    progress: Progress | None = None
    progress_every_s: float = 5.0
    config_path: str | None = None


@dataclass
class _Run:
    """Counters of a run in progress."""

    ticks: int = 0
    fed: int = 0
    decisions: list[dict[str, Any]] = field(default_factory=list)
    would_send: int = 0


def prepare_out(out: Path, force: bool) -> None:
    """Check that ``out`` can take the outputs (nothing is created yet).

    Refuses a non-empty folder unless ``force``; with ``force`` only the
    backtest's own files (:data:`OUTPUT_FILES`) are removed, at
    :func:`run_backtest` time.
    """
    if out.exists() and not out.is_dir():
        raise ValueError(f"output path {str(out)!r} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ValueError(f"output directory {str(out)!r} is not empty (use --force to "
                         "overwrite its backtest files)")


def _settings_for(settings: Settings, out: Path) -> Settings:
    """The settings a backtest runs with: the audit log in ``out`` (no fsync), a
    file source (no future-timestamp check unless configured), no shared store."""
    return settings.model_copy(update={
        "source": "replay",
        "audit": settings.audit.model_copy(update={"path": out / "audit.jsonl",
                                                   "fsync": False}),
    })


def _rule_rows(layer: DecisionLayer, settings: Settings) -> list[dict[str, Any]]:
    outcome = layer.last_outcome
    if outcome is None:
        return []
    specs = {r.name: r for r in settings.rules}
    rows = []
    for s in outcome.states:
        spec = specs.get(s.rule)
        rows.append({"rule": s.rule, "model": s.model, "version": s.version,
                     "severity": s.severity, "state": s.status, "value": s.value,
                     "threshold": spec.threshold if spec else None,
                     "comparison": spec.comparison if spec else None,
                     "p_value": s.p_value,
                     "max_p_value": spec.max_p_value if spec and s.p_value is not None
                     else None,
                     "consecutive": s.consecutive, "breach_started_at": s.breach_started_at,
                     "detail": s.detail})
    return rows


def _tick_line(n: int, at: float, ev: Evaluation | None, layer: DecisionLayer,
               settings: Settings, sends: list[dict[str, Any]]) -> dict[str, Any]:
    line: dict[str, Any] = {"tick": n, "t": at}
    if ev is None:
        line["evaluated"] = False  # the reference is still being fitted
        return line
    line["watermark"] = ev.watermark
    line["versions"] = {f"{m}/{v}": {"role": ve.role, "window_events": ve.window_events,
                                     "labelled": ve.confusion.n,
                                     "labelled_frauds": ve.confusion.frauds}
                        for (m, v), ve in sorted(ev.versions.items())}
    line["rules"] = _rule_rows(layer, settings)
    outcome = layer.last_outcome
    line["decisions"] = [d.as_dict() for d in outcome.decisions] if outcome else []
    line["resolved"] = ([{"rule": r.rule, "model": r.model, "version": r.version,
                          "decision_id": r.decision_id, "at": r.at}
                         for r in outcome.resolved] if outcome else [])
    line["would_send"] = sends
    return line


def _batch(merged: MergedInput, lo: int, hi: int, settings: Settings) -> SourceBatch:
    batch = SourceBatch()
    ptopic, ltopic = settings.kafka.predictions_topic, settings.kafka.labels_topic
    kinds = merged.kinds[lo:hi].tolist()
    values = merged.values
    for i, kind in zip(range(lo, hi), kinds, strict=True):
        if kind == LABEL:
            batch.labels.append(RawRecord(ltopic, 0, i, values[i]))
        else:
            batch.predictions.append(RawRecord(ptopic, 0, i, values[i]))
    batch.next_offsets[("backtest", 0)] = hi
    return batch


async def run_backtest(settings: Settings, opts: BacktestOptions) -> dict[str, Any]:
    """Run a backtest and write its outputs into ``opts.out``; returns the summary.

    The summary (also ``summary.json``) holds the inputs, the event counts
    (read, predictions, labels, joined, late, invalid), the event-time span,
    ticks, decisions, would-be deliveries, the audit log's head, the final
    status document (as ``driftgate replay`` prints it), the incident score
    (with ``incidents``) and ``performance`` (wall seconds, events/s).
    """
    wall0 = time.perf_counter()
    f = settings.fields
    merged = read_inputs(list(opts.inputs), FieldNames(event_id=f.event_id, ts=f.ts,
                                                       score=f.score, label=f.label))
    if not len(merged):
        raise ValueError("the input holds no events")
    read_s = time.perf_counter() - wall0
    config_hash = settings.content_hash()
    run_settings = _settings_for(settings, opts.out)
    opts.out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        (opts.out / name).unlink(missing_ok=True)
    clock = EventClock(merged.first_time)
    service = Service(run_settings, _BacktestSource(), MemoryDeadLetterSink(),
                      load_reference(run_settings), clock=clock)
    service.codec = EventCodec(run_settings, clock=clock)
    audit = AuditLog(opts.out / "audit.jsonl", fsync=False, clock=clock)
    layer = RecordingDecisionLayer(run_settings, lambda: service.engine, clock, audit,
                                   config_hash)
    service.codec.on_refused = layer.note_refused
    service.tick_handlers.append(layer.on_tick)
    service.decisions = layer
    run = _Run()
    tick_s = run_settings.evaluation.tick_seconds
    k = math.floor(merged.first_time / tick_s) + 1
    times = merged.times
    n = len(merged)
    last_report = time.perf_counter()
    with (opts.out / "timeline.jsonl").open("w") as timeline:
        async def tick_at(k: int) -> None:
            at = k * tick_s
            clock.advance(at)
            sent_before = len(layer.would_send)
            ev = await service.tick()
            sends = layer.would_send[sent_before:]
            run.ticks += 1
            run.would_send += len(sends)
            line = _tick_line(run.ticks, at, ev, layer, settings, sends)
            run.decisions.extend(json_safe(d) for d in line.get("decisions", []))
            _write(timeline, line)

        i = 0
        while i < n:
            boundary = k * tick_s
            end = min(int(np.searchsorted(times, boundary, side="left")), i + opts.batch_size)
            if end > i:
                clock.advance(float(times[end - 1]))
                await service.handle(_batch(merged, i, end, run_settings))
                run.fed += end - i
                i = end
            else:
                await tick_at(k)
                k += 1
            if opts.progress is not None and \
                    time.perf_counter() - last_report >= opts.progress_every_s:
                last_report = time.perf_counter()
                opts.progress(_progress(run, n, clock(), merged, wall0))
        await tick_at(k)  # after the last event
    await layer.drain(timeout=1.0)
    await layer.aclose()
    wall = time.perf_counter() - wall0
    summary = _summary(service, layer, merged, run, opts, config_hash, read_s, wall)
    (opts.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2,
                                                      sort_keys=True, default=str) + "\n")
    if opts.progress is not None:
        opts.progress(_progress(run, n, clock(), merged, wall0))
    return summary


def _write(fh: IO[str], line: dict[str, Any]) -> None:
    fh.write(_dumps(line))
    fh.write("\n")


def _progress(run: _Run, n: int, now: float, merged: MergedInput, wall0: float
              ) -> dict[str, Any]:
    wall = time.perf_counter() - wall0
    return {"fed": run.fed, "total": n, "event_time": now,
            "event_seconds": now - merged.first_time, "ticks": run.ticks,
            "decisions": len(run.decisions),
            "events_per_second": run.fed / wall if wall > 0 else None}


def _summary(service: Service, layer: RecordingDecisionLayer, merged: MergedInput,
             run: _Run, opts: BacktestOptions, config_hash: str, read_s: float,
             wall: float) -> dict[str, Any]:
    eng = service.engine
    versions = eng.versions.values() if eng is not None else []
    invalid = ({f"{kind}/{reason}": n for (kind, reason), n in sorted(eng.invalid.items())}
               if eng is not None else {})
    n_labels = int(np.count_nonzero(merged.kinds == LABEL))
    span = merged.last_time - merged.first_time
    status = status_document(service)
    status["invalid"] = invalid
    by_action = Counter(str(d.get("action")) for d in run.decisions)
    summary: dict[str, Any] = {
        "inputs": merged.files,
        "config": opts.config_path,
        "config_hash": config_hash,
        "out": str(opts.out),
        "events": {
            "read": len(merged), "predictions": len(merged) - n_labels, "labels": n_labels,
            "joined": sum(v.labels_joined_total for v in versions),
            "late": sum(v.late_total for v in versions),
            "invalid": sum(invalid.values()), "invalid_by_reason": invalid,
            "labels_without_ts": merged.labels_without_ts,
            "placed_by_file_order": merged.rows_without_time,
        },
        "event_time": {"first": merged.first_time, "last": merged.last_time,
                       "seconds": span},
        "ticks": run.ticks,
        "tick_seconds": service.settings.evaluation.tick_seconds,
        "decisions": {"total": len(run.decisions), "by_action": dict(sorted(by_action.items())),
                      "list": [{k: d.get(k) for k in ("decision_id", "at", "action", "rule",
                                                      "model", "version", "reason")}
                               for d in run.decisions]},
        "would_send": run.would_send,
        "audit": {"path": str(opts.out / "audit.jsonl"), "records": layer.audit.seq,
                  "head_hash": layer.audit.head_hash},
        "status": status,
        "incidents": (score_incidents(opts.incidents, run.decisions, span)
                      if opts.incidents is not None else None),
        "performance": {"wall_seconds": wall, "read_seconds": read_s,
                        "events_per_second": len(merged) / wall if wall > 0 else None},
    }
    return summary
