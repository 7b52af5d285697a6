"""Helpers shared by the engine unit tests: window settings, event builders and
a :class:`Feeder` that pushes event dicts through the codec into an engine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detectors import ReferenceProfile
from monitor.config import Settings, load_settings
from monitor.engine import Engine
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from tests.support import MODEL, encode, write_config

#: event time of the first event of the engine tests
START = 1_700_000_000.0
#: the engine tests' slice and window lengths, in seconds
SLICE, WINDOW = 10.0, 60.0


def make_settings(tmp_path: Path, **sections: Any) -> Settings:
    """Settings with SLICE/WINDOW windows (``windows`` entries override them) and a
    reference fitted from 10 champion events unless ``reference`` is given."""
    windows = {"slice_seconds": SLICE, "window_seconds": WINDOW, "kpi_window_seconds": 600,
               "allowed_lateness_seconds": 30}
    windows.update(sections.pop("windows", {}))
    sections.setdefault("reference", {"fit_from_champion_events": 10})
    return load_settings(write_config(tmp_path / "config.yaml", windows=windows, **sections))


class Feeder:
    """An engine plus its codec: feeds event dicts as records."""

    def __init__(self, settings: Settings, ref: ReferenceProfile) -> None:
        self.codec = EventCodec(settings)
        self.engine = Engine(settings, ref, clock=lambda: 123.0)

    def feed(self, preds: Sequence[dict[str, Any]] = (),
             labels: Sequence[dict[str, Any]] = ()) -> Any:
        """Decode ``preds`` and ``labels`` (none may be rejected) and process them
        as one batch; returns what the engine's ``process`` returns."""
        batch = self.codec.decode(
            [RawRecord("predictions", 0, i, encode(e)) for i, e in enumerate(preds)],
            [RawRecord("labels", 0, i, encode(e)) for i, e in enumerate(labels)])
        assert batch.rejected == [], batch.rejected
        return self.engine.process(batch)

    def feed_in(self, n_batches: int, preds: Sequence[dict[str, Any]],
                labels: Sequence[dict[str, Any]]) -> None:
        """Predictions and their labels in ``n_batches`` consecutive chunks."""
        for chunk in np.array_split(np.arange(len(preds)), n_batches):
            idx = chunk.tolist()
            self.feed([preds[i] for i in idx], [labels[i] for i in idx])


def pred(eid: str, ts: float, version: str = "v1", score: float = 0.1,
         **extra: Any) -> dict[str, Any]:
    """A valid prediction event of MODEL (``extra`` keys added or overridden)."""
    return {"event_id": eid, "model": MODEL, "model_version": version, "ts": ts,
            "score": score, "amount": 10.0,
            "features": {"amount": 10.0, "hour": 12.0, "merchant_category": "fuel"}, **extra}


def label(eid: str, y: int = 0, **extra: Any) -> dict[str, Any]:
    """A label event for prediction ``eid`` (``extra`` keys added or overridden)."""
    return {"event_id": eid, "label": y, **extra}
