"""The operations configs agree with each other and with the code.

Covers deploy/prometheus (promtool check config / check rules / test rules),
deploy/alertmanager (amtool check-config, routing, inhibition on a real
Alertmanager), grafana/ (generated dashboards up to date, PromQL parses, only
exported metrics), docker-compose.yml (mounted paths exist, service names and
ports agree with prometheus.yml, Alertmanager, Grafana and the driftgate
config, which loads), deploy/kubernetes (kustomize renders; core kinds pass
kubernetes-validate strictly, CRDs pass a small structural schema), and the
Argo Rollouts / Flagger examples.

Tests that run promtool, amtool, Alertmanager or kubectl are marked
``integration`` and FAIL (never skip) when the tool is missing: `make test`
installs them. kubernetes-validate comes from the dev extra.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from monitor.config import PATH_KEYS as CONFIG_PATH_KEYS  # the config's file-path keys
from monitor.config import Settings, load_settings
from monitor.sandbox.ports import free_port
from tests.ops_support import (
    AM_CONFIG,
    DASHBOARDS,
    EXPORTED_METRICS,
    GRAFANA,
    GRAFANA_BUILTINS,
    HISTOGRAM_RE,
    METRIC_SOURCES,
    PROM_CONFIG,
    PROM_DIR,
    ROOT,
    RULE_FILES,
    alert_rules,
    dashboard_exprs,
    dashboards,
    load_yaml,
    metric_names,
    recording_rules,
    rules,
    tool,
)

PROM_TESTS = sorted((PROM_DIR / "tests").glob("*.yml"))
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "kubernetes"
KUSTOMIZATIONS = (K8S / "base", K8S / "overlays" / "production")
ARGO = ROOT / "deploy" / "argo-rollouts"
FLAGGER = ROOT / "deploy" / "flagger"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
OPERATIONS = ROOT / "docs" / "operations.md"
K8S_VERSION = "1.32.0"  # the kubectl the project ships against

INTEGRATION = pytest.mark.integration

# ------------------------------------------------------ exported metric names
# EXPORTED_METRICS (tests/support.py) is read from the collectors' source.
HTTP_SOURCES = tuple(sorted((ROOT / "monitor" / "serve").rglob("*.py")))
PROMETHEUS_METRICS = frozenset({"up"})  # synthesised by Prometheus per target


# ------------------------------------------------------------------ helpers
def run(*cmd: str | Path, cwd: Path = ROOT, timeout: float = 120) -> str:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                    f"{proc.stdout}\n{proc.stderr}")
    return proc.stdout + proc.stderr


def load_yaml_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def github_slug(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def runbook_anchors() -> set[str]:
    return {github_slug(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", RUNBOOKS.read_text(),
                                                re.MULTILINE)}


def http(url: str, body: Any = None) -> Any:
    """GET (or POST ``body`` as JSON to) a loopback HTTP URL; the decoded JSON
    (or the text when the answer is not JSON)."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"only loopback URLs, got {url!r}")
    data = None if body is None else json.dumps(body).encode()
    method = "GET" if body is None else "POST"
    headers = {"Content-Type": "application/json"}
    req = urllib.request.Request(url, data, headers, method=method)  # noqa: S310 - loopback
    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310 - http://127.0.0.1 only
        text = r.read()
    try:
        return json.loads(text)
    except ValueError:
        return text.decode()


# ----------------------------------------------------------------- PromQL
def grafana_to_promql(expr: str) -> str:
    """A dashboard expression with Grafana variables replaced by sample values."""
    for var, value in GRAFANA_BUILTINS.items():
        expr = expr.replace(var, value)
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", "card-fraud", expr)


def template_to_promql(expr: str) -> str:
    """An Argo Rollouts / Flagger query with its {{ placeholders }} filled."""
    expr = re.sub(r"\{\{\s*interval\s*\}\}", "5m", expr)
    return re.sub(r"\{\{\s*[\w.\-]+\s*\}\}", "card-fraud", expr)


def manifest_queries() -> Iterator[tuple[str, str]]:
    """(where, PromQL with placeholders) of the Argo Rollouts and Flagger queries."""
    for path in sorted(ARGO.glob("*.yaml")) + sorted(FLAGGER.glob("*.yaml")):
        for doc in load_yaml_all(path.read_text()):
            if doc["kind"] == "AnalysisTemplate":
                for metric in doc["spec"]["metrics"]:
                    prom = metric["provider"].get("prometheus")
                    if prom:
                        yield f"{path.name}: {metric['name']}", prom["query"]
            elif doc["kind"] == "MetricTemplate":
                yield f"{path.name}: {doc['metadata']['name']}", doc["spec"]["query"]


def all_exprs() -> list[tuple[str, str]]:
    """(where, plain PromQL) of every expression in rules, dashboards and manifests."""
    out = [(f"rule {r.get('alert') or r.get('record')}", r["expr"]) for r in rules()]
    out += [(w, grafana_to_promql(e)) for w, e in dashboard_exprs()]
    out += [(w, template_to_promql(e)) for w, e in manifest_queries()]
    return out


