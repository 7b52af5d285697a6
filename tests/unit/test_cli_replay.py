"""Tests of the ``driftgate`` CLI: replay (JSONL and Parquet) and reference fit."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from detectors import ReferenceProfile
from monitor.cli import app
from monitor.sandbox.traffic import CATEGORIES, NUMERIC_FEATURES, TrafficGenerator
from tests.support import MODEL, fit_reference, oracle, write_config

START = 1_700_000_000.0
N = 1500


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run in a scratch directory: files the service writes stay out of the repo."""
    for name in list(os.environ):
        if name.upper().startswith("DRIFTGATE_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def ref() -> ReferenceProfile:
    return fit_reference(n=5000)


@pytest.fixture(scope="module")
def traffic() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gen = TrafficGenerator(seed=8, canary_share=0.3, fraud_rate=0.03)
    batch = gen.generate(N, START, 50.0)  # 30 s of event time
    return batch.predictions, batch.labels


@pytest.fixture
def config(tmp_path: Path, ref: ReferenceProfile) -> Path:
    (tmp_path / "reference.json").write_text(ref.to_json())
    return write_config(tmp_path / "config.yaml", reference={"path": "reference.json"})


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _check_replay_output(stdout: str, preds: list[dict[str, Any]],
                         labels: list[dict[str, Any]], ref: ReferenceProfile,
                         invalid: dict[str, int]) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(stdout)
    versions = doc["models"][MODEL]["versions"]
    by_version = Counter(p["model_version"] for p in preds)
    assert set(versions) == set(by_version) == {"v1", "v2"}
    exp = oracle(preds, labels, ref, slice_seconds=10, window_seconds=600)
    for version, n in by_version.items():
        v = versions[version]
        assert v["predictions"] == n
        assert v["labels_joined"] == exp.joined[(MODEL, version)]
        assert v["late"] == 0
        assert v["window_events"] == exp.window_events[(MODEL, version)]
        for feature, value in v["psi"].items():
            assert value == pytest.approx(exp.psi[(MODEL, version, feature, "reference")],
                                          rel=1e-9, abs=1e-12)
    assert sum(v["predictions"] for v in versions.values()) == len(preds)
    assert doc["invalid"] == invalid
    assert doc["reference"]["hash"] == ref.content_hash
    assert doc["records"] == len(preds) + len(labels) + sum(invalid.values())
    return doc


# ---------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------


def test_replay_jsonl(tmp_path: Path, config: Path, ref: ReferenceProfile,
                      traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, labels = traffic
    lines = [json.dumps(p) for p in preds]
    lines.insert(100, "{this is not json")
    lines += [json.dumps(lab) for lab in labels]
    lines.append(json.dumps({"event_id": "nope", "label": 7}))
    lines.insert(5, "")  # blank lines are skipped
    data = tmp_path / "events.jsonl"
    data.write_text("\n".join(lines) + "\n")
    result = invoke("replay", str(data), "--config", str(config))
    assert result.exit_code == 0, result.output
    _check_replay_output(result.stdout, preds, labels, ref,
                         {"prediction/not_json": 1, "label/bad_label": 1})


PARQUET_SCHEMA = pa.schema([
    ("event_id", pa.string()), ("model", pa.string()), ("model_version", pa.string()),
    ("ts", pa.float64()), ("score", pa.float64()), ("decision", pa.bool_()),
    ("amount", pa.float64()),
    ("features", pa.struct([*((f, pa.float64()) for f in NUMERIC_FEATURES),
                            ("merchant_category", pa.string())])),
    ("label", pa.int64()),
])


def test_replay_parquet(tmp_path: Path, config: Path, ref: ReferenceProfile,
                        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, labels = traffic
    bad = [{**preds[0], "event_id": "bad-score", "score": 1.5},
           {"event_id": "bad-label", "label": 5}]
    rows = [*preds, bad[0], *labels, bad[1]]
    data = tmp_path / "events.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=PARQUET_SCHEMA), data)
    result = invoke("replay", str(data), "--config", str(config))
    assert result.exit_code == 0, result.output
    _check_replay_output(result.stdout, preds, labels, ref,
                         {"prediction/score_out_of_range": 1, "label/bad_label": 1})


def test_replay_missing_file(tmp_path: Path, config: Path) -> None:
    result = invoke("replay", str(tmp_path / "absent.jsonl"), "--config", str(config))
    assert result.exit_code == 2
    assert "does not exist" in result.stderr


def test_replay_wrong_suffix(tmp_path: Path, config: Path) -> None:
    data = tmp_path / "events.csv"
    data.write_text("a,b\n")
    result = invoke("replay", str(data), "--config", str(config))
    assert result.exit_code == 2
    assert ".jsonl or .parquet" in result.stderr


@pytest.mark.parametrize(("sections", "key"), [
    ({"windows": {"slice_seconds": 7}}, "windows"),
    ({"kafka": {"bootstrap_server": "x:9092"}}, "kafka.bootstrap_server"),
    ({"models": [{"name": MODEL, "champion": "v1", "canary": "v1"}]}, "models.0"),
])
def test_bad_config_exits_2_naming_the_key(tmp_path: Path, sections: dict[str, Any],
                                           key: str) -> None:
    cfg = write_config(tmp_path / "bad.yaml", reference={"fit_from_champion_events": 5},
                       **sections)
    data = tmp_path / "events.jsonl"
    data.write_text("{}\n")
    for args in (["replay", str(data)],
                 ["reference", "fit", str(data), "--out", str(tmp_path / "p.json")]):
        result = invoke(*args, "--config", str(cfg))
        assert result.exit_code == 2, result.output
        assert "invalid configuration" in result.stderr
        assert f"{key}: " in result.stderr
        assert result.stdout == ""
    assert not (tmp_path / "p.json").exists()


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "events.jsonl"
    data.write_text("{}\n")
    result = invoke("replay", str(data), "--config", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "<file>: cannot read" in result.stderr


# ---------------------------------------------------------------------------
# reference fit
# ---------------------------------------------------------------------------


def _reference_rows(preds: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The event shape (nested features), without the top-level amount."""
    return [{k: v for k, v in p.items() if k != "amount"} for p in preds]


def _check_profile(result: Any, out: Path, rows: int) -> ReferenceProfile:
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    prof = ReferenceProfile.from_json(out.read_text())
    assert printed == {"out": str(out), "events": rows, "hash": prof.content_hash}
    assert prof.n_events == rows
    assert list(prof.numeric.features) == list(NUMERIC_FEATURES)
    assert list(prof.categorical.features) == ["merchant_category"]
    assert prof.numeric_counts.sum(axis=1).tolist() == [rows] * len(NUMERIC_FEATURES)
    assert prof.categorical_counts.sum(axis=1).tolist() == [rows]
    assert int(prof.score_counts.sum()) == rows
    return prof


def test_reference_fit_jsonl(tmp_path: Path, config: Path,
                             traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]
                             ) -> None:
    preds, _ = traffic
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _reference_rows(preds)))
    out = tmp_path / "profile.json"
    prof = _check_profile(invoke("reference", "fit", str(data), "--config", str(config),
                                 "--out", str(out)), out, len(preds))
    # every category of the data is a bin of its own
    assert set(prof.categorical.categories[0]) >= {
        p["features"]["merchant_category"] for p in preds}
    assert set(prof.categorical.categories[0]) <= set(CATEGORIES)
    # the fit is deterministic
    out2 = tmp_path / "again.json"
    again = _check_profile(invoke("reference", "fit", str(data), "--config", str(config),
                                  "--out", str(out2)), out2, len(preds))
    assert again.content_hash == prof.content_hash


def test_reference_fit_filters_model_and_version(tmp_path: Path, config: Path,
                                                 traffic: tuple[list[dict[str, Any]],
                                                                list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _reference_rows(preds)))
    out = tmp_path / "v2.json"
    n_v2 = sum(1 for p in preds if p["model_version"] == "v2")
    _check_profile(invoke("reference", "fit", str(data), "--config", str(config), "--out",
                          str(out), "--model", MODEL, "--version", "v2"), out, n_v2)
    result = invoke("reference", "fit", str(data), "--config", str(config), "--out",
                    str(out), "--model", "other-model")
    assert result.exit_code == 2
    assert "no reference rows" in result.stderr


def test_reference_fit_flat_parquet(tmp_path: Path, config: Path,
                                    traffic: tuple[list[dict[str, Any]],
                                                   list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    flat = [{"score": p["score"], **p["features"]} for p in preds]
    data = tmp_path / "flat.parquet"
    pq.write_table(pa.Table.from_pylist(flat), data)
    out = tmp_path / "flat.json"
    _check_profile(invoke("reference", "fit", str(data), "--config", str(config),
                          "--out", str(out)), out, len(preds))


def test_reference_fit_missing_column(tmp_path: Path, config: Path) -> None:
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"score": 0.1, "amount": 3.0}) + "\n")
    result = invoke("reference", "fit", str(data), "--config", str(config), "--out",
                    str(tmp_path / "p.json"))
    assert result.exit_code == 2
    assert "lacks column(s)" in result.stderr
    assert "merchant_category" in result.stderr


def test_reference_fit_events_with_top_level_amount(
        tmp_path: Path, config: Path,
        traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    data = tmp_path / "events.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in preds))
    out = tmp_path / "profile.json"
    _check_profile(invoke("reference", "fit", str(data), "--config", str(config),
                          "--out", str(out)), out, len(preds))


def test_reference_fit_uses_configured_bins(
        tmp_path: Path, traffic: tuple[list[dict[str, Any]], list[dict[str, Any]]]) -> None:
    preds, _ = traffic
    cfg = write_config(tmp_path / "c.yaml",
                       reference={"fit_from_champion_events": 5, "n_bins": 4, "top_k": 3})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _reference_rows(preds)))
    out = tmp_path / "profile.json"
    prof = _check_profile(invoke("reference", "fit", str(data), "--config", str(cfg),
                                 "--out", str(out)), out, len(preds))
    assert prof.score.n_columns <= 4 + 1  # n_bins plus the missing-value column
    assert len(prof.categorical.categories[0]) == 3
