"""An in-memory ``Disk`` for the simulator: deterministic, crashable, and faulty on demand.

Theory of operation. ``SimDisk`` keeps two views of the world:

* the *current* view, what a running process sees: every file's bytes and every name;
* the *durable* view, what survives a power loss: per file the bytes as of its last fsync,
  per directory the names as of its last directory fsync.

Each write, truncate and directory change is also queued as *pending* (per file, per
directory). ``DiskFile.fsync`` moves a file's pending writes into its durable bytes;
``fsync_dir`` does the same for the names of one directory. ``crash()`` throws the current view
away and rebuilds it from the durable view plus, drawn from the ``random.Random`` it was given,
a prefix of each pending queue; the first write left out may land half-way (a torn write:
a prefix of its bytes, or zeros where the file grew but the data never arrived). So a file
whose directory was never fsynced may vanish, a rename may revert, a removed file may return.
``lost_writes``, ``torn_writes`` and ``lost_dir_ops`` count what crashes threw away.

A failed fsync follows Linux after the 2018 "fsyncgate" finding: some pending writes reach
the disk, the rest are dropped *and forgotten*, so a later fsync reports success without
making them durable. A failed write may leave a prefix of its bytes behind.

Faults are switched on explicitly (``fail_next``, ``fail_rate``, ``set_read_only``,
``capacity_bytes``, ``cut_power_next``) and bits flip only through ``flip_bit`` /
``flip_random_bits``; with the same seed and the same calls, the same things happen. One
``SimDisk`` models one machine's disk: give each simulated node its own. Handles opened before
a crash are dead afterwards (EBADF). A power cut (``cut_power_next``) stops the disk in the
middle of a call: that call and every later one raise ``PowerCut`` until ``crash()``.
"""

from __future__ import annotations

import enum
import errno
import os
import posixpath
import random
from dataclasses import dataclass

from replog.storage.disk import OpenMode


class DiskOp(enum.Enum):
    OPEN = "open"
    CREATE = "create"
    WRITE = "write"
    READ = "read"
    TRUNCATE = "truncate"
    FSYNC = "fsync"
    FSYNC_DIR = "fsync_dir"
    RENAME = "rename"
    REMOVE = "remove"
    MAKE_DIR = "make_dir"
    LIST_DIR = "list_dir"


_MUTATING = frozenset(
    {
        DiskOp.CREATE,
        DiskOp.WRITE,
        DiskOp.TRUNCATE,
        DiskOp.FSYNC,
        DiskOp.FSYNC_DIR,
        DiskOp.RENAME,
        DiskOp.REMOVE,
        DiskOp.MAKE_DIR,
    }
)
_SCHEDULED_FAULTS_MAX = 1024
_POWER_CUT = -1  # a scheduled fault that cuts the power instead of returning an errno
_ROOT = "/"

# A pending file operation: (offset, bytes) is a write, an int is a truncate to that size.
_FileOp = tuple[int, bytes] | int


class PowerCut(Exception):
    """The power went out in the middle of a disk call (see ``SimDisk.cut_power_next``)."""


class _Inode:
    __slots__ = ("data", "durable", "pending")

    def __init__(self) -> None:
        self.data = bytearray()
        self.durable = bytearray()
        self.pending: list[_FileOp] = []


@dataclass(frozen=True, slots=True)
class _DirOp:
    kind: str  # "create" | "remove" | "rename" | "mkdir"
    path: str
    target: str = ""
    inode: _Inode | None = None


@dataclass(slots=True)
class _Scheduled:
    op: DiskOp
    error: int
    remaining: int
    skip: int
    path_contains: str


def _norm(path: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else "/" + path)


def _apply_file_op(buf: bytearray, op: _FileOp) -> None:
    if isinstance(op, int):
        if op < len(buf):
            del buf[op:]
        else:
            buf.extend(bytes(op - len(buf)))
        return
    offset, data = op
    if offset > len(buf):
        buf.extend(bytes(offset - len(buf)))
    buf[offset : offset + len(data)] = data


