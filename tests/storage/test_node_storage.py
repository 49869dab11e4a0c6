"""NodeStorage: open, save, reopen; identity and format checks; snapshots and compaction."""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import pytest

from replog.core.types import Entry, EntryKind, HardState, Snapshot, SnapshotMeta
from replog.storage import (
    CorruptionError,
    DirectoryLocked,
    DiskOp,
    EntryTooLarge,
    FormatTooNew,
    NodeStorage,
    OsDisk,
    Severity,
    SimDisk,
    SnapshotPolicy,
    StorageError,
    StorageFailed,
    StorageOptions,
    WrongCluster,
    WrongNode,
)
from replog.storage.disk import OpenMode, OsFile
from replog.storage.layout import META_NAME
from replog.storage.record import (
    ENTRY_BYTES_MAX,
    WAL_MAGIC,
    MetaBody,
    RecordType,
    SegmentHeader,
    encode,
    frame,
)
from replog.storage.wal import ZERO_AHEAD_BYTES

from .workload import CONFIG, Model, Save, TakeSnapshot, Workload, run_op, view_of

DIR = "/data/node1"
SMALL = StorageOptions(segment_bytes=4096)


def _open(disk: SimDisk, options: StorageOptions = SMALL) -> tuple[NodeStorage, Model]:
    storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, options)
    return storage, Model.from_state(state)


def _entries(first: int, count: int, term: int, size: int = 50) -> tuple[Entry, ...]:
    return tuple(
        Entry(first + k, term, EntryKind.NORMAL, f"{first + k}".encode() * size)
        for k in range(count)
    )


def _fill(storage: NodeStorage, model: Model, batches: int, per_batch: int = 5) -> None:
    for _ in range(batches):
        first = model.last_index + 1
        op = Save(HardState(2, 1, first - 1), _entries(first, per_batch, 2))
        run_op(storage, op)
        model.apply(op)


def _reopen(disk: SimDisk, storage: NodeStorage, options: StorageOptions = SMALL) -> Model:
    storage.close()
    disk.crash()
    reopened, model = _open(disk, options)
    reopened.close()
    return model


def test_fresh_directory_is_created_with_metadata() -> None:
    disk = SimDisk(random.Random(1))
    storage, model = _open(disk)
    assert model.view() == Model().view()
    assert disk.exists(f"{DIR}/{META_NAME}")
    storage.close()
    disk.crash()  # the directory, its parent and the metadata were all fsynced
    assert disk.exists(f"{DIR}/{META_NAME}")


@pytest.mark.parametrize("seed", range(6))
def test_random_workload_survives_clean_restarts(seed: int) -> None:
    disk = SimDisk(random.Random(seed))
    storage, model = _open(disk)
    workload = Workload(random.Random(seed), model)
    for round_ in range(4):
        for _ in range(60):
            op = workload.next_op()
            run_op(storage, op)
            model.apply(op)
        assert storage.hard_state == model.hard_state
        assert storage.last_index == model.last_index
        lo = max(storage.first_index, model.base + 1)
        assert storage.entries(lo, model.last_index + 1) == list(
            model.entries[lo - model.base - 1 :]
        )
        storage.close()
        if round_ % 2:
            disk.crash()
        storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
        assert view_of(state) == model.view()
        model = Model.from_state(state)
        workload.model = model
    storage.close()


def test_hard_state_none_keeps_the_stored_one() -> None:
    disk = SimDisk(random.Random(2))
    storage, _ = _open(disk)
    storage.save(HardState(3, 2, 0), ())
    storage.save(None, _entries(1, 2, 3))
    assert storage.hard_state == HardState(3, 2, 0)
    model = _reopen(disk, storage)
    assert model.hard_state == HardState(3, 2, 0) and model.last_index == 2


