#!/usr/bin/env python3
"""Generate driftgate's Grafana dashboards (grafana/dashboards/*.json).

The dashboards are code so that panels stay consistent (units, legends,
variables, thresholds) and reviewable: ``definitions.py`` holds the four
dashboards, ``builder.py`` the panels, variables and grid layout they are
built with. Edit those, then run::

    python grafana/generate.py            # rewrites grafana/dashboards/
    python grafana/generate.py --check    # exits 1 if the committed JSON is stale

``tests/integration/test_ops_configs.py`` regenerates into a temporary folder
and fails when the committed files differ, and checks every PromQL expression
(parses; only metrics driftgate exports or its recording rules define).

Every dashboard has the variables ``datasource``, ``job``, ``model`` and
``version`` (Prometheus ``label_values`` queries); expressions filter with
``job=~"$job"``, ``model=~"$model"`` and ``version=~"$version"``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from definitions import DASHBOARDS

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "dashboards"


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2, sort_keys=True) + "\n"
            for name, build in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: grafana/dashboards)")
    parser.add_argument("--check", action="store_true",
                        help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    rendered = render_all()
    if args.check:
        stale = [n for n, text in rendered.items()
                 if not (args.out / n).is_file() or (args.out / n).read_text() != text]
        extra = sorted(p.name for p in args.out.glob("*.json") if p.name not in rendered)
        for name in stale:
            print(f"stale: {args.out / name}", file=sys.stderr)
        for name in extra:
            print(f"not generated: {args.out / name}", file=sys.stderr)
        return 1 if stale or extra else 0
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (args.out / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
