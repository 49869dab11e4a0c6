"""SimDisk: what survives a crash, torn writes, directory operations, faults, bit flips."""

from __future__ import annotations

import errno
import random

import pytest

from replog.storage.disk import OpenMode
from replog.storage.simdisk import DiskOp, PowerCut, SimDisk


def _disk(seed: int = 0) -> SimDisk:
    disk = SimDisk(random.Random(seed))
    disk.make_dir("/d")
    disk.fsync_dir("/")
    return disk


def _durable_file(disk: SimDisk, path: str, data: bytes) -> None:
    handle = disk.open(path, OpenMode.CREATE)
    handle.append(data)
    handle.fsync()
    handle.close()
    disk.fsync_dir("/d")


def test_synced_data_and_names_survive_a_crash() -> None:
    disk = _disk()
    _durable_file(disk, "/d/a", b"hello")
    disk.crash()
    assert disk.list_dir("/d") == ["a"]
    assert disk.contents("/d/a") == b"hello"


@pytest.mark.parametrize("seed", range(40))
def test_crash_keeps_synced_bytes_plus_a_prefix_of_the_rest(seed: int) -> None:
    disk = _disk(seed)
    _durable_file(disk, "/d/a", b"synced|")
    handle = disk.open("/d/a", OpenMode.WRITE)
    writes = [b"one|", b"two|", b"three|"]
    for data in writes:
        handle.append(data)
    disk.crash()
    after = disk.contents("/d/a")
    assert after.startswith(b"synced|")
    full = b"synced|" + b"".join(writes)
    # Either a prefix of the writes, or a prefix whose torn last part reads as zeros.
    stripped = after.rstrip(b"\x00")
    assert full.startswith(stripped) or full.startswith(after)
    assert len(after) <= len(full)


def test_crash_tears_writes_in_many_ways() -> None:
    outcomes = set()
    for seed in range(200):
        disk = _disk(seed)
        _durable_file(disk, "/d/a", b"")
        handle = disk.open("/d/a", OpenMode.WRITE)
        handle.append(b"abcdefgh")
        disk.crash()
        outcomes.add(disk.contents("/d/a"))
    assert b"" in outcomes and b"abcdefgh" in outcomes
    assert any(0 < len(o) < 8 and o.strip(b"\x00") == b"" for o in outcomes)  # zeros
    assert any(0 < len(o) < 8 and b"abcdefgh".startswith(o) for o in outcomes)  # torn prefix


def test_handles_die_with_the_crash() -> None:
    disk = _disk()
    handle = disk.open("/d/a", OpenMode.CREATE)
    disk.crash()
    with pytest.raises(OSError) as info:
        handle.append(b"x")
    assert info.value.errno == errno.EBADF


def test_unsynced_directory_operations_may_revert() -> None:
    seen_created, seen_missing = False, False
    for seed in range(60):
        disk = _disk(seed)
        handle = disk.open("/d/new", OpenMode.CREATE)
        handle.append(b"data")
        handle.fsync()  # data durable, but the name is not
        disk.crash()
        if disk.exists("/d/new"):
            seen_created = True
            assert disk.contents("/d/new") == b"data"
        else:
            seen_missing = True
    assert seen_created and seen_missing


def test_rename_is_atomic_and_durable_only_after_dir_fsync() -> None:
    results = set()
    for seed in range(60):
        disk = _disk(seed)
        _durable_file(disk, "/d/target", b"old")
        handle = disk.open("/d/tmp", OpenMode.CREATE)
        handle.append(b"new")
        handle.fsync()
        disk.rename("/d/tmp", "/d/target")
        disk.crash()
        results.add(disk.contents("/d/target"))
        assert disk.contents("/d/target") in (b"old", b"new")
    assert results == {b"old", b"new"}
    disk = _disk()
    _durable_file(disk, "/d/target", b"old")
    _durable_file(disk, "/d/tmp", b"new")
    disk.rename("/d/tmp", "/d/target")
    disk.fsync_dir("/d")
    disk.crash()
    assert disk.list_dir("/d") == ["target"]
    assert disk.contents("/d/target") == b"new"


def test_removed_file_may_come_back_until_dir_fsync() -> None:
    back = 0
    for seed in range(40):
        disk = _disk(seed)
        _durable_file(disk, "/d/a", b"x")
        disk.remove("/d/a")
        disk.crash()
        back += disk.exists("/d/a")
    assert 0 < back < 40


def test_fail_next_and_after() -> None:
    disk = _disk()
    handle = disk.open("/d/a", OpenMode.CREATE)
    disk.fail_next(DiskOp.FSYNC, errno.EIO, after=1)
    handle.fsync()
    with pytest.raises(OSError) as info:
        handle.fsync()
    assert info.value.errno == errno.EIO
    handle.fsync()  # only one failure was scheduled


