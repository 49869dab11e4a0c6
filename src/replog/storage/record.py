"""The on-disk record: one framing for WAL segments, snapshot files and the metadata file.

Theory of operation. Every file the storage layer writes is a sequence of records:

    offset  size  field
    0       2     magic 0xE7 0x4C (lets recovery find record starts again after damage)
    2       1     record type (RecordType)
    3       1     flags, always 0 in format version 1
    4       4     body length in bytes, little endian, at most RECORD_BODY_MAX
    8       4     CRC-32C (Castagnoli) of bytes 0..8 followed by the body
    12      n     body: a msgpack array (msgspec), never pickle

The checksum covers the header too, so a flipped length or type bit is caught. A record is
accepted only whole: complete header, plausible length, all bytes present, checksum right.
``read_frame`` reports precisely which of these failed (a ``Defect``); what that means for
recovery is decided by the table in ``recovery.py``, not here.

Record bodies (all msgspec "array-like" structs, so fields are positional):

* SEGMENT_HEADER opens every WAL segment: magic string, format version, cluster id, node id,
  segment sequence number, first index (index of the next entry when the segment was made),
  the term of the entry before it, the next batch number and the hard state at that moment.
* BATCH carries one part of a ``save()`` call: batch number, part number, ``final`` flag, an
  optional snapshot mark (Raft section 7: the log is cut back to the snapshot, with the writer's
  decision to keep or drop the entries after it), contiguous
  entries (first index, one term or per-entry terms, kinds, data) and, in the final part, the
  hard state. A batch counts only once its final part is on disk: hard state and entries of
  one Ready are therefore atomic.
* META identifies the directory (magic, format version, cluster id, node id).
* SNAPSHOT heads a snapshot file (index, term, membership, length and CRC-32C of the data).
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import crc32c
import msgspec

from replog.core.types import Entry, EntryKind, HardState
from replog.storage.errors import EntryTooLarge

MAGIC = b"\xe7\x4c"
HEADER_BYTES = 12
RECORD_BODY_MAX = 64 << 20  # a body over this is a corrupt length field, never a real record
ENTRY_BYTES_MAX = 32 << 20  # one entry's data
PART_BYTES_TARGET = 1 << 20  # a batch is split into parts of about this many data bytes
ZERO_BLOCK = bytes(1 << 20)  # what preallocated space reads as, a block at a time
FORMAT_VERSION = 1
WAL_MAGIC = "replog-wal"
META_MAGIC = "replog-meta"
SNAPSHOT_MAGIC = "replog-snapshot"
NO_TERM = -1  # "term unknown" in a segment header (only after compaction cut the log)

_HEAD = struct.Struct("<2sBBI")
_CRC = struct.Struct("<I")
_crc = crc32c.crc32c
_ENCODER = msgspec.msgpack.Encoder()
_KIND_VALUES = frozenset(int(kind) for kind in EntryKind)
_NO_HARD_STATE = HardState()
_NO_TERMS: list[int] = []
_NO_KINDS: list[EntryKind] = []
_NORMAL = EntryKind.NORMAL
# A part's bytes beyond its entries' data: header, fixed fields, and per entry at most a bin
# header, a term and a kind. A batch within part_bytes of data always fits in one part.
_PART_OVERHEAD_BYTES = 256
_ENTRY_OVERHEAD_BYTES = 16


class RecordType(enum.IntEnum):
    SEGMENT_HEADER = 1
    BATCH = 2
    META = 3
    SNAPSHOT = 4


class Defect(enum.Enum):
    """Why the bytes at some offset are not an acceptable record (or why a file ends badly)."""

    SHORT_HEADER = "fewer bytes left than a record header"
    BAD_MAGIC = "no record magic where a record must start"
    BAD_LENGTH = "length field larger than any record can be"
    PAST_END = "record runs past the end of the file"
    BAD_CHECKSUM = "checksum mismatch"
    BAD_CONTENT = "checksum is right but the content is invalid"
    OPEN_BATCH = "the file ends inside a batch (its final part is missing)"


@dataclass(frozen=True, slots=True)
class Frame:
    rtype: int
    flags: int
    body: bytes
    end: int


def frame(rtype: RecordType, body: bytes) -> bytes:
    """One record: header, checksum and body, as bytes ready to write."""
    assert len(body) <= RECORD_BODY_MAX, "record body too large"
    head = _HEAD.pack(MAGIC, rtype, 0, len(body))
    return head + _CRC.pack(_crc(body, _crc(head))) + body


def read_frame(data: bytes, pos: int) -> Frame | Defect:
    """The record at ``pos``, or the first thing wrong with it."""
    if len(data) - pos < HEADER_BYTES:
        return Defect.SHORT_HEADER
    magic, rtype, flags, length = _HEAD.unpack_from(data, pos)
    if magic != MAGIC:
        return Defect.BAD_MAGIC
    if length > RECORD_BODY_MAX:
        return Defect.BAD_LENGTH
    end = pos + HEADER_BYTES + length
    if end > len(data):
        return Defect.PAST_END
    (stored,) = _CRC.unpack_from(data, pos + 8)
    body = data[pos + HEADER_BYTES : end]
    if _crc(body, _crc(data[pos : pos + 8])) != stored:
        return Defect.BAD_CHECKSUM
    return Frame(rtype, flags, body, end)


# --------------------------------------------------------------------------------------------
# Bodies.
# --------------------------------------------------------------------------------------------


class SegmentHeader(msgspec.Struct, array_like=True, frozen=True):
    magic: str
    format_version: int
    cluster_id: str
    node_id: int
    segment_seq: int
    first_index: int
    prev_term: int
    batch_seq: int
    term: int
    voted_for: int
    commit_index: int

    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.commit_index)


class BatchPart(msgspec.Struct, array_like=True, frozen=True):
    batch_seq: int
    part: int
    final: bool
    snapshot_index: int  # 0: no snapshot mark
    snapshot_term: int
    snapshot_keep: bool  # the writer kept the entries after the snapshot (Raft section 7)
    first_index: int
    term: int  # every entry's term, unless ``terms`` is non-empty
    terms: list[int]
    kinds: bytes  # per-entry EntryKind values, or empty when all are NORMAL
    datas: list[bytes]
    hs_term: int
    hs_voted_for: int
    hs_commit_index: int

    def hard_state(self) -> HardState:
        return HardState(self.hs_term, self.hs_voted_for, self.hs_commit_index)

    def term_at(self, k: int) -> int:
        return self.terms[k] if self.terms else self.term

    def entries(self) -> list[Entry]:
        first, term, terms, kinds = self.first_index, self.term, self.terms, self.kinds
        if not terms and not kinds:
            return [Entry(first + k, term, EntryKind.NORMAL, d) for k, d in enumerate(self.datas)]
        return [
            Entry(
                first + k,
                terms[k] if terms else term,
                EntryKind(kinds[k]) if kinds else EntryKind.NORMAL,
                d,
            )
            for k, d in enumerate(self.datas)
        ]

    def entry(self, index: int) -> Entry:
        k = index - self.first_index
        assert 0 <= k < len(self.datas)
        kind = EntryKind(self.kinds[k]) if self.kinds else EntryKind.NORMAL
        return Entry(index, self.term_at(k), kind, self.datas[k])


class MetaBody(msgspec.Struct, array_like=True, frozen=True):
    magic: str
    format_version: int
    cluster_id: str
    node_id: int


class SnapshotHeader(msgspec.Struct, array_like=True, frozen=True):
    magic: str
    format_version: int
    cluster_id: str
    node_id: int
    index: int
    term: int
    voters: list[int]
    voters_outgoing: list[int]
    learners: list[int]
    data_bytes: int
    data_crc: int


_SEGMENT_HEADER = msgspec.msgpack.Decoder(SegmentHeader)
_BATCH_PART = msgspec.msgpack.Decoder(BatchPart)
_META = msgspec.msgpack.Decoder(MetaBody)
_SNAPSHOT = msgspec.msgpack.Decoder(SnapshotHeader)
_ANY = msgspec.msgpack.Decoder()


def encode(body: msgspec.Struct) -> bytes:
    return _ENCODER.encode(body)


def peek_version(body: bytes, magic: str) -> int | str:
    """The format version of a header-like body (checked before a strict decode, so that a
    newer layout is reported as "too new" rather than as damage); a str says what is wrong."""
    try:
        fields: Any = _ANY.decode(body)
    except msgspec.DecodeError as error:
        return f"undecodable body ({error})"
    if not isinstance(fields, list) or len(fields) < 2 or fields[0] != magic:
        return f"not a {magic} header"
    version = fields[1]
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        return f"invalid format version {version!r}"
    return version


def decode_segment_header(body: bytes) -> SegmentHeader | str:
    try:
        header = _SEGMENT_HEADER.decode(body)
    except msgspec.DecodeError as error:
        return f"undecodable segment header ({error})"
    if min(header.segment_seq, header.first_index) < 1 or header.batch_seq < 1:
        return "segment header numbers out of range"
    if header.prev_term < NO_TERM or min(header.term, header.voted_for, header.commit_index) < 0:
        return "segment header numbers out of range"
    return header


def decode_meta(body: bytes) -> MetaBody | str:
    try:
        return _META.decode(body)
    except msgspec.DecodeError as error:
        return f"undecodable metadata ({error})"


def decode_snapshot_header(body: bytes) -> SnapshotHeader | str:
    try:
        header = _SNAPSHOT.decode(body)
    except msgspec.DecodeError as error:
        return f"undecodable snapshot header ({error})"
    if header.index < 1 or header.term < 1 or header.data_bytes < 0:
        return "snapshot header numbers out of range"
    return header


def decode_batch_part(body: bytes) -> BatchPart | str:
    """The batch part in ``body``, or why it is invalid (a record that passed its checksum)."""
    try:
        part = _BATCH_PART.decode(body)
    except msgspec.DecodeError as error:
        return f"undecodable batch ({error})"
    count = len(part.datas)
    if part.batch_seq < 1 or part.part < 0:
        return "batch numbers out of range"
    if part.terms and len(part.terms) != count:
        return "per-entry terms do not match the entry count"
    if part.kinds and (len(part.kinds) != count or not _KIND_VALUES.issuperset(part.kinds)):
        return "entry kinds are invalid"
    if count and (part.first_index < 1 or min(part.terms or [part.term]) < 1):
        return "entry index or term out of range"
    if part.snapshot_index < 0 or (part.snapshot_index and part.part != 0):
        return "snapshot mark out of place"
    if part.snapshot_index and part.snapshot_term < 1:
        return "snapshot mark without a term"
    if min(part.hs_term, part.hs_voted_for, part.hs_commit_index) < 0:
        return "hard state numbers out of range"
    return part


# --------------------------------------------------------------------------------------------
# Batches: the hot path of every save().
# --------------------------------------------------------------------------------------------


class PartLocation(NamedTuple):
    """Where one batch part landed, relative to the start of the batch's bytes."""

    offset: int
    first_index: int
    entry_count: int
    term: int
    terms: tuple[int, ...] | None


