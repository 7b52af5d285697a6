"""Version slots: which (model, version) pairs may hold state (the cardinality caps).

What lives here: :class:`VersionSlots`, the slot table the codec admits every
decoded prediction's (model, version) by, and whose released pairs the engine
drops the state of.
"""

from __future__ import annotations

import math
import time
from collections import Counter, OrderedDict
from collections.abc import Callable

from monitor.config import Settings

__all__ = ["VersionSlots"]


class VersionSlots:
    """Which (model, version) pairs may hold state: the cardinality caps.

    Every model has ``max_versions`` slots (``models[].max_versions``, or
    ``codec.unknown_model_max_versions`` for a model that is not configured),
    and at most ``codec.max_models`` models hold slots (configured models
    always do; the others share what is left). The champion and canary of a
    model hold *reserved* slots: they are counted against the cap before any
    other version is, are always admitted, and never released. When a version
    becomes reserved while the model's slots are full (a canary set at run time
    through the admin API, see :meth:`reserve`), the least recently seen other
    version is evicted to make room. A version that is not reserved and has not
    been admitted for ``codec.version_idle_seconds`` of wall clock releases its
    slot (then an unknown model with no version left releases its own).

    Released pairs are queued for the engine (:meth:`drain_released`), which
    drops their state, so their exported series go with them. At most
    :attr:`max_pairs` pairs hold a slot at any time.
    """

    def __init__(self, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        codec = settings.codec
        self.clock = clock
        self._configured = {m.name: m.max_versions for m in settings.models}
        self._unknown_cap = codec.unknown_model_max_versions
        # models that are not configured share what the configured leave (none
        # unless codec.allow_unknown_models: they are refused as unknown_model)
        self._unknown_models_cap = (max(0, codec.max_models - len(self._configured))
                                    if codec.allow_unknown_models else 0)
        self._idle = codec.version_idle_seconds
        self._reserved: dict[str, set[str]] = {
            m.name: {v for v in (m.champion, m.canary) if v} for m in settings.models}
        # model -> version -> wall-clock time last admitted, least recent first
        self._held: dict[str, OrderedDict[str, float]] = {m: OrderedDict()
                                                          for m in self._configured}
        self._unknown_models = 0
        self._released: list[tuple[str, str]] = []
        self._next_sweep = -math.inf
        #: pairs refused, per reason (too_many_models, too_many_versions)
        self.refused: Counter[str] = Counter()

    # ----------------------------------------------------------------- queries
    @property
    def max_pairs(self) -> int:
        """The most (model, version) pairs that can hold a slot at once."""
        configured = sum(max(cap, len(self._reserved[m])) for m, cap in
                         self._configured.items())
        return configured + self._unknown_models_cap * self._unknown_cap

    def cap(self, model: str) -> int:
        return self._configured.get(model, self._unknown_cap)

    def holds(self, model: str, version: str) -> bool:
        held = self._held.get(model)
        return held is not None and version in held

    def reserved(self, model: str) -> set[str]:
        return set(self._reserved.get(model, ()))

    def pairs(self) -> list[tuple[str, str]]:
        return [(m, v) for m, held in self._held.items() for v in held]

    # ----------------------------------------------------------------- changes
    def admit(self, model: str, version: str) -> str | None:
        """Admit one (model, version) seen now: ``None``, or the reason it is
        refused (``too_many_models`` or ``too_many_versions``)."""
        now = self.clock()
        self.tick(now)
        held = self._held.get(model)
        if held is not None and version in held:
            held[version] = now
            held.move_to_end(version)
            return None
        if held is None:
            if self._unknown_models >= self._unknown_models_cap:
                self.refused["too_many_models"] += 1
                return "too_many_models"
            held = self._held[model] = OrderedDict()
            self._unknown_models += 1
        reserved = self._reserved.get(model, set())
        if version not in reserved and self._others(model) + len(reserved) >= self.cap(model):
            self.refused["too_many_versions"] += 1
            if not held:  # an unknown model refused its first version: no slot taken
                self._drop_model(model)
            return "too_many_versions"
        held[version] = now
        if version in reserved:
            self._make_room(model)
        return None

    def reserve(self, model: str, versions: set[str]) -> None:
        """Make ``versions`` the model's reserved versions (its champion and
        canary); room is made for them at once by evicting the least recently
        seen other versions."""
        if model not in self._configured:
            return  # roles exist for configured models only
        self._reserved[model] = set(versions)
        self._make_room(model)

    def tick(self, now: float | None = None) -> None:
        """Release idle slots if a sweep is due (every tenth of the idle time,
        at most a minute apart)."""
        now = self.clock() if now is None else now
        if now >= self._next_sweep:
            self.release_idle(now)

    def release_idle(self, now: float | None = None) -> None:
        """Release the slots of versions not admitted for ``version_idle_seconds``."""
        if self._idle is None:
            return
        now = self.clock() if now is None else now
        self._next_sweep = now + min(self._idle / 10, 60.0)
        horizon = now - self._idle
        for model in list(self._held):
            held = self._held[model]
            reserved = self._reserved.get(model, set())
            for version in [v for v, t in held.items() if t < horizon and v not in reserved]:
                del held[version]
                self._released.append((model, version))
            if not held and model not in self._configured:
                self._drop_model(model)

    def drain_released(self) -> list[tuple[str, str]]:
        """The pairs released since the last call."""
        out, self._released = self._released, []
        return out

    def _others(self, model: str) -> int:
        reserved = self._reserved.get(model, set())
        return sum(1 for v in self._held[model] if v not in reserved)

    def _make_room(self, model: str) -> None:
        held = self._held[model]
        reserved = self._reserved.get(model, set())
        excess = self._others(model) + len(reserved) - self.cap(model)
        for version in [v for v in held if v not in reserved][:max(excess, 0)]:
            del held[version]  # least recently seen first
            self._released.append((model, version))

    def _drop_model(self, model: str) -> None:
        if self._held.pop(model, None) is not None and model not in self._configured:
            self._unknown_models -= 1
