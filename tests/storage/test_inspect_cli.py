"""``replog data inspect`` through click's CliRunner, on real directories."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from replog.cli import main
from replog.core.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from replog.storage import NodeStorage, OsDisk, StorageOptions

from .workload import CONFIG


def _make(directory: Path) -> None:
    storage, _ = NodeStorage.open(
        OsDisk(), str(directory), "demo", 2, StorageOptions(segment_bytes=4096)
    )
    for first in range(1, 200, 10):
        entries = tuple(Entry(first + k, 3, EntryKind.NORMAL, b"v" * 40) for k in range(10))
        storage.save(HardState(3, 2, first + 9), entries)
    storage.save_snapshot(Snapshot(SnapshotMeta(150, 3, CONFIG), b"image"), keep_entries=30)
    storage.close()


def _inspect(directory: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["data", "inspect", str(directory), *args])
    return result.exit_code, result.output


def test_clean_directory_table(tmp_path: Path) -> None:
    _make(tmp_path / "n")
    code, output = _inspect(tmp_path / "n")
    assert code == 0, output
    assert "verdict: clean" in output
    assert "cluster 'demo', node 2" in output
    assert "term 3, voted for 2, commit 200" in output
    assert "snapshot index 150" in output
    assert "wal-" in output and "snap-" in output


def test_json_output_and_no_changes(tmp_path: Path) -> None:
    _make(tmp_path / "n")
    before = {p.name: p.read_bytes() for p in (tmp_path / "n").iterdir()}
    code, output = _inspect(tmp_path / "n", "--output", "json")
    assert code == 0
    report = json.loads(output)
    assert report["verdict"] == "clean"
    assert report["metadata"] == {"cluster_id": "demo", "node_id": 2, "format_version": 1}
    assert report["hard_state"] == {"term": 3, "voted_for": 2, "commit_index": 200}
    assert report["log"]["last_index"] == 200
    assert report["segments"][-1]["last_entry"] == 200
    assert all(s["status"] == "ok" for s in report["segments"])
    assert report["snapshots"][0]["index"] == 150
    assert report["snapshots"][0]["voters"] == [1, 2, 3]
    after = {p.name: p.read_bytes() for p in (tmp_path / "n").iterdir()}
    assert after == before, "inspect must not change anything"


def test_only_the_last_segment_keeps_preallocated_space(tmp_path: Path) -> None:
    _make(tmp_path / "n")
    code, output = _inspect(tmp_path / "n", "--output", "json")
    assert code == 0, output
    *sealed, last = json.loads(output)["segments"]
    assert sealed and all(s["unused_bytes"] == 0 for s in sealed)
    assert last["bytes"] == 4096 and 0 < last["unused_bytes"] < 4096
    code, output = _inspect(tmp_path / "n")
    assert f"(+{last['unused_bytes']} free)" in output


def test_torn_tail_is_reported_as_repairable(tmp_path: Path) -> None:
    _make(tmp_path / "n")
    code, output = _inspect(tmp_path / "n", "--output", "json")
    last_report = json.loads(output)["segments"][-1]
    written = last_report["bytes"] - last_report["unused_bytes"]
    last = sorted((tmp_path / "n").glob("wal-*"))[-1]
    data = bytearray(last.read_bytes())
    data[written - 3 : written] = bytes(3)  # the last write never reached its end
    last.write_bytes(bytes(data))
    code, output = _inspect(tmp_path / "n", "--output", "json")
    assert code == 1
    report = json.loads(output)
    assert report["verdict"] == "repairable"
    assert report["findings"][0]["rule"] == "T9-torn-final-batch"
    assert report["log"]["last_index"] == 190  # the torn batch would be cut


def test_corruption_is_fatal_and_names_file_offset_and_repair(tmp_path: Path) -> None:
    _make(tmp_path / "n")
    first = sorted((tmp_path / "n").glob("wal-*"))[0]
    data = bytearray(first.read_bytes())
    data[200] ^= 0x10
    first.write_bytes(bytes(data))
    code, output = _inspect(tmp_path / "n")
    assert code == 1
    assert "verdict: fatal" in output
    assert first.name in output and "T2-sealed-segment" in output
    assert "rejoin" in output


def test_wrong_metadata_and_empty_directory(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    code, output = _inspect(tmp_path / "empty")
    assert code == 0 and "none (empty directory)" in output
    _make(tmp_path / "n")
    (tmp_path / "n" / "replog.meta").write_bytes(b"garbage!" * 3)
    code, output = _inspect(tmp_path / "n", "--output", "json")
    assert code == 1
    report = json.loads(output)
    assert "error" in report["metadata"]
    assert report["findings"][0]["severity"] == "fatal"


def test_missing_directory_is_a_usage_error(tmp_path: Path) -> None:
    code, _ = _inspect(tmp_path / "nope")
    assert code == 2
