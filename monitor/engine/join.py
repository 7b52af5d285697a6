"""The prediction-label join buffer and its persistence in a state store.

A bounded buffer matches labels to predictions by event id in either arrival
order: :class:`JoinBuffer` keeps the predictions waiting for their label
(:data:`PendingEntry`) and the labels that came before their prediction
(:data:`OrphanEntry`), in arrival order, with their expiry by event time and
their capacity caps. With a shared state store it also logs its changes and
writes them per topic-partition as msgpack blobs (changes, and snapshots once
the changes outgrow them), together with the ids seen there by dedupe
(:mod:`.join_ids`); :meth:`JoinBuffer.load` takes stored partitions over.

The stored blob format (read by earlier and later versions alike): a msgpack
array ``[version table, [[event id, entry]...], [deleted event id...]]``; an
entry is an array of the entry's fields in order, a pending entry naming its
version by index into the blob's table.
"""

from __future__ import annotations

import heapq
import itertools
import math
import operator
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import msgspec
import numpy as np

from monitor.config import Settings
from monitor.engine.dedupe import SeenIds
from monitor.engine.join_ids import IdFields, drop_expired_ids, ids_delta, load_ids
from monitor.engine.store import Commit, JoinLog
from monitor.ingest.columns import LabelColumns

__all__ = ["O_AMOUNT", "O_LABEL", "O_PARTITION", "O_TS", "P_AMOUNT", "P_DECISION", "P_PARTITION",
           "P_SLICE", "P_TS", "P_VERSION", "JoinBuffer", "OrphanEntry", "PendingEntry",
           "orphan_entry", "pending_entry"]

TP = tuple[str, int]


#: A prediction waiting for its label: ``(version, slice_id, decision, amount,
#: ts, partition)``, read by the named indices below. ``version`` indexes the
#: buffer's version table (:attr:`JoinBuffer.vkeys`); ``ts`` is the event time.
#:
#: Plain tuples, not NamedTuple instances: CPython's collector stops tracking a
#: tuple of atomic values (ints, floats, bools) the first time it survives a
#: collection, but never a tuple subclass, so a million NamedTuple entries add
#: ~180 ms to every full collection (measured) where plain ones add ~1.5 ms.
PendingEntry = tuple[int, int, bool, float, float, int]
P_VERSION: Final = 0
P_SLICE: Final = 1
P_DECISION: Final = 2
P_AMOUNT: Final = 3
P_TS: Final = 4
P_PARTITION: Final = 5

#: A label that came before its prediction: ``(label, amount, ts, partition)``;
#: ``ts`` is its own event time, else the watermark at arrival.
OrphanEntry = tuple[int, float, float, int]
O_LABEL: Final = 0
O_AMOUNT: Final = 1
O_TS: Final = 2
O_PARTITION: Final = 3


def pending_entry(version: int, slice_id: int, decision: bool, amount: float, ts: float,
                  partition: int) -> PendingEntry:
    """A :data:`PendingEntry` from its fields, by name.

    >>> e = pending_entry(version=0, slice_id=7, decision=True, amount=12.5, ts=70.0,
    ...                   partition=3)
    >>> e[P_SLICE], e[P_TS], e[P_PARTITION]
    (7, 70.0, 3)
    """
    return (version, slice_id, decision, amount, ts, partition)


def orphan_entry(label: int, amount: float, ts: float, partition: int) -> OrphanEntry:
    """An :data:`OrphanEntry` from its fields, by name."""
    return (label, amount, ts, partition)


#: per partition, stored join bytes beyond 2 x the live entries' size that
#: trigger a snapshot (the floor keeps small buffers from re-snapshotting often);
#: read at call time (tests lower it)
_SNAPSHOT_MIN_BYTES = 64 * 1024
_ENTRY_BYTES_GUESS = 50.0
_JOIN_ENCODE = msgspec.msgpack.Encoder().encode
_JOIN_DECODE = msgspec.msgpack.Decoder(
    tuple[list[tuple[str, str]], list[tuple[str, list[Any]]], list[str]]).decode

#: the partition: the last field of both entry kinds
_PARTITION = operator.itemgetter(-1)


