"""Ingest: from bytes on a topic to typed columns.

What lives here: the sources (:mod:`.sources`: Kafka with poison-batch
handling, file replay; :mod:`.faust_source`), and the codec
(:mod:`.codec`: record types, columns, CloudEvents, the compiled yyjson fast
path ``_fastdecode`` and the msgspec paths, validation and dead-letter reasons).

May import: :mod:`monitor.config`, :mod:`monitor.logs` and :mod:`detectors`.
Never the engine, the service loop, HTTP or the sandbox.
"""
