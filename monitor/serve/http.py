"""HTTP API (aiohttp): the app, its error handling and the server.

Routes: ``/metrics`` (Prometheus text format), ``/healthz`` (the process is
alive), ``/readyz`` (partitions assigned and lag under ``http.ready_max_lag``),
``/v1/status`` (JSON: models, versions, window statistics). The decision layer
adds its own routes through :func:`build_app`'s ``extra_routes``
(:func:`decision_routes`).

What lives here: :func:`build_app` (the app: bodies are never inflated by the
server, at most :data:`~monitor.serve.api.MAX_BODY_BYTES`), the middleware
that answers every client error as uniform JSON (:func:`error_middleware`),
credential redaction in every log line (:func:`redact`,
:func:`install_log_redaction`), :func:`decision_routes` and
:func:`start_http`. The routes themselves are :mod:`monitor.serve.routes`
(health, readiness, metrics, status, verdict, Flagger, OpenAPI) and
:mod:`monitor.serve.admin` (admin API, reports, the admin token); the request
conventions they share (errors, bounded bodies, names) are
:mod:`monitor.serve.api`. Their public names are re-exported here.

May import: aiohttp, structlog, the standard library, :mod:`monitor.core` and
the other modules of :mod:`monitor.serve`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import traceback
from collections.abc import Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any

import structlog
from aiohttp import web

from monitor.core.service import Service
from monitor.serve.admin import ADMIN_PATHS, AdminApi, AdminTokens
from monitor.serve.api import (
    MAX_BODY_BYTES,
    SERVICE_KEY,
    ApiError,
    clip,
    error_response,
    read_body,
    read_json,
)
from monitor.serve.routes import add_service_routes, add_verdict_routes, status_document

__all__ = ["AdminTokens", "ApiError", "build_app", "decision_routes", "read_body",
           "read_json", "redact", "start_http", "status_document"]

#: header names whose values are credentials: never logged
CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie",
                      "x-api-key", "x-auth-token", "webhook-signature")
_CRED_RE = re.compile(
    r"(?i)((?:" + "|".join(map(re.escape, CREDENTIAL_HEADERS)) + r")\s*[:=]\s*)"
    r"[^\r\n'\"]*")
_SCHEME_RE = re.compile(r"(?i)\b(bearer|basic|token)(\s+)[^\s'\"\\]+")

log = structlog.get_logger("driftgate.http")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with credential header values, bearer/basic credentials and the
    given secrets replaced by ``[REDACTED]``."""
    for secret in secrets:
        if len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    text = _CRED_RE.sub(r"\1[REDACTED]", text)
    return _SCHEME_RE.sub(r"\1\2[REDACTED]", text)


def _code_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


@web.middleware
async def error_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                           ) -> web.StreamResponse:
    """Every client error as a uniform JSON body (4xx) and one warning line."""
    try:
        resp = await handler(request)
    except ApiError as exc:
        resp = error_response(exc.status, exc.code, exc.detail, exc.headers)
        if exc.status == 413:
            resp.force_close()  # the rest of an oversized body is not worth a keep-alive
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {k: v for k, v in exc.headers.items()
                   if k.lower() in ("allow", "www-authenticate", "retry-after")}
        detail = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") \
            else exc.reason
        if exc.status == 404:
            detail = f"no route {request.method} {clip(request.path, 200)!r}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {clip(request.path, 200)!r}"
        resp = error_response(exc.status, _code_for_status(exc.status), detail, headers)
    except UnicodeError as exc:
        resp = error_response(400, "bad_encoding",
                              f"the request is not valid UTF-8 ({type(exc).__name__})")
    except Exception as exc:  # a bug of ours: 500, with its traceback (redacted)
        log.error("http handler failed", method=request.method, path=clip(request.path),
                  error=type(exc).__name__,
                  detail=redact(clip(str(exc)), _secrets(request)),
                  traceback=redact("".join(traceback.format_exception(exc)),
                                   _secrets(request)))
        return error_response(500, "internal_error", "the request failed inside driftgate; "
                              "see its log")
    if 400 <= resp.status < 500 and isinstance(resp, web.Response):
        resp = _uniform(resp)
        body = resp.body
        doc: Any = None
        if isinstance(body, bytes) and resp.content_type == "application/json":
            with contextlib.suppress(ValueError):
                doc = json.loads(body)
        log.warning("http request refused", method=request.method, path=clip(request.path),
                    status=resp.status,
                    error=doc.get("error") if isinstance(doc, dict) else None,
                    detail=redact(clip(str(doc.get("detail"))), _secrets(request))
                    if isinstance(doc, dict) else None,
                    remote=request.remote)
    return resp


