"""HTTP API (aiohttp): metrics, health, readiness and status.

Routes: ``/metrics`` (Prometheus text format), ``/healthz`` (the process is
alive), ``/readyz`` (partitions assigned and lag under ``http.ready_max_lag``),
``/v1/status`` (JSON: models, versions, window statistics). The decision layer
adds its own routes through :func:`build_app`'s ``extra_routes``.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import os
import re
import time
import traceback
import zlib
from collections.abc import Awaitable, Callable, Iterable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from monitor.config import AdminSettings
from monitor.core.decisions import VerdictError
from monitor.core.service import Service

__all__ = ["AdminTokens", "ApiError", "build_app", "read_body", "read_json", "redact",
           "start_http", "status_document"]

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service", Service)
AUTH_FAILURE_KEY: web.RequestKey[str] = web.RequestKey("auth_failure", str)

MAX_BODY_BYTES = 1 << 20
#: names in a query string, JSON field or path: bounded and printable
MAX_NAME_CHARS = 200
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_COMPRESSED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
               "deflate": zlib.MAX_WBITS}
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


class ApiError(Exception):
    """A client error: answered ``{"error": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, code: str, detail: str,
                 headers: Mapping[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})


def error_response(status: int, code: str, detail: str,
                   headers: Mapping[str, str] | None = None) -> web.Response:
    """The uniform JSON error body."""
    return web.json_response({"error": code, "detail": detail}, status=status,
                             headers=headers)


