"""The routes that need the admin bearer token, and the token itself.

What lives here: :class:`AdminTokens` (the accepted tokens: ``admin.token``
and the lines of ``admin.token_file``, re-read when the file changes, so a
token is rotated without a restart) and :class:`AdminApi`: the bearer-token
check (401 naming what is wrong, each failure counted by the decision layer)
and the routes ``POST /v1/admin/roles``, ``POST
/v1/admin/decisions/{decision_id}/ack``, ``POST /v1/admin/reference/reload``
and ``GET /v1/reports/{model}/{version}`` (token only with
``http.reports_require_token``).

May import: aiohttp, structlog, the standard library, :mod:`monitor.config`,
:mod:`monitor.core` and the other modules of :mod:`monitor.serve` below
:mod:`monitor.serve.http` (:mod:`.api`, :mod:`.reports`, :mod:`.reference_io`).
"""

from __future__ import annotations

import hmac
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web

from monitor.config import AdminSettings
from monitor.core.service import Service
from monitor.serve.api import (
    AUTH_FAILURE_KEY,
    ApiError,
    check_name,
    error_response,
    need_name,
    read_json,
)

__all__ = ["ADMIN_PATHS", "AdminApi", "AdminTokens"]

#: the routes that always need the admin token (their failures are counted)
ADMIN_PATHS = ("/v1/admin/roles", "/v1/admin/decisions/{decision_id}/ack",
               "/v1/admin/reference/reload")

log = structlog.get_logger("driftgate.http")


class AdminTokens:
    """The admin bearer tokens: ``admin.token`` and/or the lines of
    ``admin.token_file``, re-read when the file changes (its mtime, size or inode,
    looked at no more than once a second), so a token is rotated without a
    restart by writing old and new tokens, then only the new one."""

    def __init__(self, admin: AdminSettings, clock: Callable[[], float] = time.monotonic,
                 check_every_s: float = 1.0) -> None:
        self._fixed = [admin.token.get_secret_value().encode()] if admin.token else []
        self._path = admin.token_file
        self._clock = clock
        self._every = check_every_s
        self._checked = -math.inf
        self._key: tuple[int, int, int] | None = None
        self._from_file: list[bytes] = []
        self.reloads = 0

    def current(self) -> list[bytes]:
        if self._path is not None:
            now = self._clock()
            if now - self._checked >= self._every:
                self._checked = now
                self._refresh(self._path)
        return self._fixed + self._from_file

    def _refresh(self, path: Path) -> None:
        try:
            st = os.stat(path)
            key = (st.st_mtime_ns, st.st_size, st.st_ino)
            if key == self._key:
                return
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            if self._key != (0, 0, 0):  # say it once
                log.warning("admin token file unreadable: no token from it is accepted",
                            path=str(path), error=exc.strerror or type(exc).__name__)
            self._key, self._from_file = (0, 0, 0), []
            return
        tokens = [t.strip() for t in lines]
        self._from_file = [t for t in tokens if t and not t.startswith(b"#")]
        first = self._key is None
        self._key = key
        self.reloads += 0 if first else 1
        if not first:
            log.info("admin tokens reloaded", path=str(path), tokens=len(self._from_file))

    def secrets(self) -> list[str]:
        return [t.decode("utf-8", "replace") for t in self.current()]

    def check(self, presented: bytes) -> bool:
        """Constant time over every accepted token (no early exit)."""
        ok = False
        for token in self.current():
            ok |= hmac.compare_digest(presented, token)
        return ok


