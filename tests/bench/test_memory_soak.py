"""``benchmarks/memory_soak.py``: a short soak of a real 3-node cluster with frequent snapshots.

A few thousand writes with ``--snapshot-entries 500``: the JSON document has its samples, every
node took snapshots, and the log each node holds past its snapshot stayed a fraction of the
writes (the WAL did not keep everything).
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

    # Compacted: the nodes snapshot as they go (each snapshot waits for at least 500 entries
    # and for as many bytes of new log as the last snapshot, whose watch history grows with
    # every write in a run this short), so the log a node holds past its snapshot stays a
    # fraction of the writes; one WAL segment was enough and at most two snapshot files are
    # kept. (The 64 MiB segments themselves roll over only in long runs: docs/memory.md.)
    for name, node in document["summary"].items():
        assert node["snapshots_taken"] >= 3, name
        assert node["snapshot_files_max"] <= 2, name
        assert node["wal_segments_max"] == 1, name
        assert node["applied_index_end"] >= WRITES, name
    for sample in samples[1:]:
        bound = sample["writes"] // 2 + SNAPSHOT_ENTRIES + KEEP_ENTRIES + 2 * CLIENTS
        for node in sample["nodes"]:
            assert node["log_entries"] <= bound, (sample["writes"], node)
    for node in samples[-1]["nodes"]:
        assert node["snapshot_index"] >= WRITES // 2, node
