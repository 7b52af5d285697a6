"""Tests of ``driftgate backtest``: event-time ticks, sustain and cooldown in event
time, deterministic outputs in --out only, the merge by event time, incident
scoring and bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pyarrow.json as pj
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from monitor.cli import app
from monitor.sandbox.traffic import TrafficGenerator
from monitor.serve.backtest_input import FieldNames, read_inputs
from monitor.serve.backtest_score import Incident, load_incidents, score_incidents
from tests.support import fit_reference, write_config

START = 1_700_000_000.0
BUG_AT = START + 300.0
RATE = 20.0
N = 18_000  # 900 s of event time
SUSTAIN = 30.0
TICK = 5.0

Events = list[dict[str, Any]]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("DRIFTGATE_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Config, reference and input files (the canary breaks at BUG_AT)."""
    d = tmp_path_factory.mktemp("backtest-data")
    (d / "reference.json").write_text(fit_reference(n=5000).to_json())
    rules = [{"name": "canary-velocity-psi", "metric": "psi", "feature": "txn_velocity_1h",
              "scope": "canary_vs_champion", "comparison": ">", "threshold": 0.2,
              "min_events": 200, "sustain_seconds": SUSTAIN, "severity": "rollback"}]
    write_config(d / "config.yaml", reference={"path": "reference.json"}, rules=rules,
                 evaluation={"tick_seconds": TICK},
                 models=[{"name": "card-fraud", "champion": "v1", "canary": "v2",
                          "rollback_url": "http://127.0.0.1:9/rollback"}])
    gen = TrafficGenerator(seed=5, canary_share=0.3, bug_at=BUG_AT, label_delay_s=(20, 200))
    batch = gen.generate(N, START, RATE)
    mixed = sorted([(p["ts"], 0, p) for p in batch.predictions]
                   + [(lab["ts"], 1, lab) for lab in batch.labels],
                   key=lambda x: (x[0], x[1]))
    _write(d / "mixed.jsonl", [e for _, _, e in mixed])
    _write(d / "preds.jsonl", batch.predictions)
    _write(d / "labels.jsonl", batch.labels)
    _write(d / "split.jsonl", batch.predictions + batch.labels)
    _write(d / "labels_nots.jsonl", [{k: v for k, v in lab.items() if k != "ts"}
                                     for lab in batch.labels])
    pq.write_table(pj.read_json(d / "mixed.jsonl"), d / "mixed.parquet")
    return d


def _write(path: Path, events: Events) -> None:
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def backtest(data: Path, out: Path, *inputs: str, extra: tuple[str, ...] = ()) -> Any:
    result = invoke("backtest", "--config", str(data / "config.yaml"), "--out", str(out),
                    "--quiet", *inputs, *extra)
    assert result.exit_code == 0, result.output
    return result


def timeline(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "timeline.jsonl").read_text().splitlines()]


