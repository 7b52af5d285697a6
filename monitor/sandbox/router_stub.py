"""A traffic-router stub that receives driftgate's signed webhooks.

It stands in for the router in the demo, the tests and the compose stack:

* ``POST /rollback`` verifies the Standard Webhooks signature (id, timestamp
  within tolerance, HMAC over ``{id}.{timestamp}.{body}``), then moves the
  named canary's traffic to 0 (champion 100). A webhook id seen before is
  acknowledged without acting twice. A bad signature gets 401 and changes
  nothing.
* ``POST /alerts`` accepts Alertmanager webhook v4 payloads (from driftgate,
  signed, or from a real Alertmanager, unsigned when ``require_signed_alerts``
  is off) and keeps them.
* ``GET /weights`` returns the current traffic split.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from rollback.signing import SignatureError, verify

__all__ = ["Received", "RouterStub"]


@dataclass
class Received:
    """One accepted webhook."""

    path: str
    webhook_id: str | None
    body: dict[str, Any]
    at: float
    duplicate: bool = False


@dataclass
class RouterStub:
    """An aiohttp router stub; ``await start()``, then ``url``; ``await stop()``."""

    secrets: Sequence[str]
    weights: dict[str, dict[str, int]] = field(default_factory=dict)
    tolerance_s: int = 300
    require_signed_alerts: bool = True
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    alerts: list[Received] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _seen: set[str] = field(default_factory=set)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/rollback", self._rollback)
        app.router.add_post("/alerts", self._alerts)
        app.router.add_get("/weights", self._weights)
        return app

    async def start(self) -> RouterStub:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        sockets = getattr(site._server, "sockets", None)
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def canary_share(self, model: str, canary: str) -> float:
        """The canary's share of traffic (0..1)."""
        w = self.weights.get(model, {})
        total = sum(w.values())
        return w.get(canary, 0) / total if total else 0.0

    def _check(self, request_headers: Mapping[str, str], body: bytes) -> str | None:
        try:
            verify(self.secrets, request_headers, body, tolerance_s=self.tolerance_s)
        except SignatureError as exc:
            return str(exc)
        return None

    async def _rollback(self, request: web.Request) -> web.Response:
        body = await request.read()
        problem = self._check(request.headers, body)
        if problem is not None:
            self.rejected.append(("/rollback", problem))
            return web.json_response({"error": problem}, status=401)
        try:
            doc = json.loads(body)
            model, canary = str(doc["model"]), str(doc["canary_version"])
            champion = doc.get("champion_version")
        except (ValueError, KeyError, TypeError) as exc:
            self.rejected.append(("/rollback", f"bad body: {exc}"))
            return web.json_response({"error": f"bad body: {exc}"}, status=400)
        wid = request.headers.get("webhook-id")
        duplicate = wid in self._seen
        self.received.append(Received("/rollback", wid, doc, time.time(), duplicate))
        if not duplicate:
            if wid is not None:
                self._seen.add(wid)
            w = self.weights.setdefault(model, {})
            w[canary] = 0
            if champion:
                w[str(champion)] = 100
        return web.json_response({"rolled_back": canary, "duplicate": duplicate,
                                  "weights": self.weights.get(model, {})})

    async def _alerts(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = "webhook-signature" in request.headers
        if signed or self.require_signed_alerts:
            problem = self._check(request.headers, body)
            if problem is not None:
                self.rejected.append(("/alerts", problem))
                return web.json_response({"error": problem}, status=401)
        try:
            doc = json.loads(body)
        except ValueError as exc:
            return web.json_response({"error": f"bad body: {exc}"}, status=400)
        self.alerts.append(Received("/alerts", request.headers.get("webhook-id"), doc,
                                    time.time()))
        return web.json_response({"ok": True})

    async def _weights(self, request: web.Request) -> web.Response:
        return web.json_response(self.weights)
