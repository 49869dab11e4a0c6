"""Tell a flipped bit from a torn write: can one flipped bit explain a damaged record?

Theory of operation. A torn write (the power went before the fsync) leaves a record cut short,
or whole sectors of it zero or stale. Media damage after the record was written and fsynced
(perhaps acknowledged) typically flips a bit. Recovery may cut the first, never the second,
so for the final batch it asks: is there one bit whose flip makes the record valid again?

CRC-32C is linear: for two messages of equal length, crc(a) xor crc(b) is the raw CRC (zero
start, no final xor) of a xor b. So with the syndrome s = crc(received) xor stored, a single
flipped bit at byte k, bit b of a message of L bytes satisfies s = Z^(L-1-k)(T[1 << b]),
where T is the byte table of the reflected polynomial 0x82F63B78 and Z appends one zero byte
(Z(v) = v >> 8 xor T[v & 0xFF]). Z is invertible (the top bytes of T are a permutation),
so walking back from s with Z^-1 finds k and b in one pass: no candidate record is rebuilt.
Different positions give different syndromes for any record shorter than 2^31 bits (the
order of x modulo the polynomial), so the answer is unique. Flips in the header fields that
are checked before the checksum (magic, length) are tried directly: 16 + 32 candidates.

A torn write matches a single-bit pattern only by a 2^-32 chance per candidate, and then
the worst outcome is refusing to start, never losing data.
"""

from __future__ import annotations

import struct

import crc32c

from replog.storage.record import HEADER_BYTES, MAGIC, RECORD_BODY_MAX

_POLY = 0x82F63B78
_HEAD = struct.Struct("<2sBBI")
_CRC = struct.Struct("<I")


def _table() -> list[int]:
    table = []
    for byte in range(256):
        value = byte
        for _ in range(8):
            value = (value >> 1) ^ (_POLY if value & 1 else 0)
        table.append(value)
    return table


_T = _table()
_BY_TOP_BYTE = {value >> 24: byte for byte, value in enumerate(_T)}
assert len(_BY_TOP_BYTE) == 256, "CRC table top bytes must be a permutation"
_SINGLE_BIT = {_T[1 << bit]: bit for bit in range(8)}


def _valid(header8: bytes, body: bytes, stored: int) -> bool:
    return crc32c.crc32c(body, crc32c.crc32c(header8)) == stored


def _locate_in_message(syndrome: int, length: int) -> tuple[int, int] | None:
    """(byte, bit) of the one-bit error with this syndrome in a message of ``length`` bytes."""
    value = syndrome
    for back in range(length):
        bit = _SINGLE_BIT.get(value)
        if bit is not None:
            return length - 1 - back, bit
        byte = _BY_TOP_BYTE[value >> 24]
        value = (((value ^ _T[byte]) << 8) | byte) & 0xFFFFFFFF
    return None


def explain_by_bit_flip(data: bytes, pos: int) -> tuple[int, int] | None:
    """(file offset, bit) of one flipped bit that explains the bad record at ``pos``, or None
    when no single flip does (the record is torn, or damaged in some other way)."""
    if len(data) - pos < HEADER_BYTES:
        return None
    magic, _, _, length = _HEAD.unpack_from(data, pos)
    (stored,) = _CRC.unpack_from(data, pos + 8)
    header = bytearray(data[pos : pos + 8])
    if magic != MAGIC:
        diff = int.from_bytes(magic, "little") ^ int.from_bytes(MAGIC, "little")
        end = pos + HEADER_BYTES + length
        if diff.bit_count() != 1 or length > RECORD_BODY_MAX or end > len(data):
            return None
        header[0:2] = MAGIC
        bit = diff.bit_length() - 1
        ok = _valid(bytes(header), data[pos + HEADER_BYTES : end], stored)
        return (pos + bit // 8, bit % 8) if ok else None
    if length > RECORD_BODY_MAX or pos + HEADER_BYTES + length > len(data):
        return _explain_length(data, pos, header, length, stored)
    body = data[pos + HEADER_BYTES : pos + HEADER_BYTES + length]
    syndrome = crc32c.crc32c(body, crc32c.crc32c(bytes(header))) ^ stored
    if syndrome == 0:
        return None
    if syndrome.bit_count() == 1:  # the stored checksum itself took the hit
        bit = syndrome.bit_length() - 1
        return pos + 8 + bit // 8, bit % 8
    found = _locate_in_message(syndrome, 8 + length)
    if found is None:  # a flipped length bit that shortened the record changes what is summed
        return _explain_length(data, pos, header, length, stored)
    byte, bit = found
    return (pos + byte if byte < 8 else pos + HEADER_BYTES + byte - 8), bit


def _explain_length(
    data: bytes, pos: int, header: bytearray, length: int, stored: int
) -> tuple[int, int] | None:
    for bit in range(32):
        candidate = length ^ (1 << bit)
        end = pos + HEADER_BYTES + candidate
        if candidate > RECORD_BODY_MAX or end > len(data):
            continue
        header[4:8] = candidate.to_bytes(4, "little")
        if _valid(bytes(header), data[pos + HEADER_BYTES : end], stored):
            return pos + 4 + bit // 8, bit % 8
    return None
