"""How the engine's state is named in a store: slice fields and counter keys.

Every store key and field the engine writes is encoded and decoded here, so
the stored format (Redis hash fields, :class:`monitor.engine.store.MemoryStore`
keys) has one definition:

* a slice field is ``model SEP version SEP kind SEP slice id``;
* a version's counter is ``model SEP version SEP name`` (:class:`CounterKey`);
* an instance-wide counter is ``SEP SEP name``, grouped ones
  ``SEP SEP group:key`` (:func:`global_key`, :func:`parse_global_key`).

>>> CounterKey("m", "v1", "tp").encode() == "m\\x1fv1\\x1ftp"
True
>>> CounterKey.decode(global_key("watermark")) is None
True
>>> parse_global_key(global_key("invalid", "prediction", "schema"))
('invalid', 'prediction:schema')
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = [
    "ACTIVE_UNTIL_KEY",
    "GLOBAL_PREFIX",
    "SEP",
    "SEQ_KEY",
    "WATERMARK_KEY",
    "CounterKey",
    "SliceKey",
    "global_key",
    "parse_global_key",
    "parse_slice_field",
    "slice_field",
]

#: separator of the parts of a key (never inside a model, version or kind name)
SEP = "\x1f"
#: prefix of an instance-wide counter (no model, no version)
GLOBAL_PREFIX = SEP + SEP

SliceKey = tuple[str, str, str, int]  # model, version, kind, slice id


class CounterKey(NamedTuple):
    """A per-version counter: ``model SEP version SEP name``."""

    model: str
    version: str
    name: str

    def encode(self) -> str:
        return SEP.join(self)

    @classmethod
    def decode(cls, raw: str) -> CounterKey | None:
        """The key of a per-version counter; None for any other counter."""
        parts = raw.split(SEP)
        if len(parts) != 3 or not parts[0]:
            return None
        return cls(*parts)


def global_key(*parts: str) -> str:
    """An instance-wide counter: ``SEP SEP`` and its parts joined by ``:``."""
    return GLOBAL_PREFIX + ":".join(parts)


def parse_global_key(raw: str) -> tuple[str, str] | None:
    """``(group, rest)`` of an instance-wide counter, split at the first ``:``
    (``rest`` is empty for an ungrouped one); None for a per-version one."""
    if not raw.startswith(GLOBAL_PREFIX):
        return None
    group, _, rest = raw[len(GLOBAL_PREFIX):].partition(":")
    return group, rest


#: counter field holding an instance's last commit sequence number
SEQ_KEY = global_key("seq")
#: counter of an instance's event-time watermark (the minimum over its active
#: partitions), and until when (wall clock) that instance counts as active
WATERMARK_KEY = global_key("watermark")
ACTIVE_UNTIL_KEY = global_key("active_until")


def slice_field(key: SliceKey) -> str:
    m, v, kind, sid = key
    return SEP.join((m, v, kind, str(sid)))


def parse_slice_field(raw: str) -> SliceKey:
    m, v, kind, sid = raw.split(SEP)
    return (m, v, kind, int(sid))
