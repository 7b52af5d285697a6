"""Serving: HTTP, wiring and reports.

What lives here:

* :mod:`.http` — the aiohttp app (:func:`~.http.build_app`, the JSON error
  middleware, credential redaction in logs, :func:`~.http.decision_routes`,
  :func:`~.http.start_http`); the names below are re-exported from it;
* :mod:`.api` — what every route shares: :class:`~.api.ApiError` and the
  uniform JSON error body, bounded (and gzip/deflate-bounded) body reading,
  name checks;
* :mod:`.routes` — health, readiness, metrics, status, verdict, the Flagger
  hook and the OpenAPI route;
* :mod:`.admin` — the admin bearer token (rotated without a restart), the
  admin routes and the report route;
* :mod:`.openapi` — the OpenAPI document (``openapi.yaml``);
* :mod:`.runner` — the wiring of a running service from settings;
* :mod:`.reports` — Evidently report rendering (off the event loop);
* :mod:`.reference_io` — reference profile I/O.

May import: :mod:`monitor.core` and everything below it. Never the sandbox.
"""
