"""The peer transport: Raft messages between nodes over asyncio TCP.

Theory of operation. Each node dials one outbound connection to every peer and only sends on
it; it receives on the inbound connections its peers dialed. Raft needs nothing more: every
message is one-way and the protocol itself tolerates loss, duplication and reordering (Raft
section 5.1: "servers retry RPCs if they do not receive a response in a timely manner"), so
the transport never retries a message and never blocks its caller.

Framing: every frame is a 4-byte big-endian body length then the body (``codec.py``). A
connection opens with a ``Hello`` frame (magic, wire version, cluster id, sender id, receiver
id); the receiver closes a connection whose first frame is not a valid hello for it (wrong
magic, newer version, other cluster, other receiver, or garbage), logging a warning on the
``replog.transport`` logger. After the hello come messages and ``Ping`` frames; the only frame
ever written back is the ``Pong`` answering a ping, from which the dialer measures round trips.

Invariants and limits:

* One bounded FIFO queue per peer (``queue_max_messages`` and ``queue_max_bytes``, sizes
  estimated by ``message_size_bytes``) and one writer task that takes everything queued (up to
  ``BATCH_BYTES_MAX``), encodes it into one buffer, writes it and awaits drain once per batch.
  When the queue is full the *new* message is refused: ``send`` returns False and counts a
  drop; what is queued keeps its order. Messages stay queued while the peer is unreachable.
  An empty queue takes one message of any size (a snapshot may exceed ``queue_max_bytes``);
  ``frame_max_bytes`` is the only limit on one message.
* Messages a node sends to one peer are delivered in send order, each at most once; the
  messages of a batch lost with a broken connection are counted as ``send_failures``.
* Reconnection uses exponential backoff with jitter between ``backoff_initial_s`` and
  ``backoff_max_s``. A connection counts as healthy once the peer answered a ping (the first
  ping goes out right after the hello), which proves it accepted the handshake; the backoff
  restarts from ``backoff_initial_s`` after a healthy connection.
* Inbound frames are parsed in ``data_received``; ``on_message`` runs synchronously for each
  message in arrival order. At most ``FRAMES_PER_TURN`` frames are handled per event loop turn;
  the rest wait (reading paused) for the next turn, so a fast sender cannot starve the loop.
* A frame over ``frame_max_bytes`` (``HELLO_BYTES_MAX`` before the handshake) is a protocol
  error that closes the connection. At most ``INBOUND_CONNECTIONS_MAX`` inbound connections
  are open; a new handshake from a sender replaces that sender's older inbound connection.
* A connection whose pings go unanswered for ``PONG_TIMEOUT_S`` is dropped and redialed, so a
  peer lost behind a partition is found again by a fresh dial rather than by TCP retransmits.
* An InstallSnapshot whose data is larger than ``chunk_bytes`` does not enter the queue: it
  is streamed in chunks beside it, at most one chunk per batch, resumed after a reconnect,
  and assembled and checked by the receiver before ``on_message`` sees it (``snapshots.py``).
  A resend of the snapshot in transfer is absorbed; another snapshot replaces it.
* TCP_NODELAY is set on every socket. ``close()`` aborts every connection, cancels and awaits
  every task, and waits for every socket to be closed, so nothing outlives it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, cast

from replog.core.types import InstallSnapshot, Message
from replog.transport.codec import (
    FRAME_HEADER,
    HELLO_BYTES_MAX,
    MAGIC,
    WIRE_VERSION,
    CodecError,
    Hello,
    Ping,
    Pong,
    SnapshotAck,
    SnapshotChunk,
    SnapshotHeader,
    decode_hello,
    decode_inbound,
    decode_reply,
    encode_chunk,
    encode_control,
    encode_message,
    message_size_bytes,
    snapshot_header,
)
from replog.transport.snapshots import (
    CHUNK_BYTES_DEFAULT,
    IDLE_TIMEOUT_S_DEFAULT,
    SNAPSHOT_BYTES_MAX_DEFAULT,
    OutgoingSnapshot,
    SnapshotAssembler,
    SnapshotKey,
)

__all__ = ["PeerStats", "PeerTransport"]

logger = logging.getLogger("replog.transport")

PING_INTERVAL_S: Final = 1.0
PONG_TIMEOUT_S: Final = 10.0  # a connection whose pings go unanswered this long is redialed
HANDSHAKE_TIMEOUT_S: Final = 5.0
CLOSE_TIMEOUT_S: Final = 2.0
INBOUND_CONNECTIONS_MAX: Final = 256
FRAMES_PER_TURN: Final = 256
BATCH_BYTES_MAX: Final = 16 << 20
PINGS_OUTSTANDING_MAX: Final = 16  # must cover PONG_TIMEOUT_S / PING_INTERVAL_S
PONG_BYTES_MAX: Final = 64  # a pong or a snapshot ack: the only frames written back
PONG_BUFFER_MAX_BYTES: Final = 64 << 10  # a sender that never reads its pongs gets no more
CHUNK_FRAME_OVERHEAD_BYTES: Final = 64  # a chunk frame's tag, ints and bin header, generously

ChunkHook = Callable[[int, int, memoryview], bytes | memoryview]

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PeerStats:
    """Counters of one peer's outbound side (all counts since the transport was made)."""

    connected: bool  # a connection is open and the peer accepted it (answered a ping)
    sent_messages: int  # written and drained into the socket
    dropped_messages: int  # refused by ``send`` because the queue was full
    send_failures: int  # taken from the queue but lost: broken connection, unencodable
    reconnects: int  # connections made after the first one
    queued_messages: int
    queued_bytes: int
    rtt_s: float | None  # the latest measured round trip
    connect_failures: int = 0  # dial attempts that failed or timed out
    snapshots_started: int = 0  # chunked snapshot transfers begun
    snapshots_completed: int = 0  # ... acknowledged as delivered by the peer
    snapshots_resumed: int = 0  # ... continued after a reconnect from the bytes the peer held
    snapshots_failed: int = 0  # ... refused by the peer, or without progress for too long
    snapshots_absorbed: int = 0  # resends of the snapshot in transfer (returned True)
    snapshots_replaced: int = 0  # transfers given up for a different snapshot
    snapshot_bytes_sent: int = 0  # chunk data written to the socket, resent bytes included
    snapshot_in_transfer: bool = False


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):  # the socket may already be gone
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Link:
    """Outbound state for one peer: its address, queue, counters and ping bookkeeping."""

    def __init__(self, peer_id: int, address: Address) -> None:
        self.peer_id = peer_id
        self.address = address
        self.queue: collections.deque[tuple[Message, int]] = collections.deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.protocol: _OutboundProtocol | None = None
        self.ping_timer: asyncio.TimerHandle | None = None
        self.ping_due = False
        self.ping_seq = 0
        self.pings_sent_ns: dict[int, int] = {}
        self.healthy = False  # the current connection got a pong
        self.connections = 0
        self.sent_messages = 0
        self.dropped_messages = 0
        self.send_failures = 0
        self.connect_failures = 0
        self.rtt_s: float | None = None
        self.transfer: OutgoingSnapshot | None = None
        self.snapshot_attempts = 0
        self.snapshots_started = 0
        self.snapshots_completed = 0
        self.snapshots_resumed = 0
        self.snapshots_failed = 0
        self.snapshots_absorbed = 0
        self.snapshots_replaced = 0
        self.snapshot_bytes_sent = 0

    def stats(self) -> PeerStats:
        protocol = self.protocol
        return PeerStats(
            connected=protocol is not None and not protocol.closing and self.healthy,
            sent_messages=self.sent_messages,
            dropped_messages=self.dropped_messages,
            send_failures=self.send_failures,
            reconnects=max(0, self.connections - 1),
            queued_messages=len(self.queue),
            queued_bytes=self.queued_bytes,
            rtt_s=self.rtt_s,
            connect_failures=self.connect_failures,
            snapshots_started=self.snapshots_started,
            snapshots_completed=self.snapshots_completed,
            snapshots_resumed=self.snapshots_resumed,
            snapshots_failed=self.snapshots_failed,
            snapshots_absorbed=self.snapshots_absorbed,
            snapshots_replaced=self.snapshots_replaced,
            snapshot_bytes_sent=self.snapshot_bytes_sent,
            snapshot_in_transfer=self.transfer is not None,
        )