def by_partition(entries: Mapping[str, Any], only: set[int] | None = None
                 ) -> dict[int, list[tuple[str, Any]]]:
    """``(event id, entry)`` pairs grouped by partition, each group in the
    mapping's order; C-level passes, no Python loop per entry."""
    if not entries:
        return {}
    parts = np.fromiter(map(_PARTITION, entries.values()), dtype=np.int64,
                        count=len(entries))
    uniq = np.unique(parts).tolist()
    if only is not None:
        uniq = [p for p in uniq if p in only]
    items = list(entries.items())
    if len(uniq) == 1 and only is None:
        return {uniq[0]: items}
    return {p: list(itertools.compress(items, (parts == p).tolist())) for p in uniq}


@dataclass
class JoinStoreState:
    """Which join blobs this instance has stored, per topic-partition."""

    epoch: int = 0
    n: int = 0
    fields: dict[TP, list[str]] = field(default_factory=dict)
    log_bytes: dict[TP, int] = field(default_factory=dict)
    snap_bytes: dict[TP, int] = field(default_factory=dict)
    live: dict[TP, int] = field(default_factory=dict)  # entries, about
    entry_bytes: dict[TP, float] = field(default_factory=dict)
    #: the stored fields of ids seen, per partition and expiry bucket
    ids: dict[TP, dict[int, IdFields]] = field(default_factory=dict)

    def field_name(self, kind: str) -> str:
        """The next field name: sorts after every earlier one of this instance."""
        self.n += 1
        return f"{self.epoch:013d}.{self.n:010d}.{kind}"


