"""A simulated Raft cluster: nodes, their Ready loops, crashes and restarts, on a fake network.

Theory of operation
-------------------
A ``SimNode`` is what one server process would be: a ``RaftNode`` (volatile, lost on a crash),
a ``DurableStore`` (survives crashes), a ``KvMachine`` (volatile, rebuilt from the stored
snapshot and the log after a restart), and the requests of clients waiting on this node.

``Cluster`` drives every node the way the server runtime will. Each input (a tick, a message,
a proposal, a read) is followed by ``_drive``, the Ready loop in the contract's order:

1. ``store.save(ready)`` when ``must_sync()``: hard state, snapshot, entries, durable when it
   returns (the leader's appends and heartbeats leave just before it, as in the server);
2. hand the rest of ``ready.messages`` to the simulated network;
3. restore the snapshot into the state machine, apply the committed entries in order, note
   the read states;
4. ``advance(ready)``,

then serves reads whose index is applied and takes a snapshot every ``snapshot_interval``
applied entries (``compact`` keeps ``keep_entries`` behind it). The safety checkers watch each
step: what is written (leader append-only, log matching, durable log rules), what is applied
(state machine safety, provenance, leader completeness), what is acknowledged (durable on a
majority at that instant), and after each input the node's term, commit index and role
(election safety, monotonic term and commit, durable == memory).

A crash drops the ``RaftNode``, the state machine and every waiting request (writes become
``info``: they may still commit; reads ``fail``: they had no effect); a restart builds a new
``RaftNode`` from ``store.crash_and_recover()`` with a fresh generator drawn from the seed; if
recovery refuses (corruption it must not repair alone), the node stays down for good.
A node whose save raises ``StorageFailed`` (an injected I/O error) or ``PowerCut`` stops right
there, as a server must: nothing of that Ready is sent, applied or advanced. It restarts through
recovery after a downtime drawn from the plan. With the plan's disk faults on, only a node of
the plan's damaged set may be refused by recovery; a refusal anywhere else is a violation, so
the nodes that stay down are a minority and the liveness phase always has a majority.
Ticks carry the node's life number, so a tick scheduled before a crash never reaches the next
life. A paused node neither ticks nor takes messages or requests until it resumes; whatever
reaches it meanwhile waits. Nodes never call back into a client synchronously from inside a
``RaftNode`` call: replies only record history and schedule events.
"""

from __future__ import annotations

import collections
import functools
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

from replog.core import RaftConfig, RaftNode
from replog.core.errors import ProposalError, ReplogError
from replog.core.types import (
    Configuration,
    Entry,
    EntryKind,
    Message,
    PersistentState,
    Ready,
    Role,
    Snapshot,
)
from replog.storage import DiskOp, PowerCut, StorageFailed
from replog.testing.durable import DurableStore, FaultyDisk, MemoryStore
from replog.testing.events import EventQueue, Trace
from replog.testing.faults import FaultPlan, link_params
from replog.testing.invariants import InvariantViolation, SafetyChecker
from replog.testing.network import Link, SimNetwork, describe
from replog.testing.simkv import Command, KvMachine, decode_command, encode_command, image_digest

READY_ROUNDS_MAX = 64  # a node must settle within this many Ready batches per input
REQUESTS_PER_NODE_MAX = 512  # waiting client requests a node remembers


class Request(Protocol):
    """A client's request as a node sees it: still waited for, and how to answer it."""

    @property
    def open(self) -> bool: ...

    def finish(self, outcome: str, value: int | None) -> None:
        """``outcome`` is "ok", "fail" or "info"; ``value`` is a read's result."""


@dataclass(slots=True)
class PendingRead:
    key: str
    request: Request
    index: int | None = None  # known once the node's read state arrives

    @property
    def open(self) -> bool:
        return self.request.open


class _Waiting(Protocol):
    @property
    def open(self) -> bool: ...


