"""A tamper-evident, append-only audit log (JSON lines, SHA-256 hash chain).

Each line is one record, written as canonical JSON (sorted keys, compact
separators, ASCII)::

    {"hash": ..., "kind": "decision", "prev_hash": ..., "seq": 7, "ts": ..., ...}

* ``seq`` counts records from 1;
* ``prev_hash`` is the SHA-256 (hex) of the previous line's exact bytes
  (without the newline), 64 zeros for the first record;
* ``hash`` is the SHA-256 (hex) of the canonical JSON of the record without
  its ``hash`` key.

:func:`verify_file` recomputes all of it and names the first line at which the
chain breaks: an edited line fails its own ``hash``; a removed, reordered or
inserted line breaks ``seq`` and ``prev_hash`` continuity. A forger who
rewrites *every* line after an edit can produce a self-consistent chain; keep
:attr:`AuditLog.head_hash` somewhere else (the decisions topic, metrics,
another system's log) to anchor the chain. Truncating the last records is
likewise only visible against an anchored head or record count.

:class:`AuditLog` verifies an existing file before it appends anything and
refuses to extend a broken chain (:class:`AuditError`).

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> path = Path(tempfile.mkdtemp()) / "audit.jsonl"
>>> log = AuditLog(path, fsync=False)
>>> first = log.append("decision", {"rule": "canary-psi", "action": "rollback"})
>>> first["seq"], first["prev_hash"] == "0" * 64
(1, True)
>>> second = log.append("delivery", {"outcome": "delivered"})
>>> log.close()
>>> result = verify_file(path)
>>> result.ok, result.records, result.head_hash == second["hash"]
(True, 2, True)
>>> text = path.read_text().replace("delivered", "rejected")
>>> _ = path.write_text(text)
>>> bad = verify_file(path)
>>> bad.ok, bad.first_bad_line, bad.reason
(False, 2, 'hash does not match the record (the line was modified)')
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

__all__ = ["GENESIS_HASH", "RESERVED_KEYS", "AuditError", "AuditLog", "VerifyResult",
           "canonical_json", "verify_file"]

GENESIS_HASH = "0" * 64
RESERVED_KEYS = ("seq", "ts", "kind", "prev_hash", "hash")
_HEX = frozenset("0123456789abcdef")


class AuditError(ValueError):
    """The audit log does not verify (or is closed); nothing was appended."""


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_file`.

    Attributes
    ----------
    ok : bool
        True when every line verifies.
    records : int
        Records that verified (all of them when ``ok``; those before the first
        bad line otherwise).
    first_bad_line : int or None
        1-based number of the first line that does not verify.
    reason : str or None
        Why that line does not verify.
    head_hash : str or None
        ``hash`` of the last verified record (None when there is none).
    """

    ok: bool
    records: int
    first_bad_line: int | None
    reason: str | None
    head_hash: str | None


