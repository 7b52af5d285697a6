"""Tests of rollback.audit: the hash chain, tamper detection, reopening, durability."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollback.audit import GENESIS_HASH, AuditError, AuditLog, canonical_json, verify_file

PROPERTY = settings(max_examples=150, deadline=None)


def record(i: int) -> dict[str, Any]:
    return {"decision_id": f"dec_{i}", "rule": "canary-score-psi", "value": 0.25 + i / 100,
            "samples": {"canary": 1000 + i, "reference": [1, 2, 3]}, "ok": i % 2 == 0,
            "note": "café ✓" if i % 3 == 0 else None}


def write_log(path: Path, n: int) -> list[dict[str, Any]]:
    ticks = count(1_700_000_000)
    with AuditLog(path, fsync=False, clock=lambda: float(next(ticks)) + 0.5) as log:
        return [log.append("decision" if i % 2 else "attempt", record(i)) for i in range(n)]


def lines(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def write_lines(path: Path, new: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in new))


def forge(obj: dict[str, Any]) -> bytes:
    """A line with a correctly recomputed ``hash`` (what a careful forger writes)."""
    body = {k: v for k, v in obj.items() if k != "hash"}
    return canonical_json({**body, "hash": hashlib.sha256(canonical_json(body)).hexdigest()})


# ---------------------------------------------------------------- format
def test_intact_chain_verifies_and_has_the_documented_format(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    written = write_log(path, 5)
    result = verify_file(path)
    assert result.ok
    assert result.records == 5
    assert result.first_bad_line is None
    assert result.reason is None
    assert result.head_hash == written[-1]["hash"]
    raw = lines(path)
    prev = GENESIS_HASH
    for i, (line, rec) in enumerate(zip(raw, written, strict=True), start=1):
        obj = json.loads(line)
        assert obj == rec
        assert obj["seq"] == i
        assert obj["prev_hash"] == prev
        assert obj["kind"] in ("decision", "attempt")
        assert obj["ts"] == 1_700_000_000 + (i - 1) + 0.5
        without = {k: v for k, v in obj.items() if k != "hash"}
        expected = hashlib.sha256(json.dumps(without, sort_keys=True,
                                             separators=(",", ":")).encode()).hexdigest()
        assert obj["hash"] == expected
        assert line == json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()
        assert {k: obj[k] for k in record(i - 1)} == record(i - 1)
        prev = hashlib.sha256(line).hexdigest()


def test_empty_and_new_logs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    result = verify_file(empty)
    assert result.ok
    assert result.records == 0
    assert result.head_hash is None
    with AuditLog(empty, fsync=False) as log:
        assert log.seq == 0
        assert log.head_hash is None
        first = log.append("k", {})
    assert first["seq"] == 1
    assert first["prev_hash"] == GENESIS_HASH
    nested = tmp_path / "a" / "b" / "audit.jsonl"
    with AuditLog(nested) as log:
        log.append("k", {"x": 1})
    assert verify_file(nested).ok


# ------------------------------------------------------- tamper detection
FIELD_VALUES = st.one_of(st.integers(-10**6, 10**6), st.text(max_size=12),
                         st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
                         st.none(), st.lists(st.integers(), max_size=3))


@PROPERTY
@given(n=st.integers(1, 8), data=st.data())
def test_editing_any_field_of_any_line_is_detected_at_that_line(n: int,
                                                                data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        write_log(path, n)
        raw = lines(path)
        index = data.draw(st.integers(0, n - 1), label="line index")
        obj = json.loads(raw[index])
        key = data.draw(st.sampled_from(sorted(obj)), label="field")
        value = data.draw(FIELD_VALUES.filter(lambda v: v != obj[key] or type(v) is not type(
            obj[key])), label="new value")
        obj[key] = value
        raw[index] = canonical_json(obj)
        write_lines(path, raw)
        result = verify_file(path)
        assert not result.ok
        assert result.first_bad_line == index + 1, result.reason
        assert result.records == index


@PROPERTY
@given(n=st.integers(1, 6), data=st.data())
def test_changing_any_byte_is_detected_at_that_line(n: int, data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audit.jsonl"
        write_log(path, n)
        raw = lines(path)
        index = data.draw(st.integers(0, n - 1), label="line index")
        pos = data.draw(st.integers(0, len(raw[index]) - 1), label="byte position")
        old = raw[index][pos]
        new = data.draw(st.integers(0, 255).filter(lambda b: b != old), label="new byte")
        raw[index] = raw[index][:pos] + bytes([new]) + raw[index][pos + 1:]
        write_lines(path, raw)
        result = verify_file(path)
        assert (result.ok, result.first_bad_line) == (False, index + 1), result.reason


def test_editing_the_hash_alongside_the_record_is_still_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    raw = lines(path)
    obj = json.loads(raw[1])
    obj["value"] = 0.01  # the forger recomputes this line's hash...
    raw[1] = forge(obj)
    write_lines(path, raw)
    result = verify_file(path)  # ...but the next line's prev_hash no longer matches
    assert (result.ok, result.first_bad_line) == (False, 3)
    assert result.reason == "prev_hash does not match the previous line"


@pytest.mark.parametrize("removed", [1, 2, 3])
def test_removing_a_line_is_detected(tmp_path: Path, removed: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    raw = lines(path)
    del raw[removed]
    write_lines(path, raw)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, removed + 1)
    assert result.reason is not None
    assert "seq" in result.reason


def test_removing_the_first_line_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    write_lines(path, lines(path)[1:])
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, 1)


@pytest.mark.parametrize(("i", "j"), [(0, 1), (1, 3), (2, 4), (0, 4)])
def test_swapping_two_lines_is_detected(tmp_path: Path, i: int, j: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 5)
    raw = lines(path)
    raw[i], raw[j] = raw[j], raw[i]
    write_lines(path, raw)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, i + 1)


@pytest.mark.parametrize("at", [0, 2, 4])
def test_inserting_a_copied_line_is_detected_at_the_insertion(tmp_path: Path, at: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    raw = lines(path)
    raw.insert(at, raw[(at + 1) % 4])
    write_lines(path, raw)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, at + 1)


@pytest.mark.parametrize("k", [0, 1, 3])
def test_a_duplicated_line_is_detected_at_the_copy(tmp_path: Path, k: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    raw = lines(path)
    raw.insert(k + 1, raw[k])  # a replayed record right after the original
    write_lines(path, raw)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, k + 2)


@pytest.mark.parametrize("at", [0, 2])
def test_inserting_a_forged_line_is_detected(tmp_path: Path, at: int) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    raw = lines(path)
    prev = GENESIS_HASH if at == 0 else hashlib.sha256(raw[at - 1]).hexdigest()
    naive = {"seq": at + 1, "ts": 1.0, "kind": "decision", "prev_hash": prev,
             "action": "none", "hash": "0" * 64}
    write_lines(path, [*raw[:at], canonical_json(naive), *raw[at:]])
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, at + 1)
    assert result.reason is not None
    assert "hash" in result.reason
    # a forger who also computes a valid hash for the inserted line breaks the
    # chain at the next line: its seq and prev_hash no longer follow
    write_lines(path, [*raw[:at], forge(naive), *raw[at:]])
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, at + 2)


@pytest.mark.parametrize(("tail", "reason"), [
    (b'{"seq":', "incomplete last line"),
    (b"\n", "empty line"),
    (b"[1,2]\n", "not a JSON object"),
    (b"garbage\n", "not valid JSON"),
    (b'{"seq":4}\n', "missing field"),
])
def test_damaged_tail_is_detected(tmp_path: Path, tail: bytes, reason: str) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 3)
    with path.open("ab") as fh:
        fh.write(tail)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line, result.records) == (False, 4, 3)
    assert result.reason is not None
    assert reason in result.reason


def test_non_canonical_rewrite_is_detected(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    raw = lines(path)
    raw[1] = json.dumps(json.loads(raw[1]), sort_keys=True).encode()  # spaces added
    write_lines(path, raw)
    result = verify_file(path)
    assert (result.ok, result.first_bad_line) == (False, 2)
    assert result.reason is not None
    assert "canonical" in result.reason


# ------------------------------------------------------------ reopening
def test_reopening_continues_the_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    first = write_log(path, 3)
    with AuditLog(path, fsync=False) as log:
        assert log.seq == 3
        assert log.head_hash == first[-1]["hash"]
        nxt = log.append("delivery", {"outcome": "delivered"})
        assert log.seq == 4
        assert log.head_hash == nxt["hash"]
    assert nxt["seq"] == 4
    assert nxt["prev_hash"] == hashlib.sha256(lines(path)[2]).hexdigest()
    with AuditLog(path, fsync=False) as log:
        log.append("delivery", {"outcome": "rejected"})
    result = verify_file(path)
    assert result.ok
    assert result.records == 5


def test_reopening_a_tampered_log_raises_and_appends_nothing(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 4)
    raw = lines(path)
    raw[2] = raw[2].replace(b"canary-score-psi", b"canary-score-PSI")
    write_lines(path, raw)
    before = path.read_bytes()
    with pytest.raises(AuditError, match="line 3") as info:
        AuditLog(path, fsync=False)
    assert "refusing to append" in str(info.value)
    assert isinstance(info.value, ValueError)
    assert path.read_bytes() == before


def test_reopening_after_a_torn_write_raises(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    write_log(path, 2)
    with path.open("ab") as fh:
        fh.write(b'{"hash":"ab')
    with pytest.raises(AuditError, match="line 3: incomplete last line"):
        AuditLog(path, fsync=False)


# ------------------------------------------------------ append behaviour
def test_append_returns_the_written_record(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False, clock=lambda: 12.25) as log:
        rec = log.append("decision", {"rule": "r", "values": (1, 2)})
    assert rec == json.loads(lines(path)[0])
    assert rec["values"] == [1, 2]
    assert rec["ts"] == 12.25
    assert rec["kind"] == "decision"


@pytest.mark.parametrize(("kind", "rec", "match"), [
    ("", {}, "kind"),
    ("k", {"seq": 1}, "'seq' is reserved"),
    ("k", {"hash": "x"}, "'hash' is reserved"),
    ("k", {"prev_hash": "x"}, "reserved"),
    ("k", {"x": float("nan")}, "not JSON-serialisable"),
    ("k", {"x": object()}, "not JSON-serialisable"),
    ("k", {"x": {1: "a", 10: "b", 2: "c"}}, "round trip"),
    ("k", {1: "a"}, "keys must be str"),
    ("k", [("a", 1)], "must be a mapping"),
])
def test_invalid_records_raise_and_write_nothing(tmp_path: Path, kind: str, rec: Any,
                                                 match: str) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        log.append("ok", {"n": 1})
        with pytest.raises(ValueError, match=match):
            log.append(kind, rec)
        assert log.seq == 1
        log.append("ok", {"n": 2})
    assert verify_file(path).records == 2


def test_closed_log_raises(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl", fsync=False)
    log.close()
    log.close()  # idempotent
    assert log.closed
    with pytest.raises(AuditError, match="closed"):
        log.append("k", {})


def test_fsync_per_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real = os.fsync

    def counting(fd: int) -> None:
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    with AuditLog(tmp_path / "durable.jsonl", fsync=True) as log:
        start = len(calls)  # creating the file also syncs its directory
        log.append("k", {})
        log.append("k", {})
        assert len(calls) - start == 2
    calls.clear()
    with AuditLog(tmp_path / "fast.jsonl", fsync=False) as log:
        log.append("k", {})
    assert calls == []


def test_failed_write_leaves_no_torn_line(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=True) as log:
        log.append("k", {"n": 1})

        def broken(fd: int) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(os, "fsync", broken)
        with pytest.raises(OSError, match="No space"):
            log.append("k", {"n": 2})
        monkeypatch.undo()
        assert log.seq == 1
        log.append("k", {"n": 3})
    result = verify_file(path)
    assert result.ok
    assert result.records == 2


def test_concurrent_appends_from_threads(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(path, fsync=False) as log:
        def work(t: int) -> None:
            for i in range(50):
                log.append("attempt", {"thread": t, "i": i})

        threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        assert log.seq == 400
    result = verify_file(path)
    assert result.ok
    assert result.records == 400
    seen = {(json.loads(x)["thread"], json.loads(x)["i"]) for x in lines(path)}
    assert len(seen) == 400