# ====================================================== exported metric list
def test_exported_metric_list_is_read_from_the_code() -> None:
    # a regex that silently stopped matching would make every check below vacuous
    assert len(EXPORTED_METRICS) >= 40, sorted(EXPORTED_METRICS)
    for name in ("driftgate_reference_info", "driftgate_events_total", "driftgate_psi",
                 "driftgate_kpi_ratio", "driftgate_batch_duration_seconds_bucket",
                 "driftgate_decisions_total", "driftgate_verdict", "driftgate_ready",
                 "driftgate_webhook_deliveries_total", "driftgate_audit_records"):
        assert name in EXPORTED_METRICS


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, instance) (rate(a_bucket{x="y z"}[5m]))) '
            '/ on (job) group_left (model) b unless c offset 10m > bool 1e-4 or vector(0) '
            'and d{__name__!="e"} - time()')
    assert metric_names(expr) == {"a_bucket", "b", "c", "d"}
    assert metric_names("up{job=~\"$job\"} == 0") == {"up"}


# ========================================================= Prometheus rules
@INTEGRATION
def test_promtool_check_config() -> None:
    out = run(tool("promtool"), "check", "config", PROM_CONFIG)
    assert f"{len(RULE_FILES)} rule files found" in out


@INTEGRATION
def test_promtool_check_rules() -> None:
    run(tool("promtool"), "check", "rules", *RULE_FILES)


@INTEGRATION
def test_promtool_unit_tests_pass() -> None:
    assert PROM_TESTS
    out = run(tool("promtool"), "test", "rules", *PROM_TESTS)
    assert out.count("SUCCESS") == len(PROM_TESTS), out


def test_prometheus_config_wiring() -> None:
    cfg = load_yaml(PROM_CONFIG)
    listed = {(PROM_DIR / f).resolve() for f in cfg["rule_files"]}
    assert listed == {f.resolve() for f in RULE_FILES}
    for test_file in PROM_TESTS:
        used = {(test_file.parent / f).resolve() for f in load_yaml(test_file)["rule_files"]}
        assert used <= listed, test_file
    am = cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am == ["alertmanager:9093"]
    jobs = {s["job_name"]: s for s in cfg["scrape_configs"]}
    assert jobs["driftgate"]["static_configs"][0]["targets"] == ["driftgate:8080"]
    assert jobs["driftgate"].get("metrics_path", "/metrics") == "/metrics"


REQUIRED_ALERTS = {
    "DriftgateDriftHigh": ("driftgate_psi", 'feature="model_score"', "> 0.25"),
    "DriftgateKpiDrop": ("driftgate_canary_kpi_difference_ratio",
                         "driftgate_canary_kpi_p_value", 'kpi="catch_rate"', "< 0.01"),
    "DriftgateConsumerLagHigh": ("driftgate_consumer_lag",),
    "DriftgateDeadLetterRate": ("driftgate_dead_letter",),
    "DriftgateUndecodableBatches": ("driftgate_skipped_batches_total", "increase("),
    "DriftgateFutureTimestamps": ('driftgate_invalid_events_total{reason="future_timestamp"}',
                                  "increase(", "unless", "offset 15m"),
    "DriftgateCardinalityRefusals": ("driftgate_invalid_events_total", "too_many_versions",
                                     "too_many_models", "unknown_model"),
    "DriftgateDedupeMemoryFull": ("increase(driftgate_dedupe_evictions_total[15m])",
                                  "unless", "offset 15m"),
    "DriftgateWebhookDeliveryFailures": ("driftgate_webhook_deliveries_total",),
    "DriftgateDown": ('up{job="driftgate"} == 0',),
    "DriftgateNotReady": ("driftgate_ready == 0",),
    "DriftgateRollbackDecided": ('driftgate_decisions_total{action="rollback"}', "increase("),
}


def _expanded(expr: str) -> str:
    """``expr`` with recording-rule names replaced by their expressions."""
    for name, rule in recording_rules().items():
        expr = expr.replace(name, f"({rule['expr']})")
    return expr


def test_required_alerts_exist_with_their_conditions() -> None:
    alerts = alert_rules()
    assert set(REQUIRED_ALERTS) <= set(alerts)
    for name, fragments in REQUIRED_ALERTS.items():
        expr = _expanded(alerts[name]["expr"])
        for fragment in fragments:
            assert fragment in expr, (name, fragment)
    assert alerts["DriftgateDriftHigh"]["for"] == "5m"


def test_alerts_have_annotations_and_runbook_anchors() -> None:
    anchors = runbook_anchors()
    for name, rule in alert_rules().items():
        ann = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        url = ann["runbook_url"]
        assert url.split("#")[0].endswith("docs/runbooks.md"), name
        assert url.split("#")[1] == name.lower(), name
        assert name.lower() in anchors, f"docs/runbooks.md has no section {name}"
    # the alert driftgate sends to on-call itself (monitor/core/decisions.py)
    assert "driftgaterulefiring" in anchors


def test_runbook_sections_are_complete() -> None:
    text = RUNBOOKS.read_text()
    for name in [*alert_rules(), "DriftgateRuleFiring"]:
        m = re.search(rf"^## {name}\s*$(.*?)(?=^## |\Z)", text, re.MULTILINE | re.DOTALL)
        assert m, f"docs/runbooks.md: no '## {name}' section"
        for part in ("Meaning", "Impact", "Diagnosis", "Action"):
            assert re.search(rf"^\*\*{part}", m.group(1), re.MULTILINE), (name, part)


def test_operations_doc_links_every_runbook() -> None:
    text = OPERATIONS.read_text()
    for name in alert_rules():
        assert f"runbooks.md#{name.lower()}" in text, name