class _Protocol(asyncio.Protocol):
    """What both directions share: the transport, a receive buffer, closing and waiting."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.lost = False  # connection_lost ran: the socket is closed
        self.closing = False  # lost, or abort() was called (connection_lost comes later)
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.buffer = bytearray()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        _set_nodelay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = self.closing = True
        if not self.closed.done():
            self.closed.set_result(None)

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None and not self.lost:
            self.transport.abort()

    def peername(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return f"{peer[0]}:{peer[1]}" if peer else "?"


class _OutboundProtocol(_Protocol):
    """The dialer's end: writes frames (with drain flow control) and reads only pongs."""

    def __init__(self, owner: PeerTransport, link: _Link) -> None:
        super().__init__()
        self._owner = owner
        self._link = link
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._owner._protocols.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._owner._protocols.discard(self)
        self._wake_drain()
        self._link.wakeup.set()

    @property
    def paused(self) -> bool:
        return self._paused

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_drain()

    def _wake_drain(self) -> None:
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        """Wait until the socket's write buffer is below its high-water mark."""
        if self._paused and not self.closing:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self.closing:
            raise ConnectionResetError("connection lost")

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= FRAME_HEADER.size and not self.closing:
            (length,) = FRAME_HEADER.unpack_from(self.buffer)
            if length > PONG_BYTES_MAX:
                self._protocol_error(f"a {length}-byte frame where only pongs are expected")
                return
            end = FRAME_HEADER.size + length
            if len(self.buffer) < end:
                return
            body = bytes(self.buffer[FRAME_HEADER.size : end])
            del self.buffer[:end]
            try:
                reply = decode_reply(body)
            except CodecError as error:
                self._protocol_error(str(error))
                return
            if isinstance(reply, Pong):
                self._owner._on_pong(self._link, reply.seq)
            else:
                self._owner._on_snapshot_ack(self._link, self, reply)

    def _protocol_error(self, reason: str) -> None:
        logger.warning(
            "closing connection to peer %d at %s: %s", self._link.peer_id, self.peername(), reason
        )
        self.abort()