def test_wrong_cluster_node_and_newer_format_are_refused() -> None:
    disk = SimDisk(random.Random(3))
    storage, _ = _open(disk)
    storage.close()
    with pytest.raises(WrongCluster, match="cluster-a"):
        NodeStorage.open(disk, DIR, "cluster-b", 1)
    with pytest.raises(WrongNode, match="node 1"):
        NodeStorage.open(disk, DIR, "cluster-a", 2)
    newer = frame(RecordType.META, encode(MetaBody("replog-meta", 99, "cluster-a", 1)))
    disk.put_file(f"{DIR}/{META_NAME}", newer)
    with pytest.raises(FormatTooNew, match="version 99"):
        NodeStorage.open(disk, DIR, "cluster-a", 1)


def test_newer_segment_format_is_refused() -> None:
    disk = SimDisk(random.Random(4))
    storage, _ = _open(disk)
    storage.close()
    header = SegmentHeader(WAL_MAGIC, 7, "cluster-a", 1, 1, 1, 0, 1, 0, 0, 0)
    disk.put_file(
        f"{DIR}/wal-{1:016x}-{1:016x}.wal", frame(RecordType.SEGMENT_HEADER, encode(header))
    )
    with pytest.raises(FormatTooNew):
        NodeStorage.open(disk, DIR, "cluster-a", 1)


def test_directory_lock() -> None:
    disk = SimDisk(random.Random(5))
    storage, _ = _open(disk)
    with pytest.raises(DirectoryLocked):
        NodeStorage.open(disk, DIR, "cluster-a", 1)
    storage.close()
    again, _ = _open(disk)
    again.close()


def test_local_snapshot_compacts_whole_segments_and_restarts() -> None:
    disk = SimDisk(random.Random(6))
    storage, model = _open(disk)
    _fill(storage, model, 60)
    segments_before = storage.segment_count
    assert segments_before > 4
    snapshot = Snapshot(SnapshotMeta(250, 2, CONFIG), b"state at 250")
    storage.save_snapshot(snapshot, keep_entries=20)
    model.apply(TakeSnapshot(snapshot, 20))
    assert storage.segment_count < segments_before
    assert storage.first_index <= 230 + 1  # the trailing window stays readable
    assert storage.entries(231, 233) == list(_entries(231, 2, 2))
    view = _reopen(disk, storage).view()
    assert view == model.view()
    assert view.snapshot == (250, 2, b"state at 250")


def _filled(seed: int) -> tuple[SimDisk, NodeStorage, Model]:
    disk = SimDisk(random.Random(seed))
    storage, model = _open(disk)
    _fill(storage, model, 60)
    return disk, storage, model


def _state_at(index: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, 2, CONFIG), b"state at %d" % index)


def _temporaries(disk: SimDisk) -> list[str]:
    return [name for name in disk.list_dir(DIR) if name.endswith(".tmp")]


def test_prepared_snapshot_is_renamed_into_place_while_batches_go_on() -> None:
    disk, storage, model = _filled(16)
    snapshot = _state_at(250)
    prepared = storage.prepare_snapshot(snapshot)
    assert os.path.basename(prepared).endswith(".tmp")
    _fill(storage, model, 2)  # the log is written between the two steps
    storage.save_snapshot(snapshot, keep_entries=20, prepared=prepared)
    model.apply(TakeSnapshot(snapshot, 20))
    assert not _temporaries(disk)
    view = _reopen(disk, storage).view()
    assert view == model.view()
    assert view.snapshot == (250, 2, b"state at 250")


def test_a_crash_before_a_prepared_snapshot_is_saved_leaves_the_old_state() -> None:
    disk, storage, model = _filled(17)
    storage.prepare_snapshot(_state_at(250))
    view = _reopen(disk, storage).view()  # recovery removes the unused file
    assert view == model.view()
    assert view.snapshot is None
    assert not _temporaries(disk)


