"""``benchmarks/snapshot_stall.py`` runs and reports what it measured (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_snapshot_stall_reports_its_measurements() -> None:
    script = str(ROOT / "benchmarks" / "snapshot_stall.py")
    command = [sys.executable, script, "--keys", "5000", "-o", "json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["keys"] == 5000
    assert result["snapshot_bytes"] > 5000 * 100
    assert result["max_loop_gap_ms"] >= result["max_gap_while_encoding_ms"] > 0
