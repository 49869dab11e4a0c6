"""A small synchronous harness for core tests: nodes, a message queue, durable state in memory.

It follows the Ready contract literally (persist, send, apply, advance) so tests read like
transcripts: tick, deliver, assert.

Besides delivering everything in rounds (``deliver``), a test can build nodes from hand-made
persistent state (``states=``), take messages off the queue (``take``) and hand them over one
at a time (``send``), which is how the situations of the paper's figures are staged.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
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
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
)


def log_of_terms(*terms: int) -> tuple[Entry, ...]:
    """A log whose entry at index k + 1 has term ``terms[k]``."""
    return tuple(Entry(index, term) for index, term in enumerate(terms, start=1))


def persisted(term: int, *log_terms: int, voted_for: int = 0, commit: int = 0) -> PersistentState:
    """Durable state of a node at ``term`` holding a log with the given entry terms."""
    return PersistentState(HardState(term, voted_for, commit), None, log_of_terms(*log_terms))


def is_msg(
    kind: type | tuple[type, ...], sender: int | None = None, receiver: int | None = None
) -> Callable[[Message], bool]:
    """A predicate for ``Cluster.take``: messages of ``kind`` between the given nodes."""

    def match(m: Message) -> bool:
        return (
            isinstance(m, kind)
            and (sender is None or m.sender == sender)
            and (receiver is None or m.receiver == receiver)
        )

    return match


@dataclass
class Durable:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)

    def save(
        self, hard: HardState | None, snapshot: Snapshot | None, entries: tuple[Entry, ...]
    ) -> None:
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
    def __init__(
        self,
        ids: list[int],
        seed: int = 1,
        states: Mapping[int, PersistentState] | None = None,
        voters: Iterable[int] | None = None,
        **config: object,
    ) -> None:
        # Nodes outside ``voters`` start as outsiders that a membership change may add.
        self.membership = Configuration(voters=frozenset(ids if voters is None else voters))
        self.config = config
        self.rng = random.Random(seed)
        self.durable = {i: Durable() for i in ids}
        for i, state in (states or {}).items():
            self.durable[i] = Durable(state.hard_state, state.snapshot, list(state.entries))
        self.nodes = {i: self._make(i) for i in ids}
        self.applied: dict[int, list[Entry]] = {i: [] for i in ids}
        self.reads: dict[int, list[ReadState]] = {i: [] for i in ids}
        self.queue: list[Message] = []
        self.down: set[int] = set()
        self.drop: Callable[[Message], bool] = lambda m: False
        self.sent: list[Message] = []  # every message any node handed over, in order

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
                self.sent.extend(rd.messages)
                if rd.snapshot is not None:
                    meta = rd.snapshot.meta
                    self.applied[node_id] = [Entry(meta.index, meta.term, EntryKind.NOOP)]
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

    # ---- finer control, for staging precise situations ----------------------------------------

    def take(self, match: Callable[[Message], bool] = lambda m: True) -> list[Message]:
        """Collect pending effects, then remove and return the queued messages that ``match``."""
        self.process()
        taken = [m for m in self.queue if match(m)]
        self.queue = [m for m in self.queue if not match(m)]
        return taken

    def send(self, *messages: Message) -> None:
        """Hand ``messages`` to their receivers in order (ignoring ``drop`` and ``down``), then
        collect the effects. Whatever they cause stays queued for the test to inspect."""
        for m in messages:
            self.nodes[m.receiver].step(m)
            self.process()

    def elect_by_hand(self, candidate: int, *voters: int) -> RaftNode:
        """``candidate`` campaigns and hears only from ``voters`` (through a pre-vote round
        too, when configured). Everything else it sends stays queued for the test."""
        node = self.nodes[candidate]
        node.campaign()
        while node.role is not Role.LEADER:
            requests = self.take(lambda m: isinstance(m, RequestVote) and m.receiver in voters)
            assert requests, f"node {candidate} cannot win with the votes of {voters}"
            self.send(*requests)
            self.send(*self.take(is_msg(RequestVoteResponse, receiver=candidate)))
        self.take(is_msg(RequestVote, sender=candidate))  # requests to the others are lost
        return node

    def partition(self, *groups: Iterable[int]) -> None:
        """Drop every message between nodes of different groups (unlisted nodes are alone)."""
        side = {node_id: k for k, group in enumerate(groups) for node_id in group}
        self.drop = lambda m: side.get(m.sender, -m.sender) != side.get(m.receiver, -m.receiver)

    def heal(self) -> None:
        self.drop = lambda m: False

    def log_terms(self, node_id: int) -> list[int]:
        node = self.nodes[node_id]
        return [e.term for e in node.entries(node.first_index, node.last_index + 1)]
