"""``RpcClient``: the asyncio client of the binary client protocol (``replog.protocol``).

Theory of operation
-------------------
One client holds one TCP connection (TCP_NODELAY) to one node of the cluster. It opens with
``Hello`` and expects ``Welcome`` (right version, and the cluster id asked for, if any); then
every call sends one ``Write`` or ``Read`` with a fresh id from a counter and waits on a plain
future kept in a dict under that id. Many calls are in flight at once; answers come back in
completion order and the reader (an ``asyncio.Protocol`` cutting frames with ``FrameReader`` and
decoding them with the module-level msgspec decoder) resolves each future by its id. No task,
timer or log line is made per request: requests queued during one event-loop turn are encoded
into one buffer and leave in one ``transport.write`` scheduled with ``loop.call_soon`` (a
request on a connection with nothing else in flight leaves at once), and a
single sweeper per connection (every ``timeout_s / 10``, at most 0.1 s) expires the requests
older than ``timeout_s``; all requests of a connection share that timeout, so ids in insertion
order are also deadlines in order and the sweep stops at the first one not yet due.

Futures are only ever resolved with a value (a ``Reply``, a ``Failure`` or a ``_Broken``
marker), never an exception, and the calling coroutine turns that value into a result or one
of the typed errors of ``replog.client.errors``; for one attempt:

* a ``Failure`` from the node: the class of its ``code`` (``status`` is None: no HTTP here);
* no answer within ``timeout_s``: ``UnknownOutcome`` for a write (it may still apply),
  ``Unavailable`` for a read, both raised ``from`` a ``TimeoutError``;
* the connection broke (or was closed) with the request in flight: ``UnknownOutcome`` for a
  write that had left the client, ``Unavailable`` for a read or for a write still in the
  client's buffer (certainly not applied), raised ``from`` a ``ConnectionError``;
* the node said ``going_away`` (it stops, and read none of the requests still waiting):
  ``Unavailable`` for each, writes included, raised ``from`` a ``ConnectionError``.

So ``error.code`` stays one of the API's codes and ``error.__cause__`` tells a client-side
timeout or lost connection from a node's answer. After a break the next call reconnects, trying
the endpoints in turn from the one after the broken connection's, with a short growing backoff
between rounds, and raises ``Unavailable`` (code ``unreachable``) when none has answered within
``timeout_s``. Any node accepts writes and linearizable reads (followers forward them through
Raft), so there is no leader to look for.

Retries (``retry_timeout_s``, 15 s by default as in the HTTP clients; 0 turns them off): a call
whose attempt failed with ``Unavailable`` (certainly not applied), or a write with an
idempotency key whose attempt ended in ``UnknownOutcome``, is tried again after a pause
(exponential backoff with jitter) until ``retry_timeout_s`` has passed since it began; any other
error is raised at once (a write without a key that may have applied cannot be sent again).
The connection of such an attempt (broken, timed out, or its node could not serve the request)
is retired: new requests go to a new connection to the next endpoint, while those already sent
on it are answered there, and it closes once none is left. Given a ``session_id``, the client
keys every write that has no key (``<session_id>-<n>``), as the HTTP clients always do; that
is not the default here because every keyed write costs each node a remembered result, kept
in its snapshots too (docs/rpc-protocol.md has the numbers). Invariant: once an attempt may
have applied a write, the call ends in its result or in ``UnknownOutcome``, never
``Unavailable``. The error of a call that was retried tells how many attempts it made, and
keeps the last attempt's ``__cause__``.

At most ``max_in_flight`` requests are in flight per client; further callers wait for a slot.
When the socket's send buffer fills (the transport pauses writing), callers wait until it drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Final, TypeVar, cast

import msgspec

from replog import protocol
from replog.client._policy import (
    RETRYABLE_CODES,
    check_session_id,
    outcome_unknown,
    retry_delay_s,
)
from replog.client.errors import (
    _BY_CODE,
    InvalidRequest,
    ReplogClientError,
    RevisionCompacted,
    ServerError,
    Unavailable,
    UnknownOutcome,
)
from replog.client.types import Header as ClientHeader
from replog.protocol import (
    CONSISTENCIES,
    LINEARIZABLE,
    Failure,
    GetKey,
    Header,
    RangePrefix,
    RangeResult,
    Read,
    Reply,
    Welcome,
    Write,
)
from replog.statemachines import (
    Delete,
    DeleteResult,
    GetResult,
    KeyValue,
    Put,
    PutResult,
    Request,
    Txn,
    TxnResult,
)

__all__ = ["RpcClient", "parse_endpoint"]

T = TypeVar("T")
MAX_IN_FLIGHT_DEFAULT: Final = 4096
CONNECT_TIMEOUT_DEFAULT_S: Final = 2.0
RETRY_TIMEOUT_DEFAULT_S: Final = 15.0
FRAME_BYTES_MAX_DEFAULT: Final = 64 * 1024 * 1024
BACKOFF_MIN_S: Final = 0.02
BACKOFF_MAX_S: Final = 0.5
SWEEP_MAX_S: Final = 0.1
SWEEP_MIN_S: Final = 0.002
_HEADER_ZEROS: Final = bytes(protocol.LENGTH.size)
_encode_into = protocol.client_encoder.encode_into
_decode = protocol.client_decoder.decode
_pack_length_into = protocol.LENGTH.pack_into


class _Broken:
    """What a request's future holds when no answer will come: why, and whether it had left."""

    __slots__ = ("reason", "sent_through", "timed_out")

    def __init__(self, reason: str, *, sent_through: int, timed_out: bool = False) -> None:
        self.reason = reason
        self.sent_through = sent_through  # requests with ids up to this one left the client
        self.timed_out = timed_out


