"""Replay: a JSONL or Parquet file of events as a source, for backfills and offline evaluation.

What lives here: :class:`ReplaySource`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import msgspec

from monitor.ingest.records import RawRecord
from monitor.ingest.sources import SourceBatch, SourceStatus, TopicPartition

__all__ = ["ReplaySource"]


class ReplaySource:
    """Replays a JSONL or Parquet file of events, in file order.

    A row is a label event when it has the label field and no score field;
    otherwise a prediction. Each row becomes a record with offset = row number.
    """

    def __init__(self, path: str | Path, predictions_topic: str, labels_topic: str,
                 label_field: str = "label", score_field: str = "score",
                 batch_size: int = 5000) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"replay file {str(self.path)!r} does not exist")
        suffix = self.path.suffix.lower()
        if suffix not in (".jsonl", ".json", ".ndjson", ".parquet"):
            raise ValueError(f"replay file must be .jsonl or .parquet, got {suffix!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.predictions_topic = predictions_topic
        self.labels_topic = labels_topic
        self.label_field = label_field
        self.score_field = score_field
        self.batch_size = batch_size
        self._rows: Iterator[tuple[int, bytes]] | None = None
        self._done = False
        self._read = 0

    @property
    def exhausted(self) -> bool:
        return self._done

    def _iter_rows(self) -> Iterator[tuple[int, bytes]]:
        if self.path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            enc = msgspec.json.Encoder()
            table = pq.read_table(self.path)
            for i, row in enumerate(table.to_pylist()):
                yield i, enc.encode({k: v for k, v in row.items() if v is not None})
        else:
            with self.path.open("rb") as fh:
                for i, line in enumerate(fh):
                    line = line.strip()
                    if line:
                        yield i, line

    async def start(self) -> None:
        self._rows = self._iter_rows()

    async def stop(self) -> None:
        self._rows = None

    def _is_label(self, value: bytes) -> bool:
        lf = f'"{self.label_field}"'.encode()
        sf = f'"{self.score_field}"'.encode()
        return lf in value and sf not in value

    async def poll(self, timeout_s: float) -> SourceBatch:
        batch = SourceBatch()
        if self._rows is None or self._done:
            return batch
        for i, value in self._rows:
            if self._is_label(value):
                batch.labels.append(RawRecord(self.labels_topic, 0, i, value))
            else:
                batch.predictions.append(RawRecord(self.predictions_topic, 0, i, value))
            batch.next_offsets[("replay", 0)] = i + 1
            if len(batch) >= self.batch_size:
                break
        else:
            self._done = True
        self._read += len(batch)
        await asyncio.sleep(0)
        return batch

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        return None

    def status(self) -> SourceStatus:
        return SourceStatus(assigned={("replay", 0)}, connected=True)
