"""What every benchmark script shares: the one-JSON-line command-line entry point."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable
from typing import Any


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