def _uniform(resp: web.Response) -> web.Response:
    """A JSON 4xx body written as ``{"error": <text>}`` becomes ``{"error": <code>,
    "detail": <text>}``."""
    if resp.content_type != "application/json" or not isinstance(resp.body, bytes):
        return resp
    try:
        doc = json.loads(resp.body)
    except ValueError:
        return resp
    if isinstance(doc, dict) and "error" in doc and "detail" not in doc:
        new = error_response(resp.status, _code_for_status(resp.status), str(doc["error"]),
                             {k: v for k, v in resp.headers.items()
                              if k.lower() in ("allow", "www-authenticate", "retry-after")})
        if not resp.keep_alive and resp.keep_alive is not None:
            new.force_close()
        return new
    return resp


def _secrets(request: web.BaseRequest) -> list[str]:
    return _REDACTOR.secrets()


class _AiohttpLogRedactor(logging.Filter):
    """aiohttp's own log records (parser errors quote raw request lines and
    headers): credentials redacted, client errors as one warning line without
    the traceback, everything re-emitted through structlog as JSON."""

    secrets: Callable[[], list[str]] = staticmethod(list)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            message = str(record.msg)
        exc = record.exc_info[1] if record.exc_info else None
        secrets = self.secrets()
        fields: dict[str, Any] = {"logger": record.name, "message": redact(message, secrets)}
        status = getattr(exc, "code", None) if exc is not None else None
        if exc is not None:
            fields["error"] = type(exc).__name__
            fields["detail"] = redact(clip(str(exc), 500), secrets)
        if exc is not None and isinstance(status, int) and 400 <= status < 500:
            log.warning("http request refused by the parser", status=status, **fields)
        elif exc is not None:
            fields["traceback"] = redact("".join(traceback.format_exception(exc)), secrets)
            log.error("http server error", **fields)
        elif record.levelno >= logging.WARNING:
            log.warning("http server", **fields)
        return False  # emitted above, redacted


_REDACTOR = _AiohttpLogRedactor()


def install_log_redaction(secrets: Callable[[], list[str]] | None = None) -> None:
    """Route aiohttp's loggers through :class:`_AiohttpLogRedactor` (idempotent)."""
    if secrets is not None:
        _REDACTOR.secrets = secrets
    for name in ("aiohttp.server", "aiohttp.web", "aiohttp.access", "aiohttp.internal",
                 "aiohttp.client", "aiohttp.websocket"):
        lg = logging.getLogger(name)
        if _REDACTOR not in lg.filters:
            lg.addFilter(_REDACTOR)


def build_app(service: Service,
              extra_routes: Callable[[web.Application], None] | None = None
              ) -> web.Application:
    """The aiohttp application for ``service``."""
    # bodies are inflated by read_body (bounded), never by the server
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES,
                          handler_args={"auto_decompress": False})
    app[SERVICE_KEY] = service
    install_log_redaction()
    add_service_routes(app)
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
      rollback | inconclusive``) with its evidence; ``version`` defaults to the
      canary; 404 for an unknown model or a version that is neither champion nor
      canary. For an Argo Rollouts ``web`` metric: ``jsonPath: "{$.verdict}"``.
    * ``POST /v1/flagger/rollback`` — Flagger's rollback hook (2xx = roll back):
      200 for a rollback verdict and for any canary it cannot vouch for (model or
      version missing or unknown, events refused), 409 otherwise.
    * ``POST /v1/admin/roles``, ``POST /v1/admin/decisions/{id}/ack``,
      ``POST /v1/admin/reference/reload`` — need ``Authorization: Bearer
      <admin token>``; a missing or wrong token gets 401 and changes nothing.
    """
    tokens = AdminTokens(service.settings.admin)
    secrets_of = service.settings.webhooks.secret_values
    admin = AdminApi(service, layer, tokens)

    def all_secrets() -> list[str]:
        return tokens.secrets() + list(secrets_of())

    def install(app: web.Application) -> None:
        install_log_redaction(all_secrets)
        for path in ADMIN_PATHS:
            layer.auth_failures.setdefault(path, 0)
        admin.add_report_route(app)
        add_verdict_routes(app, layer)
        admin.add_admin_routes(app)

    return install
