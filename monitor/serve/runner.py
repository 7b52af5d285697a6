"""Wiring: build a :class:`Service` from settings and run it with its HTTP API."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from monitor.config import Settings
from monitor.core.decisions import DecisionLayer
from monitor.core.service import Service
from monitor.engine.redis_store import RedisStore
from monitor.engine.store import StateStore
from monitor.ingest.kafka import KafkaDeadLetterSink, KafkaSource
from monitor.ingest.replay import ReplaySource
from monitor.ingest.sources import DeadLetterSink, MemoryDeadLetterSink, Source
from monitor.serve.http import build_app, decision_routes, start_http
from monitor.serve.reference_io import load_reference

__all__ = ["load_reference", "make_source", "run_service", "watch_refusals"]

log = structlog.get_logger("driftgate.runner")


def make_store(settings: Settings) -> StateStore | None:
    """The configured shared state store (None: the engine's own memory)."""
    st = settings.state
    if st.backend != "redis":
        return None
    return RedisStore(st.redis_url, prefix=st.key_prefix,
                      join_ttl_s=max(settings.join.ttl_seconds, settings.dedupe_horizon_seconds),
                      password=st.password_value(), username=st.username,
                      ssl_ca_file=str(st.tls_ca_file) if st.tls_ca_file else None,
                      socket_timeout_s=st.socket_timeout_seconds)


def make_source(settings: Settings, replay_file: Path | None = None) -> Source:
    """The source named by ``settings.source``."""
    if settings.source == "replay" or replay_file is not None:
        if replay_file is None:
            raise ValueError("source 'replay' needs a file")
        return ReplaySource(replay_file, settings.kafka.predictions_topic,
                            settings.kafka.labels_topic, settings.fields.label,
                            settings.fields.score)
    if settings.source == "faust":
        from monitor.ingest.faust_source import FaustSource

        return FaustSource(settings)
    return KafkaSource(settings.kafka)


def watch_refusals(service: Service, layer: DecisionLayer) -> None:
    """Tell ``layer`` which (model, version) events the codec refuses (any reason:
    cardinality caps, bad scores, timestamps from the future ...), so that a
    refused champion or canary is reported as unmonitored instead of ``ok``."""
    service.codec.on_refused = layer.note_refused


async def run_service(settings: Settings, source: Source | None = None,
                      dead_letters: DeadLetterSink | None = None,
                      install_signals: bool = True, until_exhausted: bool = False,
                      serve_http: bool = True,
                      started: Callable[[Service], None] | None = None) -> Service:
    """Run the service until SIGTERM/SIGINT (or the source runs out).

    Everything is built (and the configuration checked) before anything is
    opened; whatever was opened is closed on every way out, start-up errors
    included.
    """
    src = source if source is not None else make_source(settings)
    sink: Any = dead_letters
    own_sink = False
    if sink is None:
        if isinstance(src, ReplaySource):
            sink = MemoryDeadLetterSink()
        else:
            sink = KafkaDeadLetterSink(settings.kafka)
            own_sink = True
    store = make_store(settings)
    service = Service(settings, src, sink, load_reference(settings), store=store,
                      instance_id=settings.state.instance_id)
    if isinstance(src, KafkaSource):
        service.wire_rebalance_hooks(src)
    publish = None
    if isinstance(sink, KafkaDeadLetterSink):
        kafka_sink = sink

        async def publish(topic: str, key: bytes, value: bytes) -> None:
            await kafka_sink.publish(topic, value, key=key)

    layer = DecisionLayer(settings, lambda: service.engine, publish=publish,
                          claim=store.claim if store is not None else None)
    watch_refusals(service, layer)
    service.tick_handlers.append(layer.on_tick)
    service.extra_metrics.append(layer.metrics)
    service.decisions = layer
    loop = asyncio.get_running_loop()
    runner = None
    sink_started = False
    signals_installed = False
    try:
        if own_sink:
            sink_started = True  # a half-started producer is stopped too
            await sink.start()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, service.stopping.set)
            signals_installed = True
        if serve_http:
            runner, port = await start_http(
                build_app(service, decision_routes(service, layer)), settings.http.host,
                settings.http.port)
            service.http_port = port
            log.info("http listening", host=settings.http.host, port=port)
        if started is not None:
            started(service)
        await service.run(until_exhausted=until_exhausted)
    finally:
        await layer.drain(timeout=settings.webhooks.timeout_seconds * 2)
        await layer.aclose()
        if runner is not None:
            await runner.cleanup()
        if sink_started:
            await sink.stop()
        if signals_installed:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
    return service
