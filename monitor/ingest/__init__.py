"""Ingest: from bytes on a topic to typed columns.

What lives here, by concern:

* sources — :mod:`.sources` (the ``Source`` and ``DeadLetterSink`` protocols,
  ``SourceBatch``, ``SourceStatus``, the in-memory dead-letter sink),
  :mod:`.kafka` (``KafkaSource``, the aiokafka client options, the Kafka
  dead-letter sink), :mod:`.poison` (record batches aiokafka cannot decode:
  found, skipped, reported), :mod:`.replay` (``ReplaySource``: a JSONL or
  Parquet file) and :mod:`.faust_source` (Faust agents);
* the codec — :mod:`.codec` (``EventCodec``, the front: picks a path per
  batch; the per-record path, validation and the rejection ``REASONS``),
  :mod:`.records` (the ``Record`` protocol, ``RawRecord``, ``Rejected``, the
  event structs), :mod:`.columns` (``PredictionColumns``, ``LabelColumns``,
  ``DecodedBatch``), :mod:`.slots` (``VersionSlots``, the cardinality caps),
  :mod:`.cloudevents` (binary-mode CloudEvents), :mod:`.fastpath` (the
  compiled yyjson fast path ``_fastdecode``, ``FAST_DECODE_AVAILABLE``) and
  :mod:`.batch` (the msgspec batch path).

May import: :mod:`monitor.config`, :mod:`monitor.logs` and :mod:`detectors`.
Never the engine, the service loop, HTTP or the sandbox.
"""
