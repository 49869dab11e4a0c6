"""InstallSnapshot over the network in chunks: streamed, resumable, checksummed.

Theory of operation. The core hands the transport one ``InstallSnapshot`` holding the whole
snapshot (Raft section 7). A snapshot larger than ``chunk_bytes`` does not travel as one frame:
``tcp.py`` streams it on the dialer's connection as a ``SnapshotHeader`` then ``SnapshotChunk``
frames, and the receiver answers with ``SnapshotAck`` frames on the same connection (the way
pongs flow back). This module owns both ends of that protocol without any I/O: the sender's
``OutgoingSnapshot`` (one per peer) says which frame is due next, and the receiver's
``SnapshotAssembler`` (one per transport, one partial transfer per sender) turns frames into
acks and, once everything checks out, into one ordinary ``InstallSnapshot``.

The exchange on one connection::

    dialer                                  receiver
    SnapshotHeader(attempt, ..., size, crc) ->  keeps or starts the partial transfer
                                            <-  SnapshotAck(attempt, offset held, PROGRESS)
    SnapshotChunk(attempt, offset, crc, data) -> appends when offset and CRC match
                                            <-  SnapshotAck(attempt, new offset, PROGRESS)
    ...                                     <-  SnapshotAck(attempt, size, DONE) once delivered

Invariants:

* A snapshot is identified by ``SnapshotKey`` (index, term, total size, CRC-32C of the data).
  The receiver keeps at most one partial transfer per sender, up to ``snapshot_bytes_max``
  bytes, in memory; it is dropped after ``idle_timeout_s`` without a frame, when a header for
  another snapshot arrives, or at the first damage.
* Nothing partial is delivered: every chunk's CRC is checked, chunks must come in order at the
  offset held, and the whole data's CRC is checked before the one ``InstallSnapshot`` is
  delivered. Any mismatch discards the transfer (a warning) and is answered ``REFUSED``; the
  core resends the snapshot about once per election timeout, which starts a new transfer.
* Resuming: the sender streams only after the receiver answered the header of the current
  connection with the offset it holds, and streams from that offset; so a broken connection
  costs at most the chunks in flight (``WINDOW_CHUNKS``), never the transfer.
* Flow control: at most ``WINDOW_CHUNKS`` unacknowledged chunks; ``tcp.py`` puts at most one
  chunk in each writer batch, so heartbeats and appends queued meanwhile keep flowing.
  Chunks are slices of a memoryview of the snapshot: the data is never copied whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Final

import crc32c

from replog.core.types import InstallSnapshot, Snapshot
from replog.transport.codec import (
    ACK_DONE,
    ACK_PROGRESS,
    ACK_REFUSED,
    SnapshotAck,
    SnapshotChunk,
    SnapshotHeader,
    snapshot_header,
    snapshot_message,
)

__all__ = [
    "CHUNK_BYTES_DEFAULT",
    "IDLE_TIMEOUT_S_DEFAULT",
    "SNAPSHOT_BYTES_MAX_DEFAULT",
    "WINDOW_CHUNKS",
    "OutgoingSnapshot",
    "SnapshotAssembler",
    "SnapshotKey",
]

logger = logging.getLogger("replog.transport")

CHUNK_BYTES_DEFAULT: Final = 1 << 20
SNAPSHOT_BYTES_MAX_DEFAULT: Final = 1 << 30
IDLE_TIMEOUT_S_DEFAULT: Final = 30.0
WINDOW_CHUNKS: Final = 4  # chunks sent and not yet acknowledged, at most


@dataclass(frozen=True, slots=True)
class SnapshotKey:
    """What makes two snapshots the same one (for dedup and resuming)."""

    index: int
    term: int
    total_bytes: int
    crc: int

    @classmethod
    def of(cls, snapshot: Snapshot) -> SnapshotKey:
        data = snapshot.data
        return cls(snapshot.meta.index, snapshot.meta.term, len(data), crc32c.crc32c(data))

    @classmethod
    def of_header(cls, header: SnapshotHeader) -> SnapshotKey:
        return cls(header.meta.index, header.meta.term, header.total_bytes, header.crc)


class OutgoingSnapshot:
    """The sender's side of one chunked InstallSnapshot to one peer.

    ``attempt`` is 0 until a header went out on the current connection; ``negotiated`` once the
    receiver answered it. Always ``acked_offset <= next_offset <= total_bytes``.
    """

    def __init__(
        self, message: InstallSnapshot, key: SnapshotKey, chunk_bytes: int, now_s: float
    ) -> None:
        assert chunk_bytes > 0
        self.message = message
        self.key = key
        self.data = memoryview(message.snapshot.data)
        self.chunk_bytes = chunk_bytes
        self.attempt = 0
        self.negotiated = False
        self.acked_offset = 0
        self.next_offset = 0
        self.progress_s = now_s  # the last time the receiver acknowledged anything

    def key_for(self, m: InstallSnapshot) -> SnapshotKey:
        """``m``'s snapshot key; without reading the data when it is this transfer's very
        snapshot (the core resends the object it holds), so a resend costs no CRC pass."""
        snapshot = m.snapshot
        mine = self.message.snapshot
        if snapshot.data is mine.data and snapshot.meta == mine.meta:
            return self.key
        return SnapshotKey.of(snapshot)

    def same_send(self, m: InstallSnapshot, key: SnapshotKey) -> bool:
        """Whether ``m`` is a resend of this transfer (same snapshot, same leader and term)."""
        return key == self.key and m.term == self.message.term and m.sender == self.message.sender

    def on_disconnect(self) -> None:
        """The connection broke: the next one starts with a header again."""
        self.attempt = 0
        self.negotiated = False
        self.next_offset = self.acked_offset

    def header_due(self) -> bool:
        return self.attempt == 0

    def header(self, attempt: int) -> SnapshotHeader:
        assert attempt > 0 and self.attempt == 0
        self.attempt = attempt
        return snapshot_header(self.message, attempt, self.key.total_bytes, self.key.crc)

    def chunk_due(self) -> bool:
        window = WINDOW_CHUNKS * self.chunk_bytes
        return (
            self.negotiated
            and self.next_offset < self.key.total_bytes
            and self.next_offset - self.acked_offset < window
        )

    def next_chunk(self) -> tuple[int, memoryview, int]:
        """(offset, data, CRC-32C of data) of the next chunk; advances ``next_offset``."""
        assert self.chunk_due()
        offset = self.next_offset
        data = self.data[offset : offset + self.chunk_bytes]
        self.next_offset = offset + len(data)
        return offset, data, crc32c.crc32c(data)

    def on_ack(self, ack: SnapshotAck, now_s: float) -> str:
        """Take an ack; returns what it meant: "stale" (not for the current attempt),
        "progress", "resumed" (the header's answer held data), "done" or "refused"."""
        if ack.attempt != self.attempt or self.attempt == 0:
            return "stale"
        if ack.status == ACK_DONE:
            return "done"
        if ack.status == ACK_REFUSED or ack.offset > self.key.total_bytes:
            return "refused"
        self.progress_s = now_s
        if not self.negotiated:
            self.negotiated = True
            self.acked_offset = self.next_offset = ack.offset
            return "resumed" if ack.offset > 0 else "progress"
        if not self.acked_offset <= ack.offset <= self.next_offset:
            return "refused"  # the receiver claims what was never sent on this attempt
        self.acked_offset = ack.offset
        return "progress"


class _Partial:
    """What the receiver holds of one sender's snapshot."""

    def __init__(self, header: SnapshotHeader, now_s: float) -> None:
        self.header = header
        self.key = SnapshotKey.of_header(header)
        self.data = bytearray()
        self.crc = 0  # CRC-32C of data so far
        self.touched_s = now_s


class SnapshotAssembler:
    """The receiver's side: one partial transfer per sender, bounded in size and idle time.

    ``on_header`` and ``on_chunk`` return the ack to write back (or None for a stale chunk);
    ``on_chunk`` also returns the assembled InstallSnapshot once the last chunk checked out.
    """

    def __init__(self, node_id: int, snapshot_bytes_max: int, idle_timeout_s: float) -> None:
        self.node_id = node_id
        self.snapshot_bytes_max = snapshot_bytes_max
        self.idle_timeout_s = idle_timeout_s
        self._partials: dict[int, _Partial] = {}
        self.completed = 0  # snapshots delivered
        self.resumed = 0  # headers answered with an offset above zero
        self.discarded = 0  # transfers dropped: damaged, over the bound, replaced or idle

    def held_bytes(self, sender: int) -> int:
        """How many bytes of ``sender``'s snapshot are held (0 when none)."""
        partial = self._partials.get(sender)
        return 0 if partial is None else len(partial.data)

    def on_header(self, header: SnapshotHeader, now_s: float) -> SnapshotAck:
        sender = header.sender
        if header.total_bytes > self.snapshot_bytes_max:
            self._discard(sender, "")
            self.discarded += 1
            logger.warning(
                "refusing a snapshot from peer %d: %d bytes exceed snapshot_bytes_max (%d)",
                sender,
                header.total_bytes,
                self.snapshot_bytes_max,
            )
            return SnapshotAck(header.attempt, 0, ACK_REFUSED)
        partial = self._partials.get(sender)
        key = SnapshotKey.of_header(header)
        if partial is not None and partial.key == key:
            partial.header = header  # the latest header's term and attempt count
            partial.touched_s = now_s
            if partial.data:
                self.resumed += 1
                logger.info(
                    "resuming the snapshot at index %d from peer %d at byte %d of %d",
                    key.index,
                    sender,
                    len(partial.data),
                    key.total_bytes,
                )
        else:
            self._discard(sender, "a newer snapshot started")
            partial = self._partials[sender] = _Partial(header, now_s)
        return SnapshotAck(header.attempt, len(partial.data), ACK_PROGRESS)

    def on_chunk(
        self, sender: int, chunk: SnapshotChunk, now_s: float
    ) -> tuple[SnapshotAck | None, InstallSnapshot | None]:
        partial = self._partials.get(sender)
        if partial is None or partial.header.attempt != chunk.attempt:
            return None, None  # a chunk of a transfer already discarded or replaced
        refuse = SnapshotAck(chunk.attempt, len(partial.data), ACK_REFUSED), None
        problem = self._chunk_problem(partial, chunk)
        if problem:
            self._discard(sender, problem)
            return refuse
        partial.data += chunk.data
        partial.crc = crc32c.crc32c(chunk.data, partial.crc)
        partial.touched_s = now_s
        held = len(partial.data)
        if held < partial.key.total_bytes:
            return SnapshotAck(chunk.attempt, held, ACK_PROGRESS), None
        if partial.crc != partial.key.crc:
            self._discard(sender, "the whole snapshot's CRC-32C does not match")
            return refuse
        del self._partials[sender]
        self.completed += 1
        message = snapshot_message(partial.header, bytes(partial.data))
        return SnapshotAck(chunk.attempt, held, ACK_DONE), message

    def _chunk_problem(self, partial: _Partial, chunk: SnapshotChunk) -> str:
        """Why a chunk cannot be taken ("" when it can)."""
        held = len(partial.data)
        if chunk.offset != held:
            return f"a chunk at byte {chunk.offset} where byte {held} was expected"
        if not chunk.data or held + len(chunk.data) > partial.key.total_bytes:
            return f"a {len(chunk.data)}-byte chunk at byte {held} does not fit the snapshot"
        if crc32c.crc32c(chunk.data) != chunk.crc:
            return f"the chunk at byte {held} is damaged (CRC-32C mismatch)"
        return ""

    def expire(self, now_s: float) -> None:
        """Drop the partial transfers idle for ``idle_timeout_s``."""
        for sender, partial in list(self._partials.items()):
            if now_s - partial.touched_s > self.idle_timeout_s:
                self._discard(sender, f"idle for {self.idle_timeout_s} s")

    def forget(self, sender: int) -> None:
        """Drop ``sender``'s partial transfer quietly (the sender is no longer a peer)."""
        self._partials.pop(sender, None)

    def _discard(self, sender: int, reason: str) -> None:
        partial = self._partials.pop(sender, None)
        if partial is None or not reason:
            return
        self.discarded += 1
        key = partial.key
        log = logger.info if reason == "a newer snapshot started" else logger.warning
        log(
            "discarding the snapshot at index %d from peer %d (%d of %d bytes): %s",
            key.index,
            sender,
            len(partial.data),
            key.total_bytes,
            reason,
        )
