"""A small synchronous harness for core tests: nodes, a message queue, durable state in memory.

It follows the Ready contract literally (persist, send, apply, advance) so tests read like
transcripts: tick, deliver, assert.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from replog.core import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Message,
    PersistentState,
    RaftConfig,
    RaftNode,
    ReadState,
    Role,
    Snapshot,
)


@dataclass
class Durable:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save(self, hard: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]) -> None:
        if hard is not None:
            self.hard_state = hard
        if snapshot is not None:
            self.snapshot = snapshot
            self.entries = [e for e in self.entries if e.index > snapshot.meta.index]
        if entries:
            first = entries[0].index
            self.entries = [e for e in self.entries if e.index < first] + list(entries)

    def state(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.entries))


class Cluster:
    def __init__(self, ids: list[int], seed: int = 1, **config: object) -> None:
        self.membership = Configuration(voters=frozenset(ids))
        self.config = config
        self.rng = random.Random(seed)
        self.durable = {i: Durable() for i in ids}
        self.nodes = {i: self._make(i) for i in ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in ids}
        self.reads: dict[int, list[ReadState]] = {i: [] for i in ids}
        self.queue: list[Message] = []
        self.down: set[int] = set()
        self.drop: Callable[[Message], bool] = lambda m: False

    def _make(self, node_id: int) -> RaftNode:
        cfg = RaftConfig(node_id=node_id, **self.config)  # type: ignore[arg-type]
        state = self.durable[node_id].state()
        return RaftNode(cfg, self.membership, random.Random(self.rng.random()), state)

    def restart(self, node_id: int) -> None:
        self.nodes[node_id] = self._make(node_id)
        self.applied[node_id] = []
        self.down.discard(node_id)

    def process(self) -> None:
        for node_id, node in self.nodes.items():
            if node_id in self.down:
                continue
            while node.has_ready():
                rd = node.ready()
                self.durable[node_id].save(rd.hard_state, rd.snapshot, rd.entries)
                self.queue.extend(rd.messages)
                if rd.snapshot is not None:
                    self.applied[node_id] = [Entry(rd.snapshot.meta.index, rd.snapshot.meta.term, EntryKind.NOOP)]
                self.applied[node_id].extend(rd.committed_entries)
                self.reads[node_id].extend(rd.read_states)
                node.advance(rd)

    def deliver(self, limit: int = 100_000) -> int:
        """Deliver messages until none are left; returns how many were delivered."""
        delivered = 0
        self.process()
        while self.queue and delivered < limit:
            batch, self.queue = self.queue, []
            for m in batch:
                if m.receiver in self.down or m.sender in self.down or self.drop(m):
                    continue
                self.nodes[m.receiver].step(m)
                delivered += 1
            self.process()
        return delivered

    def tick(self, n: int = 1, only: set[int] | None = None) -> None:
        for _ in range(n):
            for node_id, node in self.nodes.items():
                if node_id not in self.down and (only is None or node_id in only):
                    node.tick()
            self.deliver()

    def elect(self, node_id: int) -> RaftNode:
        self.nodes[node_id].campaign()
        self.deliver()
        node = self.nodes[node_id]
        assert node.role is Role.LEADER, node
        return node

    def leader(self) -> RaftNode | None:
        leaders = [n for i, n in self.nodes.items() if i not in self.down and n.role is Role.LEADER]
        return max(leaders, key=lambda n: n.term) if leaders else None

    def data(self, node_id: int) -> list[bytes]:
        return [e.data for e in self.applied[node_id] if e.kind is EntryKind.NORMAL]
