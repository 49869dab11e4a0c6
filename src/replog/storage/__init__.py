"""Durable storage for one Raft node: WAL, hard state, snapshots, crash recovery.

The server and the simulator need only what is exported here::

    storage, state = NodeStorage.open(disk, directory, cluster_id, node_id, options)
    node = RaftNode(config, membership, rng, state)
    ...
    storage.save(ready.hard_state, ready.entries, ready.snapshot)   # step 1 of each Ready

``OsDisk`` is the real file system; ``SimDisk`` is the simulator's crashable, faulty disk.
"""

from __future__ import annotations

from replog.storage.disk import Disk, DiskFile, OpenMode, OsDisk
from replog.storage.errors import (
    CorruptionError,
    DirectoryLocked,
    EntryTooLarge,
    FormatTooNew,
    IdentityMismatch,
    StorageError,
    StorageFailed,
    WrongCluster,
    WrongNode,
)
from replog.storage.node_storage import NodeStorage, StorageOptions
from replog.storage.recovery import Finding, Severity
from replog.storage.simdisk import DiskOp, PowerCut, SimDisk
from replog.storage.snapshot import SnapshotPolicy

__all__ = [
    "CorruptionError",
    "DirectoryLocked",
    "Disk",
    "DiskFile",
    "DiskOp",
    "EntryTooLarge",
    "Finding",
    "FormatTooNew",
    "IdentityMismatch",
    "NodeStorage",
    "OpenMode",
    "OsDisk",
    "PowerCut",
    "Severity",
    "SimDisk",
    "SnapshotPolicy",
    "StorageError",
    "StorageFailed",
    "StorageOptions",
    "WrongCluster",
    "WrongNode",
]
