"""Node: one live Raft member inside an asyncio program, and the library API for embedding.

Theory of operation. A ``Node`` owns a ``RaftNode`` (the sans-I/O core), its ``NodeStorage``,
a ``PeerTransport`` and the application's ``StateMachine``. Exactly one task, the *driver*,
touches the core. Everything else (the transport's reader, HTTP handlers, the tick timer) only
appends to an inbox and sets the ``_wake`` event. Each round of the driver:

1. steps the inbound messages, each after the ticks due by its arrival, then runs the ticks
   due by now (as many as the monotonic clock says, so a stalled loop never makes time run
   slow for the lease, and a driver that waited for the disk or for a snapshot to load while
   the loop read the leader's messages did not hear silence), hands over the waiting
   proposals and read requests (all reads of one round share one ReadIndex);
2. while the core has a Ready: sends the leader's appends and heartbeats, persists it (one
   write + one fsync, on a storage thread, so the loop keeps accepting requests that batch into
   the next Ready; skipped when only the commit index changed), sends the other messages (then
   yields the CPU: the leader waiting for an acknowledgement should not wait for a core while
   this node applies), restores a snapshot if it carries one (a large state loads on another
   thread, the driver waiting for it while the loop goes on), applies the committed entries in
   order, serves the read states whose index is applied, and calls ``advance``: the Ready
   contract of the core. Committed entries that an earlier Ready already stored are applied
   before this Ready's fsync instead (they are durable here and on a quorum), so their callers
   do not wait for the next batch's fsync. Callers get their results through ``Completions``, a
   slice per turn of the loop, so a large batch of commits cannot hold back the timer (and the
   heartbeats);
3. when the ``SnapshotPolicy`` says so, captures the state machine (cheaply, between two
   applies) and encodes and writes the snapshot in the background; a later round compacts the
   core's log once it is stored. The driver never waits for a snapshot.

Every command in the log starts with a 16-byte request id (8 random bytes per process + a
counter); the node that proposed it recognizes its own entries when it applies them and hands the
state machine's result to the waiting caller. This works the same whether the node led (and
appended the entry) or followed (and forwarded it to the leader). A proposal made while no
leader is known, or while leadership is being transferred, waits for the next leader; one that
the core cannot take (uncommitted log full), or that no leader took in time, fails with
``Unavailable``: it was certainly not applied. One that the core took but whose outcome does
not arrive in time fails with ``UnknownOutcome``; one whose log slot was taken by another entry
fails with ``Unavailable`` (a slot holds one entry forever once committed). A proposal the
caller marks idempotent (the state machine applies it at most once however often it commits:
the KV store's writes with an idempotency key) and that still waits when a new leader becomes
known is proposed again: forwarded to a leader that died before appending it, it would
otherwise wait for its deadline. Its copies may then be anywhere, so the loss of one slot no
longer fails it.

A storage failure (fsync error, disk full) stops the node: nothing of that Ready is sent or
applied, and ``wait_stopped`` raises. Restarting recovers from what was made durable.

Membership. Changes are made by the leader, one server at a time (``membership.py``). Every
node learns a new member's addresses from the CONFIG entry as soon as it is in its log, which
is also when its core starts using the new configuration, and points the transport at the
members of the configuration in effect (plus the leader). The node snapshot wraps the state
machine's bytes together with the registry. A node started with ``join`` begins with a
configuration that does not contain it: it never campaigns and waits for the leader. Each
member publishes its own client URL through the log once it is a member, so every node can
reach every other's HTTP API.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from replog.core import (
    NO_NODE,
    Configuration,
    Entry,
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
    SnapshotMeta,
)
from replog.core.types import decode_config
from replog.errors import Unavailable, UnknownOutcome
from replog.server.completions import Completions
from replog.server.config import node_id_of, parse_address
from replog.server.members import (
    ClientRecord,
    MemberInfo,
    Registry,
    decode_context,
    decode_record,
    encode_record,
    unwrap_snapshot,
    wrap_snapshot,
)
from replog.server.membership import (  # the errors of the membership methods, also from here
    MemberExists,  # noqa: F401
    MemberNotCaughtUp,  # noqa: F401
    MemberNotFound,
    MembershipChangePending,  # noqa: F401
    MembershipChanges,
    MembershipError,
    MemberStatus,
    WouldLoseQuorum,  # noqa: F401
)
from replog.server.metrics import Metrics
from replog.statemachines.base import StateMachine
from replog.storage import NodeStorage, OsDisk, SnapshotPolicy, StorageOptions
from replog.transport.tcp import PeerTransport

log = logging.getLogger("replog.node")

REQUEST_ID_BYTES = 16
INBOX_MESSAGES_MAX = 100_000
PUBLISH_RETRY_S = 0.5
INLINE_PERSIST_ENTRIES_MAX = 64  # a Ready this small is persisted on the loop (see _persist)
INLINE_PERSIST_SLOW_S = 0.005  # ... unless the last persist took longer than this
# Request ids of node records (client URLs) start with this; ordinary ids start with 8 random
# bytes per process, so a clash has odds of 2**-64.
RECORD_PREFIX = b"\xffreplog\x00"


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
    snapshot_keep_bytes: int = 64 << 20
    max_uncommitted_bytes: int = 64 << 20
    pending_requests_max: int = 100_000  # writes and reads waiting here; more: Unavailable

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
            keep_bytes=self.snapshot_keep_bytes,
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
    role: str  # leader | follower | candidate | pre_candidate | learner | removed
    term: int
    leader: str | None
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    followers: tuple[FollowerStatus, ...] = ()


def yield_cpu() -> None:
    """Let another runnable process have this CPU now (``sched_yield``; a no-op where there
    is none). A node calls it once it sent what another node waits for: on a machine with
    fewer cores than busy processes, a single writer's latency fell by about a seventh."""
    if hasattr(os, "sched_yield"):
        os.sched_yield()


