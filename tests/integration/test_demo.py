"""`driftgate demo --duration 60` exits 0 and explains the rollback."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_demo_runs_to_an_explained_rollback(tmp_path: Path) -> None:
    exe = str(Path(sys.executable).parent / "driftgate")
    r = subprocess.run([exe, "demo", "--duration", "60", "--seed", "11"], capture_output=True,
                       timeout=240, cwd=tmp_path, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"})
    out = r.stdout.decode()
    assert r.returncode == 0, out[-3000:] + r.stderr.decode()[-3000:]
    assert "drift began" in out
    assert "rollback decided" in out
    assert "rollback delivered" in out
    assert "canary traffic now 0%" in out
    m = re.search(r"decision id\s+(dec_[0-9a-f]{24})", out)
    assert m is not None
    audit = re.search(r"audit log\s+(\S+audit\.jsonl)", out)
    assert audit is not None
    assert "chain intact" in out
    verify = subprocess.run([exe, "audit", "verify", audit.group(1)], capture_output=True,
                            timeout=60)
    assert verify.returncode == 0
    assert m.group(1) in Path(audit.group(1)).read_text()
