"""End to end on three server nodes: a follower that was down while the leader compacted its log
catches up through a chunked InstallSnapshot, then the entries after it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from replog.server.node import Node, NodeOptions
from replog.testing.processes import free_ports
from replog.transport import PeerTransport

OPTIONS = NodeOptions(
    tick_ms=5,
    heartbeat_ms=20,
    election_timeout_ms=150,
    request_timeout_ms=3000,
    snapshot_entries=50,
    snapshot_keep_entries=10,
)
CHUNK_BYTES = 16 << 10


class Register:
    """Appends commands; its snapshot is every command, newline-separated."""

    def __init__(self) -> None:
        self.items: list[bytes] = []

    def apply(self, command: bytes) -> object:
        self.items.append(command)
        return len(self.items)

    def snapshot(self) -> bytes:
        return b"\n".join(self.items)

    def restore(self, data: bytes) -> None:
        self.items = data.split(b"\n") if data else []


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
            await leader.propose(command(i))
        assert leader.status().snapshot_index >= 100
        nodes[nodes.index(lagging)] = again = make(lagging.name)
        await again.start()
        for i in range(120, 130):  # entries after the snapshot follow it
            await leader.propose(command(i))
        assert isinstance(again.machine, Register)
        register = again.machine
        assert await again.wait_applied(lambda: len(register.items) == 130, 10)
        assert register.items == [command(i) for i in range(130)]
        stats = leader._transport.stats()[again.node_id]  # type: ignore[union-attr]
        assert stats.snapshots_completed >= 1
        assert stats.snapshot_bytes_sent >= 90 * len(command(0))  # the snapshot held them
    finally:
        for node in nodes:
            if not node.stopped:
                await node.stop(transfer=False)


async def _leader_of(nodes: list[Node], timeout_s: float = 5.0) -> Node:
    async with asyncio.timeout(timeout_s):
        while True:
            leaders = [n for n in nodes if not n.stopped and n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.01)