Answer = Reply | Failure | _Broken


class _Refused(Exception):
    """The node refused the handshake for a reason another node would give too."""

    def __init__(self, error: ReplogClientError) -> None:
        super().__init__(str(error))
        self.error = error


def parse_endpoint(text: str) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``tcp://host:port`` as (host, port)."""
    item = text.strip()
    if "://" not in item:
        item = "tcp://" + item
    parts = urllib.parse.urlsplit(item)
    try:
        port = parts.port
    except ValueError:
        port = None
    if parts.scheme != "tcp" or not parts.hostname or port is None or parts.path not in ("", "/"):
        raise ValueError(f"not an RPC endpoint: {text!r} (example: 127.0.0.1:14500)")
    return parts.hostname, port


def _parse_endpoints(endpoints: str | Sequence[str]) -> tuple[tuple[str, int], ...]:
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    parsed = tuple(parse_endpoint(item) for item in items if item.strip())
    if not parsed:
        raise ValueError("no RPC endpoints given")
    return parsed


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


class _Connection(asyncio.Protocol):
    """One TCP connection: frames out (batched per loop turn), answers in, deadlines swept."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout_s: float, frame_max: int) -> None:
        self.loop = loop
        self.timeout_s = timeout_s
        self.sweep_s = max(SWEEP_MIN_S, min(SWEEP_MAX_S, timeout_s / 10))
        self.transport: asyncio.Transport | None = None
        self.reader = protocol.FrameReader(frame_max)
        self.pending: dict[int, tuple[asyncio.Future[Answer], float]] = {}
        self.welcome: asyncio.Future[Welcome | Failure | _Broken] = loop.create_future()
        self.header: Header | None = None
        self.closed = False
        self.retired = False  # no new requests: close once those in flight are answered
        self.reason = ""  # why the node said it would close (a Failure with an unknown id)
        self.writable: asyncio.Future[None] | None = None  # set while writing is paused
        self.node_frame_bytes_max = 0  # from Welcome; 0 until then (or if the node says none)
        self._out = bytearray()
        self._flush_scheduled = False
        self._sweep: asyncio.TimerHandle | None = None
        self._queued_through = 0  # the highest id in ``_out``
        self._sent_through = 0  # the highest id handed to the transport

    # -- outgoing ---------------------------------------------------------------------------

    def send(self, message: protocol.ClientMessage) -> None:
        """Queue one frame; the queue leaves in one write at the end of this loop turn (or
        before, see ``submit``)."""
        out = self._out
        start = len(out)
        out += _HEADER_ZEROS
        _encode_into(message, out, -1)
        _pack_length_into(out, start, len(out) - start - 4)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def submit(self, message: Write | Read) -> asyncio.Future[Answer]:
        """Send a request; its future receives the answer (or a ``_Broken``). A request over
        the node's frame limit is answered ``too_large`` here: sent, it would close the
        connection and every request in flight on it."""
        future: asyncio.Future[Answer] = self.loop.create_future()
        if self.closed:
            future.set_result(self._broken("the connection is closed"))
            return future
        start = len(self._out)
        self.send(message)
        size = len(self._out) - start - 4
        if 0 < self.node_frame_bytes_max < size:
            del self._out[start:]
            limit = self.node_frame_bytes_max
            message_ = f"the request is {size} bytes encoded, over the node's limit of {limit}"
            future.set_result(Failure(message.id, "too_large", message_))
            return future
        idle = not self.pending
        self.pending[message.id] = (future, self.loop.time() + self.timeout_s)
        self._queued_through = message.id
        if self._sweep is None:
            self._sweep = self.loop.call_later(self.sweep_s, self._expire)
        if idle:
            self._flush()  # a lone request leaves now; those of a busy connection batch
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.closed or self.transport is None or not self._out:
            return
        data, self._out = self._out, bytearray()
        self._sent_through = self._queued_through
        self.transport.write(data)

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        try:
            for body in self.reader.feed(data):
                message = _decode(body)
                if type(message) is Reply:
                    self.header = message.header
                    self._answer(message)
                elif type(message) is Failure:
                    if message.header is not None:
                        self.header = message.header
                    self._answer(message)
                elif type(message) is Welcome:
                    self._on_welcome(message)
        except (protocol.FrameError, msgspec.DecodeError) as error:
            self.abort(f"the node's answer does not decode: {error}")

    def _answer(self, message: Reply | Failure) -> None:
        entry = self.pending.pop(message.id, None)
        if entry is not None:
            if not entry[0].done():
                entry[0].set_result(message)
            if self.retired and not self.pending:
                self.close()
        elif type(message) is Failure:
            if not self.welcome.done():
                self.welcome.set_result(message)  # the handshake was refused
            elif message.code == protocol.GOING_AWAY:
                # The node read none of the requests still waiting: none of them applied.
                self._fail_all(f"{message.message}; it did not read the request", unread=True)
            else:
                self.reason = f"{message.code}: {message.message}"  # the node will close

    def _on_welcome(self, message: Welcome) -> None:
        if self.welcome.done():
            self.abort("the node sent a second Welcome")
        else:
            self.node_frame_bytes_max = message.frame_bytes_max
            self.welcome.set_result(message)

    def pause_writing(self) -> None:
        if self.writable is None:
            self.writable = self.loop.create_future()

    def resume_writing(self) -> None:
        writable, self.writable = self.writable, None
        if writable is not None and not writable.done():
            writable.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        cause = f": {exc}" if exc is not None else ""
        reason = self.reason or f"the node closed the connection{cause}"
        self._fail_all(f"connection lost ({reason})")

    # -- failure paths ------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Drop the connection now; every request in flight fails with ``reason``."""
        self.reason = self.reason or reason
        self._fail_all(reason)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self._fail_all("the client was closed")
        if self.transport is not None:
            self.transport.close()

    def retire(self) -> None:
        """Take no new requests; close once every request in flight has its answer."""
        self.retired = True
        if not self.pending:
            self.close()

    def _broken(self, reason: str, timed_out: bool = False) -> _Broken:
        return _Broken(reason, sent_through=self._sent_through, timed_out=timed_out)

    def _fail_all(self, reason: str, *, unread: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        broken = _Broken(reason, sent_through=0) if unread else self._broken(reason)
        pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_result(broken)
        if not self.welcome.done():
            self.welcome.set_result(broken)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        self.resume_writing()

    def _expire(self) -> None:
        self._sweep = None
        now = self.loop.time()
        due = []
        for request_id, (_, deadline) in self.pending.items():
            if deadline > now:
                break
            due.append(request_id)
        if due:
            broken = self._broken(f"no answer within {self.timeout_s:g} s", timed_out=True)
            for request_id in due:
                future = self.pending.pop(request_id)[0]
                if not future.done():
                    future.set_result(broken)
        if self.pending and not self.closed:
            self._sweep = self.loop.call_later(self.sweep_s, self._expire)
        elif self.retired:
            self.close()


class RpcClient:
    """A client of one replog cluster over the binary protocol (see the module docstring).

    Open it with ``await RpcClient.connect(endpoints)``; close it with ``await close()`` or
    ``async with``. Keys and values are ``str`` (UTF-8) or ``bytes``.
    """

    def __init__(
        self,
        endpoints: str | Sequence[str],
        *,
        cluster_id: str = "",
        timeout_s: float = 10.0,
        retry_timeout_s: float = RETRY_TIMEOUT_DEFAULT_S,
        session_id: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_DEFAULT_S,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    ) -> None:
        if not timeout_s > 0 or not connect_timeout_s > 0:
            raise ValueError("timeouts must be more than 0 seconds")
        if not retry_timeout_s >= 0:
            raise ValueError("retry_timeout_s must be 0 (no retries) or more")
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.endpoints = _parse_endpoints(endpoints)
        self.cluster_id = cluster_id
        self.timeout_s = timeout_s
        self.retry_timeout_s = retry_timeout_s
        self.session_id = None if session_id is None else check_session_id(session_id)
        self.connect_timeout_s = connect_timeout_s
        self.max_in_flight = max_in_flight
        self.frame_bytes_max = frame_bytes_max
        self._slots = asyncio.Semaphore(max_in_flight)
        self._connecting = asyncio.Lock()
        self._ids = itertools.count(1)
        self._conn: _Connection | None = None
        self._retired: list[_Connection] = []  # still answering what was sent on them
        self._writes = itertools.count(1)  # the session's sequence, for idempotency keys
        self._rng = random.Random()
        self._next_endpoint = 0
        self._endpoint = ""
        self._node_id = ""
        self._header: Header | None = None  # the last header of an earlier connection
        self._closed = False

    @classmethod
    async def connect(
        cls,
        endpoints: str | Sequence[str],
        *,
        cluster_id: str = "",
        timeout_s: float = 10.0,
        retry_timeout_s: float = RETRY_TIMEOUT_DEFAULT_S,
        session_id: str | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_DEFAULT_S,
        max_in_flight: int = MAX_IN_FLIGHT_DEFAULT,
        frame_bytes_max: int = FRAME_BYTES_MAX_DEFAULT,
    ) -> RpcClient:
        """A client connected to the first endpoint that answers (``Unavailable`` if none
        does within ``timeout_s``; the handshake's error if a node refuses it). Calls are
        retried for up to ``retry_timeout_s`` (0: never); given a ``session_id``, writes
        without an idempotency key get one (``<session_id>-<n>``)."""
        client = cls(
            endpoints,
            cluster_id=cluster_id,
            timeout_s=timeout_s,
            retry_timeout_s=retry_timeout_s,
            session_id=session_id,
            connect_timeout_s=connect_timeout_s,
            max_in_flight=max_in_flight,
            frame_bytes_max=frame_bytes_max,
        )
        await client._reconnect()
        return client

    # -- properties ---------------------------------------------------------------------------

    @property
    def header(self) -> Header | None:
        """The cluster header of the latest answer (None before the first one)."""
        conn = self._conn
        if conn is not None and conn.header is not None:
            return conn.header
        return self._header

    @property
    def node_id(self) -> str:
        """The id of the node this client is (or was last) connected to."""
        return self._node_id

    @property
    def endpoint(self) -> str:
        """The ``host:port`` this client is (or was last) connected to."""
        return self._endpoint

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    # -- writes -------------------------------------------------------------------------------

    async def put(
        self, key: str | bytes, value: str | bytes, *, idempotency_key: str | None = None
    ) -> PutResult:
        request = Request(Put(_bytes(key), _bytes(value)), idempotency_key)
        return await self._write(request, PutResult)

    async def delete(self, key: str | bytes, *, idempotency_key: str | None = None) -> DeleteResult:
        return await self._write(Request(Delete(_bytes(key)), idempotency_key), DeleteResult)

    async def txn(self, txn: Txn, *, idempotency_key: str | None = None) -> TxnResult:
        return await self._write(Request(txn, idempotency_key), TxnResult)

    # -- reads --------------------------------------------------------------------------------

    async def get(
        self, key: str | bytes, *, consistency: str = LINEARIZABLE, min_revision: int = 0
    ) -> KeyValue | None:
        """The key's current value, or None when it does not exist."""
        _check_read(consistency, min_revision)
        answer = await self._read(GetKey(_bytes(key)), consistency, min_revision)
        if isinstance(answer, Reply):
            return self._result(answer, GetResult).kv
        if answer.code == "key_not_found":
            return None
        raise self._failure_error(answer)

    async def range(
        self,
        prefix: str | bytes,
        *,
        limit: int = 1000,
        consistency: str = LINEARIZABLE,
        min_revision: int = 0,
    ) -> RangeResult:
        """The keys under ``prefix`` in byte order, at most ``limit`` of them."""
        _check_read(consistency, min_revision)
        if limit < 1:
            raise ValueError("limit must be at least 1")
        answer = await self._read(RangePrefix(_bytes(prefix), limit), consistency, min_revision)
        if isinstance(answer, Reply):
            return self._result(answer, RangeResult)
        raise self._failure_error(answer)

    # -- life ---------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection; requests in flight fail as on a lost connection."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            self._header = conn.header or self._header
        retired, self._retired = self._retired, []
        for each in [conn, *retired]:
            if each is not None:
                each.close()
        await asyncio.sleep(0)  # let the transports finish closing

    async def __aenter__(self) -> RpcClient:
        if not self.connected:
            await self._reconnect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- the request path ---------------------------------------------------------------------

    async def _write(self, request: Request, expected: type[T]) -> T:
        if request.idempotency_key is None and self.session_id is not None:
            key = f"{self.session_id}-{next(self._writes)}"
            request = Request(request.op, key, request.time_ms)
        retries = _Retries(self, request.idempotency_key)
        while True:
            try:
                request_id, answer = await self._attempt(lambda id_: Write(id_, request))
                if type(answer) is Reply:
                    return self._result(answer, expected)
                raise self._error(answer, request_id, is_write=True)
            except (Unavailable, UnknownOutcome) as error:
                await retries.pause(error)

    async def _read(
        self, query: GetKey | RangePrefix, consistency: str, min_revision: int
    ) -> Reply | Failure:
        """The answer to a read; a ``Failure`` only with a code that retrying cannot change."""
        retries = _Retries(self, None)
        while True:
            try:
                request_id, answer = await self._attempt(
                    lambda id_: Read(id_, query, consistency, min_revision)
                )
                if type(answer) is Reply or (
                    type(answer) is Failure and answer.code not in RETRYABLE_CODES
                ):
                    return answer
                raise self._error(answer, request_id, is_write=False)
            except Unavailable as error:
                await retries.pause(error)

    async def _attempt(self, message_of: Callable[[int], Write | Read]) -> tuple[int, Answer]:
        """Send one request; its id and answer. A connection that broke, timed out or whose
        node could not serve the request is retired: the next request goes to the next
        endpoint, while those already sent on it are answered there."""
        async with self._slots:
            conn = await self._connection()
            request_id = next(self._ids)
            answer = await conn.submit(message_of(request_id))
        if type(answer) is _Broken or (type(answer) is Failure and answer.code in RETRYABLE_CODES):
            self._retire(conn)
        return request_id, answer

    def _retire(self, conn: _Connection) -> None:
        if conn is self._conn:
            self._header = conn.header or self._header
            self._conn = None
        conn.retire()
        self._retired = [each for each in self._retired if not each.closed]
        if not conn.closed:
            self._retired.append(conn)

    async def _connection(self) -> _Connection:
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._reconnect()
        if conn.writable is not None:
            await conn.writable
        return conn

    def _result(self, reply: Reply, expected: type[T]) -> T:
        result = reply.result
        if type(result) is not expected:
            raise ServerError(
                f"expected a {expected.__name__}, the node answered a {type(result).__name__}",
                header=self._client_header(reply.header),
                endpoint=self._endpoint,
            )
        return result

    def _error(
        self, answer: Reply | Failure | _Broken, request_id: int, *, is_write: bool
    ) -> Exception:
        if type(answer) is Failure:
            return self._failure_error(answer)
        assert type(answer) is _Broken
        if answer.timed_out:
            cause: Exception = TimeoutError(answer.reason)
        else:
            cause = ConnectionError(answer.reason)
        if is_write and request_id <= answer.sent_through:
            error: ReplogClientError = UnknownOutcome(
                f"the write may or may not have been applied: {answer.reason}",
                endpoint=self._endpoint,
            )
        elif is_write:
            error = Unavailable(
                f"the write was not applied: {answer.reason}", endpoint=self._endpoint
            )
        else:
            error = Unavailable(f"the read failed: {answer.reason}", endpoint=self._endpoint)
        error.__cause__ = cause
        return error

    def _failure_error(self, failure: Failure) -> ReplogClientError:
        header = None if failure.header is None else self._client_header(failure.header)
        if failure.code == "revision_compacted":
            return RevisionCompacted(
                failure.message,
                compact_revision=0,
                code=failure.code,
                header=header,
                endpoint=self._endpoint,
            )
        cls = _BY_CODE.get(failure.code, ServerError)
        return cls(failure.message, code=failure.code, header=header, endpoint=self._endpoint)

    def _client_header(self, header: Header) -> ClientHeader:
        return ClientHeader(
            node_id=self._node_id,
            leader_id=header.leader_id,
            term=header.term,
            commit_index=header.commit_index,
            applied_index=header.applied_index,
            revision=header.revision,
        )

    # -- connecting ---------------------------------------------------------------------------

    async def _reconnect(self) -> _Connection:
        async with self._connecting:
            if self._closed:
                raise Unavailable("the client is closed", code="closed")
            conn = self._conn
            if conn is not None and not conn.closed:
                return conn  # another caller reconnected while this one waited
            if conn is not None:
                self._header = conn.header or self._header
                self._conn = None
            conn = await self._dial_any()
            self._conn = conn
            return conn

    async def _dial_any(self) -> _Connection:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        backoff_s = BACKOFF_MIN_S
        problems: dict[str, str] = {}
        while True:
            for _ in range(len(self.endpoints)):
                index = self._next_endpoint
                self._next_endpoint = (index + 1) % len(self.endpoints)
                address = self.endpoints[index]
                remaining_s = deadline - loop.time()
                if remaining_s <= 0:
                    break
                try:
                    return await self._dial(address, min(self.connect_timeout_s, remaining_s))
                except _Refused as refused:
                    raise refused.error from None
                except (OSError, TimeoutError, ReplogClientError) as error:
                    problems[_show(address)] = str(error) or type(error).__name__
            remaining_s = deadline - loop.time()
            if remaining_s <= 0:
                raise self._unreachable(problems)
            await asyncio.sleep(min(backoff_s, remaining_s))
            backoff_s = min(BACKOFF_MAX_S, backoff_s * 2)

    def _unreachable(self, problems: dict[str, str]) -> Unavailable:
        detail = "; ".join(f"{where}: {what}" for where, what in problems.items())
        return Unavailable(
            f"no endpoint answered within {self.timeout_s:g} s ({detail or 'no attempt made'})",
            code="unreachable",
        )

    async def _dial(self, address: tuple[str, int], timeout_s: float) -> _Connection:
        """A connection to ``address`` that has completed the handshake."""
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(timeout_s):
                _, conn = await loop.create_connection(
                    lambda: _Connection(loop, self.timeout_s, self.frame_bytes_max), *address
                )
                conn.send(protocol.Hello(protocol.VERSION, self.cluster_id))
                answer = await conn.welcome
        except BaseException:
            if conn is not None:
                conn.abort("the handshake did not complete")
            raise
        try:
            welcome = self._check_welcome(answer, _show(address))
        except BaseException:
            conn.abort("the handshake was refused")
            raise
        self._node_id = welcome.node_id
        self._endpoint = _show(address)
        return conn

    def _check_welcome(self, answer: Welcome | Failure | _Broken, where: str) -> Welcome:
        if type(answer) is _Broken:
            raise ConnectionError("the node closed the connection during the handshake")
        if type(answer) is Failure:
            error = self._failure_error(answer)
            error.endpoint = where
            if error.code == "unavailable":
                raise error  # this node cannot serve now; another may
            raise _Refused(error)
        assert type(answer) is Welcome
        if answer.version != protocol.VERSION:
            raise _Refused(
                InvalidRequest(
                    f"the node speaks protocol version {answer.version}, "
                    f"this client {protocol.VERSION}",
                    code="version_mismatch",
                    endpoint=where,
                )
            )
        if self.cluster_id and answer.cluster_id != self.cluster_id:
            raise _Refused(
                InvalidRequest(
                    f"the node is in cluster {answer.cluster_id!r}, not {self.cluster_id!r}",
                    code="cluster_mismatch",
                    endpoint=where,
                )
            )
        return answer


class _Retries:
    """The retries of one call: after each retryable failure a pause (exponential backoff with
    jitter), until ``retry_timeout_s`` has passed since the call began. Invariant: once an
    attempt of a write may have been applied, the call ends in success or ``UnknownOutcome``,
    never ``Unavailable`` (which promises that the write was not applied)."""

    def __init__(self, client: RpcClient, idempotency_key: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.client = client
        self.key = idempotency_key
        self.started = self.loop.time()
        self.attempts = 0
        self.maybe_applied = False

    async def pause(self, error: ReplogClientError) -> None:
        """Wait before the next attempt; raise the call's final error if there is none."""
        self.attempts += 1
        self.maybe_applied = self.maybe_applied or isinstance(error, UnknownOutcome)
        remaining_s = self.started + self.client.retry_timeout_s - self.loop.time()
        unsafe = self.maybe_applied and self.key is None  # sent again, it could apply twice
        if remaining_s <= 0 or unsafe or self.client._closed:
            raise self._final(error)
        await asyncio.sleep(retry_delay_s(self.attempts, remaining_s, self.client._rng))

    def _final(self, last: ReplogClientError) -> ReplogClientError:
        if self.attempts == 1:
            return last  # never retried: the error as it came
        elapsed_s = self.loop.time() - self.started
        within = f"{elapsed_s:.1f} s and {self.attempts} attempts"
        if self.maybe_applied and self.key is not None:
            error: ReplogClientError = outcome_unknown(self.key, within, last)
        else:
            message = f"gave up after {within}; last error: {last.message}"
            error = type(last)(message, code=last.code, header=last.header, endpoint=last.endpoint)
        error.__cause__ = last.__cause__
        return error


def _check_read(consistency: str, min_revision: int) -> None:
    if consistency not in CONSISTENCIES:
        raise ValueError(f"consistency must be one of {', '.join(CONSISTENCIES)}")
    if min_revision < 0:
        raise ValueError("min_revision must be 0 or more")