def test_a_prepared_snapshot_overtaken_by_a_newer_one_is_removed() -> None:
    disk, storage, _ = _filled(18)
    older = _state_at(200)
    prepared = storage.prepare_snapshot(older)
    storage.save_snapshot(_state_at(250), 20)
    storage.save_snapshot(older, 20, prepared)  # only used for compaction
    assert f"snap-{200:016x}-{2:016x}.snap" not in disk.list_dir(DIR)
    assert not _temporaries(disk)
    storage.close()


def test_files_left_by_a_snapshot_are_removed_later_oldest_first() -> None:
    disk, storage, model = _filled(19)
    for index in (100, 150):
        storage.save_snapshot(_state_at(index), 20)
    snapshot = _state_at(250)
    segments_before = storage.segment_count
    left = storage.save_snapshot(snapshot, 20, leave_files=True)
    model.apply(TakeSnapshot(snapshot, 20))
    assert storage.segment_count < segments_before
    names = [os.path.basename(path) for path in left]
    assert names[0] == f"snap-{100:016x}-{2:016x}.snap"
    segments = names[1:]
    assert segments and segments == sorted(segments) and all(n.startswith("wal-") for n in segments)
    assert set(names) <= set(disk.list_dir(DIR))  # still there
    _fill(storage, model, 2)  # batches go on meanwhile
    storage.remove_files(left)
    assert not set(names) & set(disk.list_dir(DIR))
    assert _reopen(disk, storage).view() == model.view()


def test_a_crash_before_left_files_are_removed_recovers_the_same_state() -> None:
    disk, storage, model = _filled(20)
    for index in (100, 150):
        storage.save_snapshot(_state_at(index), 20)
    snapshot = _state_at(250)
    left = storage.save_snapshot(snapshot, 20, leave_files=True)
    model.apply(TakeSnapshot(snapshot, 20))
    storage.remove_files(left[:2])  # a crash part way through the removals
    _fill(storage, model, 2)
    view = _reopen(disk, storage).view()
    assert view == model.view()
    assert view.snapshot == (250, 2, b"state at 250")


def test_newest_two_snapshots_are_kept() -> None:
    disk = SimDisk(random.Random(7))
    storage, model = _open(disk)
    _fill(storage, model, 30)
    for index in (20, 40, 60, 80):
        storage.save_snapshot(Snapshot(SnapshotMeta(index, 2, CONFIG), b"s"), 5)
    names = [n for n in disk.list_dir(DIR) if n.startswith("snap-")]
    assert names == [f"snap-{60:016x}-{2:016x}.snap", f"snap-{80:016x}-{2:016x}.snap"]
    storage.close()


def test_snapshot_from_leader_restarts_the_log() -> None:
    disk = SimDisk(random.Random(8))
    storage, model = _open(disk)
    _fill(storage, model, 10)  # entries 1..50 of term 2, commit 45
    snapshot = Snapshot(SnapshotMeta(70, 3, CONFIG), b"leader state")
    op = Save(HardState(3, 0, 70), _entries(71, 3, 3), snapshot)
    run_op(storage, op)
    model.apply(op)
    assert (storage.first_index, storage.last_index) == (71, 73)
    assert _reopen(disk, storage).view() == model.view()


@pytest.mark.parametrize("matching", [True, False])
def test_crash_between_snapshot_file_and_wal_batch(matching: bool) -> None:
    disk = SimDisk(random.Random(9))
    storage, model = _open(disk)
    _fill(storage, model, 10)  # entries 1..50 of term 2, commit 45
    term = 2 if matching else 3
    op = Save(HardState(3, 0, 48), _entries(49, 1, 3), Snapshot(SnapshotMeta(48, term, CONFIG)))
    disk.fail_next(DiskOp.WRITE, path_contains=".wal")
    with pytest.raises(StorageFailed):
        run_op(storage, op)
    expected = model.crash_window(op)
    assert expected is not None
    storage.close()
    disk.clear_faults()
    disk.crash()
    storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert view_of(state) == expected
    assert len(expected.entries) == (2 if matching else 0)
    # Recovery recorded the cut in the WAL: later batches and restarts build on it.
    model = Model.from_state(state)
    first = model.last_index + 1
    op2 = Save(HardState(3, 0, 48), _entries(first, 4, 3))
    run_op(storage, op2)
    model.apply(op2)
    assert _reopen(disk, storage).view() == model.view()


