"""Records and events: what the codec reads, and the event structs it decodes to.

What lives here: the :class:`Record` protocol (aiokafka's ``ConsumerRecord``
fits it), :class:`RawRecord` for every other source, :class:`Rejected` (a
record with the reason it was refused) and :class:`RejectError`, which the
per-record path raises to refuse one. :func:`event_types` builds the msgspec
structs prediction and label events decode into, from the configured field
names and features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Protocol

import msgspec

from monitor.config import Settings

__all__ = [
    "EventId",
    "EventTypes",
    "Name",
    "RawRecord",
    "Record",
    "RejectError",
    "Rejected",
    "Timestamp",
    "event_types",
]

EventId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
Timestamp = float | Annotated[datetime, msgspec.Meta(tz=True)]


class Record(Protocol):
    """What the codec reads of a record: aiokafka's ``ConsumerRecord`` and
    :class:`RawRecord` both fit, so Kafka records are decoded without a copy."""

    @property
    def topic(self) -> str: ...

    @property
    def partition(self) -> int: ...

    @property
    def offset(self) -> int: ...

    @property
    def value(self) -> bytes | None: ...

    @property
    def headers(self) -> Sequence[tuple[str, bytes]]: ...

    @property
    def key(self) -> bytes | None: ...


@dataclass(slots=True)
class RawRecord:
    """One record as read from a source other than the Kafka consumer."""

    topic: str
    partition: int
    offset: int
    value: bytes | None
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp_ms: int | None = None
    key: bytes | None = None


@dataclass(slots=True)
class Rejected:
    """A record that was not accepted, with the reason and a readable detail."""

    record: Record
    reason: str
    detail: str


class RejectError(Exception):
    """Raised on the per-record path to refuse one record with ``reason``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class EventTypes:
    """The msgspec structs of one configuration's events (see :func:`event_types`)."""

    features: Any
    prediction: Any
    label: Any


def event_types(settings: Settings) -> EventTypes:
    """The ``Features``, ``Prediction`` and ``Label`` structs for ``settings``.

    Struct fields have fixed names (``n0``, ``n1``, ... for the numeric features
    first, then ``c0``, ... for the categorical ones; ``event_id``, ``model``,
    ...) and are renamed to the configured field names on the wire.
    """
    f = settings.fields
    feat_fields: list[tuple[str, Any, Any]] = []
    rename: dict[str, str] = {}
    for i, name in enumerate(settings.features.numeric):
        feat_fields.append((f"n{i}", float | None, None))
        rename[f"n{i}"] = name
    for i, name in enumerate(settings.features.categorical):
        feat_fields.append((f"c{i}", str | int | float | bool | None, None))
        rename[f"c{i}"] = name
    # gc=False: decoded events hold only scalars (and the Features struct), so
    # they can never be part of a reference cycle; untracked, a batch of
    # thousands of them does not trigger and lengthen cyclic-GC passes
    features_type = msgspec.defstruct("Features", feat_fields, rename=rename, gc=False)
    pred_rename = {
        "event_id": f.event_id, "model": f.model, "model_version": f.model_version,
        "ts": f.ts, "score": f.score, "decision": f.decision, "amount": f.amount,
        "features": f.features,
    }
    prediction_type = msgspec.defstruct(
        "Prediction",
        [
            ("event_id", EventId),
            ("model", Name),
            ("model_version", Name),
            ("ts", Timestamp),
            ("score", float),
            ("decision", bool | int | None, None),
            ("amount", float | None, None),
            ("features", features_type, msgspec.field(default_factory=features_type)),
        ],
        rename=pred_rename,
        gc=False,
    )
    label_type = msgspec.defstruct(
        "Label",
        [("event_id", EventId), ("label", int | bool), ("ts", Timestamp | None, None),
         ("amount", float | None, None)],
        rename={"event_id": f.event_id, "label": f.label, "ts": f.ts, "amount": f.amount},
        gc=False,
    )
    return EventTypes(features_type, prediction_type, label_type)
