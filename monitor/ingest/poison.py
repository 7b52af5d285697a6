"""Poison batches: record batches aiokafka cannot decode, found and stepped over.

What lives here: :data:`SKIP_REASONS`, :class:`SkippedBatch` (offsets skipped
on one partition, reported in :attr:`monitor.ingest.sources.SourceBatch.skipped`),
:class:`Undecodable` and :func:`locate_undecodable`, which tells a batch that
cannot be decoded (unsupported or unknown codec, CRC mismatch, corrupt or
undecompressable batch) from any other fetch failure.
:class:`monitor.ingest.kafka.KafkaSource` seeks past such a batch; every other
fetch failure is transient and retried.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from monitor.ingest.records import RawRecord

__all__ = ["SKIP_REASONS", "SkippedBatch", "Undecodable", "locate_undecodable"]

#: Why a record batch could not be decoded (the ``reason`` label of
#: ``driftgate_skipped_batches_total``).
SKIP_REASONS = ("unsupported_codec", "crc_mismatch", "decompression_failed", "corrupt_batch")


@dataclass(frozen=True, slots=True)
class SkippedBatch:
    """Offsets ``first_offset..last_offset`` (inclusive) of one partition that
    were skipped because their record batch could not be decoded."""

    topic: str
    partition: int
    first_offset: int
    last_offset: int
    reason: str
    detail: str

    @property
    def offsets(self) -> int:
        return self.last_offset - self.first_offset + 1

    def dead_letter(self) -> RawRecord:
        """What can be recovered, as a dead letter: no value (the bytes did not
        decode), the offset range in a ``driftgate-offsets`` header; the sink adds
        reason, detail and ``driftgate-source`` (topic/partition/first offset)."""
        span = f"{self.first_offset}-{self.last_offset}".encode()
        return RawRecord(self.topic, self.partition, self.first_offset, None,
                         headers=(("driftgate-offsets", span),))


@dataclass
class Undecodable:
    """Where aiokafka failed to decode a fetched record batch, learnt from the
    exception's traceback (see :func:`locate_undecodable`).

    ``start..end`` (end exclusive) are the offsets to skip on ``tp``; ``exact``
    is False when the batch's bounds could not be trusted, and ``end`` is then
    ``start + 1``. ``kept`` holds the records aiokafka had already taken out of
    its buffers in the failed call (other partitions, and the bad partition's
    records before the batch): their positions have moved on, so they must be
    returned, not dropped.
    """

    tp: Any
    start: int
    end: int
    exact: bool
    reason: str
    error: str
    kept: dict[Any, list[Any]] = field(default_factory=dict)
    kept_known: bool = True


def _decode_reason(exc: BaseException, frames: Sequence[types.FrameType]) -> str:
    from aiokafka.errors import CorruptRecordException, KafkaError, UnsupportedCodecError

    if isinstance(exc, UnsupportedCodecError):
        return "unsupported_codec"  # unknown codec id, or its library is missing
    if isinstance(exc, CorruptRecordException):
        return "crc_mismatch" if "crc" in str(exc).lower() else "corrupt_batch"
    if not isinstance(exc, KafkaError) and any(
            "uncompress" in f.f_code.co_name or "decode" in f.f_code.co_name for f in frames):
        return "decompression_failed"  # the codec flag does not match the payload
    return "corrupt_batch"


def locate_undecodable(exc: BaseException, highwater: Callable[[Any], int | None]
                       ) -> Undecodable | None:
    """Tell a record batch aiokafka cannot decode from any other fetch failure.

    aiokafka decodes fetched batches lazily, while ``getmany`` drains its buffer
    (``PartitionRecords._unpack_records``, fetcher.py): an unknown codec or a
    missing codec library (``UnsupportedCodecError``), a CRC mismatch or a
    malformed batch (``CorruptRecordException``) and a payload that does not
    decompress (the codec's own exception, e.g. ``gzip.BadGzipFile`` or
    cramjam's ``DecompressionError``) surface there, for one partition, out of
    ``getmany``. The exception names neither the partition nor the offsets, and
    the same batch is fetched and fails again on every retry.

    Choice: read the failing generator's frame in the traceback. Its ``self`` is
    the partition's ``PartitionRecords`` (``_tp``; ``next_fetch_offset``, the
    offset after the last record handed out) and its ``next_batch`` the batch
    being decoded (``base_offset``, ``next_offset``). The batch's end is trusted
    only when it is past the start and not past the partition's high watermark,
    and it is capped by the base offset of the batch that follows it in the same
    fetch response, when that one parses (the length and offset-delta fields
    are not all covered by the CRC). Otherwise the bounds are unknown and one
    offset is skipped (the next fetch then starts at the offset after it and
    meets the batch again, until past it). Seeking to ``position + 1`` blindly
    instead would cost one fetch per record of the batch every time.

    The same traceback gives what aiokafka had drained in the failed call
    (``drained`` in ``Fetcher.fetched_records`` and ``ret_list`` in
    ``FetchResult.getall``): other partitions' positions have already moved
    past those records, so they are kept and returned, not lost.

    Returns None when the failure is not a decode failure (no such frame): those
    are transient (broker down, timeouts, rebalances, not-leader) or bugs.
    """
    from aiokafka.consumer.fetcher import PartitionRecords

    frames: list[types.FrameType] = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    decoder: dict[str, Any] | None = None
    drained: dict[Any, list[Any]] | None = None
    ret_list: list[Any] = []
    for frame in frames:
        name, local = frame.f_code.co_name, frame.f_locals
        if name == "fetched_records" and isinstance(local.get("drained"), dict):
            drained = local["drained"]
        elif name == "getall" and isinstance(local.get("ret_list"), list):
            ret_list = local["ret_list"]
        elif name == "_unpack_records" and isinstance(local.get("self"), PartitionRecords):
            decoder = dict(local)
    if decoder is None:
        return None
    records = decoder["self"]
    tp = records._tp
    start = int(records.next_fetch_offset)
    batch = decoder.get("next_batch")
    bounds: list[int] = []
    try:
        if batch is not None and int(batch.next_offset) > start:
            # the batch being decoded (not the last good one: its end is ``start``)
            start = max(start, int(batch.base_offset))
            bounds.append(int(batch.next_offset))
            following = decoder.get("records")
            if following is not None and following.has_next():
                after = following.next_batch()
                if after is not None and int(after.base_offset) > start:
                    bounds.append(int(after.base_offset))
    except Exception:  # noqa: S110 - a garbled header: the bounds stay unknown
        pass
    hw = highwater(tp)
    bounds = [b for b in bounds if b > start and (hw is None or b <= hw)]
    exact = bool(bounds)
    kept = {t: list(msgs) for t, msgs in (drained or {}).items() if msgs}
    if ret_list:
        kept[tp] = list(ret_list)
    return Undecodable(tp=tp, start=start, end=min(bounds) if exact else start + 1,
                       exact=exact, reason=_decode_reason(exc, frames),
                       error=f"{type(exc).__name__}: {exc}", kept=kept,
                       kept_known=drained is not None)