def _code_for_status(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return f"http_{status}"


def _clip(text: str, n: int = 300) -> str:
    return text if len(text) <= n else text[:n] + "..."


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
            detail = f"no route {request.method} {_clip(request.path, 200)!r}"
        elif exc.status == 405:
            detail = f"{request.method} is not allowed on {_clip(request.path, 200)!r}"
        resp = error_response(exc.status, _code_for_status(exc.status), detail, headers)
    except UnicodeError as exc:
        resp = error_response(400, "bad_encoding",
                              f"the request is not valid UTF-8 ({type(exc).__name__})")
    except Exception as exc:  # a bug of ours: 500, with its traceback (redacted)
        log.error("http handler failed", method=request.method, path=_clip(request.path),
                  error=type(exc).__name__,
                  detail=redact(_clip(str(exc)), _secrets(request)),
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
        log.warning("http request refused", method=request.method, path=_clip(request.path),
                    status=resp.status,
                    error=doc.get("error") if isinstance(doc, dict) else None,
                    detail=redact(_clip(str(doc.get("detail"))), _secrets(request))
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


def _too_large(limit: int, inflated: bool) -> ApiError:
    return ApiError(413, "payload_too_large", f"the request body is larger than {limit} "
                    "bytes" + (" once inflated" if inflated else ""))


async def read_body(request: web.BaseRequest, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, at most ``limit`` bytes once inflated.

    ``Content-Encoding: gzip`` or ``deflate`` is inflated here, incrementally and
    never past ``limit`` (the server does not inflate: ``auto_decompress`` is
    off); any other encoding is refused (415). A declared or actual size over
    ``limit`` is refused (413) without reading further.
    """
    enc = request.headers.get("Content-Encoding", "identity").strip().lower()
    if enc in ("", "identity"):
        wbits = None
    elif enc in _COMPRESSED:
        wbits = _COMPRESSED[enc]
    else:
        raise ApiError(415, "unsupported_content_encoding",
                       f"Content-Encoding {_clip(enc, 60)!r} is not supported "
                       "(gzip, deflate or identity)")
    # no exception object is kept in a local: it would make a reference cycle
    # (exception -> traceback -> this frame -> exception) holding the buffer below
    # until a full garbage collection
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit, wbits is not None)
    inflater = zlib.decompressobj(wbits) if wbits is not None else None
    out = bytearray()
    received = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        received += len(chunk)
        if received > limit:
            del out, chunk
            raise _too_large(limit, wbits is not None)
        if inflater is None:
            out += chunk
            continue
        try:
            # never more than what still fits (+1 to notice the overflow)
            out += inflater.decompress(chunk, limit + 1 - len(out))
        except zlib.error as exc:
            raise ApiError(400, "bad_compressed_body",
                           f"the {enc} body does not inflate: {exc}") from None
        if len(out) > limit or inflater.unconsumed_tail:
            del out, chunk, inflater
            raise _too_large(limit, True)
        if inflater.eof and inflater.unused_data:
            raise ApiError(400, "bad_compressed_body",
                           f"data after the end of the {enc} stream")
    if inflater is not None and received and not inflater.eof:
        raise ApiError(400, "bad_compressed_body", f"the {enc} body is truncated")
    return bytes(out)


async def read_json(request: web.BaseRequest, empty: Any = None) -> Any:
    """The JSON body (``empty`` when there is none); 4xx naming what is wrong."""
    charset = (request.charset or "utf-8").strip().lower()
    if charset not in _UTF8_CHARSETS:
        raise ApiError(415, "unsupported_charset",
                       f"charset {_clip(charset, 60)!r} is not supported: JSON is UTF-8")
    raw = await read_body(request)
    if not raw.strip():
        if empty is not None:
            return empty
        raise ApiError(400, "missing_body", "a JSON body is required")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(400, "bad_encoding",
                       f"the body is not UTF-8 (byte {exc.start})") from None
    try:
        return json.loads(text)
    except RecursionError:
        raise ApiError(400, "too_deep", "the JSON body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, "bad_json", f"the body is not JSON: {exc}") from None


def check_name(field: str, value: Any, required: bool = True) -> str | None:
    """``value`` as a model/version/decision name, or a 400 naming ``field``."""
    if value is None:
        if required:
            raise ApiError(400, "missing_field", f"{field} is required")
        return None
    if not isinstance(value, str):
        raise ApiError(400, "bad_field", f"{field} must be a string, got "
                       f"{type(value).__name__} {_clip(json.dumps(value), 80)}")
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ApiError(400, "bad_field", f"{field} must be 1-{MAX_NAME_CHARS} printable "
                       f"characters, got {_clip(repr(value), 80)}")
    return value


def need_name(field: str, value: Any) -> str:
    """:func:`check_name` of a required name."""
    name = check_name(field, value)
    assert name is not None
    return name


def query_name(request: web.Request, name: str, required: bool = False) -> str | None:
    """A single query parameter checked by :func:`check_name`."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(400, "bad_query", f"query parameter {name!r} is given "
                       f"{len(values)} times")
    if not values:
        if required:
            raise ApiError(400, "missing_query", f"query parameter {name!r} is required")
        return None
    return check_name(f"query parameter {name!r}", values[0])


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
            fields["detail"] = redact(_clip(str(exc), 500), secrets)
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


def build_app(service: Service,
              extra_routes: Callable[[web.Application], None] | None = None
              ) -> web.Application:
    """The aiohttp application for ``service``."""
    # bodies are inflated by read_body (bounded), never by the server
    app = web.Application(middlewares=[error_middleware], client_max_size=MAX_BODY_BYTES,
                          handler_args={"auto_decompress": False})
    app[SERVICE_KEY] = service
    install_log_redaction()
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/v1/status", _status)
    app.router.add_get("/openapi.json", _openapi)
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
    from monitor.serve.reference_io import load_reference

    tokens = AdminTokens(service.settings.admin)
    secrets_of = service.settings.webhooks.secret_values

    def all_secrets() -> list[str]:
        return tokens.secrets() + list(secrets_of())

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

    def authorized(request: web.Request) -> bool:
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
                if not tokens.check(presented):
                    reason = "wrong_token"
        if reason is None:
            return True
        request[AUTH_FAILURE_KEY] = reason
        layer.note_auth_failure(name, reason, request.remote)
        return False

    def unauthorized(request: web.Request | None = None) -> web.Response:
        reason = request.get(AUTH_FAILURE_KEY) if request is not None else None
        detail = {"missing": "the Authorization header is missing",
                  "not_bearer": "the Authorization header is not 'Bearer <token>'",
                  "malformed": "the Authorization header is not ASCII",
                  }.get(reason or "", "missing or wrong bearer token")
        return error_response(401, "unauthorized", detail, {"WWW-Authenticate": "Bearer"})

    async def set_roles(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized(request)
        eng = service.engine
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

    async def ack(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized(request)
        decision_id = need_name("decision id", request.match_info["decision_id"])
        if not layer.policy.acknowledge(decision_id):
            raise ApiError(404, "unknown_decision", f"unknown decision {decision_id!r}")
        layer.audit.append("admin", {"action": "acknowledge", "decision_id": decision_id})
        return web.json_response({"acknowledged": decision_id})

    async def reload_reference(request: web.Request) -> web.Response:
        if not authorized(request):
            return unauthorized(request)
        eng = service.engine
        try:
            ref = load_reference(service.settings)
            if ref is None or eng is None:
                raise ValueError("no reference.path configured, or the engine is not ready")
            before = eng.reference.content_hash
            eng.set_reference(ref)
        except ValueError as exc:
            raise ApiError(400, "reload_failed", str(exc)) from None
        layer.audit.append("admin", {"action": "reload_reference", "before": before,
                                     "after": ref.content_hash})
        return web.json_response({"reference_hash": ref.content_hash})

    from monitor.serve.reports import ReportBusyError, ReportRenderer, report_inputs

    renderer = ReportRenderer()

    async def report(request: web.Request) -> web.Response:
        # rendered in a worker process, one render per version at a time, cached
        # per window (monitor.serve.reports.ReportRenderer)
        if service.settings.http.reports_require_token and not authorized(request):
            return unauthorized(request)
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
            html, summary = await renderer.get((model, version), window, lambda: report_inputs(
                ref, sample, list(ref.numeric.features), list(ref.categorical.features),
                f"driftgate: {model} {version}", service.settings.evaluation.report_method))
        except ValueError as exc:
            return error_response(409, "conflict", str(exc))
        except ReportBusyError as exc:
            return error_response(429, "busy", f"too many reports rendering: {exc}",
                                  headers={"Retry-After": "5"})
        if request.query.get("format") == "json":
            return web.json_response(summary)
        return web.Response(text=html, content_type="text/html")

    async def close_renderer(app: web.Application) -> None:
        renderer.close()

    def install(app: web.Application) -> None:
        install_log_redaction(all_secrets)
        for path in ("/v1/admin/roles", "/v1/admin/decisions/{decision_id}/ack",
                     "/v1/admin/reference/reload"):
            layer.auth_failures.setdefault(path, 0)
        app.router.add_get("/v1/reports/{model}/{version}", report)
        app.on_cleanup.append(close_renderer)
        app.router.add_get("/v1/verdict", verdict)
        app.router.add_post("/v1/flagger/rollback", flagger_rollback)
        app.router.add_post("/v1/admin/roles", set_roles)
        app.router.add_post("/v1/admin/decisions/{decision_id}/ack", ack)
        app.router.add_post("/v1/admin/reference/reload", reload_reference)

    return install
