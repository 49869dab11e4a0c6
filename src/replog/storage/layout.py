"""The data directory: which files live there, how they are named, and the metadata file.

Theory of operation. One node owns one directory, laid out flat so that one directory fsync
covers every name:

    replog.meta                          who owns the directory (cluster id, node id, version)
    LOCK                                 held (flock) by the process using the directory
    wal-<seq:016x>-<first:016x>.wal      WAL segments, numbered 1, 2, 3, ... without gaps
    snap-<index:016x>-<term:016x>.snap   snapshots, the newest few
    <name>.tmp                           a file being written; never read, removed at start

Whole files that must appear atomically (metadata, snapshots) are written as ``<name>.tmp``,
fsynced, renamed over ``<name>``, and the directory is fsynced: after a crash either the old
file or the complete new one is there. Hexadecimal, fixed-width numbers make names sort in
numeric order.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from replog.storage.disk import Disk, OpenMode
from replog.storage.errors import CorruptionError, FormatTooNew, WrongCluster, WrongNode
from replog.storage.record import (
    FORMAT_VERSION,
    META_MAGIC,
    Defect,
    MetaBody,
    RecordType,
    decode_meta,
    encode,
    frame,
    peek_version,
    read_frame,
)

META_NAME = "replog.meta"
LOCK_NAME = "LOCK"
TMP_SUFFIX = ".tmp"
META_BYTES_MAX = 64 << 10
DIRECTORY_NAMES_MAX = 1 << 16  # more names than this is not a directory we wrote

_SEGMENT_RE = re.compile(r"wal-([0-9a-f]{16})-([0-9a-f]{16})\.wal")
_SNAPSHOT_RE = re.compile(r"snap-([0-9a-f]{16})-([0-9a-f]{16})\.snap")


@dataclass(frozen=True, slots=True)
class Identity:
    cluster_id: str
    node_id: int


@dataclass(frozen=True, slots=True)
class SegmentName:
    seq: int
    first_index: int
    name: str


@dataclass(frozen=True, slots=True)
class SnapshotName:
    index: int
    term: int
    name: str


@dataclass(slots=True)
class Listing:
    meta: bool = False
    lock: bool = False
    segments: list[SegmentName] = field(default_factory=list)  # by seq
    snapshots: list[SnapshotName] = field(default_factory=list)  # by index
    temps: list[str] = field(default_factory=list)
    misnamed: list[str] = field(default_factory=list)  # looks like ours, does not parse
    unknown: list[str] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.meta or self.segments or self.snapshots or self.misnamed)


def segment_name(seq: int, first_index: int) -> str:
    return f"wal-{seq:016x}-{first_index:016x}.wal"


def snapshot_name(index: int, term: int) -> str:
    return f"snap-{index:016x}-{term:016x}.snap"


def list_directory(disk: Disk, directory: str) -> Listing:
    names = disk.list_dir(directory)
    if len(names) > DIRECTORY_NAMES_MAX:
        raise CorruptionError(
            directory, None, f"{len(names)} names in the data directory", "too-many-files"
        )
    listing = Listing()
    for name in names:
        _classify(listing, name)
    listing.segments.sort(key=lambda s: s.seq)
    listing.snapshots.sort(key=lambda s: (s.index, s.term))
    return listing


def _classify(listing: Listing, name: str) -> None:
    segment = _SEGMENT_RE.fullmatch(name)
    snapshot = _SNAPSHOT_RE.fullmatch(name)
    if name == META_NAME:
        listing.meta = True
    elif name == LOCK_NAME:
        listing.lock = True
    elif name.endswith(TMP_SUFFIX):
        listing.temps.append(name)
    elif segment is not None:
        listing.segments.append(SegmentName(int(segment[1], 16), int(segment[2], 16), name))
    elif snapshot is not None:
        listing.snapshots.append(SnapshotName(int(snapshot[1], 16), int(snapshot[2], 16), name))
    elif name.startswith(("wal-", "snap-")) or name.endswith((".wal", ".snap")):
        listing.misnamed.append(name)
    else:
        listing.unknown.append(name)


# --------------------------------------------------------------------------------------------
# Whole-file helpers.
# --------------------------------------------------------------------------------------------


def read_file(disk: Disk, path: str, limit: int) -> bytes | None:
    """The whole file, or None when it is larger than ``limit`` bytes."""
    handle = disk.open(path, OpenMode.READ)
    try:
        size = handle.size()
        if size > limit:
            return None
        return handle.read(0, size)
    finally:
        handle.close()


def write_atomically(disk: Disk, directory: str, name: str, parts: list[bytes]) -> None:
    """tmp -> fsync -> rename -> fsync(dir): afterwards ``name`` holds ``parts``, durably."""
    publish(disk, write_temporary(disk, directory, name + TMP_SUFFIX, parts), name)


def write_temporary(
    disk: Disk, directory: str, temporary: str, parts: list[bytes], sync_every: int = 0
) -> str:
    """Write ``parts`` to the file ``temporary`` (a name ending in ``.tmp``) and fsync it;
    returns its path, for ``publish``. With ``sync_every``, the data is also synced after
    each piece of that many bytes: a large file then never has much unwritten data, whose
    flush would make every other fsync on the disk (the log's) wait behind it."""
    assert temporary.endswith(TMP_SUFFIX)
    path = os.path.join(directory, temporary)
    if disk.exists(path):
        disk.remove(path)
    handle = disk.open(path, OpenMode.CREATE)
    try:
        for part in parts:
            if not sync_every or len(part) <= sync_every:
                handle.append(part)
                continue
            with memoryview(part) as view:
                for start in range(0, len(view), sync_every):
                    handle.append(view[start : start + sync_every])
                    handle.sync_data()
        handle.fsync()
    finally:
        handle.close()
    return path


def publish(disk: Disk, path: str, name: str) -> None:
    """Rename the durable temporary file at ``path`` to ``name`` in its directory, durably."""
    directory = os.path.dirname(path)
    disk.rename(path, os.path.join(directory, name))
    disk.fsync_dir(directory)


# --------------------------------------------------------------------------------------------
# The metadata file.
# --------------------------------------------------------------------------------------------


def write_meta(disk: Disk, directory: str, identity: Identity) -> None:
    body = encode(MetaBody(META_MAGIC, FORMAT_VERSION, identity.cluster_id, identity.node_id))
    write_atomically(disk, directory, META_NAME, [frame(RecordType.META, body)])


def read_meta(disk: Disk, directory: str) -> MetaBody:
    """The directory's metadata; raises ``CorruptionError`` or ``FormatTooNew``."""
    path = os.path.join(directory, META_NAME)
    data = read_file(disk, path, META_BYTES_MAX)
    if data is None:
        raise CorruptionError(path, None, "metadata file too large", "meta-damaged")
    found = read_frame(data, 0)
    if isinstance(found, Defect):
        raise CorruptionError(path, 0, f"metadata record: {found.value}", "meta-damaged")
    if found.rtype != RecordType.META or found.flags != 0 or found.end != len(data):
        raise CorruptionError(path, 0, "not a metadata record", "meta-damaged")
    version = peek_version(found.body, META_MAGIC)
    if isinstance(version, str):
        raise CorruptionError(path, 0, version, "meta-damaged")
    if version > FORMAT_VERSION:
        raise FormatTooNew(path, version, FORMAT_VERSION)
    meta = decode_meta(found.body)
    if isinstance(meta, str):
        raise CorruptionError(path, 0, meta, "meta-damaged")
    return meta


def check_identity(directory: str, meta: MetaBody, expected: Identity) -> None:
    if meta.cluster_id != expected.cluster_id:
        raise WrongCluster(directory, meta.cluster_id, expected.cluster_id)
    if meta.node_id != expected.node_id:
        raise WrongNode(directory, meta.node_id, expected.node_id)
