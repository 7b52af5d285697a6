"""Verdict, Flagger hook and admin API over a real engine and decision layer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from typer.testing import CliRunner

from monitor.cli import app as cli_app
from monitor.config import load_settings
from monitor.core.decisions import DecisionLayer
from monitor.core.service import Service
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.ingest.replay import ReplaySource
from monitor.ingest.sources import MemoryDeadLetterSink
from monitor.sandbox.traffic import TrafficGenerator
from monitor.serve.http import build_app, decision_routes
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
        # only the (rate-limited) sample of failed authentications is audited
        records = [json.loads(line) for line in
                   Path(service.settings.audit.path).read_text().splitlines()]
        new = records[audit_before:]
        assert [r["kind"] for r in new] == ["auth_failure"] * 3
        assert {r["route"] for r in new} == {
            "/v1/admin/roles", "/v1/admin/decisions/{decision_id}/ack",
            "/v1/admin/reference/reload"}
        assert TOKEN not in "".join(json.dumps(r) for r in new)
        assert layer.auth_failures["/v1/admin/roles"] == 1
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
        assert (await bad.json())["error"] == "bad_roles"
        assert "canary must differ" in (await bad.json())["detail"]
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
    from monitor.sandbox.router_stub import RouterStub
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


# ---------------------------------------------------------------------------
# fail-safe verdicts, hostile input, token rotation (issue 12)
# ---------------------------------------------------------------------------


async def _raw(client: TestClient[Any, Any], request: bytes) -> tuple[int, dict[str, Any]]:
    """Send raw bytes (headers the aiohttp client will not write); status and JSON."""
    import asyncio

    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        doc = json.loads(body) if body else {}
    except ValueError:
        doc = {"raw": body.decode("latin-1")}
    return status, doc


async def test_verdicts_never_fail_open(tmp_path: Path) -> None:
    client, _service, layer = await _client(tmp_path, False)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        # unknown model / a version that is neither champion nor canary: 404, never ok
        for params, code in (({"model": "nope"}, "unknown_model"),
                             ({"model": MODEL, "version": "v2-typo"}, "unknown_version")):
            r = await client.get("/v1/verdict", params=params)
            assert r.status == 404
            doc = await r.json()
            assert doc["error"] == code
            assert doc["detail"]
            # Flagger rolls back on 2xx only: an unknown target is rolled back
            f = await client.post("/v1/flagger/rollback", json={"metadata": params})
            assert f.status == 200
            fd = await f.json()
            assert fd["verdict"] == "rollback"
            assert fd["unmonitored"] is True
            assert fd["error"] == code
        # no model at all: not monitored either
        assert (await client.post("/v1/flagger/rollback", json={"name": "x"})).status == 200
        # a configured canary without data yet: inconclusive, and Flagger waits (409)
        r = await client.post("/v1/admin/roles", headers=headers,
                              json={"model": MODEL, "champion": "v1", "canary": "v3"})
        assert r.status == 200
        doc = await (await client.get("/v1/verdict", params={"model": MODEL})).json()
        assert doc["version"] == "v3"
        assert doc["verdict"] == "inconclusive"
        assert "no accepted events" in doc["reason"]
        assert (await client.post("/v1/flagger/rollback",
                                  json={"metadata": {"model": MODEL}})).status == 409
        # its events being refused: alert, unmonitored, and Flagger rolls back
        layer.note_refused(MODEL, "v3", "too_many_versions")
        layer.note_refused(MODEL, "junk-1", "too_many_versions")  # not a role: not kept
        assert list(layer.refused) == [(MODEL, "v3")]
        doc = await (await client.get("/v1/verdict", params={"model": MODEL})).json()
        assert doc["verdict"] == "alert"
        assert doc["unmonitored"] is True
        assert doc["refused"] == {"too_many_versions": 1}
        assert "too_many_versions" in doc["reason"]
        f = await client.post("/v1/flagger/rollback", json={"metadata": {"model": MODEL}})
        assert f.status == 200
        # the champion, with data and rules that have enough of it, stays ok
        ok = await (await client.get("/v1/verdict", params={"model": MODEL,
                                                            "version": "v1"})).json()
        assert ok["verdict"] in ("ok", "inconclusive")
        assert ok["unmonitored"] is False
    finally:
        await client.close()


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), [
    ("get", "/v1/verdict", {"params": [("model", MODEL), ("model", "x")]}, 400, "bad_query"),
    ("get", "/v1/verdict", {"params": {"model": ""}}, 400, "bad_field"),
    ("get", "/v1/verdict", {"params": {"model": "x" * 500}}, 400, "bad_field"),
    ("get", "/v1/verdict", {"params": {"model": MODEL, "version": "a\x00b"}}, 400,
     "bad_field"),
    ("get", "/v1/verdict", {}, 400, "missing_query"),
    ("post", "/v1/flagger/rollback", {"data": b"{oops"}, 400, "bad_json"),
    ("post", "/v1/flagger/rollback", {"data": b"[" * 200_000 + b"]" * 200_000}, 400,
     "too_deep"),
    ("post", "/v1/flagger/rollback", {"data": b'{"a": 1}', "headers": {
        "Content-Type": "application/json; charset=klingon"}}, 415, "unsupported_charset"),
    ("post", "/v1/flagger/rollback", {"data": b'{"a": 1}', "headers": {
        "Content-Type": "application/json; charset=latin-1"}}, 415, "unsupported_charset"),
    ("post", "/v1/flagger/rollback", {"data": b'{"metadata": "\xff"}'}, 400, "bad_encoding"),
    ("post", "/v1/flagger/rollback", {"json": {"metadata": "card-fraud"}}, 400,
     "bad_metadata"),
    ("post", "/v1/flagger/rollback", {"json": {"metadata": [1]}}, 400, "bad_metadata"),
    ("post", "/v1/flagger/rollback", {"json": [1, 2]}, 400, "bad_body"),
    ("post", "/v1/flagger/rollback", {"json": {"metadata": {"model": [MODEL]}}}, 400,
     "bad_field"),
    ("post", "/v1/flagger/rollback", {"json": {"metadata": {"model": {"a": 1}}}}, 400,
     "bad_field"),
    ("post", "/v1/flagger/rollback", {"json": {"metadata": {"model": MODEL,
                                                            "version": 3}}}, 400, "bad_field"),
    ("post", "/v1/flagger/rollback", {"data": b"x" * (2 << 20)}, 413, "payload_too_large"),
    ("post", "/v1/flagger/rollback", {"data": b"{}", "headers": {
        "Content-Encoding": "br"}}, 415, "unsupported_content_encoding"),
    ("post", "/v1/flagger/rollback", {"data": b"not gzip", "headers": {
        "Content-Encoding": "gzip"}}, 400, "bad_compressed_body"),
    ("post", "/v1/admin/roles", {"json": {"model": [MODEL], "champion": "v1"},
                                 "headers": {"Authorization": f"Bearer {TOKEN}"}}, 400,
     "bad_field"),
    ("post", "/v1/admin/roles", {"json": {"model": MODEL, "champion": {"v": 1}},
                                 "headers": {"Authorization": f"Bearer {TOKEN}"}}, 400,
     "bad_field"),
    ("post", "/v1/admin/roles", {"json": {"model": "nope", "champion": "v1"},
                                 "headers": {"Authorization": f"Bearer {TOKEN}"}}, 404,
     "unknown_model"),
    ("post", "/v1/admin/roles", {"data": b"",
                                 "headers": {"Authorization": f"Bearer {TOKEN}"}}, 400,
     "missing_body"),
    ("get", "/v1/nope", {}, 404, "not_found"),
    ("delete", "/v1/verdict", {}, 405, "method_not_allowed"),
])
async def test_bad_requests_get_a_json_4xx_and_one_warning_line(
        tmp_path: Path, method: str, path: str, kwargs: dict[str, Any], status: int,
        code: str) -> None:
    from structlog.testing import capture_logs

    client, _, _ = await _client(tmp_path, False)
    try:
        with capture_logs() as logs:
            r = await client.request(method.upper(), path, **kwargs)
            doc = await r.json()
        assert r.status == status, doc
        assert doc["error"] == code
        assert isinstance(doc["detail"], str)
        assert doc["detail"]
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert len(warnings) == 1
        assert warnings[0]["status"] == status
        assert not [e for e in logs if e["log_level"] in ("error", "critical")]
        assert not any("exc_info" in e or "traceback" in e for e in logs)
    finally:
        await client.close()


async def test_gzip_bomb_is_refused_without_inflating_it(tmp_path: Path) -> None:
    import gzip
    import time

    client, _, _ = await _client(tmp_path, False)
    bomb = gzip.compress(b"\0" * (200 << 20), 9)  # ~200 KB that inflates to 200 MiB
    small = gzip.compress(json.dumps({"metadata": {"model": MODEL}}).encode())
    try:
        t0 = time.perf_counter()
        r = await client.post("/v1/flagger/rollback", data=bomb,
                              headers={"Content-Encoding": "gzip"})
        took = time.perf_counter() - t0
        assert r.status == 413
        assert (await r.json())["error"] == "payload_too_large"
        assert took < 0.5, took
        # a small gzip body is inflated and read
        r = await client.post("/v1/flagger/rollback", data=small,
                              headers={"Content-Encoding": "gzip"})
        assert r.status in (200, 409)
        assert (await r.json())["model"] == MODEL
    finally:
        await client.close()


async def test_credentials_never_reach_the_log(tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    from structlog.testing import capture_logs

    client, _, layer = await _client(tmp_path, False)
    host = f"Host: {client.server.host}\r\n".encode()
    try:
        with capture_logs() as logs:
            # a header aiohttp's parser rejects, the admin token in it
            status, _ = await _raw(client, b"POST /v1/admin/roles HTTP/1.1\r\n" + host
                                   + f"Authorization: Bearer {TOKEN}\x01\r\n".encode()
                                   + b"Content-Length: 0\r\n\r\n")
            assert status == 400
            # a non-UTF-8 Authorization header: 401, counted, no 500
            status, doc = await _raw(client, b"POST /v1/admin/roles HTTP/1.1\r\n" + host
                                     + b"Authorization: Bearer \xff\xfe" + TOKEN.encode()
                                     + b"\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
                                       b"{}")
            assert status == 401
            assert doc["error"] == "unauthorized"
            # a wrong token
            r = await client.post("/v1/admin/roles", json={},
                                  headers={"Authorization": f"Bearer {TOKEN}x"})
            assert r.status == 401
        text = json.dumps(logs, default=str) + caplog.text
        assert TOKEN not in text
        assert "[REDACTED]" in text
        assert any(e["event"] == "http request refused by the parser"
                   and e["log_level"] == "warning" for e in logs)
        assert not any("traceback" in e for e in logs)
        assert layer.auth_failures["/v1/admin/roles"] == 2
        fams = {m.name: m for m in layer.metrics()}
        samples = {s.labels["route"]: s.value
                   for s in fams["driftgate_http_auth_failures"].samples
                   if s.name.endswith("_total")}
        assert samples["/v1/admin/roles"] == 2
        assert samples["/v1/admin/reference/reload"] == 0
    finally:
        await client.close()


async def test_auth_failures_are_sampled_into_the_audit_log(tmp_path: Path) -> None:
    client, service, layer = await _client(tmp_path, False)
    now = [1_800_000_000.0]
    layer.clock = lambda: now[0]
    try:
        for _ in range(5):
            r = await client.post("/v1/admin/reference/reload",
                                  headers={"Authorization": "Bearer nope"})
            assert r.status == 401
        now[0] += 61
        assert (await client.post("/v1/admin/reference/reload")).status == 401

        def audited() -> list[dict[str, Any]]:
            return [json.loads(x) for x in Path(service.settings.audit.path).read_text()
                    .splitlines() if json.loads(x)["kind"] == "auth_failure"]

        recs = audited()
        assert [r["count"] for r in recs] == [1, 5]
        assert recs[1]["reasons"] == {"wrong_token": 4, "missing": 1}
        r = await client.post("/v1/admin/reference/reload")
        await layer.aclose()  # what is pending is flushed on shutdown
        assert [r["count"] for r in audited()] == [1, 5, 1]
    finally:
        await client.close()


def test_admin_tokens_rotate_without_restart(tmp_path: Path) -> None:
    from monitor.config import AdminSettings
    from monitor.serve.http import AdminTokens

    path = tmp_path / "token"
    path.write_text("old-token\n")
    now = [0.0]
    tokens = AdminTokens(AdminSettings(token_file=path), clock=lambda: now[0])
    assert tokens.check(b"old-token")
    assert not tokens.check(b"new-token")
    path.write_text("old-token\nnew-token\n# a comment\n\n")
    assert not tokens.check(b"new-token")  # looked at no more than once a second
    now[0] += 1.0
    assert tokens.check(b"new-token")
    assert tokens.check(b"old-token")
    assert not tokens.check(b"# a comment")
    path.write_text("new-token\n")
    now[0] += 1.0
    assert tokens.check(b"new-token")
    assert not tokens.check(b"old-token")
    assert tokens.reloads == 2
    path.unlink()  # fails closed
    now[0] += 1.0
    assert not tokens.check(b"new-token")
    path.write_text("back\n")
    now[0] += 1.0
    assert tokens.check(b"back")


async def test_admin_token_file_rotation_over_http(tmp_path: Path) -> None:
    import asyncio

    settings, ref = _settings(tmp_path)
    token_file = tmp_path / "admin-token"
    token_file.write_text("first-token\n")
    settings = settings.model_copy(update={"admin": settings.admin.model_copy(
        update={"token": None, "token_file": token_file})})
    (tmp_path / "none.jsonl").write_text("")
    service = Service(settings, ReplaySource(tmp_path / "none.jsonl", "p", "l"),
                      MemoryDeadLetterSink(), ref)
    layer = DecisionLayer(settings, lambda: service.engine)
    client = TestClient(TestServer(build_app(service, decision_routes(service, layer))))
    await client.start_server()

    async def status(token: str) -> int:
        r = await client.post("/v1/admin/decisions/dec_x/ack",
                              headers={"Authorization": f"Bearer {token}"})
        return r.status

    try:
        assert await status("first-token") == 404  # authorized; no such decision
        token_file.write_text("first-token\nsecond-token\n")
        await asyncio.sleep(1.05)
        assert await status("second-token") == 404
        assert await status("first-token") == 404
        token_file.write_text("second-token\n")
        await asyncio.sleep(1.05)
        assert await status("first-token") == 401
        assert await status("second-token") == 404
    finally:
        await client.close()
        await layer.aclose()
