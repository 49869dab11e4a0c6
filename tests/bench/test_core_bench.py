"""``benchmarks/core_bench.py`` runs to the end: every proposed entry commits and is applied on
every node, including the last one, whose commit index the followers learn from a tick."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_core_bench_commits_and_applies_everything() -> None:
    command = [sys.executable, str(ROOT / "benchmarks" / "core_bench.py"), "--entries", "200"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:]]
    assert [row[0] for row in rows] == ["1", "16", "256"]
    assert all(int(row[1]) >= 200 for row in rows)
