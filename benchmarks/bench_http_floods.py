"""Benchmark: ``/healthz`` latency while the HTTP API is flooded.

A driftgate HTTP service (real engine with a fitted reference, 12,000 replayed
predictions of a champion and a broken canary, decision layer, admin token)
runs in a child process; this process samples ``GET /healthz`` back to back
(one request in flight, from its own thread) and reports its p50 / p99 / max latency, idle and
during each flood:

* ``reports``: 8 concurrent ``GET /v1/reports/card-fraud/{v1,v2}`` (Evidently
  HTML; rendered off the event loop, one render per version, cached per window);
* ``oversized``: 5,000 ``POST /v1/flagger/rollback`` with 2 MiB bodies, 32 at a
  time (500 with ``--quick``);
* ``gzip_bombs``: rounds of ten concurrent ``Content-Encoding: gzip`` bodies
  of ~200 KiB inflating to 200 MiB, for at least ``BOMB_SECONDS`` (the bomb is
  compressed before the phase starts).

The last two may be refused (4xx) or have their connection cut: their status
counts are reported. The server's RSS is read before and after each flood. It
measures; it asserts nothing (the issue's target is p99 < 50 ms).

Run ``python -m benchmarks.bench_http_floods [--quick]`` from the project
root: one JSON object on one line goes to stdout, progress to stderr.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.common import cli_main, json_safe, stderr_log

__all__ = ["run"]

TOKEN = "bench-admin-token"  # noqa: S105 - a benchmark token
REPORT_REQUESTS = 8
OVERSIZED = 5000
OVERSIZED_QUICK = 500
OVERSIZED_BYTES = 2 * 1024 * 1024
OVERSIZED_CONCURRENCY = 32
BOMBS = 10  # concurrent gzip bombs per round
BOMB_SECONDS = 3.0  # rounds go on at least this long
BOMB_INFLATED = 200 * 1024 * 1024

log = stderr_log("bench_http_floods")


def _serve(port: int, workdir: str) -> None:
    """The child process: build the service and serve its HTTP API forever."""
    from aiohttp import web

    from monitor.config import load_settings
    from monitor.serve.http import build_app, decision_routes
    from tests.support import fit_reference, in_process_service, write_config

    tmp = Path(workdir)
    ref = fit_reference()
    (tmp / "reference.json").write_text(ref.to_json())
    settings = load_settings(write_config(
        tmp / "c.yaml", reference={"path": str(tmp / "reference.json")},
        admin={"token": TOKEN}, audit={"path": str(tmp / "audit.jsonl"), "fsync": False},
        evaluation={"report_sample_size": 3000}))
    service, layer = in_process_service(tmp, settings, ref, 12_000)
    app = build_app(service, decision_routes(service, layer))
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _stats(samples: list[float]) -> dict[str, Any]:
    if not samples:
        return {"n": 0}
    ms = np.asarray(samples) * 1000
    return {"n": len(samples), "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


def _sample_healthz(port: int, stop: threading.Event, out: list[float]) -> None:
    # its own thread and a blocking keep-alive connection: the flood's event
    # loop in this process does not delay the samples
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        while not stop.is_set():
            t = time.perf_counter()
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            out.append(time.perf_counter() - t)
            time.sleep(0.005)
    finally:
        conn.close()


async def _post(session: aiohttp.ClientSession, url: str, data: bytes,
                headers: dict[str, str], statuses: Counter[str]) -> None:
    try:
        async with session.post(url, data=data, headers=headers) as r:
            await r.read()
            statuses[str(r.status)] += 1
    except (aiohttp.ClientError, OSError) as exc:  # a refused body may cut the connection
        statuses[type(exc).__name__] += 1


async def _flood(base: str, pid: int, name: str, work: Any) -> dict[str, Any]:
    samples: list[float] = []
    stop = threading.Event()
    rss0 = _rss_mib(pid)
    sampler = threading.Thread(target=_sample_healthz,
                               args=(int(base.rsplit(":", 1)[1]), stop, samples))
    sampler.start()
    t = time.perf_counter()
    try:
        detail = await work()
    finally:
        seconds = time.perf_counter() - t
        stop.set()
        sampler.join(60)
    log(f"{name}: {seconds:.1f} s, healthz {_stats(samples)}")
    return {"seconds": seconds, "healthz": _stats(samples), "rss_mib_before": rss0,
            "rss_mib_after": _rss_mib(pid), **detail}


async def _run_floods(base: str, pid: int, quick: bool) -> dict[str, Any]:
    url = f"{base}/v1/flagger/rollback"
    headers = {"Content-Type": "application/json"}

    async def idle() -> dict[str, Any]:
        await asyncio.sleep(2.0)
        return {}

    async def reports() -> dict[str, Any]:
        statuses: Counter[str] = Counter()
        times: list[float] = []
        timeout = aiohttp.ClientTimeout(total=300)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            async def one(i: int) -> None:
                t = time.perf_counter()
                async with session.get(f"{base}/v1/reports/card-fraud/v{1 + i % 2}") as r:
                    await r.read()
                    statuses[str(r.status)] += 1
                times.append(time.perf_counter() - t)
            await asyncio.gather(*(one(i) for i in range(REPORT_REQUESTS)))
        return {"statuses": dict(statuses), "request_s_max": max(times)}

    async def oversized() -> dict[str, Any]:
        n = OVERSIZED_QUICK if quick else OVERSIZED
        body = b'{"metadata": {"model": "' + b"x" * OVERSIZED_BYTES + b'"}}'
        statuses: Counter[str] = Counter()
        sem = asyncio.Semaphore(OVERSIZED_CONCURRENCY)
        async with aiohttp.ClientSession() as session:
            async def one() -> None:
                async with sem:
                    await _post(session, url, body, headers, statuses)
            await asyncio.gather(*(one() for _ in range(n)))
        return {"requests": n, "statuses": dict(statuses)}

    # built before its phase: compressing 200 MiB here is client work, not load
    bomb = gzip.compress(b"0" * BOMB_INFLATED, compresslevel=9)

    async def bombs() -> dict[str, Any]:
        # rounds of ten concurrent bombs for at least BOMB_SECONDS, so that /healthz
        # is sampled a few hundred times while they land
        statuses: Counter[str] = Counter()
        sent = 0
        t0 = time.perf_counter()
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            while sent == 0 or time.perf_counter() - t0 < BOMB_SECONDS:
                await asyncio.gather(*(_post(session, url, bomb,
                                             {**headers, "Content-Encoding": "gzip"}, statuses)
                                       for _ in range(BOMBS)))
                sent += BOMBS
        return {"requests": sent, "compressed_bytes": len(bomb), "statuses": dict(statuses)}

    return {"idle": await _flood(base, pid, "idle", idle),
            "reports": await _flood(base, pid, "reports", reports),
            "oversized": await _flood(base, pid, "oversized", oversized),
            "gzip_bombs": await _flood(base, pid, "gzip_bombs", bombs)}


def run(quick: bool = False) -> dict[str, Any]:
    from monitor.sandbox.ports import free_port

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    root = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from benchmarks.bench_http_floods import _serve; "
             f"_serve({port}, {tmp!r})"], cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            import httpx

            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the benchmark server did not start")
                time.sleep(0.2)
            floods = asyncio.run(_run_floods(base, proc.pid, quick))
        finally:
            proc.terminate()
            proc.wait(30)
    out: dict[str, Any] = json_safe({
        "quick": quick, "target_healthz_p99_ms": 50, **floods,
        "healthz_p99_lt_50ms": {k: v["healthz"].get("p99_ms", 1e9) < 50
                                for k, v in floods.items()}})
    return out


def main(argv: list[str] | None = None) -> int:
    return cli_main("bench_http_floods", run, __doc__,
                    f"{OVERSIZED_QUICK} oversized bodies instead of {OVERSIZED}", argv)


if __name__ == "__main__":
    raise SystemExit(main())
