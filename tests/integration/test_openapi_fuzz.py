"""Fuzz every HTTP route from the served OpenAPI document (schemathesis).

A real service (engine with a fitted reference and a broken canary, decision
layer with a firing rollback rule, admin token) serves its aiohttp app on a
loopback port from a background thread. The schema is loaded from its own
``/openapi.json``; schemathesis generates valid and invalid requests for every
operation (examples, coverage and fuzzing phases; positive and negative data)
and checks each response: no 5xx, a documented status code, a documented
content type and a body conforming to the documented schema. Requests carry
the admin token (``ignored_auth`` separately checks that the admin routes
refuse requests without it).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import httpx
import pytest
from aiohttp import web

from monitor.config import load_settings
from monitor.core.decisions import DecisionLayer
from monitor.core.service import Service
from monitor.sandbox.ports import free_port
from monitor.serve.http import build_app, decision_routes
from tests.support import fit_reference, in_process_service, write_config

pytestmark = pytest.mark.integration

ST = str(Path(sys.executable).parent / "st")
TOKEN = "fuzz-admin-token"  # noqa: S105 - a test token
# every operation, at most this many generated cases per phase and mode: the
# whole module stays well under a minute (the one real report render included)
MAX_EXAMPLES = 100


def _service(tmp_path: Path) -> tuple[Service, DecisionLayer]:
    ref = fit_reference()
    (tmp_path / "reference.json").write_text(ref.to_json())
    cfg = write_config(
        tmp_path / "c.yaml", reference={"path": str(tmp_path / "reference.json")},
        admin={"token": TOKEN}, audit={"path": str(tmp_path / "audit.jsonl"), "fsync": False},
        evaluation={"report_sample_size": 2000},
        rules=[{"name": "velocity", "metric": "psi", "feature": "txn_velocity_1h",
                "scope": "canary_vs_champion", "threshold": 0.25, "min_events": 100,
                "severity": "rollback"}])
    settings = load_settings(cfg)
    service, layer = in_process_service(tmp_path, settings, ref, 6000, chunk=6000)
    assert service.engine is not None
    asyncio.run(layer.on_tick(service.engine.evaluate()))
    return service, layer


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    service, layer = _service(tmp_path_factory.mktemp("fuzz"))
    port = free_port()
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, Any] = {}

    async def serve() -> None:
        runner = web.AppRunner(build_app(service, decision_routes(service, layer)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        box["runner"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(30)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(box["runner"].cleanup(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


ROUTES = {"/metrics", "/healthz", "/readyz", "/v1/status", "/v1/verdict",
          "/v1/flagger/rollback", "/v1/admin/roles", "/v1/admin/decisions/{decision_id}/ack",
          "/v1/admin/reference/reload", "/v1/reports/{model}/{version}", "/openapi.json"}
ADMIN = ("/v1/admin/roles", "/v1/admin/decisions/{decision_id}/ack",
         "/v1/admin/reference/reload")

# Per-operation configuration. The service under test has no Kafka source
# running, so it is (rightly) not ready: /readyz documents 503 for that, and any
# other 5xx there is still a failure. /v1/reports needs no token by default
# (http.reports_require_token: false), so ignored_auth does not apply to it.
CONFIG = """
[[operations]]
include-path = "/readyz"
checks.not_a_server_error.expected-statuses = ["2xx", "3xx", "4xx", "503"]

[[operations]]
include-path-regex = "^/v1/reports/"
checks.ignored_auth.enabled = false
"""
CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,"
          "response_schema_conformance,ignored_auth")


def test_the_document_covers_every_route(base_url: str) -> None:
    resp = httpx.get(f"{base_url}/openapi.json", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("application/json")
    doc = resp.json()
    assert doc["openapi"].startswith("3.1")
    assert set(doc["paths"]) == ROUTES
    for path in ADMIN:
        (op,) = doc["paths"][path].values()
        assert op["security"] == [{"adminToken": []}], path
        assert "401" in op["responses"], path


def test_every_route_conforms_and_never_answers_5xx(base_url: str, tmp_path: Path) -> None:
    # schemathesis' own pytest plugin (schemathesis.pytest.from_fixture) fails on
    # pytest 9 (it reads request.node._nodeid), so its CLI runs the suite: every
    # operation, every phase (examples, coverage, fuzzing, stateful), valid and
    # invalid data, with the admin token (ignored_auth checks it is needed)
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    proc = subprocess.run(
        [ST, "--config-file", str(tmp_path / "schemathesis.toml"), "--no-color", "run",
         f"{base_url}/openapi.json", "--checks", CHECKS, "--max-examples", str(MAX_EXAMPLES),
         "--seed", "12", "--generation-database", "none",
         # one worker: with several, hypothesis' lambda descriptions call
         # ast.parse from threads at once, which CPython 3.11 can fail with
         # "SystemError: AST constructor recursion depth mismatch"
         "--workers", "1",
         "--header", f"Authorization: Bearer {TOKEN}", "--request-timeout", "60",
         "--output-sanitize", "false", "--report", "junit",
         "--report-junit-path", str(tmp_path / "junit.xml")],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-20_000:]
    report = ElementTree.parse(tmp_path / "junit.xml")  # noqa: S314 - written just now
    tested = {case.get("name", "").split(" ", 1)[-1] for case in report.iter("testcase")}
    # every operation ran; schemathesis leaves out the document's own address,
    # which test_the_document_covers_every_route fetches and checks
    assert tested == ROUTES - {"/openapi.json"}, out[-5000:]
