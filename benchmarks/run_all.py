"""Run every ``benchmarks/bench_*.py`` and write ``benchmarks/results.json``.

Each benchmark module exposes ``run(quick: bool = False) -> dict``. Run as
``python -m benchmarks.run_all [--quick]`` (``make bench``).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    results: dict[str, Any] = {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                             time.gmtime()),
                               "quick": quick, "benchmarks": {}}
    failed = 0
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem
        print(f"== {name}", file=sys.stderr, flush=True)
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            results["benchmarks"][name] = module.run(quick=quick)
        except Exception as exc:  # a failing benchmark is reported, the others still run
            failed += 1
            results["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(results["benchmarks"][name]), flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"wrote {HERE / 'results.json'}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
