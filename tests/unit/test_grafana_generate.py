"""grafana/generate.py, the entry point of the dashboard generator (its builder
in grafana/builder.py, the dashboards in grafana/definitions.py): ``--check``
passes on the committed grafana/dashboards/*.json, i.e. they are exactly what
the generator writes, and fails naming a stale or a stray file.

tests/integration/test_ops_configs.py checks the dashboards' content (PromQL,
variables, every exported metric shown) and runs the live Prometheus queries.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GENERATE = ROOT / "grafana" / "generate.py"
COMMITTED = ROOT / "grafana" / "dashboards"


def check(out: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(GENERATE), "--check", "--out", str(out)],
                          capture_output=True, text=True, timeout=60, check=False)


def test_committed_dashboards_are_the_generator_output() -> None:
    proc = check(COMMITTED)
    assert proc.returncode == 0, f"run: python grafana/generate.py\n{proc.stderr}"
    assert sorted(p.name for p in COMMITTED.glob("*.json")) == [
        "driftgate-decisions.json", "driftgate-drift.json", "driftgate-kpis.json",
        "driftgate-overview.json"]


def test_check_names_stale_missing_and_stray_files(tmp_path: Path) -> None:
    for path in COMMITTED.glob("*.json"):
        shutil.copy(path, tmp_path / path.name)
    stale = tmp_path / "driftgate-kpis.json"
    stale.write_text(stale.read_text().replace('"refresh": "30s"', '"refresh": "1m"'))
    (tmp_path / "driftgate-drift.json").unlink()
    (tmp_path / "hand-made.json").write_text("{}\n")
    proc = check(tmp_path)
    assert proc.returncode == 1
    assert f"stale: {stale}" in proc.stderr
    assert f"stale: {tmp_path / 'driftgate-drift.json'}" in proc.stderr
    assert f"not generated: {tmp_path / 'hand-made.json'}" in proc.stderr
    assert "driftgate-overview.json" not in proc.stderr
