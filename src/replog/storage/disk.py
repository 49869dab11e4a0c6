"""The storage layer's only door to the file system.

Theory of operation. Every byte the storage code reads or writes goes through ``Disk`` and the
``DiskFile`` handles it opens, so the same WAL and snapshot code runs against the real file
system (``OsDisk``) and against the simulator's in-memory disk (``SimDisk``, which can crash,
tear writes, flip bits and fail calls on purpose).

The contract is POSIX's, stated plainly because the storage code relies on each point:

* a write is durable only once ``DiskFile.fsync`` returned after it; ``sync_data`` is enough
  for a write that did not extend the file, or one whose new size only matters for reading
  the data back (``fdatasync``: the data and the size, not the timestamps);
* creating, renaming or removing a file is durable only once ``Disk.fsync_dir`` returned for
  the directory that holds the name (a file can be fully synced yet vanish in a crash because
  its name never reached the disk);
* an ``OSError`` from any call leaves the outcome unknown: the write may be partly on disk, a
  failed fsync may have dropped the dirty pages for good.

Paths are plain strings; directories are created one level at a time.
"""

from __future__ import annotations

import enum
import errno
import fcntl
import os
from typing import Protocol


class OpenMode(enum.Enum):
    READ = "read"  # an existing file, read only
    WRITE = "write"  # an existing file, read and write
    CREATE = "create"  # a new file (fails if the name exists), read and write


class DiskFile(Protocol):
    """An open file. Offsets are absolute; ``append`` writes at the current end."""

    @property
    def path(self) -> str: ...

    def size(self) -> int: ...

    def append(self, data: bytes | bytearray | memoryview) -> int:
        """Write ``data`` at the end of the file; returns the offset it was written at."""
        ...

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None: ...

    def read(self, offset: int, size: int) -> bytes:
        """Up to ``size`` bytes from ``offset`` (fewer only at the end of the file)."""
        ...

    def truncate(self, size: int) -> None: ...

    def preallocate(self, size: int) -> None:
        """Make the file at least ``size`` bytes long, reading as zeros past its data, with
        the space reserved when the file system can (so later writes inside it change no
        metadata). Durable like a write."""
        ...

    def fsync(self) -> None: ...

    def sync_data(self) -> None: ...

    def close(self) -> None: ...


class Disk(Protocol):
    def open(self, path: str, mode: OpenMode) -> DiskFile: ...

    def fsync_dir(self, path: str) -> None: ...

    def rename(self, src: str, dst: str) -> None:
        """Atomically replace ``dst`` by ``src`` (both in the same directory)."""
        ...

    def remove(self, path: str) -> None: ...

    def list_dir(self, path: str) -> list[str]:
        """The names in a directory, sorted."""
        ...

    def file_size(self, path: str) -> int: ...

    def exists(self, path: str) -> bool: ...

    def is_dir(self, path: str) -> bool: ...

    def make_dir(self, path: str) -> None:
        """Create one directory level (its parent must exist); fsync the parent afterwards."""
        ...

    def lock(self, path: str) -> bool:
        """Take an exclusive lock on the lock file ``path`` (created if missing) for the life
        of this process or until ``unlock``; False if someone else holds it."""
        ...

    def unlock(self, path: str) -> None: ...


# --------------------------------------------------------------------------------------------
# The real file system.
# --------------------------------------------------------------------------------------------

_OPEN_FLAGS = {
    OpenMode.READ: os.O_RDONLY,
    OpenMode.WRITE: os.O_RDWR,
    OpenMode.CREATE: os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_sync_data = getattr(os, "fdatasync", os.fsync)  # systems without fdatasync: the full fsync


class OsFile:
    """A file descriptor with a tracked size; writes go through ``pwrite`` at that size."""

    __slots__ = ("_fd", "_path", "_size")

    def __init__(self, path: str, fd: int) -> None:
        self._path = path
        self._fd = fd
        self._size = os.fstat(fd).st_size

    @property
    def path(self) -> str:
        return self._path

    def size(self) -> int:
        return self._size

    def append(self, data: bytes | bytearray | memoryview) -> int:
        offset = self._size
        self.write_at(offset, data)
        return offset

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        done = os.pwrite(self._fd, data, offset)
        if done < len(data):  # a short write: go on from where it stopped
            with memoryview(data) as view:
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], offset + done)
        self._size = max(self._size, offset + len(data))

    def read(self, offset: int, size: int) -> bytes:
        parts: list[bytes] = []
        done = 0
        while done < size:
            chunk = os.pread(self._fd, size - done, offset + done)
            if not chunk:
                break
            parts.append(chunk)
            done += len(chunk)
        return b"".join(parts)

    def truncate(self, size: int) -> None:
        os.ftruncate(self._fd, size)
        self._size = size

    def preallocate(self, size: int) -> None:
        if size <= self._size:
            return
        try:
            os.posix_fallocate(self._fd, 0, size)
        except (OSError, AttributeError):  # not supported here: a sparse file reads the same
            os.ftruncate(self._fd, size)
        self._size = size

    def fsync(self) -> None:
        os.fsync(self._fd)

    def sync_data(self) -> None:
        _sync_data(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class OsDisk:
    """``Disk`` on the real file system, with ``os.fsync`` on files and directories."""

    def __init__(self) -> None:
        self._locks: dict[str, int] = {}

    def open(self, path: str, mode: OpenMode) -> OsFile:
        fd = os.open(path, _OPEN_FLAGS[mode] | _CLOEXEC, 0o644)
        try:
            return OsFile(path, fd)
        except BaseException:
            os.close(fd)
            raise

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        assert os.path.dirname(src) == os.path.dirname(dst), "rename stays in one directory"
        os.replace(src, dst)

    def remove(self, path: str) -> None:
        os.remove(path)

    def list_dir(self, path: str) -> list[str]:
        return sorted(os.listdir(path))

    def file_size(self, path: str) -> int:
        return os.stat(path).st_size

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def is_dir(self, path: str) -> bool:
        return os.path.isdir(path)

    def make_dir(self, path: str) -> None:
        os.mkdir(path, 0o755)

    def lock(self, path: str) -> bool:
        assert path not in self._locks, "lock taken twice by this process"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self._locks[path] = fd
        return True

    def unlock(self, path: str) -> None:
        fd = self._locks.pop(path, None)
        if fd is not None:
            os.close(fd)
