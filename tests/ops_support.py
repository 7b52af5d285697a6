"""Shared test helpers for the operations configs (deploy/, grafana/): their
paths, the metric families the service defines (read from its sources), the
Prometheus rules and Grafana dashboards parsed, PromQL metric names, and the
command-line tools (promtool, amtool, kcat...) the tests call."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "deploy" / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULE_FILES = sorted((PROM_DIR / "rules").glob("*.yml"))
AM_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
GRAFANA = ROOT / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))

# The single list of what driftgate exports, read from the collectors' source
# so it cannot drift from the code: every *MetricFamily / Histogram name.
#: every module of the service that may define a metric family (not the sandbox)
METRIC_SOURCES = tuple(sorted(p for p in (ROOT / "monitor").rglob("*.py")
                             if "sandbox" not in p.parts))
#: (kind, name) of every ``CounterMetricFamily("driftgate_...")`` (Gauge, Info) call
FAMILY_RE = re.compile(r'\b(Counter|Gauge|Info)MetricFamily\(\s*"(driftgate_[a-z0-9_]+)"')
#: the name of every ``Histogram("driftgate_...")``
HISTOGRAM_RE = re.compile(r'\bHistogram\(\s*"(driftgate_[a-z0-9_]+)"')


def exported_metric_names() -> frozenset[str]:
    """Every sample name driftgate exports (``_total``, ``_info`` and histogram
    ``_bucket``/``_sum``/``_count`` suffixes included), read from METRIC_SOURCES."""
    names: set[str] = set()
    for path in METRIC_SOURCES:
        src = path.read_text()
        for kind, name in FAMILY_RE.findall(src):
            if kind == "Counter":
                names.add(name.removesuffix("_total") + "_total")
            elif kind == "Info":
                names.add(name + "_info")
            else:
                names.add(name)
        for name in HISTOGRAM_RE.findall(src):
            names.update({f"{name}_bucket", f"{name}_sum", f"{name}_count"})
    return frozenset(names)


#: what driftgate exports (see :func:`exported_metric_names`)
EXPORTED_METRICS = exported_metric_names()


def tool(*names: str) -> str:
    """Path of the first tool found; fails (never skips) when none is."""
    for name in names:
        path = shutil.which(name)
        if path is None and Path("/usr/bin", name).is_file():
            path = str(Path("/usr/bin", name))
        if path is not None:
            return path
    pytest.fail(f"{' / '.join(names)} is not installed (make test installs it)")


def load_yaml(path: Path) -> Any:
    """The YAML document of a file."""
    return yaml.safe_load(path.read_text())


def rules() -> list[dict[str, Any]]:
    """Every rule (alerting and recording) of the Prometheus RULE_FILES."""
    return [r for f in RULE_FILES for g in load_yaml(f)["groups"] for r in g["rules"]]


def alert_rules() -> dict[str, dict[str, Any]]:
    """The Prometheus alerting rules by alert name."""
    return {r["alert"]: r for r in rules() if "alert" in r}


def recording_rules() -> dict[str, dict[str, Any]]:
    """The Prometheus recording rules by recorded series name."""
    return {r["record"]: r for r in rules() if "record" in r}


def dashboards() -> dict[str, dict[str, Any]]:
    """The committed Grafana dashboards (JSON) by file name."""
    return {p.name: json.loads(p.read_text()) for p in DASHBOARDS}


#: PromQL words that are not metric names
PROMQL_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
                   "group_right", "bool", "offset", "inf", "nan", "atan2"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (strings, matchers, ranges, label
    lists and function names removed)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.$])([a-zA-Z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


#: sample values of Grafana's built-in interval variables
GRAFANA_BUILTINS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}


def label_values_selector(query: str) -> str | None:
    """The series selector of a Grafana ``label_values(selector, label)`` query,
    or None when the query has another form."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", query)
    return m.group(1) if m else None


def dashboard_exprs() -> Iterator[tuple[str, str]]:
    """(where, PromQL with Grafana variables) of every dashboard query."""
    for name, dash in dashboards().items():
        for panel in dash["panels"]:
            for t in panel.get("targets", []):
                yield f"{name}: panel {panel['title']!r} {t['refId']}", t["expr"]
        for ann in dash["annotations"]["list"]:
            if "expr" in ann:
                yield f"{name}: annotation {ann['name']!r}", ann["expr"]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                sel = label_values_selector(var["query"])
                assert sel is not None, f"{name}: variable {var['name']} is not label_values()"
                yield f"{name}: variable {var['name']}", sel