def test_damaged_newest_snapshot_falls_back_to_the_older_one() -> None:
    disk = SimDisk(random.Random(10))
    storage, model = _open(disk)
    _fill(storage, model, 30)
    storage.save_snapshot(Snapshot(SnapshotMeta(40, 2, CONFIG), b"forty"), 100)
    storage.save_snapshot(Snapshot(SnapshotMeta(60, 2, CONFIG), b"sixty"), 100)
    storage.close()
    path = f"{DIR}/snap-{60:016x}-{2:016x}.snap"
    disk.flip_bit(path, disk.file_size(path) - 1)
    storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert state.snapshot is not None and state.snapshot.data == b"forty"
    assert [f.rule for f in storage.findings if f.severity is Severity.DAMAGED] == [
        "snapshot-damaged"
    ]
    assert state.entries[0].index == 41 and state.entries[-1].index == 150
    storage.close()


def test_damaged_snapshot_without_connecting_log_is_fatal() -> None:
    disk = SimDisk(random.Random(11))
    storage, model = _open(disk)
    _fill(storage, model, 60)
    storage.save_snapshot(Snapshot(SnapshotMeta(250, 2, CONFIG), b"only"), 0)
    storage.close()
    path = f"{DIR}/snap-{250:016x}-{2:016x}.snap"
    disk.flip_bit(path, 20)
    with pytest.raises(CorruptionError) as info:
        NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert info.value.rule == "S2-log-without-snapshot"
    assert "wipe" not in info.value.reason and "rejoin" in str(info.value)


def test_missing_middle_segment_is_fatal() -> None:
    disk = SimDisk(random.Random(12))
    storage, model = _open(disk)
    _fill(storage, model, 40)
    storage.close()
    wal = [n for n in disk.list_dir(DIR) if n.startswith("wal-")]
    disk.remove(f"{DIR}/{wal[1]}")
    with pytest.raises(CorruptionError) as info:
        NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert info.value.rule == "segment-missing"


def test_missing_first_segment_without_snapshot_is_fatal() -> None:
    disk = SimDisk(random.Random(13))
    storage, model = _open(disk)
    _fill(storage, model, 40)
    storage.close()
    wal = [n for n in disk.list_dir(DIR) if n.startswith("wal-")]
    disk.remove(f"{DIR}/{wal[0]}")
    with pytest.raises(CorruptionError) as info:
        NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert info.value.rule == "S2-log-without-snapshot"


def test_metadata_missing_but_data_present_is_fatal() -> None:
    disk = SimDisk(random.Random(14))
    storage, model = _open(disk)
    _fill(storage, model, 2)
    storage.close()
    disk.remove(f"{DIR}/{META_NAME}")
    with pytest.raises(CorruptionError) as info:
        NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert info.value.rule == "meta-missing"


def test_odd_files() -> None:
    disk = SimDisk(random.Random(15))
    storage, model = _open(disk)
    _fill(storage, model, 2)
    storage.close()
    disk.put_file(f"{DIR}/notes.txt", b"hello")
    disk.put_file(f"{DIR}/snap-x.snap.tmp", b"half")
    storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert {f.rule for f in storage.findings} == {"foreign-file", "leftover-temporary"}
    assert not disk.exists(f"{DIR}/snap-x.snap.tmp")
    assert view_of(state) == model.view()
    storage.close()
    disk.put_file(f"{DIR}/wal-12.wal", b"")
    with pytest.raises(CorruptionError) as info:
        NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)
    assert info.value.rule == "misnamed-file"


