"""The node's side of the binary client protocol (``replog.protocol``).

Theory of operation
-------------------
One ``_Connection`` (an asyncio protocol) per client connection. Frames are cut from the byte
stream as they arrive and decoded strictly; the first must be ``Hello``. Requests go through
the same code as the HTTP API (``Api.start_write``/``finish_write``, ``Api.read_barrier``), so
both protocols check, propose, read and fail alike, with the same error codes. A write is a
callback on the node's future (no task per write); a read runs as a task.

Answers are queued on the connection and leave together once per turn of the event loop: the
answers that one commit completes cost one ``write`` call, not one each. The answer to a
connection's only request in flight leaves at once: nothing could join it.

Bounds: the node holds at most ``client_connections_max`` client connections, the HTTP API's
included; one more gets a ``Failure`` (``unavailable``) in place of ``Welcome`` and is closed,
and one that sends no ``Hello`` within ``FIRST_REQUEST_S`` is closed (``connections``). A
connection holds at most ``IN_FLIGHT_MAX`` requests; at that point, or while the socket's send
buffer is over its high-water mark, the node stops reading from it until answers have left (TCP
then holds the client back). Frames are at most the request size limit plus
``FRAME_OVERHEAD_BYTES``. A frame over the limit, one that does not decode, or a broken
handshake is answered with a ``Failure`` and the connection is closed. At close the node
answers what it read, says ``going_away`` when that covers every request it took, ends its side
of the stream and drops what still arrives until the client closes (``_Connection.go_away``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from typing import Final, cast

import msgspec

from replog import protocol
from replog.errors import Unavailable
from replog.server.connections import (
    CONNECTIONS_DEFAULT,
    FIRST_REQUEST_S,
    ClientConnections,
    Refusal,
)
from replog.server.http import Api, ApiError, api_error_of
from replog.statemachines import GetResult

log = logging.getLogger(__name__)

IN_FLIGHT_MAX: Final = 4096
# Connections the kernel holds for us before we accept them (HTTP's and this server's). At the
# default of about 100, a thousand clients connecting at once overflowed the queue: the
# dropped SYNs were retried after 1, 3 and 7 s, and some requests timed out. The kernel caps
# it at net.core.somaxconn.
LISTEN_BACKLOG: Final = 4096
# At close, how long a connection may take to end after the node's last answer (the client
# closes on the node's end of stream). Until then the node reads and drops what comes: a
# socket closed with unread bytes resets the connection, and the client may lose the answers.
GOODBYE_S: Final = 1.0
_ENCODER = msgspec.msgpack.Encoder()
_LENGTH_ROOM = bytes(protocol.LENGTH.size)  # replaced by the body's length once encoded


class RpcServer:
    """Serves ``replog.protocol`` on one address, with the handlers of ``api``."""

    def __init__(self, api: Api, connections: ClientConnections | None = None) -> None:
        self.api = api
        if connections is None:
            connections = ClientConnections(CONNECTIONS_DEFAULT, api.node.name)
        self.client_connections = connections  # shared with the HTTP API's
        self.frame_bytes_max = api.options.request_bytes_max + protocol.FRAME_OVERHEAD_BYTES
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._turn_header: protocol.Header | None = None
        self.draining = False  # see stop_taking

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._accept, host, port, backlog=LISTEN_BACKLOG)

    def _accept(self) -> asyncio.Protocol:
        if self.client_connections.admit():
            return _Connection(self)  # released by its connection_lost
        return Refusal(self.client_connections, self._refusal)

    def _refusal(self) -> bytes:
        """The frame that refuses a connection over the limit: a ``Failure`` where the client
        expects ``Welcome`` (the client library reports the handshake refused)."""
        message = self.client_connections.refusal_message()
        return _frame_of(protocol.Failure(0, "unavailable", message, self.header()))

    def stop_taking(self) -> None:
        """Take no new requests: the listener closes, and a request that arrives on an open
        connection is refused as ``unavailable`` (certainly not applied, so it is safe to retry
        on another node; a request left unread would have been an unknown outcome). The answers
        to requests already taken still go out (a clean stop drains the node next)."""
        self.draining = True
        if self._server is not None:
            self._server.close()

    async def close(self) -> None:
        """End every connection, saying ``going_away`` where the node can (see
        ``_Connection.go_away``); after ``GOODBYE_S`` the connections left are aborted."""
        if self._server is not None:
            self._server.close()
        reason = f"node {self.api.node.name} is stopping"
        for connection in list(self._connections):
            connection.go_away(reason)
        deadline = asyncio.get_running_loop().time() + GOODBYE_S
        while self._connections and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        for connection in list(self._connections):
            connection.abort()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def write_header(self) -> protocol.Header:
        """The header for a write's answer, computed once per loop turn: every write answered
        in a turn was applied in an earlier one, so the header of the turn's first answer
        already covers it (a read's answer needs ``header``, taken after the read)."""
        header = self._turn_header
        if header is None:
            header = self._turn_header = self.header()
            asyncio.get_running_loop().call_soon(self._forget_turn_header)
        return header

    def _forget_turn_header(self) -> None:
        self._turn_header = None

    def header(self) -> protocol.Header:
        position = self.api.node.position()
        return protocol.Header(
            leader_id=position.leader,
            term=position.term,
            commit_index=position.commit_index,
            applied_index=position.applied_index,
            revision=self.api.kv.revision,
        )

    async def answer(self, message: protocol.Read) -> protocol.Result:
        await self.api.read_barrier(message.consistency, message.min_revision)
        return self._read(message.query)

    def _read(self, query: protocol.GetKey | protocol.RangePrefix) -> protocol.Result:
        limits = self.api.options.limits
        if isinstance(query, protocol.GetKey):
            if not query.key or len(query.key) > limits.key_bytes_max:
                raise ApiError(400, "invalid_request", "the key is empty or over the limit")
            kv = self.api.kv.get(query.key)
            if kv is None:
                raise ApiError(404, "key_not_found", f"key {query.key!r} not found")
            return GetResult(kv)
        if not 1 <= query.limit <= limits.range_limit_max:
            message = f"limit must be between 1 and {limits.range_limit_max}"
            raise ApiError(400, "invalid_request", message)
        kvs, count, more = self.api.kv.range(query.prefix, query.limit)
        return protocol.RangeResult(tuple(kvs), count, more)


class _Connection(asyncio.Protocol):
    def __init__(self, server: RpcServer) -> None:
        self.server = server
        self.reader = protocol.FrameReader(server.frame_bytes_max)
        self.transport: asyncio.Transport | None = None
        self.greeted = False
        self.in_flight = 0
        self.reads: dict[asyncio.Task[None], int] = {}  # the reads being served, by request id
        self.out = bytearray()  # frames to write at the end of this loop turn
        self.reading_paused = False
        self.writing_paused = False
        self.gone = False  # go_away was called: what arrives now is dropped unread
        self.hello_timer: asyncio.TimerHandle | None = None

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server._connections.add(self)
        loop = asyncio.get_running_loop()
        self.hello_timer = loop.call_later(FIRST_REQUEST_S, self._hello_overdue)

    def _hello_overdue(self) -> None:
        if not self.greeted:  # it holds one of the node's limited connections for nothing
            self._fail_and_close("invalid_request", f"no Hello within {FIRST_REQUEST_S:g} s")

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connections.discard(self)
        self.server.client_connections.release()
        if self.hello_timer is not None:
            self.hello_timer.cancel()
        for task in self.reads:
            task.cancel()  # reads nobody is left to answer (writes go on: they may commit)
        self.transport = None

    def pause_writing(self) -> None:
        self.writing_paused = True
        self._pace()

    def resume_writing(self) -> None:
        self.writing_paused = False
        self._pace()

    def data_received(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            frames = self.reader.feed(data)
        except protocol.FrameError as error:
            self._fail_and_close("too_large", str(error))
            return
        for body in frames:
            try:
                message = protocol.node_decoder.decode(body)
            except msgspec.DecodeError as error:
                self._fail_and_close("invalid_request", f"undecodable frame: {error}")
                return
            if not self._take(message):
                return
        self._pace()

    # ---- requests --------------------------------------------------------------------------

    def _take(self, message: protocol.ClientMessage) -> bool:
        """Start serving one message; False when the connection was closed over it."""
        if isinstance(message, protocol.Hello):
            return self._greet(message)
        if not self.greeted:
            self._fail_and_close("invalid_request", "the first frame must be Hello")
            return False
        if self.server.draining:
            self._fail(message.id, Unavailable(f"node {self.server.api.node.name} is stopping"))
            return True
        if isinstance(message, protocol.Write):
            self._start_write(message)
            return True
        self.in_flight += 1
        task = asyncio.get_running_loop().create_task(self._serve(message))
        self.reads[task] = message.id
        task.add_done_callback(self._served)
        return True

    def _start_write(self, message: protocol.Write) -> None:
        """A write needs no task and no future: the node calls back with the outcome."""
        request = message.request
        on_done = functools.partial(self._write_done, message.id)
        self.in_flight += 1
        try:
            self.server.api.start_write_callback(request.op, request.idempotency_key, on_done)
        except Exception as error:
            self.in_flight -= 1
            self._fail(message.id, error)

    def _write_done(self, request_id: int, outcome: object, error: BaseException | None) -> None:
        self.in_flight -= 1
        self._pace()
        if error is None:
            try:
                result = self.server.api.finish_write(outcome)
            except ApiError as refused:
                error = refused
            else:
                self._send(protocol.Reply(request_id, self.server.write_header(), result))
                return
        self._fail(request_id, error)

    def _fail(self, request_id: int, error: BaseException) -> None:
        api_error = api_error_of(error) if isinstance(error, Exception) else None
        if api_error is None:
            log.error("rpc request %d failed", request_id, exc_info=error)
            api_error = ApiError(500, "internal", "the node failed to serve the request")
        header = self.server.header()
        self._send(protocol.Failure(request_id, api_error.code, api_error.message, header))

    def _greet(self, hello: protocol.Hello) -> bool:
        cluster_id = self.server.api.options.cluster_id
        if self.greeted:
            code, problem = "invalid_request", "Hello was already received on this connection"
        elif hello.version != protocol.VERSION:
            code = "version_mismatch"
            problem = f"protocol version {hello.version} is not spoken here ({protocol.VERSION})"
        elif hello.cluster_id not in ("", cluster_id):
            code = "cluster_mismatch"
            problem = f"this node belongs to cluster {cluster_id!r}, not {hello.cluster_id!r}"
        else:
            self.greeted = True
            name = self.server.api.node.name
            limit = self.server.frame_bytes_max
            self._send(protocol.Welcome(protocol.VERSION, name, cluster_id, limit))
            return True
        self._fail_and_close(code, problem)
        return False

    async def _serve(self, message: protocol.Read) -> None:
        try:
            result = await self.server.answer(message)
        except Exception as error:
            self._fail(message.id, error)
            return
        self._send(protocol.Reply(message.id, self.server.header(), result))

    def _served(self, task: asyncio.Task[None]) -> None:
        if self.reads.pop(task, None) is None:
            return  # go_away answered it
        self.in_flight -= 1
        self._pace()

    # ---- answers ---------------------------------------------------------------------------

    def _send(self, message: protocol.NodeMessage) -> None:
        if self.transport is None:
            return
        if not self.out:
            if self.in_flight == 0:  # nothing else to answer soon: no reason to wait
                self._add_frame(message)
                self._flush()
                return
            asyncio.get_running_loop().call_soon(self._flush)
        self._add_frame(message)

    def _add_frame(self, message: protocol.NodeMessage) -> None:
        _append_frame(self.out, message)

    def _flush(self) -> None:
        out, self.out = self.out, bytearray()
        if self.transport is not None and out and not self.gone:
            self.transport.write(out)

    def _pace(self) -> None:
        """Stop reading while too much is in flight or the send buffer is full."""
        if self.transport is None or self.transport.is_closing() or self.gone:
            return
        busy = self.in_flight >= IN_FLIGHT_MAX or self.writing_paused
        if busy and not self.reading_paused:
            self.transport.pause_reading()
            self.reading_paused = True
        elif not busy and self.reading_paused and self.in_flight <= IN_FLIGHT_MAX // 2:
            self.transport.resume_reading()
            self.reading_paused = False

    def _fail_and_close(self, code: str, message: str) -> None:
        if self.transport is None:
            return
        self._add_frame(protocol.Failure(0, code, message, self.server.header()))
        self._flush()
        self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def go_away(self, reason: str) -> None:
        """Take no more requests and answer the reads being served as ``unavailable``. Then,
        unless a write still awaits its outcome, promise the client with a ``going_away``
        failure (id 0) that nothing else it sent was read: those requests are certainly not
        applied, and may go to another node. Then end the stream, and drop what still comes
        until the client closes its end."""
        if self.transport is None or self.gone:
            return
        reads, self.reads = self.reads, {}
        for task, request_id in reads.items():
            task.cancel()
            self.in_flight -= 1
            self._fail(request_id, Unavailable(reason))
        if self.in_flight == 0:
            self._add_frame(protocol.Failure(0, protocol.GOING_AWAY, reason))
        self._flush()
        self.gone = True
        try:
            self.transport.write_eof()
        except OSError:  # the client is gone already
            self.transport.abort()
            return
        if self.reading_paused:
            self.transport.resume_reading()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


def _append_frame(out: bytearray, message: protocol.NodeMessage) -> None:
    """Encode ``message`` as a frame at the end of ``out``, without a copy."""
    start = len(out)
    out += _LENGTH_ROOM
    _ENCODER.encode_into(message, out, -1)
    protocol.LENGTH.pack_into(out, start, len(out) - start - protocol.LENGTH.size)


def _frame_of(message: protocol.NodeMessage) -> bytes:
    out = bytearray()
    _append_frame(out, message)
    return bytes(out)
