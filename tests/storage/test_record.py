"""The record framing and bodies: round trips (hypothesis) and every framing defect."""

from __future__ import annotations

import struct

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from replog.core.types import Entry, EntryKind, HardState
from replog.storage.errors import EntryTooLarge
from replog.storage.record import (
    ENTRY_BYTES_MAX,
    HEADER_BYTES,
    MAGIC,
    RECORD_BODY_MAX,
    BatchPart,
    Defect,
    Frame,
    RecordType,
    SegmentHeader,
    decode_batch_part,
    decode_segment_header,
    encode,
    encode_batch,
    frame,
    read_frame,
)

u63 = st.integers(min_value=0, max_value=2**63 - 1)


@st.composite
def entry_runs(draw: st.DrawFn) -> list[Entry]:
    first = draw(st.integers(min_value=1, max_value=2**40))
    count = draw(st.integers(min_value=0, max_value=40))
    term = draw(st.integers(min_value=1, max_value=2**40))
    out = []
    for k in range(count):
        term += draw(st.sampled_from((0, 0, 0, 1)))
        kind = draw(st.sampled_from(list(EntryKind)))
        out.append(Entry(first + k, term, kind, draw(st.binary(max_size=300))))
    return out


@given(st.sampled_from(list(RecordType)), st.binary(max_size=2000))
def test_frame_round_trip(rtype: RecordType, body: bytes) -> None:
    data = b"junk" + frame(rtype, body) + b"after"
    found = read_frame(data, 4)
    assert isinstance(found, Frame)
    assert (found.rtype, found.flags, found.body) == (rtype, 0, body)
    assert found.end == len(data) - len(b"after")


@given(entry_runs(), u63, u63, u63, st.integers(min_value=1, max_value=2**40))
@settings(max_examples=200)
def test_batch_round_trip(
    entries: list[Entry], term: int, vote: int, commit: int, seq: int
) -> None:
    hs = HardState(term, vote, commit)
    buffer, locations = encode_batch(seq, hs, entries, None, part_bytes=1000)
    data = bytes(buffer)
    parts: list[BatchPart] = []
    pos = 0
    while pos < len(data):
        found = read_frame(data, pos)
        assert isinstance(found, Frame)
        part = decode_batch_part(found.body)
        assert isinstance(part, BatchPart), part
        parts.append(part)
        pos = found.end
    assert [p.part for p in parts] == list(range(len(parts)))
    assert [p.final for p in parts] == [False] * (len(parts) - 1) + [True]
    assert all(p.batch_seq == seq for p in parts)
    assert parts[-1].hard_state() == hs
    decoded = [e for p in parts for e in p.entries()]
    assert decoded == entries
    assert sum(loc.entry_count for loc in locations) == len(entries)
    for loc in locations:
        found = read_frame(data, loc.offset)
        assert isinstance(found, Frame)
        part = decode_batch_part(found.body)
        assert isinstance(part, BatchPart)
        assert part.first_index == loc.first_index
        for k in range(loc.entry_count):
            index = loc.first_index + k
            assert part.entry(index) == entries[index - entries[0].index]


def test_batch_carries_snapshot_mark_in_first_part_only() -> None:
    entries = [Entry(11 + k, 3, EntryKind.NORMAL, b"x" * 600) for k in range(4)]
    buffer, _ = encode_batch(7, HardState(3, 1, 10), entries, (10, 3, False), part_bytes=1000)
    data = bytes(buffer)
    parts = []
    pos = 0
    while pos < len(data):
        found = read_frame(data, pos)
        assert isinstance(found, Frame)
        part = decode_batch_part(found.body)
        assert isinstance(part, BatchPart)
        parts.append(part)
        pos = found.end
    assert len(parts) == 4  # 600 data bytes per entry, parts of about 1000
    assert (parts[0].snapshot_index, parts[0].snapshot_term, parts[0].snapshot_keep) == (
        10,
        3,
        False,
    )
    assert all(part.snapshot_index == 0 for part in parts[1:])


def test_entry_over_the_limit_is_refused_before_writing() -> None:
    big = Entry(1, 1, EntryKind.NORMAL, bytes(ENTRY_BYTES_MAX + 1))
    with pytest.raises(EntryTooLarge):
        encode_batch(1, HardState(1, 0, 0), [big], None)


def test_read_frame_names_each_defect() -> None:
    record = frame(RecordType.BATCH, b"hello body")
    assert read_frame(record[: HEADER_BYTES - 1], 0) is Defect.SHORT_HEADER
    assert read_frame(b"\x00" * 20, 0) is Defect.BAD_MAGIC
    huge = MAGIC + struct.pack("<BBI", 2, 0, RECORD_BODY_MAX + 1) + b"\x00" * 8
    assert read_frame(huge, 0) is Defect.BAD_LENGTH
    assert read_frame(record[:-1], 0) is Defect.PAST_END
    flipped = bytearray(record)
    flipped[-1] ^= 1
    assert read_frame(bytes(flipped), 0) is Defect.BAD_CHECKSUM


@given(st.data())
def test_every_single_bit_flip_is_detected(data: st.DataObject) -> None:
    record = frame(RecordType.BATCH, data.draw(st.binary(min_size=1, max_size=200)))
    offset = data.draw(st.integers(min_value=0, max_value=len(record) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    damaged = bytearray(record)
    damaged[offset] ^= 1 << bit
    assert isinstance(read_frame(bytes(damaged), 0), Defect)


def test_invalid_but_checksummed_bodies_are_rejected() -> None:
    assert isinstance(decode_batch_part(b"\x90"), str)
    bad_kinds = encode(BatchPart(1, 0, True, 0, 0, False, 1, 1, [], b"\x09", [b"a"], 1, 0, 0))
    assert "kinds" in str(decode_batch_part(bad_kinds))
    bad_terms = encode(BatchPart(1, 0, True, 0, 0, False, 1, 1, [1, 2], b"", [b"a"], 1, 0, 0))
    assert "terms" in str(decode_batch_part(bad_terms))
    header = SegmentHeader("replog-wal", 1, "c", 1, 0, 1, 0, 1, 0, 0, 0)
    assert isinstance(decode_segment_header(encode(header)), str)
