"""What every benchmark script shares: the one-JSON-line command-line entry point."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np


def json_safe(obj: Any) -> Any:
    """Plain JSON types: numpy scalars to Python, non-finite floats to None."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.bool_ | bool):
        return bool(obj)
    if isinstance(obj, np.integer | int):
        return int(obj)
    if isinstance(obj, np.floating | float):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def timed(fn: Callable[..., Any], stages: dict[str, float], slot: str) -> Callable[..., Any]:
    """``fn`` wrapped to add its wall time to ``stages[slot]`` on every call."""

    def inner(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            stages[slot] += time.perf_counter() - t

    return inner


def timed_async(fn: Callable[..., Awaitable[Any]], stages: dict[str, float],
                slot: str) -> Callable[..., Awaitable[Any]]:
    """The coroutine function ``fn`` wrapped like :func:`timed` (time until it returns)."""

    async def inner(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        try:
            return await fn(*a, **kw)
        finally:
            stages[slot] += time.perf_counter() - t

    return inner


def stderr_log(name: str) -> Callable[[str], None]:
    """A progress logger writing ``[name] message`` lines to stderr."""

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    return log


def cli_main(name: str, run: Callable[..., dict[str, Any]], doc: str | None,
             quick_help: str, argv: list[str] | None = None) -> int:
    """Parse ``--quick``, run, print the result as one JSON line on stdout.

    Everything the run prints goes to stderr, so stdout holds the JSON only.
    """
    parser = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}",
                                     description=doc.splitlines()[0] if doc else None)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    args = parser.parse_args(argv)
    with contextlib.redirect_stdout(sys.stderr):
        result = run(quick=args.quick)
    sys.stdout.write(json.dumps(result, separators=(",", ":"), allow_nan=False) + "\n")
    sys.stdout.flush()
    return 0