def _check_entry_sizes(entries: Sequence[Entry]) -> None:
    for entry in entries:
        if len(entry.data) > ENTRY_BYTES_MAX:
            raise EntryTooLarge(entry.index, len(entry.data), ENTRY_BYTES_MAX)


def _split(datas: list[bytes], part_bytes: int) -> list[tuple[int, int]]:
    chunks: list[tuple[int, int]] = []
    lo = total = 0
    for k, data in enumerate(datas):
        if total and total + len(data) > part_bytes:
            chunks.append((lo, k))
            lo, total = k, 0
        total += len(data)
    chunks.append((lo, len(datas)))
    return chunks


def encode_batch(
    batch_seq: int,
    hard_state: HardState,
    entries: Sequence[Entry],
    mark: tuple[int, int, bool] | None,
    part_bytes: int = PART_BYTES_TARGET,
) -> tuple[bytes | bytearray, list[PartLocation]]:
    """The records of one batch, as one buffer for one write call, and where each part is.

    ``mark`` is (index, term, keep) of a snapshot the log is cut back to before these entries,
    with the writer's Raft section 7 decision (keep the entries after it or not).
    Raises ``EntryTooLarge`` (before anything is written) for an entry over
    ``ENTRY_BYTES_MAX``. This is the hot path of every save: one list pass per field, one
    msgpack call and one checksum per part, and a single part for all but huge batches.
    """
    # One pass over the entries for the common case (one term, all NORMAL); a batch that
    # fails the test takes a second pass and stores per-entry terms and kinds.
    term = entries[0].term if entries else 0
    datas = [e.data for e in entries if e.term == term and e.kind is _NORMAL]
    plain = len(datas) == len(entries)
    if not plain:
        datas = [e.data for e in entries]
    record, location = _encode_part(
        batch_seq, 0, entries, datas, hard_state=hard_state, mark=mark, offset=0, plain=plain
    )
    if len(record) <= part_bytes + _PART_OVERHEAD_BYTES + _ENTRY_OVERHEAD_BYTES * len(datas):
        return record, [location] if location is not None else []
    # Rare: a batch too large for one record. Encoding it whole first was wasted work, but
    # it spared every ordinary batch a pass to add up its sizes.
    if len(record) > ENTRY_BYTES_MAX:
        _check_entry_sizes(entries)
    out: list[bytearray] = []
    locations: list[PartLocation] = []
    offset = 0
    chunks = _split(datas, part_bytes)
    for k, (lo, hi) in enumerate(chunks):
        hs = hard_state if k == len(chunks) - 1 else None
        part_mark = mark if k == 0 else None
        record, location = _encode_part(
            batch_seq,
            k,
            entries[lo:hi],
            datas[lo:hi],
            hard_state=hs,
            mark=part_mark,
            offset=offset,
            plain=plain,
        )
        out.append(record)
        if location is not None:
            locations.append(location)
        offset += len(record)
    return b"".join(out), locations