def test_entry_too_large_does_not_fail_the_storage() -> None:
    disk = SimDisk(random.Random(16))
    storage, _ = _open(disk)
    big = Entry(1, 1, EntryKind.NORMAL, bytes(ENTRY_BYTES_MAX + 1))
    with pytest.raises(EntryTooLarge):
        storage.save(HardState(1, 0, 0), (big,))
    storage.save(HardState(1, 0, 0), _entries(1, 1, 1))
    assert not storage.failed
    storage.close()


def test_programmer_errors_are_assertions() -> None:
    disk = SimDisk(random.Random(17))
    storage, _ = _open(disk)
    storage.save(HardState(2, 0, 0), _entries(1, 3, 2))
    with pytest.raises(AssertionError):
        storage.save(None, _entries(5, 1, 2))  # gap
    with pytest.raises(AssertionError):
        storage.save(HardState(1, 0, 0), ())  # term going back
    with pytest.raises(AssertionError):
        storage.save(HardState(2, 0, 9), ())  # commit beyond the log
    storage.close()


@pytest.mark.parametrize(
    ("op", "error"),
    [
        (DiskOp.WRITE, errno.EIO),
        (DiskOp.WRITE, errno.ENOSPC),
        (DiskOp.FSYNC, errno.EIO),
        (DiskOp.CREATE, errno.ENOSPC),
        (DiskOp.FSYNC_DIR, errno.EIO),
    ],
)
def test_failure_is_final(op: DiskOp, error: int) -> None:
    disk = SimDisk(random.Random(18))
    storage, model = _open(disk)
    disk.fail_next(op, error)
    with pytest.raises(StorageFailed) as info:
        _fill(storage, model, 40)  # crosses segment boundaries: every op type is used
    assert os.strerror(error) in str(info.value)
    assert storage.failed
    with pytest.raises(StorageFailed):
        storage.save(HardState(9, 0, 0), ())
    with pytest.raises(StorageFailed):
        storage.save_snapshot(Snapshot(SnapshotMeta(1, 2, CONFIG)), 0)
    storage.close()


def test_read_only_file_system_fails_the_storage() -> None:
    disk = SimDisk(random.Random(19))
    storage, model = _open(disk)
    _fill(storage, model, 2)
    disk.set_read_only(True)
    with pytest.raises(StorageFailed, match="Read-only"):
        _fill(storage, model, 1)
    storage.close()


def test_entries_read_back_after_restart() -> None:
    disk = SimDisk(random.Random(20))
    storage, model = _open(disk)
    _fill(storage, model, 20)
    storage.close()
    storage, _ = _open(disk)
    assert storage.entries(1, 101) == list(model.entries)
    assert storage.entries(95, 200) == list(model.entries[94:])
    storage.close()


def test_opening_a_file_as_directory_fails_cleanly() -> None:
    disk = SimDisk(random.Random(21))
    disk.put_file("/plain", b"")
    with pytest.raises(Exception, match=r"not a directory"):
        NodeStorage.open(disk, "/plain", "c", 1)
    handle = disk.open("/plain", OpenMode.READ)
    handle.close()


def test_fresh_directory_with_a_leftover_metadata_temp_file() -> None:
    disk = SimDisk(random.Random(22))
    disk.make_dir("/data")
    disk.make_dir(DIR)
    disk.put_file(f"{DIR}/{META_NAME}.tmp", b"half written")
    storage, model = _open(disk)
    assert model.view() == Model().view()
    assert sorted(disk.list_dir(DIR)) == ["LOCK", META_NAME]
    storage.close()


def test_snapshot_policy() -> None:
    policy = SnapshotPolicy(entries_max=100, log_bytes_max=10_000, entries_min=10)
    assert not policy.should_snapshot(applied_index=50, snapshot_index=0, log_bytes=0)
    assert policy.should_snapshot(applied_index=100, snapshot_index=0, log_bytes=0)
    assert policy.should_snapshot(applied_index=30, snapshot_index=0, log_bytes=10_000)
    # Never for a handful of entries, however big the log (the trailing window alone).
    assert not policy.should_snapshot(applied_index=105, snapshot_index=100, log_bytes=10**9)