def _alert_tests() -> Iterator[dict[str, Any]]:
    for f in PROM_TESTS:
        for t in load_yaml(f)["tests"]:
            yield from t.get("alert_rule_test", [])


def test_every_alert_has_firing_and_quiet_cases() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in _alert_tests():
        (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert set(alert_rules()) <= firing, set(alert_rules()) - firing
    assert set(alert_rules()) <= quiet, set(alert_rules()) - quiet


def test_every_recording_rule_is_unit_tested() -> None:
    tested = {case["expr"].strip() for f in PROM_TESTS for t in load_yaml(f)["tests"]
              for case in t.get("promql_expr_test", [])}
    assert set(recording_rules()) <= tested, set(recording_rules()) - tested


# ============================================================= Alertmanager
@INTEGRATION
def test_amtool_check_config() -> None:
    out = run(tool("amtool"), "check-config", AM_CONFIG)
    assert "SUCCESS" in out


def test_alertmanager_route_and_inhibition_config() -> None:
    cfg = load_yaml(AM_CONFIG)
    assert cfg["route"]["group_by"] == ["alertname", "model"]
    receiver = next(r for r in cfg["receivers"] if r["name"] == cfg["route"]["receiver"])
    assert receiver["webhook_configs"][0]["send_resolved"] is True
    (rule,) = cfg["inhibit_rules"]
    assert rule["source_matchers"] == ['alertname=~"DriftgateDown|DriftgateNotReady"']
    assert rule["target_matchers"] == ['alertname=~"DriftgateDriftHigh|DriftgateKpiDrop"']
    assert sorted(rule["equal"]) == ["instance", "job"]


@INTEGRATION
def test_amtool_routes_every_alert_to_oncall() -> None:
    amtool = tool("amtool")
    for name, rule in alert_rules().items():
        run(amtool, "config", "routes", "test", f"--config.file={AM_CONFIG}",
            "--verify.receivers=oncall", f"alertname={name}", "model=card-fraud",
            f"severity={rule['labels']['severity']}")


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    binary = tool("prometheus-alertmanager", "alertmanager")
    port = free_port()
    log = tmp_path / "alertmanager.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [binary, f"--config.file={AM_CONFIG}", f"--storage.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
            stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                http(f"{url}/-/ready")
                break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Alertmanager did not start: {log.read_text()[-2000:]}")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@INTEGRATION
def test_alertmanager_inhibits_drift_alerts_of_a_down_instance(alertmanager: str) -> None:
    now = dt.datetime.now(dt.UTC)
    ends = (now + dt.timedelta(hours=1)).isoformat()

    def alert(name: str, instance: str, **labels: str) -> dict[str, Any]:
        return {"labels": {"alertname": name, "job": "driftgate", "instance": instance,
                           **labels},
                "annotations": {}, "startsAt": now.isoformat(), "endsAt": ends}

    posted = [
        alert("DriftgateDown", "a:8080", severity="critical"),
        alert("DriftgateNotReady", "b:8080", severity="warning"),
        alert("DriftgateDriftHigh", "a:8080", model="card-fraud", severity="warning"),
        alert("DriftgateKpiDrop", "b:8080", model="card-fraud", severity="critical"),
        alert("DriftgateDriftHigh", "c:8080", model="card-fraud", severity="warning"),
        alert("DriftgateRollbackDecided", "a:8080", model="card-fraud", severity="critical"),
    ]
    http(f"{alertmanager}/api/v2/alerts", posted)
    expected = {("DriftgateDown", "a:8080"): False, ("DriftgateNotReady", "b:8080"): False,
                ("DriftgateDriftHigh", "a:8080"): True, ("DriftgateKpiDrop", "b:8080"): True,
                ("DriftgateDriftHigh", "c:8080"): False,
                ("DriftgateRollbackDecided", "a:8080"): False}
    deadline = time.monotonic() + 20
    while True:
        got = {(a["labels"]["alertname"], a["labels"]["instance"]):
               bool(a["status"]["inhibitedBy"]) for a in http(f"{alertmanager}/api/v2/alerts")}
        if got == expected or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert got == expected


# ================================================================== Grafana
def test_generated_dashboards_are_up_to_date(tmp_path: Path) -> None:
    run(sys.executable, GRAFANA / "generate.py", "--out", tmp_path)
    fresh = {p.name: p.read_text() for p in tmp_path.glob("*.json")}
    committed = {p.name: p.read_text() for p in DASHBOARDS}
    assert set(fresh) == set(committed), "run: python grafana/generate.py"
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale dashboards {stale}: run python grafana/generate.py"


def test_dashboards_cover_the_four_views() -> None:
    titles = {d["title"] for d in dashboards().values()}
    assert titles == {"driftgate / Service overview", "driftgate / Drift",
                      "driftgate / Fraud KPIs", "driftgate / Decisions"}


def test_dashboard_structure_and_variables() -> None:
    uids = set()
    for name, dash in dashboards().items():
        assert dash["uid"] not in uids
        uids.add(dash["uid"])
        assert "id" not in dash or dash["id"] is None, name
        variables = {v["name"]: v for v in dash["templating"]["list"]}
        for var in ("model", "version"):
            v = variables[var]
            assert v["type"] == "query", (name, var)
            assert v["query"].startswith("label_values(")
            assert v["query"].endswith(f"{var})")
        assert variables["datasource"]["type"] == "datasource"
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), name
        for p in dash["panels"]:
            pos = p["gridPos"]
            assert pos["x"] >= 0, (name, p["title"])
            assert pos["x"] + pos["w"] <= 24, (name, p["title"])
            if p["type"] != "row":
                assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
                assert p["targets"], (name, p["title"])
                for t in p["targets"]:
                    # every query follows the variables
                    assert 'job=~"$job"' in t["expr"], (name, p["title"], t["expr"])


