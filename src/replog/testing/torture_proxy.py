"""A userspace TCP proxy between node processes: one listening port per directed peer link.

Theory of operation. replog's peer connections are one-directional: node i dials node j to send
its Raft messages, and only the transport's pongs flow back on that connection. So the harness
gives node i, for every other member j, the address of a proxy port that stands for the directed
link i->j and forwards to j's real peer port. Each link has a state:

- ``pass``: bytes flow both ways (after ``delay_ms`` in the i->j direction, if set);
- ``drop`` (blackhole): connections are accepted and kept open, but every byte in both
  directions is read and discarded, as on a network that loses everything silently;
- ``cut``: open connections are closed and new ones are closed as soon as they are accepted,
  as on a network that answers with resets.

Partitions of any shape, one-way ones included, are sets of link states. The proxy runs its own
asyncio loop in a daemon thread; the public methods are blocking and thread-safe. Invariants:
a link's state applies to every byte read after the change (buffered delayed bytes of a link that
turns ``drop`` or ``cut`` are discarded); memory is bounded (``QUEUE_CHUNKS_MAX`` chunks of at most
``CHUNK_BYTES`` per connection direction, and ``CONNECTIONS_MAX`` connections per link).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

LinkMode = Literal["pass", "drop", "cut"]
LINK_MODES: tuple[LinkMode, ...] = ("pass", "drop", "cut")
CHUNK_BYTES = 64 * 1024
QUEUE_CHUNKS_MAX = 256
CONNECTIONS_MAX = 64
CALL_TIMEOUT_S = 10.0
DELAY_MS_MAX = 60_000

T = TypeVar("T")


@dataclass
class _Link:
    src: str
    dst: str
    target_port: int
    mode: LinkMode = "pass"
    delay_ms: int = 0
    port: int = 0
    server: asyncio.Server | None = None
    connections: set[_Connection] = field(default_factory=set)


@dataclass(eq=False)
class _Connection:
    tasks: list[asyncio.Task[None]]
    writers: tuple[asyncio.StreamWriter, ...]

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for writer in self.writers:
            writer.close()


class PeerProxy:
    """Directed links ``src->dst`` on 127.0.0.1; ``add_link`` returns the port ``src`` dials."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="proxy")
        self._links: dict[tuple[str, str], _Link] = {}
        self._thread.start()

    # --- public, blocking, thread-safe ---

    def add_link(self, src: str, dst: str, target_port: int) -> int:
        """Listen for the directed link ``src->dst`` (forwarding to ``target_port``)."""
        if (src, dst) in self._links:
            raise ValueError(f"link {src}->{dst} exists already")
        link = _Link(src, dst, target_port)
        self._call(self._listen(link))
        self._links[(src, dst)] = link
        return link.port

    def port(self, src: str, dst: str) -> int:
        return self._link(src, dst).port

    def set_link(self, src: str, dst: str, mode: LinkMode = "pass", delay_ms: int = 0) -> None:
        """Set one directed link's state (see the module docstring)."""
        if mode not in LINK_MODES:
            raise ValueError(f"link mode must be one of {LINK_MODES}: {mode!r}")
        if not 0 <= delay_ms <= DELAY_MS_MAX:
            raise ValueError(f"delay_ms must be in 0..{DELAY_MS_MAX}: {delay_ms}")
        link = self._link(src, dst)
        self._call(self._set(link, mode, delay_ms))

    def heal_all(self) -> None:
        """Every link back to ``pass`` without delay."""
        for link in list(self._links.values()):
            self._call(self._set(link, "pass", 0))

    def links(self) -> dict[tuple[str, str], tuple[LinkMode, int]]:
        return {key: (link.mode, link.delay_ms) for key, link in self._links.items()}

    def close(self) -> None:
        if self._loop.is_closed():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=CALL_TIMEOUT_S)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self) -> PeerProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- on the proxy's loop ---

    def _link(self, src: str, dst: str) -> _Link:
        try:
            return self._links[(src, dst)]
        except KeyError:
            raise ValueError(f"no link {src}->{dst}") from None

    def _call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(CALL_TIMEOUT_S)

    async def _listen(self, link: _Link) -> None:
        async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._accept(link, reader, writer)

        link.server = await asyncio.start_server(accept, "127.0.0.1", 0)
        link.port = link.server.sockets[0].getsockname()[1]

    async def _set(self, link: _Link, mode: LinkMode, delay_ms: int) -> None:
        link.mode, link.delay_ms = mode, delay_ms
        if mode == "cut":
            for connection in list(link.connections):
                connection.close()
            link.connections.clear()

    async def _close_all(self) -> None:
        for link in self._links.values():
            for connection in list(link.connections):
                connection.close()
            link.connections.clear()
            if link.server is not None:
                link.server.close()

    async def _accept(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if link.mode == "cut" or len(link.connections) >= CONNECTIONS_MAX:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", link.target_port)
        except OSError:
            writer.close()  # the node is down: the dialer sees the connection close
            return
        forward = asyncio.create_task(self._pump(link, reader, up_writer, delayed=True))
        backward = asyncio.create_task(self._pump(link, up_reader, writer, delayed=False))
        connection = _Connection([forward, backward], (writer, up_writer))
        link.connections.add(connection)
        try:
            await asyncio.wait([forward, backward], return_when=asyncio.FIRST_COMPLETED)
        finally:
            connection.close()
            link.connections.discard(connection)

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        delayed: bool,
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS_MAX)
        sender = asyncio.create_task(self._send(link, queue, writer))
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await reader.read(CHUNK_BYTES)
                except OSError:
                    break
                if not data:
                    break
                if link.mode != "pass":
                    continue  # drop: read and discard (cut closes the connection itself)
                delay_s = link.delay_ms / 1000 if delayed else 0.0
                await queue.put((loop.time() + delay_s, data))
            await queue.put(None)
            await sender
        finally:
            sender.cancel()

    @staticmethod
    async def _send(
        link: _Link,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
    ) -> None:
        loop = asyncio.get_running_loop()
        while (item := await queue.get()) is not None:
            due, data = item
            wait_s = due - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            if link.mode != "pass":
                continue  # the link failed while the bytes were in flight
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                return
        with contextlib.suppress(OSError):
            writer.write_eof()