def test_failed_fsync_forgets_dirty_data_fsyncgate() -> None:
    lost = 0
    for seed in range(40):
        disk = _disk(seed)
        _durable_file(disk, "/d/a", b"")
        handle = disk.open("/d/a", OpenMode.WRITE)
        handle.append(b"one")
        handle.append(b"two")
        disk.fail_next(DiskOp.FSYNC)
        with pytest.raises(OSError):
            handle.fsync()
        assert disk.contents("/d/a") == b"onetwo"  # still readable from the page cache
        handle.fsync()  # "succeeds", yet need not persist what the failed one dropped
        disk.crash()
        lost += disk.contents("/d/a") != b"onetwo"
    assert lost > 0


def test_failed_write_may_leave_a_prefix() -> None:
    prefixes = set()
    for seed in range(40):
        disk = _disk(seed)
        handle = disk.open("/d/a", OpenMode.CREATE)
        disk.fail_next(DiskOp.WRITE, errno.ENOSPC)
        with pytest.raises(OSError) as info:
            handle.append(b"0123456789")
        assert info.value.errno == errno.ENOSPC
        prefixes.add(disk.contents("/d/a"))
    assert all(b"0123456789".startswith(p) and len(p) < 10 for p in prefixes)
    assert len(prefixes) > 3


def test_read_only_and_capacity() -> None:
    disk = _disk()
    disk.set_read_only(True)
    with pytest.raises(OSError) as info:
        disk.open("/d/a", OpenMode.CREATE)
    assert info.value.errno == errno.EROFS
    disk.set_read_only(False)
    disk.capacity_bytes = 10
    handle = disk.open("/d/a", OpenMode.CREATE)
    handle.append(b"12345678")
    with pytest.raises(OSError) as info:
        handle.append(b"abc")
    assert info.value.errno == errno.ENOSPC


def test_fail_rate_is_deterministic_per_seed() -> None:
    def run(seed: int) -> list[bool]:
        disk = _disk(seed)
        disk.fail_rate(DiskOp.WRITE, 0.3)
        handle = disk.open("/d/a", OpenMode.CREATE)
        out = []
        for _ in range(50):
            try:
                handle.write_at(0, b"x")
                out.append(True)
            except OSError:
                out.append(False)
        return out

    assert run(7) == run(7)
    assert False in run(7) and True in run(7)


def test_bit_flips_hit_both_views() -> None:
    disk = _disk(3)
    _durable_file(disk, "/d/a", b"\x00" * 64)
    disk.flip_bit("/d/a", 5, 2)
    assert disk.contents("/d/a")[5] == 4
    assert disk.durable_contents("/d/a") == disk.contents("/d/a")
    flips = disk.flip_random_bits(3, under="/d")
    assert len(flips) == 3 and all(path == "/d/a" for path, _, _ in flips)
    disk.crash()
    assert sum(bin(b).count("1") for b in disk.contents("/d/a")) in (2, 4)


def test_directory_listing_and_errors() -> None:
    disk = _disk()
    with pytest.raises(OSError):
        disk.open("/nope/a", OpenMode.CREATE)
    with pytest.raises(OSError):
        disk.open("/d/missing", OpenMode.READ)
    _durable_file(disk, "/d/b", b"")
    with pytest.raises(OSError):
        disk.open("/d/b", OpenMode.CREATE)
    disk.make_dir("/d/sub")
    assert disk.list_dir("/d") == ["b", "sub"]
    assert disk.is_dir("/d/sub") and not disk.is_dir("/d/b")
    assert disk.lock("/d/LOCK") and not disk.lock("/d/LOCK")
    disk.unlock("/d/LOCK")
    assert disk.lock("/d/LOCK")


def test_power_cut_stops_the_disk_mid_call_until_the_crash() -> None:
    outcomes: set[bytes] = set()
    lost = torn = 0
    for seed in range(30):
        disk = _disk(seed)
        _durable_file(disk, "/d/a", b"synced|")
        handle = disk.open("/d/a", OpenMode.WRITE)
        disk.cut_power_next(DiskOp.FSYNC, path_contains="/d/a")
        handle.append(b"pending")
        with pytest.raises(PowerCut):
            handle.fsync()
        with pytest.raises(PowerCut):
            disk.list_dir("/d")  # the power stays off
        disk.crash()
        outcomes.add(disk.contents("/d/a"))
        lost, torn = lost + disk.lost_writes, torn + disk.torn_writes
        assert disk.list_dir("/d") == ["a"], "back on after the crash"
    assert b"synced|pending" in outcomes and torn > 0
    assert all(b"synced|pending".startswith(o[:7]) for o in outcomes)
    assert lost + torn < 30
