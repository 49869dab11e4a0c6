"""The chunked snapshot protocol without sockets: OutgoingSnapshot and SnapshotAssembler talk
through the codec, with cuts, damage, replacement and bounds; and the new frames' wire format."""

from __future__ import annotations

import contextlib
import logging

import crc32c
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replog.core.types import Configuration, InstallSnapshot, Snapshot, SnapshotMeta
from replog.transport.codec import (
    ACK_DONE,
    ACK_PROGRESS,
    ACK_REFUSED,
    CodecError,
    Ping,
    Pong,
    SnapshotAck,
    SnapshotChunk,
    decode_inbound,
    decode_pong,
    decode_reply,
    encode_chunk,
    encode_control,
    snapshot_header,
    snapshot_message,
)
from replog.transport.snapshots import (
    WINDOW_CHUNKS,
    OutgoingSnapshot,
    SnapshotAssembler,
    SnapshotKey,
)

ENCODE = msgspec.msgpack.encode


def install(data: bytes, index: int = 10, term: int = 2) -> InstallSnapshot:
    meta = SnapshotMeta(index, 1, Configuration(voters=frozenset({1, 2}), learners=frozenset({3})))
    return InstallSnapshot(term, 1, 2, Snapshot(meta, data))


def outgoing(m: InstallSnapshot, chunk_bytes: int) -> OutgoingSnapshot:
    return OutgoingSnapshot(m, SnapshotKey.of(m.snapshot), chunk_bytes, now_s=0.0)


class Wire:
    """Carries frames between one sender and one assembler through the codec."""

    def __init__(self, assembler: SnapshotAssembler) -> None:
        self.assembler = assembler
        self.attempts = 0
        self.delivered: list[InstallSnapshot] = []

    def header(self, transfer: OutgoingSnapshot) -> str:
        self.attempts += 1
        frame = decode_inbound(encode_control(transfer.header(self.attempts)))
        assert not isinstance(frame, SnapshotChunk | Ping) and hasattr(frame, "total_bytes")
        ack = self.assembler.on_header(frame, 0.0)  # type: ignore[arg-type]
        return transfer.on_ack(self._through(ack), 0.0)

    def chunk(self, transfer: OutgoingSnapshot, damage: bool = False) -> str:
        offset, data, crc = transfer.next_chunk()
        body = bytearray(encode_chunk(transfer.attempt, offset, crc, data))
        if damage:
            body[-1] ^= 0x01
        frame = decode_inbound(bytes(body))
        assert isinstance(frame, SnapshotChunk)
        ack, message = self.assembler.on_chunk(1, frame, 0.0)
        if message is not None:
            self.delivered.append(message)
        return "none" if ack is None else transfer.on_ack(self._through(ack), 0.0)

    @staticmethod
    def _through(ack: SnapshotAck) -> SnapshotAck:
        reply = decode_reply(encode_control(ack))
        assert isinstance(reply, SnapshotAck)
        return reply


def run(wire: Wire, transfer: OutgoingSnapshot) -> list[str]:
    outcomes = [wire.header(transfer)]
    while transfer.chunk_due():
        outcomes.append(wire.chunk(transfer))
    return outcomes


# ---- a whole transfer ------------------------------------------------------------------------


def test_a_transfer_delivers_one_equal_install_snapshot() -> None:
    m = install(bytes(range(256)) * 40)
    wire = Wire(SnapshotAssembler(2, 1 << 20, 30.0))
    outcomes = run(wire, outgoing(m, 1000))
    assert outcomes == ["progress"] * 11 + ["done"]
    assert wire.delivered == [m]
    assert wire.assembler.completed == 1 and wire.assembler.held_bytes(1) == 0


def test_the_window_bounds_unacknowledged_chunks() -> None:
    transfer = outgoing(install(bytes(100)), 10)
    assert not transfer.chunk_due()  # nothing before the receiver answered the header
    transfer.header(1)
    assert transfer.on_ack(SnapshotAck(1, 0, ACK_PROGRESS), 1.0) == "progress"
    for _ in range(WINDOW_CHUNKS):
        transfer.next_chunk()
    assert not transfer.chunk_due()
    assert transfer.on_ack(SnapshotAck(1, 10, ACK_PROGRESS), 2.0) == "progress"
    assert transfer.chunk_due() and transfer.progress_s == 2.0


def test_chunks_are_views_of_the_snapshot_not_copies() -> None:
    m = install(b"x" * 100)
    transfer = outgoing(m, 30)
    transfer.header(1)
    transfer.on_ack(SnapshotAck(1, 0, ACK_PROGRESS), 0.0)
    _, data, crc = transfer.next_chunk()
    assert isinstance(data, memoryview) and data.obj is m.snapshot.data
    assert crc == crc32c.crc32c(b"x" * 30)


