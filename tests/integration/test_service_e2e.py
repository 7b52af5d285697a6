"""End to end through a real broker: `driftgate run` against an exact oracle.

A known stream (predictions + delayed labels, with the canary's velocity
feature breaking half-way) is produced into the embedded broker; a real
`driftgate run` process consumes it; every count, PSI/KL/JS and KPI scraped
from /metrics must equal the offline computation over the same events.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from monitor.sandbox.broker import EmbeddedBroker
from tests.integration.helpers import (
    committed_offsets,
    end_offsets,
    produce,
    read_dead_letters,
    service_config,
    setup_topics,
    wait_until,
)
from tests.support import (
    MODEL,
    STREAM_START,
    all_consumed,
    assert_exact_metrics,
    e2e_stream,
    encode,
    fit_reference,
    group_id_of,
    kcat_command,
    oracle,
    parse_metrics,
    sample,
)

pytestmark = pytest.mark.integration

INVALID: list[tuple[str, bytes]] = [
    ("not_json", b"{not json"),
    ("score_out_of_range", encode({"event_id": "bad-1", "model": MODEL, "model_version": "v1",
                                   "ts": STREAM_START, "score": 1.5})),
    ("score_not_finite", b'{"event_id":"bad-2","model":"card-fraud","model_version":"v1",'
                         b'"ts":1700000000,"score":1e999}'),
    ("missing_field", encode({"event_id": "bad-3", "model": MODEL, "ts": STREAM_START,
                              "score": 0.1})),
    ("wrong_type", encode({"event_id": "bad-4", "model": MODEL, "model_version": "v1",
                           "ts": STREAM_START, "score": "high"})),
    ("unknown_model", encode({"event_id": "bad-5", "model": "other", "model_version": "v1",
                              "ts": STREAM_START, "score": 0.1})),
    ("too_large", encode({"event_id": "bad-6", "model": MODEL, "model_version": "v1",
                          "ts": STREAM_START, "score": 0.1, "pad": "x" * 5000})),
    ("bad_timestamp", encode({"event_id": "bad-7", "model": MODEL, "model_version": "v1",
                              "ts": "yesterday", "score": 0.1})),
    ("not_utf8", b"\xff\xfe\x00garbage"),
]
INVALID_LABELS: list[tuple[str, bytes]] = [
    ("bad_label", encode({"event_id": "x", "label": 2})),
    ("missing_field", encode({"label": 1})),
]


def test_exact_metrics_dead_letters_and_sigterm(kafka: EmbeddedBroker, driftgate: Any,
                                                tmp_path: Path) -> None:
    topics = asyncio.run(setup_topics(kafka, 4))
    preds, labels = e2e_stream(seed=11)
    cfg = service_config(tmp_path, kafka, topics, group=f"g-{uuid.uuid4().hex[:6]}")
    dg = driftgate(cfg)
    bad_preds = [v for _, v in INVALID]
    bad_labels = [v for _, v in INVALID_LABELS]
    # predictions first, invalid records in the middle of valid ones, labels after
    half = len(preds) // 2
    asyncio.run(produce(kafka.bootstrap_servers, topics["predictions_topic"],
                        [encode(p) for p in preds[:half]] + bad_preds
                        + [encode(p) for p in preds[half:]],
                        keys=[str(i).encode() for i in range(len(preds) + len(bad_preds))]))
    asyncio.run(produce(kafka.bootstrap_servers, topics["labels_topic"],
                        [encode(lab) for lab in labels] + bad_labels))
    metrics = wait_until(lambda: all_consumed(dg, len(preds), len(labels)), timeout=90,
                         what="all events consumed")
    # one more scrape after the last batch is surely applied everywhere
    metrics = parse_metrics(dg.metrics())
    assert_exact_metrics(metrics, preds, labels)
    for reason, _ in INVALID:
        assert sample(metrics, "driftgate_invalid_events_total", kind="prediction",
                      reason=reason) == 1, reason
    for reason, _ in INVALID_LABELS:
        assert sample(metrics, "driftgate_invalid_events_total", kind="label",
                      reason=reason) == 1, reason
    dlq = asyncio.run(read_dead_letters(kafka.bootstrap_servers, topics["dead_letter_topic"],
                                        len(INVALID) + len(INVALID_LABELS)))
    reasons = sorted(dict(m.headers)["driftgate-reason"].decode() for m in dlq)
    assert reasons == sorted(r for r, _ in INVALID + INVALID_LABELS)
    by_reason = {dict(m.headers)["driftgate-reason"].decode(): m for m in dlq}
    assert by_reason["not_json"].value == b"{not json"
    assert dict(by_reason["not_json"].headers)["driftgate-source"].startswith(
        topics["predictions_topic"].encode() + b"/")
    # the status API agrees with the metrics
    status = dg.get("/v1/status").json()
    assert status["models"][MODEL]["versions"]["v1"]["predictions"] == sum(
        1 for p in preds if p["model_version"] == "v1")
    assert dg.get("/readyz").status_code == 200
    # SIGTERM: drain, commit, exit 0; committed offsets are the end offsets
    assert dg.terminate() == 0
    tlist = [topics["predictions_topic"], topics["labels_topic"]]
    committed = asyncio.run(committed_offsets(kafka.bootstrap_servers,
                                              group_id_of(cfg), tlist))
    ends = asyncio.run(end_offsets(kafka.bootstrap_servers, tlist,
                                   len(preds) + len(INVALID) + len(labels)
                                   + len(INVALID_LABELS)))
    assert committed == ends
    assert "Traceback" not in dg.log.read_text()


def test_kcat_produced_events_are_consumed_the_same(kafka: EmbeddedBroker, driftgate: Any,
                                                    tmp_path: Path) -> None:
    topics = asyncio.run(setup_topics(kafka, 2))
    preds, labels = e2e_stream(seed=12)
    kcat, env = kcat_command(tmp_path)
    for name, events in (("predictions_topic", preds), ("labels_topic", labels)):
        data = tmp_path / f"{name}.jsonl"
        data.write_bytes(b"\n".join(encode(e) for e in events) + b"\n")
        subprocess.run([kcat, "-P", "-b", kafka.bootstrap_servers, "-t", topics[name],
                        "-X", "enable.idempotence=false", "-l", str(data)], check=True,
                       timeout=60, env=env)
    cfg = service_config(tmp_path, kafka, topics, group=f"k-{uuid.uuid4().hex[:6]}")
    dg = driftgate(cfg)
    wait_until(lambda: all_consumed(dg, len(preds), len(labels)), timeout=90,
               what="kcat events consumed")
    assert_exact_metrics(parse_metrics(dg.metrics()), preds, labels)
    assert dg.terminate() == 0


def test_two_instances_six_partitions_exact_sums(kafka: EmbeddedBroker, driftgate: Any,
                                                 tmp_path: Path) -> None:
    topics = asyncio.run(setup_topics(kafka, 6))
    preds, labels = e2e_stream(seed=13)
    group = f"two-{uuid.uuid4().hex[:6]}"
    cfg = service_config(tmp_path, kafka, topics, group=group)
    a = driftgate(cfg)
    b = driftgate(cfg)

    def assigned(dg: Any) -> int:
        m = parse_metrics(dg.metrics())
        return int(sample(m, "driftgate_assigned_partitions") or 0)

    # both instances hold partitions after the rebalance: 12 in all (6 + 6)
    wait_until(lambda: assigned(a) > 0 and assigned(b) > 0
               and assigned(a) + assigned(b) == 12, timeout=60, what="rebalance")
    # labels are keyed like their predictions, so a label lands on the instance
    # that holds its prediction (same partition number in both topics)
    keys = [p["event_id"].encode() for p in preds]
    asyncio.run(produce(kafka.bootstrap_servers, topics["predictions_topic"],
                        [encode(p) for p in preds], keys=keys))
    asyncio.run(produce(kafka.bootstrap_servers, topics["labels_topic"],
                        [encode(lab) for lab in labels], keys=keys))

    def summed() -> dict[str, Any] | None:
        ma, mb = parse_metrics(a.metrics()), parse_metrics(b.metrics())
        tot: dict[str, Any] = {}
        for m in (ma, mb):
            for name in ("driftgate_events_total", "driftgate_confusion_total"):
                for k, v in m.get(name, {}).items():
                    tot.setdefault(name, {})
                    tot[name][k] = tot[name].get(k, 0) + v
        n = sum(v for k, v in tot.get("driftgate_events_total", {}).items()
                if ("kind", "prediction") in k)
        j = sum(v for k, v in tot.get("driftgate_events_total", {}).items()
                if ("kind", "label") in k)
        return tot if n >= len(preds) and j >= len(labels) else None

    tot = wait_until(summed, timeout=90, what="both instances consumed everything")
    exp = oracle(preds, labels, fit_reference(), 10, 600)
    for (model, version), n in exp.predictions.items():
        assert sample(tot, "driftgate_events_total", model=model, version=version,
                      kind="prediction") == n
        assert sample(tot, "driftgate_events_total", model=model, version=version,
                      kind="label") == exp.joined[(model, version)]
        for cell in ("tp", "fp", "fn", "tn"):
            assert sample(tot, "driftgate_confusion_total", model=model, version=version,
                          cell=cell) == exp.confusion[(model, version)][cell]
    assert a.terminate() == 0
    assert b.terminate() == 0


def test_config_error_exits_2_naming_the_key(tmp_path: Path) -> None:
    from tests.integration.helpers import DRIFTGATE

    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({"models": [{"name": "m", "champion": "v1"}],
                               "reference": {"fit_from_champion_events": 100},
                               "windows": {"slice_seconds": 7, "window_seconds": 60}}))
    r = subprocess.run([DRIFTGATE, "run", "--config", str(bad)], capture_output=True,
                       timeout=60)
    assert r.returncode == 2
    assert b"windows" in r.stderr
    assert b"whole multiple" in r.stderr
    assert b"Traceback" not in r.stderr