class _InboundProtocol(_Protocol):
    """The receiving end: a hello first, then messages and pings; answers pings with pongs."""

    def __init__(self, owner: PeerTransport) -> None:
        super().__init__()
        self._owner = owner
        self.hello: Hello | None = None
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._turn_scheduled = False
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        owner = self._owner
        if owner._closed:
            self.abort()
            return
        if len(owner._inbound) >= INBOUND_CONNECTIONS_MAX:
            logger.warning(
                "refusing inbound connection from %s: already %d open",
                self.peername(),
                len(owner._inbound),
            )
            self.abort()
            return
        owner._inbound.add(self)
        owner._protocols.add(self)
        loop = asyncio.get_running_loop()
        self._handshake_timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._owner._inbound.discard(self)
        self._owner._protocols.discard(self)
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        self.buffer.clear()

    def _handshake_timeout(self) -> None:
        if self.hello is None:
            self._reject(f"no handshake within {HANDSHAKE_TIMEOUT_S} s")

    def _reject(self, reason: str) -> None:
        logger.warning("rejecting inbound connection from %s: %s", self.peername(), reason)
        self.abort()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self._turn_scheduled:
            self._turn()

    def _turn(self) -> None:
        """Handle up to FRAMES_PER_TURN whole frames; leave the rest for the next loop turn."""
        self._turn_scheduled = False
        if self.closing:
            return
        consumed, frames = self._handle_frames()
        if self.closing:
            return
        del self.buffer[:consumed]
        assert self.transport is not None
        if frames < FRAMES_PER_TURN:
            if self._reading_paused:
                self._reading_paused = False
                self.transport.resume_reading()
            return
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()
        self._turn_scheduled = True
        asyncio.get_running_loop().call_soon(self._turn)

    def _handle_frames(self) -> tuple[int, int]:
        """Handle whole frames from the buffer; returns (bytes consumed, frames handled)."""
        position = frames = 0
        with memoryview(self.buffer) as view:
            while frames < FRAMES_PER_TURN and not self.closing:
                available = len(view) - position
                if available < FRAME_HEADER.size:
                    break
                (length,) = FRAME_HEADER.unpack_from(view, position)
                limit = HELLO_BYTES_MAX if self.hello is None else self._owner._frame_max_bytes
                if length > limit:
                    self._protocol_error(f"a {length}-byte frame exceeds the limit of {limit}")
                    break
                if available - FRAME_HEADER.size < length:
                    break
                start = position + FRAME_HEADER.size
                position = start + length
                frames += 1
                self._on_frame(view[start:position])
        return position, frames

    def _protocol_error(self, reason: str) -> None:
        if self.hello is None:
            self._reject(reason)
            return
        logger.warning(
            "closing inbound connection from peer %d at %s: %s",
            self.hello.sender,
            self.peername(),
            reason,
        )
        self.abort()

    def _on_frame(self, body: memoryview) -> None:
        if self.hello is None:
            self._on_hello(body)
            return
        try:
            frame = decode_inbound(body)
        except CodecError as error:
            self._protocol_error(str(error))
            return
        if isinstance(frame, Ping):
            self.reply(Pong(frame.seq))
        elif isinstance(frame, SnapshotHeader | SnapshotChunk):
            self._owner._on_snapshot_frame(self.hello, frame, self)
        else:
            self._owner._deliver(self.hello, frame, self)

    def reply(self, frame: Pong | SnapshotAck) -> None:
        """Write a pong or an ack back, unless the dialer stopped reading them."""
        assert self.transport is not None
        if not self.closing and self.transport.get_write_buffer_size() < PONG_BUFFER_MAX_BYTES:
            body = encode_control(frame)
            self.transport.write(FRAME_HEADER.pack(len(body)) + body)

    def _on_hello(self, body: memoryview) -> None:
        try:
            hello = decode_hello(body)
        except CodecError as error:
            self._reject(f"not a replog peer ({error})")
            return
        reason = self._owner._check_hello(hello)
        if reason is not None:
            self._reject(reason)
            return
        self.hello = hello
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None
        self._owner._adopt_inbound(self)


