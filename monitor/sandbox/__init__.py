"""The embedded playground: what ``make demo``, the tests and the benchmarks start.

Modules and their public helpers:

* :mod:`.broker`: :class:`~.broker.EmbeddedBroker`, the embedded
  Kafka-protocol broker (tansu) as a child process: start/stop, pause/resume,
  ``create_topics``;
* :mod:`.tansu`: the broker process itself: ``resolve_binary``,
  ``signal_group``, ``all_threads_stopped``, ``kill_leftover``;
* :mod:`.kafka_admin`: the broker as a Kafka client sees it: ``probe_kafka``
  (readiness), ``create_topics``, ``validate_topics``, ``describe_topic_error``;
* :mod:`.ports`: ``free_port`` (the one free-port helper, used by the tests and
  benchmarks too) and ``validate_host``;
* :mod:`.local_redis`: :class:`~.local_redis.LocalRedis`, a throwaway
  ``redis-server``;
* :mod:`.router_stub`: :class:`~.router_stub.RouterStub` (and ``Received``), the
  traffic router that verifies signed webhooks and holds the traffic split;
* :mod:`.traffic`: the synthetic fraud traffic: ``TrafficGenerator``,
  ``TrafficBatch``, ``healthy_reference``, ``score``, ``NUMERIC_FEATURES``,
  ``CATEGORIES``;
* :mod:`.traffic_cli`: ``run_traffic`` (``driftgate traffic``);
* :mod:`.demo`: ``run_demo`` (``driftgate demo``) and what tests and the
  latency benchmark reuse of it: ``demo_settings``, ``fit_demo_reference``,
  ``LiveTraffic``.

May import everything in :mod:`monitor`; nothing in the service core imports it.
"""
