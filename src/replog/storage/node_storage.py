"""One node's durable storage: the facade the server and the simulator use.

Theory of operation. ``NodeStorage.open`` takes the directory's lock, runs recovery
(``replay.plan_recovery``), makes the repairs the plan calls for (cut a torn tail, remove
leftover temporary files, record a snapshot mark), and returns the storage together with the
``PersistentState`` to rebuild the ``RaftNode`` from. Then, per Ready batch:

    storage.save(ready.hard_state, ready.entries, ready.snapshot)   # one WAL write, one fsync
    ... send messages, apply, advance ...

and after the application took a snapshot of its state machine:

    storage.save_snapshot(snapshot, keep_entries)                   # file, then compaction

or, so that a large snapshot file does not hold up the batches meanwhile, the file first on
another thread (it touches nothing the batches do), then only its rename with the batches:

    prepared = storage.prepare_snapshot(snapshot)                   # write, fsync (any thread)
    storage.save_snapshot(snapshot, keep_entries, prepared)         # rename, then compaction

Order of a batch carrying a snapshot from the leader: the snapshot file is made durable
first, then the WAL batch with the snapshot mark (the log restarts after the snapshot, as the
core's own log does on restore), entries and hard state. A crash in between leaves a snapshot
the log does not know yet; recovery (Table 2 in ``recovery.py``) applies Raft section 7 to it
and records the mark then.

Failure is final (fsyncgate): once a write, fsync, rename or remove raised, the storage is
*failed* and every later write raises ``StorageFailed``. The failed batch was not acknowledged;
it may or may not be on disk, and recovery after a restart reads whichever it is: at worst an
unfinished batch, which it cuts as a torn tail. Nothing is retried. (A failed
``prepare_snapshot`` leaves only a temporary file that is never used: the storage stays usable.)

Bad calls (entries that do not continue the log, a hard state going back in term) are
programmer errors and fail assertions; they are checked before anything is written.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from replog.core.types import Entry, HardState, PersistentState, Ready, Snapshot, SnapshotMeta
from replog.storage.disk import Disk, OpenMode
from replog.storage.errors import DirectoryLocked, StorageError, StorageFailed
from replog.storage.layout import (
    LOCK_NAME,
    Identity,
    SnapshotName,
    publish,
    snapshot_name,
    write_meta,
)
from replog.storage.logindex import LogIndex
from replog.storage.record import NO_TERM, PART_BYTES_TARGET
from replog.storage.recovery import Finding
from replog.storage.replay import RecoveryPlan, plan_recovery
from replog.storage.snapshot import (
    SNAPSHOTS_KEPT,
    prepare_snapshot_file,
    split_snapshots,
    write_snapshot,
)
from replog.storage.wal import SEGMENT_BYTES_DEFAULT, Segment, Wal

DIRECTORY_DEPTH_MAX = 64


@dataclass(frozen=True, slots=True)
class StorageOptions:
    segment_bytes: int = SEGMENT_BYTES_DEFAULT  # a segment rolls over past this size
    snapshot_bytes_max: int = 1 << 30  # a bigger snapshot file is treated as damaged
    snapshots_kept: int = SNAPSHOTS_KEPT  # newest snapshot files kept (older are fallbacks)
    batch_part_bytes: int = PART_BYTES_TARGET  # a batch is split into records of about this

    def __post_init__(self) -> None:
        assert self.segment_bytes >= 4 << 10, "segments under 4 KiB make no sense"
        assert self.snapshot_bytes_max >= 0
        assert self.snapshots_kept >= 1
        assert 1 <= self.batch_part_bytes <= PART_BYTES_TARGET * 16


class NodeStorage:
    """Durable hard state, log and snapshots of one Raft node (see the module docstring)."""

    def __init__(
        self, disk: Disk, directory: str, identity: Identity, options: StorageOptions, wal: Wal
    ) -> None:
        self.disk = disk
        self.directory = directory
        self.identity = identity
        self.options = options
        self._wal = wal
        self._snapshot_meta: SnapshotMeta | None = None
        self._snapshots: list[SnapshotName] = []
        self._failure = ""
        self._closed = False
        self.findings: tuple[Finding, ...] = ()  # what recovery found (torn tails, ...)

    # ---- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        disk: Disk,
        directory: str,
        cluster_id: str,
        node_id: int,
        options: StorageOptions | None = None,
    ) -> tuple[NodeStorage, PersistentState]:
        """Recover ``directory`` (creating it when missing) and return the storage with the
        state to build the RaftNode from. Raises ``CorruptionError``, ``IdentityMismatch``,
        ``FormatTooNew``, ``DirectoryLocked`` or ``StorageError`` (an I/O error)."""
        assert node_id > 0 and cluster_id, "a node needs a cluster id and a positive node id"
        options = options or StorageOptions()
        identity = Identity(cluster_id, node_id)
        lock = os.path.join(directory, LOCK_NAME)
        try:
            _ensure_directory(disk, directory)
            if not disk.lock(lock):
                raise DirectoryLocked(directory)
        except OSError as error:
            raise StorageError(f"cannot open the data directory {directory}: {error}") from error
        try:
            return cls._recover(disk, directory, identity, options)
        except OSError as error:
            disk.unlock(lock)
            raise StorageError(f"I/O error while recovering {directory}: {error}") from error
        except BaseException:
            disk.unlock(lock)
            raise

    @classmethod
    def _recover(
        cls, disk: Disk, directory: str, identity: Identity, options: StorageOptions
    ) -> tuple[NodeStorage, PersistentState]:
        plan = plan_recovery(disk, directory, identity, options.snapshot_bytes_max)
        _repair(disk, plan)
        if plan.fresh:
            write_meta(disk, directory, identity)
        segments = [
            Segment(f.name.seq, f.name.first_index, f.valid_bytes, 0)
            for f in plan.segments
            if not f.removed
        ]
        wal = Wal(
            disk,
            directory,
            identity,
            options.segment_bytes,
            part_bytes=options.batch_part_bytes,
            index=plan.log_index(),
            hard_state=plan.wal_hard_state,
            next_batch=plan.next_batch,
            segments=segments,
        )
        storage = cls(disk, directory, identity, options, wal)
        storage.findings = tuple(plan.findings)
        storage._snapshots = list(plan.listing.snapshots)
        if plan.snapshot is not None:
            storage._snapshot_meta = plan.snapshot.meta
        if plan.repair_mark is not None or plan.repair_hard_state:
            wal.write_batch(plan.hard_state, (), plan.repair_mark, may_roll=False)
        return storage, plan.persistent_state()

    # ---- state -----------------------------------------------------------------------------

    @property
    def hard_state(self) -> HardState:
        return self._wal.hard_state

    @property
    def first_index(self) -> int:
        """The first index the log holds on disk (entries before it are compacted)."""
        return self._wal.index.first_index

    @property
    def last_index(self) -> int:
        return self._wal.index.last_index

    @property
    def snapshot_meta(self) -> SnapshotMeta | None:
        return self._snapshot_meta

    @property
    def log_bytes(self) -> int:
        return self._wal.log_bytes

    @property
    def segment_count(self) -> int:
        return len(self._wal.segments)

    @property
    def failed(self) -> bool:
        return bool(self._failure)

    def term(self, index: int) -> int | None:
        return self._wal.index.term(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        """The stored entries in [lo, hi), read back from disk (compacted ones are absent)."""
        assert not self._closed
        try:
            return self._wal.read_entries(lo, hi)
        except OSError as error:
            raise StorageError(f"reading entries {lo}..{hi - 1} failed: {error}") from error

    # ---- writing ---------------------------------------------------------------------------

    def save_ready(self, ready: Ready) -> None:
        self.save(ready.hard_state, ready.entries, ready.snapshot)

    def save(
        self,
        hard_state: HardState | None,
        entries: Sequence[Entry] = (),
        snapshot: Snapshot | None = None,
    ) -> None:
        """Persist one Ready batch: ``snapshot`` (from the leader), then ``entries`` (each
        replacing the stored entry at its index and all after it) and ``hard_state``, with
        one WAL fsync. Returns only once all of it is durable; raises ``StorageFailed``."""
        self._check_usable()
        if hard_state is None and not entries and snapshot is None:
            return
        hs = self._wal.hard_state if hard_state is None else hard_state
        mark = self._check_batch(hs, entries, snapshot)
        try:
            obsolete = self._store_snapshot(snapshot) if snapshot is not None else []
            self._wal.write_batch(hs, entries, mark)
            if snapshot is not None:
                removed = self._wal.compact(snapshot.meta.index)
                obsolete += (os.path.join(self.directory, name) for name in removed)
            self._remove(obsolete)
        except OSError as error:
            raise self._fail(error) from error

    def prepare_snapshot(self, snapshot: Snapshot) -> str:
        """Write the file of a snapshot the application took, fsynced, under a temporary name;
        returns its path for ``save_snapshot``. This reads no other state of the storage, so
        it may run on another thread while batches are saved: a large snapshot then does not
        hold up the log. Raises ``StorageFailed`` (the storage itself stays usable)."""
        self._check_usable()
        try:
            return prepare_snapshot_file(self.disk, self.directory, self.identity, snapshot)
        except OSError as error:
            raise StorageFailed(f"writing the snapshot file failed: {error}") from error

    def save_snapshot(
        self,
        snapshot: Snapshot,
        keep_entries: int = 0,
        prepared: str | None = None,
        *,
        leave_files: bool = False,
    ) -> list[str]:
        """Store a snapshot the application took at ``snapshot.meta.index`` (at most its
        applied index), then delete WAL segments holding only entries at or below
        ``index - keep_entries``. ``prepared``: its file, from ``prepare_snapshot``, which is
        then only renamed into place. An older snapshot than the newest stored is only used
        for compaction. With ``leave_files``, the files this makes obsolete (WAL segments,
        older snapshots) are only forgotten, and their paths returned for ``remove_files``
        on another thread: removing large files takes long, and batches would wait for it.
        Recovery ignores such files if they are still there after a crash."""
        self._check_usable()
        meta = snapshot.meta
        assert keep_entries >= 0
        assert meta.index <= self._wal.index.last_index, "local snapshots cover stored entries"
        found = self._wal.index.term(meta.index)
        assert found in (meta.term, None, NO_TERM), "snapshot term differs from the log's"
        obsolete: list[str] = []
        try:
            if self._snapshot_meta is None or meta.index > self._snapshot_meta.index:
                obsolete += self._store_snapshot(snapshot, prepared)
            elif prepared is not None:
                obsolete.append(prepared)
            removed = self._wal.compact(meta.index - keep_entries)
            obsolete += (os.path.join(self.directory, name) for name in removed)
            if not leave_files:
                self._remove(obsolete)
                return []
        except OSError as error:
            raise self._fail(error) from error
        return obsolete

    def remove_files(self, paths: Sequence[str]) -> None:
        """Remove the files ``save_snapshot`` left, in order, each removal made durable before
        the next (WAL segments go oldest first, so the log never has a gap). It touches no
        state of the storage: any thread may call it. Raises ``StorageFailed``."""
        try:
            self._remove(paths)
        except OSError as error:
            raise StorageFailed(f"removing an obsolete file failed: {error}") from error

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._wal.close()
            self.disk.unlock(os.path.join(self.directory, LOCK_NAME))

    # ---- internals -------------------------------------------------------------------------

    def _check_usable(self) -> None:
        assert not self._closed, "storage used after close()"
        if self._failure:
            raise StorageFailed(self._failure)

    def _fail(self, error: OSError) -> StorageFailed:
        self._failure = f"{type(error).__name__}: {error}"
        self._wal.close()
        return StorageFailed(self._failure)

    def _check_batch(
        self, hs: HardState, entries: Sequence[Entry], snapshot: Snapshot | None
    ) -> tuple[int, int, bool] | None:
        """Assert the batch continues what is stored; returns the snapshot mark to write."""
        index: LogIndex = self._wal.index
        old = self._wal.hard_state
        assert hs.term >= old.term, "the hard state's term never goes back"
        mark: tuple[int, int, bool] | None = None
        base, last = index.base_index, index.last_index
        if snapshot is not None:
            meta = snapshot.meta
            current = self._snapshot_meta.index if self._snapshot_meta else 0
            assert meta.index > current, "a snapshot from the leader must be newer than ours"
            # The core discards its whole log when it restores a leader's snapshot, so the
            # stored log is cut back to the snapshot as well (keep=False in the mark).
            mark = (meta.index, meta.term, False)
            base = last = meta.index
        if entries:
            first = entries[0].index
            assert entries[-1].index == first + len(entries) - 1, "entries must be contiguous"
            assert base < first <= last + 1, f"entries from {first} do not fit log {base}..{last}"
            last = entries[-1].index
        assert hs.commit_index <= last, "commit index beyond the stored log"
        return mark

    def _remove(self, paths: Sequence[str]) -> None:
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                self.disk.remove(path)
                self.disk.fsync_dir(self.directory)

    def _store_snapshot(self, snapshot: Snapshot, prepared: str | None = None) -> list[str]:
        """Write (or publish) the snapshot's file; returns the paths of the older snapshot
        files no longer kept, for ``remove_files``."""
        meta = snapshot.meta
        name = SnapshotName(meta.index, meta.term, snapshot_name(meta.index, meta.term))
        if prepared is None:
            write_snapshot(self.disk, self.directory, self.identity, snapshot)
        else:
            publish(self.disk, prepared, name.name)
        known = [s for s in self._snapshots if s.name != name.name] + [name]
        obsolete, self._snapshots = split_snapshots(known, self.options.snapshots_kept)
        self._snapshot_meta = meta
        return [os.path.join(self.directory, old.name) for old in obsolete]


def _ensure_directory(disk: Disk, directory: str) -> None:
    """Create ``directory`` and missing parents, fsyncing each parent after a creation."""
    missing: list[str] = []
    path = os.path.normpath(directory)
    while not disk.exists(path):
        assert len(missing) < DIRECTORY_DEPTH_MAX, "data directory nested too deep"
        missing.append(path)
        parent = os.path.dirname(path)
        if parent in ("", path):
            break
        path = parent
    for path in reversed(missing):
        disk.make_dir(path)
        disk.fsync_dir(os.path.dirname(path) or ".")
    if not disk.is_dir(directory):
        raise StorageError(f"{directory} is not a directory")


def _repair(disk: Disk, plan: RecoveryPlan) -> None:
    """Make the disk match the plan (cut the torn tail, remove temporary files) and make what
    recovery read durable: after a process crash the page cache can hold a complete batch
    that was never fsynced, and the node is about to act on it. Only the last batch can be
    in that state (each earlier one was fsynced before the next was written); it is written
    again before the fsync, because after a failed fsync the kernel may have marked its pages
    clean, and a bare fsync would then not write them (fsyncgate)."""
    cut = plan.cut
    if cut is not None and cut.remove:
        disk.remove(cut.path)
    for name in plan.listing.temps:
        disk.remove(os.path.join(plan.directory, name))
    last = next((f for f in reversed(plan.segments) if not f.removed), None)
    if last is not None:
        handle = disk.open(os.path.join(plan.directory, last.name.name), OpenMode.WRITE)
        try:
            if last.valid_bytes < last.size:
                handle.truncate(last.valid_bytes)
            start = last.last_write_start
            if last.batches:
                handle.write_at(start, handle.read(start, last.valid_bytes - start))
            handle.fsync()
        finally:
            handle.close()
    disk.fsync_dir(plan.directory)