class JoinBuffer:
    """Pending predictions and orphan labels, matched by event id.

    ``duplicates``, ``evictions`` and ``unmatched`` are the engine's counters
    (shared): the buffer counts copies, evicted predictions and labels that
    never met their prediction there.
    """

    def __init__(self, settings: Settings, seen_predictions: SeenIds | None,
                 seen_labels: SeenIds | None, duplicates: Counter[str],
                 evictions: Counter[str], unmatched: Counter[str]) -> None:
        self.settings = settings
        self.seen_predictions = seen_predictions
        self.seen_labels = seen_labels
        self.duplicates = duplicates
        self.evictions = evictions
        self.unmatched = unmatched
        # in arrival order: event_id -> entry
        self.pending: OrderedDict[str, PendingEntry] = OrderedDict()
        self.orphans: OrderedDict[str, OrphanEntry] = OrderedDict()
        self.vkeys: list[tuple[str, str]] = []
        self._vindex: dict[tuple[str, str], int] = {}
        # with a shared state store: changes to persist, and the stored blobs
        self.pending_log: JoinLog | None = None
        self.orphan_log: JoinLog | None = None
        self.stored = JoinStoreState()
        # labels that came before any prediction wait for a finite watermark
        self.unstamped = False

    def clear(self) -> None:
        """Forget every entry and what was stored (before a re-sync from the
        store); the version table stays, and change logging restarts if on."""
        self.pending = OrderedDict()
        self.orphans = OrderedDict()
        if self.pending_log is not None:
            self.track_changes()
        self.stored = JoinStoreState()

    def version_index(self, key: tuple[str, str]) -> int:
        vi = self._vindex.get(key)
        if vi is None:
            vi = self._vindex[key] = len(self.vkeys)
            self.vkeys.append(key)
        return vi

    # ------------------------------------------------------------- matching
    def add_predictions(self, ids: list[str], entries: Iterable[PendingEntry]
                        ) -> list[tuple[PendingEntry, OrphanEntry]]:
        """Buffer predictions (one entry per id, in order); returns those whose
        label came first, with the label, taken out of the buffer."""
        pending = self.pending
        orphans = self.orphans
        plog = self.pending_log
        joins: list[tuple[PendingEntry, OrphanEntry]] = []
        idset = set(ids)
        if len(idset) == len(ids) and pending.keys().isdisjoint(idset):
            # the common case: no duplicate; bulk inserts, and only the events
            # whose label came first are looked at one by one
            hits = orphans.keys() & idset if orphans else None
            new: dict[str, PendingEntry]
            if not hits and plog is None:
                pending.update(zip(ids, entries, strict=True))
                new = {}
            elif not hits:
                new = dict(zip(ids, entries, strict=True))
            else:
                pairs = list(zip(ids, entries, strict=True))
                is_hit = list(map(hits.__contains__, ids))
                new = dict(itertools.compress(pairs, map(operator.not_, is_hit)))
                joins = [(entry, self._pop_orphan(eid))
                         for eid, entry in itertools.compress(pairs, is_hit)]
            if new:
                pending.update(new)
                if plog is not None:
                    plog.put_many(new)
        else:
            for eid, entry in zip(ids, entries, strict=True):
                if eid in pending:
                    self.duplicates["prediction"] += 1
                    continue
                orphan = orphans.pop(eid, None)
                if orphan is not None:
                    if self.orphan_log is not None:
                        self.orphan_log.delete(eid, orphan[O_PARTITION])
                    joins.append((entry, orphan))
                    continue
                pending[eid] = entry
                if plog is not None:
                    plog.put(eid, entry)
        cap = self.settings.join.max_pending
        while len(pending) > cap:
            eid, entry = pending.popitem(last=False)
            if plog is not None:
                plog.delete(eid, entry[P_PARTITION])
            self.evictions["capacity"] += 1
        return joins

    def _pop_orphan(self, eid: str) -> OrphanEntry:
        orphan = self.orphans.pop(eid)
        if self.orphan_log is not None:
            self.orphan_log.delete(eid, orphan[O_PARTITION])
        return orphan

    def match_labels(self, cols: LabelColumns, watermark: float
                     ) -> tuple[np.ndarray[Any, np.dtype[np.bool_]], list[PendingEntry]]:
        """Take the predictions of labels out of the buffer: which labels found
        theirs, and those predictions in label order. The others wait as orphans
        (their age judged by their own time, else ``watermark``)."""
        n = len(cols)
        pending = self.pending
        orphans = self.orphans
        ids = cols.event_id
        # every label takes its prediction out of the buffer, in order, in C; only
        # the labels without one are looked at one by one (they become orphans)
        found: list[Any] = list(map(pending.pop, ids, itertools.repeat(None, n)))
        hit = np.fromiter(map(operator.is_not, found, itertools.repeat(None, n)),
                          dtype=np.bool_, count=n)
        plog, olog = self.pending_log, self.orphan_log
        if not hit.all():
            labels = cols.label.tolist()
            amounts = cols.amount.tolist()
            label_ts = cols.ts.tolist()
            part = cols.partition.tolist() if cols.partition.size == n else [0] * n
            keep_orphans = self.settings.join.max_orphan_labels != 0
            for i in np.flatnonzero(~hit).tolist():
                eid = ids[i]
                if eid in orphans:
                    self.duplicates["label"] += 1
                    continue
                if not keep_orphans:
                    self.unmatched["no_prediction"] += 1
                    continue
                # the orphan's age is judged by its own time, else the watermark
                # at arrival (or, before any prediction, at the next expiry pass)
                t = label_ts[i]
                if not math.isfinite(t):
                    t = watermark
                    self.unstamped |= not math.isfinite(t)
                orphans[eid] = entry = orphan_entry(labels[i], amounts[i], t, part[i])
                if olog is not None:
                    olog.put(eid, entry)
            found = list(itertools.compress(found, hit.tolist()))
        if found and plog is not None:
            for eid, p in zip(itertools.compress(ids, hit.tolist()), found, strict=True):
                plog.delete(eid, p[P_PARTITION])
        cap = self.settings.join.max_orphan_labels
        while len(orphans) > cap:
            eid, o = orphans.popitem(last=False)
            if olog is not None:
                olog.delete(eid, o[O_PARTITION])
            self.unmatched["capacity"] += 1
        return hit, found

    def stamp_orphans(self, watermark: float) -> None:
        """Give labels that came before any prediction the first finite watermark."""
        for eid, o in self.orphans.items():
            if not math.isfinite(o[O_TS]):
                self.orphans[eid] = entry = orphan_entry(o[O_LABEL], o[O_AMOUNT], watermark,
                                                         o[O_PARTITION])
                if self.orphan_log is not None:
                    self.orphan_log.put(eid, entry)
        self.unstamped = False

    def expire(self, horizon: float) -> None:
        """Drop entries older than ``horizon`` (event time), from the front."""
        pending = self.pending
        plog, olog = self.pending_log, self.orphan_log
        while pending:
            eid, entry = next(iter(pending.items()))
            if entry[P_TS] >= horizon:
                break
            del pending[eid]
            if plog is not None:
                plog.delete(eid, entry[P_PARTITION])
            self.evictions["ttl"] += 1
        orphans = self.orphans
        while orphans:
            eid, o = next(iter(orphans.items()))
            if o[O_TS] >= horizon:
                break
            del orphans[eid]
            if olog is not None:
                olog.delete(eid, o[O_PARTITION])
            self.unmatched["ttl"] += 1

    # ---------------------------------------------------------- persistence
    def track_changes(self) -> None:
        """Log changes (and ids seen) from now on, for :meth:`delta`."""
        self.pending_log = JoinLog()
        self.orphan_log = JoinLog()
        for seen in (self.seen_predictions, self.seen_labels):
            if seen is not None:
                seen.logging = True

    def _seen_by_topic(self) -> tuple[tuple[SeenIds | None, str], ...]:
        kafka = self.settings.kafka
        return ((self.seen_predictions, kafka.predictions_topic),
                (self.seen_labels, kafka.labels_topic))

    def delta(self, commit: Commit) -> None:
        """Add the changes since the last call to ``commit``: one blob per partition
        (puts, then deletes), and a snapshot where the blobs since the last one
        outgrew it (which then replaces them all)."""
        if self.pending_log is None or self.orphan_log is None:
            return
        jss = self.stored
        for seen, topic in self._seen_by_topic():
            if seen is not None:
                ids_delta(seen, topic, jss.ids, commit, jss.field_name)
                drop_expired_ids(seen, topic, jss.ids, commit)
        predictions = self.settings.kafka.predictions_topic
        touched: list[TP] = []
        for log, topic in ((self.pending_log, predictions),
                           (self.orphan_log, self.settings.kafka.labels_topic)):
            puts, deletes = log.drain()
            by_part = by_partition(puts)
            for part in sorted(by_part.keys() | deletes.keys()):
                tp = (topic, part)
                blob = _JOIN_ENCODE((self.vkeys if topic == predictions else [],
                                     by_part.get(part, []), deletes.get(part, [])))
                name = jss.field_name("d")
                commit.join_writes.setdefault(tp, {})[name] = blob
                jss.fields.setdefault(tp, []).append(name)
                jss.log_bytes[tp] = jss.log_bytes.get(tp, 0) + len(blob)
                jss.live[tp] = max(jss.live.get(tp, 0) + len(by_part.get(part, ()))
                                   - len(deletes.get(part, ())), 0)
                touched.append(tp)
        # snapshot a partition once what is stored for it exceeds twice what its
        # live entries would take (plus a floor): the stored bytes stay within
        # about 2 x the live buffer, and each logged byte is re-encoded about once
        due = [tp for tp in touched
               if jss.snap_bytes.get(tp, 0) + jss.log_bytes[tp] > 2 * jss.live[tp]
               * jss.entry_bytes.get(tp, _ENTRY_BYTES_GUESS) + _SNAPSHOT_MIN_BYTES]
        if due:
            self._snapshots(commit, due)

    def _snapshots(self, commit: Commit, due: list[TP]) -> None:
        jss = self.stored
        predictions = self.settings.kafka.predictions_topic
        items: dict[TP, list[tuple[str, Any]]] = {}
        buffers: tuple[tuple[Mapping[str, Any], str], ...] = (
            (self.pending, predictions), (self.orphans, self.settings.kafka.labels_topic))
        for buf, topic in buffers:
            want = {p for t, p in due if t == topic}
            if want:
                grouped = by_partition(buf, want)
                for p in want:
                    items[(topic, p)] = grouped.get(p, [])
        for tp in due:
            blob = _JOIN_ENCODE((self.vkeys if tp[0] == predictions else [], items[tp], []))
            name = jss.field_name("s")
            old = jss.fields.get(tp, [])
            writes = commit.join_writes.setdefault(tp, {})
            stored = [f for f in old if writes.pop(f, None) is None]
            if stored:
                commit.join_drops.setdefault(tp, []).extend(stored)
            writes[name] = blob
            jss.fields[tp] = [name]
            jss.snap_bytes[tp] = len(blob)
            jss.log_bytes[tp] = 0
            jss.live[tp] = len(items[tp])
            if items[tp]:
                jss.entry_bytes[tp] = len(blob) / len(items[tp])

    def load(self, blobs: dict[TP, dict[str, bytes]], epoch: int) -> int:
        """Take over the stored buffers (and ids seen) of newly assigned partitions,
        replacing their local entries; ``epoch`` (the store's clock, ms) orders
        the fields written from now on after every stored one. Returns the
        entries loaded."""
        jss = self.stored
        predictions = self.settings.kafka.predictions_topic
        self.drop_partitions(list(blobs))
        seen_of = {topic: seen for seen, topic in self._seen_by_topic()}
        rest: dict[TP, dict[str, bytes]] = {}
        for tp, fields in blobs.items():
            rest[tp], newest_ids = load_ids(seen_of.get(tp[0]), tp[1], fields,
                                            jss.ids.setdefault(tp, {}))
            jss.epoch = max(jss.epoch, newest_ids + 1)
        newest = max((int(f.split(".", 1)[0]) for fields in rest.values() for f in fields),
                     default=0)
        jss.epoch = max(epoch, newest + 1, jss.epoch + 1)
        jss.n = 0
        loaded_p: list[list[tuple[str, PendingEntry]]] = []
        loaded_o: list[list[tuple[str, OrphanEntry]]] = []
        for tp, fields in rest.items():
            names = sorted(fields)
            snaps = [i for i, f in enumerate(names) if f.endswith(".s")]
            start = snaps[-1] if snaps else 0
            entries: dict[str, list[Any]] = {}
            for name in names[start:]:
                versions, puts, deletes = _JOIN_DECODE(fields[name])
                own = [self.version_index((str(m), str(v))) for m, v in versions]
                for eid, e in puts:
                    if versions:
                        e[0] = own[e[0]]
                    entries[eid] = e
                for eid in deletes:
                    entries.pop(eid, None)
            jss.fields[tp] = names
            jss.live[tp] = len(entries)
            jss.snap_bytes[tp] = len(fields[names[start]]) if snaps else 0
            jss.log_bytes[tp] = sum(len(fields[f]) for f in names[start + (1 if snaps else 0):])
            # entries in the order they arrived on their partition
            if tp[0] == predictions:
                loaded_p.append([(eid, pending_entry(int(e[0]), int(e[1]), bool(e[2]),
                                                     float(e[3]), float(e[4]), int(e[5])))
                                 for eid, e in entries.items()])
            else:
                loaded_o.append([(eid, orphan_entry(int(e[0]), float(e[1]), float(e[2]),
                                                    int(e[3])))
                                 for eid, e in entries.items()])
        # interleave the partitions (and what is here already) by event time,
        # keeping each one's own arrival order: expiry scans from the front
        if any(loaded_p):
            self.pending = OrderedDict(heapq.merge(
                list(self.pending.items()), *loaded_p, key=lambda kv: kv[1][P_TS]))
        if any(loaded_o):
            self.orphans = OrderedDict(heapq.merge(
                list(self.orphans.items()), *loaded_o, key=lambda kv: kv[1][O_TS]))
        self.unstamped = any(not math.isfinite(o[O_TS]) for part in loaded_o for _, o in part)
        return sum(map(len, loaded_p)) + sum(map(len, loaded_o))

    def drop_partitions(self, tps: list[TP]) -> None:
        """Forget the local entries (and ids seen) of revoked partitions (the store
        keeps them)."""
        for seen, topic in self._seen_by_topic():
            if seen is not None:
                seen.drop(p for t, p in tps if t == topic)
        buffers: tuple[tuple[OrderedDict[str, Any], JoinLog | None, str], ...] = (
            (self.pending, self.pending_log, self.settings.kafka.predictions_topic),
            (self.orphans, self.orphan_log, self.settings.kafka.labels_topic))
        for buf, log, topic in buffers:
            parts = {p for t, p in tps if t == topic}
            if not parts:
                continue
            for eid in [e for e, v in buf.items() if v[P_PARTITION] in parts]:
                del buf[eid]
                if log is not None:
                    log.puts.pop(eid, None)
            if log is not None:
                for p in parts:
                    log.deletes.pop(p, None)
        jss = self.stored
        for tp in tps:
            for per in (jss.fields, jss.log_bytes, jss.snap_bytes, jss.live, jss.entry_bytes,
                        jss.ids):
                per.pop(tp, None)
