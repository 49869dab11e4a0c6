"""``benchmarks/memory_soak.py``: a short soak of a real 3-node cluster with frequent snapshots.

A few thousand writes with a snapshot every 500 entries: the JSON document has its samples, every
node took snapshots, and the log each node holds (WAL entries past its snapshot) stayed within
one snapshot interval plus the kept window, however many writes went through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(90)

ROOT = Path(__file__).resolve().parents[2]
WRITES = 4000
SNAPSHOT_ENTRIES = 500
KEEP_ENTRIES = 100
CLIENTS = 16


def test_quick_soak_samples_and_bounded_wal(tmp_path: Path) -> None:
    saved = tmp_path / "result.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "memory_soak.py"),
        "--writes", str(WRITES), "--sample-every", "1000", "--keys", "100",
        "--clients", str(CLIENTS), "--connections", "2", "--settle", "0.5",
        "--snapshot-entries", str(SNAPSHOT_ENTRIES),
        "--snapshot-keep-entries", str(KEEP_ENTRIES),
        "--data-dir", str(tmp_path / "data"), "--output", "json", "--save", str(saved),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, timeout=80, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    document = json.loads(done.stdout)
    assert json.loads(saved.read_text()) == document
    assert document["writes_done"] == WRITES and document["errors"] == {}
    assert set(document["exit_codes"].values()) == {0}
    assert not (tmp_path / "data" / "n1").exists()  # removed without --keep

    samples = document["samples"]
    phases = [s["phase"] for s in samples]
    assert phases[0] == "start" and phases[-2:] == ["end", "settled"]
    assert sum(s["phase"] == "load" for s in samples) >= 2
    for sample in samples:
        assert len(sample["nodes"]) == 3
        for node in sample["nodes"]:
            assert node["rss_bytes"] > 0 and node["hwm_bytes"] >= node["rss_bytes"]
            assert node["wal_segments"] >= 1

    # Bounded: past its newest snapshot a node holds at most one snapshot interval plus the
    # kept window (and the writes in flight), not the thousands of writes made; no second
    # WAL segment was needed, and at most two snapshot files are kept.
    bound = SNAPSHOT_ENTRIES + KEEP_ENTRIES + 2 * CLIENTS
    for name, node in document["summary"].items():
        assert node["snapshots_taken"] >= 3, name
        assert node["snapshot_files_max"] <= 2, name
        assert node["wal_segments_max"] == 1, name
        assert node["applied_index_end"] >= WRITES, name
    for sample in samples[1:]:
        for node in sample["nodes"]:
            assert node["log_entries"] <= bound, (sample["writes"], node)
