"""What the engine writes to a state store, and how it reads it back.

* :class:`SliceLog` — the window slices changed since the last commit and the
  slices written before (so that expired ones are deleted);
* :func:`version_counters` / :func:`global_counters` — the cumulative
  counters, flat, keyed by :mod:`monitor.engine.keys` (per version:
  :data:`VERSION_COUNTERS`);
* :func:`states_from` / :func:`restore_globals` — the reverse, from stored
  slices and counters (one instance's); :func:`global_states` — every
  instance's summed, for evaluation (the global view).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from monitor.engine.keys import (
    ACTIVE_UNTIL_KEY,
    WATERMARK_KEY,
    CounterKey,
    SliceKey,
    global_key,
    parse_global_key,
)
from monitor.engine.state import CONFUSION_COUNTS, CONFUSION_FIELDS, VersionState
from monitor.engine.store import Commit

__all__ = [
    "VERSION_COUNTERS",
    "SliceLog",
    "global_counters",
    "global_states",
    "head_of",
    "restore_globals",
    "states_from",
    "version_counters",
]

#: the counters kept per version, in the order they are written; the confusion
#: fields are those of ``VersionState.confusion_total``, the others attributes
VERSION_COUNTERS = ("predictions_total", "labels_joined_total", "late_total",
                    "late_labels_total", *CONFUSION_FIELDS,
                    "adwin_error_detections", "adwin_score_detections",
                    "recall_cusum_detections")
_CONFUSION = frozenset(CONFUSION_FIELDS)
#: instance-wide counters grouped by a key (the engine's Counter attributes)
GROUPS = ("duplicates", "evictions", "unmatched")


class SliceLog:
    """Slices changed since the last commit, and slices written before."""

    def __init__(self) -> None:
        self.touched: set[SliceKey] = set()
        self.written: dict[tuple[str, str, str], set[int]] = {}

    def forget_versions(self, gone: set[tuple[str, str]]) -> None:
        """Released versions: their changes are not written (their stored slices
        expire at the next :meth:`write`)."""
        self.touched = {t for t in self.touched if (t[0], t[1]) not in gone}

    def note_written(self, keys: Iterable[SliceKey]) -> None:
        for m, v, kind, sid in keys:
            self.written.setdefault((m, v, kind), set()).add(sid)

    def write(self, commit: Commit, versions: Mapping[tuple[str, str], VersionState]) -> None:
        """Add the changed slices to ``commit``, and the written ones that have
        left their window as expired."""
        for key in self.touched:
            m, v, kind, sid = key
            st = versions.get((m, v))
            if st is None:
                continue
            arr = st.window(kind).get(sid)
            if arr is not None:
                commit.slices[key] = arr
                self.written.setdefault((m, v, kind), set()).add(sid)
        self.touched = set()
        for (m, v, kind), sids in self.written.items():
            st = versions.get((m, v))
            live = st.window(kind).slice_ids() if st is not None else set()
            gone = sids - live
            if gone:
                commit.expired |= {(m, v, kind, s) for s in gone}
                sids -= gone


def version_counters(versions: Mapping[tuple[str, str], VersionState]) -> dict[str, float]:
    """Every version's cumulative counters, flat."""
    out: dict[str, float] = {}
    for (m, v), st in versions.items():
        c = st.confusion_total
        for name in VERSION_COUNTERS:
            value = getattr(c if name in _CONFUSION else st, name)
            out[CounterKey(m, v, name).encode()] = float(value)
    return out


