"""The read-only routes of the HTTP API: health, readiness, metrics, status,
verdict, the Flagger hook and the OpenAPI document.

What lives here: :func:`add_service_routes` (``/metrics``, ``/healthz``,
``/readyz``, ``/v1/status``, ``/openapi.json``), :func:`add_verdict_routes`
(``/v1/verdict`` and ``/v1/flagger/rollback``, answered by the decision layer)
and :func:`status_document` (the ``/v1/status`` body). The admin and report
routes are :mod:`monitor.serve.admin`; the app is :mod:`monitor.serve.http`.

May import: aiohttp, prometheus_client, the standard library,
:mod:`monitor.core` and :mod:`monitor.serve.api`.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.core.decisions import VerdictError
from monitor.core.service import Service
from monitor.serve.api import (
    SERVICE_KEY,
    ApiError,
    check_name,
    error_response,
    need_name,
    query_name,
    read_json,
)

__all__ = ["add_service_routes", "add_verdict_routes", "status_document"]


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


async def _openapi(request: web.Request) -> web.Response:
    from monitor.serve.openapi import openapi_json

    return web.Response(body=openapi_json(), content_type="application/json")


async def _status(request: web.Request) -> web.Response:
    return web.json_response(status_document(request.app[SERVICE_KEY]))


def add_service_routes(app: web.Application) -> None:
    """Add the service's own routes (``app[SERVICE_KEY]`` is the service)."""
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/openapi.json", _openapi)


def add_verdict_routes(app: web.Application, layer: Any) -> None:
    """Add ``GET /v1/verdict`` and ``POST /v1/flagger/rollback``, answered by
    ``layer`` (a :class:`monitor.core.decisions.DecisionLayer`)."""

    async def verdict(request: web.Request) -> web.Response:
        model = need_name("query parameter 'model'", query_name(request, "model",
                                                                required=True))
        version = query_name(request, "version")
        try:
            doc = layer.verdict(model, version)
        except VerdictError as exc:
            return error_response(404, exc.code, exc.detail)
        return web.json_response(doc)

    async def flagger_rollback(request: web.Request) -> web.Response:
        # Flagger rolls back on any 2xx and carries on for anything else (a 4xx,
        # a 5xx, a timeout). So what cannot be vouched for is answered 200: a
        # missing, unknown or misspelt model or version, a canary whose events are
        # refused. Only bodies Flagger never sends (not a JSON object, metadata
        # not an object of strings) get a 4xx.
        body = await read_json(request, empty={})
        if not isinstance(body, dict):
            raise ApiError(400, "bad_body", "the body must be a JSON object, got "
                           f"{type(body).__name__}")
        meta = body.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise ApiError(400, "bad_metadata", "metadata must be an object, got "
                           f"{type(meta).__name__}")
        model = check_name("metadata.model", meta.get("model"), required=False) \
            or query_name(request, "model")
        version = check_name("metadata.version", meta.get("version"), required=False) \
            or query_name(request, "version")
        if not model:
            return web.json_response(
                {"verdict": "rollback", "rollback": True, "unmonitored": True,
                 "error": "missing_model",
                 "reason": "metadata.model (or ?model=) is not set: this canary is not "
                           "monitored, so it is rolled back"})
        try:
            doc = layer.verdict(model, version)
        except VerdictError as exc:
            return web.json_response(
                {"model": model, "version": version, "verdict": "rollback",
                 "rollback": True, "unmonitored": True, "error": exc.code,
                 "reason": f"{exc.detail}; an unmonitored canary is rolled back"})
        roll = bool(doc["rollback"] or doc["unmonitored"])
        return web.json_response(doc, status=200 if roll else 409)

    app.router.add_get("/v1/verdict", verdict)
    app.router.add_post("/v1/flagger/rollback", flagger_rollback)
