"""The inbound frame parser without sockets: any chunking of a valid stream delivers exactly its
messages in order, and no byte stream whatsoever makes it raise."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replog.core.types import Heartbeat, Message
from replog.transport import PeerTransport, encode_message
from replog.transport.codec import FRAME_HEADER, MAGIC, WIRE_VERSION, Hello, Ping, encode_control
from replog.transport.tcp import _InboundProtocol

from .test_codec import messages


class FakeTransport(asyncio.Transport):
    """Just enough of a socket transport for the protocol: records what it is told."""

    def __init__(self) -> None:
        super().__init__()
        self.aborted = False
        self.paused = False
        self.written = bytearray()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 9) if name == "peername" else default

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def get_write_buffer_size(self) -> int:
        return len(self.written)


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def frame(body: bytes) -> bytes:
    return FRAME_HEADER.pack(len(body)) + body


HELLO = frame(encode_control(Hello(MAGIC, WIRE_VERSION, "c", 7, 1)))


def feed(
    loop: asyncio.AbstractEventLoop, chunks: list[bytes]
) -> tuple[list[Message], FakeTransport]:
    """Feed chunks to a fresh inbound protocol of node 1; returns what reached on_message."""

    async def run() -> tuple[list[Message], FakeTransport]:
        received: list[Message] = []
        owner = PeerTransport(
            node_id=1, cluster_id="c", listen=("127.0.0.1", 0), peers={}, on_message=received.append
        )
        protocol = _InboundProtocol(owner)
        transport = FakeTransport()
        protocol.connection_made(transport)
        for chunk in chunks:
            if protocol.closing:
                break
            protocol.data_received(chunk)
            for _ in range(50):  # let scheduled turns run
                await asyncio.sleep(0)
        protocol.connection_lost(None)
        return received, transport

    return loop.run_until_complete(run())


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    edges = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(messages, max_size=8), st.lists(st.integers(0, 1 << 16), max_size=10))
def test_any_chunking_delivers_the_messages_in_order(
    loop: asyncio.AbstractEventLoop, sent: list[Message], cuts: list[int]
) -> None:
    addressed = [_readdress(m) for m in sent]
    stream = HELLO + b"".join(frame(encode_message(m)) for m in addressed)
    received, transport = feed(loop, split(stream, cuts))
    assert received == addressed
    assert not transport.aborted


def _readdress(m: Message) -> Message:
    return dataclasses.replace(m, sender=7, receiver=1)


@settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=5))
def test_garbage_after_the_hello_never_raises(
    loop: asyncio.AbstractEventLoop, garbage: bytes, cuts: list[int]
) -> None:
    received, _ = feed(loop, split(HELLO + garbage, cuts))
    for m in received:
        assert m.receiver == 1 and m.sender == 7


@settings(deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_garbage_instead_of_a_hello_never_raises_nor_delivers(
    loop: asyncio.AbstractEventLoop, garbage: bytes
) -> None:
    received, _ = feed(loop, [garbage])
    assert received == []


def test_a_burst_is_handled_in_bounded_turns(loop: asyncio.AbstractEventLoop) -> None:
    beats = [Heartbeat(1, 7, 1, 0, seq) for seq in range(1000)]
    stream = (
        HELLO + b"".join(frame(encode_message(m)) for m in beats) + frame(encode_control(Ping(3)))
    )
    received, transport = feed(loop, [stream])
    assert received == beats
    assert not transport.paused  # reading resumed once the backlog was handled
    assert transport.written  # the pong
