"""How many client connections a node holds open, so that clients cannot take the file
descriptors its storage needs.

Every open connection holds a file descriptor, and so do the node's log segments, snapshot files
and peer links. Without a bound, clients that open connections and keep them (a pool sized for a
bigger cluster, a flood) took every descriptor the process may have: the next snapshot file
could not be created (``EMFILE``) and the node stopped with a storage failure. So:

* at start-up, ``raise_open_files_limit`` raises the soft limit on open files to the hard one,
  as the Go runtime does for etcd (the soft limit is often 1,024, the hard one far higher);
* ``ClientConnections`` admits at most ``limit`` client connections at a time, HTTP and binary
  protocol together, where ``limit`` is ``client_connections_max`` lowered, if need be, to keep
  ``RESERVED_FILES`` descriptors (or half of a small limit) for the node itself
  (``client_connections_limit``);
* a connection over the limit is answered at once, without reading a request, with an
  ``unavailable`` error that says why (HTTP 503 with the error body; a binary protocol
  ``Failure`` in place of ``Welcome``), and closed. A client retries on another node or later.
  Refusals hold a descriptor only while their answer leaves (for ``REFUSAL_LINGER_S`` at most,
  and only so many at a time, counted in the budget above; beyond that a connection is reset
  without an answer);
* an admitted connection that has not sent its first request within ``FIRST_REQUEST_S`` (HTTP:
  the request's whole header; the binary protocol: ``Hello``) is closed, so that connections
  opened and left idle cannot hold every place. Once a client has spoken, it may keep its
  connection idle: HTTP's keep-alive timeout (aiohttp's, 75 s) or the client decides.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any, cast

import msgspec
from aiohttp import web

log = logging.getLogger(__name__)

CONNECTIONS_DEFAULT = 10_000  # client_connections_max
# Descriptors kept for the node: inbound peer connections (the transport takes at most 256),
# outbound ones, the log, snapshots and the process's own.
RESERVED_FILES = 384
REFUSING_MAX = 64  # refusals whose answer may be leaving at once
REFUSAL_LINGER_S = 1.0  # how long a refused connection may take to close after its answer
# A new connection must have sent its first request by then (HTTP: the request's header; the
# binary protocol: Hello), or it is closed: idle connections cannot hold the places.
FIRST_REQUEST_S = 10.0


def raise_open_files_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; return the soft limit
    now in effect."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if resource.RLIM_INFINITY in (hard, soft) or soft >= hard:
        return int(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as error:
        log.warning("cannot raise the open files limit from %d to %d: %s", soft, hard, error)
        return int(soft)
    return int(hard)


def client_connections_limit(configured: int, open_files: int) -> tuple[int, int]:
    """How many client connections may be open at once, and how many refused ones may be
    answering at once: together at most ``open_files`` less ``RESERVED_FILES`` for the node
    (half of ``open_files`` when it is below twice that), the refusals a quarter of that at
    most; the first no more than ``configured``, neither below 1. A limit of
    ``resource.RLIM_INFINITY`` (-1) is taken as unbounded."""
    if open_files < 0:
        return configured, REFUSING_MAX
    usable = open_files - min(RESERVED_FILES, open_files // 2)
    refusing = max(1, min(REFUSING_MAX, usable // 4))
    return max(1, min(configured, usable - refusing)), refusing


class ClientConnections:
    """Counts the open client connections of one node against ``limit``."""

    def __init__(
        self,
        limit: int,
        node_name: str,
        *,
        refusing_max: int = REFUSING_MAX,
        on_refused: Callable[[], object] = lambda: None,
    ) -> None:
        assert limit >= 1 and refusing_max >= 1
        self.limit = limit
        self.refusing_max = refusing_max
        self.node_name = node_name
        self._on_refused = on_refused
        self.open = 0
        self.refused = 0  # since start
        self.refusing = 0  # refused connections whose answer may still be leaving

    def admit(self) -> bool:
        if self.open >= self.limit:
            self.refused += 1
            self._on_refused()
            return False
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def refusal_message(self) -> str:
        return (
            f"node {self.node_name} holds {self.open} client connections, its limit "
            f"(client_connections_max): try another node, or again later"
        )


class Refusal(asyncio.Protocol):
    """Sends ``answer`` and closes, reading and dropping whatever the client sends meanwhile
    (closing a socket with unread bytes resets it, and the client could lose the answer)."""

    def __init__(self, connections: ClientConnections, answer: Callable[[], bytes]) -> None:
        self._connections = connections
        self._answer = answer
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tr = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        if self._connections.refusing >= self._connections.refusing_max:
            tr.abort()
            return
        self._connections.refusing += 1
        tr.write(self._answer())
        if tr.can_write_eof():
            tr.write_eof()
        self._timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, tr.abort)

    def data_received(self, data: bytes) -> None:
        pass  # dropped

    def eof_received(self) -> bool:
        return False  # the client has read the answer and closed: close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._connections.refusing -= 1


class _CountedHttp(asyncio.Protocol):
    """``inner``, an admitted HTTP connection's protocol, released from the count when it
    ends, and closed if its first request's header has not arrived by ``FIRST_REQUEST_S``."""

    __slots__ = ("_connections", "_inner", "_tail", "_timer")

    def __init__(self, inner: asyncio.Protocol, connections: ClientConnections) -> None:
        self._inner = inner
        self._connections = connections
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes received while waiting for the header's end

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(FIRST_REQUEST_S, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.release()
        self._header_arrived()
        self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._header_arrived()
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def _header_arrived(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


def limited_http(
    make: Callable[[], asyncio.Protocol],
    connections: ClientConnections,
    refusal: Callable[[], bytes],
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server``: ``make()`` for an admitted HTTP
    connection, a refusal that sends ``refusal()`` for one over the limit."""

    def factory() -> asyncio.Protocol:
        if connections.admit():
            return _CountedHttp(make(), connections)
        return Refusal(connections, refusal)

    return factory


def http_refusal(header: Callable[[], dict[str, Any]], connections: ClientConnections) -> bytes:
    """A whole HTTP/1.1 503 answer with the API's error body, closing the connection."""
    body = msgspec.json.encode(
        {
            "header": header(),
            "error": {"code": "unavailable", "message": connections.refusal_message()},
        }
    )
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


class LimitedSite(web.BaseSite):
    """An aiohttp site on ``host:port`` whose connections count against ``connections``."""

    __slots__ = ("_connections", "_host", "_port", "_refusal")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        *,
        connections: ClientConnections,
        refusal: Callable[[], bytes],
        backlog: int,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._host, self._port = host, port
        self._connections = connections
        self._refusal = refusal

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        factory = limited_http(server, self._connections, self._refusal)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            factory, self._host, self._port, backlog=self._backlog, reuse_address=True
        )
