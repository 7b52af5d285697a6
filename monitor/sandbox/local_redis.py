"""A local ``redis-server`` child process for tests, benchmarks and trials.

Like :mod:`monitor.sandbox.broker` for Kafka: the one place that starts and stops a
real Redis (the Debian package) on a free loopback port, with AOF
``appendfsync everysec`` by default.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

from monitor.sandbox.ports import free_port

__all__ = ["LocalRedis"]


class LocalRedis:
    """``redis-server`` on 127.0.0.1.

    Parameters
    ----------
    workdir : Path
        Its directory (AOF files live there, so a restart reloads them).
    port : int, optional
        Port; a free one by default (kept across restarts).
    password : str, optional
        ``--requirepass`` value; clients without it get NOAUTH.
    aof : bool, default True
        Append-only file with ``appendfsync everysec``.
    """

    def __init__(self, workdir: Path, port: int | None = None, password: str | None = None,
                 aof: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.aof = aof
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> LocalRedis:
        """Start it and wait (bounded) until it answers PING."""
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--dir", str(self.workdir), "--protected-mode", "yes", "--daemonize", "no"]
        args += (["--appendonly", "yes", "--appendfsync", "everysec"] if self.aof
                 else ["--appendonly", "no"])
        if self.password is not None:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,  # noqa: S603 - our args
                                     stderr=subprocess.DEVNULL)
        client = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                             socket_timeout=1)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                try:
                    if client.ping():
                        return self
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError("redis-server did not answer PING")

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