def canonical_json(obj: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes: sorted keys, compact separators, ASCII, no NaN.

    Examples
    --------
    >>> canonical_json({"b": 1, "a": "é"})
    b'{"a":"\\\\u00e9","b":1}'
    """
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _is_hex64(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX


def _check_line(line: bytes, expected_seq: int, prev_line_hash: str) -> str | None:
    """Why ``line`` does not continue the chain, or None when it does."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, ValueError) as exc:
        return f"not valid JSON ({exc})"
    if not isinstance(obj, dict):
        return f"not a JSON object (a {type(obj).__name__})"
    missing = [k for k in RESERVED_KEYS if k not in obj]
    if missing:
        return f"missing field(s): {', '.join(missing)}"
    seq = obj["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int):
        return f"seq is not an integer: {seq!r}"
    if seq != expected_seq:
        return f"seq is {seq}, expected {expected_seq} (a record was removed, inserted or moved)"
    ts = obj["ts"]
    if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
        return f"ts is not a finite number: {ts!r}"
    if not isinstance(obj["kind"], str) or not obj["kind"]:
        return f"kind is not a non-empty string: {obj['kind']!r}"
    if not _is_hex64(obj["prev_hash"]):
        return "prev_hash is not 64 lower-case hex digits"
    if obj["prev_hash"] != prev_line_hash:
        return "prev_hash does not match the previous line"
    claimed = obj.pop("hash")
    if not _is_hex64(claimed):
        return "hash is not 64 lower-case hex digits"
    try:
        body = canonical_json(obj)
    except ValueError as exc:
        return f"record cannot be canonicalised ({exc})"
    if _sha256(body) != claimed:
        return "hash does not match the record (the line was modified)"
    obj["hash"] = claimed
    if canonical_json(obj) != line:
        return "line is not in canonical JSON form (the line was modified)"
    return None


def _scan(path: Path) -> tuple[VerifyResult, str]:
    """Verify ``path``; also return the SHA-256 of its last good line's bytes."""
    records = 0
    prev_line_hash = GENESIS_HASH
    head: str | None = None
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            if not raw.endswith(b"\n"):
                reason: str | None = "incomplete last line (no trailing newline)"
            else:
                line = raw[:-1]
                reason = "empty line" if not line.strip() else _check_line(
                    line, records + 1, prev_line_hash)
            if reason is not None:
                return VerifyResult(False, records, number, reason, head), prev_line_hash
            records += 1
            prev_line_hash = _sha256(line)
            head = json.loads(line)["hash"]
    return VerifyResult(True, records, None, None, head), prev_line_hash


def verify_file(path: Path | str) -> VerifyResult:
    """Check an audit log's hash chain.

    Parameters
    ----------
    path : Path
        The JSON-lines file.

    Returns
    -------
    VerifyResult
        ``ok``, the number of records, and the first bad line (1-based) with
        the reason when the chain is broken.

    Raises
    ------
    OSError
        When the file cannot be read.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> empty = Path(tempfile.mkdtemp()) / "empty.jsonl"
    >>> _ = empty.write_bytes(b"")
    >>> verify_file(empty)
    VerifyResult(ok=True, records=0, first_bad_line=None, reason=None, head_hash=None)
    """
    result, _ = _scan(Path(path))
    return result


class AuditLog:
    """Appends hash-chained records to a JSON-lines file.

    Parameters
    ----------
    path : Path
        The log file; created (with its parent directories) when missing.
    fsync : bool
        ``os.fsync`` after every record (durable across power loss).
    clock : callable
        Epoch seconds for each record's ``ts``.

    Raises
    ------
    AuditError
        When the existing file does not verify; the message names the first
        bad line and the reason. Nothing is appended to a broken chain.

    Notes
    -----
    ``append`` is thread-safe within one :class:`AuditLog`. Only one writer
    (one :class:`AuditLog` in one process) may append to a file at a time.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> path = Path(tempfile.mkdtemp()) / "audit.jsonl"
    >>> with AuditLog(path, fsync=False) as log:
    ...     _ = log.append("admin", {"action": "acknowledge"})
    >>> with AuditLog(path, fsync=False) as log:  # continues the chain
    ...     log.append("admin", {"action": "reload"})["seq"], log.seq
    (2, 2)
    >>> with AuditLog(path, fsync=False) as log:
    ...     try:
    ...         log.append("admin", {"seq": 99})
    ...     except ValueError as exc:
    ...         print(exc)
    record key 'seq' is reserved (seq, ts, kind, prev_hash, hash)
    """

    def __init__(self, path: Path | str, fsync: bool = True, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.fsync = bool(fsync)
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._head: str | None = None
        self._prev_line_hash = GENESIS_HASH
        created = not self.path.exists()
        if not created:
            result, prev_line_hash = _scan(self.path)
            if not result.ok:
                raise AuditError(
                    f"audit log {str(self.path)!r} does not verify at line "
                    f"{result.first_bad_line}: {result.reason}; refusing to append to a broken "
                    "chain")
            self._seq = result.records
            self._head = result.head_hash
            self._prev_line_hash = prev_line_hash
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[bytes] | None = self.path.open("ab")
        if created and self.fsync:
            self._fsync_dir()

    # ------------------------------------------------------------- public
    @property
    def seq(self) -> int:
        """The ``seq`` of the last record (0 when the log is empty)."""
        return self._seq

    @property
    def head_hash(self) -> str | None:
        """The ``hash`` of the last record (None when the log is empty)."""
        return self._head

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._fh is None

    def append(self, kind: str, record: Mapping[str, Any]) -> dict[str, Any]:
        """Append one record and return it as written (with seq, ts, hashes).

        Parameters
        ----------
        kind : str
            What the record is (``decision``, ``attempt``, ``delivery``, ...).
        record : mapping
            JSON-serialisable fields (string keys, finite numbers); the
            reserved keys ``seq``, ``ts``, ``kind``, ``prev_hash`` and ``hash``
            are not allowed.

        Raises
        ------
        ValueError
            When ``kind`` or ``record`` is invalid (nothing is written).
        AuditError
            When the log is closed.
        OSError
            When writing fails (the partial line, if any, is truncated away).
        """
        if not isinstance(kind, str) or not kind:
            raise ValueError(f"kind must be a non-empty str, got {kind!r}")
        if not isinstance(record, Mapping):
            raise ValueError(f"record must be a mapping, got {type(record).__name__}")
        for key in record:
            if not isinstance(key, str):
                raise ValueError(f"record keys must be str, got {key!r}")
            if key in RESERVED_KEYS:
                raise ValueError(f"record key {key!r} is reserved ({', '.join(RESERVED_KEYS)})")
        with self._lock:
            if self._fh is None:
                raise AuditError(f"audit log {str(self.path)!r} is closed")
            ts = self._clock()
            if isinstance(ts, bool) or not isinstance(ts, int | float) or not math.isfinite(ts):
                raise ValueError(f"clock returned a non-finite or non-numeric time: {ts!r}")
            obj: dict[str, Any] = {"seq": self._seq + 1, "ts": ts, "kind": kind,
                                   "prev_hash": self._prev_line_hash, **record}
            try:
                obj["hash"] = _sha256(canonical_json(obj))
                line = canonical_json(obj)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{kind} record is not JSON-serialisable: {exc}") from None
            written = json.loads(line)
            if canonical_json(written) != line:
                raise ValueError(f"{kind} record does not survive a JSON round trip "
                                 "(non-string mapping keys?); nothing was written")
            self._write(line + b"\n")
            self._seq += 1
            self._head = obj["hash"]
            self._prev_line_hash = _sha256(line)
            out: dict[str, Any] = written
            return out

    def close(self) -> None:
        """Close the file; later appends raise :class:`AuditError`."""
        with self._lock:
            if self._fh is not None:
                fh, self._fh = self._fh, None
                fh.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(path={str(self.path)!r}, seq={self._seq}, fsync={self.fsync})"

    # ------------------------------------------------------------ private
    def _write(self, data: bytes) -> None:
        fh = self._fh
        if fh is None:  # pragma: no cover - checked by the caller under the lock
            raise AuditError(f"audit log {str(self.path)!r} is closed")
        start = fh.tell()
        try:
            fh.write(data)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())
        except BaseException:
            # never leave a torn line behind: it would break the chain for good
            try:
                fh.truncate(start)
                fh.flush()
            except OSError:
                pass
            raise

    def _fsync_dir(self) -> None:
        try:
            fd = os.open(self.path.parent, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