class PeerTransport:
    """Sends Raft messages to peers and hands received ones to ``on_message``.

    ``peers`` maps node id to (host, port); an entry for ``node_id`` itself is ignored, so every
    node may be given the same map. All methods run on the event loop's thread.
    """

    def __init__(
        self,
        *,
        node_id: int,
        cluster_id: str,
        listen: Address,
        peers: Mapping[int, Address],
        on_message: Callable[[Message], None],
        queue_max_messages: int = 4096,
        queue_max_bytes: int = 64 << 20,
        frame_max_bytes: int = 512 << 20,
        connect_timeout_s: float = 1.0,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 2.0,
        chunk_bytes: int = CHUNK_BYTES_DEFAULT,
        snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX_DEFAULT,
        snapshot_idle_timeout_s: float = IDLE_TIMEOUT_S_DEFAULT,
    ) -> None:
        _check_arguments(
            node_id=node_id,
            cluster_id=cluster_id,
            queue_max_messages=queue_max_messages,
            queue_max_bytes=queue_max_bytes,
            frame_max_bytes=frame_max_bytes,
            connect_timeout_s=connect_timeout_s,
            backoff_initial_s=backoff_initial_s,
            backoff_max_s=backoff_max_s,
            chunk_bytes=chunk_bytes,
            snapshot_bytes_max=snapshot_bytes_max,
            snapshot_idle_timeout_s=snapshot_idle_timeout_s,
        )
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.on_message = on_message
        self.on_rtt: Callable[[int, float], None] | None = None
        self._listen = listen
        self._queue_max_messages = queue_max_messages
        self._queue_max_bytes = queue_max_bytes
        self._frame_max_bytes = frame_max_bytes
        self._connect_timeout_s = connect_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._random = random.Random()
        self._links: dict[int, _Link] = {}
        self._server: asyncio.Server | None = None
        self._listen_address: Address | None = None
        self._started = False
        self._closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._protocols: set[_Protocol] = set()
        self._inbound: set[_InboundProtocol] = set()
        self.unknown_receiver_drops = 0  # send() calls for a node that is not a peer
        self.misaddressed_drops = 0  # received messages not for this node or not from the sender
        # A chunk frame must fit the frame limit; a smaller frame limit makes smaller chunks.
        self._chunk_bytes = max(1, min(chunk_bytes, frame_max_bytes - CHUNK_FRAME_OVERHEAD_BYTES))
        self._snapshot_idle_timeout_s = snapshot_idle_timeout_s
        self.snapshots = SnapshotAssembler(node_id, snapshot_bytes_max, snapshot_idle_timeout_s)
        self._sweep_timer: asyncio.TimerHandle | None = None
        self._kick_due = False  # a _kick is scheduled for this loop turn
        # For fault-injection tests: rewrites a chunk (peer id, offset, data) after its CRC-32C
        # was computed, so the receiver sees it damaged.
        self.chunk_hook: ChunkHook | None = None
        self.set_peers(peers)

    # ---- lifecycle -------------------------------------------------------------------------

    @property
    def listen_address(self) -> Address:
        """The (host, port) actually bound; only after ``start()``."""
        if self._listen_address is None:
            raise RuntimeError("the transport is not started")
        return self._listen_address

    async def start(self) -> None:
        """Bind the listener and start dialing the peers."""
        if self._started:
            raise RuntimeError("the transport was already started")
        loop = asyncio.get_running_loop()
        host, port = self._listen
        self._server = await loop.create_server(lambda: _InboundProtocol(self), host, port)
        self._started = True
        bound = self._server.sockets[0].getsockname()
        self._listen_address = (str(bound[0]), int(bound[1]))
        for link in self._links.values():
            self._start_link(link)
        self._schedule_sweep()

    async def close(self) -> None:
        """Close the listener, every connection and every task; return once all are gone."""
        if self._closed:
            return
        self._closed = True
        if self._sweep_timer is not None:
            self._sweep_timer.cancel()
        if self._server is not None:
            self._server.close()
        for link in self._links.values():
            if link.task is not None:
                link.task.cancel()
        for protocol in list(self._protocols):
            protocol.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        pending = [p.closed for p in self._protocols if p.transport is not None]
        if pending:
            await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)

    # ---- sending ---------------------------------------------------------------------------

    def send(self, m: Message) -> bool:
        """Queue ``m`` for ``m.receiver``; False (a counted drop) if unknown or queue full."""
        link = self._links.get(m.receiver)
        if link is None:
            self.unknown_receiver_drops += 1
            return False
        if type(m) is InstallSnapshot and len(m.snapshot.data) > self._chunk_bytes:
            return self._send_snapshot(link, m)
        size = message_size_bytes(m)
        if (
            self._closed
            or len(link.queue) >= self._queue_max_messages
            or (link.queued_bytes + size > self._queue_max_bytes and link.queue)
        ):
            link.dropped_messages += 1
            return False
        link.queue.append((m, size))
        link.queued_bytes += size
        if not self._kick_due:
            try:
                asyncio.get_running_loop().call_soon(self._kick)
                self._kick_due = True
            except RuntimeError:  # not started: the writer finds the queue when it starts
                pass
        return True

    def _kick(self) -> None:
        """Wake the writers of the links still holding messages at the end of the loop turn
        in which they were sent. ``flush`` usually emptied them already, so most sends cost a
        writer no wakeup at all."""
        self._kick_due = False
        for link in self._links.values():
            if link.queue:
                link.wakeup.set()

    def flush(self) -> None:
        """Write what is queued now instead of on the writers' next turn of the loop (the
        commit path saves a turn per hop). Links that are not connected, whose socket buffer
        is full, or that stream a snapshot are left to their writer tasks."""
        for link in self._links.values():
            protocol = link.protocol
            if (
                not link.queue
                or protocol is None
                or protocol.closing
                or protocol.paused
                or protocol.transport is None
                or link.transfer is not None
            ):
                continue
            batch, count = self._take_batch(link)
            protocol.transport.write(batch)
            link.sent_messages += count

    def _send_snapshot(self, link: _Link, m: InstallSnapshot) -> bool:
        """Start streaming ``m`` in chunks, or absorb a resend of the one in transfer."""
        if self._closed:
            link.dropped_messages += 1
            return False
        transfer = link.transfer
        key = SnapshotKey.of(m.snapshot) if transfer is None else transfer.key_for(m)
        if transfer is not None and transfer.same_send(m, key):
            link.snapshots_absorbed += 1
            return True
        try:
            snapshot_header(m, 1, key.total_bytes, key.crc)
        except CodecError as error:  # taken and lost, like an unencodable queued message
            logger.warning("dropping a snapshot to peer %d: %s", link.peer_id, error)
            link.send_failures += 1
            return True
        if transfer is not None:
            link.snapshots_replaced += 1
            logger.info(
                "snapshot at index %d to peer %d replaced by the one at index %d",
                transfer.key.index,
                link.peer_id,
                key.index,
            )
        link.transfer = OutgoingSnapshot(m, key, self._chunk_bytes, time.monotonic())
        link.snapshots_started += 1
        link.wakeup.set()
        return True

    def set_peers(self, peers: Mapping[int, Address]) -> None:
        """Add, remove and re-address peers. A removed peer's queued messages are discarded;
        a re-addressed peer keeps its queue and is dialed again at its new address."""
        wanted = {peer_id: _check_peer(peer_id, address) for peer_id, address in peers.items()}
        wanted.pop(self.node_id, None)
        for peer_id in [p for p in self._links if p not in wanted]:
            removed = self._links.pop(peer_id)
            if removed.task is not None:
                removed.task.cancel()
            self.snapshots.forget(peer_id)
        for peer_id, address in wanted.items():
            link = self._links.get(peer_id)
            if link is None:
                link = self._links[peer_id] = _Link(peer_id, address)
                if self._started and not self._closed:
                    self._start_link(link)
            elif link.address != address:
                link.address = address
                if link.protocol is not None:
                    link.protocol.abort()

    def stats(self) -> dict[int, PeerStats]:
        return {peer_id: link.stats() for peer_id, link in self._links.items()}

    # ---- the per-peer writer ---------------------------------------------------------------

    def _start_link(self, link: _Link) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run_link(link), name=f"replog-transport-{self.node_id}->{link.peer_id}"
        )
        link.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("transport task %s failed", task.get_name(), exc_info=task.exception())

    async def _run_link(self, link: _Link) -> None:
        """Dial, pump, and dial again after a backoff, until cancelled."""
        failures = 0
        while True:
            protocol = await self._connect(link)
            if protocol is not None:
                try:
                    await self._pump(link, protocol)
                finally:
                    protocol.abort()
                    if link.protocol is protocol:
                        link.protocol = None
                    if link.transfer is not None:
                        link.transfer.on_disconnect()
                failures = 0 if link.healthy else failures + 1
            else:
                link.connect_failures += 1
                failures += 1
            await asyncio.sleep(self._backoff_s(failures))

    def _backoff_s(self, failures: int) -> float:
        """Exponential in the failures since the last healthy connection, with jitter."""
        ceiling = self._backoff_initial_s * 2.0 ** min(failures, 32)
        jittered = ceiling * self._random.uniform(0.5, 1.0)
        return min(self._backoff_max_s, max(self._backoff_initial_s, jittered))

    async def _connect(self, link: _Link) -> _OutboundProtocol | None:
        loop = asyncio.get_running_loop()
        host, port = address = link.address
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, protocol = await loop.create_connection(
                    lambda: _OutboundProtocol(self, link), host, port
                )
        except (OSError, TimeoutError, ValueError) as error:  # ValueError: a malformed host
            logger.debug("cannot reach peer %d at %s:%d: %r", link.peer_id, host, port, error)
            return None
        if link.address != address:  # re-addressed while dialing
            protocol.abort()
            return None
        link.protocol = protocol
        link.healthy = False
        link.connections += 1
        link.pings_sent_ns.clear()
        link.ping_due = True  # the first pong confirms the handshake and gives a first rtt
        hello = Hello(MAGIC, WIRE_VERSION, self.cluster_id, self.node_id, link.peer_id)
        body = encode_control(hello)
        assert protocol.transport is not None
        protocol.transport.write(FRAME_HEADER.pack(len(body)) + body)
        return protocol

    async def _pump(self, link: _Link, protocol: _OutboundProtocol) -> None:
        """Write batches until the connection breaks. Pings are due every PING_INTERVAL_S."""
        loop = asyncio.get_running_loop()
        link.ping_timer = loop.call_later(PING_INTERVAL_S, self._ping_due, link, protocol)
        transport = protocol.transport
        assert transport is not None
        try:
            while not protocol.closing:
                if not link.queue and not link.ping_due and not _snapshot_due(link):
                    link.wakeup.clear()
                    await link.wakeup.wait()
                    continue
                batch, count = self._take_batch(link)
                self._add_snapshot_frame(link, batch)
                transport.write(batch)
                try:
                    await protocol.drain()
                except ConnectionError:
                    link.send_failures += count
                    return
                link.sent_messages += count
        finally:
            if link.ping_timer is not None:
                link.ping_timer.cancel()
                link.ping_timer = None

    def _ping_due(self, link: _Link, protocol: _OutboundProtocol) -> None:
        if link.protocol is not protocol or protocol.closing:
            return
        oldest_ns = next(iter(link.pings_sent_ns.values()), None)
        if oldest_ns is not None and time.monotonic_ns() - oldest_ns > PONG_TIMEOUT_S * 1e9:
            logger.info(
                "peer %d has not answered pings for %s s; redialing", link.peer_id, PONG_TIMEOUT_S
            )
            protocol.abort()
            return
        link.ping_due = True
        link.wakeup.set()
        loop = asyncio.get_running_loop()
        link.ping_timer = loop.call_later(PING_INTERVAL_S, self._ping_due, link, protocol)

    def _take_batch(self, link: _Link) -> tuple[bytearray, int]:
        """Encode queued messages (and a due ping) into frames; returns (bytes, messages)."""
        batch = bytearray()
        if link.ping_due:
            link.ping_due = False
            self._add_ping(link, batch)
        count = 0
        budget = BATCH_BYTES_MAX
        frame_max = self._frame_max_bytes
        while link.queue and budget > 0:
            m, size = link.queue.popleft()
            link.queued_bytes -= size
            budget -= size
            try:
                body = encode_message(m)
            except CodecError as error:
                logger.warning("dropping a message to peer %d: %s", link.peer_id, error)
                link.send_failures += 1
                continue
            if len(body) > frame_max:
                logger.warning(
                    "dropping a %d-byte %s to peer %d: over frame_max_bytes (%d)",
                    len(body),
                    type(m).__name__,
                    link.peer_id,
                    frame_max,
                )
                link.send_failures += 1
                continue
            batch += FRAME_HEADER.pack(len(body))
            batch += body
            count += 1
        return batch, count

    def _add_snapshot_frame(self, link: _Link, batch: bytearray) -> None:
        """Add the snapshot transfer's due frame to a batch: its header or one chunk."""
        transfer = link.transfer
        if transfer is None:
            return
        if transfer.header_due():
            link.snapshot_attempts += 1
            body = encode_control(transfer.header(link.snapshot_attempts))
        elif transfer.chunk_due():
            offset, data, crc = transfer.next_chunk()
            if self.chunk_hook is not None:
                data = memoryview(self.chunk_hook(link.peer_id, offset, data))
            body = encode_chunk(transfer.attempt, offset, crc, data)
            link.snapshot_bytes_sent += len(data)
        else:
            return
        batch += FRAME_HEADER.pack(len(body))
        batch += body

    def _on_snapshot_ack(self, link: _Link, protocol: _OutboundProtocol, ack: SnapshotAck) -> None:
        transfer = link.transfer
        if transfer is None or link.protocol is not protocol:
            return
        outcome = transfer.on_ack(ack, time.monotonic())
        if outcome == "stale":
            return
        index = transfer.key.index
        if outcome == "resumed":
            link.snapshots_resumed += 1
            logger.info(
                "resuming the snapshot at index %d to peer %d at byte %d of %d",
                index,
                link.peer_id,
                ack.offset,
                transfer.key.total_bytes,
            )
        elif outcome == "done":
            link.transfer = None
            link.snapshots_completed += 1
            link.sent_messages += 1
        elif outcome == "refused":
            link.transfer = None
            link.snapshots_failed += 1
            logger.warning("peer %d refused the snapshot at index %d", link.peer_id, index)
        link.wakeup.set()

    def _schedule_sweep(self) -> None:
        interval_s = min(1.0, self._snapshot_idle_timeout_s / 4)
        loop = asyncio.get_running_loop()
        self._sweep_timer = loop.call_later(interval_s, self._sweep_snapshots)

    def _sweep_snapshots(self) -> None:
        """Drop snapshot transfers, both ways, without progress for the idle timeout."""
        if self._closed:
            return
        now_s = time.monotonic()
        self.snapshots.expire(now_s)
        timeout_s = self._snapshot_idle_timeout_s
        for link in self._links.values():
            transfer = link.transfer
            if transfer is not None and now_s - transfer.progress_s > timeout_s:
                logger.warning(
                    "giving up the snapshot at index %d to peer %d: no progress for %s s",
                    transfer.key.index,
                    link.peer_id,
                    timeout_s,
                )
                link.transfer = None
                link.snapshots_failed += 1
        self._schedule_sweep()

    def _add_ping(self, link: _Link, batch: bytearray) -> None:
        link.ping_seq += 1
        pings = link.pings_sent_ns
        pings[link.ping_seq] = time.monotonic_ns()
        while len(pings) > PINGS_OUTSTANDING_MAX:
            del pings[next(iter(pings))]
        body = encode_control(Ping(link.ping_seq))
        batch += FRAME_HEADER.pack(len(body))
        batch += body

    def _on_pong(self, link: _Link, seq: int) -> None:
        pings = link.pings_sent_ns
        sent_ns = pings.pop(seq, None)
        if sent_ns is None:
            return  # not a ping of ours, or an old one forgotten
        while pings and next(iter(pings)) < seq:  # pongs come in order: older ones never will
            del pings[next(iter(pings))]
        link.healthy = True
        link.rtt_s = rtt_s = (time.monotonic_ns() - sent_ns) / 1e9
        if self.on_rtt is not None:
            try:
                self.on_rtt(link.peer_id, rtt_s)
            except Exception:
                logger.exception("on_rtt failed for peer %d", link.peer_id)

    # ---- the receiving side ----------------------------------------------------------------

    def _check_hello(self, hello: Hello) -> str | None:
        """Why a handshake is refused, or None when it is for us."""
        if hello.magic != MAGIC:
            return f"not a replog peer (magic {hello.magic!r})"
        if hello.version > WIRE_VERSION:
            return f"peer speaks wire version {hello.version}, newer than ours ({WIRE_VERSION})"
        if hello.cluster_id != self.cluster_id:
            return f"peer belongs to cluster {hello.cluster_id!r}, not {self.cluster_id!r}"
        if hello.receiver != self.node_id:
            return f"peer {hello.sender} dialed node {hello.receiver}, this is node {self.node_id}"
        if hello.sender in (0, self.node_id):
            return f"peer claims node id {hello.sender}"
        return None

    def _adopt_inbound(self, protocol: _InboundProtocol) -> None:
        """A new connection from a sender replaces its older ones (the sender redialed)."""
        assert protocol.hello is not None
        sender = protocol.hello.sender
        for other in list(self._inbound):
            if other is not protocol and other.hello is not None and other.hello.sender == sender:
                logger.info("peer %d redialed; closing its older connection", sender)
                other.abort()

    def _on_snapshot_frame(
        self, hello: Hello, frame: SnapshotHeader | SnapshotChunk, protocol: _InboundProtocol
    ) -> None:
        now_s = time.monotonic()
        if isinstance(frame, SnapshotHeader):
            if frame.receiver != self.node_id or frame.sender != hello.sender:
                self.misaddressed_drops += 1
                return
            protocol.reply(self.snapshots.on_header(frame, now_s))
            return
        ack, message = self.snapshots.on_chunk(hello.sender, frame, now_s)
        if message is not None:
            self._deliver(hello, message, protocol)
        if ack is not None:
            protocol.reply(ack)

    def _deliver(self, hello: Hello, m: Message, protocol: _InboundProtocol) -> None:
        if m.receiver != self.node_id or m.sender != hello.sender:
            self.misaddressed_drops += 1
            logger.debug("dropping %s from %d to %d", type(m).__name__, m.sender, m.receiver)
            return
        try:
            self.on_message(m)
        except Exception:
            logger.exception("on_message failed on a %s; closing the connection", type(m).__name__)
            protocol.abort()


