"""PeerTransport on 127.0.0.1: delivery in order, late and restarting peers, bounds, handshake
rejections, frame limits, round-trip times and a prompt, clean close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgspec
import pytest

from replog.core.types import AppendEntries, Entry, Heartbeat, Message, TimeoutNow
from replog.transport import PeerTransport, loopback_cluster
from replog.transport import tcp as tcp_module
from replog.transport.codec import (
    FRAME_HEADER,
    MAGIC,
    WIRE_VERSION,
    Hello,
    Ping,
    decode_pong,
    encode_control,
    encode_message,
)

CLUSTER = "test-cluster"
LOCALHOST = "127.0.0.1"
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.1, "connect_timeout_s": 0.5}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return int(probe.getsockname()[1])


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


class Node:
    def __init__(self, transport: PeerTransport, received: list[Message]) -> None:
        self.transport = transport
        self.received = received

    @property
    def address(self) -> tuple[str, int]:
        return self.transport.listen_address

    def read_seqs(self, sender: int) -> list[int]:
        return [
            m.read_seq for m in self.received if isinstance(m, Heartbeat) and m.sender == sender
        ]


Factory = Callable[..., Any]
Address = tuple[str, int]


@pytest.fixture
async def make_node() -> AsyncIterator[Factory]:
    """Starts transports; every one is closed at the end of the test."""
    made: list[PeerTransport] = []

    async def make(
        node_id: int, peers: dict[int, tuple[str, int]] | None = None, **kw: Any
    ) -> Node:
        received: list[Message] = []
        options = {**FAST, **kw}
        port = options.pop("port", 0)
        transport = PeerTransport(
            node_id=node_id,
            cluster_id=options.pop("cluster_id", CLUSTER),
            listen=(LOCALHOST, port),
            peers=peers or {},
            on_message=received.append,
            **options,
        )
        made.append(transport)
        await transport.start()
        return Node(transport, received)

    yield make
    for transport in made:
        await transport.close()


async def connect_all(nodes: list[Node]) -> None:
    peers = {n.transport.node_id: n.address for n in nodes}
    for n in nodes:
        n.transport.set_peers(peers)


def heartbeat(sender: int, receiver: int, seq: int) -> Heartbeat:
    return Heartbeat(term=1, sender=sender, receiver=receiver, leader_commit=0, read_seq=seq)


# ---- delivery --------------------------------------------------------------------------------


async def test_two_transports_exchange_messages_in_order(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    await connect_all([a, b])
    for seq in range(1, 2001):
        assert a.transport.send(heartbeat(1, 2, seq))
        assert b.transport.send(heartbeat(2, 1, seq))
    await until(lambda: len(a.received) == 2000 and len(b.received) == 2000)
    assert b.read_seqs(1) == list(range(1, 2001))
    assert a.read_seqs(2) == list(range(1, 2001))
    await until(lambda: a.transport.stats()[2].sent_messages == 2000)
    stats = a.transport.stats()[2]
    assert stats.connected and stats.queued_messages == 0 and stats.queued_bytes == 0
    assert stats.dropped_messages == stats.send_failures == stats.reconnects == 0


async def test_a_flushed_send_wakes_no_writer_and_an_unflushed_one_is_delivered(
    make_node: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``flush`` writes at once, so the writer task is not woken for it; a send nobody flushes
    wakes the writer at the end of the loop turn."""
    monkeypatch.setattr(tcp_module, "PING_INTERVAL_S", 60.0)  # no ping wakes it meanwhile
    a, b = await make_node(1), await make_node(2)
    await connect_all([a, b])
    await until(lambda: a.transport.stats()[2].connected)
    wakeup = a.transport._links[2].wakeup
    wakeups: list[None] = []
    set_event = wakeup.set
    wakeup.set = lambda: (wakeups.append(None), set_event())[1]  # type: ignore[method-assign]
    assert a.transport.send(heartbeat(1, 2, 1))
    a.transport.flush()
    await until(lambda: b.read_seqs(1) == [1])
    await asyncio.sleep(0.01)
    assert wakeups == []
    assert a.transport.send(heartbeat(1, 2, 2))  # not flushed: the writer sends it
    await until(lambda: b.read_seqs(1) == [1, 2])
    assert len(wakeups) == 1