def test_dashboards_show_every_exported_metric() -> None:
    """Every exported family appears on some dashboard (a histogram through
    any of its _bucket/_sum/_count series)."""
    histograms = {n for path in METRIC_SOURCES for n in HISTOGRAM_RE.findall(path.read_text())}

    def family(name: str) -> str:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        return base if base in histograms else name

    used = set().union(*(metric_names(grafana_to_promql(e)) for _, e in dashboard_exprs()))
    missing = {family(n) for n in EXPORTED_METRICS} - {family(n) for n in used}
    assert not missing, f"not on any dashboard: {sorted(missing)}"


def test_kpi_panels_band_champion_and_canary() -> None:
    kpis = dashboards()["driftgate-kpis.json"]
    for kpi in ("catch_rate", "precision", "alert_rate", "amount_weighted_catch_rate"):
        panel = next(p for p in kpis["panels"] if p["type"] == "timeseries" and any(
            f'kpi="{kpi}"' in t["expr"] and "role=" in t["expr"] for t in p["targets"]))
        legends = {t["legendFormat"] for t in panel["targets"]}
        assert legends == {f"{r}{b}" for r in ("champion", "canary")
                           for b in ("", " lower", " upper")}
        fills = {o["matcher"]["options"]: prop["value"] for o in panel["fieldConfig"][
            "overrides"] for prop in o["properties"] if prop["id"] == "custom.fillBelowTo"}
        assert fills == {"champion upper": "champion lower", "canary upper": "canary lower"}


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus"
    assert source["isDefault"] is True
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "driftgate.yaml")
    (provider,) = prov["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"


# ============================================================ PromQL checks
def test_only_exported_metrics_are_queried() -> None:
    allowed = EXPORTED_METRICS | PROMETHEUS_METRICS | set(recording_rules())
    problems = []
    for where, expr in all_exprs():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: selects no metric: {expr}")
        if names - allowed:
            problems.append(f"{where}: unknown metrics {sorted(names - allowed)}")
    assert not problems, "\n".join(problems)


@INTEGRATION
def test_every_promql_expression_parses(tmp_path: Path) -> None:
    exprs = all_exprs()
    assert len(exprs) > 50
    doc = {"groups": [{"name": "every-expression", "rules": [
        {"record": f"check:expr_{i:04d}", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    out = run(tool("promtool"), "check", "rules", path)
    assert f"SUCCESS: {len(exprs)} rules found" in out


# ========================================================== docker compose
def compose() -> dict[str, Any]:
    doc = load_yaml(COMPOSE)
    assert isinstance(doc, dict)
    assert isinstance(doc.get("services"), dict)
    return doc


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, str]]:
    out = []
    for vol in service.get("volumes", []):
        src, dst = vol.split(":")[:2]
        if src.startswith((".", "/")):
            out.append(((ROOT / src).resolve(), dst))
    return out


def _command_option(cmd: list[str], option: str) -> str:
    assert option in cmd, (cmd, option)
    return cmd[cmd.index(option) + 1]


def _flag(cmd: list[str], name: str) -> str | None:
    for arg in cmd:
        if arg.startswith(f"{name}="):
            return str(arg.split("=", 1)[1])
    return None


def _container_ports(service: dict[str, Any]) -> set[int]:
    return {int(str(p).split(":")[-1].split("/")[0]) for p in service.get("ports", [])}


def _healthcheck_port(service: dict[str, Any]) -> int:
    test = " ".join(service["healthcheck"]["test"])
    m = re.search(r"http://(?:127\.0\.0\.1|localhost):(\d+)/", test)
    assert m, test
    return int(m.group(1))


def test_compose_services_and_images() -> None:
    svc = compose()["services"]
    assert {"kafka", "kafka-init", "redis", "driftgate", "traffic", "router", "prometheus",
            "alertmanager", "grafana"} <= set(svc)
    kafka = svc["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    env = kafka["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}  # KRaft
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env
    redis_cmd = svc["redis"]["command"]
    assert _command_option(redis_cmd, "--appendonly") == "yes"
    assert _command_option(redis_cmd, "--appendfsync") == "everysec"
    for name in ("driftgate", "traffic", "router"):
        assert svc[name]["build"] == ".", name
        assert svc[name]["entrypoint"] == ["driftgate"], name
    assert (ROOT / "Dockerfile").is_file()
    assert svc["driftgate"]["command"][0] == "run"
    assert svc["traffic"]["command"][0] == "traffic"
    assert svc["router"]["command"][0] == "router-stub"
    assert svc["kafka-init"]["restart"] == "no"


def test_compose_commands_parse_with_the_cli() -> None:
    """The driftgate, traffic and router commands are valid `driftgate` CLI calls
    (parsed by the CLI's own parser, not run)."""
    import typer

    from monitor.cli import app

    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    for name, service in compose()["services"].items():
        if service.get("entrypoint") != ["driftgate"]:
            continue
        sub_name, *args = service["command"]
        assert sub_name in commands, f"{name}: driftgate has no command {sub_name!r}"
        try:
            commands[sub_name].make_context(sub_name, list(args))
        except Exception as exc:
            message = getattr(exc, "format_message", lambda e=exc: str(e))()
            pytest.fail(f"{name}: driftgate {sub_name} {args}: {message}")


def test_compose_mounts_exist_and_volumes_are_declared() -> None:
    doc = compose()
    declared = set(doc.get("volumes") or {})
    for name, service in doc["services"].items():
        for vol in service.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith((".", "/")):
                assert (ROOT / src).exists(), f"{name}: {src} does not exist"
            else:
                assert src in declared, f"{name}: volume {src} is not declared"
        for secret in service.get("secrets", []):
            assert secret in doc["secrets"], (name, secret)
    for secret in doc["secrets"].values():
        assert (ROOT / secret["file"]).is_file(), secret


def test_compose_dependencies_and_healthchecks() -> None:
    svc = compose()["services"]
    no_healthcheck = {"kafka-init", "traffic"}  # a one-shot job and a pure producer
    for name, service in svc.items():
        if name not in no_healthcheck:
            assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, spec in (service.get("depends_on") or {}).items():
            assert dep in svc, (name, dep)
            cond = spec["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in svc[dep], (name, dep)
            elif cond == "service_completed_successfully":
                assert svc[dep].get("restart") == "no", (name, dep)
            else:
                assert cond == "service_started", (name, dep, cond)
    for name in ("driftgate", "router", "prometheus", "alertmanager", "grafana"):
        assert _healthcheck_port(svc[name]) in _container_ports(svc[name]), name


def _container_to_host(doc: dict[str, Any], service: str, tmp: Path) -> dict[str, Path]:
    """Container path -> host path of one service's mounts (named volumes -> tmp)."""
    svc = doc["services"][service]
    table: dict[str, Path] = {}
    for vol in svc.get("volumes", []):
        src, dst = vol.split(":")[:2]
        table[dst] = (ROOT / src).resolve() if src.startswith((".", "/")) else tmp / src
    for secret in svc.get("secrets", []):
        table[f"/run/secrets/{secret}"] = (ROOT / doc["secrets"][secret]["file"]).resolve()
    return table


def _remap(path: str, table: dict[str, Path]) -> Path:
    for dst in sorted(table, key=len, reverse=True):
        if path == dst or path.startswith(dst.rstrip("/") + "/"):
            return table[dst] / os.path.relpath(path, dst) if path != dst else table[dst]
    raise AssertionError(f"{path} is not mounted into the container")


def _load_mounted_config(raw: dict[str, Any], table: dict[str, Path], tmp: Path,
                         name: str) -> Settings:
    """Load a config whose file paths are container paths, through ``table``."""
    data = json.loads(json.dumps(raw))
    for section, key in sorted(CONFIG_PATH_KEYS):
        value = (data.get(section) or {}).get(key)
        if value is not None:
            host = _remap(value, table)
            if key != "path" or section != "audit":
                assert host.is_file(), f"{section}.{key}: {value} -> {host} is not a file"
            else:
                host.parent.mkdir(parents=True, exist_ok=True)
            data[section][key] = str(host)
    path = tmp / name
    path.write_text(yaml.safe_dump(data))
    return load_settings(path)


@pytest.fixture
def compose_settings(tmp_path: Path) -> Settings:
    doc = compose()
    table = _container_to_host(doc, "driftgate", tmp_path)
    cfg_path = _command_option(doc["services"]["driftgate"]["command"], "--config")
    raw = load_yaml(_remap(cfg_path, table))
    return _load_mounted_config(raw, table, tmp_path, "compose-driftgate.yaml")


def _advertised(kafka_env: dict[str, str]) -> set[str]:
    return {urlsplit(entry).netloc for entry in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")}


def test_compose_names_and_ports_agree(compose_settings: Settings) -> None:
    doc = compose()
    svc = doc["services"]
    s = compose_settings
    # Prometheus scrapes driftgate where it listens
    prom = load_yaml(PROM_CONFIG)
    targets = {t for sc in prom["scrape_configs"] for st in sc["static_configs"]
               for t in st["targets"]}
    targets |= {t for am in prom["alerting"]["alertmanagers"] for st in am["static_configs"]
                for t in st["targets"]}
    for target in targets:
        host, port = target.rsplit(":", 1)
        if host == "localhost":
            continue
        assert host in svc, f"prometheus.yml target {target}: no compose service {host}"
        assert int(port) in _container_ports(svc[host]), target
    assert "driftgate:8080" in targets
    assert s.http.host == "0.0.0.0"
    assert s.http.port == 8080 == _healthcheck_port(svc["driftgate"])
    # Kafka: one bootstrap address everywhere, topics created up front
    assert s.kafka.bootstrap_servers in _advertised(svc["kafka"]["environment"])
    assert _command_option(svc["traffic"]["command"], "--bootstrap") == s.kafka.bootstrap_servers
    router_url = urlsplit(_command_option(svc["traffic"]["command"], "--router-url"))
    assert (router_url.hostname, router_url.port) == (
        "router", int(_command_option(svc["router"]["command"], "--port")))
    init = svc["kafka-init"]["command"][0]
    topics_loop = re.search(r"for topic in ([^;]+);", init)
    assert topics_loop is not None, init
    created = set(topics_loop.group(1).split())
    assert created == {s.kafka.predictions_topic, s.kafka.labels_topic,
                       s.kafka.dead_letter_topic, s.kafka.decisions_topic}
    assert f"--bootstrap-server {s.kafka.bootstrap_servers}" in init
    # webhooks go to the router stub, on its port and its routes
    router_port = int(_command_option(svc["router"]["command"], "--port"))
    assert router_port == _healthcheck_port(svc["router"])
    stub_src = (ROOT / "monitor" / "sandbox" / "router_stub.py").read_text()
    am = load_yaml(AM_CONFIG)
    urls = [m.rollback_url for m in s.models] + [s.alerting.url] + [
        w["url"] for r in am["receivers"] for w in r.get("webhook_configs", [])]
    for url in urls:
        assert url is not None
        parts = urlsplit(url)
        assert parts.hostname == "router", url
        assert parts.port == router_port, url
        assert f'add_post("{parts.path}"' in stub_src, url
    # Grafana reads Prometheus and the mounted provisioning / dashboards
    ds = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    ds_url = urlsplit(ds["datasources"][0]["url"])
    assert ds_url.hostname in svc
    assert ds_url.port in _container_ports(svc[ds_url.hostname])
    mounts = {dst: src for src, dst in _bind_mounts(svc["grafana"])}
    assert mounts["/etc/grafana/provisioning"] == (GRAFANA / "provisioning").resolve()
    prov = load_yaml(GRAFANA / "provisioning" / "dashboards" / "driftgate.yaml")
    assert mounts[prov["providers"][0]["options"]["path"]] == (GRAFANA / "dashboards").resolve()


def test_compose_prometheus_and_alertmanager_read_the_repo_configs(tmp_path: Path) -> None:
    doc = compose()
    for service, config, expected in (("prometheus", "--config.file", PROM_CONFIG),
                                      ("alertmanager", "--config.file", AM_CONFIG)):
        flag = _flag(doc["services"][service]["command"], config)
        assert flag is not None, service
        assert _remap(flag, _container_to_host(doc, service, tmp_path)) == expected.resolve()


# =============================================================== Kubernetes
def kustomize(path: Path) -> list[dict[str, Any]]:
    return load_yaml_all(run(tool("kubectl"), "kustomize", path))


def _kubernetes_validate() -> Any:
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install kubernetes-validate "
                    "(dev extra)")
    return kubernetes_validate


CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "batch/v1", "networking.k8s.io/v1",
               "rbac.authorization.k8s.io/v1", "autoscaling/v2"}

_META = {"type": "object", "required": ["name"],
         "properties": {"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"},
                        "namespace": {"type": "string"}}}
_DURATION = {"type": "string", "pattern": r"^\d+(ms|s|m|h)$"}


def _crd(api: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
            "properties": {"apiVersion": {"const": api}, "kind": {"const": kind},
                           "metadata": _META, "spec": spec}}


# Structural schemas of the CRD kinds (kubernetes-validate has only core
# schemas): the required fields and the types of what these manifests use.
CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): _crd(
        "monitoring.coreos.com/v1", "ServiceMonitor", {
            "type": "object", "required": ["selector", "endpoints"],
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {"type": "object", "required": ["matchLabels"], "properties": {
                    "matchLabels": {"type": "object", "minProperties": 1,
                                    "additionalProperties": {"type": "string"}}}},
                "endpoints": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["port"], "properties": {
                        "port": {"type": "string"}, "path": {"type": "string"},
                        "interval": _DURATION, "scrapeTimeout": _DURATION}}}}}),
    ("argoproj.io/v1alpha1", "AnalysisTemplate"): _crd(
        "argoproj.io/v1alpha1", "AnalysisTemplate", {
            "type": "object", "required": ["metrics"],
            "properties": {
                "args": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string"}, "value": {"type": "string"}}}},
                "metrics": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["name", "provider"],
                    "properties": {
                        "name": {"type": "string"}, "interval": _DURATION,
                        "successCondition": {"type": "string"},
                        "failureCondition": {"type": "string"},
                        "failureLimit": {"type": "integer"},
                        "inconclusiveLimit": {"type": "integer"},
                        "consecutiveErrorLimit": {"type": "integer"},
                        "provider": {"type": "object", "minProperties": 1, "maxProperties": 1,
                                     "properties": {
                            "web": {"type": "object", "required": ["url"], "properties": {
                                "url": {"type": "string"}, "jsonPath": {"type": "string"},
                                "timeoutSeconds": {"type": "integer"}}},
                            "prometheus": {"type": "object", "required": ["address", "query"],
                                           "properties": {"address": {"type": "string"},
                                                          "query": {"type": "string"}}}}}}}}}}),
    ("argoproj.io/v1alpha1", "Rollout"): _crd(
        "argoproj.io/v1alpha1", "Rollout", {
            "type": "object", "required": ["selector", "template", "strategy"],
            "properties": {
                "replicas": {"type": "integer"},
                "selector": {"type": "object", "required": ["matchLabels"]},
                "template": {"type": "object", "required": ["metadata", "spec"]},
                "strategy": {"type": "object", "required": ["canary"], "properties": {
                    "canary": {"type": "object", "required": ["steps"], "properties": {
                        "steps": {"type": "array", "minItems": 1},
                        "analysis": {"type": "object", "required": ["templates"], "properties": {
                            "templates": {"type": "array", "minItems": 1, "items": {
                                "type": "object", "required": ["templateName"]}},
                            "args": {"type": "array", "items": {
                                "type": "object", "required": ["name"]}}}}}}}}}}),
    ("flagger.app/v1beta1", "Canary"): _crd(
        "flagger.app/v1beta1", "Canary", {
            "type": "object", "required": ["targetRef", "service", "analysis"],
            "properties": {
                "targetRef": {"type": "object", "required": ["apiVersion", "kind", "name"]},
                "service": {"type": "object", "required": ["port"],
                            "properties": {"port": {"type": "integer"}}},
                "analysis": {"type": "object", "required": ["interval", "threshold"],
                             "properties": {
                    "interval": _DURATION, "threshold": {"type": "integer"},
                    "maxWeight": {"type": "integer"}, "stepWeight": {"type": "integer"},
                    "metrics": {"type": "array", "items": {
                        "type": "object", "required": ["name"], "properties": {
                            "templateRef": {"type": "object", "required": ["name"]},
                            "templateVariables": {"type": "object",
                                                  "additionalProperties": {"type": "string"}},
                            "thresholdRange": {"type": "object", "minProperties": 1,
                                               "properties": {"min": {"type": "number"},
                                                              "max": {"type": "number"}}},
                            "interval": _DURATION}}},
                    "webhooks": {"type": "array", "items": {
                        "type": "object", "required": ["name", "url"], "properties": {
                            "type": {"enum": ["confirm-rollout", "pre-rollout", "rollout",
                                              "confirm-traffic-increase",
                                              "confirm-promotion", "post-rollout",
                                              "rollback", "event"]},
                            "url": {"type": "string", "pattern": "^https?://"},
                            "timeout": _DURATION,
                            "metadata": {"type": "object",
                                         "additionalProperties": {"type": "string"}}}}}}}}}),
    ("flagger.app/v1beta1", "MetricTemplate"): _crd(
        "flagger.app/v1beta1", "MetricTemplate", {
            "type": "object", "required": ["provider", "query"],
            "properties": {
                "provider": {"type": "object", "required": ["type"], "properties": {
                    "type": {"enum": ["prometheus", "influxdb", "datadog", "stackdriver",
                                      "cloudwatch", "newrelic", "graphite", "dynatrace",
                                      "keptn", "splunk"]},
                    "address": {"type": "string"}}},
                "query": {"type": "string"}}}),
}


