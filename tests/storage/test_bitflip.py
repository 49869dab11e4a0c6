"""bitflip.explain_by_bit_flip: finds every single flipped bit, and never explains a torn write."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from replog.storage.bitflip import explain_by_bit_flip
from replog.storage.record import HEADER_BYTES, RecordType, frame


@given(st.binary(max_size=5000), st.integers(min_value=0, max_value=40), st.data())
@settings(max_examples=300)
def test_every_single_bit_flip_is_located(body: bytes, lead: int, data: st.DataObject) -> None:
    record = bytearray(bytes(lead) + frame(RecordType.BATCH, body))
    offset = data.draw(st.integers(min_value=lead, max_value=len(record) - 1))
    bit = data.draw(st.integers(min_value=0, max_value=7))
    record[offset] ^= 1 << bit
    assert explain_by_bit_flip(bytes(record), lead) == (offset, bit)


@given(st.binary(min_size=100, max_size=5000), st.data())
@settings(max_examples=200)
def test_torn_records_are_not_explained_by_a_flip(body: bytes, data: st.DataObject) -> None:
    whole = frame(RecordType.BATCH, body)
    cut = data.draw(st.integers(min_value=0, max_value=len(whole) - 1))
    assert explain_by_bit_flip(whole[:cut], 0) is None  # the write stopped at ``cut``
    start = data.draw(st.integers(min_value=HEADER_BYTES, max_value=len(whole) - 1))
    length = data.draw(st.integers(min_value=1, max_value=512))
    zeroed = bytearray(whole)
    zeroed[start : start + length] = bytes(len(zeroed[start : start + length]))
    if (
        bytes(zeroed) != whole
        and bin(int.from_bytes(whole, "big") ^ int.from_bytes(zeroed, "big")).count("1") > 1
    ):
        assert explain_by_bit_flip(bytes(zeroed), 0) is None  # sectors that never arrived


def test_intact_record_needs_no_explanation() -> None:
    assert explain_by_bit_flip(frame(RecordType.BATCH, b"fine"), 0) is None
