"""The home-made builder of driftgate's Grafana dashboards: targets, panels,
rows, template variables, annotations and the grid layout.

``Target`` is one Prometheus query, ``Panel`` one panel (``timeseries``,
``stat``, ``state_timeline`` and ``table`` build them with the defaults each
kind needs), ``Row`` a titled, expanded row of panels. ``dashboard`` lays the
rows out on Grafana's 24-column grid (a panel that does not fit on the line
starts the next one), numbers the panels and adds the shared variables
(``datasource``, ``job``, ``model``, ``version``), annotations and links.
``rate``, ``increase`` and ``quantile`` write the usual PromQL shapes.
The dashboards themselves are in ``definitions.py``; ``generate.py`` writes
them out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DS = {"type": "prometheus", "uid": "${datasource}"}
SCHEMA_VERSION = 39

# Label matchers shared by every query.
J = 'job=~"$job"'
JMV = f'{J}, model=~"$model", version=~"$version"'
JM = f'{J}, model=~"$model"'


# ----------------------------------------------------------------- panels
@dataclass
class Target:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: str = "time_series"

    def render(self, ref: str) -> dict[str, Any]:
        return {
            "datasource": DS,
            "editorMode": "code",
            "expr": self.expr,
            "format": self.fmt,
            "instant": self.instant,
            "legendFormat": self.legend or "__auto",
            "range": not self.instant,
            "refId": ref,
        }


@dataclass
class Panel:
    """One panel; ``w``/``h`` in grid units (24 columns)."""

    kind: str
    title: str
    targets: Sequence[Target]
    description: str = ""
    unit: str = "short"
    w: int = 12
    h: int = 8
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    thresholds: Sequence[tuple[str, float | None]] = (("green", None),)
    threshold_style: str = "off"
    mappings: Sequence[dict[str, Any]] = ()
    overrides: Sequence[dict[str, Any]] = ()
    draw: str = "line"
    stack: bool = False
    fill: int = 10
    log_scale: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    transformations: Sequence[dict[str, Any]] = ()
    repeat: str | None = None

    def render(self, pid: int, x: int, y: int) -> dict[str, Any]:
        defaults: dict[str, Any] = {
            "color": {"mode": "palette-classic"},
            "mappings": list(self.mappings),
            "thresholds": {"mode": "absolute", "steps": [
                {"color": c, "value": v} for c, v in self.thresholds]},
            "unit": self.unit,
        }
        for key in ("min", "max", "decimals"):
            value = getattr(self, key)
            if value is not None:
                defaults[key] = value
        if self.kind == "timeseries":
            defaults["custom"] = {
                "axisSoftMin": 0 if self.min is None and not self.log_scale else None,
                "drawStyle": self.draw,
                "fillOpacity": self.fill,
                "lineWidth": 1,
                "pointSize": 4,
                "scaleDistribution": ({"type": "log", "log": 10} if self.log_scale
                                      else {"type": "linear"}),
                "showPoints": "never",
                "spanNulls": False,
                "stacking": {"group": "A", "mode": "normal" if self.stack else "none"},
                "thresholdsStyle": {"mode": self.threshold_style},
            }
            defaults["custom"] = {k: v for k, v in defaults["custom"].items() if v is not None}
            options: dict[str, Any] = {
                "legend": {"calcs": ["lastNotNull", "max"], "displayMode": "table",
                           "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "multi", "sort": "desc"},
            }
        elif self.kind == "stat":
            defaults["color"] = {"mode": "thresholds"}
            options = {"colorMode": "background", "graphMode": "none", "justifyMode": "auto",
                       "orientation": "auto", "textMode": "value_and_name",
                       "reduceOptions": {"calcs": ["lastNotNull"], "fields": "",
                                         "values": False}}
        elif self.kind == "state-timeline":
            defaults["color"] = {"mode": "thresholds"}
            defaults["custom"] = {"fillOpacity": 80, "lineWidth": 0}
            options = {"alignValue": "left", "mergeValues": True, "rowHeight": 0.8,
                       "showValue": "never", "legend": {"displayMode": "list",
                                                        "placement": "bottom",
                                                        "showLegend": True},
                       "tooltip": {"mode": "single", "sort": "none"}}
        elif self.kind == "table":
            defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}}
            options = {"showHeader": True, "cellHeight": "sm",
                       "footer": {"show": False, "reducer": ["sum"], "fields": ""}}
        else:  # pragma: no cover - generator misuse
            raise ValueError(f"unknown panel kind {self.kind!r}")
        options.update(self.options)
        out: dict[str, Any] = {
            "datasource": DS,
            "description": self.description,
            "fieldConfig": {"defaults": defaults, "overrides": list(self.overrides)},
            "gridPos": {"h": self.h, "w": self.w, "x": x, "y": y},
            "id": pid,
            "options": options,
            "targets": [t.render(chr(ord("A") + i)) for i, t in enumerate(self.targets)],
            "title": self.title,
            "type": self.kind,
        }
        if self.transformations:
            out["transformations"] = list(self.transformations)
        if self.repeat:
            out["repeat"] = self.repeat
            out["repeatDirection"] = "h"
        return out


@dataclass
class Row:
    title: str
    panels: Sequence[Panel]
    repeat: str | None = None
    collapsed: bool = False


def timeseries(title: str, *targets: Target, **kw: Any) -> Panel:
    return Panel("timeseries", title, targets, **kw)


def stat(title: str, *targets: Target, **kw: Any) -> Panel:
    kw.setdefault("w", 4)
    kw.setdefault("h", 4)
    return Panel("stat", title, targets, **kw)


def state_timeline(title: str, *targets: Target, **kw: Any) -> Panel:
    return Panel("state-timeline", title, targets, **kw)


def table(title: str, *targets: Target, **kw: Any) -> Panel:
    return Panel("table", title, targets, **kw)


def rate(metric: str, matchers: str, by: str, interval: str = "$__rate_interval") -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[{interval}]))"


def increase(metric: str, matchers: str, by: str, interval: str = "$__rate_interval") -> str:
    return f"sum by ({by}) (increase({metric}{{{matchers}}}[{interval}]))"


def quantile(q: float, metric: str, matchers: str, by: str = "le") -> str:
    return (f"histogram_quantile({q}, sum by ({by}) "
            f"(rate({metric}_bucket{{{matchers}}}[$__rate_interval])))")


def value_mapping(codes: Sequence[tuple[int, str, str]]) -> dict[str, Any]:
    return {"type": "value", "options": {
        str(code): {"text": text, "color": color, "index": i}
        for i, (code, text, color) in enumerate(codes)}}


def color_override(name: str, color: str, **props: Any) -> dict[str, Any]:
    properties = [{"id": "color", "value": {"fixedColor": color, "mode": "fixed"}}]
    properties += [{"id": k, "value": v} for k, v in props.items()]
    return {"matcher": {"id": "byName", "options": name}, "properties": properties}


# -------------------------------------------------------------- variables
def query_variable(name: str, label: str, query: str, *, multi: bool = True,
                   hide: int = 0) -> dict[str, Any]:
    return {
        "allValue": ".*",
        "current": {},
        "datasource": DS,
        "definition": query,
        "hide": hide,
        "includeAll": multi,
        "label": label,
        "multi": multi,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def variables(*extra: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"current": {}, "hide": 0, "includeAll": False, "label": "Data source",
         "multi": False, "name": "datasource", "options": [], "query": "prometheus",
         "refresh": 1, "regex": "", "skipUrlSync": False, "type": "datasource"},
        query_variable("job", "Job", "label_values(driftgate_reference_info, job)"),
        query_variable("model", "Model",
                       f"label_values(driftgate_events_total{{{J}}}, model)"),
        query_variable("version", "Version",
                       f'label_values(driftgate_events_total{{{JM}}}, version)'),
        *extra,
    ]


ANNOTATIONS = [
    {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
     "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
     "name": "Annotations & Alerts", "type": "dashboard"},
    {"datasource": DS, "enable": True, "hide": False, "iconColor": "red",
     "name": "Rollback decisions",
     "expr": ('sum by (model, version, rule) (changes(driftgate_decisions_total'
              f'{{{JM}, action="rollback"}}[2m])) > 0'),
     "step": "1m", "titleFormat": "rollback {{model}} {{version}}",
     "textFormat": "rule {{rule}}", "useValueForTime": False},
]


# --------------------------------------------------------------- layout
def dashboard(uid: str, title: str, description: str, rows: Iterable[Row],
              extra_vars: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid = 0
    y = 0
    for row in rows:
        pid += 1
        row_panel: dict[str, Any] = {
            "collapsed": row.collapsed, "gridPos": {"h": 1, "w": 24, "x": 0, "y": y},
            "id": pid, "panels": [], "title": row.title, "type": "row"}
        if row.repeat:
            row_panel["repeat"] = row.repeat
        panels.append(row_panel)
        y += 1
        x, line_h = 0, 0
        for p in row.panels:
            if x + p.w > 24:
                y += line_h
                x, line_h = 0, 0
            pid += 1
            panels.append(p.render(pid, x, y))
            x += p.w
            line_h = max(line_h, p.h)
        y += line_h
    return {
        "annotations": {"list": ANNOTATIONS},
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "links": [{"asDropdown": True, "icon": "external link", "includeVars": True,
                   "keepTime": True, "tags": ["driftgate"], "targetBlank": False,
                   "title": "driftgate dashboards", "type": "dashboards"}],
        "panels": panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": ["driftgate"],
        "templating": {"list": variables(*extra_vars)},
        "time": {"from": "now-6h", "to": "now"},
        "timepicker": {},
        "timezone": "utc",
        "title": title,
        "uid": uid,
        "version": 1,
    }
