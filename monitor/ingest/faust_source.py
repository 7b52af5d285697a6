"""Faust source: the predictions and labels topics read by Faust agents.

For teams that already run `faust-streaming`_ workers (``driftgate run
--source faust``). A :class:`faust.App` is built on :meth:`FaustSource.start`
and started as a plain ``mode`` service *inside the caller's running event
loop*: no :class:`faust.Worker` (which would install signal handlers, set up
logging and own the loop), no web server, in-memory tables only.

Two agents, one per topic, buffer events with ``stream.take_events(max_,
within=...)``. Each buffered batch is converted to :class:`RawRecord`\\ s and
handed to :meth:`FaustSource.poll` through a queue together with a future;
the agent awaits that future before it asks for the next batch. The service
calls :meth:`FaustSource.commit` after the batch's effects are stored, which
resolves the future; only then does ``take_events`` ack the events, and Faust
commits acked offsets every ``commit_interval_s`` (at-least-once, as with
:class:`monitor.ingest.kafka.KafkaSource`).

On :meth:`FaustSource.stop`, messages of batches that were handed out (or
queued) but not committed are pinned (their reference count is raised) so
that Faust's own cleanup cannot ack them; they are redelivered to whichever
consumer owns the partition next.

Known limits against the embedded broker (tansu): the idempotent producer
and transactions do not work, so the app always uses Faust's default
``at_least_once`` guarantee (which leaves ``enable_idempotence`` off).

.. _faust-streaming: https://github.com/faust-streaming/faust

Examples
--------
>>> from monitor.config import load_settings
>>> settings = load_settings(None, models=[{"name": "card-fraud", "champion": "v1"}],
...                          reference={"fit_from_champion_events": 100})
>>> source = FaustSource(settings)
>>> source.exhausted, source.status().connected
(False, False)
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog

from monitor.config import KafkaSettings, Settings
from monitor.ingest.kafka import kafka_client_options
from monitor.ingest.records import RawRecord
from monitor.ingest.sources import SourceBatch, SourceStatus, TopicPartition

__all__ = ["FaustSource"]

log = structlog.get_logger("driftgate.source.faust")


@dataclass(eq=False)
class _Delivery:
    """One agent batch on its way to the service, and the future the agent awaits."""

    kind: str  # "predictions" | "labels"
    records: list[RawRecord]
    next_offsets: dict[TopicPartition, int]
    messages: list[Any]
    done: asyncio.Future[None]
    pinned: bool = field(default=False)


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not raw:
        return []
    items: Iterable[Any] = raw.items() if isinstance(raw, Mapping) else raw
    out: list[tuple[str, bytes]] = []
    for key, value in items:
        name = key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)
        if value is None:
            data = b""
        elif isinstance(value, bytes | bytearray | memoryview):
            data = bytes(value)
        else:
            data = str(value).encode("utf-8")
        out.append((name, data))
    return out


def _record(message: Any) -> RawRecord:
    """A Faust message (``event.message``) as a client-independent record."""
    ts = message.timestamp
    timestamp_ms = (round(float(ts) * 1000.0)
                    if ts is not None and math.isfinite(float(ts)) else None)
    value = message.value
    key = message.key
    return RawRecord(
        topic=message.topic, partition=int(message.partition), offset=int(message.offset),
        value=bytes(value) if value is not None else None,
        headers=_headers(message.headers), timestamp_ms=timestamp_ms,
        key=bytes(key) if key is not None else None,
    )


def _broker_urls(bootstrap_servers: str) -> list[str]:
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    if not hosts:
        raise ValueError(f"kafka.bootstrap_servers names no broker: {bootstrap_servers!r}")
    return [h if "://" in h else f"kafka://{h}" for h in hosts]


def _credentials(cfg: KafkaSettings) -> dict[str, Any]:
    """Faust ``broker_credentials`` / ``ssl_context`` for the security settings."""
    if cfg.security_protocol == "PLAINTEXT":
        return {}
    import faust

    opts = kafka_client_options(cfg)
    ctx = opts.get("ssl_context")
    if cfg.security_protocol == "SSL":
        return {"broker_credentials": faust.SSLCredentials(ctx)}
    creds = faust.SASLCredentials(username=cfg.sasl_username, password=cfg.password(),
                                  ssl_context=ctx, mechanism=cfg.sasl_mechanism)
    return {"broker_credentials": creds}


class FaustSource:
    """Faust agents over the predictions and labels topics.

    Parameters
    ----------
    settings : Settings
        Brokers, topics, group id (the Faust app id), batch size
        (``kafka.max_poll_records``) and wait (``kafka.fetch_max_wait_ms``).
    commit_interval_s : float
        How often Faust commits acked offsets (``broker_commit_interval``).
    stop_timeout_s : float
        Bound on :meth:`stop`; the app is abandoned after that.
    start_timeout_s : float
        Bound on :meth:`start` (the app start includes the first rebalance).

    Raises
    ------
    ValueError
        If a timeout is not a finite number > 0 or the broker list is empty.
    """

    def __init__(self, settings: Settings, commit_interval_s: float = 0.2,
                 stop_timeout_s: float = 15.0, start_timeout_s: float = 60.0) -> None:
        for name, value in (("commit_interval_s", commit_interval_s),
                            ("stop_timeout_s", stop_timeout_s),
                            ("start_timeout_s", start_timeout_s)):
            if (isinstance(value, bool) or not isinstance(value, int | float)
                    or not math.isfinite(value) or value <= 0):
                raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
        self.settings = settings
        self.cfg = settings.kafka
        self._brokers = _broker_urls(self.cfg.bootstrap_servers)
        self.commit_interval_s = float(commit_interval_s)
        self.stop_timeout_s = float(stop_timeout_s)
        self.start_timeout_s = float(start_timeout_s)
        self.batch_max = self.cfg.max_poll_records
        self.batch_within_s = max(self.cfg.fetch_max_wait_ms / 1000.0, 0.01)
        self._app: Any = None
        self._datadir: str | None = None
        self._queue: asyncio.Queue[_Delivery] | None = None
        self._delivered: list[_Delivery] = []
        self._committed: dict[TopicPartition, int] = {}
        self._running = False
        self._stopping = False

    # ---------------------------------------------------------------- protocol
    @property
    def exhausted(self) -> bool:
        return False

    @property
    def app(self) -> Any:
        """The running :class:`faust.App` (``None`` before :meth:`start`)."""
        return self._app

    def _build_app(self) -> Any:
        import faust

        cfg = self.cfg
        self._datadir = tempfile.mkdtemp(prefix="driftgate-faust-")
        session_s = cfg.session_timeout_ms / 1000.0
        app = faust.App(
            cfg.group_id,
            broker=self._brokers,
            broker_client_id=cfg.client_id,
            broker_commit_interval=self.commit_interval_s,
            broker_commit_every=max(self.batch_max, 1),
            broker_session_timeout=session_s,
            broker_heartbeat_interval=cfg.heartbeat_interval_ms / 1000.0,
            broker_rebalance_timeout=max(session_s, 10.0),
            broker_max_poll_records=cfg.max_poll_records,
            consumer_auto_offset_reset=cfg.auto_offset_reset,
            value_serializer="raw",
            key_serializer="raw",
            store="memory://",
            web_enabled=False,
            topic_disable_leader=True,
            topic_allow_declare=False,
            stream_wait_empty=False,
            processing_guarantee="at_least_once",
            datadir=self._datadir,
            autodiscover=False,
            loop=asyncio.get_running_loop(),
            **_credentials(cfg),
        )
        for kind, topic_name in (("predictions", cfg.predictions_topic),
                                 ("labels", cfg.labels_topic)):
            topic = app.topic(topic_name, value_serializer="raw", key_serializer="raw")
            app.agent(topic, name=f"driftgate-{kind}")(self._agent_fn(kind))
        return app

    def _agent_fn(self, kind: str) -> Any:
        source = self

        async def agent(stream: Any) -> None:
            loop = asyncio.get_running_loop()
            async for events in stream.take_events(source.batch_max,
                                                   within=source.batch_within_s):
                if not events:
                    continue
                messages = [ev.message for ev in events]
                records = [_record(m) for m in messages]
                offsets: dict[TopicPartition, int] = {}
                for rec in records:
                    tp = (rec.topic, rec.partition)
                    offsets[tp] = max(offsets.get(tp, 0), rec.offset + 1)
                item = _Delivery(kind, records, offsets, messages, loop.create_future())
                queue = source._queue
                if queue is None or source._stopping:
                    source._pin(item)
                    await item.done  # cancelled when the app stops its agents
                    continue
                queue.put_nowait(item)
                # Ack (inside take_events) only after the service committed.
                await item.done

        agent.__name__ = f"driftgate_{kind}_agent"
        agent.__qualname__ = agent.__name__
        return agent

    async def start(self) -> None:
        """Build the Faust app and start it in the running loop."""
        if self._app is not None:
            raise RuntimeError("FaustSource already started")
        self._queue = asyncio.Queue()
        self._stopping = False
        self._app = self._build_app()
        try:
            await asyncio.wait_for(self._app.start(), timeout=self.start_timeout_s)
        except BaseException:
            await self.stop()
            raise
        self._running = True
        log.info("faust app started", app_id=self.cfg.group_id,
                 topics=[self.cfg.predictions_topic, self.cfg.labels_topic])

    def _pin(self, item: _Delivery) -> None:
        """Hold an extra reference on each message so Faust never acks it."""
        if item.pinned:
            return
        for message in item.messages:
            message.incref()
        item.pinned = True

    async def stop(self) -> None:
        """Stop the app (bounded by ``stop_timeout_s``); uncommitted batches are not acked."""
        app, self._app = self._app, None
        self._stopping = True
        self._running = False
        pending = list(self._delivered)
        self._delivered = []
        queue, self._queue = self._queue, None
        if queue is not None:
            while not queue.empty():
                pending.append(queue.get_nowait())
        for item in pending:
            self._pin(item)
        try:
            if app is not None:
                # commit what the service has committed (acks happen when the
                # agents resume), then stop the app
                for _ in range(3):
                    await asyncio.sleep(0)
                with contextlib.suppress(Exception):
                    consumer = app.consumer
                    await asyncio.wait_for(consumer.commit(), timeout=self.stop_timeout_s / 3)
                try:
                    await asyncio.wait_for(app.stop(), timeout=self.stop_timeout_s)
                except TimeoutError:
                    log.warning("faust app did not stop in time", timeout_s=self.stop_timeout_s)
                except Exception:
                    log.exception("faust app failed to stop cleanly")
        finally:
            for item in pending:
                if not item.done.done():
                    item.done.cancel()
            if self._datadir is not None:
                shutil.rmtree(self._datadir, ignore_errors=True)
                self._datadir = None

    async def poll(self, timeout_s: float) -> SourceBatch:
        """The next agent batch(es), or an empty batch after ``timeout_s``."""
        batch = SourceBatch()
        queue = self._queue
        if queue is None:
            await asyncio.sleep(timeout_s)
            return batch
        app = self._app
        if app is not None and getattr(app, "crashed", False):
            raise RuntimeError(f"faust app crashed: {getattr(app, 'crash_reason', None)!r}")
        try:
            first = await asyncio.wait_for(queue.get(), timeout=timeout_s)
        except TimeoutError:
            return batch
        items = [first]
        while not queue.empty():
            items.append(queue.get_nowait())
        for item in items:
            target = batch.predictions if item.kind == "predictions" else batch.labels
            target.extend(item.records)
            for tp, off in item.next_offsets.items():
                batch.next_offsets[tp] = max(batch.next_offsets.get(tp, 0), off)
            self._delivered.append(item)
        return batch

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Mark offsets processed: release the agents' batches they cover."""
        for tp, off in offsets.items():
            self._committed[tp] = max(self._committed.get(tp, 0), off)
        remaining: list[_Delivery] = []
        for item in self._delivered:
            if all(self._committed.get(tp, -1) >= off for tp, off in item.next_offsets.items()):
                if not item.done.done():
                    item.done.set_result(None)
            else:
                remaining.append(item)
        self._delivered = remaining
        await asyncio.sleep(0)  # let the agents ack

    def status(self) -> SourceStatus:
        assigned: set[TopicPartition] = set()
        lag: dict[TopicPartition, int] = {}
        app = self._app
        connected = False
        if app is not None and self._running:
            try:
                consumer = app.consumer
                tps = consumer.assignment()
            except Exception:
                tps = set()
            else:
                connected = not getattr(app, "crashed", False)
                for tp in tps:
                    key = (tp.topic, tp.partition)
                    assigned.add(key)
                    try:
                        hw = consumer.highwater(tp)
                    except Exception:
                        hw = None
                    if hw is None:
                        continue
                    done = self._committed.get(key, 0)
                    lag[key] = max(int(hw) - done, 0)
        return SourceStatus(assigned=assigned, lag=lag, committed=dict(self._committed),
                            connected=connected)

    @property
    def committed(self) -> dict[TopicPartition, int]:
        """Offsets the service has committed (processed), per partition."""
        return dict(self._committed)