class AdminApi:
    """The admin routes and the report route of one service and decision layer.

    ``tokens`` are the accepted bearer tokens; the report renderer (a worker
    process, :class:`monitor.serve.reports.ReportRenderer`) is closed with the
    app.
    """

    def __init__(self, service: Service, layer: Any, tokens: AdminTokens) -> None:
        # imported here, not at the top: pandas (reference I/O) loads with the
        # decision routes, not with every importer of monitor.serve.http
        from monitor.serve.reference_io import load_reference
        from monitor.serve.reports import ReportRenderer

        self.service = service
        self.layer = layer
        self.tokens = tokens
        self._load_reference = load_reference
        self.renderer = ReportRenderer()

    def authorized(self, request: web.Request) -> bool:
        """Whether ``request`` carries an accepted bearer token; a failure is
        counted (per route and reason) and its reason kept for :meth:`unauthorized`."""
        route = request.match_info.route.resource
        name = route.canonical if route is not None else request.path
        header = request.headers.get("Authorization")
        reason = None
        if header is None:
            reason = "missing"
        elif not header.startswith("Bearer "):
            reason = "not_bearer"
        else:
            try:
                presented = header[7:].encode("ascii")
            except UnicodeEncodeError:
                reason = "malformed"
            else:
                if not self.tokens.check(presented):
                    reason = "wrong_token"
        if reason is None:
            return True
        request[AUTH_FAILURE_KEY] = reason
        self.layer.note_auth_failure(name, reason, request.remote)
        return False

    @staticmethod
    def unauthorized(request: web.Request | None = None) -> web.Response:
        """The 401 answer, naming what is wrong with the Authorization header."""
        reason = request.get(AUTH_FAILURE_KEY) if request is not None else None
        detail = {"missing": "the Authorization header is missing",
                  "not_bearer": "the Authorization header is not 'Bearer <token>'",
                  "malformed": "the Authorization header is not ASCII",
                  }.get(reason or "", "missing or wrong bearer token")
        return error_response(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})

    async def set_roles(self, request: web.Request) -> web.Response:
        """``POST /v1/admin/roles``: a model's champion and canary."""
        if not self.authorized(request):
            return self.unauthorized(request)
        layer = self.layer
        eng = self.service.engine
        body = await read_json(request)
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", "the body must be a JSON object, got "
                           f"{type(body).__name__}")
        model = need_name("model", body.get("model"))
        champion = need_name("champion", body.get("champion"))
        canary = check_name("canary", body.get("canary"), required=False)
        if eng is None:
            raise ApiError(503, "not_ready", "the engine is not ready (reference not fitted "
                           "yet)", {"Retry-After": "5"})
        if model not in eng.roles:
            raise ApiError(404, "unknown_model", f"model {model!r} is not configured")
        old = dict(eng.roles[model])
        try:
            eng.set_roles(model, champion, canary)
        except ValueError as exc:
            raise ApiError(400, "bad_roles", str(exc)) from None
        for version in old.values():
            if version not in eng.roles[model].values():
                layer.policy.forget_version(model, version)
        layer.audit.append("admin", {"action": "set_roles", "model": model,
                                     "before": old, "after": eng.roles[model]})
        return web.json_response({"model": model, "roles": eng.roles[model]})

    async def ack(self, request: web.Request) -> web.Response:
        """``POST /v1/admin/decisions/{decision_id}/ack``."""
        if not self.authorized(request):
            return self.unauthorized(request)
        layer = self.layer
        decision_id = need_name("decision id", request.match_info["decision_id"])
        if not layer.policy.acknowledge(decision_id):
            raise ApiError(404, "unknown_decision", f"unknown decision {decision_id!r}")
        layer.audit.append("admin", {"action": "acknowledge", "decision_id": decision_id})
        return web.json_response({"acknowledged": decision_id})

    async def reload_reference(self, request: web.Request) -> web.Response:
        """``POST /v1/admin/reference/reload``: the reference profile, from its file."""
        if not self.authorized(request):
            return self.unauthorized(request)
        service = self.service
        eng = service.engine
        try:
            ref = self._load_reference(service.settings)
            if ref is None or eng is None:
                raise ValueError("no reference.path configured, or the engine is not ready")
            before = eng.reference.content_hash
            eng.set_reference(ref)
        except ValueError as exc:
            raise ApiError(400, "reload_failed", str(exc)) from None
        self.layer.audit.append("admin", {"action": "reload_reference", "before": before,
                                          "after": ref.content_hash})
        return web.json_response({"reference_hash": ref.content_hash})

    async def report(self, request: web.Request) -> web.Response:
        """``GET /v1/reports/{model}/{version}``: the Evidently report (HTML, or
        its summary with ``?format=json``)."""
        from monitor.serve.reports import ReportBusyError, report_inputs

        # rendered in a worker process, one render per version at a time, cached
        # per window (monitor.serve.reports.ReportRenderer)
        service = self.service
        if service.settings.http.reports_require_token and not self.authorized(request):
            return self.unauthorized(request)
        model, version = request.match_info["model"], request.match_info["version"]
        eng = service.engine
        st = eng.versions.get((model, version)) if eng is not None else None
        if eng is None or st is None:
            return error_response(404, "not_found", f"no data for {model} {version}")
        sample = st.sample
        if sample is None:
            return error_response(409, "conflict", "evaluation.report_sample_size is 0")
        ref = eng.reference
        window = (st.score.bounds, ref.content_hash)
        try:
            html, summary = await self.renderer.get(
                (model, version), window, lambda: report_inputs(
                    ref, sample, list(ref.numeric.features), list(ref.categorical.features),
                    f"driftgate: {model} {version}",
                    service.settings.evaluation.report_method))
        except ValueError as exc:
            return error_response(409, "conflict", str(exc))
        except ReportBusyError as exc:
            return error_response(429, "busy", f"too many reports rendering: {exc}",
                                  headers={"Retry-After": "5"})
        if request.query.get("format") == "json":
            return web.json_response(summary)
        return web.Response(text=html, content_type="text/html")

    async def close_renderer(self, app: web.Application) -> None:
        """Stop the report worker (an ``on_cleanup`` hook)."""
        self.renderer.close()

    def add_report_route(self, app: web.Application) -> None:
        """Add ``GET /v1/reports/{model}/{version}``; the renderer closes with ``app``."""
        app.router.add_get("/v1/reports/{model}/{version}", self.report)
        app.on_cleanup.append(self.close_renderer)

    def add_admin_routes(self, app: web.Application) -> None:
        """Add the admin routes (:data:`ADMIN_PATHS`)."""
        app.router.add_post("/v1/admin/roles", self.set_roles)
        app.router.add_post("/v1/admin/decisions/{decision_id}/ack", self.ack)
        app.router.add_post("/v1/admin/reference/reload", self.reload_reference)