def test_the_window_kept_behind_a_snapshot_is_bounded_in_entries_and_bytes() -> None:
    policy = SnapshotPolicy(keep_entries=5, keep_bytes=1_000)
    assert policy.keep_for([10] * 20) == 5
    assert policy.keep_for([300] * 20) == 3  # 900 bytes; a fourth would pass 1,000
    assert policy.keep_for([10, 2_000, 10]) == 1
    assert policy.keep_for([2_000]) == 0
    assert policy.keep_for([10, 10]) == 2  # the log behind the snapshot is short
    assert SnapshotPolicy(keep_entries=0).keep_for([1]) == 0


def test_snapshot_policy_waits_for_as_much_log_as_the_last_snapshot() -> None:
    policy = SnapshotPolicy(entries_max=100, log_bytes_max=10_000, entries_min=10)

    def should(applied: int, log_bytes: int) -> bool:
        return policy.should_snapshot(
            applied_index=applied, snapshot_index=0, log_bytes=log_bytes, snapshot_bytes=5_000
        )

    assert not should(100, 4_999)  # enough entries, but the state is bigger than the log
    assert should(100, 5_000)
    assert not should(99, 9_999)  # enough log, but not enough entries
    assert should(20, 10_000)  # the byte ceiling wins over the ratio
    # The entries written since the snapshot count, not the whole log file (its segments
    # still hold entries older than the snapshot).
    assert not policy.should_snapshot(
        applied_index=100, snapshot_index=0, log_bytes=9_000, snapshot_bytes=5_000,
        fresh_log_bytes=4_000,
    )  # fmt: skip
    ceiling = SnapshotPolicy(entries_max=100, entries_ceiling=1_000, log_bytes_max=10**9)
    assert ceiling.should_snapshot(
        applied_index=1_000, snapshot_index=0, log_bytes=10, snapshot_bytes=10**8
    )


def test_read_errors_do_not_fail_the_storage() -> None:
    disk = SimDisk(random.Random(23))
    storage, model = _open(disk)
    _fill(storage, model, 3)
    disk.fail_next(DiskOp.READ)
    with pytest.raises(StorageError, match="reading entries"):
        storage.entries(1, 5)
    assert not storage.failed
    assert storage.entries(1, 3) == list(model.entries[:2])
    storage.close()


def test_a_repair_mark_written_into_a_new_segment_is_read_back() -> None:
    """Regression (found by the simulator): recovery records a snapshot that is ahead of the
    whole log with a mark batch. When the last segment had no room for it, the mark opened a
    new segment whose header already counted the mark, and the next recovery refused the log
    ("segment starts at index 49, log ends at 40")."""
    disk = SimDisk(random.Random(3))
    storage, model = _open(disk)
    segments = storage._wal.segments
    mark_bytes = 30  # a batch with only a hard state and a snapshot mark
    while not segments or SMALL.segment_bytes - segments[-1].size >= mark_bytes:
        first = model.last_index + 1
        op = Save(HardState(2, 1, first - 1), _entries(first, 1, 2, size=1))
        run_op(storage, op)
        model.apply(op)
    snapshot_index = model.last_index + 8
    snapshot = Snapshot(SnapshotMeta(snapshot_index, 3, CONFIG))
    op = Save(HardState(3, 0, snapshot_index), (), snapshot)
    disk.fail_next(DiskOp.WRITE, path_contains=".wal")  # the snapshot file lands, the batch not
    with pytest.raises(StorageFailed):
        run_op(storage, op)
    storage.close()
    disk.clear_faults()
    disk.crash()
    storage, state = NodeStorage.open(disk, DIR, "cluster-a", 1, SMALL)  # writes the mark
    assert state.snapshot is not None and state.snapshot.meta.index == snapshot_index
    model = Model.from_state(state)
    op2 = Save(HardState(3, 0, snapshot_index), _entries(snapshot_index + 1, 2, 3))
    run_op(storage, op2)
    model.apply(op2)
    assert _reopen(disk, storage).view() == model.view()


