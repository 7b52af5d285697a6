"""Scoring a backtest against known incidents (change points).

An incident (one JSON object, in a JSON list or one per line) has a ``start``
event time (epoch seconds or ISO 8601), optionally an ``end``, a ``model``, a
``version`` and a ``kind`` (the expected decision: ``rollback`` or ``alert``;
any decision when absent). Its window is ``[start, end]`` (to the end of the
run without ``end``).

* An incident is *detected* by the first decision of its kind (and model and
  version, when given) inside its window; the delay is that decision's event
  time minus ``start``. An incident without one is *missed*.
* A decision outside the window of every incident that matches its model and
  version is a *false alarm*; a false alarm whose action is ``rollback`` is a
  *false rollback*. False alarms per hour are per hour of event time in the run.

>>> inc = [Incident(start=100.0, end=None, model=None, version="v2", kind="rollback")]
>>> decs = [{"at": 50.0, "action": "alert", "model": "m", "version": "v2",
...          "decision_id": "d0"},
...         {"at": 130.0, "action": "rollback", "model": "m", "version": "v2",
...          "decision_id": "d1"}]
>>> s = score_incidents(inc, decs, run_seconds=7200.0)
>>> s["detected"], s["missed"], s["incidents"][0]["delay_seconds"], s["false_alarms"]
(1, 0, 30.0, 1)
>>> s["false_alarms_per_hour"], s["false_rollbacks"]
(0.5, 0)
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.serve.backtest_input import event_seconds

__all__ = ["KINDS", "Incident", "load_incidents", "score_incidents"]

KINDS = ("rollback", "alert")
_KEYS = {"start", "end", "model", "version", "kind", "name", "note", "description"}


@dataclass(frozen=True)
class Incident:
    """A known change point."""

    start: float
    end: float | None
    model: str | None
    version: str | None
    kind: str | None
    name: str | None = None

    def covers(self, d: Mapping[str, Any]) -> bool:
        """Whether decision ``d`` is inside this incident's window and scope."""
        if self.model is not None and d.get("model") != self.model:
            return False
        if self.version is not None and d.get("version") != self.version:
            return False
        at = float(d["at"])
        return at >= self.start and (self.end is None or at <= self.end)


def _incident(obj: Any, where: str) -> Incident:
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: an incident must be a JSON object, got {obj!r}")
    unknown = sorted(set(obj) - _KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown incident field(s) {unknown!r} (allowed: "
                         f"{sorted(_KEYS)!r})")
    if "start" not in obj:
        raise ValueError(f"{where}: incident has no 'start'")
    start = event_seconds(obj["start"])
    if start is None:
        raise ValueError(f"{where}: bad 'start' {obj['start']!r} (epoch seconds or ISO 8601)")
    end = None
    if obj.get("end") is not None:
        end = event_seconds(obj["end"])
        if end is None or end < start:
            raise ValueError(f"{where}: bad 'end' {obj['end']!r} (an event time at or after "
                             "'start')")
    kind = obj.get("kind")
    if kind is not None and kind not in KINDS:
        raise ValueError(f"{where}: bad 'kind' {kind!r} (one of {list(KINDS)!r})")
    out: dict[str, str | None] = {}
    for key in ("model", "version", "name"):
        value = obj.get(key)
        if value is not None and not isinstance(value, str):
            raise ValueError(f"{where}: {key!r} must be a string, got {value!r}")
        out[key] = value
    return Incident(start=start, end=end, model=out["model"], version=out["version"],
                    kind=kind, name=out["name"])


def load_incidents(path: Path) -> list[Incident]:
    """Incidents from a JSON file (a list, or ``{"incidents": [...]}``) or JSON lines."""
    if not path.is_file():
        raise ValueError(f"incidents file {str(path)!r} does not exist")
    text = path.read_text()
    items: list[tuple[str, Any]]
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"{path}:{n}", json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"incidents file {str(path)!r} line {n} is not JSON: "
                                 f"{exc.msg}") from None
    else:
        if isinstance(doc, dict) and "incidents" in doc:
            doc = doc["incidents"]
        if isinstance(doc, dict):
            doc = [doc]
        if not isinstance(doc, list):
            raise ValueError(f"incidents file {str(path)!r} must hold a list of incidents")
        items = [(f"{path}: incident {i}", x) for i, x in enumerate(doc)]
    if not items:
        raise ValueError(f"incidents file {str(path)!r} holds no incident")
    return [_incident(obj, where) for where, obj in items]


def score_incidents(incidents: Sequence[Incident], decisions: Sequence[Mapping[str, Any]],
                    run_seconds: float) -> dict[str, Any]:
    """Detection delays, missed incidents, false alarms (see the module docstring).

    ``decisions`` are decision dicts (``at``, ``action``, ``model``, ``version``,
    ``decision_id``) in event-time order; ``run_seconds`` is the event time the
    run covered.
    """
    rows: list[dict[str, Any]] = []
    delays: list[float] = []
    for inc in incidents:
        hit = next((d for d in decisions if inc.covers(d)
                    and (inc.kind is None or d.get("action") == inc.kind)), None)
        row: dict[str, Any] = {"name": inc.name, "start": inc.start, "end": inc.end,
                               "model": inc.model, "version": inc.version, "kind": inc.kind,
                               "detected": hit is not None}
        if hit is not None:
            delay = float(hit["at"]) - inc.start
            delays.append(delay)
            row.update(decision_id=hit.get("decision_id"), rule=hit.get("rule"),
                       action=hit.get("action"), at=float(hit["at"]), delay_seconds=delay)
        rows.append(row)
    false = [d for d in decisions if not any(inc.covers(d) for inc in incidents)]
    hours = run_seconds / 3600.0
    return {
        "incidents": rows,
        "detected": len(delays),
        "missed": len(rows) - len(delays),
        "median_delay_seconds": statistics.median(delays) if delays else None,
        "max_delay_seconds": max(delays) if delays else None,
        "false_alarms": len(false),
        "false_alarms_per_hour": len(false) / hours if hours > 0 else None,
        "false_rollbacks": sum(1 for d in false if d.get("action") == "rollback"),
        "false_alarm_decisions": [{"decision_id": d.get("decision_id"), "rule": d.get("rule"),
                                   "action": d.get("action"), "model": d.get("model"),
                                   "version": d.get("version"), "at": d.get("at")}
                                  for d in false],
        "event_hours": hours,
    }
