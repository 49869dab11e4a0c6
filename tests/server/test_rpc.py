"""The node's side of the binary client protocol, spoken by hand with raw frames."""

from __future__ import annotations

import asyncio
import itertools
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from replog import protocol
from replog.client import RpcClient
from replog.server import rpc as rpc_module
from replog.server.app import APPLY_LIMITS
from replog.server.http import Api, ApiOptions
from replog.server.node import Node, NodeOptions
from replog.server.rpc import RpcServer
from replog.statemachines import (
    Compare,
    Delete,
    DeleteResult,
    GetResult,
    KVLimits,
    KVStore,
    Put,
    PutResult,
    Request,
    Txn,
    TxnResult,
)
from replog.testing.processes import free_ports

FAST = NodeOptions(tick_ms=5, heartbeat_ms=20, election_timeout_ms=150, request_timeout_ms=3000)
LIMITS = KVLimits(key_bytes_max=64, value_bytes_max=1024, request_bytes_max=2048)


@dataclass
class Served:
    node: Node
    kv: KVStore
    rpc: RpcServer
    port: int


async def serve(tmp: Path, name: str, peers: dict[str, str], rpc_port: int) -> Served:
    kv = KVStore(limits=APPLY_LIMITS)
    node = Node(kv, name=name, data_dir=str(tmp / name), peers=peers, options=FAST)
    await node.start()
    rpc = RpcServer(Api(node, kv, ApiOptions("test", 2048, LIMITS, f"127.0.0.1:{rpc_port}")))
    await rpc.start("127.0.0.1", rpc_port)
    return Served(node, kv, rpc, rpc_port)


async def stop_node(served: Served) -> None:
    await served.rpc.close()
    if not served.node.stopped:
        await served.node.stop(transfer=False)


@pytest.fixture
async def single(tmp_path: Path) -> AsyncIterator[Served]:
    peer, rpc_port = free_ports(2)
    served = await serve(tmp_path, "n1", {"n1": f"127.0.0.1:{peer}"}, rpc_port)
    async with asyncio.timeout(5):
        while not served.node.is_leader:
            await asyncio.sleep(0.01)
    yield served
    await stop_node(served)


