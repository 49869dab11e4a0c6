"""Snapshot files, and the policy that says when to take one.

Theory of operation. A snapshot is the state machine's image covering every entry up to
``meta.index`` (Raft section 7). The caller serializes the state machine; this module only
stores bytes. One file per snapshot, ``snap-<index>-<term>.snap``:

    record SNAPSHOT (record.py framing): index, term, membership configuration, the number of
    data bytes and their CRC-32C, plus the directory's cluster id and node id
    the data bytes, exactly as many as announced

A file is written as ``.tmp``, fsynced, renamed into place and the directory fsynced, so a
crash leaves either no file or a complete one. A node's own snapshot can be written in two
steps (``prepare_snapshot_file``, then the rename): the long write and fsync need no other
storage state, so they run while the log is being written.

A file is trusted only if its header record passes its checksum, its name matches the header,
the size is exact and the data checksum holds; otherwise it is reported as damaged and
recovery falls back to the next older one (which is why the newest ``SNAPSHOTS_KEPT`` files
are kept, not just one). Snapshot data is read whole into memory and bounded by
``snapshot_bytes_max``.

``SnapshotPolicy`` is consulted by the server (or the simulator) after applying entries: take
a snapshot when enough entries were applied since the last one, or when the log holds too many
bytes; ``keep_entries`` and ``keep_bytes`` bound the trailing window left in the log for slow
followers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

import crc32c

from replog.core.types import Configuration, Snapshot, SnapshotMeta
from replog.storage.disk import Disk
from replog.storage.errors import FormatTooNew
from replog.storage.layout import (
    TMP_SUFFIX,
    Identity,
    SnapshotName,
    read_file,
    snapshot_name,
    write_atomically,
    write_temporary,
)
from replog.storage.record import (
    FORMAT_VERSION,
    SNAPSHOT_MAGIC,
    Defect,
    RecordType,
    SnapshotHeader,
    decode_snapshot_header,
    encode,
    frame,
    peek_version,
    read_frame,
)

SNAPSHOTS_KEPT = 2
SNAPSHOT_HEADER_BYTES_MAX = 1 << 20
PREPARED_SUFFIX = ".local"  # a snapshot prepared off the storage thread: a name of its own
PREPARED_SYNC_BYTES = 32 << 20  # ... written in pieces of this size, each synced


def encode_snapshot_header(identity: Identity, snapshot: Snapshot) -> bytes:
    meta = snapshot.meta
    config = meta.config
    header = SnapshotHeader(
        SNAPSHOT_MAGIC,
        FORMAT_VERSION,
        identity.cluster_id,
        identity.node_id,
        meta.index,
        meta.term,
        sorted(config.voters),
        sorted(config.voters_outgoing),
        sorted(config.learners),
        len(snapshot.data),
        crc32c.crc32c(snapshot.data),
    )
    return frame(RecordType.SNAPSHOT, encode(header))


def write_snapshot(disk: Disk, directory: str, identity: Identity, snapshot: Snapshot) -> str:
    """Write ``snapshot`` durably (tmp, fsync, rename, fsync dir); returns the file name."""
    meta = snapshot.meta
    assert meta.index >= 1 and meta.term >= 1, "a snapshot covers at least one entry"
    name = snapshot_name(meta.index, meta.term)
    header = encode_snapshot_header(identity, snapshot)
    write_atomically(disk, directory, name, [header, snapshot.data])
    return name


def prepare_snapshot_file(
    disk: Disk, directory: str, identity: Identity, snapshot: Snapshot
) -> str:
    """The slow half of ``write_snapshot``: the file written and fsynced under a temporary
    name of its own, whose path is returned (``publish`` gives it the snapshot's name). It is
    synced piece by piece, so that the log's fsyncs meanwhile do not wait for all of it."""
    meta = snapshot.meta
    assert meta.index >= 1 and meta.term >= 1, "a snapshot covers at least one entry"
    temporary = snapshot_name(meta.index, meta.term) + PREPARED_SUFFIX + TMP_SUFFIX
    header = encode_snapshot_header(identity, snapshot)
    parts = [header, snapshot.data]
    return write_temporary(disk, directory, temporary, parts, PREPARED_SYNC_BYTES)


def read_snapshot(
    disk: Disk, directory: str, name: SnapshotName, identity: Identity, bytes_max: int
) -> Snapshot | str:
    """The snapshot in file ``name``, or a sentence saying what is wrong with it."""
    path = os.path.join(directory, name.name)
    data = read_file(disk, path, bytes_max + SNAPSHOT_HEADER_BYTES_MAX)
    if data is None:
        return f"larger than the limit of {bytes_max} data bytes"
    found = read_frame(data, 0)
    if isinstance(found, Defect):
        return f"header record: {found.value}"
    if found.rtype != RecordType.SNAPSHOT or found.flags != 0:
        return "first record is not a snapshot header"
    version = peek_version(found.body, SNAPSHOT_MAGIC)
    if isinstance(version, str):
        return version
    if version > FORMAT_VERSION:
        raise FormatTooNew(path, version, FORMAT_VERSION)
    header = decode_snapshot_header(found.body)
    if isinstance(header, str):
        return header
    problem = _check_header(header, name, identity, len(data) - found.end)
    if problem:
        return problem
    payload = data[found.end :]
    if crc32c.crc32c(payload) != header.data_crc:
        return "data checksum mismatch"
    config = Configuration(
        frozenset(header.voters), frozenset(header.voters_outgoing), frozenset(header.learners)
    )
    return Snapshot(SnapshotMeta(header.index, header.term, config), payload)


def _check_header(header: SnapshotHeader, name: SnapshotName, identity: Identity, rest: int) -> str:
    if (header.cluster_id, header.node_id) != (identity.cluster_id, identity.node_id):
        return f"belongs to cluster {header.cluster_id!r} node {header.node_id}"
    if (header.index, header.term) != (name.index, name.term):
        return f"header says index {header.index} term {header.term}, unlike its name"
    if rest != header.data_bytes:
        return f"holds {rest} data bytes, header announces {header.data_bytes}"
    return ""


def split_snapshots(
    snapshots: list[SnapshotName], keep: int = SNAPSHOTS_KEPT
) -> tuple[list[SnapshotName], list[SnapshotName]]:
    """(the files to remove, the newest ``keep`` to keep), by index."""
    assert keep >= 1
    ordered = sorted(snapshots, key=lambda s: (s.index, s.term))
    return ordered[:-keep], ordered[-keep:]


@dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When to snapshot: after ``entries_max`` applied entries since the last snapshot, once
    the entries written since then also add up to ``log_to_snapshot_ratio`` times the last
    snapshot's size; or at once when the log on disk holds ``log_bytes_max`` bytes, or after
    ``entries_ceiling`` entries whatever their size (the log in memory stays bounded). Never for
    fewer than ``entries_min`` new entries (the trailing window alone can exceed the byte
    limit; this stops thrashing).

    The ratio keeps the cost of snapshots proportional to the writes: a large state is written
    out again only after about as many bytes of new log, so the disk holds about twice the
    state at most (plus the kept window), and a small state is snapshotted every
    ``entries_max`` entries."""

    entries_max: int = 10_000
    log_bytes_max: int = 256 << 20
    entries_min: int = 64
    keep_entries: int = 1_000  # entries left in the log behind a snapshot, for slow followers
    keep_bytes: int = 64 << 20  # ... and at most this many bytes of them
    log_to_snapshot_ratio: float = 1.0
    entries_ceiling: int = 100_000

    def __post_init__(self) -> None:
        assert self.entries_max >= 1 and self.entries_min >= 1 and self.log_bytes_max >= 1
        assert self.entries_ceiling >= 1 and self.keep_bytes >= 0
        assert self.keep_entries >= 0 and self.log_to_snapshot_ratio >= 0

    def keep_for(self, sizes: Iterable[int]) -> int:
        """How many entries to keep behind a snapshot, given the sizes of the entries up to
        its index, newest first: at most ``keep_entries`` that add up to at most
        ``keep_bytes`` (a follower further behind gets the snapshot instead)."""
        kept = total = 0
        for size in sizes:
            total += size
            if kept == self.keep_entries or total > self.keep_bytes:
                break
            kept += 1
        return kept

    def should_snapshot(
        self,
        *,
        applied_index: int,
        snapshot_index: int,
        log_bytes: int,
        snapshot_bytes: int = 0,
        fresh_log_bytes: int | None = None,
    ) -> bool:
        """``log_bytes``: the log on disk; ``fresh_log_bytes``: the bytes of the entries written
        since the last snapshot (``log_bytes`` when not known)."""
        fresh = applied_index - snapshot_index
        if fresh < self.entries_min:
            return False
        if log_bytes >= self.log_bytes_max or fresh >= max(self.entries_ceiling, self.entries_max):
            return True
        fresh_bytes = log_bytes if fresh_log_bytes is None else fresh_log_bytes
        enough_log = fresh_bytes >= snapshot_bytes * self.log_to_snapshot_ratio
        return fresh >= self.entries_max and enough_log
