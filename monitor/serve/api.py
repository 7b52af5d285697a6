"""The conventions every route of the HTTP API follows.

What lives here: :class:`ApiError` and :func:`error_response` (a client error
as ``{"error": code, "detail": text}``), the bounded body readers
(:func:`read_body`: size limit, gzip/deflate inflated incrementally and never
past the limit; :func:`read_json`), the checks of names in queries, bodies and
paths (:func:`check_name`, :func:`need_name`, :func:`query_name`) and the app
and request keys (:data:`SERVICE_KEY`, :data:`AUTH_FAILURE_KEY`). The app
itself (middleware, log redaction, :func:`~monitor.serve.http.build_app`) is
:mod:`monitor.serve.http`; the routes are :mod:`monitor.serve.routes` and
:mod:`monitor.serve.admin`.

May import: aiohttp, the standard library and :mod:`monitor.core`.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from monitor.core.service import Service

__all__ = ["AUTH_FAILURE_KEY", "MAX_BODY_BYTES", "MAX_NAME_CHARS", "SERVICE_KEY", "ApiError",
           "check_name", "clip", "error_response", "need_name", "query_name", "read_body",
           "read_json"]

SERVICE_KEY: web.AppKey[Service] = web.AppKey("service", Service)
AUTH_FAILURE_KEY: web.RequestKey[str] = web.RequestKey("auth_failure", str)

MAX_BODY_BYTES = 1 << 20
#: names in a query string, JSON field or path: bounded and printable
MAX_NAME_CHARS = 200
_UTF8_CHARSETS = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_COMPRESSED = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS,
               "deflate": zlib.MAX_WBITS}


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


def clip(text: str, n: int = 300) -> str:
    """``text``, cut to ``n`` characters (and ``...``) for a log line or a detail.

    >>> clip("abcdef", 3)
    'abc...'
    """
    return text if len(text) <= n else text[:n] + "..."


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
                       f"Content-Encoding {clip(enc, 60)!r} is not supported "
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
                       f"charset {clip(charset, 60)!r} is not supported: JSON is UTF-8")
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
                       f"{type(value).__name__} {clip(json.dumps(value), 80)}")
    if not value or len(value) > MAX_NAME_CHARS or not value.isprintable():
        raise ApiError(400, "bad_field", f"{field} must be 1-{MAX_NAME_CHARS} printable "
                       f"characters, got {clip(repr(value), 80)}")
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