class Conn:
    """A bare connection: frames out, frames in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, hello: protocol.Hello | None = None) -> Conn:
        conn = cls(*await asyncio.open_connection("127.0.0.1", port))
        if hello is not None:
            conn.send(hello)
        return conn

    def send(self, message: object) -> None:
        self.writer.write(protocol.frame(protocol.client_encoder.encode(message)))

    async def receive(self) -> protocol.NodeMessage:
        async with asyncio.timeout(5):
            (length,) = protocol.LENGTH.unpack(await self.reader.readexactly(4))
            return protocol.client_decoder.decode(await self.reader.readexactly(length))

    async def closed(self) -> bool:
        """Whether the node closed the connection (nothing more came); closes our end."""
        async with asyncio.timeout(5):
            rest = await self.reader.read()
        self.close()
        return rest == b""

    def close(self) -> None:
        self.writer.close()


async def greeted(port: int) -> Conn:
    conn = await Conn.open(port, protocol.Hello(protocol.VERSION, "test"))
    welcome = await conn.receive()
    assert isinstance(welcome, protocol.Welcome)
    assert (welcome.node_id, welcome.cluster_id) == ("n1", "test")
    assert welcome.frame_bytes_max == 2048 + protocol.FRAME_OVERHEAD_BYTES
    return conn


def put(id: int, key: bytes, value: bytes, idempotency_key: str | None = None) -> protocol.Write:
    return protocol.Write(id, Request(Put(key, value), idempotency_key=idempotency_key))


async def test_write_then_read_with_headers(single: Served) -> None:
    conn = await greeted(single.port)
    conn.send(put(1, b"a", b"one"))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply) and reply.id == 1
    assert isinstance(reply.result, PutResult) and reply.result.kv.value == b"one"
    assert reply.header.leader_id == "n1" and reply.header.revision == reply.result.revision
    for consistency in protocol.CONSISTENCIES:
        conn.send(protocol.Read(2, protocol.GetKey(b"a"), consistency))
        answer = await conn.receive()
        assert isinstance(answer, protocol.Reply) and isinstance(answer.result, GetResult)
        assert answer.result.kv is not None and answer.result.kv.value == b"one"
    conn.close()


async def test_a_server_that_stops_taking_requests_still_answers_those_it_took(
    single: Served,
) -> None:
    conn = await greeted(single.port)
    for i in range(1, 21):
        conn.send(put(i, b"k%d" % i, b"v"))
    await conn.writer.drain()
    await asyncio.sleep(0.05)  # the node has read them
    single.rpc.stop_taking()
    conn.send(put(99, b"late", b"v"))
    answers = {answer.id: answer for answer in [await conn.receive() for _ in range(21)]}
    assert all(isinstance(answers[i], protocol.Reply) for i in range(1, 21))
    late = answers[99]
    assert isinstance(late, protocol.Failure) and late.code == "unavailable"  # not applied
    with pytest.raises(OSError):
        await Conn.open(single.port)  # no new connections either
    assert single.kv.get(b"late") is None
    conn.close()


async def test_a_closing_server_says_it_read_nothing_it_did_not_answer(single: Served) -> None:
    conn = await greeted(single.port)
    conn.send(put(1, b"read", b"v"))
    assert isinstance(await conn.receive(), protocol.Reply)
    conn.send(protocol.Read(2, protocol.GetKey(b"read"), min_revision=1_000))  # waits
    await asyncio.sleep(0.05)
    conn.send(put(3, b"unread", b"v"))  # reaches the socket, but the node stops reading first
    await single.rpc.close()
    read = await conn.receive()
    assert isinstance(read, protocol.Failure) and (read.id, read.code) == (2, "unavailable")
    farewell = await conn.receive()
    assert isinstance(farewell, protocol.Failure)
    assert (farewell.id, farewell.code) == (0, protocol.GOING_AWAY)
    assert await conn.closed()
    assert single.kv.get(b"unread") is None


async def test_a_server_with_a_write_awaiting_its_outcome_makes_no_such_promise(
    tmp_path: Path,
) -> None:
    peer, other, rpc_port = free_ports(3)
    peers = {"n1": f"127.0.0.1:{peer}", "n2": f"127.0.0.1:{other}"}  # n2 never runs
    served = await serve(tmp_path, "n1", peers, rpc_port)
    try:
        conn = await greeted(rpc_port)
        conn.send(put(1, b"k", b"v"))  # no leader: it waits
        await asyncio.sleep(0.05)
        await served.rpc.close()
        assert await conn.closed()  # no going_away: the write's outcome is not known
    finally:
        await stop_node(served)


async def test_many_requests_in_flight_are_each_answered_once(single: Served) -> None:
    conn = await greeted(single.port)
    for i in range(1, 501):
        conn.send(put(i, f"k{i % 50}".encode(), b"v" * 100))
    ids = []
    for _ in range(500):
        reply = await conn.receive()
        assert isinstance(reply, protocol.Reply), reply
        ids.append(reply.id)
    assert sorted(ids) == list(range(1, 501))
    assert single.kv.revision == 500
    conn.close()


async def test_range_delete_and_txn(single: Served) -> None:
    conn = await greeted(single.port)
    for i, key in enumerate((b"p/1", b"p/2", b"q/1")):
        conn.send(put(i + 1, key, b"x"))
        assert isinstance(await conn.receive(), protocol.Reply)
    conn.send(protocol.Read(9, protocol.RangePrefix(b"p/", 1)))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply) and isinstance(reply.result, protocol.RangeResult)
    assert [kv.key for kv in reply.result.kvs] == [b"p/1"]
    assert (reply.result.count, reply.result.more) == (2, True)
    conn.send(protocol.Write(10, Request(Delete(b"p/1"))))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply) and isinstance(reply.result, DeleteResult)
    assert reply.result.deleted == 1
    txn = Txn(compare=(Compare(b"q/1", "value", "==", b"x"),), success=(Put(b"q/1", b"y"),))
    conn.send(protocol.Write(11, Request(txn)))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply) and isinstance(reply.result, TxnResult)
    assert reply.result.succeeded and single.kv.get(b"q/1").value == b"y"  # type: ignore[union-attr]
    conn.close()


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (put(1, b"k" * 65, b"v"), "too_large"),
        (put(1, b"", b"v"), "invalid_request"),
        (put(1, b"k", b"v", idempotency_key="not valid"), "invalid_request"),
        (protocol.Read(1, protocol.GetKey(b"absent")), "key_not_found"),
        (protocol.Read(1, protocol.GetKey(b"")), "invalid_request"),
        (protocol.Read(1, protocol.GetKey(b"a"), "sometimes"), "invalid_request"),
        (protocol.Read(1, protocol.RangePrefix(b"", 0)), "invalid_request"),
        (protocol.Read(1, protocol.RangePrefix(b"", 10_001)), "invalid_request"),
    ],
)
async def test_bad_requests_fail_alone(single: Served, message: object, code: str) -> None:
    conn = await greeted(single.port)
    conn.send(message)
    failure = await conn.receive()
    assert isinstance(failure, protocol.Failure), failure
    assert (failure.id, failure.code) == (1, code)
    conn.send(put(2, b"still", b"open"))  # the connection serves on
    assert isinstance(await conn.receive(), protocol.Reply)
    assert single.kv.revision == 1
    conn.close()


async def test_idempotency_key_reused_for_another_write(single: Served) -> None:
    conn = await greeted(single.port)
    conn.send(put(1, b"k", b"v", idempotency_key="key-1"))
    first = await conn.receive()
    conn.send(put(2, b"k", b"v", idempotency_key="key-1"))
    again = await conn.receive()
    assert isinstance(first, protocol.Reply) and isinstance(again, protocol.Reply)
    assert first.result == again.result and single.kv.revision == 1
    conn.send(put(3, b"k", b"other", idempotency_key="key-1"))
    reused = await conn.receive()
    assert isinstance(reused, protocol.Failure) and reused.code == "idempotency_key_reused"
    conn.close()


async def test_a_connection_over_the_limit_is_refused_as_unavailable(single: Served) -> None:
    single.rpc.client_connections.limit = 1
    first = await greeted(single.port)
    over = await Conn.open(single.port, protocol.Hello(protocol.VERSION, "test"))
    failure = await over.receive()  # in place of Welcome
    assert isinstance(failure, protocol.Failure) and failure.code == "unavailable"
    assert "client_connections_max" in failure.message
    assert await over.closed()
    assert single.rpc.client_connections.refused == 1
    first.close()
    async with asyncio.timeout(5):
        while single.rpc.client_connections.open:
            await asyncio.sleep(0.01)
    again = await greeted(single.port)  # the closed connection's place is free again
    again.send(put(1, b"k", b"v"))
    assert isinstance(await again.receive(), protocol.Reply)
    again.close()


async def test_a_connection_that_sends_no_hello_in_time_is_closed(
    single: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rpc_module, "FIRST_REQUEST_S", 0.2)
    silent = await Conn.open(single.port)
    spoke = await greeted(single.port)
    failure = await silent.receive()
    assert isinstance(failure, protocol.Failure) and failure.code == "invalid_request"
    assert "no Hello" in failure.message
    assert await silent.closed()
    await asyncio.sleep(0.3)
    spoke.send(put(1, b"k", b"v"))  # a greeted connection may stay idle
    assert isinstance(await spoke.receive(), protocol.Reply)
    spoke.close()


@pytest.mark.parametrize(
    ("hello", "problem"),
    [
        (protocol.Hello(protocol.VERSION + 1, ""), "version_mismatch"),
        (protocol.Hello(protocol.VERSION, "another"), "cluster_mismatch"),
        (put(1, b"k", b"v"), "invalid_request"),
    ],
)
async def test_a_bad_handshake_is_refused(single: Served, hello: object, problem: str) -> None:
    conn = await Conn.open(single.port)
    conn.send(hello)
    failure = await conn.receive()
    assert isinstance(failure, protocol.Failure) and failure.code == problem
    assert await conn.closed()
    assert single.kv.revision == 0


async def test_garbage_and_oversized_frames_close_the_connection(single: Served) -> None:
    conn = await greeted(single.port)
    conn.writer.write(protocol.frame(b"\xc1 not msgpack"))
    failure = await conn.receive()
    assert isinstance(failure, protocol.Failure) and failure.code == "invalid_request"
    assert await conn.closed()
    conn = await greeted(single.port)
    conn.writer.write(struct.pack(">I", 2048 + protocol.FRAME_OVERHEAD_BYTES + 1))
    failure = await conn.receive()
    assert isinstance(failure, protocol.Failure) and failure.code == "too_large"
    assert await conn.closed()
    conn = await greeted(single.port)  # the node serves on
    conn.send(put(1, b"k", b"v"))
    assert isinstance(await conn.receive(), protocol.Reply)
    conn.close()


async def test_a_client_that_leaves_mid_write_harms_nothing(single: Served) -> None:
    conn = await greeted(single.port)
    for i in range(1, 101):
        conn.send(put(i, b"k", b"v"))
    await conn.writer.drain()
    conn.close()
    conn = await greeted(single.port)
    conn.send(protocol.Read(1, protocol.GetKey(b"k")))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply)
    assert 0 < single.kv.revision <= 100
    conn.close()


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[list[Served]]:
    """Three served nodes, once one of them leads."""
    ports = free_ports(6)
    peers = {f"n{i + 1}": f"127.0.0.1:{ports[i]}" for i in range(3)}
    nodes = [await serve(tmp_path, name, peers, ports[3 + i]) for i, name in enumerate(peers)]
    try:
        async with asyncio.timeout(5):
            while not any(s.node.is_leader for s in nodes):
                await asyncio.sleep(0.01)
        yield nodes
    finally:
        for served in nodes:
            await stop_node(served)


async def test_a_follower_serves_writes_and_linearizable_reads(three: list[Served]) -> None:
    follower = next(s for s in three if not s.node.is_leader)
    conn = await Conn.open(follower.port, protocol.Hello(protocol.VERSION))
    assert isinstance(await conn.receive(), protocol.Welcome)
    conn.send(put(1, b"k", b"from a follower"))
    reply = await conn.receive()
    assert isinstance(reply, protocol.Reply) and isinstance(reply.result, PutResult)
    conn.send(protocol.Read(2, protocol.GetKey(b"k")))
    read = await conn.receive()
    assert isinstance(read, protocol.Reply) and isinstance(read.result, GetResult)
    assert read.result.kv is not None and read.result.kv.value == b"from a follower"
    conn.close()


async def test_writers_that_retry_lose_nothing_when_the_leader_stops_cleanly(
    three: list[Served],
) -> None:
    """The stop of ``replog serve`` (stop taking requests, hand leadership over, close)
    under 8 writers of one ``RpcClient`` with its default retries: no call fails, and every
    acknowledged write is there afterwards."""
    leader = next(s for s in three if s.node.is_leader)
    order = [leader] + [s for s in three if s is not leader]
    client = await RpcClient.connect([f"127.0.0.1:{s.port}" for s in order])
    acknowledged: list[bytes] = []
    errors: list[Exception] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        for i in itertools.count():
            if stop.is_set():
                return
            key = f"w{w}/{i}".encode()
            try:
                await client.put(key, b"v")
            except Exception as error:
                errors.append(error)
            else:
                acknowledged.append(key)

    writers = [asyncio.create_task(writer(w)) for w in range(8)]
    while len(acknowledged) < 200:
        await asyncio.sleep(0.01)
    leader.rpc.stop_taking()
    await leader.node.drain(2.0)
    await stop_node(leader)
    count = len(acknowledged)
    async with asyncio.timeout(10):
        while len(acknowledged) < count + 200:
            await asyncio.sleep(0.01)
    stop.set()
    await asyncio.gather(*writers)
    assert errors == []
    assert client.node_id != leader.node.name
    for key in acknowledged:
        kv = await client.get(key)
        assert kv is not None and kv.value == b"v"
    await client.close()


def test_frame_reader_cuts_frames_across_reads() -> None:
    reader = protocol.FrameReader(100)
    stream = b"".join(protocol.frame(bytes([i]) * i) for i in range(1, 30))
    got: list[bytes] = []
    for start in range(0, len(stream), 7):
        got.extend(bytes(f) for f in reader.feed(stream[start : start + 7]))
    assert got == [bytes([i]) * i for i in range(1, 30)]
    with pytest.raises(protocol.FrameError):
        reader.feed(struct.pack(">I", 101))


def test_messages_round_trip_strictly() -> None:
    message = put(7, b"k", b"v", idempotency_key="id")
    data = protocol.client_encoder.encode(message)
    assert protocol.node_decoder.decode(data) == message
    with pytest.raises(msgspec.DecodeError):
        protocol.node_decoder.decode(protocol.client_encoder.encode(protocol.Welcome(1, "n", "c")))


def _connect_burst(port: int, count: int, within_s: float) -> int:
    """Open ``count`` connections at once; how many the kernel completed within the time."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            sockets.append(sock)
        time.sleep(within_s)
        connected = 0
        for sock in sockets:
            try:
                sock.getpeername()
            except OSError:
                continue
            connected += 1
        return connected
    finally:
        for sock in sockets:
            sock.close()


async def test_a_burst_of_connections_waits_in_the_listen_queue(single: Served) -> None:
    """A thousand clients connecting at once while the node is busy: the kernel completes
    their handshakes into a long listen queue instead of dropping SYNs (which clients retry
    only after 1, 3 and 7 s)."""
    # The node's loop is blocked for the whole burst, as when it is saturated.
    assert _connect_burst(single.port, 1000, within_s=0.3) == 1000
