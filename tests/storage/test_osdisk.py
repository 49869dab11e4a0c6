"""OsDisk against the real file system, and NodeStorage on it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from replog.core.types import Entry, EntryKind, HardState
from replog.storage import DirectoryLocked, NodeStorage, OpenMode, OsDisk
from replog.storage.disk import OsFile
from replog.storage.layout import publish, write_temporary


def test_a_large_temporary_file_is_synced_piece_by_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncs: list[int] = []
    monkeypatch.setattr(OsFile, "sync_data", lambda self: syncs.append(self.size()))
    data = bytes(range(256)) * 40
    path = write_temporary(OsDisk(), str(tmp_path), "big.tmp", [b"head", data], sync_every=4096)
    assert syncs == [4 + 4096, 4 + 8192, 4 + len(data)]  # the small header is not split
    publish(OsDisk(), path, "big")
    assert (tmp_path / "big").read_bytes() == b"head" + data
    assert [p.name for p in tmp_path.iterdir()] == ["big"]


def test_file_operations(tmp_path: Path) -> None:
    disk = OsDisk()
    path = str(tmp_path / "f")
    handle = disk.open(path, OpenMode.CREATE)
    assert handle.append(b"hello ") == 0
    assert handle.append(b"world") == 6
    handle.write_at(0, b"H")
    handle.fsync()
    assert handle.read(0, 100) == b"Hello world"
    handle.truncate(5)
    assert handle.size() == 5
    handle.close()
    with pytest.raises(FileExistsError):
        disk.open(path, OpenMode.CREATE)
    disk.fsync_dir(str(tmp_path))
    disk.rename(path, str(tmp_path / "g"))
    assert disk.list_dir(str(tmp_path)) == ["g"]
    assert disk.file_size(str(tmp_path / "g")) == 5
    reader = disk.open(str(tmp_path / "g"), OpenMode.READ)
    assert reader.read(1, 3) == b"ell"
    reader.close()
    disk.remove(str(tmp_path / "g"))
    disk.make_dir(str(tmp_path / "sub"))
    assert disk.is_dir(str(tmp_path / "sub")) and not disk.exists(str(tmp_path / "g"))


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    disk = OsDisk()
    lock = str(tmp_path / "LOCK")
    assert disk.lock(lock)
    probe = "import sys; from replog.storage import OsDisk; sys.exit(OsDisk().lock(sys.argv[1]))"
    assert subprocess.run([sys.executable, "-c", probe, lock], check=False).returncode == 0
    disk.unlock(lock)
    assert subprocess.run([sys.executable, "-c", probe, lock], check=False).returncode == 1


def test_node_storage_on_a_real_directory(tmp_path: Path) -> None:
    directory = str(tmp_path / "a" / "b" / "node")
    storage, state = NodeStorage.open(OsDisk(), directory, "c", 3)
    assert state.entries == ()
    entries = tuple(Entry(i, 1, EntryKind.NORMAL, b"x" * i) for i in range(1, 20))
    storage.save(HardState(1, 3, 10), entries)
    with pytest.raises(DirectoryLocked):
        NodeStorage.open(OsDisk(), directory, "c", 3)
    storage.close()
    storage, state = NodeStorage.open(OsDisk(), directory, "c", 3)
    assert state.entries == entries and state.hard_state == HardState(1, 3, 10)
    storage.close()
