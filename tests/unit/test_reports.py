"""Evidently reports of the window sample against the reference sample."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from typer.testing import CliRunner

from monitor.cli import app as cli_app
from monitor.config import load_settings
from monitor.core.decisions import DecisionLayer
from monitor.core.service import Service
from monitor.engine.reservoir import SliceReservoir
from monitor.ingest.codec import EventCodec
from monitor.ingest.records import RawRecord
from monitor.ingest.replay import ReplaySource
from monitor.ingest.sources import MemoryDeadLetterSink
from monitor.sandbox.ports import free_port
from monitor.sandbox.traffic import TrafficGenerator
from monitor.serve.http import build_app, decision_routes
from monitor.serve.reports import build_report
from tests.support import MODEL, fit_reference, write_config


def _service(tmp_path: Path, **sections: Any) -> Service:
    ref = fit_reference()
    (tmp_path / "reference.json").write_text(ref.to_json())
    cfg = write_config(tmp_path / "c.yaml", reference={"path": str(tmp_path / "reference.json")},
                       audit={"path": str(tmp_path / "audit.jsonl"), "fsync": False},
                       evaluation={"report_sample_size": 3000}, **sections)
    settings = load_settings(cfg)
    (tmp_path / "none.jsonl").write_text("")
    service = Service(settings, ReplaySource(tmp_path / "none.jsonl", "p", "l"),
                      MemoryDeadLetterSink(), ref)
    gen = TrafficGenerator(seed=8, canary_share=0.3, bug_at=0.0)  # canary broken throughout
    batch = gen.generate(12_000, 1_700_000_000.0, 100.0)
    codec = EventCodec(settings)
    assert service.engine is not None
    for start in range(0, 12_000, 3000):
        recs = [RawRecord("p", 0, i, json.dumps(p).encode())
                for i, p in enumerate(batch.predictions[start:start + 3000], start)]
        service.engine.process(codec.decode(recs))
    return service


def test_report_names_the_drifted_features_only_for_the_drifted_version(
        tmp_path: Path) -> None:
    service = _service(tmp_path)
    eng = service.engine
    assert eng is not None
    names = list(eng.reference.numeric.features)
    cats = list(eng.reference.categorical.features)
    canary = eng.versions[(MODEL, "v2")].sample
    champion = eng.versions[(MODEL, "v1")].sample
    assert canary is not None
    assert champion is not None
    html, bad = build_report(eng.reference, canary, names, cats, "canary")
    assert "txn_velocity_1h" in bad["drifted_features"]
    assert bad["columns"]["txn_velocity_1h"]["drifted"] is True
    assert bad["current_rows"] <= 3000
    assert "<html" in html.lower()
    _, good = build_report(eng.reference, champion, names, cats, "champion")
    assert good["drifted_features"] == []
    assert set(good["columns"]) == {*names, *cats, "model_score"}


def test_reservoir_is_bounded_and_uniform_within_a_slice() -> None:
    r = SliceReservoir(capacity=1000, n_slices=1, n_numeric=1, n_categorical=0, seed=3)
    values = np.arange(100_000.0)
    for chunk in np.array_split(values, 37):
        r.add(np.zeros(chunk.size, dtype=np.int64), chunk[:, None], _NoCats(), chunk)
    num, _, score = r.sample()
    assert num.shape == (1000, 1)
    assert np.array_equal(num[:, 0], score)
    # a uniform sample of 0..99,999: its mean is near 50,000 (sd of the mean ~ 913)
    assert abs(float(num.mean()) - 50_000) < 4_000
    assert len(set(num[:, 0].tolist())) == 1000


class _NoCats:
    def __getitem__(self, i: int) -> list[object]:
        return []


def test_report_route_and_cli(tmp_path: Path) -> None:
    service = _service(tmp_path)
    layer = DecisionLayer(service.settings, lambda: service.engine)
    port = free_port()
    started = threading.Event()
    loop = asyncio.new_event_loop()
    runner_box: dict[str, Any] = {}

    async def serve() -> None:
        runner = web.AppRunner(build_app(service, decision_routes(service, layer)))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runner_box["r"] = runner
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(serve()),
                                              loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        out = tmp_path / "report.html"
        res = CliRunner().invoke(cli_app, ["report", "--model", MODEL, "--version", "v2",
                                           "--out", str(out),
                                           "--url", f"http://127.0.0.1:{port}"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.output.strip().splitlines()[-1])
        assert "txn_velocity_1h" in doc["drifted_features"]
        assert "txn_velocity_1h" in out.read_text()
        missing = CliRunner().invoke(cli_app, ["report", "--model", MODEL, "--version", "v9",
                                               "--out", str(out),
                                               "--url", f"http://127.0.0.1:{port}"])
        assert missing.exit_code == 1
        assert "no data for card-fraud v9" in missing.output
    finally:
        asyncio.run_coroutine_threadsafe(runner_box["r"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def _algorithm_r(res: SliceReservoir, slice_ids: Any, numeric: Any,
                 cats: Sequence[Sequence[object]],
                 score: Any) -> int:
    """Reference: the reservoir's draws applied one row at a time (algorithm R);
    returns how many kept draws hit a place already drawn in the same batch."""
    from monitor.engine.reservoir import SliceSample

    k = res.per_slice
    repeats = 0
    for sid in np.unique(slice_ids).tolist():
        rows = np.flatnonzero(slice_ids == sid)
        sl = res.slices.get(sid)
        if sl is None:
            sl = res.slices[sid] = SliceSample(np.empty((k, res.n_numeric)),
                                          [[] for _ in range(k)], np.empty(k))
        free = min(k - sl.filled, rows.size)
        for j, i in enumerate(rows[:free].tolist()):
            sl.numeric[sl.filled + j] = numeric[i]
            sl.score[sl.filled + j] = score[i]
            sl.categorical[sl.filled + j] = list(cats[i])
        sl.filled += free
        sl.seen += free
        rest = rows[free:]
        if rest.size:
            positions = res._rng.integers(0, sl.seen + np.arange(1, rest.size + 1))
            sl.seen += rest.size
            kept = positions[positions < k]
            repeats += kept.size - np.unique(kept).size
            for pos, i in zip(positions.tolist(), rest.tolist(), strict=True):
                if pos < k:
                    sl.numeric[pos] = numeric[i]
                    sl.score[pos] = score[i]
                    sl.categorical[pos] = list(cats[i])
    return repeats


def test_reservoir_batches_equal_algorithm_r_row_by_row() -> None:
    # the batch update replaces places with numpy; a place drawn twice in one
    # batch must keep the later row, as the one-row-at-a-time algorithm does
    rng = np.random.default_rng(5)
    fast = SliceReservoir(capacity=40, n_slices=4, n_numeric=3, n_categorical=1, seed=11)
    slow = SliceReservoir(capacity=40, n_slices=4, n_numeric=3, n_categorical=1, seed=11)
    drawn_twice = 0
    for _ in range(30):
        n = int(rng.integers(1, 400))
        sids = rng.integers(0, 5, n)
        numeric = rng.normal(size=(n, 3))
        cats = [[f"c{int(x)}"] for x in rng.integers(0, 1000, n)]
        score = rng.random(n)
        fast.add(sids, numeric, cats, score)
        drawn_twice += _algorithm_r(slow, sids, numeric, cats, score)
    assert drawn_twice  # the case the batch update must order right did occur
    assert sorted(fast.slices) == sorted(slow.slices)
    for sid, sl in fast.slices.items():
        ref = slow.slices[sid]
        assert (sl.filled, sl.seen) == (ref.filled, ref.seen)
        np.testing.assert_array_equal(sl.numeric[:sl.filled], ref.numeric[:ref.filled])
        np.testing.assert_array_equal(sl.score[:sl.filled], ref.score[:ref.filled])
        assert sl.categorical[:sl.filled] == ref.categorical[:ref.filled]


async def test_concurrent_report_requests_share_one_render_and_the_window_is_cached(
        tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from monitor.serve.reports import ReportRenderer

    service = _service(tmp_path)
    eng = service.engine
    assert eng is not None
    st = eng.versions[(MODEL, "v2")]
    assert st.sample is not None
    sample = st.sample
    calls: list[int] = []

    def render(inputs: Any) -> tuple[str, dict[str, Any]]:
        calls.append(1)
        return "<html></html>", {"rows": int(inputs.score.size)}

    from monitor.serve.reports import report_inputs

    r = ReportRenderer(ThreadPoolExecutor(2), render=render)

    def make() -> Any:
        return report_inputs(eng.reference, sample, list(eng.reference.numeric.features),
                             list(eng.reference.categorical.features), "t")

    window = (st.score.bounds, eng.reference.content_hash)
    try:
        results = await asyncio.gather(*(r.get((MODEL, "v2"), window, make) for _ in range(8)))
        assert len(calls) == 1
        assert all(res == results[0] for res in results)
        await r.get((MODEL, "v2"), window, make)
        assert len(calls) == 1  # same window: cached
        await r.get((MODEL, "v2"), ("next", "window"), make)
        assert len(calls) == 2  # a new window renders again
    finally:
        r.close()


async def test_reports_can_require_the_admin_token(tmp_path: Path) -> None:
    from aiohttp.test_utils import TestClient, TestServer

    service = _service(tmp_path, http={"reports_require_token": True},
                       admin={"token": "tok"})
    layer = DecisionLayer(service.settings, lambda: service.engine)
    client = TestClient(TestServer(build_app(service, decision_routes(service, layer))))
    await client.start_server()
    try:
        r = await client.get(f"/v1/reports/{MODEL}/v9")
        assert r.status == 401
        r = await client.get(f"/v1/reports/{MODEL}/v9", headers={"Authorization": "Bearer tok"})
        assert r.status == 404
    finally:
        await client.close()