_K = TypeVar("_K")
_W = TypeVar("_W", bound=_Waiting)


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """How the simulated nodes are tuned: timing, protocol options and flow-control limits.

    ``draw`` gives every seed its own tuning, so the simulator covers the core's options
    (pre-vote, check-quorum, lease reads) and its limits (tiny messages, few inflight
    messages, a small uncommitted budget) as well as its defaults."""

    nodes: int = 3
    tick_ms: int = 10
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 2
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = False
    clock_drift_ticks: int = 1
    max_inflight_messages: int = 256
    max_message_bytes: int = 16 << 10
    max_uncommitted_bytes: int = 64 << 20

    @staticmethod
    def draw(rng: random.Random, nodes: int, tick_ms: int, pauses: bool) -> ClusterSettings:
        """Lease reads trust bounded clock drift and no stalls, so a seed with pauses (a
        stalled leader keeps believing in its lease) never turns them on."""
        election = rng.choice((6, 10, 10, 16))
        check_quorum = rng.random() < 0.8
        return ClusterSettings(
            nodes=nodes,
            tick_ms=tick_ms,
            election_timeout_ticks=election,
            heartbeat_interval_ticks=rng.choice((1, 2, 2, 3)),
            pre_vote=rng.random() < 0.8,
            check_quorum=check_quorum,
            lease_reads=check_quorum and not pauses and rng.random() < 0.3,
            clock_drift_ticks=3,
            max_inflight_messages=rng.choice((1, 4, 256)),
            max_message_bytes=rng.choice((64, 512, 16 << 10)),
            max_uncommitted_bytes=rng.choice((2 << 10, 64 << 20, 64 << 20)),
        )

    def describe(self) -> str:
        flags = [
            f"election={self.election_timeout_ticks}t",
            f"heartbeat={self.heartbeat_interval_ticks}t",
            f"tick={self.tick_ms}ms",
            f"pre_vote={'on' if self.pre_vote else 'off'}",
            f"check_quorum={'on' if self.check_quorum else 'off'}",
            f"lease_reads={'on' if self.lease_reads else 'off'}",
            f"inflight<={self.max_inflight_messages}",
            f"msg<={self.max_message_bytes}B",
            f"uncommitted<={self.max_uncommitted_bytes}B",
        ]
        return " ".join(flags)

    def raft_config(self, node_id: int) -> RaftConfig:
        return RaftConfig(
            node_id=node_id,
            election_timeout_ticks=self.election_timeout_ticks,
            heartbeat_interval_ticks=self.heartbeat_interval_ticks,
            pre_vote=self.pre_vote,
            check_quorum=self.check_quorum,
            lease_reads=self.lease_reads,
            clock_drift_ticks=self.clock_drift_ticks,
            max_inflight_messages=self.max_inflight_messages,
            max_message_bytes=self.max_message_bytes,
            max_uncommitted_bytes=self.max_uncommitted_bytes,
        )


class SimNode:
    """One simulated server: the volatile RaftNode and state machine, the durable store."""

    def __init__(self, node_id: int, store: DurableStore) -> None:
        self.node_id = node_id
        self.store = store
        self.raft: RaftNode | None = None
        self.kv = KvMachine()
        self.life = 0
        self.paused_until = 0
        self.applied_term = 0  # term of the entry at kv.applied_index
        self.snapshot_index = 0  # index of the last snapshot taken or restored
        self.tick_interval_ms = 10
        self.refused: str | None = None  # why its store refused to recover (it stays down)
        self.seen: tuple[Role, int, int] | None = None  # (role, term, leader) last traced
        self.proposals: dict[str, Request] = {}
        self.reads: dict[bytes, PendingRead] = {}

    def describe(self) -> str:
        raft = self.raft
        if self.refused is not None:
            return f"n{self.node_id} refused to start ({self.refused})"
        if raft is None:
            return f"n{self.node_id} down (store last index {self.store.last_index})"
        return (
            f"n{self.node_id} {raft.role.value} term={raft.term} leader={raft.leader_id} "
            f"last={raft.last_index} commit={raft.commit_index} applied={raft.applied_index}"
        )


StoreFactory = Callable[[int, random.Random], DurableStore]
"""Builds the durable store of a node from its id and a generator derived from the seed."""