def _encode_part(
    batch_seq: int,
    part: int,
    entries: Sequence[Entry],
    datas: list[bytes],
    *,
    hard_state: HardState | None,
    mark: tuple[int, int, bool] | None,
    offset: int,
    plain: bool,
) -> tuple[bytearray, PartLocation | None]:
    """One BATCH record; ``hard_state`` is given for the final part only; ``plain`` says
    every entry has the first one's term and is NORMAL. Encoded in place behind the room for
    its header, so the body is never copied."""
    term = entries[0].term if entries else 0
    terms = _NO_TERMS if plain else [e.term for e in entries]
    uniform = plain or terms.count(term) == len(terms)
    kinds = _NO_KINDS if plain else [e.kind for e in entries]
    normal = plain or kinds.count(EntryKind.NORMAL) == len(kinds)
    snap_index, snap_term, snap_keep = mark if mark is not None else (0, 0, False)
    hs = hard_state if hard_state is not None else _NO_HARD_STATE
    first = entries[0].index if entries else 0
    record = bytearray(HEADER_BYTES)  # the body is encoded right after the header's room
    _ENCODER.encode_into(
        (
            batch_seq,
            part,
            hard_state is not None,
            snap_index,
            snap_term,
            snap_keep,
            first,
            term,
            _NO_TERMS if uniform else terms,
            b"" if normal else bytes(kinds),
            datas,
            hs.term,
            hs.voted_for,
            hs.commit_index,
        ),
        record,
        HEADER_BYTES,
    )
    _HEAD.pack_into(record, 0, MAGIC, RecordType.BATCH, 0, len(record) - HEADER_BYTES)
    view = memoryview(record)
    _CRC.pack_into(record, 8, _crc(view[HEADER_BYTES:], _crc(view[:8])))
    view.release()
    if not entries:
        return record, None
    terms_kept = None if uniform else tuple(terms)
    return record, PartLocation(offset, first, len(entries), term, terms_kept)
