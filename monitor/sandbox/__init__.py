"""The embedded playground: what ``make demo`` and the tests start.

What lives here: the embedded Kafka-protocol broker (:mod:`.broker`), a local
Redis (:mod:`.local_redis`), the traffic-router stub (:mod:`.router_stub`),
the synthetic fraud traffic generator (:mod:`.traffic`, :mod:`.traffic_cli`)
and the demo (:mod:`.demo`).

May import everything in :mod:`monitor`; nothing in the service core imports it.
"""