def summary(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((out / "summary.json").read_text())
    return doc


@pytest.fixture(scope="module")
def first_run(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run1") / "out"
    backtest(data, out, str(data / "mixed.jsonl"))
    return out


def test_same_decisions_at_same_event_times_on_two_runs(data: Path, first_run: Path,
                                                        tmp_path: Path) -> None:
    out = tmp_path / "again"
    backtest(data, out, str(data / "mixed.jsonl"))
    assert (out / "timeline.jsonl").read_bytes() == (first_run / "timeline.jsonl").read_bytes()
    assert (out / "audit.jsonl").read_bytes() == (first_run / "audit.jsonl").read_bytes()
    a, b = summary(first_run), summary(out)
    assert a["decisions"] == b["decisions"]
    assert a["decisions"]["total"] >= 1
    assert a["events"] == b["events"]
    assert invoke("audit", "verify", str(out / "audit.jsonl")).exit_code == 0


def test_ticks_follow_event_time(first_run: Path) -> None:
    lines = timeline(first_run)
    times = [line["t"] for line in lines]
    assert times == [START + TICK * (i + 1) for i in range(len(times))]
    doc = summary(first_run)
    assert doc["ticks"] == len(lines)
    assert times[-1] > doc["event_time"]["last"] >= times[-2]
    for line in lines:  # every event before a tick was fed before it
        assert line["watermark"] < line["t"]
        if line["t"] <= START + N / RATE:  # (predictions every 1/RATE s until then)
            assert line["t"] - line["watermark"] <= 1.0 / RATE + 1e-6


def test_decision_after_fault_and_sustain_counts_event_time(first_run: Path) -> None:
    lines = timeline(first_run)
    decisions = [d for line in lines for d in line["decisions"]]
    assert decisions
    first = decisions[0]
    assert first["action"] == "rollback"
    assert first["version"] == "v2"
    assert first["at"] > BUG_AT
    # the first tick at which the rule breached (state breaching) for this breach
    breach_start = first["breach_started_at"]
    state = {line["t"]: next(r["state"] for r in line["rules"] if r["rule"] == first["rule"])
             for line in lines}
    assert state[breach_start] == "breaching"
    assert state[breach_start - TICK] not in ("breaching", "firing")
    assert all(state[breach_start + TICK * i] == "breaching"
               for i in range(round((first["at"] - breach_start) / TICK)))
    assert first["at"] - breach_start >= SUSTAIN
    assert first["at"] - breach_start < SUSTAIN + TICK  # fired at the first tick it could
    # what the router would have received: recorded, not sent
    sends = [s for line in lines for s in line["would_send"]]
    assert sends[0]["target"] == "router:card-fraud"
    assert sends[0]["body"]["decision_id"] == first["decision_id"]
    assert summary(first_run)["would_send"] == len(sends)
    rule = next(r for line in lines if line["decisions"] for r in line["rules"])
    assert rule["threshold"] == 0.2
    assert rule["value"] > 0.2


def test_outputs_only_in_out(data: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    backtest(data, tmp_path / "out", str(data / "mixed.jsonl"))
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "audit.jsonl", "summary.json", "timeline.jsonl"]
    # the audit log is a fresh chain: a second run with --force starts it again
    seq = summary(tmp_path / "out")["audit"]["records"]
    backtest(data, tmp_path / "out", str(data / "mixed.jsonl"), extra=("--force",))
    assert summary(tmp_path / "out")["audit"]["records"] == seq
    assert list(cwd.iterdir()) == []


def test_predictions_then_labels_join_as_interleaved(data: Path, first_run: Path,
                                                     tmp_path: Path) -> None:
    backtest(data, tmp_path / "split", str(data / "split.jsonl"))
    backtest(data, tmp_path / "two", "--predictions", str(data / "preds.jsonl"),
             "--labels", str(data / "labels.jsonl"))
    ref = summary(first_run)
    assert ref["events"]["joined"] == N
    for name in ("split", "two"):
        assert summary(tmp_path / name)["events"] == ref["events"]
        assert (tmp_path / name / "timeline.jsonl").read_bytes() == \
            (first_run / "timeline.jsonl").read_bytes()


def test_labels_without_ts_take_their_prediction_time(data: Path, tmp_path: Path) -> None:
    backtest(data, tmp_path / "nots", "--predictions", str(data / "preds.jsonl"),
             "--labels", str(data / "labels_nots.jsonl"))
    ev = summary(tmp_path / "nots")["events"]
    assert ev["joined"] == N
    assert ev["labels_without_ts"] == N
    assert ev["placed_by_file_order"] == 0


def test_parquet_gives_the_same_timeline(data: Path, first_run: Path, tmp_path: Path) -> None:
    backtest(data, tmp_path / "pq", str(data / "mixed.parquet"))
    assert (tmp_path / "pq" / "timeline.jsonl").read_bytes() == \
        (first_run / "timeline.jsonl").read_bytes()
    assert summary(tmp_path / "pq")["performance"]["events_per_second"] > 0


def test_incidents_scored_in_a_run(data: Path, first_run: Path, tmp_path: Path) -> None:
    decision = summary(first_run)["decisions"]["list"][0]
    inc = tmp_path / "incidents.jsonl"
    inc.write_text(json.dumps({"start": BUG_AT, "version": "v2", "kind": "rollback"}) + "\n"
                   + json.dumps({"start": START + 10, "end": START + 100, "kind": "alert"})
                   + "\n")
    result = backtest(data, tmp_path / "out", str(data / "mixed.jsonl"),
                      extra=("--incidents", str(inc)))
    printed = json.loads(result.stdout)["incidents"]
    scored = summary(tmp_path / "out")["incidents"]
    assert printed["detected"] == scored["detected"] == 1
    assert scored["missed"] == 1
    assert scored["incidents"][0]["delay_seconds"] == pytest.approx(decision["at"] - BUG_AT)
    assert scored["incidents"][1]["detected"] is False
    n_dec = summary(first_run)["decisions"]["total"]
    assert scored["false_alarms"] == 0  # every decision is on v2, after the fault
    # an incident window that closes before the decision: missed, and a false rollback
    inc.write_text(json.dumps([{"start": BUG_AT, "end": BUG_AT + 1, "version": "v2"}]))
    backtest(data, tmp_path / "out2", str(data / "mixed.jsonl"),
             extra=("--incidents", str(inc)))
    scored = summary(tmp_path / "out2")["incidents"]
    span = summary(tmp_path / "out2")["event_time"]["seconds"]
    assert (scored["detected"], scored["missed"]) == (0, 1)
    assert scored["false_alarms"] == n_dec
    assert scored["false_rollbacks"] == n_dec
    assert scored["false_alarms_per_hour"] == pytest.approx(n_dec / (span / 3600.0))


def test_score_incidents_constructed_case() -> None:
    incidents = [
        Incident(start=1000.0, end=2000.0, model="m", version="v2", kind="rollback"),
        Incident(start=5000.0, end=None, model="m", version=None, kind="alert"),
        Incident(start=8000.0, end=8100.0, model="m", version="v2", kind=None),
    ]

    def dec(at: float, action: str, version: str = "v2") -> dict[str, Any]:
        return {"at": at, "action": action, "model": "m", "version": version,
                "decision_id": f"d{at:g}", "rule": "r"}

    decisions = [
        dec(500.0, "rollback"),             # before any incident: false rollback
        dec(1100.0, "alert"),               # in incident 1's window, wrong kind: covered
        dec(1250.0, "rollback"),            # detects incident 1 after 250 s
        dec(3000.0, "alert", "v1"),         # outside every window: false alarm
        dec(5600.0, "alert", "v1"),         # detects incident 2 after 600 s
        dec(9000.0, "rollback", "v3"),      # in incident 2's window (any version)
    ]
    s = score_incidents(incidents, decisions, run_seconds=4 * 3600.0)
    assert [r["detected"] for r in s["incidents"]] == [True, True, False]
    assert [r.get("delay_seconds") for r in s["incidents"]] == [250.0, 600.0, None]
    assert (s["detected"], s["missed"]) == (2, 1)
    assert s["median_delay_seconds"] == 425.0
    assert s["max_delay_seconds"] == 600.0
    assert s["false_alarms"] == 2
    assert s["false_rollbacks"] == 1
    assert s["false_alarms_per_hour"] == pytest.approx(0.5)
    assert [d["decision_id"] for d in s["false_alarm_decisions"]] == ["d500", "d3000"]


def test_merge_by_event_time_rules(tmp_path: Path) -> None:
    f = tmp_path / "e.jsonl"
    f.write_text("\n".join([
        '{"event_id": "a", "ts": 20, "score": 0.1}',
        '{"event_id": "b", "ts": "1970-01-01T00:00:10Z", "score": 0.2}',
        '{"event_id": "b", "label": 1}',
        '{"event_id": "zz", "label": 0}',
        'not json',
        '{"event_id": "a", "label": 0, "ts": 15}',
    ]) + "\n")
    m = read_inputs([f], FieldNames())
    # b's label takes b's time; the unknown event's label and the bad line take the
    # time of the row before them in the file; predictions before labels at a tie
    assert m.times.tolist() == [10.0, 10.0, 10.0, 10.0, 15.0, 20.0]
    assert m.kinds.tolist() == [0, 0, 1, 1, 1, 0]
    assert m.values[1] == b"not json"
    assert m.values[2] == b'{"event_id": "b", "label": 1}'
    assert m.labels_without_ts == 2
    assert m.rows_without_time == 2  # the label of an unknown event and the bad line


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "missing.jsonl"),
    ("nonempty", "is not empty"),
    ("incidents_missing", "nope.json"),
    ("incidents_bad_start", "'yesterday'"),
    ("incidents_not_json", "line 1 is not JSON"),
    ("incidents_bad_kind", "'page'"),
    ("both_inputs", "not both"),
    ("only_predictions", "--labels"),
    ("bad_suffix", ".csv"),
])
def test_bad_inputs_exit_2(data: Path, tmp_path: Path, case: str, message: str) -> None:
    out = tmp_path / "out"
    inputs = [str(data / "mixed.jsonl")]
    extra: list[str] = []
    if case == "missing":
        inputs = [str(tmp_path / "missing.jsonl")]
    elif case == "nonempty":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case.startswith("incidents"):
        inc = tmp_path / "inc.json"
        body = {"incidents_bad_start": json.dumps([{"start": "yesterday"}]),
                "incidents_not_json": "{oops\n",
                "incidents_bad_kind": json.dumps([{"start": START, "kind": "page"}])}
        if case == "incidents_missing":
            inc = tmp_path / "nope.json"
        else:
            inc.write_text(body[case])
        extra = ["--incidents", str(inc)]
    elif case == "both_inputs":
        extra = ["--predictions", str(data / "preds.jsonl"), "--labels",
                 str(data / "labels.jsonl")]
    elif case == "only_predictions":
        inputs = ["--predictions", str(data / "preds.jsonl")]
    elif case == "bad_suffix":
        bad = tmp_path / "events.csv"
        bad.write_text("a,b\n")
        inputs = [str(bad)]
    result = invoke("backtest", "--config", str(data / "config.yaml"), "--out", str(out),
                    "--quiet", *inputs, *extra)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    if case == "nonempty":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    else:
        assert not out.exists()


def test_load_incidents_formats(tmp_path: Path) -> None:
    f = tmp_path / "i.json"
    f.write_text(json.dumps({"incidents": [{"start": "2023-11-14T22:13:20Z", "end": START + 5,
                                            "model": "m", "kind": "rollback"}]}))
    (inc,) = load_incidents(f)
    assert (inc.start, inc.end, inc.model, inc.version, inc.kind) == (
        START, START + 5, "m", None, "rollback")
    f.write_text(json.dumps([{"start": 10, "end": 5}]))
    with pytest.raises(ValueError, match="bad 'end' 5"):
        load_incidents(f)


def test_progress_on_stderr_unless_quiet(data: Path, tmp_path: Path) -> None:
    args = ["backtest", "--config", str(data / "config.yaml"), str(data / "mixed.jsonl")]
    loud = invoke(*args, "--out", str(tmp_path / "a"))
    assert loud.exit_code == 0, loud.output
    assert f"backtest: {2 * N:,}/{2 * N:,} events (100 %)" in loud.stderr
    quiet = invoke(*args, "--out", str(tmp_path / "b"), "--quiet")
    assert quiet.stderr == ""
    assert json.loads(quiet.stdout)["events"]["read"] == 2 * N