def _check_arguments(**values: Any) -> None:
    if not isinstance(values["node_id"], int) or not 0 < values["node_id"] < 1 << 63:
        raise ValueError(f"node_id must be an int in 1 .. 2**63-1, not {values['node_id']!r}")
    cluster_id = values["cluster_id"]
    if not isinstance(cluster_id, str) or not 0 < len(cluster_id) <= 256:
        raise ValueError("cluster_id must be a non-empty str of at most 256 characters")
    for name in (
        "queue_max_messages",
        "queue_max_bytes",
        "frame_max_bytes",
        "chunk_bytes",
        "snapshot_bytes_max",
    ):
        if values[name] < 1:
            raise ValueError(f"{name} must be positive, not {values[name]!r}")
    for name in (
        "connect_timeout_s",
        "backoff_initial_s",
        "backoff_max_s",
        "snapshot_idle_timeout_s",
    ):
        if not values[name] > 0:
            raise ValueError(f"{name} must be positive, not {values[name]!r}")
    if values["backoff_max_s"] < values["backoff_initial_s"]:
        raise ValueError("backoff_max_s must be at least backoff_initial_s")


def _snapshot_due(link: _Link) -> bool:
    transfer = link.transfer
    return transfer is not None and (transfer.header_due() or transfer.chunk_due())


def _check_peer(peer_id: int, address: Address) -> Address:
    """The peer's address as a plain (host, port) tuple; ValueError when malformed."""
    if not isinstance(peer_id, int) or not 0 < peer_id < 1 << 63:
        raise ValueError(f"peer id must be an int in 1 .. 2**63-1, not {peer_id!r}")
    host, port = address if len(address) == 2 else (None, None)
    if not isinstance(host, str) or not isinstance(port, int) or not 0 <= port < 1 << 16:
        raise ValueError(f"peer {peer_id}: address must be (host, port), not {address!r}")
    return (host, port)