def _apply_dir_op(files: dict[str, _Inode], dirs: set[str], op: _DirOp) -> None:
    if op.kind == "create":
        assert op.inode is not None
        files[op.path] = op.inode
    elif op.kind == "remove":
        files.pop(op.path, None)
    elif op.kind == "rename":
        inode = files.pop(op.path, None)
        if inode is not None:
            files[op.target] = inode
    else:
        dirs.add(op.path)


class SimFile:
    """A handle on one ``SimDisk`` file; dead after the disk crashes or the handle closes."""

    __slots__ = ("_closed", "_disk", "_epoch", "_inode", "_path", "_writable")

    def __init__(self, disk: SimDisk, path: str, inode: _Inode, writable: bool) -> None:
        self._disk = disk
        self._path = path
        self._inode = inode
        self._epoch = disk.epoch
        self._writable = writable
        self._closed = False

    @property
    def path(self) -> str:
        return self._path

    def _enter(self, op: DiskOp) -> None:
        if self._closed or self._epoch != self._disk.epoch:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), self._path)
        if op in _MUTATING and not self._writable:
            raise OSError(errno.EBADF, "file opened read-only", self._path)
        self._disk.count(op)

    def size(self) -> int:
        if self._closed or self._epoch != self._disk.epoch:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF), self._path)
        return len(self._inode.data)

    def append(self, data: bytes | bytearray | memoryview) -> int:
        offset = len(self._inode.data)
        self.write_at(offset, data)
        return offset

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        self._enter(DiskOp.WRITE)
        grow = max(0, offset + len(data) - len(self._inode.data))
        error = self._disk.draw_fault(DiskOp.WRITE, self._path, grow)
        if error is not None:
            partial = self._disk.rng.randint(0, max(0, len(data) - 1))
            if partial:
                self._disk.write_inode(self._inode, offset, bytes(data[:partial]))
            raise OSError(error, os.strerror(error), self._path)
        self._disk.write_inode(self._inode, offset, bytes(data))

    def read(self, offset: int, size: int) -> bytes:
        self._enter(DiskOp.READ)
        self._disk.raise_fault(DiskOp.READ, self._path)
        return bytes(self._inode.data[offset : offset + size])

    def truncate(self, size: int) -> None:
        self._enter(DiskOp.TRUNCATE)
        self._disk.raise_fault(DiskOp.TRUNCATE, self._path)
        _apply_file_op(self._inode.data, size)
        self._inode.pending.append(size)

    def preallocate(self, size: int) -> None:
        if size > len(self._inode.data):
            self.truncate(size)

    def sync_data(self) -> None:
        self.fsync()  # the simulated disk keeps no timestamps: the same guarantee

    def fsync(self) -> None:
        self._enter(DiskOp.FSYNC)
        inode = self._inode
        error = self._disk.draw_fault(DiskOp.FSYNC, self._path, 0)
        if error is not None:
            # fsyncgate: part of the dirty data reached the disk, the rest is lost for good.
            keep = self._disk.rng.randint(0, len(inode.pending))
            for op in inode.pending[:keep]:
                _apply_file_op(inode.durable, op)
            inode.pending.clear()
            raise OSError(error, os.strerror(error), self._path)
        # Replaying the pending writes (rather than copying ``data``) keeps what an earlier
        # failed fsync dropped out of the durable bytes, as the kernel does.
        for op in inode.pending:
            _apply_file_op(inode.durable, op)
        inode.pending.clear()

    def close(self) -> None:
        self._closed = True


