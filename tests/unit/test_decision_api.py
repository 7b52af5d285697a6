"""Verdict, Flagger hook and admin API over a real engine and decision layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from monitor.cli import app as cli_app
from monitor.codec import EventCodec, RawRecord
from monitor.config import load_settings
from monitor.decisions import DecisionLayer
from monitor.http import build_app, decision_routes
from monitor.service import Service
from monitor.sources import MemoryDeadLetterSink, ReplaySource
from monitor.traffic import TrafficGenerator
from tests.support import MODEL, fit_reference, write_config

TOKEN = "s3cret-admin-token"  # noqa: S105 - a test token


def _settings(tmp_path: Path) -> Any:
    ref = fit_reference()
    (tmp_path / "reference.json").write_text(ref.to_json())
    cfg = write_config(
        tmp_path / "c.yaml", reference={"path": str(tmp_path / "reference.json")},
        admin={"token": TOKEN}, audit={"path": str(tmp_path / "audit.jsonl"), "fsync": False},
        rules=[{"name": "velocity", "metric": "psi", "feature": "txn_velocity_1h",
                "scope": "canary_vs_champion", "threshold": 0.25, "min_events": 100,
                "severity": "rollback"}])
    return load_settings(cfg), ref


async def _client(tmp_path: Path, broken: bool) -> tuple[TestClient[Any, Any], Service,
                                                          DecisionLayer]:
    settings, ref = _settings(tmp_path)
    events = tmp_path / "empty.jsonl"
    events.write_text("")
    service = Service(settings, ReplaySource(events, "p", "l"), MemoryDeadLetterSink(), ref)
    layer = DecisionLayer(settings, lambda: service.engine)
    gen = TrafficGenerator(seed=4, canary_share=0.3, bug_at=0.0 if broken else None)
    batch = gen.generate(4000, 1_700_000_000.0, 100.0)
    codec = EventCodec(settings)
    recs = [RawRecord("p", 0, i, json.dumps(p).encode())
            for i, p in enumerate(batch.predictions)]
    assert service.engine is not None
    service.engine.process(codec.decode(recs))
    await layer.on_tick(service.engine.evaluate())
    client = TestClient(TestServer(build_app(service, decision_routes(service, layer))))
    await client.start_server()
    return client, service, layer


async def test_verdict_and_flagger_hook_for_broken_and_healthy(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "good").mkdir()
    bad, _, layer = await _client(tmp_path / "bad", True)
    good, _, _ = await _client(tmp_path / "good", False)
    try:
        r = await bad.get("/v1/verdict", params={"model": MODEL})
        doc = await r.json()
        assert r.status == 200
        assert doc["verdict"] == "rollback"
        assert doc["version"] == "v2"
        assert doc["decisions"][0]["rule"] == "velocity"
        assert (await bad.post("/v1/flagger/rollback",
                               json={"name": "x", "metadata": {"model": MODEL}})).status == 200
        g = await (await good.get("/v1/verdict", params={"model": MODEL})).json()
        assert g["verdict"] == "ok"
        assert (await good.post("/v1/flagger/rollback",
                                json={"metadata": {"model": MODEL}})).status == 409
        assert (await bad.get("/v1/verdict", params={"model": "nope"})).status == 404
        assert (await bad.get("/v1/verdict")).status == 400
        assert len(layer.policy.decisions) == 1
    finally:
        await bad.close()
        await good.close()


@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer "])
async def test_admin_without_the_token_is_401_and_changes_nothing(tmp_path: Path,
                                                                  auth: str | None) -> None:
    client, service, layer = await _client(tmp_path, True)
    headers = {"Authorization": auth} if auth is not None else {}
    assert service.engine is not None
    roles_before = dict(service.engine.roles[MODEL])
    audit_before = layer.audit.seq
    try:
        (dec_id,) = layer.policy.decisions
        for method, path, body in (
            ("post", "/v1/admin/roles", {"model": MODEL, "champion": "v2", "canary": "v3"}),
            ("post", f"/v1/admin/decisions/{dec_id}/ack", None),
            ("post", "/v1/admin/reference/reload", None),
        ):
            r = await getattr(client, method)(path, json=body, headers=headers)
            assert r.status == 401, path
        assert service.engine.roles[MODEL] == roles_before
        assert layer.policy.verdict(MODEL, "v2")[0] == "rollback"
        assert layer.audit.seq == audit_before
    finally:
        await client.close()


async def test_admin_with_the_token(tmp_path: Path) -> None:
    client, service, layer = await _client(tmp_path, True)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert service.engine is not None
    try:
        (dec_id,) = layer.policy.decisions
        r = await client.post(f"/v1/admin/decisions/{dec_id}/ack", headers=headers)
        assert r.status == 200
        assert layer.policy.verdict(MODEL, "v2")[0] != "rollback"
        assert (await client.post("/v1/admin/decisions/dec_nope/ack",
                                  headers=headers)).status == 404
        r = await client.post("/v1/admin/roles", headers=headers,
                              json={"model": MODEL, "champion": "v2", "canary": "v3"})
        assert r.status == 200
        assert service.engine.roles[MODEL] == {"champion": "v2", "canary": "v3"}
        bad = await client.post("/v1/admin/roles", headers=headers,
                                json={"model": MODEL, "champion": "v4", "canary": "v4"})
        assert bad.status == 400
        assert "canary must differ" in (await bad.json())["error"]
        r = await client.post("/v1/admin/reference/reload", headers=headers)
        assert r.status == 200
        assert (await r.json())["reference_hash"] == service.engine.reference.content_hash
        kinds = [json.loads(line)["kind"] for line in
                 Path(service.settings.audit.path).read_text().splitlines()]
        assert kinds.count("admin") == 3
    finally:
        await client.close()


def _audit_file(tmp_path: Path) -> Path:
    from rollback.audit import AuditLog

    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, fsync=False)
    for i in range(6):
        log.append("decision", {"decision_id": f"dec_{i}", "value": i / 10})
    return path


@pytest.mark.parametrize("tamper", ["edit", "remove", "reorder", "truncate_field"])
def test_audit_verify_cli_detects_tampering(tmp_path: Path, tamper: str) -> None:
    path = _audit_file(tmp_path)
    runner = CliRunner()
    ok = runner.invoke(cli_app, ["audit", "verify", str(path)])
    assert ok.exit_code == 0
    assert "6 records" in ok.output
    lines = path.read_text().splitlines()
    if tamper == "edit":
        lines[2] = lines[2].replace('"value":0.2', '"value":0.9')
        bad_line = 3
    elif tamper == "remove":
        del lines[3]
        bad_line = 4
    elif tamper == "reorder":
        lines[1], lines[2] = lines[2], lines[1]
        bad_line = 2
    else:
        rec = json.loads(lines[4])
        del rec["decision_id"]
        lines[4] = json.dumps(rec, sort_keys=True, separators=(",", ":"))
        bad_line = 5
    path.write_text("\n".join(lines) + "\n")
    res = runner.invoke(cli_app, ["audit", "verify", str(path)])
    assert res.exit_code == 1
    assert f"line {bad_line}" in res.output


async def test_two_rollback_rules_firing_in_one_tick_send_exactly_one(tmp_path: Path) -> None:
    """Regression: both decisions of one evaluation used to suppress each other."""
    from monitor.router_stub import RouterStub
    from rollback.signing import new_secret

    secret = new_secret()
    router = await RouterStub(secrets=[secret],
                              weights={MODEL: {"v1": 90, "v2": 10}}).start()
    try:
        ref = fit_reference()
        (tmp_path / "reference.json").write_text(ref.to_json())
        rules = [{"name": name, "metric": "psi", "feature": feature,
                  "scope": "canary_vs_champion", "threshold": 0.25, "min_events": 100,
                  "severity": "rollback"}
                 for name, feature in (("velocity", "txn_velocity_1h"),
                                       ("velocity-js", "txn_velocity_1h"))]
        cfg = write_config(
            tmp_path / "c.yaml", reference={"path": str(tmp_path / "reference.json")},
            audit={"path": str(tmp_path / "audit.jsonl"), "fsync": False}, rules=rules,
            models=[{"name": MODEL, "champion": "v1", "canary": "v2",
                     "rollback_url": f"{router.url}/rollback"}],
            webhooks={"secrets": [secret], "max_attempts": 2})
        settings = load_settings(cfg)
        (tmp_path / "none.jsonl").write_text("")
        service = Service(settings, ReplaySource(tmp_path / "none.jsonl", "p", "l"),
                          MemoryDeadLetterSink(), ref)
        layer = DecisionLayer(settings, lambda: service.engine)
        gen = TrafficGenerator(seed=4, canary_share=0.3, bug_at=0.0)
        batch = gen.generate(4000, 1_700_000_000.0, 100.0)
        recs = [RawRecord("p", 0, i, json.dumps(p).encode())
                for i, p in enumerate(batch.predictions)]
        assert service.engine is not None
        service.engine.process(EventCodec(settings).decode(recs))
        outcome = await layer.on_tick(service.engine.evaluate())
        assert outcome is not None
        assert sorted(d.rule for d in outcome.decisions) == ["velocity", "velocity-js"]
        await layer.drain(10)
        assert len(router.received) == 1
        kinds = [json.loads(x)["kind"] for x in (tmp_path / "audit.jsonl").read_text()
                 .splitlines()]
        assert kinds.count("suppressed") == 1
        await layer.aclose()
    finally:
        await router.stop()
