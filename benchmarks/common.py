"""What every benchmark script shares.

The one-JSON-line command-line entry point (:func:`cli_main`), JSON clean-up,
the stderr progress log, rates, percentiles, best-of-N and problem sizes. The
Kafka/Service timing harness lives in :mod:`benchmarks.harness`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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


def rate(n: float, span_s: float) -> float:
    """``n`` per second over ``span_s`` (NaN for an empty span)."""
    return n / span_s if span_s > 0 else math.nan


def pct(samples: Sequence[float], q: float) -> float:
    """Percentile ``q`` (0..100) with linear interpolation (NaN without samples)."""
    if not samples:
        return math.nan
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def best_of(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The run with the highest ``key``, plus every run's ``key`` as ``runs_{key}``."""
    best = dict(max(runs, key=lambda r: r[key]))
    best[f"runs_{key}"] = [r[key] for r in runs]
    return best


def dist_version(dist: str) -> str:
    """The installed version of the distribution ``dist`` ("unknown" if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist)
    except PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of a broker benchmark; ``--quick`` picks the smaller set."""

    events: int
    profile_events: int  # events of the cProfile run, when a target is missed


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