def validate_manifest(doc: dict[str, Any], where: str) -> str:
    """Core kinds: kubernetes-validate (strict); CRDs: the schemas above.
    Returns which validator checked the document."""
    import jsonschema

    kv = _kubernetes_validate()
    api, kind = doc["apiVersion"], doc["kind"]
    if api in CORE_GROUPS:
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{where}: {kind} {doc['metadata'].get('name')}: {exc.message} "
                        f"at {list(exc.path)}")
        return "kubernetes-validate"
    schema = CRD_SCHEMAS.get((api, kind))
    assert schema is not None, f"{where}: no schema for {api} {kind}"
    try:
        jsonschema.validate(doc, schema)
    except jsonschema.ValidationError as exc:
        pytest.fail(f"{where}: {kind}: {exc.message} at {list(exc.absolute_path)}")
    if kind == "Rollout":  # its pod template is core: validate it strictly too
        kv.validate({"apiVersion": "v1", "kind": "PodTemplate",
                     "metadata": {"name": doc["metadata"]["name"]},
                     "template": doc["spec"]["template"]}, K8S_VERSION, strict=True)
    return "structural schema"


@INTEGRATION
def test_kubernetes_validate_is_strict() -> None:
    kv = _kubernetes_validate()
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
           "spec": {"ports": [{"port": 8080, "targtPort": 8080}]}}
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, K8S_VERSION, strict=True)


