"""HTTP API (aiohttp): metrics, health, readiness and status.

Routes: ``/metrics`` (Prometheus text format), ``/healthz`` (the process is
alive), ``/readyz`` (partitions assigned and lag under ``http.ready_max_lag``),
``/v1/status`` (JSON: models, versions, window statistics). The decision layer
adds its own routes through :func:`build_app`'s ``extra_routes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.service import Service

__all__ = ["build_app", "start_http", "status_document"]

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service", Service)


def _num(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else x


def status_document(service: Service) -> dict[str, Any]:
    """The ``/v1/status`` JSON body."""
    eng = service.engine
    st = service.status()
    doc: dict[str, Any] = {
        "ready": service.ready(),
        "uptime_seconds": service.clock() - service.started_at,
        "batches": service.batches,
        "records": service.records,
        "partitions": sorted(f"{t}/{p}" for t, p in st.assigned),
        "lag": {f"{t}/{p}": n for (t, p), n in sorted(st.lag.items())},
        "models": {},
    }
    if eng is None:
        doc["reference"] = None
        return doc
    ev = eng.snapshot()
    doc["reference"] = {"hash": ev.reference_hash, "events": eng.reference.n_events}
    doc["watermark"] = _num(eng.watermark)
    doc["join"] = {"pending_predictions": eng.pending_predictions,
                   "pending_labels": eng.pending_labels,
                   "evictions": dict(eng.evictions),
                   "unmatched_labels": dict(eng.unmatched_labels)}
    models: dict[str, Any] = {}
    for (model, version), ve in ev.versions.items():
        st_v = eng.versions[(model, version)]
        m = models.setdefault(model, {"roles": eng.roles.get(model, {}), "versions": {}})
        k = ve.kpis
        m["versions"][version] = {
            "role": ve.role,
            "predictions": st_v.predictions_total,
            "labels_joined": st_v.labels_joined_total,
            "late": st_v.late_total,
            "window_events": ve.window_events,
            "window_bounds": ve.window_bounds,
            "psi": ve.vs_reference.psi if ve.vs_reference else None,
            "kpis": {name: {"estimate": _num(p.value), "lower": p.lower, "upper": p.upper,
                            "n": p.trials}
                     for name, p in (("catch_rate", k.catch_rate),
                                     ("precision", k.precision),
                                     ("alert_rate", k.alert_rate),
                                     ("amount_weighted_catch_rate",
                                      k.amount_weighted_catch_rate))},
            "adwin": ve.adwin,
        }
    for model, cmp in ev.canaries.items():
        models.setdefault(model, {"roles": eng.roles.get(model, {}), "versions": {}})
        models[model]["canary_vs_champion"] = {
            "psi": cmp.divergences.psi if cmp.divergences else None,
            "kpi_tests": cmp.kpi_tests,
        }
    doc["models"] = models
    return doc


async def _metrics(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    body = generate_latest(service.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def _healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive"})


async def _readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    ok = service.ready()
    st = service.status()
    body = {"ready": ok, "connected": st.connected, "assigned": len(st.assigned),
            "max_lag": max(st.lag.values(), default=0),
            "reference": service.engine is not None}
    return web.json_response(body, status=200 if ok else 503)


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status_document(request.app[SERVICE_KEY]))


def build_app(service: Service,
              extra_routes: Callable[[web.Application], None] | None = None
              ) -> web.Application:
    """The aiohttp application for ``service``."""
    app = web.Application()
    app[SERVICE_KEY] = service
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/status", _status)
    if extra_routes is not None:
        extra_routes(app)
    return app


async def start_http(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving ``app``; returns the runner and the bound port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = port
    sockets = getattr(site._server, "sockets", None)
    if sockets:
        bound = int(sockets[0].getsockname()[1])
    return runner, bound
