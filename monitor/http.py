"""HTTP API (aiohttp): metrics, health, readiness and status.

Routes: ``/metrics`` (Prometheus text format), ``/healthz`` (the process is
alive), ``/readyz`` (partitions assigned and lag under ``http.ready_max_lag``),
``/v1/status`` (JSON: models, versions, window statistics). The decision layer
adds its own routes through :func:`build_app`'s ``extra_routes``.
"""

from __future__ import annotations

import asyncio
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


def decision_routes(service: Service, layer: Any) -> Callable[[web.Application], None]:
    """Routes of the decision layer: verdict, Flagger hook and admin API.

    * ``GET /v1/verdict?model=M&version=V`` — JSON verdict (``ok | alert |
      rollback``) with its evidence; ``version`` defaults to the canary. For an
      Argo Rollouts ``web`` metric: ``jsonPath: "{$.verdict}"``.
    * ``POST /v1/flagger/rollback`` — Flagger's rollback hook: 200 exactly when a
      rollback is wanted for the canary named by ``metadata.model`` (and
      optionally ``metadata.version``), 409 otherwise.
    * ``POST /v1/admin/roles``, ``POST /v1/admin/decisions/{id}/ack``,
      ``POST /v1/admin/reference/reload`` — need ``Authorization: Bearer
      <admin token>``; a missing or wrong token gets 401 and changes nothing.
    """
    import hmac

    from monitor.runner import load_reference

    token = service.settings.admin.token_value()

    async def verdict(request: web.Request) -> web.Response:
        model = request.query.get("model")
        if not model:
            return web.json_response({"error": "query parameter 'model' is required"},
                                     status=400)
        doc = layer.verdict(model, request.query.get("version"))
        if doc is None:
            return web.json_response({"error": f"unknown model {model!r}"}, status=404)
        return web.json_response(doc)

    async def flagger_rollback(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "body must be JSON"}, status=400)
        meta = body.get("metadata") or {} if isinstance(body, dict) else {}
        model = meta.get("model") or request.query.get("model")
        if not model:
            return web.json_response({"error": "metadata.model (or ?model=) is required"},
                                     status=400)
        doc = layer.verdict(model, meta.get("version") or request.query.get("version"))
        if doc is None:
            return web.json_response({"error": f"unknown model {model!r}"}, status=404)
        return web.json_response(doc, status=200 if doc["verdict"] == "rollback" else 409)

    def authorized(request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if token is None or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[7:].encode(), token.encode())

    def unauthorized() -> web.Response:
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": "Bearer"})

    async def set_roles(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized()
        eng = service.engine
        try:
            body = await request.json()
            model, champion = str(body["model"]), str(body["champion"])
            canary = body.get("canary")
            if eng is None:
                raise ValueError("the engine is not ready (reference not fitted yet)")
            if model not in eng.roles:
                raise ValueError(f"unknown model {model!r}")
            old = dict(eng.roles[model])
            eng.set_roles(model, champion, None if canary is None else str(canary))
        except (KeyError, TypeError, ValueError) as exc:
            return web.json_response({"error": f"bad request: {exc}"}, status=400)
        for version in old.values():
            if version not in eng.roles[model].values():
                layer.policy.forget_version(model, version)
        layer.audit.append("admin", {"action": "set_roles", "model": model,
                                     "before": old, "after": eng.roles[model]})
        return web.json_response({"model": model, "roles": eng.roles[model]})

    async def ack(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized()
        decision_id = request.match_info["decision_id"]
        if not layer.policy.acknowledge(decision_id):
            return web.json_response({"error": f"unknown decision {decision_id!r}"},
                                     status=404)
        layer.audit.append("admin", {"action": "acknowledge", "decision_id": decision_id})
        return web.json_response({"acknowledged": decision_id})

    async def reload_reference(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized()
        eng = service.engine
        try:
            ref = load_reference(service.settings)
            if ref is None or eng is None:
                raise ValueError("no reference.path configured, or the engine is not ready")
            before = eng.reference.content_hash
            eng.set_reference(ref)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        layer.audit.append("admin", {"action": "reload_reference", "before": before,
                                     "after": ref.content_hash})
        return web.json_response({"reference_hash": ref.content_hash})

    async def report(request: web.Request) -> web.Response:
        from monitor.reports import build_report

        model, version = request.match_info["model"], request.match_info["version"]
        eng = service.engine
        st = eng.versions.get((model, version)) if eng is not None else None
        if eng is None or st is None:
            return web.json_response({"error": f"no data for {model} {version}"}, status=404)
        if st.sample is None:
            return web.json_response({"error": "evaluation.report_sample_size is 0"},
                                     status=409)
        try:
            html, summary = await asyncio.to_thread(
                build_report, eng.reference, st.sample, list(eng.reference.numeric.features),
                list(eng.reference.categorical.features), f"driftgate: {model} {version}",
                service.settings.evaluation.report_method)
        except ValueError as exc:
            return web.json_response({"error": str(exc)}, status=409)
        if request.query.get("format") == "json":
            return web.json_response(summary)
        return web.Response(text=html, content_type="text/html")

    def install(app: web.Application) -> None:
        app.router.add_get("/v1/reports/{model}/{version}", report)
        app.router.add_get("/v1/verdict", verdict)
        app.router.add_post("/v1/flagger/rollback", flagger_rollback)
        app.router.add_post("/v1/admin/roles", set_roles)
        app.router.add_post("/v1/admin/decisions/{decision_id}/ack", ack)
        app.router.add_post("/v1/admin/reference/reload", reload_reference)

    return install
