"""monitor.engine.join: the join buffer's entries are plain tuples read by name.

The entries are plain tuples rather than NamedTuple instances because CPython's
collector untracks a tuple of atomic values once it survives a collection, but
never a tuple subclass: with millions of pending predictions every full
collection would walk them all.
"""

from __future__ import annotations

import gc
from pathlib import Path

from detectors import ReferenceProfile
from monitor.engine.join import (
    O_AMOUNT,
    O_LABEL,
    O_PARTITION,
    O_TS,
    P_AMOUNT,
    P_DECISION,
    P_PARTITION,
    P_SLICE,
    P_TS,
    P_VERSION,
    by_partition,
    orphan_entry,
    pending_entry,
)
from tests.support import fit_reference
from tests.unit.engine_support import SLICE, START, Feeder, label, make_settings, pred


def test_named_indices_read_the_fields_they_name() -> None:
    e = pending_entry(version=2, slice_id=7, decision=True, amount=12.5, ts=70.0, partition=3)
    assert (e[P_VERSION], e[P_SLICE], e[P_DECISION], e[P_AMOUNT], e[P_TS], e[P_PARTITION]) \
        == (2, 7, True, 12.5, 70.0, 3)
    o = orphan_entry(label=1, amount=4.0, ts=71.0, partition=5)
    assert (o[O_LABEL], o[O_AMOUNT], o[O_TS], o[O_PARTITION]) == (1, 4.0, 71.0, 5)
    # by_partition reads the last field of either kind: it must be the partition
    assert len(e) - 1 == P_PARTITION
    assert len(o) - 1 == O_PARTITION
    groups = by_partition({"a": e, "b": pending_entry(0, 1, False, 0.0, 1.0, 4), "c": e})
    assert {p: [eid for eid, _ in g] for p, g in groups.items()} == {3: ["a", "c"], 4: ["b"]}
    assert by_partition({"x": o}) == {5: [("x", o)]}


def test_pending_and_orphan_entries_leave_the_collector(tmp_path: Path) -> None:
    ref: ReferenceProfile = fit_reference(n=5000)
    f = Feeder(make_settings(tmp_path), ref)
    f.feed([pred(f"p{i}", START + i * SLICE / 10) for i in range(50)],
           [label(f"early{i}", 1) for i in range(5)])
    pending: list[tuple[object, ...]] = list(f.engine._pending.values())
    orphans: list[tuple[object, ...]] = list(f.engine._orphans.values())
    assert len(pending) == 50
    assert len(orphans) == 5
    assert all(type(e) is tuple for e in pending + orphans)
    gc.collect()
    assert not any(map(gc.is_tracked, pending + orphans))
