"""The segmented write-ahead log: group commit, rollover, compaction, reading entries back.

Theory of operation. The WAL is a numbered sequence of segment files (``layout.py`` names
them); only the last one, the *active* segment, is ever written, and only at the end of
what it holds. One ``write_batch`` call is one Ready batch: its records (``record.encode_batch``:
entries, an optional snapshot mark, the hard state in the final part) are encoded into ONE
buffer, written with ONE write and made durable with ONE sync; when the batch opened a new
segment the file and the directory are fsynced, so the new name survives a crash. The
in-memory state (``index``, ``hard_state``, ``next_batch``) changes only after that sync
returned, so it never runs ahead of the disk.

Preallocation: a new segment is created ``segment_bytes`` long (``posix_fallocate``; it reads
as zeros), so a batch written inside it does not change the file's size. Reserved space is
not enough, though: ext4 marks fallocated blocks unwritten, and the first write into one
converts it, a metadata change that makes ``fdatasync`` commit the journal. So the WAL also
writes real zeros ``ZERO_AHEAD_BYTES`` ahead of its end, a chunk at a time (the chunk is
flushed with the batch that crossed into the previous one); a batch then lands on blocks
already written, and its sync flushes data only. With three nodes syncing on one disk, a
10 KB write and sync fell from about 155 to 105 us. Recovery takes zeros after the last whole
batch of the last segment for the unwritten rest (not a torn write) and cuts them; the next
write reserves the space again. A full segment is cut to its written length and fsynced
before the next one is created, so only the last segment ever ends in zeros.

Rollover: before a batch that would push a non-empty active segment past ``segment_bytes``,
the batch goes into a new segment instead, whose header record (written in the same buffer)
states where the log stands: first index, term before it, next batch number and hard state.
A segment may therefore exceed ``segment_bytes`` by one batch.

Compaction deletes whole segments, oldest first, whose live entries all lie at or below the
compaction point, never the active one; each removal is followed by a directory fsync so the
surviving segments always stay a gap-free run of numbers, whatever the crash.

Invariants: segment numbers are consecutive; ``index`` holds exactly the live log of the
durable records; every batch in segment k was fsynced before segment k + 1 was created.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from replog.core.types import Entry, HardState
from replog.storage.disk import Disk, DiskFile, OpenMode
from replog.storage.errors import CorruptionError
from replog.storage.layout import Identity, segment_name
from replog.storage.logindex import LogIndex, Run
from replog.storage.record import (
    FORMAT_VERSION,
    HEADER_BYTES,
    PART_BYTES_TARGET,
    WAL_MAGIC,
    ZERO_BLOCK,
    BatchPart,
    Defect,
    PartLocation,
    RecordType,
    SegmentHeader,
    decode_batch_part,
    encode,
    encode_batch,
    frame,
    read_frame,
)

SEGMENT_BYTES_DEFAULT = 64 << 20
SEGMENT_BYTES_MIN = 4 << 10
ZERO_AHEAD_BYTES = len(ZERO_BLOCK)  # the active segment holds written zeros this far past its end


@dataclass(slots=True)
class Segment:
    seq: int
    first_index: int
    size: int
    header_bytes: int  # 0 when unknown (a segment found at recovery)

    @property
    def name(self) -> str:
        return segment_name(self.seq, self.first_index)


class Wal:
    def __init__(
        self,
        disk: Disk,
        directory: str,
        identity: Identity,
        segment_bytes: int,
        *,
        part_bytes: int = PART_BYTES_TARGET,
        index: LogIndex,
        hard_state: HardState,
        next_batch: int,
        segments: list[Segment],
    ) -> None:
        assert segment_bytes >= SEGMENT_BYTES_MIN
        self.disk = disk
        self.directory = directory
        self.identity = identity
        self.segment_bytes = segment_bytes
        self.part_bytes = part_bytes
        self.index = index
        self.hard_state = hard_state
        self.next_batch = next_batch
        self.segments = segments
        self._active: DiskFile | None = None
        self._zeroed_to = 0  # the active segment reads as written zeros from its end to here

    def path(self, segment: Segment) -> str:
        return os.path.join(self.directory, segment.name)

    @property
    def log_bytes(self) -> int:
        return sum(segment.size for segment in self.segments)

    def close(self) -> None:
        if self._active is not None:
            self._active.close()
            self._active = None

    # ---- writing ---------------------------------------------------------------------------

    def write_batch(
        self,
        hard_state: HardState,
        entries: Sequence[Entry],
        mark: tuple[int, int, bool] | None,
        *,
        may_roll: bool = True,
    ) -> None:
        """Append one batch durably (one write, one fsync). Raises ``OSError`` with the
        in-memory state unchanged; the caller must then stop writing. ``may_roll=False``
        keeps the batch in the last segment even past its size: recovery's repair mark must
        follow the log it repairs (a new segment's header would describe the log after it)."""
        buffer, locations = encode_batch(
            self.next_batch, hard_state, entries, mark, self.part_bytes
        )
        active = self.segments[-1] if self.segments else None
        if active is None or (may_roll and self._is_full(active, len(buffer))):
            if active is not None:
                self._seal(active)
            segment, header = self._new_segment()
            handle = self.disk.open(self.path(segment), OpenMode.CREATE)
            try:
                handle.preallocate(self.segment_bytes)
                handle.write_at(0, header + buffer)
                self._zeroed_to = 0
                self._zero_ahead(handle, len(header) + len(buffer))
                handle.fsync()
                self.disk.fsync_dir(self.directory)
            except BaseException:
                handle.close()
                raise
            self.close()
            self._active = handle
            self.segments.append(segment)
            base = len(header)
        else:
            handle = self._active_handle(active)
            base = active.size
            handle.write_at(base, buffer)
            self._zero_ahead(handle, base + len(buffer))
            handle.sync_data()  # inside the preallocated size, or a size only reads need
            segment = active
        segment.size = base + len(buffer)
        self._apply(segment.seq, base, locations, hard_state, mark)

    def _is_full(self, active: Segment, batch_bytes: int) -> bool:
        has_batches = active.header_bytes == 0 or active.size > active.header_bytes
        return has_batches and active.size + batch_bytes > self.segment_bytes

    def _new_segment(self) -> tuple[Segment, bytes]:
        seq = self.segments[-1].seq + 1 if self.segments else 1
        hs = self.hard_state
        header = SegmentHeader(
            WAL_MAGIC,
            FORMAT_VERSION,
            self.identity.cluster_id,
            self.identity.node_id,
            seq,
            self.index.last_index + 1,
            self.index.last_term,
            self.next_batch,
            hs.term,
            hs.voted_for,
            hs.commit_index,
        )
        record = frame(RecordType.SEGMENT_HEADER, encode(header))
        return Segment(seq, self.index.last_index + 1, len(record), len(record)), record

    def _active_handle(self, active: Segment) -> DiskFile:
        if self._active is None:
            handle = self.disk.open(self.path(active), OpenMode.WRITE)
            try:
                assert handle.size() == active.size, "active segment changed under us"
                handle.preallocate(self.segment_bytes)  # recovery cut the rest
                self._zeroed_to = active.size
            except BaseException:
                handle.close()
                raise
            self._active = handle
        return self._active

    def _zero_ahead(self, handle: DiskFile, end: int) -> None:
        """Write zeros over the preallocated space from ``_zeroed_to`` up to a chunk past
        ``end`` (the end of what the segment holds), within ``segment_bytes``: a chunk at a
        time, once ``end`` has come within half a chunk of the zeroed space's end."""
        if self._zeroed_to - end >= ZERO_AHEAD_BYTES // 2:
            return
        start = max(self._zeroed_to, end)
        stop = min(start + ZERO_AHEAD_BYTES, self.segment_bytes)
        if stop > start:
            handle.write_at(start, ZERO_BLOCK[: stop - start])
        self._zeroed_to = max(stop, end)

    def _seal(self, active: Segment) -> None:
        """Cut the preallocated rest of a full segment before the next one exists, so only
        the last segment ever ends in zeros."""
        handle = self._active_handle(active)
        handle.truncate(active.size)
        handle.fsync()

    def _apply(
        self,
        seq: int,
        base: int,
        locations: list[PartLocation],
        hard_state: HardState,
        mark: tuple[int, int, bool] | None,
    ) -> None:
        index = self.index
        if mark is not None:
            ok = index.apply_mark(*mark)
            assert ok, "snapshot mark inconsistent with the log"
        for loc in locations:
            first, last = loc.first_index, loc.first_index + loc.entry_count - 1
            ok = index.put(Run(first, first, last, seq, base + loc.offset, loc.term, loc.terms))
            assert ok, "entries must continue the log"
        self.hard_state = hard_state
        self.next_batch += 1

    # ---- compaction ------------------------------------------------------------------------

    def compact(self, through: int) -> list[str]:
        """Forget the oldest segments whose live entries all lie at or below ``through``
        (never the active segment); returns their file names, oldest first, for the caller
        to remove in that order (a crash in between leaves them to recovery, which skips
        segments wholly behind the snapshot)."""
        if len(self.segments) < 2:
            return []
        keep_from = self.index.first_live_segment_after(through)
        active_seq = self.segments[-1].seq
        limit = active_seq if keep_from is None else min(keep_from, active_seq)
        removed: list[str] = []
        while self.segments[0].seq < limit:
            removed.append(self.segments.pop(0).name)
        self.index.drop_before_segment(limit)
        return removed

    # ---- reading ---------------------------------------------------------------------------

    def read_entries(self, lo: int, hi: int) -> list[Entry]:
        """Entries in [lo, hi) that the live log holds, read back from the segments."""
        out: list[Entry] = []
        index = max(lo, self.index.base_index + 1)
        hi = min(hi, self.index.last_index + 1)
        while index < hi:
            run = self.index.locate(index)
            assert run is not None
            part = self._read_part(run)
            stop = min(hi, run.last + 1)
            out.extend(part.entry(i) for i in range(index, stop))
            index = stop
        return out

    def _read_part(self, run: Run) -> BatchPart:
        segment = next(s for s in self.segments if s.seq == run.seq)
        path = self.path(segment)
        handle = self.disk.open(path, OpenMode.READ)
        try:
            head = handle.read(run.offset, HEADER_BYTES)
            length = int.from_bytes(head[4:8], "little") if len(head) == HEADER_BYTES else 0
            data = head + handle.read(run.offset + HEADER_BYTES, length)
        finally:
            handle.close()
        found = read_frame(data, 0)
        part = decode_batch_part(found.body) if not isinstance(found, Defect) else found.value
        if isinstance(part, str):
            raise CorruptionError(path, run.offset, f"record unreadable: {part}", "read-back")
        return part
