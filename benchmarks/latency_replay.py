"""The offline replay of bench_latency: which event pushed the window over the rule.

:func:`find_push` replays a trial's produced predictions in production order
through a fresh :class:`monitor.engine.Engine` (chunks of ``CHUNK_EVENTS``,
then event by event inside the first breaching chunk) and returns the
:class:`Push`, the event whose arrival first breaches the rule.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from detectors import ReferenceProfile, psi
from monitor.config import Settings
from monitor.engine import Engine
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.sandbox.demo import CANARY, CHAMPION, MODEL
from rollback.rules import RuleSpec

__all__ = ["CHUNK_EVENTS", "Produced", "Push", "find_push"]

CHUNK_EVENTS = 10


@dataclass(frozen=True)
class Produced:
    """One produced prediction: wall-clock production time, value, version."""

    at: float
    value: bytes
    version: str


@dataclass(frozen=True)
class Push:
    """The event whose arrival first puts the window over the rule."""

    index: int
    at: float
    version: str
    value: float
    chunk_last_at: float


def _rule_value(engine: Engine, rule: RuleSpec) -> float | None:
    """The rule's value from a full :meth:`Engine.evaluate`, None below its minimums."""
    ev = engine.evaluate()
    champ = ev.versions.get((MODEL, CHAMPION))
    canary = ev.versions.get((MODEL, CANARY))
    cmp = ev.canaries.get(MODEL)
    if champ is None or canary is None or cmp is None or cmp.divergences is None:
        return None
    if canary.window_events < rule.min_events or champ.window_events < rule.min_events:
        return None
    value = cmp.divergences.psi.get(rule.feature)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _screen_value(engine: Engine, rule: RuleSpec, row: int) -> float | None:
    """The same value as :func:`_rule_value`, from the window totals only.

    :meth:`Engine.evaluate` also computes every other divergence, the KPIs and
    their intervals (about 9 ms); this is the one PSI the rule reads, computed
    exactly as the engine does (``psi`` of the champion's against the canary's
    numeric window totals, same eps), so it can run after every chunk.
    """
    champ = engine.versions.get((MODEL, CHAMPION))
    canary = engine.versions.get((MODEL, CANARY))
    if champ is None or canary is None:
        return None
    if canary.window_events < rule.min_events or champ.window_events < rule.min_events:
        return None
    values = np.atleast_1d(psi(champ.numeric.total, canary.numeric.total,
                               engine.settings.evaluation.eps))
    value = float(values[row])
    return value if math.isfinite(value) else None


def find_push(settings: Settings, reference: ReferenceProfile, produced: Sequence[Produced],
              rule: RuleSpec, chunk: int = CHUNK_EVENTS) -> tuple[Push | None, list[str]]:
    """Replay ``produced`` in order; the first event after which the rule breaches.

    Pass 1 processes chunks of ``chunk`` events and screens the rule after
    each; pass 2 rebuilds the state before the first breaching chunk and steps
    through it one event at a time. The breach found is confirmed with a full
    :meth:`Engine.evaluate`. Returns the push (None if the rule never
    breached) and notes on any inconsistency.
    """
    notes: list[str] = []
    features = list(reference.numeric.features)
    if rule.feature not in features:
        raise ValueError(f"the replay handles numeric features only, not {rule.feature!r}")
    row = features.index(rule.feature)
    topic = settings.kafka.predictions_topic
    records = [RawRecord(topic, 0, i, p.value) for i, p in enumerate(produced)]
    codec = EventCodec(settings)
    engine = Engine(settings, reference)
    start: int | None = None
    chunk_value = math.nan
    for s in range(0, len(records), chunk):
        engine.process(codec.decode(records[s:s + chunk]))
        value = _screen_value(engine, rule, row)
        if value is not None and rule.breached(value):
            start, chunk_value = s, value
            break
    if start is None:
        return None, notes
    end = min(start + chunk, len(records))
    # the window counts do not depend on how events are batched: the prefix in one batch
    engine = Engine(settings, reference)
    codec = EventCodec(settings)
    if start:
        engine.process(codec.decode(records[:start]))
    push: Push | None = None
    for i in range(start, end):
        engine.process(codec.decode(records[i:i + 1]))
        value = _screen_value(engine, rule, row)
        if push is None and value is not None and rule.breached(value):
            full = _rule_value(engine, rule)
            if full is None or abs(full - value) > 1e-9:
                notes.append(f"screened psi {value!r} differs from Engine.evaluate {full!r}")
            push = Push(i, produced[i].at, produced[i].version, value, produced[end - 1].at)
    last = _screen_value(engine, rule, row)
    if last is None or abs(last - chunk_value) > 1e-9:
        notes.append(f"psi after the chunk event by event {last!r} != in one batch "
                     f"{chunk_value!r}")
    if push is None:  # not expected: fall back to the chunk's last event
        notes.append("no single event of the breaching chunk breached; using its last")
        push = Push(end - 1, produced[end - 1].at, produced[end - 1].version, chunk_value,
                    produced[end - 1].at)
    return push, notes