async def test_three_transports_all_to_all(make_node: Factory) -> None:
    nodes = [await make_node(i) for i in (1, 2, 3)]
    await connect_all(nodes)
    for n in nodes:
        me = n.transport.node_id
        for other in (1, 2, 3):
            if other != me:
                for seq in range(100):
                    assert n.transport.send(heartbeat(me, other, seq))
    await until(lambda: all(len(n.received) == 200 for n in nodes))
    for n in nodes:
        for other in (1, 2, 3):
            if other != n.transport.node_id:
                assert n.read_seqs(other) == list(range(100))


async def test_large_messages_arrive_whole(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    await connect_all([a, b])
    big = AppendEntries(
        2, 1, 2, 0, 0, tuple(Entry(i, 2, data=bytes([i]) * (1 << 20)) for i in range(1, 5)), 0
    )
    for _ in range(3):
        assert a.transport.send(big)
    await until(lambda: len(b.received) == 3)
    assert b.received == [big, big, big]


async def test_a_late_peer_gets_the_queued_messages(make_node: Factory) -> None:
    port = free_port()
    a = await make_node(1, {2: (LOCALHOST, port)})
    for seq in range(50):
        assert a.transport.send(heartbeat(1, 2, seq))
    await until(lambda: a.transport.stats()[2].connect_failures >= 2)
    stats = a.transport.stats()[2]
    assert not stats.connected and stats.queued_messages == 50 and stats.queued_bytes > 0
    b = await make_node(2, port=port)
    await until(lambda: len(b.received) == 50)
    assert b.read_seqs(1) == list(range(50))


async def test_a_restarted_peer_is_redialed(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    port = b.address[1]
    await connect_all([a, b])
    assert a.transport.send(heartbeat(1, 2, 1))
    await until(lambda: b.read_seqs(1) == [1])
    await b.transport.close()
    await until(lambda: not a.transport.stats()[2].connected)
    for seq in range(2, 12):
        assert a.transport.send(heartbeat(1, 2, seq))
    b2 = await make_node(2, port=port)
    await until(lambda: len(b2.received) == 10)
    assert b2.read_seqs(1) == list(range(2, 12))
    assert a.transport.stats()[2].reconnects >= 1


async def test_the_queue_is_bounded_by_count_and_bytes(make_node: Factory) -> None:
    port = free_port()
    a = await make_node(1, {2: (LOCALHOST, port)}, queue_max_messages=5, queue_max_bytes=1 << 20)
    results = [a.transport.send(heartbeat(1, 2, seq)) for seq in range(8)]
    assert results == [True] * 5 + [False] * 3
    stats = a.transport.stats()[2]
    assert stats.dropped_messages == 3 and stats.queued_messages == 5

    c = await make_node(3, {2: (LOCALHOST, port)}, queue_max_bytes=3000)
    entry = Entry(1, 1, data=bytes(1000))
    append = AppendEntries(1, 3, 2, 0, 0, (entry,), 0)
    assert [c.transport.send(append) for _ in range(4)] == [True, True, False, False]
    assert c.transport.stats()[2].queued_bytes <= 3000
    assert c.transport.stats()[2].dropped_messages == 2

    d = await make_node(4, {2: (LOCALHOST, port)}, queue_max_bytes=3000)
    huge = AppendEntries(1, 4, 2, 0, 0, (Entry(1, 1, data=bytes(10_000)),), 0)
    assert d.transport.send(huge)  # an empty queue takes one message of any size
    assert not d.transport.send(heartbeat(4, 2, 1))


async def test_sending_to_an_unknown_node_is_a_counted_drop(make_node: Factory) -> None:
    a = await make_node(1)
    assert not a.transport.send(heartbeat(1, 9, 1))
    assert a.transport.unknown_receiver_drops == 1


async def test_peers_can_be_added_removed_and_readdressed(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    a.transport.set_peers({1: a.address, 2: b.address})
    assert set(a.transport.stats()) == {2}
    assert a.transport.send(heartbeat(1, 2, 1))
    await until(lambda: b.read_seqs(1) == [1])
    a.transport.set_peers({})
    assert not a.transport.send(heartbeat(1, 2, 2))
    b2 = await make_node(2)
    a.transport.set_peers({2: b.address})
    a.transport.set_peers({2: b2.address})
    assert a.transport.send(heartbeat(1, 2, 3))
    await until(lambda: b2.read_seqs(1) == [3])
    with pytest.raises(ValueError, match="address"):
        a.transport.set_peers({2: ("host",)})


async def test_oversized_messages_are_refused_by_the_sender(make_node: Factory) -> None:
    a, b = await make_node(1, frame_max_bytes=4096), await make_node(2)
    await connect_all([a, b])
    too_big = AppendEntries(1, 1, 2, 0, 0, (Entry(1, 1, data=bytes(8000)),), 0)
    assert a.transport.send(too_big)
    assert a.transport.send(heartbeat(1, 2, 7))
    await until(lambda: b.read_seqs(1) == [7])
    assert a.transport.stats()[2].send_failures == 1
    assert b.received == [heartbeat(1, 2, 7)]


# ---- round-trip time and close ---------------------------------------------------------------


async def test_round_trip_time_is_measured(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    samples: list[tuple[int, float]] = []
    a.transport.on_rtt = lambda peer, rtt_s: samples.append((peer, rtt_s))
    await connect_all([a, b])
    await until(lambda: a.transport.stats()[2].rtt_s is not None)
    rtt_s = a.transport.stats()[2].rtt_s
    assert rtt_s is not None and 0 < rtt_s < 5
    assert samples and samples[0][0] == 2


async def test_close_is_prompt_and_leaves_no_tasks(make_node: Factory) -> None:
    nodes = [await make_node(i) for i in (1, 2, 3)]
    await connect_all(nodes)
    unreachable = free_port()
    nodes[0].transport.set_peers({2: nodes[1].address, 4: (LOCALHOST, unreachable)})
    for seq in range(100):
        nodes[0].transport.send(heartbeat(1, 2, seq))
        nodes[0].transport.send(heartbeat(1, 4, seq))
    await until(
        lambda: all(
            n.transport.stats()[k].connected for n in nodes for k in n.transport.stats() if k != 4
        )
    )
    started = time.monotonic()
    for n in nodes:
        await n.transport.close()
        await n.transport.close()  # idempotent
    assert time.monotonic() - started < 1.0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    assert not nodes[0].transport.send(heartbeat(1, 2, 1))


# ---- the receiving side: handshake, framing, bad input ---------------------------------------


def frame(body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body)) + body


def hello(**fields: Any) -> bytes:
    values: dict[str, Any] = {
        "magic": MAGIC,
        "version": WIRE_VERSION,
        "cluster_id": CLUSTER,
        "sender": 7,
        "receiver": 1,
    }
    values.update(fields)
    return frame(encode_control(Hello(**values)))


async def raw_connection(
    node: Node, data: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(*node.address)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """True when the other side closed the connection (read hits end of stream or a reset)."""
    try:
        data = await asyncio.wait_for(reader.read(1 << 16), timeout=5)
    except ConnectionError:
        data = b""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return data == b""


@pytest.mark.parametrize(
    ("data", "logged"),
    [
        (hello(cluster_id="other"), "cluster 'other'"),
        (hello(receiver=5), "dialed node 5"),
        (hello(version=WIRE_VERSION + 1), "newer than ours"),
        (hello(magic="http"), "not a replog peer"),
        (hello(sender=1), "claims node id 1"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "exceeds the limit"),
        (frame(b"\x93\x01\x02\x03"), "not a replog peer"),
        (frame(encode_message(heartbeat(7, 1, 1))), "not a replog peer"),
    ],
    ids=["cluster", "receiver", "version", "magic", "self", "http", "garbage", "no-hello"],
)
async def test_bad_handshakes_are_rejected_and_logged(
    make_node: Factory, caplog: pytest.LogCaptureFixture, data: bytes, logged: str
) -> None:
    node = await make_node(1)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        reader, writer = await raw_connection(node, data)
        assert await closed_by_peer(reader, writer)
    assert logged in caplog.text
    assert node.received == []
    await assert_still_serves(node, make_node)


async def assert_still_serves(node: Node, make_node: Factory) -> None:
    peer_id = 100 + len(node.transport.stats())
    peer = await make_node(peer_id, {node.transport.node_id: node.address})
    assert peer.transport.send(heartbeat(peer_id, node.transport.node_id, 1))
    await until(lambda: any(m.sender == peer_id for m in node.received))


async def test_a_silent_connection_times_out(
    make_node: Factory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_module, "HANDSHAKE_TIMEOUT_S", 0.05)
    node = await make_node(1)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        reader, writer = await raw_connection(node, b"")
        assert await closed_by_peer(reader, writer)
    assert "no handshake" in caplog.text


async def test_a_frame_over_the_limit_closes_the_connection(
    make_node: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    node = await make_node(1, frame_max_bytes=1024)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        reader, writer = await raw_connection(
            node, hello() + frame(encode_message(heartbeat(7, 1, 1))) + FRAME_HEADER.pack(1025)
        )
        assert await closed_by_peer(reader, writer)
    assert "1025-byte frame exceeds the limit of 1024" in caplog.text
    assert node.read_seqs(7) == [1]
    await assert_still_serves(node, make_node)


async def test_a_malformed_message_closes_the_connection(
    make_node: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    node = await make_node(1)
    bad = frame(msgspec.msgpack.encode([5, -1, 7, 1, 0, 0]))
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        reader, writer = await raw_connection(node, hello() + bad)
        assert await closed_by_peer(reader, writer)
    assert "closing inbound connection from peer 7" in caplog.text
    assert node.received == []


async def test_misaddressed_messages_are_dropped(make_node: Factory) -> None:
    node = await make_node(1)
    data = (
        hello()
        + frame(encode_message(heartbeat(7, 2, 1)))  # for another node
        + frame(encode_message(heartbeat(8, 1, 2)))  # not from the connection's sender
        + frame(encode_message(TimeoutNow(1, 7, 1)))
    )
    _reader, writer = await raw_connection(node, data)
    await until(lambda: len(node.received) == 1)
    assert node.received == [TimeoutNow(1, 7, 1)]
    assert node.transport.misaddressed_drops == 2
    writer.close()
    await writer.wait_closed()


async def test_pings_are_answered_with_pongs(make_node: Factory) -> None:
    node = await make_node(1)
    reader, writer = await raw_connection(node, hello() + frame(encode_control(Ping(42))))
    header = await asyncio.wait_for(reader.readexactly(FRAME_HEADER.size), timeout=5)
    body = await reader.readexactly(FRAME_HEADER.unpack(header)[0])
    assert decode_pong(body).seq == 42
    writer.close()
    await writer.wait_closed()


async def test_a_burst_of_frames_does_not_starve_the_loop(make_node: Factory) -> None:
    node = await make_node(1)
    count = 20 * tcp_module.FRAMES_PER_TURN
    burst = hello() + b"".join(frame(encode_message(heartbeat(7, 1, s))) for s in range(count))
    seen: list[int] = []

    async def watch() -> None:
        while len(node.received) < count:
            seen.append(len(node.received))
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())
    _reader, writer = await raw_connection(node, burst)
    await asyncio.wait_for(watcher, timeout=10)
    assert node.read_seqs(7) == list(range(count))
    assert any(0 < n < count for n in seen)
    writer.close()
    await writer.wait_closed()


async def test_a_redial_replaces_the_older_inbound_connection(make_node: Factory) -> None:
    node = await make_node(1)
    first_reader, first_writer = await raw_connection(node, hello())
    _second_reader, second_writer = await raw_connection(
        node, hello() + frame(encode_message(heartbeat(7, 1, 5)))
    )
    await until(lambda: node.read_seqs(7) == [5])
    assert await closed_by_peer(first_reader, first_writer)
    second_writer.close()
    await second_writer.wait_closed()


async def test_a_transport_of_another_cluster_never_delivers(
    make_node: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    b = await make_node(2)
    a = await make_node(1, {2: b.address}, cluster_id="elsewhere")
    assert a.transport.send(heartbeat(1, 2, 1))
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        await until(lambda: a.transport.stats()[2].reconnects >= 2)
    assert b.received == []
    assert a.transport.stats()[2].rtt_s is None
    assert "cluster 'elsewhere'" in caplog.text


def test_bad_arguments_are_refused() -> None:
    def make(**kw: Any) -> PeerTransport:
        args: dict[str, Any] = {
            "node_id": 1,
            "cluster_id": "c",
            "listen": (LOCALHOST, 0),
            "peers": {},
            "on_message": lambda m: None,
        }
        args.update(kw)
        return PeerTransport(**args)

    with pytest.raises(ValueError, match="node_id"):
        make(node_id=0)
    with pytest.raises(ValueError, match="cluster_id"):
        make(cluster_id="")
    with pytest.raises(ValueError, match="queue_max_messages"):
        make(queue_max_messages=0)
    with pytest.raises(ValueError, match="backoff_max_s"):
        make(backoff_initial_s=1.0, backoff_max_s=0.5)
    with pytest.raises(ValueError, match="peer id"):
        make(peers={-1: (LOCALHOST, 1)})
    with pytest.raises(RuntimeError, match="not started"):
        _ = make().listen_address


async def test_pings_repeat_while_connected(
    make_node: Factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tcp_module, "PING_INTERVAL_S", 0.01)
    a, b = await make_node(1), await make_node(2)
    samples: list[float] = []
    a.transport.on_rtt = lambda peer, rtt_s: samples.append(rtt_s)
    await connect_all([a, b])
    await until(lambda: len(samples) >= 5)
    assert all(s > 0 for s in samples)


async def test_every_socket_has_nodelay(make_node: Factory) -> None:
    a, b = await make_node(1), await make_node(2)
    await connect_all([a, b])
    assert a.transport.send(heartbeat(1, 2, 1)) and b.transport.send(heartbeat(2, 1, 1))
    await until(lambda: len(a.received) == len(b.received) == 1)
    protocols = [*a.transport._protocols, *b.transport._protocols]
    assert len(protocols) == 4  # one outbound and one inbound on each side
    for protocol in protocols:
        assert protocol.transport is not None
        sock = protocol.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


async def test_a_failing_on_message_closes_only_that_connection(
    make_node: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    b = await make_node(2)
    failing = True

    def on_message(m: Message) -> None:
        if failing:
            raise RuntimeError("handler bug")
        b.received.append(m)

    b.transport.on_message = on_message
    a = await make_node(1, {2: b.address})
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        assert a.transport.send(heartbeat(1, 2, 1))
        await until(lambda: "on_message failed" in caplog.text)
    failing = False
    await until(lambda: a.transport.stats()[2].reconnects >= 1)
    assert a.transport.send(heartbeat(1, 2, 2))
    await until(lambda: b.read_seqs(1) == [2])


async def test_a_peer_that_never_answers_pings_is_redialed(
    make_node: Factory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(tcp_module, "PING_INTERVAL_S", 0.01)
    monkeypatch.setattr(tcp_module, "PONG_TIMEOUT_S", 0.05)
    accepted: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)  # reads nothing, answers nothing: a stopped process

    server = await asyncio.start_server(mute, LOCALHOST, 0)
    try:
        port = server.sockets[0].getsockname()[1]
        a = await make_node(1, {2: (LOCALHOST, port)})
        with caplog.at_level(logging.INFO, logger="replog.transport"):
            await until(lambda: a.transport.stats()[2].reconnects >= 2)
        assert "has not answered pings" in caplog.text
        assert not a.transport.stats()[2].connected
    finally:
        server.close()
        for writer in accepted:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        await server.wait_closed()


async def test_the_loopback_cluster_helper_connects_everyone_and_closes() -> None:
    received: dict[int, list[Message]] = {1: [], 2: [], 3: []}
    async with loopback_cluster(
        [1, 2, 3], lambda node_id, m: received[node_id].append(m), **FAST
    ) as transports:
        assert set(transports) == {1, 2, 3}
        for sender, transport in transports.items():
            for receiver in transports:
                if receiver != sender:
                    assert transport.send(heartbeat(sender, receiver, sender))
        await until(lambda: all(len(r) == 2 for r in received.values()))
    assert {m.sender for m in received[1]} == {2, 3}
    assert asyncio.all_tasks() == {asyncio.current_task()}
