"""Chunked InstallSnapshot between two PeerTransports on 127.0.0.1: arrives whole beside other
traffic, resumes after a cut, never delivers damage, absorbs resends, is replaced by a newer
snapshot, and keeps to its memory and idle bounds."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from replog.core.types import (
    Configuration,
    Heartbeat,
    InstallSnapshot,
    Message,
    Snapshot,
    SnapshotMeta,
)
from replog.transport import PeerTransport
from replog.transport.snapshots import WINDOW_CHUNKS

from .test_tcp import free_port

CLUSTER = "snapshot-cluster"
LOCALHOST = "127.0.0.1"
FAST = {"backoff_initial_s": 0.01, "backoff_max_s": 0.1, "connect_timeout_s": 0.5}
KIB = 1 << 10
MIB = 1 << 20


async def until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.002)


def install(size: int, index: int = 100, term: int = 2, seed: int = 0) -> InstallSnapshot:
    data = random.Random(seed).randbytes(size)
    meta = SnapshotMeta(index, 1, Configuration(voters=frozenset({1, 2, 3})))
    return InstallSnapshot(term, 1, 2, Snapshot(meta, data))


def heartbeat(seq: int) -> Heartbeat:
    return Heartbeat(term=2, sender=1, receiver=2, leader_commit=0, read_seq=seq)


class Pair:
    """Node 1 (the sender) and node 2 (the receiver), connected."""

    def __init__(self, a: PeerTransport, b: PeerTransport) -> None:
        self.a = a
        self.b = b
        self.received: list[Message] = []

    def snapshots(self) -> list[InstallSnapshot]:
        return [m for m in self.received if isinstance(m, InstallSnapshot)]

    def stats(self) -> Any:
        return self.a.stats()[2]

    def cut_outbound(self) -> None:
        protocol = self.a._links[2].protocol
        assert protocol is not None
        protocol.abort()

    def cut_inbound(self) -> None:
        for protocol in list(self.b._inbound):
            protocol.abort()


Factory = Callable[..., Any]


@pytest.fixture
async def make_pair() -> AsyncIterator[Factory]:
    made: list[PeerTransport] = []

    async def make(a_options: dict[str, Any] | None = None, **b_options: Any) -> Pair:
        received: list[Message] = []
        b = PeerTransport(
            node_id=2,
            cluster_id=CLUSTER,
            listen=(LOCALHOST, 0),
            peers={},
            on_message=received.append,
            **{**FAST, **b_options},
        )
        made.append(b)
        await b.start()
        a = PeerTransport(
            node_id=1,
            cluster_id=CLUSTER,
            listen=(LOCALHOST, 0),
            peers={2: b.listen_address},
            on_message=lambda m: None,
            **{**FAST, **(a_options or {})},
        )
        made.append(a)
        await a.start()
        pair = Pair(a, b)
        pair.received = received
        return pair

    yield make
    for transport in made:
        await transport.close()


# ---- delivery beside other traffic -----------------------------------------------------------


async def test_a_30_mb_snapshot_arrives_whole_while_heartbeats_keep_flowing(
    make_pair: Factory,
) -> None:
    pair = await make_pair()
    snapshot = install(30 * MIB)

    def on_message(m: Message) -> None:  # each heartbeat that arrives sends the next one
        pair.received.append(m)
        if isinstance(m, Heartbeat) and not pair.snapshots():
            assert pair.a.send(heartbeat(m.read_seq + 1))

    pair.b.on_message = on_message
    assert pair.a.send(snapshot)
    assert pair.a.send(heartbeat(1))
    await until(lambda: bool(pair.snapshots()), timeout_s=60.0)
    assert pair.snapshots() == [snapshot]
    heartbeats_before = pair.received.index(snapshot)
    assert pair.received[:heartbeats_before] == [heartbeat(i + 1) for i in range(heartbeats_before)]
    # A heartbeat waits behind at most the unacknowledged chunks (the window) and then shares a
    # batch with at most one chunk, so 30 chunks let through more than 30 / WINDOW_CHUNKS - 1.
    assert heartbeats_before >= 30 // WINDOW_CHUNKS - 1, heartbeats_before
    await until(lambda: not pair.stats().snapshot_in_transfer)  # the peer's ack comes after
    stats = pair.stats()
    assert (stats.snapshots_started, stats.snapshots_completed) == (1, 1)
    assert stats.snapshot_bytes_sent == 30 * MIB
    assert not stats.snapshot_in_transfer
    assert pair.b.snapshots.completed == 1


async def test_a_snapshot_up_to_chunk_bytes_goes_as_one_message(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 64 * KIB})
    small = install(64 * KIB)
    assert pair.a.send(small)
    await until(lambda: pair.received == [small])
    assert pair.stats().snapshots_started == 0
    assert pair.stats().sent_messages == 1


# ---- resuming --------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["sender", "receiver"])
async def test_a_cut_connection_resumes_from_the_acknowledged_offset(
    make_pair: Factory, side: str
) -> None:
    chunk = 128 * KIB
    total = 8 * MIB
    pair = await make_pair({"chunk_bytes": chunk})
    cut = pair.cut_outbound if side == "sender" else pair.cut_inbound
    cuts: list[int] = []

    def hook(peer_id: int, offset: int, data: memoryview) -> memoryview:
        if offset >= total // 2 and not cuts:
            cuts.append(offset)
            asyncio.get_running_loop().call_soon(cut)
        return data

    pair.a.chunk_hook = hook
    snapshot = install(total)
    assert pair.a.send(snapshot)
    await until(lambda: pair.stats().snapshots_completed == 1)
    assert pair.snapshots() == [snapshot]
    stats = pair.stats()
    assert cuts and stats.reconnects >= 1
    assert stats.snapshots_resumed == 1 and pair.b.snapshots.resumed == 1
    assert stats.snapshots_completed == 1 and stats.snapshots_failed == 0
    resent = stats.snapshot_bytes_sent - total
    assert 0 <= resent <= (WINDOW_CHUNKS + 1) * chunk, resent


# ---- damage and bounds -----------------------------------------------------------------------


async def test_a_damaged_chunk_discards_the_transfer_and_nothing_is_delivered(
    make_pair: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    chunk = 64 * KIB
    pair = await make_pair({"chunk_bytes": chunk})

    def flip(peer_id: int, offset: int, data: memoryview) -> bytes:
        if offset != 3 * chunk:
            return data
        damaged = bytearray(data)
        damaged[100] ^= 0x10
        return bytes(damaged)

    pair.a.chunk_hook = flip
    snapshot = install(1 * MIB)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        assert pair.a.send(snapshot)
        await until(lambda: pair.stats().snapshots_failed == 1)
    assert "damaged (CRC-32C mismatch)" in caplog.text
    assert not pair.stats().snapshot_in_transfer
    assert pair.a.send(heartbeat(1))  # the connection itself is fine
    await until(lambda: heartbeat(1) in pair.received)
    assert pair.snapshots() == []
    assert pair.b.snapshots.held_bytes(1) == 0 and pair.b.snapshots.discarded == 1
    pair.a.chunk_hook = None  # the core's next resend goes through
    assert pair.a.send(snapshot)
    await until(lambda: bool(pair.snapshots()))
    assert pair.snapshots() == [snapshot]
    assert pair.stats().snapshots_started == 2


async def test_a_snapshot_over_the_receivers_bound_is_refused_with_a_clear_log(
    make_pair: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    pair = await make_pair({"chunk_bytes": 256 * KIB}, snapshot_bytes_max=1 * MIB)
    with caplog.at_level(logging.WARNING, logger="replog.transport"):
        assert pair.a.send(install(2 * MIB))
        await until(lambda: pair.stats().snapshots_failed == 1)
    assert f"{2 * MIB} bytes exceed snapshot_bytes_max ({MIB})" in caplog.text
    assert pair.stats().snapshot_bytes_sent == 0
    assert pair.snapshots() == [] and pair.b.snapshots.held_bytes(1) == 0


# ---- resends and replacements ----------------------------------------------------------------


async def test_resends_of_the_snapshot_in_transfer_are_absorbed(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 256 * KIB})
    snapshot = install(4 * MIB)
    for _ in range(3):
        assert pair.a.send(snapshot)
    assert pair.a.send(install(4 * MIB))  # an equal snapshot in another object: still a resend
    await until(lambda: pair.stats().snapshots_completed == 1)
    stats = pair.stats()
    assert (stats.snapshots_started, stats.snapshots_absorbed) == (1, 3)
    assert stats.snapshot_bytes_sent == 4 * MIB
    await asyncio.sleep(0.05)
    assert pair.snapshots() == [snapshot]


async def test_a_newer_snapshot_replaces_the_one_in_transfer(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 128 * KIB})
    older, newer = install(4 * MIB, index=100, seed=1), install(3 * MIB, index=200, seed=2)
    held: list[int] = []

    def hook(peer_id: int, offset: int, data: memoryview) -> memoryview:
        if offset == 1 * MIB and not held:  # the older one is well under way: replace it
            held.append(offset)
            assert pair.a.send(newer)
        return data

    pair.a.chunk_hook = hook
    assert pair.a.send(older)
    await until(lambda: pair.stats().snapshots_completed == 1)
    await asyncio.sleep(0.05)
    assert pair.snapshots() == [newer]
    stats = pair.stats()
    assert (stats.snapshots_started, stats.snapshots_replaced) == (2, 1)
    assert pair.b.snapshots.discarded == 1  # the older partial transfer


async def test_a_resend_with_a_new_term_replaces_but_resumes_the_same_bytes(
    make_pair: Factory,
) -> None:
    chunk = 128 * KIB
    pair = await make_pair({"chunk_bytes": chunk})
    first, again = install(4 * MIB, term=2), install(4 * MIB, term=3)
    sent: list[int] = []

    def hook(peer_id: int, offset: int, data: memoryview) -> memoryview:
        if offset == 2 * MIB and not sent:
            sent.append(offset)
            assert pair.a.send(again)
        return data

    pair.a.chunk_hook = hook
    assert pair.a.send(first)
    await until(lambda: pair.stats().snapshots_completed == 1)
    assert pair.snapshots() == [again]  # delivered with the latest term
    stats = pair.stats()
    assert stats.snapshots_replaced == 1 and stats.snapshots_resumed == 1
    assert stats.snapshot_bytes_sent <= 4 * MIB + (WINDOW_CHUNKS + 1) * chunk


# ---- idle timeouts ---------------------------------------------------------------------------


async def test_the_receiver_drops_a_partial_transfer_left_idle(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 64 * KIB}, snapshot_idle_timeout_s=0.2)

    def hook(peer_id: int, offset: int, data: memoryview) -> memoryview:
        if offset == 256 * KIB:
            asyncio.get_running_loop().call_soon(pair.a.set_peers, {})  # the sender goes away
        return data

    pair.a.chunk_hook = hook
    assert pair.a.send(install(1 * MIB))  # its header was answered before the hook ran
    await until(lambda: pair.b.snapshots.discarded == 1, timeout_s=5.0)
    assert pair.b.snapshots.held_bytes(1) == 0 and pair.snapshots() == []


async def test_the_sender_gives_up_a_transfer_without_progress(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 64 * KIB, "snapshot_idle_timeout_s": 0.2})
    pair.a.set_peers({2: (LOCALHOST, free_port())})  # nobody listens there
    assert pair.a.send(install(1 * MIB))
    assert pair.stats().snapshot_in_transfer
    await until(lambda: pair.stats().snapshots_failed == 1, timeout_s=3.0)
    assert not pair.stats().snapshot_in_transfer


async def test_an_unencodable_snapshot_is_a_send_failure(make_pair: Factory) -> None:
    pair = await make_pair({"chunk_bytes": 64 * KIB})
    bad = install(1 * MIB, index=-1)
    assert pair.a.send(bad)
    assert pair.stats().send_failures == 1 and not pair.stats().snapshot_in_transfer
    assert pair.a.send(heartbeat(1))
    await until(lambda: pair.received == [heartbeat(1)])


def test_bad_snapshot_arguments_are_refused() -> None:
    base: dict[str, Any] = {
        "node_id": 1,
        "cluster_id": CLUSTER,
        "listen": (LOCALHOST, 0),
        "peers": {},
        "on_message": lambda m: None,
    }
    for name, value in [
        ("chunk_bytes", 0),
        ("snapshot_bytes_max", 0),
        ("snapshot_idle_timeout_s", 0.0),
    ]:
        with pytest.raises(ValueError, match=name):
            PeerTransport(**base, **{name: value})