@INTEGRATION
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kustomize_renders_and_validates(path: Path) -> None:
    docs = kustomize(path)
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "ServiceMonitor", "ConfigMap",
            "PodDisruptionBudget"} <= kinds
    assert "Secret" not in kinds, "no Secret is committed: create it out of band"
    checked = {validate_manifest(d, str(path)) for d in docs}
    assert checked == {"kubernetes-validate", "structural schema"}


@INTEGRATION
def test_plain_manifests_validate() -> None:
    seen = {}
    for path in [*sorted((K8S / "examples").glob("*.yaml")), *sorted(ARGO.glob("*.yaml")),
                 *sorted(FLAGGER.glob("*.yaml"))]:
        for doc in load_yaml_all(path.read_text()):
            seen[(doc["kind"], doc["metadata"]["name"])] = validate_manifest(doc, path.name)
    assert {k for k, _ in seen} == {"Secret", "AnalysisTemplate", "Rollout", "Canary",
                                    "MetricTemplate"}


def _by_kind(docs: Iterable[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@INTEGRATION
@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_kubernetes_wiring(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = kustomize(path)
    deploy = _by_kind(docs, "Deployment")
    service = _by_kind(docs, "Service")
    monitor = _by_kind(docs, "ServiceMonitor")
    pdb = _by_kind(docs, "PodDisruptionBudget")
    config_map = _by_kind(docs, "ConfigMap")
    pod = deploy["spec"]["template"]
    spec = pod["spec"]
    (container,) = spec["containers"]
    pod_labels = pod["metadata"]["labels"]

    # non-root, locked down, resources set
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    csc = container["securityContext"]
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["readOnlyRootFilesystem"] is True
    assert csc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]

    # probes on the named port that driftgate listens on
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    http_src = "".join(p.read_text() for p in HTTP_SOURCES)
    for route in ("/healthz", "/readyz", "/metrics", "/v1/verdict"):
        assert f'"{route}"' in http_src, route

    # Service and ServiceMonitor select the pods and the port
    assert service["metadata"]["name"] == "driftgate"
    (sport,) = service["spec"]["ports"]
    assert sport["port"] == 8080
    assert sport["targetPort"] == "http"
    assert sport["name"] == "http"
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert monitor["spec"]["selector"]["matchLabels"].items() <= \
        service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == sport["name"]
    # job label "driftgate", which the alert rules select
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "driftgate"

    # the config: mounted where the args say, and it loads with the secrets
    config_arg = _command_option(container["args"], "--config")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    cfg_mount = mounts[config_arg]
    assert volumes[cfg_mount["name"]]["configMap"]["name"] == config_map["metadata"]["name"]
    raw = yaml.safe_load(config_map["data"][cfg_mount["subPath"]])
    table: dict[str, Path] = {}
    for mount_path, mount in mounts.items():
        vol = volumes[mount["name"]]
        host = tmp_path / mount["name"]
        host.mkdir(exist_ok=True)
        if "secret" in vol:
            assert not vol["secret"].get("optional"), "the secrets are required"
            for item in vol["secret"]["items"]:
                (host / item["path"]).write_text("whsec_c2VjcmV0X2Zvcl90ZXN0cw==\n")
        table[mount_path] = host
    for env in container.get("env", []):
        ref = env.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            assert ref["name"] == "driftgate-secrets"
            monkeypatch.setenv(env["name"], "from-a-secret")
    settings = _load_mounted_config(raw, table, tmp_path, "k8s-driftgate.yaml")
    assert settings.http.port == ports["http"] == 8080
    assert settings.http.host == "0.0.0.0"
    assert settings.kafka.password() == "from-a-secret"
    assert settings.webhooks.secret_values()
    assert settings.admin.token_value()
    # no secret value in the ConfigMap
    assert not re.search(r"whsec_|password:|token:", config_map["data"][cfg_mount["subPath"]])


def test_argo_rollouts_analysis_template() -> None:
    tmpl = load_yaml(ARGO / "analysis-template.yaml")
    metrics = {m["name"]: m for m in tmpl["spec"]["metrics"]}
    web = [m for m in metrics.values() if "web" in m["provider"]]
    assert len(web) == 1
    (verdict,) = web
    url = urlsplit(verdict["provider"]["web"]["url"])
    assert url.hostname == "driftgate.{{args.driftgate-namespace}}.svc"
    assert url.port == 8080
    assert url.path == "/v1/verdict"
    assert url.query == "model={{args.model}}&version={{args.canary-version}}"
    assert verdict["provider"]["web"]["jsonPath"] == "{$.verdict}"
    assert verdict["successCondition"] == 'result == "ok"'
    assert verdict["failureCondition"] == 'result == "rollback"'
    queries = " ".join(m["provider"]["prometheus"]["query"] for m in metrics.values()
                       if "prometheus" in m["provider"])
    assert "driftgate_psi" in queries
    assert "driftgate_kpi_ratio" in queries
    declared = {a["name"] for a in tmpl["spec"]["args"]}
    used = set(re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", json.dumps(tmpl["spec"])))
    assert used <= declared
    rollout = load_yaml(ARGO / "rollout-example.yaml")
    analysis = rollout["spec"]["strategy"]["canary"]["analysis"]
    assert analysis["templates"] == [{"templateName": tmpl["metadata"]["name"]}]
    required = {a["name"] for a in tmpl["spec"]["args"] if "value" not in a}
    assert required <= {a["name"] for a in analysis["args"]}


def test_flagger_canary_and_metric_templates() -> None:
    canary = load_yaml(FLAGGER / "canary.yaml")
    templates = {d["metadata"]["name"]: d for d in
                 load_yaml_all((FLAGGER / "metric-templates.yaml").read_text())}
    (hook,) = [w for w in canary["spec"]["analysis"]["webhooks"] if w["type"] == "rollback"]
    url = urlsplit(hook["url"])
    assert url.hostname is not None
    assert url.hostname.startswith("driftgate.")
    assert url.hostname.endswith(".svc")
    assert url.port == 8080
    assert url.path == "/v1/flagger/rollback"
    assert any('"/v1/flagger/rollback"' in p.read_text() for p in HTTP_SOURCES)
    assert hook["metadata"]["model"] == "card-fraud"
    for metric in canary["spec"]["analysis"]["metrics"]:
        ref = metric["templateRef"]["name"]
        assert ref in templates, ref
        query = templates[ref]["spec"]["query"]
        used = set(re.findall(r"\{\{\s*variables\.(\w+)\s*\}\}", query))
        assert used <= set(metric.get("templateVariables", {})), ref
        assert "driftgate_" in query


def test_no_real_secrets_in_manifests() -> None:
    example = load_yaml(K8S / "examples" / "secret.example.yaml")
    assert all("REPLACE-ME" in v for v in example["stringData"].values())
    for path in K8S.rglob("*.yaml"):
        if path.name != "secret.example.yaml":
            assert "whsec_" not in path.read_text(), path