def _stored_before(ready: Ready) -> bool:
    """Whether every entry ``ready`` commits was stored by an earlier Ready (and no snapshot
    comes first): committed entries are durable on a quorum, and these are on this node's
    disk too, so applying them need not wait for this Ready's fsync."""
    if ready.snapshot is not None or not ready.committed_entries:
        return False
    return not ready.entries or ready.committed_entries[-1].index < ready.entries[0].index


def _expire_read(future: asyncio.Future[int]) -> None:
    if not future.done():
        future.set_exception(Unavailable("no leader confirmed the read in time"))


OnDone = Callable[[object, BaseException | None], None]


class _Callback:
    """Receives a proposal's outcome like a future, and hands it straight to ``on_done``: no
    future, done-callback and loop turn per request (about 1 us of a busy leader's 30 per
    write). ``on_done`` runs inside the driver, so it must be quick; what it raises is logged,
    not passed on."""

    __slots__ = ("_done", "on_done")

    def __init__(self, on_done: OnDone) -> None:
        self.on_done = on_done
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, result: object) -> None:
        self._call(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._call(None, error)

    def _call(self, result: object, error: BaseException | None) -> None:
        if self._done:
            return
        self._done = True
        try:
            self.on_done(result, error)
        except Exception:
            log.exception("a write's callback failed")


@dataclass(slots=True)
class _Proposal:
    request_id: bytes
    data: bytes
    waiter: asyncio.Future[object] | _Callback  # receives the outcome
    deadline: float  # on the loop's clock
    idempotent: bool = False  # may be proposed again (see ``Node.propose``)
    copies: int = 0  # how many times the core took it (0: not proposed yet)
    term: int = 0  # the term in which it last took it


@dataclass(slots=True)
class _ReadBatch:
    futures: list[asyncio.Future[int]]
    lease: bool
    issued_at: float = 0.0


class _Deadlines:
    """Request ids by the 10 ms slot in which their deadline falls; a slot is taken once the
    clock has passed its end, so nothing expires early. One list append per request: a heap of
    (deadline, id) pairs cost a busy leader a twentieth of its loop."""

    __slots__ = ("by_slot", "slots")
    SLOTS_PER_S = 100

    def __init__(self) -> None:
        self.by_slot: dict[int, list[bytes]] = {}
        self.slots: list[int] = []  # heap of the keys of ``by_slot``

    def add(self, deadline: float, request_id: bytes) -> None:
        slot = math.ceil(deadline * self.SLOTS_PER_S)
        ids = self.by_slot.get(slot)
        if ids is None:
            ids = self.by_slot[slot] = []
            heapq.heappush(self.slots, slot)
        ids.append(request_id)

    def pop_due(self, now: float) -> list[bytes]:
        """The ids whose deadline is at or before ``now`` (and maybe some already done)."""
        due: list[bytes] = []
        slots, now_slot = self.slots, now * self.SLOTS_PER_S
        while slots and slots[0] <= now_slot:
            due += self.by_slot.pop(heapq.heappop(slots))
        return due


@dataclass(slots=True)
class _Waiting:
    """What the driver holds for callers between rounds."""

    proposals: list[_Proposal] = field(default_factory=list)  # not yet handed to the core
    by_request: dict[bytes, _Proposal] = field(default_factory=dict)  # handed over
    deadlines: _Deadlines = field(default_factory=_Deadlines)  # of those handed over
    by_index: dict[int, bytes] = field(default_factory=dict)  # leader-local: index -> id
    reads: list[_ReadBatch] = field(default_factory=list)  # not yet handed to the core
    reads_by_context: dict[bytes, _ReadBatch] = field(default_factory=dict)
    reads_by_index: list[tuple[int, list[asyncio.Future[int]]]] = field(default_factory=list)
    readers: int = 0  # callers waiting in read_barrier, wherever their read is

    def count(self) -> int:
        return len(self.proposals) + len(self.by_request) + self.readers


class Node:
    """A Raft node running ``machine``; see the module docstring.

    ``peers`` maps every initial member's name (this node's included) to its peer address
    "host:port". With ``join`` the node joins an existing cluster: it starts as a non-member
    (the others in ``peers`` are the voters it knows) and waits for the leader to add it.
    ``client_url`` is this node's advertised HTTP API URL, published to the other members.
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
        client_url: str = "",
        join: bool = False,
        auto_promote: bool = True,
    ) -> None:
        if name not in peers:
            raise ValueError(f"node {name!r} must be one of the peers {sorted(peers)}")
        ids = {node_id_of(peer) for peer in peers}
        if len(ids) != len(peers):
            raise ValueError("two node names map to the same node id; rename one")
        if join and len(peers) < 2:
            raise ValueError("a joining node must know at least one member of the cluster")
        self.name = name
        self.machine = machine
        self.options = options or NodeOptions()
        self.metrics = metrics or Metrics()
        self._gauges_read_the_core()
        self.client_url = client_url
        self.join = join
        self.auto_promote = auto_promote
        self._cluster_id = cluster_id
        self._data_dir = data_dir
        self.node_id = node_id_of(name)
        self._registry = Registry(peers)
        self._addresses = {node_id_of(p): _split_address(a) for p, a in peers.items()}  # initial
        self._initial_voters = frozenset(ids - {self.node_id} if join else ids)
        self._listen_peer = _split_address(listen_peer or peers[name])
        self._raft: RaftNode | None = None
        self._storage: NodeStorage | None = None
        self._transport: PeerTransport | None = None
        self._peers_wanted: dict[int, str] = {}
        self._peers_basis: tuple[object, ...] = ()  # what _peers_wanted was computed from
        self._io = ThreadPoolExecutor(1, thread_name_prefix=f"replog-io-{name}")
        # Snapshots are encoded and their files written here: neither the loop nor the log
        # fsyncs wait for them.
        self._encoder = ThreadPoolExecutor(1, thread_name_prefix=f"replog-snap-{name}")
        self._snapshotting: asyncio.Task[Snapshot] | None = None
        self._wake = asyncio.Event()
        self._completions = Completions()
        self._inbox: list[tuple[float, Message]] = []  # (when it arrived, monotonic)
        self._waiting = _Waiting()
        self._applied: asyncio.Event | None = None  # made by the first waiter, set by an apply
        self._ids_counter = itertools.count(1)
        self._id_prefix = os.urandom(8)
        self._driver: asyncio.Task[None] | None = None
        self._publisher: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._next_tick = 0.0
        self._ticked_to = 0.0
        self._stopping = False
        self._failure: BaseException | None = None
        self._leader_seen = NO_NODE
        self._proposed_again_for = (0, NO_NODE)  # the (term, leader) of the last such round
        self._snapshot_index = 0
        self._snapshot_bytes = 0  # the size of the last snapshot (see SnapshotPolicy)
        self._snapshot_policy = self.options.snapshot_policy()
        self._last_persist_s = 0.0  # how long the last Ready took to make durable
        self._fresh_log_bytes = 0  # entry bytes written since the last snapshot was started
        self._snapshot_keep = 0  # entries the snapshot being taken leaves in the log behind it
        self._was_member = False
        self._leader_since = 0.0
        self._membership = MembershipChanges(self)

    # ---- life cycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the data directory, connect to the peers and start the driver."""
        # On a thread: replaying a long log must not stall the other tasks of this loop.
        storage, state = await asyncio.get_running_loop().run_in_executor(
            None,
            NodeStorage.open,
            OsDisk(),
            self._data_dir,
            self._cluster_id,
            self.node_id,
            StorageOptions(),
        )
        self._storage = storage
        membership = Configuration(voters=self._initial_voters)
        rng = random.Random(int.from_bytes(os.urandom(8), "big"))
        raft = RaftNode(self.options.raft_config(self.node_id), membership, rng, state)
        self._raft = raft
        if state.snapshot is not None:
            await self._restore(state.snapshot.data, starting=True)
            self._snapshot_index = state.snapshot.meta.index
            self._snapshot_bytes = len(state.snapshot.data)
        self._learn_entries(state.entries)
        self._was_member = self.node_id in raft.membership.members()
        self._transport = PeerTransport(
            node_id=self.node_id,
            cluster_id=self._cluster_id,
            listen=self._listen_peer,
            peers={},
            on_message=self._on_message,
        )
        self._transport.on_rtt = self._on_rtt
        self._sync_peers(raft)
        await self._transport.start()
        loop = asyncio.get_running_loop()
        self._next_tick = loop.time() + self._tick_s
        self._ticked_to = time.monotonic()
        self._timer = loop.call_at(self._next_tick, self._on_timer)
        self._driver = asyncio.create_task(self._drive(), name=f"replog-driver-{self.name}")
        self._completions.start()
        if self.client_url:
            self._publisher = asyncio.create_task(
                self._publish_client_url(), name=f"replog-publish-{self.name}"
            )
        log.info("node %s started (id %d, term %d)", self.name, self.node_id, raft.term)

    async def stop(self, transfer: bool = True) -> None:
        """Stop; a leader first hands leadership to the most up-to-date voter (if any)."""
        if transfer and self._failure is None and not self._stopping:
            await self._hand_over_leadership()
        self._stopping = True
        self._wake.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(BaseException):
                await self._publisher
        if self._driver is not None:
            with contextlib.suppress(BaseException):
                await self._driver
        if self._snapshotting is not None:
            with contextlib.suppress(BaseException):
                await self._snapshotting  # its storage work runs before storage.close
        if self._transport is not None:
            await self._transport.close()
        await self._completions.close()  # results already known reach their callers
        self._fail_all(NodeStopped(f"node {self.name} stopped"))
        self._signal_applied()
        if self._storage is not None:
            storage, self._storage = self._storage, None
            await asyncio.get_running_loop().run_in_executor(self._io, storage.close)
        self._io.shutdown(wait=True)
        self._encoder.shutdown(wait=True)

    async def drain(self, timeout_s: float) -> None:
        """Get ready for a clean stop: a leader hands leadership over, then this waits (at most
        ``timeout_s``) until no write submitted here awaits its outcome, so that its caller
        gets the result rather than ``UnknownOutcome``. The node keeps serving meanwhile; a
        server stops taking new requests first."""
        if self._failure is not None or self._stopping:
            return
        await self._hand_over_leadership()
        waiting = self._waiting
        await self.wait_applied(lambda: not waiting.proposals and not waiting.by_request, timeout_s)

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

    async def propose(
        self, command: bytes, timeout_s: float | None = None, *, idempotent: bool = False
    ) -> object:
        """Replicate ``command``, wait until it is committed and applied here, and return the
        state machine's result. Raises ``Unavailable`` (certainly not applied) or
        ``UnknownOutcome`` (proposed, fate unknown: retry only if the command is idempotent).

        ``idempotent``: the state machine applies this command at most once however many
        times it is committed (a KV write with an idempotency key). The node may then propose
        it again when the leader changes, so that a proposal forwarded to a leader that died
        before appending it still commits, instead of ending in ``UnknownOutcome``."""
        return await self.submit(command, timeout_s, idempotent=idempotent)

    def submit(
        self, command: bytes, timeout_s: float | None = None, *, idempotent: bool = False
    ) -> asyncio.Future[object]:
        """``propose`` without waiting: the future receives the result or the error (a caller
        that serves many requests saves a task per request). Cancelling it withdraws the
        proposal if it has not reached the core yet."""
        request_id = self._id_prefix + next(self._ids_counter).to_bytes(8, "big")
        return self._submit(request_id, command, timeout_s, idempotent)

    def submit_callback(
        self,
        command: bytes,
        on_done: OnDone,
        timeout_s: float | None = None,
        *,
        idempotent: bool = False,
    ) -> None:
        """``submit`` for a server of many requests: ``on_done(result, None)`` or
        ``on_done(None, error)`` is called once, from the driver (it must not block)."""
        self._check_running()
        request_id = self._id_prefix + next(self._ids_counter).to_bytes(8, "big")
        self._enqueue(request_id, command, _Callback(on_done), timeout_s, idempotent)

    def _submit(
        self, request_id: bytes, command: bytes, timeout_s: float | None, idempotent: bool = False
    ) -> asyncio.Future[object]:
        self._check_running()
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._enqueue(request_id, command, future, timeout_s, idempotent)
        return future

    def _enqueue(
        self,
        request_id: bytes,
        command: bytes,
        waiter: asyncio.Future[object] | _Callback,
        timeout_s: float | None,
        idempotent: bool,
    ) -> None:
        # No timer per request (they were a tenth of a busy leader's time): the driver drops
        # the expired at each tick (``_expire_proposals``).
        deadline = asyncio.get_running_loop().time() + self._timeout(timeout_s)
        self._waiting.proposals.append(
            _Proposal(request_id, request_id + command, waiter, deadline, idempotent)
        )
        self._wake.set()

    def _expire_proposals(self, now: float) -> None:
        """Fail the handed-over proposals whose deadline passed; forget those whose caller
        gave up (a cancelled future). Completed ones left ``by_request`` when applied."""
        by_request = self._waiting.by_request
        for request_id in self._waiting.deadlines.pop_due(now):
            proposal = by_request.pop(request_id, None)
            if proposal is not None:
                self._expire_proposal(proposal)

    def _expire_proposal(self, proposal: _Proposal) -> None:
        if proposal.waiter.done():
            return
        self.metrics.proposals_failed.inc()
        error: ReplogError
        if proposal.copies:
            error = UnknownOutcome(
                "the write was proposed but did not commit in time; it may still apply"
            )
        else:
            error = Unavailable("no leader accepted the write in time")
        proposal.waiter.set_exception(error)

    async def read_barrier(self, *, lease: bool = False, timeout_s: float | None = None) -> int:
        """Wait until this node's state machine reflects every write committed before the call
        (ReadIndex, Raft thesis 6.4) and return that index. With ``lease`` (and lease reads
        configured) the leader may skip the heartbeat round."""
        self._check_running()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[int] = loop.create_future()
        if self._waiting.reads and self._waiting.reads[-1].lease == lease:
            self._waiting.reads[-1].futures.append(future)
        else:
            self._waiting.reads.append(_ReadBatch([future], lease))
        self._wake.set()
        expiry = loop.call_later(self._timeout(timeout_s), _expire_read, future)
        self._waiting.readers += 1
        try:
            return await future
        finally:
            self._waiting.readers -= 1
            expiry.cancel()
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
        if self._applied is None:
            self._applied = asyncio.Event()
        await self._applied.wait()

    def _signal_applied(self) -> None:
        """Wake the callers of ``applied_changed``; the next one makes a new event."""
        applied, self._applied = self._applied, None
        if applied is not None:
            applied.set()

    async def transfer_leadership(self, to: str | None = None, timeout_s: float = 5.0) -> str:
        """Ask the leader (this node) to hand over to ``to`` or the most up-to-date voter;
        return the new leader's name."""
        raft = self._core()
        if raft.role is not Role.LEADER:
            raise NotLeader(raft.leader_id)
        if to == self.name:
            return self.name
        if to is None:
            target = self._most_up_to_date_follower()
        else:
            target = node_id_of(to)
            if target not in raft.membership.members():
                raise MemberNotFound(f"{to} is not a member of the cluster")
            if not raft.membership.is_voter(target):
                raise MembershipError(f"{to} is a learner; only a voter can lead")
        if target == NO_NODE:
            raise Unavailable("there is no other voter to hand leadership to")
        raft.transfer_leader(target)
        self._wake.set()
        ok = await self.wait_applied(
            lambda: raft.leader_id not in (self.node_id, NO_NODE), timeout_s
        )
        if not ok:
            name = self._registry.name_of(target)
            raise Unavailable(f"leadership did not move to {name} in time")
        return self._registry.name_of(raft.leader_id)

    # ---- membership (leader only; NotLeader elsewhere) ------------------------------------------

    def members(self) -> tuple[MemberStatus, ...]:
        """Every member of the configuration in effect, sorted by name."""
        return self._membership.statuses()

    @property
    def membership_pending(self) -> bool:
        """Whether the latest membership change is not committed yet (as this node knows)."""
        return self._core().membership_pending

    def member(self, name: str) -> MemberInfo | None:
        """What this node knows of ``name`` (a member or not)."""
        return self._registry.get(node_id_of(name))

    async def add_member(
        self, name: str, peer: str, client: str, *, learner: bool = False
    ) -> MemberInfo:
        """Add ``name`` as a learner; unless ``learner``, the leader promotes it to voter once
        it has caught up. Adding a member again with the same addresses changes nothing."""
        return await self._membership.add(name, peer, client, learner=learner)

    async def remove_member(self, name: str, *, force: bool = False) -> MemberInfo:
        """Remove ``name``. Refused when the voters heard from recently would not form a quorum
        of the new configuration, unless ``force``. A leader removing itself hands leadership
        over first and raises ``NotLeader``: ask the new leader."""
        return await self._membership.remove(name, force=force)

    async def promote_member(self, name: str) -> MemberInfo:
        """Make the learner ``name`` a voter; refused until it has caught up."""
        return await self._membership.promote(name)

    async def _publish_client_url(self) -> None:
        """Publish this node's client URL through the log once it is a member. An attempt
        whose forward to the leader was lost (the leader changed) is retried after a few
        election timeouts, not after a whole request timeout."""
        timeout_s = min(
            self.options.request_timeout_ms / 1000,
            max(1.0, 4 * self.options.election_timeout_ms / 1000),
        )
        while not self.stopped:
            raft = self._core()
            info = self._registry.get(self.node_id)
            if info is not None and info.client == self.client_url:
                return
            if raft.leader_id != NO_NODE and self.node_id in raft.membership.members():
                request_id = RECORD_PREFIX + next(self._ids_counter).to_bytes(8, "big")
                record = encode_record(ClientRecord(self.name, self.client_url))
                with contextlib.suppress(Unavailable, UnknownOutcome):
                    await self._submit(request_id, record, timeout_s)
                    continue
            await asyncio.sleep(PUBLISH_RETRY_S)

    # ---- views -----------------------------------------------------------------------------------

    @property
    def leader(self) -> str | None:
        leader_id = self._core().leader_id
        return self._registry.name_of(leader_id) if leader_id != NO_NODE else None

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
            to = self._registry.name_of(peer)
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
                        self._registry.name_of(node_id),
                        progress.match_index,
                        progress.next_index,
                        raft.last_index - progress.match_index,
                        progress.state.value,
                    )
                )
        role = raft.role.value.replace("-", "_")
        if raft.role is Role.FOLLOWER and not raft.membership.is_voter(self.node_id):
            role = "learner" if self.node_id in raft.membership.learners else "removed"
        return NodeStatus(
            name=self.name,
            role=role,
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
                # Each message at the tick it arrived (a follower that heard the leader all
                # through a stall did not hear silence), then the rest of the time that passed,
                # then the requests (a lease read is judged after every elapsed tick counts).
                self._step_inbox(raft)
                self._run_ticks(raft, time.monotonic())
                self._hand_over_proposals(raft)
                self._maybe_propose_again(raft)
                self._hand_over_reads(raft)
                self._membership.maybe_promote_learners(raft)
                while raft.has_ready() and not self._stopping:
                    await self._handle_ready(raft, raft.ready())
                self._maybe_finish_snapshot(raft)
                self._maybe_start_snapshot(raft)
        except Exception as error:
            log.critical("node %s stops: %s", self.name, error)
            self._failure = error
            self._stopping = True
            self._fail_all(NodeStopped(f"node {self.name} stopped: {error}"))
            self._signal_applied()

    @property
    def _tick_s(self) -> float:
        return self.options.tick_ms / 1000

    def _on_timer(self) -> None:
        if self._stopping:
            return
        loop = asyncio.get_running_loop()
        self._next_tick = max(self._next_tick + self._tick_s, loop.time())
        self._timer = loop.call_at(self._next_tick, self._on_timer)
        self._expire_proposals(loop.time())
        self._wake.set()

    def _run_ticks(self, raft: RaftNode, now: float) -> None:
        """Tick once per tick interval that has passed by ``now`` (monotonic clock)."""
        due = int((now - self._ticked_to) / self._tick_s)
        if due <= 0:
            return
        for _ in range(min(due, 10_000)):
            raft.tick()
        self._ticked_to += due * self._tick_s

    def _on_message(self, message: Message) -> None:
        now = self._membership.heard_at[message.sender] = time.monotonic()
        if len(self._inbox) < INBOX_MESSAGES_MAX:
            self._inbox.append((now, message))
        else:
            self.metrics.inbox_drops.inc()  # Raft tolerates loss; memory stays bounded
        self._wake.set()

    def _on_rtt(self, peer: int, seconds: float) -> None:
        self.metrics.peer_rtt_seconds.labels(self._registry.name_of(peer)).observe(seconds)

    def _step_inbox(self, raft: RaftNode) -> None:
        inbox, self._inbox = self._inbox, []
        for arrived, message in inbox:
            self._run_ticks(raft, arrived)
            raft.step(message)

    def _hand_over_proposals(self, raft: RaftNode) -> None:
        waiting = self._waiting
        if not waiting.proposals:
            return
        kept: list[_Proposal] = []
        now = asyncio.get_running_loop().time()
        for proposal in waiting.proposals:
            if proposal.waiter.done():
                continue
            if proposal.deadline <= now:
                self._expire_proposal(proposal)
                continue
            try:
                index = raft.propose(proposal.data)
            except NotLeader:
                kept.append(proposal)  # no leader known yet: try again next round
                continue
            except ProposalError as error:
                if raft.lead_transferee != NO_NODE:
                    kept.append(proposal)  # for the next leader, in a moment
                    continue
                proposal.waiter.set_exception(Unavailable(str(error)))
                continue
            proposal.copies, proposal.term = 1, raft.term
            if not proposal.idempotent:
                proposal.data = b""  # the core holds it now
            waiting.by_request[proposal.request_id] = proposal
            waiting.deadlines.add(proposal.deadline, proposal.request_id)
            if index is not None:
                waiting.by_index[index] = proposal.request_id
        waiting.proposals = kept

    def _maybe_propose_again(self, raft: RaftNode) -> None:
        """Once a new leader is known, propose again the idempotent writes taken in an
        earlier term that still wait: a proposal forwarded to a leader that died before
        appending it is lost, and nothing would say so before its deadline. A copy that
        was not lost commits too, and the state machine applies it as a repeat."""
        leader = (raft.term, raft.leader_id)
        if raft.leader_id == NO_NODE or leader == self._proposed_again_for:
            return
        self._proposed_again_for = leader
        waiting = self._waiting
        for proposal in list(waiting.by_request.values()):
            if not proposal.idempotent or proposal.term >= raft.term or proposal.waiter.done():
                continue
            try:
                index = raft.propose(proposal.data)
            except ProposalError:  # no room in the log now: its deadline will answer it
                continue
            proposal.copies += 1
            proposal.term = raft.term
            if index is not None:
                waiting.by_index[index] = proposal.request_id

    def _hand_over_reads(self, raft: RaftNode) -> None:
        waiting = self._waiting
        if not waiting.reads and not waiting.reads_by_context:
            return
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
        transport = self._transport
        assert storage is not None and transport is not None
        self._learn_entries(ready.entries)  # new members' addresses, before anything is sent
        self._sync_peers(raft)
        for message in ready.messages_before_persist():
            transport.send(message)  # our fsync overlaps the followers' (a refusal is counted)
        if ready.entries:
            transport.flush()  # new entries leave now; a commit index can wait for the writers
        answers = ready.messages_after_persist()
        # Committed entries already on disk are applied before the fsync, so their callers
        # need not wait for it, unless answers wait for that fsync: a follower's
        # acknowledgement is what the leader's commit (and every client) waits for.
        applied_early = not answers and _stored_before(ready)
        if applied_early:
            self._apply(ready)
        synced = ready.must_sync()  # a commit-only change is not worth an fsync
        if synced:
            await self._persist(storage, ready)
        for message in answers:
            transport.send(message)
        transport.flush()
        if synced:
            if answers:
                # The leader waits for this acknowledgement; what is left here (applying) is
                # not urgent, so it should not take the CPU the leader may be waiting for.
                yield_cpu()
            self._count_persist(ready)
        if ready.snapshot is not None:
            await self._install_snapshot(ready.snapshot)
        if not applied_early:
            self._apply(ready)
        for read_state in ready.read_states:
            batch = self._waiting.reads_by_context.pop(read_state.context, None)
            if batch is not None:
                self._waiting.reads_by_index.append((read_state.index, batch.futures))
        raft.advance(ready)
        self._serve_reads(raft.applied_index)
        self._observe(raft, ready)

    async def _persist(self, storage: NodeStorage, ready: Ready) -> None:
        """Make ``ready`` durable. A small batch on a disk that has been fast is written on the
        loop itself: the two thread hops cost more than its fsync. A large batch, a snapshot,
        or a disk that was slow the last time go to the storage thread, so the loop keeps
        reading requests (which batch into the next Ready) and a stalled disk cannot freeze it.
        While a snapshot is being stored, everything goes to the storage thread: the storage
        is used by one thread at a time."""
        started = time.perf_counter()
        inline = (
            len(ready.entries) <= INLINE_PERSIST_ENTRIES_MAX
            and ready.snapshot is None
            and self._last_persist_s < INLINE_PERSIST_SLOW_S
            and self._snapshotting is None
        )
        if inline:
            storage.save_ready(ready)
        else:
            await asyncio.get_running_loop().run_in_executor(self._io, storage.save_ready, ready)
        self._last_persist_s = time.perf_counter() - started

    def _count_persist(self, ready: Ready) -> None:
        self._fresh_log_bytes += sum(len(entry.data) for entry in ready.entries)
        self.metrics.fsync_seconds.observe(self._last_persist_s)
        if ready.entries:
            self.metrics.batch_entries.observe(len(ready.entries))

    def _apply(self, ready: Ready) -> None:
        waiting = self._waiting
        for entry in ready.committed_entries:
            request_id = b""
            if entry.kind is EntryKind.NORMAL:
                request_id = entry.data[:REQUEST_ID_BYTES]
                result = self._apply_command(request_id, entry.data[REQUEST_ID_BYTES:])
                proposal = waiting.by_request.pop(request_id, None)
                if proposal is not None:
                    self._completions.result(proposal.waiter, result)
            elif entry.kind is EntryKind.CONFIG:
                self._config_committed(entry)
            expected = waiting.by_index.pop(entry.index, None)
            if expected is not None and expected != request_id:
                lost = waiting.by_request.get(expected)
                if lost is not None and lost.copies == 1:  # another copy may still commit
                    del waiting.by_request[expected]
                    error = Unavailable("leadership changed before the write committed")
                    self._completions.exception(lost.waiter, error)
        if ready.committed_entries or ready.snapshot is not None:
            self._signal_applied()

    def _apply_command(self, request_id: bytes, command: bytes) -> object:
        if not request_id.startswith(RECORD_PREFIX):
            return self.machine.apply(command)
        record = decode_record(command)
        if record is not None and self._registry.learn_record(record):
            log.info("node %s: %s serves clients at %s", self.name, record.name, record.client)
        return None

    def _config_committed(self, entry: Entry) -> None:
        try:
            config, context = decode_config(entry.data)
        except ValueError as error:
            log.error("node %s: bad configuration entry at %d: %s", self.name, entry.index, error)
            return
        changed = decode_context(context)
        subject = changed.subject if changed is not None else "?"
        role = "voter" if config.is_voter(node_id_of(subject)) else "learner"
        if node_id_of(subject) not in config.members():
            role = "removed"
        log.info(
            "node %s: membership change at %d committed: %s %s",
            self.name,
            entry.index,
            subject,
            role,
        )
        member = self.node_id in config.members()
        if self._was_member and not member:
            log.warning("node %s was removed from the cluster; it will not campaign", self.name)
        self._was_member = member

    # ---- membership plumbing -------------------------------------------------------------------

    async def _install_snapshot(self, snapshot: Snapshot) -> None:
        """Install a snapshot the leader sent (the core has already taken it)."""
        started = time.monotonic()
        await self._restore(snapshot.data)
        self._snapshot_index = snapshot.meta.index
        self._snapshot_bytes = len(snapshot.data)
        took = time.monotonic() - started
        self.metrics.snapshot_install_seconds.observe(took)
        log.info(
            "node %s: installed the leader's snapshot at index %d (%d bytes) in %.3f s",
            self.name,
            snapshot.meta.index,
            len(snapshot.data),
            took,
        )

    async def _restore(self, data: bytes, *, starting: bool = False) -> None:
        """Install a snapshot: the member registry, then the machine's state. A running node
        whose machine offers ``snapshot_restorer`` loads it on the encoder's thread (after any
        encoding in progress there), so the loop goes on serving while the driver waits. A
        starting node serves nothing yet: it restores at full speed."""
        members, machine_data = unwrap_snapshot(data)
        self._registry.learn_snapshot(members)
        restorer = getattr(self.machine, "snapshot_restorer", None)
        if restorer is None or starting:
            self.machine.restore(bytes(machine_data))
            return
        loop = asyncio.get_running_loop()
        install = await loop.run_in_executor(self._encoder, restorer, machine_data)
        install()

    def _learn_entries(self, entries: Sequence[Entry]) -> None:
        """Learn member descriptions from CONFIG entries as soon as they are in the log."""
        for entry in entries:
            if entry.kind is not EntryKind.CONFIG:
                continue
            with contextlib.suppress(ValueError):
                context = decode_context(decode_config(entry.data)[1])
                if context is not None:
                    self._registry.learn_change(context)

    def _sync_peers(self, raft: RaftNode) -> None:
        """Point the transport at the members in effect and the leader (whose addresses are
        known); removed members are dropped."""
        assert self._transport is not None
        basis = (raft.membership, raft.leader_id, self._registry.version)
        if basis == self._peers_basis:
            return
        self._peers_basis = basis
        ids = set(raft.membership.members())
        if raft.leader_id != NO_NODE:
            ids.add(raft.leader_id)
        ids.discard(self.node_id)
        wanted: dict[int, str] = {}
        for node_id in ids:
            info = self._registry.get(node_id)
            if info is not None and info.peer:
                wanted[node_id] = info.peer
        if wanted == self._peers_wanted:
            return
        self._transport.set_peers({i: _split_address(p) for i, p in wanted.items()})
        self._peers_wanted = wanted

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
                self._completions.result(future, index)
        waiting.reads_by_index = kept

    def _gauges_read_the_core(self) -> None:
        """The gauges of the core's state are read when scraped, not set on every Ready."""

        def of_core(read: Callable[[RaftNode], float]) -> Callable[[], float]:
            return lambda: 0.0 if self._raft is None else read(self._raft)

        metrics = self.metrics
        metrics.has_leader.set_function(of_core(lambda r: float(r.leader_id != NO_NODE)))
        metrics.is_leader.set_function(of_core(lambda r: float(r.role is Role.LEADER)))
        metrics.term.set_function(of_core(lambda r: r.term))
        metrics.proposals_committed.set_function(of_core(lambda r: r.commit_index))
        metrics.proposals_applied.set_function(of_core(lambda r: r.applied_index))
        metrics.apply_lag.set_function(of_core(lambda r: r.commit_index - r.applied_index))
        metrics.proposals_pending.set_function(
            lambda: len(self._waiting.proposals) + len(self._waiting.by_request)
        )

    def _observe(self, raft: RaftNode, ready: Ready) -> None:
        metrics = self.metrics
        leader = ready.soft_state.leader_id
        if leader != self._leader_seen:
            if leader == self.node_id:
                self._leader_since = time.monotonic()
            if leader != NO_NODE:
                metrics.leader_changes.inc()
                log.info("node %s: leader is %s (term %d)", self.name, self.leader, raft.term)
            self._leader_seen = leader

    def _maybe_start_snapshot(self, raft: RaftNode) -> None:
        """Start a snapshot in the background when the policy asks for one. The machine's
        state is captured here, between two applies; encoding and writing it happen off the
        driver, which goes on replicating (a large state must not stall heartbeats)."""
        storage = self._storage
        assert storage is not None
        policy = self._snapshot_policy
        applied = raft.applied_index
        if self._snapshotting is not None or not policy.should_snapshot(
            applied_index=applied,
            snapshot_index=self._snapshot_index,
            log_bytes=storage.log_bytes,
            snapshot_bytes=self._snapshot_bytes,
            fresh_log_bytes=self._fresh_log_bytes,
        ):
            return
        if not raft.membership.voters:
            return  # a joining node that has not learned its cluster yet
        capture = getattr(self.machine, "snapshot_encoder", None)
        if capture is not None:
            encode = capture()
        else:
            data = self.machine.snapshot()
            encode = lambda: data  # noqa: E731
        members = tuple(self._registry.all())
        meta = raft.snapshot_meta(applied)
        self._fresh_log_bytes = 0
        window = raft.entries(max(raft.first_index, applied - policy.keep_entries + 1), applied + 1)
        self._snapshot_keep = policy.keep_for(len(entry.data) for entry in reversed(window))
        self._snapshotting = asyncio.create_task(
            self._write_snapshot(storage, meta, lambda: wrap_snapshot(members, encode()))
        )

    async def _write_snapshot(
        self, storage: NodeStorage, meta: SnapshotMeta, encode: Callable[[], bytes]
    ) -> Snapshot:
        keep = self._snapshot_keep

        def encode_and_write() -> tuple[Snapshot, str]:
            snapshot = Snapshot(meta, encode())
            return snapshot, storage.prepare_snapshot(snapshot)

        def save(snapshot: Snapshot, prepared: str) -> list[str]:
            return storage.save_snapshot(snapshot, keep, prepared, leave_files=True)

        loop = asyncio.get_running_loop()
        try:
            # Writing the file and removing the files it replaces (large ones take long) run on
            # the encoder's thread, so they do not hold up the log's fsyncs on the storage
            # thread, where only the rename and the bookkeeping happen.
            snapshot, prepared = await loop.run_in_executor(self._encoder, encode_and_write)
            obsolete = await loop.run_in_executor(self._io, save, snapshot, prepared)
            await loop.run_in_executor(self._encoder, storage.remove_files, obsolete)
            return snapshot
        finally:
            self._wake.set()  # the driver compacts the core's log (or stops on an error)

    def _maybe_finish_snapshot(self, raft: RaftNode) -> None:
        task = self._snapshotting
        if task is None or not task.done():
            return
        self._snapshotting = None
        snapshot = task.result()  # a storage failure stops the node, as a failed save does
        if snapshot.meta.index > self._snapshot_index:  # not overtaken by an installed one
            raft.compact(snapshot, self._snapshot_keep)
            self._snapshot_index = snapshot.meta.index
            self._snapshot_bytes = len(snapshot.data)
        self.metrics.snapshots.inc()
        log.info(
            "node %s: snapshot at index %d (%d bytes)",
            self.name,
            snapshot.meta.index,
            len(snapshot.data),
        )

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
            if not proposal.waiter.done():
                proposal.waiter.set_exception(
                    UnknownOutcome(f"{error}; the write may still apply")
                    if proposal.copies
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
