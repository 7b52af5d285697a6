"""The service core: the poll, decode, apply, commit loop and what decides.

What lives here: :class:`monitor.core.service.Service` (one batch end to end,
the evaluator tick, store resyncs), the decision layer bridging evaluations to
the rollback policy, webhooks, alerts and audit (:mod:`.decisions`), and the
Prometheus collector and service metrics (:mod:`.metrics`).

May import: :mod:`monitor.engine`, :mod:`monitor.ingest`, :mod:`monitor.config`,
:mod:`monitor.logs`, :mod:`rollback` and :mod:`detectors`. Never HTTP, the
wiring or the sandbox.
"""