# ---- resuming --------------------------------------------------------------------------------


@settings(deadline=None, max_examples=60)
@given(
    size=st.integers(1, 3000),
    chunk_bytes=st.integers(1, 700),
    cuts=st.lists(st.integers(0, 12), max_size=4),
)
def test_cuts_anywhere_resume_and_deliver_the_same_bytes(
    size: int, chunk_bytes: int, cuts: list[int]
) -> None:
    m = install(bytes(i % 251 for i in range(size)))
    wire = Wire(SnapshotAssembler(2, 1 << 20, 30.0))
    transfer = outgoing(m, chunk_bytes)
    chunks, done = 0, False
    for cut in cuts:  # a connection that breaks after `cut` chunks
        wire.header(transfer)
        for _ in range(cut):
            if not transfer.chunk_due():
                break
            chunks += 1
            done = wire.chunk(transfer) == "done"
        if done:
            break
        transfer.on_disconnect()
    if not done:
        outcomes = run(wire, transfer)
        chunks += len(outcomes) - 1
        done = outcomes[-1] == "done"
    assert done and wire.delivered == [m]
    assert chunks == -(-size // chunk_bytes)  # no chunk sent twice
    assert wire.assembler.held_bytes(1) == 0


def test_a_resume_after_lost_acks_starts_from_what_the_receiver_holds() -> None:
    assembler = SnapshotAssembler(2, 1 << 20, 30.0)
    m = install(bytes(1000))
    transfer = outgoing(m, 100)
    Wire(assembler).header(transfer)
    for _ in range(3):  # the chunks arrive, their acks are lost
        offset, data, crc = transfer.next_chunk()
        assembler.on_chunk(1, SnapshotChunk(transfer.attempt, offset, crc, bytes(data)), 0.0)
    transfer.on_disconnect()
    assert transfer.next_offset == 0
    wire = Wire(assembler)
    wire.attempts = 1
    assert wire.header(transfer) == "resumed"
    assert transfer.next_offset == 300 and assembler.resumed == 1


# ---- refusals --------------------------------------------------------------------------------


def test_a_damaged_chunk_is_refused_and_the_transfer_discarded(
    caplog: pytest.LogCaptureFixture,
) -> None:
    wire = Wire(SnapshotAssembler(2, 1 << 20, 30.0))
    transfer = outgoing(install(bytes(500)), 100)
    wire.header(transfer)
    wire.chunk(transfer)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        assert wire.chunk(transfer, damage=True) == "refused"
    assert "damaged" in caplog.text
    assert wire.assembler.held_bytes(1) == 0 and wire.assembler.discarded == 1
    assert wire.chunk(transfer) == "none"  # later chunks of that attempt are stale
    assert wire.delivered == []


def test_a_whole_crc_mismatch_delivers_nothing(caplog: pytest.LogCaptureFixture) -> None:
    m = install(bytes(300))
    wrong = SnapshotKey(10, 1, 300, crc32c.crc32c(bytes(300)) ^ 1)
    wire = Wire(SnapshotAssembler(2, 1 << 20, 30.0))
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        outcomes = run(wire, OutgoingSnapshot(m, wrong, 100, 0.0))
    assert outcomes[-1] == "refused" and wire.delivered == []
    assert "the whole snapshot's CRC-32C does not match" in caplog.text


def test_out_of_order_and_oversize_chunks_are_refused() -> None:
    m = install(bytes(300))
    for offset, data in [(100, b"a" * 100), (0, b""), (0, b"a" * 301)]:
        assembler = SnapshotAssembler(2, 1 << 20, 30.0)
        header = snapshot_header(m, 1, 300, crc32c.crc32c(bytes(300)))
        assembler.on_header(header, 0.0)
        ack, message = assembler.on_chunk(1, SnapshotChunk(1, offset, crc32c.crc32c(data), data), 0)
        assert ack is not None and ack.status == ACK_REFUSED and message is None


def test_a_snapshot_over_the_bound_is_refused_at_its_header(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assembler = SnapshotAssembler(2, 1000, 30.0)
    m = install(bytes(1001))
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        ack = assembler.on_header(snapshot_header(m, 7, 1001, 0), 0.0)
    assert ack == SnapshotAck(7, 0, ACK_REFUSED)
    assert "1001 bytes exceed snapshot_bytes_max (1000)" in caplog.text
    assert assembler.held_bytes(1) == 0


def test_acks_out_of_range_or_for_another_attempt() -> None:
    transfer = outgoing(install(bytes(100)), 10)
    assert transfer.on_ack(SnapshotAck(0, 0, ACK_PROGRESS), 0.0) == "stale"  # no header yet
    transfer.header(4)
    assert transfer.on_ack(SnapshotAck(3, 0, ACK_PROGRESS), 0.0) == "stale"
    assert transfer.on_ack(SnapshotAck(4, 101, ACK_PROGRESS), 0.0) == "refused"
    transfer.on_disconnect()
    transfer.header(5)
    transfer.on_ack(SnapshotAck(5, 0, ACK_PROGRESS), 0.0)
    assert transfer.on_ack(SnapshotAck(5, 50, ACK_PROGRESS), 0.0) == "refused"  # never sent
    assert transfer.on_ack(SnapshotAck(5, 0, ACK_DONE), 0.0) == "done"


# ---- replacement, expiry, dedup identity -----------------------------------------------------


def test_a_header_for_another_snapshot_replaces_the_partial_one() -> None:
    assembler = SnapshotAssembler(2, 1 << 20, 30.0)
    old, new = install(bytes(300), index=10), install(b"n" * 300, index=20)
    wire = Wire(assembler)
    old_transfer = outgoing(old, 100)
    wire.header(old_transfer)
    wire.chunk(old_transfer)
    assert assembler.held_bytes(1) == 100
    assert run(wire, outgoing(new, 100))[-1] == "done"
    assert wire.delivered == [new] and assembler.discarded == 1


def test_idle_partial_transfers_expire() -> None:
    assembler = SnapshotAssembler(2, 1 << 20, 5.0)
    m = install(bytes(300))
    assembler.on_header(snapshot_header(m, 1, 300, crc32c.crc32c(bytes(300))), 100.0)
    data = bytes(100)
    assembler.on_chunk(1, SnapshotChunk(1, 0, crc32c.crc32c(data), data), 103.0)
    assembler.expire(107.0)
    assert assembler.held_bytes(1) == 100
    assembler.expire(108.5)
    assert assembler.held_bytes(1) == 0 and assembler.discarded == 1


def test_the_same_send_means_same_snapshot_term_and_sender() -> None:
    m = install(bytes(100))
    transfer = outgoing(m, 10)
    key = SnapshotKey.of(m.snapshot)
    assert transfer.same_send(install(bytes(100)), key)
    assert not transfer.same_send(install(bytes(100), term=3), key)
    other = install(b"y" * 100)
    assert not transfer.same_send(other, SnapshotKey.of(other.snapshot))


def test_a_resend_of_the_same_object_needs_no_crc_pass() -> None:
    m = install(bytes(100))
    transfer = OutgoingSnapshot(m, SnapshotKey(10, 1, 100, 12345), 10, 0.0)  # a made-up CRC
    assert transfer.key_for(m).crc == 12345
    assert transfer.key_for(install(bytes(100))) == SnapshotKey.of(m.snapshot)  # another object
    newer = InstallSnapshot(2, 1, 2, Snapshot(SnapshotMeta(11, 1), m.snapshot.data))
    assert transfer.key_for(newer).index == 11


# ---- wire format of the new frames -----------------------------------------------------------


def test_snapshot_frames_round_trip() -> None:
    m = install(b"abc")
    header = snapshot_header(m, 9, 3, 77)
    assert decode_inbound(encode_control(header)) == header
    assert snapshot_message(header, b"abc") == m
    chunk = decode_inbound(encode_chunk(9, 0, 5, memoryview(b"xabcx")[1:4]))
    assert chunk == SnapshotChunk(9, 0, 5, b"abc")
    assert ENCODE(SnapshotChunk(9, 0, 5, b"abc")) == encode_chunk(9, 0, 5, memoryview(b"abc"))
    assert decode_reply(encode_control(SnapshotAck(9, 3, ACK_DONE))) == SnapshotAck(9, 3, 1)
    assert decode_reply(encode_control(Pong(4))) == Pong(4)


@pytest.mark.parametrize(
    "body",
    [
        ENCODE([69, 1, 2, 3]),  # unknown ack status
        ENCODE([69, 1, -2, 0]),
        ENCODE([68, 1, 0, 1 << 32, b""]),  # a CRC beyond 32 bits
        ENCODE([68, 1, 0, 0]),
        ENCODE([70, 1]),  # a tag nobody knows
        encode_control(Ping(1)),
    ],
)
def test_malformed_snapshot_frames_raise_codec_error(body: bytes) -> None:
    with pytest.raises(CodecError):
        with contextlib.suppress(CodecError):
            decode_inbound(body)
        decode_reply(body)


def test_acks_are_not_inbound_frames_nor_pongs() -> None:
    ack = encode_control(SnapshotAck(1, 0, ACK_PROGRESS))
    with pytest.raises(CodecError):
        decode_inbound(ack)
    with pytest.raises(CodecError):
        decode_pong(ack)


@settings(deadline=None, max_examples=200)
@given(st.binary(max_size=100))
def test_random_replies_never_raise_anything_but_codec_error(data: bytes) -> None:
    with contextlib.suppress(CodecError):
        decode_reply(data)