class SimDisk:
    """A deterministic in-memory disk with crash, torn-write, bit-flip and error injection."""

    def __init__(self, rng: random.Random, *, capacity_bytes: int | None = None) -> None:
        self.rng = rng
        self.capacity_bytes = capacity_bytes
        self.epoch = 0
        self.ops: dict[DiskOp, int] = dict.fromkeys(DiskOp, 0)
        self.bytes_written = 0
        self.crashes = 0
        # What crashes threw away, summed over every crash: pending file operations lost
        # whole, writes that landed torn, and directory changes that never became durable.
        self.lost_writes = 0
        self.torn_writes = 0
        self.lost_dir_ops = 0
        self._files: dict[str, _Inode] = {}
        self._dirs: set[str] = {_ROOT}
        self._durable_files: dict[str, _Inode] = {}
        self._durable_dirs: set[str] = {_ROOT}
        self._dir_ops: dict[str, list[_DirOp]] = {}
        self._locks: set[str] = set()
        self._scheduled: list[_Scheduled] = []
        self._rates: dict[DiskOp, tuple[float, int]] = {}
        self._read_only = False
        self._powered_off = False  # a scheduled power cut hit; crash() turns it back on

    # ---- fault switches ----------------------------------------------------------------------

    def fail_next(
        self,
        op: DiskOp,
        error: int = errno.EIO,
        *,
        count: int = 1,
        after: int = 0,
        path_contains: str = "",
    ) -> None:
        """Fail the next ``count`` calls of ``op`` (after letting ``after`` calls through)
        whose path contains ``path_contains``, with ``error`` (an errno value)."""
        assert count >= 1 and after >= 0
        assert len(self._scheduled) < _SCHEDULED_FAULTS_MAX, "too many scheduled faults"
        self._scheduled.append(_Scheduled(op, error, count, after, path_contains))

    def cut_power_next(self, op: DiskOp, *, after: int = 0, path_contains: str = "") -> None:
        """Cut the power at a coming call of ``op`` (after ``after`` matching calls): the call
        raises ``PowerCut`` before it takes effect, and so does every later call, until
        ``crash()`` (what the process wrote but never synced is then lost or torn)."""
        assert after >= 0
        assert len(self._scheduled) < _SCHEDULED_FAULTS_MAX, "too many scheduled faults"
        self._scheduled.append(_Scheduled(op, _POWER_CUT, 1, after, path_contains))

    def fail_rate(self, op: DiskOp, probability: float, error: int = errno.EIO) -> None:
        """Fail each call of ``op`` with ``probability`` (0 switches it off)."""
        assert 0.0 <= probability <= 1.0
        if probability == 0.0:
            self._rates.pop(op, None)
        else:
            self._rates[op] = (probability, error)

    def set_read_only(self, read_only: bool) -> None:
        """Every mutating call fails with EROFS while set (a file system remounted read-only)."""
        self._read_only = read_only

    def clear_faults(self) -> None:
        self._scheduled.clear()
        self._rates.clear()
        self._read_only = False

    def used_bytes(self) -> int:
        return sum(len(inode.data) for inode in self._unique_inodes(self._files))

    # ---- media damage ---------------------------------------------------------------------

    def flip_bit(self, path: str, offset: int, bit: int = 0) -> None:
        """Flip one bit of a file, both in what processes read and on the platter."""
        assert 0 <= bit < 8
        inode = self._files[_norm(path)]
        assert 0 <= offset < len(inode.data), "flip_bit past the end of the file"
        inode.data[offset] ^= 1 << bit
        if offset < len(inode.durable):
            inode.durable[offset] ^= 1 << bit

    def flip_random_bits(self, count: int, *, under: str = _ROOT) -> list[tuple[str, int, int]]:
        """Flip ``count`` random bits in non-empty files below ``under``; says where."""
        prefix = _norm(under)
        candidates = [
            path
            for path in sorted(self._files)
            if self._files[path].data and (path + "/").startswith(prefix.rstrip("/") + "/")
        ]
        flipped: list[tuple[str, int, int]] = []
        for _ in range(count if candidates else 0):
            path = self.rng.choice(candidates)
            offset = self.rng.randrange(len(self._files[path].data))
            bit = self.rng.randrange(8)
            self.flip_bit(path, offset, bit)
            flipped.append((path, offset, bit))
        return flipped

    # ---- crash ----------------------------------------------------------------------------

    def crash(self) -> None:
        """Lose power: keep the durable state plus a random prefix of what was pending."""
        for directory in sorted(self._dir_ops):
            ops = self._dir_ops[directory]
            kept = self.rng.randint(0, len(ops))
            self.lost_dir_ops += len(ops) - kept
            for op in ops[:kept]:
                _apply_dir_op(self._durable_files, self._durable_dirs, op)
        self._dir_ops.clear()
        self._durable_dirs = {d for d in self._durable_dirs if self._dir_alive(d)}
        self._durable_files = {
            path: inode
            for path, inode in sorted(self._durable_files.items())
            if posixpath.dirname(path) in self._durable_dirs
        }
        for inode in self._unique_inodes(self._durable_files):
            inode.data = self._survivor(inode)
            inode.durable = bytearray(inode.data)
            inode.pending.clear()
        self._files = dict(self._durable_files)
        self._dirs = set(self._durable_dirs)
        self._locks.clear()
        self._powered_off = False
        self.epoch += 1
        self.crashes += 1

    def _dir_alive(self, directory: str) -> bool:
        while directory != _ROOT:
            if directory not in self._durable_dirs:
                return False
            directory = posixpath.dirname(directory)
        return True

    def _survivor(self, inode: _Inode) -> bytearray:
        data = bytearray(inode.durable)
        pending = inode.pending
        keep = self.rng.randint(0, len(pending))
        for op in pending[:keep]:
            _apply_file_op(data, op)
        torn_op = pending[keep] if keep < len(pending) else None
        self.lost_writes += len(pending) - keep
        if torn_op is not None and not isinstance(torn_op, int):
            offset, torn = torn_op
            cut = self.rng.randint(0, len(torn))
            if cut:
                self.lost_writes -= 1
                self.torn_writes += 1
            if cut and self.rng.random() < 0.5:
                torn = bytes(cut)  # the file grew, the data blocks never arrived
            _apply_file_op(data, (offset, torn[:cut]))
        return data

    @staticmethod
    def _unique_inodes(files: dict[str, _Inode]) -> list[_Inode]:
        seen: dict[int, _Inode] = {}
        for path in sorted(files):
            seen.setdefault(id(files[path]), files[path])
        return list(seen.values())

    # ---- inspection helpers for tests -------------------------------------------------------

    def contents(self, path: str) -> bytes:
        return bytes(self._files[_norm(path)].data)

    def files(self, under: str = _ROOT) -> list[str]:
        """The paths of the files below ``under``, sorted (no fault, no op counted)."""
        prefix = _norm(under).rstrip("/") + "/"
        return sorted(path for path in self._files if path.startswith(prefix))

    def durable_contents(self, path: str) -> bytes | None:
        inode = self._durable_files.get(_norm(path))
        return None if inode is None else bytes(inode.durable)

    def put_file(self, path: str, data: bytes) -> None:
        """Plant a file, durable at once (name and bytes), for tests that craft damage."""
        path = _norm(path)
        assert posixpath.dirname(path) in self._dirs
        inode = self._files.get(path) or _Inode()
        inode.data = bytearray(data)
        inode.durable = bytearray(data)
        inode.pending.clear()
        self._files[path] = inode
        self._durable_files[path] = inode

    # ---- the Disk protocol ------------------------------------------------------------------

    def open(self, path: str, mode: OpenMode) -> SimFile:
        path = _norm(path)
        if mode is OpenMode.CREATE:
            self._enter(DiskOp.CREATE, path)
            if path in self._files or path in self._dirs:
                raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), path)
            self._need_dir(posixpath.dirname(path))
            inode = _Inode()
            self._files[path] = inode
            self._queue_dir_op(_DirOp("create", path, inode=inode))
            return SimFile(self, path, inode, writable=True)
        self._enter(DiskOp.OPEN, path)
        if mode is OpenMode.WRITE and self._read_only:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        found = self._files.get(path)
        if found is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return SimFile(self, path, found, writable=mode is OpenMode.WRITE)

    def fsync_dir(self, path: str) -> None:
        path = _norm(path)
        self._enter(DiskOp.FSYNC_DIR, path)
        self._need_dir(path)
        for op in self._dir_ops.pop(path, []):
            _apply_dir_op(self._durable_files, self._durable_dirs, op)

    def rename(self, src: str, dst: str) -> None:
        src, dst = _norm(src), _norm(dst)
        assert posixpath.dirname(src) == posixpath.dirname(dst), "rename stays in one directory"
        self._enter(DiskOp.RENAME, src)
        inode = self._files.pop(src, None)
        if inode is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), src)
        self._files[dst] = inode
        self._queue_dir_op(_DirOp("rename", src, target=dst))

    def remove(self, path: str) -> None:
        path = _norm(path)
        self._enter(DiskOp.REMOVE, path)
        if self._files.pop(path, None) is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        self._queue_dir_op(_DirOp("remove", path))

    def list_dir(self, path: str) -> list[str]:
        path = _norm(path)
        self._enter(DiskOp.LIST_DIR, path)
        self._need_dir(path)
        names = [p for p in self._files if posixpath.dirname(p) == path]
        names += [d for d in self._dirs if d != _ROOT and posixpath.dirname(d) == path]
        return sorted(posixpath.basename(p) for p in names)

    def file_size(self, path: str) -> int:
        inode = self._files.get(_norm(path))
        if inode is None:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        return len(inode.data)

    def exists(self, path: str) -> bool:
        path = _norm(path)
        return path in self._files or path in self._dirs

    def is_dir(self, path: str) -> bool:
        return _norm(path) in self._dirs

    def make_dir(self, path: str) -> None:
        path = _norm(path)
        self._enter(DiskOp.MAKE_DIR, path)
        if path in self._dirs or path in self._files:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST), path)
        self._need_dir(posixpath.dirname(path))
        self._dirs.add(path)
        self._queue_dir_op(_DirOp("mkdir", path))

    def lock(self, path: str) -> bool:
        path = _norm(path)
        if path in self._locks:
            return False
        if path not in self._files:
            self.open(path, OpenMode.CREATE).close()
        self._locks.add(path)
        return True

    def unlock(self, path: str) -> None:
        self._locks.discard(_norm(path))

    # ---- internals ------------------------------------------------------------------------

    def count(self, op: DiskOp) -> None:
        self.ops[op] += 1

    def _enter(self, op: DiskOp, path: str) -> None:
        self.count(op)
        self.raise_fault(op, path)

    def raise_fault(self, op: DiskOp, path: str) -> None:
        error = self.draw_fault(op, path, 0)
        if error is not None:
            raise OSError(error, os.strerror(error), path)

    def draw_fault(self, op: DiskOp, path: str, grow_bytes: int) -> int | None:
        """The errno this call fails with, or None; consumes scheduled faults."""
        if self._powered_off:
            raise PowerCut(f"{op.value} {path}: the power is off")
        if self._read_only and op in _MUTATING:
            return errno.EROFS
        for fault in self._scheduled:
            if fault.op is op and fault.path_contains in path:
                if fault.skip > 0:
                    fault.skip -= 1
                    continue
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._scheduled.remove(fault)
                if fault.error == _POWER_CUT:
                    self._powered_off = True
                    raise PowerCut(f"{op.value} {path}: the power went out")
                return fault.error
        rate = self._rates.get(op)
        if rate is not None and self.rng.random() < rate[0]:
            return rate[1]
        capacity = self.capacity_bytes
        if grow_bytes and capacity is not None and self.used_bytes() + grow_bytes > capacity:
            return errno.ENOSPC
        return None

    def write_inode(self, inode: _Inode, offset: int, data: bytes) -> None:
        _apply_file_op(inode.data, (offset, data))
        inode.pending.append((offset, data))
        self.bytes_written += len(data)

    def _need_dir(self, path: str) -> None:
        if path not in self._dirs:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), path)

    def _queue_dir_op(self, op: _DirOp) -> None:
        self._dir_ops.setdefault(posixpath.dirname(op.path), []).append(op)