class Cluster:
    """The simulated nodes, the network between them, and the checkers watching them."""

    def __init__(
        self,
        settings: ClusterSettings,
        plan: FaultPlan,
        rng: random.Random,
        *,
        queue: EventQueue,
        trace: Trace,
        faults: collections.Counter[str],
        checker: SafetyChecker,
        store_factory: StoreFactory = MemoryStore,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.node_ids = tuple(range(1, settings.nodes + 1))
        self.membership = Configuration(voters=frozenset(self.node_ids))
        self._boot_rng = random.Random(rng.getrandbits(64))
        self._clock_rng = random.Random(rng.getrandbits(64))
        network_rng = random.Random(rng.getrandbits(64))
        store_rng = random.Random(rng.getrandbits(64))
        self._downtime_rng = random.Random(rng.getrandbits(64))
        self.queue = queue
        self.trace = trace
        self.faults = faults
        self.checker = checker
        self.nodes = {
            n: SimNode(n, store_factory(n, random.Random(store_rng.getrandbits(64))))
            for n in self.node_ids
        }
        self._stores = [node.store for node in self.nodes.values()]
        self._disks = {
            n: node.store for n, node in self.nodes.items() if isinstance(node.store, FaultyDisk)
        }
        self.network = SimNetwork(
            self.node_ids,
            network_rng,
            queue=queue,
            trace=trace,
            faults=faults,
            deliver=self._deliver,
        )
        self.network.set_links(link_params(plan, network_rng, self.node_ids))
        self.snapshots_taken = 0

    # ---- life cycle --------------------------------------------------------------------------

    def start(self) -> None:
        for node in self.nodes.values():
            drift = self._clock_rng.randint(-1, 1) if self.plan.tick_jitter_ms else 0
            node.tick_interval_ms = max(2, self.settings.tick_ms + drift)
            self._boot(node, PersistentState())

    def is_up(self, node_id: int) -> bool:
        return self.nodes[node_id].raft is not None

    def leader(self) -> int | None:
        """The live leader of the highest term, if any."""
        best: tuple[int, int] | None = None
        for node in self.nodes.values():
            raft = node.raft
            if (
                raft is not None
                and raft.role is Role.LEADER
                and (best is None or raft.term > best[0])
            ):
                best = (raft.term, node.node_id)
        return None if best is None else best[1]

    def crash(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raft is None:
            return
        node.raft = None
        node.life += 1
        node.paused_until = 0
        self.checker.append_only.stepped_down(node_id)
        self.trace.record(f"n{node_id} CRASH (durable last index {node.store.last_index})")
        proposals, reads = node.proposals, node.reads
        node.proposals, node.reads = {}, {}
        for request in proposals.values():
            request.finish("info", None)
        for read in reads.values():
            read.request.finish("fail", None)

    def restart(self, node_id: int) -> None:
        node = self.nodes[node_id]
        if node.raft is not None or node.refused is not None:
            return
        try:
            state = node.store.crash_and_recover()
        except ReplogError as error:
            # Recovery found damage it must not repair alone: the node stays down, as a real
            # one would until an operator repairs its data directory.
            node.refused = f"{type(error).__name__}: {error}"
            self._count_disk(node_id)
            self.faults["refused-start"] += 1
            self.trace.record(f"n{node_id} REFUSES TO START: {node.refused}")
            if self.plan.disk_faults and node_id not in self.plan.damaged:
                raise InvariantViolation(
                    "recovery", f"refused a disk without media damage: {node.refused}", node=node_id
                ) from error
            return
        self._count_disk(node_id)
        snapshot_index = state.snapshot.meta.index if state.snapshot else 0
        last_index = state.entries[-1].index if state.entries else snapshot_index
        self.trace.record(
            f"n{node_id} RESTART term={state.hard_state.term}"
            f" commit={state.hard_state.commit_index}"
            f" snapshot={snapshot_index} last={max(last_index, snapshot_index)}"
        )
        self._boot(node, state)

    def pause(self, node_id: int, duration_ms: int) -> None:
        node = self.nodes[node_id]
        node.paused_until = max(node.paused_until, self.queue.now + duration_ms)
        self.trace.record(f"n{node_id} PAUSE until {node.paused_until}ms")

    def transfer_leader(self, leader: int, to: int) -> None:
        raft = self.nodes[leader].raft
        if raft is None or self._paused(self.nodes[leader]):
            return
        self.trace.record(f"n{leader} TRANSFER leadership to n{to}")
        try:
            raft.transfer_leader(to)
        except ReplogError as error:
            self.trace.record(f"n{leader} transfer refused: {error}")
            return
        self._after_input(self.nodes[leader])

    def change_membership(self, rng: random.Random) -> str | None:
        """Ask the leader for one membership change; returns its kind, or None if refused."""
        leader = self.leader()
        node = self.nodes[leader] if leader is not None else None
        if node is None or node.raft is None or self._paused(node):
            return None
        raft = node.raft
        config = raft.membership
        choices: list[tuple[str, Configuration]] = []
        outsiders = [n for n in self.node_ids if n not in config.members()]
        if outsiders:
            choices.append(("add-learner", config.with_learner(rng.choice(outsiders))))
        if config.learners:
            choices.append(("promote", config.with_voter(rng.choice(sorted(config.learners)))))
        removable = [v for v in sorted(config.voters) if len(config.voters) > 2]
        if removable:
            victim = rng.choice(removable)
            kind = "remove-leader" if victim == leader else "remove"
            choices.append((kind, config.without(victim)))
        choices = [(kind, new) for kind, new in choices if self._can_recover(new)]
        if not choices:
            return None
        kind, new = rng.choice(choices)
        self.trace.record(
            f"n{leader} MEMBERSHIP {kind}: voters {sorted(new.voters)} "
            f"learners {sorted(new.learners)}"
        )
        try:
            raft.propose_membership(new)
        except ReplogError as error:
            self.trace.record(f"n{leader} membership change refused: {error}")
            return None
        self._after_input(node)
        return kind

    def _can_recover(self, config: Configuration) -> bool:
        """A majority of the voters on undamaged disks, so the liveness phase always has a
        quorum that can start."""
        healthy = [v for v in config.voters if v not in self.plan.damaged]
        return 2 * len(healthy) > len(config.voters)

    def partition(self, blocked: frozenset[Link], description: str) -> None:
        self.trace.record(f"PARTITION {description}")
        self.network.partition(blocked)

    def heal(self) -> None:
        self.trace.record("HEAL")
        self.network.heal()

    def inject_disk_error(self, node_id: int, op: DiskOp, error: int, after: int) -> bool:
        disk = self._disks.get(node_id)
        if disk is None:
            return False
        self.trace.record(f"n{node_id} DISK will fail {op.value} #{after + 1} with errno {error}")
        disk.inject_error(op, error, after)
        return True

    def cut_power(self, node_id: int, op: DiskOp, after: int) -> bool:
        disk = self._disks.get(node_id)
        if disk is None:
            return False
        self.trace.record(f"n{node_id} DISK power will go out at {op.value} #{after + 1}")
        disk.cut_power(op, after)
        return True

    def flip_bit(self, node_id: int) -> bool:
        disk = self._disks.get(node_id)
        where = None if disk is None else disk.flip_random_bit()
        if where is not None:
            self.trace.record(f"n{node_id} DISK bit flipped in {where}")
        return where is not None

    def _count_disk(self, node_id: int) -> None:
        disk = self._disks.get(node_id)
        if disk is not None:
            self.faults.update(disk.drain_counts())

    def _halt(self, node: SimNode, error: StorageFailed | PowerCut) -> None:
        """A write failed or the power went out: the node stops at once (nothing of the
        Ready being saved is sent, applied or advanced) and restarts through recovery after
        a downtime."""
        if isinstance(error, PowerCut):
            self.faults["disk:power-cut"] += 1
            self.trace.record(f"n{node.node_id} POWER CUT: {error}")
        else:
            self.faults["disk:storage-failed"] += 1
            self.trace.record(f"n{node.node_id} STORAGE FAILED: {error.cause}")
        self.crash(node.node_id)
        life = node.life
        low, high = self.plan.downtime_ms
        delay = self._downtime_rng.randint(low, high)
        self.queue.after(delay, functools.partial(self._restart_life, node.node_id, life))

    def _restart_life(self, node_id: int, life: int) -> None:
        if self.nodes[node_id].life == life:
            self.restart(node_id)

    def repair(self) -> None:
        """End of the safety phase: heal, calm the network, cancel scheduled disk errors,
        resume and restart every node (a node whose recovery refused stays down)."""
        self.trace.record("REPAIR: heal, calm links, resume and restart every node")
        self.network.heal()
        self.network.calm()
        for disk in self._disks.values():
            disk.clear_errors()
        for node in self.nodes.values():
            node.paused_until = 0
            if node.raft is None:
                self.restart(node.node_id)
        down = [n for n, node in self.nodes.items() if node.raft is None]
        if 2 * len(down) >= len(self.nodes):
            # Only damaged disks may keep a node down, and they are a minority by design.
            raise InvariantViolation("liveness", f"a majority stays down after repair: {down}")

    def _boot(self, node: SimNode, state: PersistentState) -> None:
        rng = random.Random(self._boot_rng.getrandbits(64))
        config = self.settings.raft_config(node.node_id)
        node.raft = RaftNode(config, self.membership, rng, state)
        node.kv = KvMachine()
        node.snapshot_index = node.applied_term = 0
        if state.snapshot is not None:
            self._restore_image(node, state.snapshot)
        raft = node.raft
        self.checker.state_machine.started(node.node_id, node.snapshot_index)
        self.checker.commits.started(node.node_id, raft.commit_index, node.snapshot_index)
        node.seen = None
        life = node.life
        self.queue.after(self._tick_delay(node), functools.partial(self._tick, node.node_id, life))
        self._after_input(node)

    # ---- client requests -------------------------------------------------------------------

    def propose(self, node_id: int, command: Command, request: Request) -> None:
        node = self.nodes[node_id]
        retry = functools.partial(self.propose, node_id, command, request)
        if not self._accepts(node, request, retry):
            return
        assert node.raft is not None
        try:
            node.raft.propose(encode_command(command))
        except ProposalError:
            request.finish("fail", None)
            return
        self._remember(node.proposals, command.id, request)
        self._after_input(node)

    def read(self, node_id: int, key: str, context: bytes, request: Request) -> None:
        node = self.nodes[node_id]
        retry = functools.partial(self.read, node_id, key, context, request)
        if not self._accepts(node, request, retry):
            return
        assert node.raft is not None
        try:
            node.raft.read_index(context)
        except ProposalError:
            request.finish("fail", None)
            return
        self._remember(node.reads, context, PendingRead(key, request))
        self._after_input(node)

    def _accepts(self, node: SimNode, request: Request, retry: Callable[[], None]) -> bool:
        """Whether ``node`` takes a client request now: a down node refuses it (it never
        reached the log), a paused one takes it when it resumes."""
        if not request.open:
            return False
        if node.raft is None:
            request.finish("fail", None)  # connection refused
            return False
        if self._paused(node):
            self.queue.schedule(node.paused_until, retry)
            return False
        return True

    @staticmethod
    def _remember(table: dict[_K, _W], key: _K, waiting: _W) -> None:
        if len(table) >= REQUESTS_PER_NODE_MAX:
            for closed in [k for k, w in table.items() if not w.open]:
                del table[closed]
            assert len(table) < REQUESTS_PER_NODE_MAX, "too many open requests on one node"
        table[key] = waiting

    # ---- inputs ------------------------------------------------------------------------------

    def _tick_delay(self, node: SimNode) -> int:
        jitter = self.plan.tick_jitter_ms
        delay = node.tick_interval_ms
        if jitter:
            delay += self._clock_rng.randint(-jitter, jitter)
        return max(1, delay)

    def _paused(self, node: SimNode) -> bool:
        return node.paused_until > self.queue.now

    def _tick(self, node_id: int, life: int) -> None:
        node = self.nodes[node_id]
        if node.life != life or node.raft is None:
            return
        self.queue.after(self._tick_delay(node), functools.partial(self._tick, node_id, life))
        if self._paused(node):
            return
        node.raft.tick()
        self._after_input(node)

    def _deliver(self, message: Message) -> None:
        node = self.nodes[message.receiver]
        text = f"n{message.sender}->n{message.receiver} {describe(message)}"
        if node.raft is None:
            self.trace.record(f"{text} (receiver down)")
            return
        if self._paused(node):
            self.queue.schedule(node.paused_until, functools.partial(self._deliver, message))
            return
        self.trace.record(text)
        node.raft.step(message)
        self._after_input(node)

    # ---- the Ready loop ------------------------------------------------------------------------

    def _after_input(self, node: SimNode) -> None:
        raft = node.raft
        assert raft is not None
        rounds = 0
        for rounds in range(READY_ROUNDS_MAX):  # noqa: B007 (the count is used below)
            if not raft.has_ready():
                break
            ready = raft.ready()
            for message in ready.messages_before_persist():
                self.network.send(message)  # the leader's fsync overlaps its followers'
            try:
                self._persist(node, raft, ready)
            except (StorageFailed, PowerCut) as error:
                self._halt(node, error)
                return
            for message in ready.messages_after_persist():
                self.network.send(message)
            self._apply(node, raft, ready)
            raft.advance(ready)
        else:
            raise InvariantViolation(
                "ready settles",
                f"still has a Ready after {READY_ROUNDS_MAX} rounds for one input",
                node=node.node_id,
            )
        if rounds == 0:
            # Nothing changed: without a Ready the core's term, vote, log, commit index and
            # role are what they were after the last check.
            return
        self._serve_reads(node)
        try:
            self._maybe_snapshot(node, raft)
        except (StorageFailed, PowerCut) as error:
            self._halt(node, error)
            return
        self._observe(node, raft)

    def _persist(self, node: SimNode, raft: RaftNode, ready: Ready) -> None:
        store = node.store
        checker = self.checker
        is_leader = ready.soft_state.role is Role.LEADER
        checker.append_only.observe_write(
            node.node_id,
            raft.term,
            is_leader=is_leader,
            durable_last_index=store.last_index,
            entries=ready.entries,
            has_snapshot=ready.snapshot is not None,
        )
        if ready.must_sync():  # a commit-only change is re-learned from the leader
            store.save(ready)
        if ready.hard_state is not None:
            # Only once durable: a term whose save failed was never acted on and may be lost.
            checker.terms.observe(node.node_id, ready.hard_state.term)
        if ready.entries:
            prev_term = store.term_at(ready.entries[0].index - 1)
            assert prev_term is not None
            checker.log_matching.observe_write(node.node_id, prev_term, ready.entries)

    def _apply(self, node: SimNode, raft: RaftNode, ready: Ready) -> None:
        if ready.snapshot is not None:
            self.checker.state_machine.observe_restore(node.node_id, ready.snapshot.meta.index)
            self.trace.record(f"n{node.node_id} installs snapshot at {ready.snapshot.meta.index}")
            self._restore_image(node, ready.snapshot)
            self._settle_from_outcomes(node)
        for entry in ready.committed_entries:
            self.checker.state_machine.observe_apply(node.node_id, entry)
            self.checker.completeness.observe_committed(entry.index, entry.term, raft.term)
            if entry.kind is EntryKind.NORMAL:
                self._apply_command(node, entry)
            else:
                node.kv.skip(entry.index)
            node.applied_term = entry.term
        for read_state in ready.read_states:
            pending = node.reads.get(read_state.context)
            if pending is not None:
                pending.index = read_state.index

    def _apply_command(self, node: SimNode, entry: Entry) -> None:
        command = decode_command(entry.data)
        self.checker.provenance.observe_applied(
            node.node_id, entry.index, None if command is None else command.id
        )
        assert command is not None
        ok = node.kv.apply(entry.index, command)
        request = node.proposals.pop(command.id, None)
        if request is None or not request.open:
            return
        assert node.raft is not None
        stores = self._voter_stores(node.raft.membership)
        self.checker.acks.observe_ack(node.node_id, entry.index, entry.term, stores, len(stores))
        request.finish("ok" if ok else "fail", None)

    def _restore_image(self, node: SimNode, snapshot: Snapshot) -> None:
        node.kv.restore(snapshot.data)
        meta = snapshot.meta
        if node.kv.applied_index != meta.index:
            raise InvariantViolation(
                "state machine safety",
                f"snapshot at {meta.index} holds a state machine image of index "
                f"{node.kv.applied_index}",
                node=node.node_id,
                index=meta.index,
            )
        self.checker.state_machine.observe_image(
            node.node_id, meta.index, image_digest(snapshot.data)
        )
        node.applied_term = meta.term
        node.snapshot_index = meta.index

    def _settle_from_outcomes(self, node: SimNode) -> None:
        """Requests whose command was applied inside a snapshot learn their outcome from it."""
        for command_id in [c for c in node.proposals if c in node.kv.outcomes]:
            request = node.proposals.pop(command_id)
            if request.open:
                request.finish("ok" if node.kv.outcomes[command_id] else "fail", None)

    def _serve_reads(self, node: SimNode) -> None:
        applied = node.kv.applied_index
        ready = [c for c, p in node.reads.items() if p.index is not None and p.index <= applied]
        for context in ready:
            pending = node.reads.pop(context)
            if pending.request.open:
                pending.request.finish("ok", node.kv.read(pending.key))

    def _maybe_snapshot(self, node: SimNode, raft: RaftNode) -> None:
        applied = node.kv.applied_index
        if applied - node.snapshot_index < self.plan.snapshot_interval:
            return
        meta = raft.snapshot_meta(applied)  # with the configuration at that index
        assert meta.term == node.applied_term
        snapshot = Snapshot(meta, node.kv.snapshot_data())
        node.store.save_snapshot(snapshot)
        raft.compact(snapshot, keep_entries=self.plan.keep_entries)
        node.snapshot_index = applied
        self.snapshots_taken += 1
        self.checker.state_machine.observe_image(node.node_id, applied, image_digest(snapshot.data))

    def _voter_stores(self, config: Configuration) -> list[DurableStore]:
        return [self.nodes[v].store for v in sorted(config.voters)]

    def _observe(self, node: SimNode, raft: RaftNode) -> None:
        checker = self.checker
        node_id = node.node_id
        checker.terms.observe(node_id, raft.term)
        checker.commits.observe(node_id, raft.commit_index)
        if raft.commit_index > checker.acks.checked_to:
            # The first node to report a commit is the leader that made it, with the
            # configuration it counted a majority of.
            stores = self._voter_stores(raft.membership)
            checker.acks.observe_commit(
                node_id, raft.commit_index, _term_reader(raft), stores, len(stores)
            )
        memory = (raft.term, raft.voted_for, raft.last_index, raft.last_term)
        checker.durable.observe(node_id, memory, node.store.durable_tuple())
        if raft.applied_index != node.kv.applied_index:
            raise InvariantViolation(
                "state machine safety",
                f"the core says applied {raft.applied_index}, the state machine is at "
                f"{node.kv.applied_index}",
                node=node_id,
            )
        seen = (raft.role, raft.term, raft.leader_id)
        if seen == node.seen:
            return
        node.seen = seen
        self.trace.record(
            f"n{node_id} is {raft.role.value} of term {raft.term} (leader n{raft.leader_id})"
        )
        if raft.role is Role.LEADER and checker.election.observe_leader(node_id, raft.term):
            checker.completeness.check_leader(
                node_id, raft.term, raft.first_index, _term_reader(raft)
            )


def _term_reader(raft: RaftNode) -> Callable[[int], int | None]:
    def term_at(index: int) -> int | None:
        entry = raft.entry(index)
        return None if entry is None else entry.term

    return term_at
