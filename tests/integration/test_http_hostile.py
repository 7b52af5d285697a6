"""Hostile HTTP against a running ``driftgate run`` (issue 12): bounded bodies,
compressed bodies refused quickly, start-up failures that close what they opened."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from monitor.sandbox.broker import EmbeddedBroker
from tests.integration.helpers import DRIFTGATE, GROUP_TUNING
from tests.support import MODEL, fit_reference, write_config

BODY = 2 << 20  # 2 MiB: over the 1 MiB limit
FLOOD = 5000


def _config(tmp_path: Path, kafka: EmbeddedBroker, **extra: Any) -> Path:
    ref_path = tmp_path / "reference.json"
    ref_path.write_text(fit_reference().to_json())
    suffix = tmp_path.name[-20:]
    topics = {"predictions_topic": f"p-{suffix}", "labels_topic": f"l-{suffix}",
              "dead_letter_topic": f"d-{suffix}", "decisions_topic": f"x-{suffix}"}
    return write_config(
        tmp_path / "config.yaml",
        kafka={"bootstrap_servers": kafka.bootstrap_servers, "group_id": f"g-{suffix}",
               **topics, **GROUP_TUNING},
        reference={"path": str(ref_path)},
        audit={"path": str(tmp_path / "audit.jsonl"), "fsync": False},
        admin={"token": "hostile-admin-token"},
        **extra)


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


async def _post_oversized(port: int, n: int, concurrency: int = 8) -> dict[int, int]:
    """``n`` POSTs of 2 MiB to the Flagger hook (every tenth chunked, without a
    Content-Length); the statuses answered."""
    body = b"x" * BODY
    statuses: dict[int, int] = {}
    todo = iter(range(n))

    async def worker() -> None:
        for i in todo:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                if i % 10:
                    writer.write(b"POST /v1/flagger/rollback HTTP/1.1\r\nHost: x\r\n"
                                 b"Content-Type: application/json\r\n"
                                 + f"Content-Length: {BODY}\r\n\r\n".encode())
                    writer.write(body)
                else:
                    writer.write(b"POST /v1/flagger/rollback HTTP/1.1\r\nHost: x\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n")
                    for k in range(0, BODY, 256 << 10):
                        writer.write(b"%x\r\n" % (256 << 10) + body[k:k + (256 << 10)]
                                     + b"\r\n")
                    writer.write(b"0\r\n\r\n")
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                line = await asyncio.wait_for(reader.readline(), 30)
                status = int(line.split()[1]) if line else 0
                statuses[status] = statuses.get(status, 0) + 1
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def test_oversized_body_flood_keeps_memory_flat(tmp_path: Path, kafka: EmbeddedBroker,
                                                driftgate: Any) -> None:
    dg = driftgate(_config(tmp_path, kafka))
    assert dg.proc is not None
    pid = dg.proc.pid
    warm = asyncio.run(_post_oversized(dg.port, 200))
    assert warm == {413: 200}, warm
    before = _rss_mib(pid)
    t0 = time.monotonic()
    statuses = asyncio.run(_post_oversized(dg.port, FLOOD))
    took = time.monotonic() - t0
    after = _rss_mib(pid)
    assert statuses == {413: FLOOD}, statuses
    assert after - before < 50, (before, after, took)
    assert dg.get("/healthz").status_code == 200
    # a gzip bomb: 413 quickly, without inflating all of it
    bomb = gzip.compress(b"\0" * (200 << 20), 9)
    t0 = time.monotonic()
    r = httpx.post(dg.url("/v1/flagger/rollback"), content=bomb, timeout=10,
                   headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    took = time.monotonic() - t0
    assert r.status_code == 413
    assert r.json()["error"] == "payload_too_large"
    assert took < 0.5, took
    assert _rss_mib(pid) - before < 50
    assert dg.terminate() == 0
    log = dg.log.read_text()
    assert "hostile-admin-token" not in log
    assert "Traceback" not in log


def test_webhook_secret_error_exits_2_and_closes_the_producer(tmp_path: Path,
                                                               kafka: EmbeddedBroker) -> None:
    cfg = _config(tmp_path, kafka, models=[{
        "name": MODEL, "champion": "v1", "canary": "v2",
        "rollback_url": "http://127.0.0.1:9/rollback"}])
    proc = subprocess.run([DRIFTGATE, "run", "--config", str(cfg)], capture_output=True,
                          timeout=60, env={**os.environ, "PYTHONDEVMODE": "1",
                                           "PYTHONWARNINGS": "always"})
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "webhooks.secrets" in err
    assert "Unclosed" not in err, err
    assert "ResourceWarning" not in err, err
    assert "Traceback" not in err, err

