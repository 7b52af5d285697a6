"""Sources: where records come from. All feed the service through one interface.

What lives here: the :class:`Source` and :class:`DeadLetterSink` protocols,
:class:`SourceBatch` (the records of one poll and the offsets to commit after
them), :class:`SourceStatus` and :class:`MemoryDeadLetterSink`. The sources
themselves:

* :class:`monitor.ingest.kafka.KafkaSource` — aiokafka consumer group over the
  predictions and labels topics (and :class:`~monitor.ingest.kafka.KafkaDeadLetterSink`);
  undecodable record batches are skipped (:mod:`monitor.ingest.poison`).
* :class:`monitor.ingest.replay.ReplaySource` — a JSONL or Parquet file of
  events, for backfills and offline evaluation.
* :class:`monitor.ingest.faust_source.FaustSource` — a Faust agent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from monitor.ingest.poison import SkippedBatch
from monitor.ingest.records import Record

__all__ = [
    "DeadLetterSink",
    "MemoryDeadLetterSink",
    "Source",
    "SourceBatch",
    "SourceStatus",
    "TopicPartition",
]

TopicPartition = tuple[str, int]


@dataclass
class SourceBatch:
    """Records of one poll, split by kind, and the offsets to commit after them.

    ``skipped`` lists the undecodable batches stepped over in this poll; their
    offsets are included in ``next_offsets``.
    """

    predictions: list[Record] = field(default_factory=list)
    labels: list[Record] = field(default_factory=list)
    unknown: list[Record] = field(default_factory=list)
    next_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    skipped: list[SkippedBatch] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.predictions) + len(self.labels) + len(self.unknown)


@dataclass
class SourceStatus:
    """What a source reports about its partitions, read at scrape time."""

    assigned: set[tuple[str, int]] = field(default_factory=set)
    lag: dict[tuple[str, int], int] = field(default_factory=dict)
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    dead_lettered: int = 0
    connected: bool = False


class Source(Protocol):
    """What the service needs from a source."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def poll(self, timeout_s: float) -> SourceBatch: ...

    async def commit(self, offsets: dict[TopicPartition, int]) -> None: ...

    def status(self) -> SourceStatus: ...

    @property
    def exhausted(self) -> bool: ...


class DeadLetterSink(Protocol):
    """Where rejected records go (with their reason)."""

    @property
    def sent(self) -> int: ...

    async def send(self, record: Record, reason: str, detail: str) -> None: ...

    async def flush(self) -> None: ...


class MemoryDeadLetterSink:
    """Keeps dead letters in a list (replay mode, unit tests)."""

    def __init__(self) -> None:
        self.records: list[tuple[Record, str, str]] = []

    @property
    def sent(self) -> int:
        return len(self.records)

    async def send(self, record: Record, reason: str, detail: str) -> None:
        self.records.append((record, reason, detail))

    async def flush(self) -> None:
        return None