def global_counters(labels_total: int, watermark: float, active_until: Callable[[], float],
                    groups: Mapping[str, Counter[str]],
                    invalid: Counter[tuple[str, str]]) -> dict[str, float]:
    """The instance-wide counters, flat: ``groups`` maps each of :data:`GROUPS`
    to its counter; ``active_until`` is asked only with a finite watermark."""
    out: dict[str, float] = {global_key("labels_total"): float(labels_total)}
    if math.isfinite(watermark):
        out[WATERMARK_KEY] = watermark
        # a shared store takes the minimum over active instances (state.py)
        out[ACTIVE_UNTIL_KEY] = active_until()
    for name in GROUPS:
        for k, n in groups[name].items():
            out[global_key(name, k)] = float(n)
    for (kind, reason), n in invalid.items():
        out[global_key("invalid", kind, reason)] = float(n)
    return out


def restore_globals(counters: Mapping[str, float], groups: Mapping[str, Counter[str]],
                    invalid: Counter[tuple[str, str]]) -> tuple[float, int]:
    """Put the stored instance-wide grouped counters into ``groups`` and
    ``invalid``; returns the stored watermark and labels total."""
    for key, value in counters.items():
        parsed = parse_global_key(key)
        if parsed is None:
            continue
        group, rest = parsed
        if group in groups:
            groups[group][rest] = int(value)
        elif group == "invalid":
            kind, _, reason = rest.partition(":")
            invalid[(kind, reason)] = int(value)
    return (counters.get(WATERMARK_KEY, -math.inf),
            int(counters.get(global_key("labels_total"), 0)))


def head_of(watermark: float, slice_seconds: float) -> int | None:
    """The head slice of a stored watermark (None: none stored yet)."""
    return math.floor(watermark / slice_seconds) if math.isfinite(watermark) else None


def global_states(slices: Mapping[SliceKey, list[bytes]], counters: Mapping[str, float],
                  local: Mapping[tuple[str, str], VersionState],
                  new_state: Callable[[str, str], VersionState], slice_seconds: float
                  ) -> tuple[dict[tuple[str, str], VersionState], float]:
    """Every instance's summed slices and counters as states, and the global
    watermark; ADWIN streams, recall CUSUMs and row samples stay this
    instance's (``local``)."""
    wm = counters.get(WATERMARK_KEY, -math.inf)
    states: dict[tuple[str, str], VersionState] = {}
    states_from(slices, counters, states, head_of(wm, slice_seconds), new_state)
    for key, st in states.items():
        mine = local.get(key)
        if mine is not None:  # ADWIN streams and recall CUSUMs stay per instance
            st.adwin_error, st.adwin_score = mine.adwin_error, mine.adwin_score
            st.recall_cusum = mine.recall_cusum
            st.sample = mine.sample
    return states, wm


def states_from(slices: Mapping[SliceKey, list[bytes]], counters: Mapping[str, float],
                target: dict[tuple[str, str], VersionState], head: int | None,
                new_state: Callable[[str, str], VersionState]) -> None:
    """Add stored slices (summed over their blobs) and per-version counters to
    the states of ``target`` (created with ``new_state`` when missing)."""
    if head is None and slices:
        # no watermark stored yet: the windows end at the newest slice (the
        # slices ahead of a watermark are not told apart)
        head = max(sid for _, _, _, sid in slices)
    for (m, v, kind, sid), blobs in slices.items():
        st = target.get((m, v))
        if st is None:
            st = target[(m, v)] = new_state(m, v)
        win = st.window(kind)
        if head is not None:
            win.advance(head)
        total = np.zeros(win.shape, dtype=win.dtype)
        for blob in blobs:
            total += np.frombuffer(blob, dtype=win.dtype).reshape(win.shape)
        win.add(sid, total)
    for raw, value in counters.items():
        key = CounterKey.decode(raw)
        if key is None:
            continue
        st = target.get((key.model, key.version))
        if st is None:
            st = target[(key.model, key.version)] = new_state(key.model, key.version)
        name = key.name
        if name in _CONFUSION:
            kw: dict[str, Any] = {name: int(value) if name in CONFUSION_COUNTS else value}
            st.confusion_total = dataclasses.replace(st.confusion_total, **kw)
        elif hasattr(st, name):
            setattr(st, name, int(value))