def test_segments_are_preallocated_and_written_in_place(tmp_path: Path) -> None:
    """The active segment is as long as a full one from its creation, so an append changes
    no file size; a restart cuts the unwritten rest and the next write reserves it again."""
    directory = str(tmp_path / "n")
    options = StorageOptions(segment_bytes=64 << 10)
    storage, state = NodeStorage.open(OsDisk(), directory, "cluster-a", 1, options)
    model = Model.from_state(state)

    def segment_sizes() -> list[int]:
        names = sorted(n for n in os.listdir(directory) if n.startswith("wal-"))
        return [os.path.getsize(os.path.join(directory, n)) for n in names]

    _fill(storage, model, 3)
    assert segment_sizes() == [64 << 10]
    storage.close()
    storage, state = NodeStorage.open(OsDisk(), directory, "cluster-a", 1, options)
    assert view_of(state) == model.view()
    assert storage.findings == ()  # the unwritten rest is no torn write
    assert segment_sizes()[0] < 64 << 10  # recovery cut it
    _fill(storage, model, 3)
    assert segment_sizes() == [64 << 10]
    _fill(storage, model, 200, per_batch=20)  # rolls over: only the last segment has room
    sizes = segment_sizes()
    assert len(sizes) > 1 and sizes[-1] == 64 << 10 and all(s < 64 << 10 for s in sizes[:-1])
    storage.close()
    storage, state = NodeStorage.open(OsDisk(), directory, "cluster-a", 1, options)
    assert view_of(state) == model.view()
    storage.close()


class _Watched(OsFile):
    """An OsFile that reports every write as (offset, length, all zeros)."""

    writes: list[tuple[int, int, bool]] = []

    def write_at(self, offset: int, data: bytes | bytearray) -> None:
        self.writes.append((offset, len(data), data.count(0) == len(data)))
        super().write_at(offset, data)


class _WatchedDisk(OsDisk):
    def open(self, path: str, mode: OpenMode) -> OsFile:
        plain = super().open(path, mode)
        watched = _Watched(plain.path, os.dup(plain._fd))
        plain.close()
        return watched


def test_the_space_ahead_of_the_log_is_written_with_zeros_before_batches_reach_it(
    tmp_path: Path,
) -> None:
    """Fallocated blocks are unwritten on ext4: the first write into one changes metadata and
    makes the sync commit the journal. Zeros written ahead keep the batches' syncs data-only."""
    segment_bytes = 2 * ZERO_AHEAD_BYTES
    options = StorageOptions(segment_bytes=segment_bytes)
    _Watched.writes = []
    storage, state = NodeStorage.open(_WatchedDisk(), str(tmp_path / "n"), "c", 1, options)
    model = Model.from_state(state)
    zeroed_to, end = 0, 0
    while True:
        before = len(_Watched.writes)
        _fill(storage, model, 1, per_batch=50)
        [(offset, length, _)] = [w for w in _Watched.writes[before:] if not w[2]]
        if offset < end:
            break  # the next segment
        end = offset + length
        for at, size, _ in [w for w in _Watched.writes[before:] if w[2]]:
            assert end <= at and at + size <= segment_bytes  # ahead of the log, inside
            zeroed_to = at + size
        assert zeroed_to >= min(end + ZERO_AHEAD_BYTES // 2, segment_bytes)
    assert sum(zeros for _, _, zeros in _Watched.writes) >= 3  # a chunk at a time
    storage.close()
    storage, state = NodeStorage.open(OsDisk(), str(tmp_path / "n"), "c", 1, options)
    assert view_of(state) == model.view()
    assert storage.findings == ()
    storage.close()
