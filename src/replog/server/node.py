"""Node: one live Raft member inside an asyncio program, and the library API for embedding.

Theory of operation. A ``Node`` owns a ``RaftNode`` (the sans-I/O core), its ``NodeStorage``,
a ``PeerTransport`` and the application's ``StateMachine``. Exactly one task, the *driver*,
touches the core. Everything else (the transport's reader, HTTP handlers, the tick timer) only
appends to an inbox and sets the ``_wake`` event. Each round of the driver:

1. runs the ticks that are due (as many as wall-clock time says, so a stalled loop never makes
   time run slow for the lease), steps the inbound messages, hands over the waiting proposals
   and read requests (all reads of one round share one ReadIndex);
2. while the core has a Ready: persists it (one write + one fsync, on a storage thread, so the
   loop keeps accepting requests that batch into the next Ready), sends its messages, restores
   a snapshot if it carries one, applies the committed entries in order, serves the read
   states whose index is applied, and calls ``advance``: the Ready contract of the core;
3. takes a snapshot when the ``SnapshotPolicy`` says so, and compacts the log.

Every command in the log starts with a 16-byte request id (8 random bytes per process + a
counter); the node that proposed it recognizes its own entries when it applies them and hands the
state machine's result to the waiting caller. This works the same whether the node led (and
appended the entry) or followed (and forwarded it to the leader). A proposal that the core could
not take (no leader, transfer in progress, uncommitted log full) fails with ``Unavailable``: it
was certainly not applied. One that the core took but whose outcome does not arrive in time
fails with ``UnknownOutcome``; one whose log slot was taken by another entry fails with
``Unavailable`` (a slot holds one entry forever once committed).

A storage failure (fsync error, disk full) stops the node: nothing of that Ready is sent or
applied, and ``wait_stopped`` raises. Restarting recovers from what was made durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from replog.core import (
    NO_NODE,
    Configuration,
    EntryKind,
    Message,
    NotLeader,
    ProposalError,
    RaftConfig,
    RaftNode,
    Ready,
    ReplogError,
    Role,
    Snapshot,
)
from replog.errors import Unavailable, UnknownOutcome
from replog.server.config import node_id_of, parse_address
from replog.server.metrics import Metrics
from replog.statemachines.base import StateMachine
from replog.storage import NodeStorage, OsDisk, SnapshotPolicy, StorageOptions
from replog.transport.tcp import PeerTransport

log = logging.getLogger("replog.node")

REQUEST_ID_BYTES = 16
INBOX_MESSAGES_MAX = 100_000


class NodeStopped(Unavailable):
    """The node has stopped (shut down, or stopped by a storage failure)."""


@dataclass(frozen=True, slots=True)
class NodeOptions:
    """Timing, limits and snapshots of one node. Times are in milliseconds."""

    tick_ms: int = 10
    heartbeat_ms: int = 50
    election_timeout_ms: int = 500  # randomized by the core in [T, 2T)
    lease_reads: bool = False
    clock_drift_ms: int = 50
    request_timeout_ms: int = 5_000
    snapshot_entries: int = 10_000
    snapshot_keep_entries: int = 1_000
    max_uncommitted_bytes: int = 64 << 20
    pending_requests_max: int = 100_000

    def raft_config(self, node_id: int) -> RaftConfig:
        return RaftConfig(
            node_id=node_id,
            election_timeout_ticks=self.election_timeout_ms // self.tick_ms,
            heartbeat_interval_ticks=max(1, self.heartbeat_ms // self.tick_ms),
            lease_reads=self.lease_reads,
            clock_drift_ticks=max(1, -(-self.clock_drift_ms // self.tick_ms)),
            max_uncommitted_bytes=self.max_uncommitted_bytes,
        )

    def snapshot_policy(self) -> SnapshotPolicy:
        return SnapshotPolicy(
            entries_max=self.snapshot_entries,
            entries_min=min(64, self.snapshot_entries),
            keep_entries=self.snapshot_keep_entries,
        )


@dataclass(frozen=True, slots=True)
class NodePosition:
    """Where this node stands, cheap enough to compute for every response."""

    leader: str | None
    term: int
    commit_index: int
    applied_index: int


@dataclass(frozen=True, slots=True)
class FollowerStatus:
    name: str
    match_index: int
    next_index: int
    lag: int
    state: str


@dataclass(frozen=True, slots=True)
class NodeStatus:
    name: str
    role: str  # leader | follower | candidate | pre_candidate | learner
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    followers: tuple[FollowerStatus, ...] = ()


@dataclass(slots=True)
class _Proposal:
    request_id: bytes
    data: bytes
    future: asyncio.Future[object]
    proposed: bool = False


@dataclass(slots=True)
class _ReadBatch:
    futures: list[asyncio.Future[int]]
    lease: bool
    issued_at: float = 0.0


@dataclass(slots=True)
class _Waiting:
    """What the driver holds for callers between rounds."""

    proposals: list[_Proposal] = field(default_factory=list)  # not yet handed to the core
    by_request: dict[bytes, _Proposal] = field(default_factory=dict)  # handed over
    by_index: dict[int, bytes] = field(default_factory=dict)  # leader-local: index -> id
    reads: list[_ReadBatch] = field(default_factory=list)  # not yet handed to the core
    reads_by_context: dict[bytes, _ReadBatch] = field(default_factory=dict)
    reads_by_index: list[tuple[int, list[asyncio.Future[int]]]] = field(default_factory=list)

    def count(self) -> int:
        return len(self.proposals) + len(self.by_request) + len(self.reads)


class Node:
    """A Raft node running ``machine``; see the module docstring.

    ``peers`` maps every voter's name (this node's included) to its peer address "host:port".
    """

    def __init__(
        self,
        machine: StateMachine,
        *,
        name: str,
        data_dir: str,
        peers: Mapping[str, str],
        cluster_id: str = "replog",
        listen_peer: str | None = None,
        options: NodeOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        if name not in peers:
            raise ValueError(f"node {name!r} must be one of the peers {sorted(peers)}")
        self.name = name
        self.machine = machine
        self.options = options or NodeOptions()
        self.metrics = metrics or Metrics()
        self._cluster_id = cluster_id
        self._data_dir = data_dir
        self._ids = {peer: node_id_of(peer) for peer in peers}
        self._names = {node_id: peer for peer, node_id in self._ids.items()}
        if len(self._names) != len(self._ids):
            raise ValueError("two node names map to the same node id; rename one")
        self.node_id = self._ids[name]
        self._addresses = {self._ids[p]: _split_address(a) for p, a in peers.items()}
        self._listen_peer = _split_address(listen_peer or peers[name])
        self._raft: RaftNode | None = None
        self._storage: NodeStorage | None = None
        self._transport: PeerTransport | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"replog-io-{name}")
        self._wake = asyncio.Event()
        self._inbox: list[Message] = []
        self._waiting = _Waiting()
        self._applied = asyncio.Event()
        self._ids_counter = itertools.count(1)
        self._id_prefix = os.urandom(8)
        self._driver: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._ticked_to = 0.0
        self._stopping = False
        self._failure: BaseException | None = None
        self._leader_seen = NO_NODE
        self._snapshot_index = 0

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the data directory, connect to the peers and start the driver."""
        storage, state = NodeStorage.open(
            OsDisk(), self._data_dir, self._cluster_id, self.node_id, StorageOptions()
        )
        self._storage = storage
        membership = Configuration(voters=frozenset(self._names))
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        raft = RaftNode(self.options.raft_config(self.node_id), membership, rng, state)
        self._raft = raft
        if state.snapshot is not None:
            self.machine.restore(state.snapshot.data)
            self._snapshot_index = state.snapshot.meta.index
        self._transport = PeerTransport(
            node_id=self.node_id,
            cluster_id=self._cluster_id,
            listen=self._listen_peer,
            peers={i: a for i, a in self._addresses.items() if i != self.node_id},
            on_message=self._on_message,
        )
        self._transport.on_rtt = self._on_rtt
        await self._transport.start()
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + self._tick_s
        self._ticked_to = time.monotonic()
        self._timer = loop.call_at(self._next_tick, self._on_timer)
        self._driver = asyncio.create_task(self._drive(), name=f"replog-driver-{self.name}")
        log.info("node %s started (id %d, term %d)", self.name, self.node_id, raft.term)

    async def stop(self, transfer: bool = True) -> None:
        """Stop; a leader first hands leadership to the most up-to-date voter (if any)."""
        if transfer and self._failure is None and not self._stopping:
            await self._hand_over_leadership()
        self._stopping = True
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._driver is not None:
            with contextlib.suppress(BaseException):
                await self._driver
        if self._transport is not None:
            await self._transport.close()
        self._fail_all(NodeStopped(f"node {self.name} stopped"))
        self._applied.set()
        if self._storage is not None:
            storage, self._storage = self._storage, None
            await asyncio.get_running_loop().run_in_executor(self._io, storage.close)
        self._io.shutdown(wait=True)

    async def wait_stopped(self) -> None:
        """Return when the node stops; raise the error that stopped it, if any."""
        if self._driver is not None:
            await asyncio.shield(self._driver)
        if self._failure is not None:
            raise self._failure

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- client requests -----------------------------------------------------------------------

    async def propose(self, command: bytes, timeout_s: float | None = None) -> object:
        """Replicate ``command``, wait until it is committed and applied here, and return the
        state machine's result. Raises ``Unavailable`` (certainly not applied) or
        ``UnknownOutcome`` (proposed, fate unknown: retry only if the command is idempotent)."""
        self._check_running()
        request_id = self._id_prefix + next(self._ids_counter).to_bytes(8, "big")
        loop = asyncio.get_running_loop()
        proposal = _Proposal(request_id, request_id + command, loop.create_future())
        self._waiting.proposals.append(proposal)
        self._wake.set()
        self.metrics.proposals_pending.inc()
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                return await proposal.future
        except TimeoutError:
            self.metrics.proposals_failed.inc()
            if proposal.proposed:
                raise UnknownOutcome(
                    "the write was proposed but did not commit in time; it may still apply"
                ) from None
            raise Unavailable("no leader accepted the write in time") from None
        finally:
            self.metrics.proposals_pending.dec()
            proposal.future.cancel()
            self._waiting.by_request.pop(request_id, None)

    async def read_barrier(self, *, lease: bool = False, timeout_s: float | None = None) -> int:
        """Wait until this node's state machine reflects every write committed before the call
        (ReadIndex, Raft thesis 6.4) and return that index. With ``lease`` (and lease reads
        configured) the leader may skip the heartbeat round."""
        self._check_running()
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        if self._waiting.reads and self._waiting.reads[-1].lease == lease:
            self._waiting.reads[-1].futures.append(future)
        else:
            self._waiting.reads.append(_ReadBatch([future], lease))
        self._wake.set()
        try:
            async with asyncio.timeout(self._timeout(timeout_s)):
                return await future
        except TimeoutError:
            raise Unavailable("no leader confirmed the read in time") from None
        finally:
            future.cancel()

    async def wait_applied(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        """Wait until ``predicate()`` holds after some apply (or at once); False on timeout."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while not predicate():
                    await self.applied_changed()
                return True
        return predicate()

    async def applied_changed(self) -> None:
        """Return after the next batch of entries has been applied (or the node stops)."""
        self._check_running()
        await self._applied.wait()

    async def transfer_leadership(self, to: str | None = None, timeout_s: float = 5.0) -> str:
        """Ask the leader (this node) to hand over to ``to`` or the most up-to-date voter;
        return the new leader's name."""
        raft = self._core()
        if raft.role is not Role.LEADER:
            raise NotLeader(raft.leader_id)
        target = self._ids[to] if to is not None else self._most_up_to_date_follower()
        if target == NO_NODE:
            raise Unavailable("there is no other voter to hand leadership to")
        raft.transfer_leader(target)
        self._wake.set()
        ok = await self.wait_applied(
            lambda: raft.leader_id not in (self.node_id, NO_NODE), timeout_s
        )
        if not ok:
            raise Unavailable(f"leadership did not move to {self._names[target]} in time")
        return self._names[raft.leader_id]

    # ---- views -----------------------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        leader_id = self._core().leader_id
        return self._names.get(leader_id) if leader_id != NO_NODE else None

    @property
    def is_leader(self) -> bool:
        return self._core().role is Role.LEADER

    @property
    def stopped(self) -> bool:
        return self._stopping or self._failure is not None

    def refresh_metrics(self) -> None:
        """Copy the transport's per-peer counters into the metrics (before a scrape)."""
        if self._transport is None:
            return
        for peer, stats in self._transport.stats().items():
            to = self._names.get(peer, str(peer))
            failures = stats.dropped_messages + stats.send_failures
            self.metrics.peer_send_failures.labels(to).set(failures)
            self.metrics.peer_connected.labels(to).set(1 if stats.connected else 0)

    def position(self) -> NodePosition:
        raft = self._core()
        return NodePosition(self.leader, raft.term, raft.commit_index, raft.applied_index)

    def status(self) -> NodeStatus:
        raft = self._core()
        followers: list[FollowerStatus] = []
        if raft.role is Role.LEADER:
            for node_id, progress in sorted(raft.progress.items()):
                if node_id == self.node_id:
                    continue
                followers.append(
                    FollowerStatus(
                        self._names.get(node_id, str(node_id)),
                        progress.match_index,
                        progress.next_index,
                        raft.last_index - progress.match_index,
                        progress.state.value,
                    )
                )
        return NodeStatus(
            name=self.name,
            role=raft.role.value.replace("-", "_"),
            term=raft.term,
            leader=self.leader,
            commit_index=raft.commit_index,
            applied_index=raft.applied_index,
            last_index=raft.last_index,
            snapshot_index=self._snapshot_index,
            followers=tuple(followers),
        )

    # ---- the driver ------------------------------------------------------------------------------

    async def _drive(self) -> None:
        raft = self._core()
        try:
            while not self._stopping:
                await self._wake.wait()
                self._wake.clear()
                self._run_ticks(raft)
                self._step_inbox(raft)
                self._hand_over_proposals(raft)
                self._hand_over_reads(raft)
                while raft.has_ready() and not self._stopping:
                    await self._handle_ready(raft, raft.ready())
                await self._maybe_snapshot(raft)
        except Exception as error:
            log.critical("node %s stops: %s", self.name, error)
            self._failure = error
            self._stopping = True
            self._fail_all(NodeStopped(f"node {self.name} stopped: {error}"))
            self._applied.set()

    @property
    def _tick_s(self) -> float:
        return self.options.tick_ms / 1000

    def _on_timer(self) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._next_tick = max(self._next_tick + self._tick_s, loop.time())
        self._timer = loop.call_at(self._next_tick, self._on_timer)
        self._wake.set()

    def _run_ticks(self, raft: RaftNode) -> None:
        """Tick once per tick interval that has passed, measured against a monotonic clock."""
        now = time.monotonic()
        due = int((now - self._ticked_to) / self._tick_s)
        for _ in range(min(due, 10_000)):
            raft.tick()
        self._ticked_to += due * self._tick_s

    def _on_message(self, message: Message) -> None:
        if len(self._inbox) < INBOX_MESSAGES_MAX:
            self._inbox.append(message)
        else:
            self.metrics.inbox_drops.inc()  # Raft tolerates loss; memory stays bounded
        self._wake.set()

    def _on_rtt(self, peer: int, seconds: float) -> None:
        self.metrics.peer_rtt_seconds.labels(self._names.get(peer, str(peer))).observe(seconds)

    def _step_inbox(self, raft: RaftNode) -> None:
        inbox, self._inbox = self._inbox, []
        for message in inbox:
            raft.step(message)

    def _hand_over_proposals(self, raft: RaftNode) -> None:
        waiting = self._waiting
        kept: list[_Proposal] = []
        for proposal in waiting.proposals:
            if proposal.future.done():
                continue
            try:
                index = raft.propose(proposal.data)
            except NotLeader:
                kept.append(proposal)  # no leader known yet: try again next round
                continue
            except ProposalError as error:
                proposal.future.set_exception(Unavailable(str(error)))
                continue
            proposal.proposed = True
            waiting.by_request[proposal.request_id] = proposal
            if index is not None:
                waiting.by_index[index] = proposal.request_id
        waiting.proposals = kept

    def _hand_over_reads(self, raft: RaftNode) -> None:
        waiting = self._waiting
        now = time.monotonic()
        reissue_s = 2 * self.options.election_timeout_ms / 1000
        for context, batch in list(waiting.reads_by_context.items()):
            if now - batch.issued_at > reissue_s:  # its answer was lost: ask again
                del waiting.reads_by_context[context]
                waiting.reads.append(batch)
        kept: list[_ReadBatch] = []
        for batch in waiting.reads:
            batch.futures = [f for f in batch.futures if not f.done()]
            if not batch.futures:
                continue
            context = self._id_prefix + next(self._ids_counter).to_bytes(8, "big")
            try:
                raft.read_index(context, lease=batch.lease)
            except NotLeader:
                kept.append(batch)
                continue
            batch.issued_at = now
            waiting.reads_by_context[context] = batch
        waiting.reads = kept

    async def _handle_ready(self, raft: RaftNode, ready: Ready) -> None:
        storage = self._storage
        assert storage is not None and self._transport is not None
        if ready.must_sync():
            started = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(self._io, storage.save_ready, ready)
            self.metrics.fsync_seconds.observe(time.perf_counter() - started)
            if ready.entries:
                self.metrics.batch_entries.observe(len(ready.entries))
        for message in ready.messages:
            self._transport.send(message)  # a refused message is counted by the transport
        if ready.snapshot is not None:
            self.machine.restore(ready.snapshot.data)
            self._snapshot_index = ready.snapshot.meta.index
        self._apply(ready)
        for read_state in ready.read_states:
            batch = self._waiting.reads_by_context.pop(read_state.context, None)
            if batch is not None:
                self._waiting.reads_by_index.append((read_state.index, batch.futures))
        raft.advance(ready)
        self._serve_reads(raft.applied_index)
        self._observe(raft, ready)

    def _apply(self, ready: Ready) -> None:
        waiting = self._waiting
        for entry in ready.committed_entries:
            request_id = b""
            if entry.kind is EntryKind.NORMAL:
                request_id = entry.data[:REQUEST_ID_BYTES]
                result = self.machine.apply(entry.data[REQUEST_ID_BYTES:])
                proposal = waiting.by_request.pop(request_id, None)
                if proposal is not None and not proposal.future.done():
                    proposal.future.set_result(result)
            expected = waiting.by_index.pop(entry.index, None)
            if expected is not None and expected != request_id:
                lost = waiting.by_request.pop(expected, None)
                if lost is not None and not lost.future.done():
                    lost.future.set_exception(
                        Unavailable("leadership changed before the write committed")
                    )
        if ready.committed_entries or ready.snapshot is not None:
            self._applied.set()
            self._applied = asyncio.Event()

    def _serve_reads(self, applied_index: int) -> None:
        waiting = self._waiting
        if not waiting.reads_by_index:
            return
        kept: list[tuple[int, list[asyncio.Future[int]]]] = []
        for index, futures in waiting.reads_by_index:
            if index > applied_index:
                kept.append((index, futures))
                continue
            for future in futures:
                if not future.done():
                    future.set_result(index)
        waiting.reads_by_index = kept

    def _observe(self, raft: RaftNode, ready: Ready) -> None:
        metrics = self.metrics
        leader = ready.soft_state.leader_id
        if leader != self._leader_seen:
            if leader != NO_NODE:
                metrics.leader_changes.inc()
                log.info("node %s: leader is %s (term %d)", self.name, self.leader, raft.term)
            self._leader_seen = leader
        metrics.has_leader.set(1 if leader != NO_NODE else 0)
        metrics.is_leader.set(1 if raft.role is Role.LEADER else 0)
        metrics.term.set(raft.term)
        metrics.proposals_committed.set(raft.commit_index)
        metrics.proposals_applied.set(raft.applied_index)
        metrics.apply_lag.set(raft.commit_index - raft.applied_index)

    async def _maybe_snapshot(self, raft: RaftNode) -> None:
        storage = self._storage
        assert storage is not None
        policy = self.options.snapshot_policy()
        applied = raft.applied_index
        if not policy.should_snapshot(
            applied_index=applied,
            snapshot_index=self._snapshot_index,
            log_bytes=storage.log_bytes,
        ):
            return
        snapshot = Snapshot(raft.snapshot_meta(applied), self.machine.snapshot())
        keep = policy.keep_entries
        await asyncio.get_running_loop().run_in_executor(
            self._io, storage.save_snapshot, snapshot, keep
        )
        raft.compact(snapshot, keep)
        self._snapshot_index = applied
        self.metrics.snapshots.inc()
        log.info("node %s: snapshot at index %d (%d bytes)", self.name, applied, len(snapshot.data))

    # ---- helpers -------------------------------------------------------------------------------

    def _core(self) -> RaftNode:
        if self._raft is None:
            raise NodeStopped(f"node {self.name} is not started")
        return self._raft

    def _check_running(self) -> None:
        if self._failure is not None or self._stopping or self._raft is None:
            raise NodeStopped(f"node {self.name} is not running")
        if self._waiting.count() >= self.options.pending_requests_max:
            raise Unavailable("too many requests are waiting on this node")

    def _timeout(self, timeout_s: float | None) -> float:
        return self.options.request_timeout_ms / 1000 if timeout_s is None else timeout_s

    def _most_up_to_date_follower(self) -> int:
        raft = self._core()
        voters = [i for i in raft.progress if i != self.node_id and raft.membership.is_voter(i)]
        if not voters:
            return NO_NODE
        return max(voters, key=lambda i: (raft.progress[i].match_index, -i))

    async def _hand_over_leadership(self) -> None:
        if self._raft is None or self._raft.role is not Role.LEADER:
            return
        with contextlib.suppress(ReplogError):
            name = await self.transfer_leadership(
                timeout_s=2 * self.options.election_timeout_ms / 1000
            )
            log.info("node %s handed leadership to %s", self.name, name)

    def _fail_all(self, error: Exception) -> None:
        waiting = self._waiting
        for proposal in [*waiting.proposals, *waiting.by_request.values()]:
            if not proposal.future.done():
                proposal.future.set_exception(
                    UnknownOutcome(f"{error}; the write may still apply")
                    if proposal.proposed
                    else error
                )
        batches = [*waiting.reads, *waiting.reads_by_context.values()]
        futures = [f for b in batches for f in b.futures]
        futures += [f for _, fs in waiting.reads_by_index for f in fs]
        for future in futures:
            if not future.done():
                future.set_exception(error)
        self._waiting = _Waiting()


def _split_address(text: str) -> tuple[str, int]:
    address = parse_address(text, "peer")
    return address.host, address.port
