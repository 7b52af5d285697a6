"""``driftgate traffic``: synthetic card traffic into a real Kafka cluster."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time

import httpx

from monitor.config import load_settings
from monitor.sandbox.demo import CANARY, CHAMPION, MODEL, LiveTraffic
from monitor.sandbox.traffic import NUMERIC_FEATURES, TrafficGenerator

__all__ = ["run_traffic"]


class _Share:
    """The canary share: fixed, or polled from a router stub's /weights."""

    def __init__(self, share: float, router_url: str | None) -> None:
        self.share = share
        self.router_url = router_url
        self._last = 0.0

    def canary_share(self, model: str, canary: str) -> float:
        return self.share

    async def poll(self, stop: asyncio.Event) -> None:
        if self.router_url is None:
            return
        async with httpx.AsyncClient(timeout=2.0) as client:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    w = (await client.get(f"{self.router_url}/weights")).json()[MODEL]
                    total = sum(w.values())
                    self.share = w.get(CANARY, 0) / total if total else 0.0
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)


async def run_traffic(bootstrap: str, rate: float, duration: float, seed: int,
                      bug_after: float | None, canary_share: float, router_url: str | None,
                      predictions_topic: str, labels_topic: str) -> None:
    """Produce until ``duration`` (0 = SIGTERM/SIGINT)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate!r}")
    if not 0 <= canary_share <= 1:
        raise ValueError(f"canary_share must be in [0, 1], got {canary_share!r}")
    settings = load_settings(
        None, kafka={"bootstrap_servers": bootstrap, "predictions_topic": predictions_topic,
                     "labels_topic": labels_topic},
        models=[{"name": MODEL, "champion": CHAMPION, "canary": CANARY}],
        features={"numeric": list(NUMERIC_FEATURES), "categorical": ["merchant_category"]},
        reference={"fit_from_champion_events": 1})
    t0 = time.time()
    gen = TrafficGenerator(seed=seed, bug_at=None if bug_after is None else t0 + bug_after)
    share = _Share(canary_share, router_url)
    traffic = LiveTraffic(bootstrap, settings, gen, rate, share)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if duration > 0:
        loop.call_later(duration, stop.set)
    await asyncio.gather(traffic.run(stop), share.poll(stop))
