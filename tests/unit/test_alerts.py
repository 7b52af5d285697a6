"""Tests of rollback.alerts: the Alertmanager webhook v4 shape and fingerprints.

The last test (marked ``integration``) starts a real Alertmanager, feeds it the
same alert and compares what it POSTs to a webhook receiver with our payload.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from monitor.sandbox.ports import free_port
from rollback.alerts import ZERO_TIME, AlertSpec, alert_payload, fingerprint, rfc3339

RFC3339_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z$")
TOP_LEVEL: dict[str, type] = {
    "version": str, "groupKey": str, "truncatedAlerts": int, "status": str, "receiver": str,
    "groupLabels": dict, "commonLabels": dict, "commonAnnotations": dict, "externalURL": str,
    "alerts": list,
}
ALERT: dict[str, type] = {
    "status": str, "labels": dict, "annotations": dict, "startsAt": str, "endsAt": str,
    "generatorURL": str, "fingerprint": str,
}
LABELS = {"alertname": "DriftgateRuleFiring", "rule": "canary-score-psi", "model": "card-fraud",
          "version": "v2", "severity": "critical", "action": "rollback"}
ANNOTATIONS = {"summary": "card-fraud v2: canary-score-psi (rollback)",
               "description": "PSI 0.31 > 0.25 for 30 s", "decision_id": "dec_1"}


def check_v4_shape(doc: dict[str, Any]) -> None:
    """Every key of the Alertmanager webhook v4 document, with its JSON type."""
    assert set(doc) == set(TOP_LEVEL)
    for key, kind in TOP_LEVEL.items():
        assert isinstance(doc[key], kind), key
    assert doc["version"] == "4"
    assert doc["status"] in ("firing", "resolved")
    assert doc["truncatedAlerts"] >= 0
    for kv in ("groupLabels", "commonLabels", "commonAnnotations"):
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in doc[kv].items())
    assert doc["alerts"]
    for alert in doc["alerts"]:
        assert set(alert) == set(ALERT)
        for key, kind in ALERT.items():
            assert isinstance(alert[key], kind), key
        assert alert["status"] in ("firing", "resolved")
        assert RFC3339_UTC.match(alert["startsAt"]), alert["startsAt"]
        assert RFC3339_UTC.match(alert["endsAt"]), alert["endsAt"]
        assert re.fullmatch(r"[0-9a-f]{16}", alert["fingerprint"])
        assert "alertname" in alert["labels"]
    json.dumps(doc, allow_nan=False)  # plain JSON


def spec(ends_at: float | None = None, **labels: str) -> AlertSpec:
    return AlertSpec(labels={**LABELS, **labels}, annotations=ANNOTATIONS,
                     starts_at=1_700_000_000.5, ends_at=ends_at,
                     generator_url="http://driftgate:8080/v1/verdict")


# ------------------------------------------------------------------ shape
def test_firing_payload_has_the_v4_shape() -> None:
    doc = alert_payload([spec()], receiver="oncall", external_url="http://driftgate:8080",
                        group_labels={"alertname": "DriftgateRuleFiring", "model": "card-fraud"})
    check_v4_shape(doc)
    assert doc["status"] == "firing"
    assert doc["receiver"] == "oncall"
    assert doc["truncatedAlerts"] == 0
    assert doc["externalURL"] == "http://driftgate:8080"
    assert doc["groupKey"] == '{}:{alertname="DriftgateRuleFiring", model="card-fraud"}'
    assert doc["groupLabels"] == {"alertname": "DriftgateRuleFiring", "model": "card-fraud"}
    (alert,) = doc["alerts"]
    assert alert["status"] == "firing"
    assert alert["startsAt"] == "2023-11-14T22:13:20.5Z"
    assert alert["endsAt"] == ZERO_TIME == "0001-01-01T00:00:00Z"
    assert alert["labels"] == LABELS
    assert alert["annotations"] == ANNOTATIONS
    assert alert["generatorURL"] == "http://driftgate:8080/v1/verdict"


def test_resolved_payload_and_same_fingerprint() -> None:
    firing = alert_payload([spec()])
    resolved = alert_payload([spec(ends_at=1_700_000_600.0)])
    check_v4_shape(resolved)
    assert resolved["status"] == "resolved"
    assert resolved["alerts"][0]["status"] == "resolved"
    assert resolved["alerts"][0]["endsAt"] == "2023-11-14T22:23:20Z"
    assert firing["alerts"][0]["fingerprint"] == resolved["alerts"][0]["fingerprint"]
    assert firing["groupKey"] == resolved["groupKey"]


def test_fingerprint_depends_on_labels_only() -> None:
    a = AlertSpec({"alertname": "A", "x": "1"}, {"summary": "one"}, 1.0, None)
    b = AlertSpec({"x": "1", "alertname": "A"}, {"summary": "two"}, 99.0, 100.0,
                  generator_url="http://elsewhere")
    c = AlertSpec({"alertname": "A", "x": "2"}, {"summary": "one"}, 1.0, None)
    fa, fb, fc = (alert_payload([s])["alerts"][0]["fingerprint"] for s in (a, b, c))
    assert fa == fb != fc


def test_fingerprint_matches_prometheus_common_test_vectors() -> None:
    # prometheus/common model/signature_test.go (labelSetToFingerprint)
    assert int(fingerprint({}), 16) == 14695981039346656037
    assert int(fingerprint({"name": "garland, briggs", "fear": "love is not enough"}),
               16) == 5799056148416392346
    assert int(fingerprint({"first-label": "first-label-value"}), 16) == 5146282821936882169
    assert int(fingerprint({"first-label": "first-label-value",
                            "second-label": "second-label-value"}), 16) == 3195800080984914717
    assert int(fingerprint({"first-label": "first-label-value",
                            "second-label": "second-label-value",
                            "third-label": "third-label-value"}), 16) == 13843036195897128121


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=8), max_size=6))
def test_fingerprint_is_stable_and_order_independent(labels: dict[str, str]) -> None:
    fp = fingerprint(labels)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(dict(reversed(list(labels.items())))) == fp


def test_status_is_firing_when_any_alert_fires() -> None:
    doc = alert_payload([spec(ends_at=1_700_000_100.0, version="v2"), spec(version="v3")])
    assert doc["status"] == "firing"
    assert [a["status"] for a in doc["alerts"]] == ["resolved", "firing"]
    doc = alert_payload([spec(ends_at=1_700_000_100.0, version="v2"),
                         spec(ends_at=1_700_000_200.0, version="v3")])
    assert doc["status"] == "resolved"


# ------------------------------------------------------- common labels
def test_common_labels_and_annotations() -> None:
    a = AlertSpec({"alertname": "X", "model": "m", "version": "v2", "team": "fraud"},
                  {"summary": "s", "runbook_url": "r1"}, 0.0, None)
    b = AlertSpec({"alertname": "X", "model": "m", "version": "v3"},
                  {"summary": "s", "runbook_url": "r2"}, 0.0, None)
    c = AlertSpec({"alertname": "X", "model": "m", "version": "v3", "team": "fraud"},
                  {"summary": "s"}, 0.0, None)
    doc = alert_payload([a, b, c])
    check_v4_shape(doc)
    assert doc["commonLabels"] == {"alertname": "X", "model": "m"}
    assert doc["commonAnnotations"] == {"summary": "s"}
    assert alert_payload([a])["commonLabels"] == dict(a.labels)
    assert alert_payload([a])["commonAnnotations"] == dict(a.annotations)


def test_default_group_labels() -> None:
    x1 = AlertSpec({"alertname": "X", "v": "1"}, {}, 0.0, None)
    x2 = AlertSpec({"alertname": "X", "v": "2"}, {}, 0.0, None)
    y = AlertSpec({"alertname": "Y"}, {}, 0.0, None)
    assert alert_payload([x1, x2])["groupLabels"] == {"alertname": "X"}
    mixed = alert_payload([x1, y])
    assert mixed["groupLabels"] == {}
    assert mixed["groupKey"] == "{}:{}"
    assert mixed["commonLabels"] == {}


def test_group_key_quotes_values() -> None:
    doc = alert_payload([AlertSpec({"alertname": 'say "hi"'}, {}, 0.0, None)])
    assert doc["groupKey"] == '{}:{alertname="say \\"hi\\""}'


# --------------------------------------------------------------- times
@pytest.mark.parametrize(("ts", "text"), [
    (0, "1970-01-01T00:00:00Z"),
    (1_700_000_000, "2023-11-14T22:13:20Z"),
    (1_700_000_000.123, "2023-11-14T22:13:20.123Z"),
    (1_700_000_000.000001, "2023-11-14T22:13:20.000001Z"),
])
def test_rfc3339(ts: float, text: str) -> None:
    assert rfc3339(ts) == text


# ---------------------------------------------------------- validation
@pytest.mark.parametrize(("kwargs", "match"), [
    ({"labels": {"model": "m"}}, "alertname"),
    ({"labels": {"alertname": ""}}, "alertname"),
    ({"labels": {"alertname": "X", "n": 1}}, r"labels\['n'\]"),
    ({"annotations": {"s": None}}, r"annotations\['s'\]"),
    ({"starts_at": float("nan")}, "nan"),
    ({"starts_at": 10.0, "ends_at": 5.0}, "ends_at"),
    ({"ends_at": float("inf")}, "inf"),
    ({"generator_url": None}, "generator_url"),
])
def test_alert_spec_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"labels": {"alertname": "X"}, "annotations": {}, "starts_at": 1.0,
                            "ends_at": None}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        AlertSpec(**args)


def test_alert_payload_validation() -> None:
    a = AlertSpec({"alertname": "X"}, {}, 0.0, None)
    with pytest.raises(ValueError, match="non-empty sequence"):
        alert_payload([])
    with pytest.raises(ValueError, match="non-empty sequence"):
        alert_payload(a)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"alerts\[1\]"):
        alert_payload([a, {"labels": {}}])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="receiver"):
        alert_payload([a], receiver="")
    with pytest.raises(ValueError, match="group_labels"):
        alert_payload([a], group_labels={"alertname": 3})  # type: ignore[dict-item]


# ------------------------------------------------- against Alertmanager
AM_BINARY = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


@pytest.mark.integration
async def test_payload_matches_what_alertmanager_sends(tmp_path: Path) -> None:
    # make test installs prometheus-alertmanager: missing is a failure, not a skip
    assert AM_BINARY is not None, "prometheus-alertmanager is not installed"
    received: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def hook(request: web.Request) -> web.Response:
        await received.put(await request.json())
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/alerts", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()

    am_port = free_port()
    external = f"http://127.0.0.1:{am_port}"
    config = tmp_path / "alertmanager.yml"
    config.write_text(
        "route:\n  receiver: oncall\n  group_by: [alertname, model]\n  group_wait: 0s\n"
        "  group_interval: 1s\n  repeat_interval: 1h\n"
        "receivers:\n  - name: oncall\n    webhook_configs:\n"
        f"      - url: http://127.0.0.1:{hook_port}/alerts\n        send_resolved: true\n")
    assert AM_BINARY is not None
    with (tmp_path / "am.log").open("wb") as am_log:
        proc = await asyncio.create_subprocess_exec(
            AM_BINARY, f"--config.file={config}", f"--storage.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}", f"--web.external-url={external}",
            "--cluster.listen-address=", stdout=asyncio.subprocess.DEVNULL, stderr=am_log)
    try:
        async with httpx.AsyncClient(base_url=external, timeout=2.0) as client:
            async with asyncio.timeout(20):
                while True:
                    try:
                        if (await client.get("/-/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.returncode is None, (tmp_path / "am.log").read_text()
                    await asyncio.sleep(0.1)
            starts_at = float(int(time.time()) - 60)
            ours = AlertSpec(labels=LABELS, annotations=ANNOTATIONS, starts_at=starts_at,
                             ends_at=None, generator_url="http://driftgate:8080/v1/verdict")
            alert = {"labels": LABELS, "annotations": ANNOTATIONS,
                     "startsAt": rfc3339(starts_at), "generatorURL": ours.generator_url}
            (await client.post("/api/v2/alerts", json=[alert])).raise_for_status()
            async with asyncio.timeout(20):
                theirs = await received.get()
            expected = alert_payload([ours], receiver="oncall", external_url=external,
                                     group_labels={"alertname": LABELS["alertname"],
                                                   "model": LABELS["model"]})
            check_v4_shape(theirs)
            assert theirs == expected

            ends_at = float(int(time.time()) - 1)
            (await client.post("/api/v2/alerts",
                               json=[{**alert, "endsAt": rfc3339(ends_at)}])).raise_for_status()
            async with asyncio.timeout(20):
                while (theirs := await received.get())["status"] != "resolved":
                    pass
            resolved = alert_payload([AlertSpec(LABELS, ANNOTATIONS, starts_at, ends_at,
                                                ours.generator_url)],
                                     receiver="oncall", external_url=external,
                                     group_labels={"alertname": LABELS["alertname"],
                                                   "model": LABELS["model"]})
            assert theirs == resolved
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await asyncio.wait_for(proc.wait(), 10)
        await runner.cleanup()
