"""End to end on three server nodes: a follower that was down while the leader compacted its log
catches up through a chunked InstallSnapshot, then the entries after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replog.errors import Unavailable, UnknownOutcome
from replog.server.node import Node, NodeOptions
from replog.testing.machines import Register
from replog.testing.processes import free_ports
from replog.transport import PeerStats, PeerTransport

OPTIONS = NodeOptions(  # timeouts generous enough for a busy machine: one term, one leader
    tick_ms=10,
    heartbeat_ms=50,
    election_timeout_ms=1000,
    request_timeout_ms=10_000,
    snapshot_entries=50,
    snapshot_keep_entries=10,
)
CHUNK_BYTES = 16 << 10


def command(i: int) -> bytes:
    return b"%06d" % i + b"x" * 2000


async def test_a_follower_behind_the_compacted_log_catches_up_by_chunked_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = PeerTransport.__init__.__kwdefaults__
    assert defaults is not None
    monkeypatch.setitem(defaults, "chunk_bytes", CHUNK_BYTES)  # the nodes build their transports
    peers = {f"n{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(free_ports(3))}

    def make(name: str) -> Node:
        return Node(
            Register(), name=name, data_dir=str(tmp_path / name), peers=peers, options=OPTIONS
        )

    nodes = [make(name) for name in peers]
    for node in nodes:
        await node.start()
    try:
        leader = await _leader_of(nodes)
        lagging = next(n for n in nodes if n is not leader)
        await lagging.stop(transfer=False)
        for i in range(120):
            await _propose(nodes, command(i))
        assert max(n.status().snapshot_index for n in nodes if not n.stopped) >= 100
        _lose_queued_messages(nodes, lagging)
        nodes[nodes.index(lagging)] = again = make(lagging.name)
        await again.start()
        for i in range(120, 130):  # entries after the snapshot follow it
            await _propose(nodes, command(i))
        leader = await _leader_of(nodes)
        applied = leader.status().applied_index
        assert await again.wait_applied(lambda: again.status().applied_index >= applied, 20)
        assert isinstance(again.machine, Register) and isinstance(leader.machine, Register)
        items = again.machine.items[: len(leader.machine.items)]
        assert items == leader.machine.items  # a retried write may be there twice, on both
        assert set(items) == {command(i) for i in range(130)}
        async with asyncio.timeout(10):  # the peer's ack may come after it applied the snapshot
            while sum(s.snapshots_completed for s in _sent_to(again, nodes)) < 1:
                await asyncio.sleep(0.01)
        sent_bytes = sum(s.snapshot_bytes_sent for s in _sent_to(again, nodes))
        assert sent_bytes >= 90 * len(command(0))  # the snapshot held the first writes
    finally:
        for node in nodes:
            if not node.stopped:
                await node.stop(transfer=False)


def _lose_queued_messages(nodes: list[Node], receiver: Node) -> None:
    """Drop what the running nodes queued for ``receiver`` while it was down (Raft tolerates
    loss), so it cannot catch up on appends pipelined before the log was compacted."""
    for node in nodes:
        if node is not receiver and not node.stopped and node._transport is not None:
            link = node._transport._links[receiver.node_id]
            link.queue.clear()
            link.queued_bytes = 0


def _sent_to(receiver: Node, nodes: list[Node]) -> list[PeerStats]:
    """What the other nodes' transports sent to ``receiver``."""
    return [
        n._transport.stats()[receiver.node_id] for n in nodes if n._transport and n is not receiver
    ]


async def _propose(nodes: list[Node], data: bytes, attempts: int = 5) -> None:
    """Propose through any running node (followers forward); retry an unknown outcome."""
    for attempt in range(attempts):
        node = [n for n in nodes if not n.stopped][attempt % 2]
        try:
            await node.propose(data)
            return
        except (Unavailable, UnknownOutcome):
            await asyncio.sleep(0.2)
    raise AssertionError(f"no node took the write after {attempts} attempts")


async def _leader_of(nodes: list[Node], timeout_s: float = 20.0) -> Node:
    async with asyncio.timeout(timeout_s):
        while True:
            leaders = [n for n in nodes if not n.stopped and n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.01)
