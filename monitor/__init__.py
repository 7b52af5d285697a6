"""driftgate's service: from Kafka records to drift, KPIs, verdicts and rollbacks.

The subpackages, from the bottom layer up (each imports only those below it;
`make test` checks this with import-linter, see ``[tool.importlinter]`` in
pyproject.toml):

- :mod:`monitor.config`, :mod:`monitor.logs`: settings and logging;
- :mod:`monitor.ingest`: sources and the codec, bytes to columns;
- :mod:`monitor.engine`: windows, event time, the label join, dedupe,
  evaluation, persistence and the state stores;
- :mod:`monitor.core`: the service loop, the decision layer, metrics;
- :mod:`monitor.serve`: HTTP, wiring, reports;
- :mod:`monitor.sandbox`: the embedded broker, local Redis, router stub,
  traffic and demo (never imported by the layers below);
- :mod:`monitor.cli`: the ``driftgate`` command.

Below all of them sit the top-level packages :mod:`rollback` (policy, webhooks,
alerts, audit) and :mod:`detectors` (the maths, no I/O).
"""
