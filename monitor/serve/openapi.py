"""The HTTP API's OpenAPI document (``monitor/serve/openapi.yaml``, package data).

Served as JSON at ``GET /openapi.json``; the fuzz test
(``tests/integration/test_openapi_fuzz.py``) checks every route against it.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

import yaml

__all__ = ["openapi_document", "openapi_json"]


@functools.cache
def openapi_json() -> bytes:
    """The document as JSON bytes (read and converted once).

    >>> doc = json.loads(openapi_json())
    >>> doc["openapi"], "/v1/verdict" in doc["paths"]
    ('3.1.0', True)
    """
    text = resources.files("monitor.serve").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return json.dumps(yaml.safe_load(text), separators=(",", ":")).encode()


def openapi_document() -> dict[str, Any]:
    """The document as a fresh dict."""
    doc: dict[str, Any] = json.loads(openapi_json())
    return doc
