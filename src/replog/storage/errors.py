"""Errors the storage layer raises for operating conditions (never for programmer errors).

Every error names what to do next. ``StorageFailed`` means "stop acknowledging and restart";
``CorruptionError`` means "this node's data cannot be trusted" and carries the file, the offset,
the rule of the recovery decision table that fired and the repair.
"""

from __future__ import annotations

from replog.core.errors import ReplogError

REPAIR_WIPE = (
    "stop this node, move its data directory aside (keep it for diagnosis) and let the node "
    "rejoin the cluster empty so that it catches up from a peer's snapshot; if a majority of "
    "the nodes report damage, restore the cluster from a backup instead"
)


class StorageError(ReplogError):
    """Base class of the storage layer's errors."""


class StorageFailed(StorageError):
    """A write or fsync failed earlier; this storage refuses every later write.

    After a failed fsync the kernel may have dropped the dirty pages while reporting later
    fsyncs as successful (the 2018 "fsyncgate" finding), so retrying cannot prove durability.
    The only safe path is to stop, restart the process and let recovery read what the disk
    really holds.
    """

    def __init__(self, cause: str) -> None:
        super().__init__(
            f"storage failed and accepts no more writes ({cause}); nothing from the failed "
            "batch on was acknowledged; restart the node so that recovery re-reads the disk"
        )
        self.cause = cause


class CorruptionError(StorageError):
    """Recovery found damage it must not repair by itself (it could lose acknowledged data)."""

    def __init__(
        self, path: str, offset: int | None, reason: str, rule: str, repair: str = REPAIR_WIPE
    ) -> None:
        where = path if offset is None else f"{path} at offset {offset}"
        super().__init__(f"{where}: {reason} [rule {rule}]. Repair: {repair}")
        self.path = path
        self.offset = offset
        self.reason = reason
        self.rule = rule
        self.repair = repair


class IdentityMismatch(StorageError):
    """The data directory belongs to another cluster or node."""


class WrongCluster(IdentityMismatch):
    def __init__(self, directory: str, found: str, expected: str) -> None:
        super().__init__(
            f"{directory} holds data of cluster {found!r}, not {expected!r}; point this node "
            "at its own data directory"
        )
        self.found = found
        self.expected = expected


class WrongNode(IdentityMismatch):
    def __init__(self, directory: str, found: int, expected: int) -> None:
        super().__init__(
            f"{directory} holds data of node {found}, not node {expected}; point this node at "
            "its own data directory (node ids must never be reused for another directory)"
        )
        self.found = found
        self.expected = expected


class FormatTooNew(StorageError):
    def __init__(self, path: str, found: int, supported: int) -> None:
        super().__init__(
            f"{path} uses storage format version {found}, newer than the {supported} this "
            "version of replog understands; run a newer replog"
        )
        self.found = found
        self.supported = supported


class DirectoryLocked(StorageError):
    def __init__(self, directory: str) -> None:
        super().__init__(f"{directory} is in use by another process (its LOCK file is held)")


class EntryTooLarge(StorageError):
    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(
            f"entry {index} holds {size} bytes, over the storage limit of {limit} bytes per "
            "entry; the server must refuse such proposals"
        )
        self.index = index
        self.size = size
        self.limit = limit
