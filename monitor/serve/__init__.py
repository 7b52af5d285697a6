"""Serving: HTTP, wiring and reports.

What lives here: the aiohttp app (:mod:`.http`: health, metrics, status,
verdict and admin routes, the OpenAPI document), the wiring of a running
service from settings (:mod:`.runner`), Evidently report rendering
(:mod:`.reports`) and reference profile I/O (:mod:`.reference_io`).

May import: :mod:`monitor.core` and everything below it. Never the sandbox.
"""
