"""Plain values shared by the consensus core and the layers around it.

Everything here is an immutable dataclass built from ints, bytes, tuples and frozensets, so the
storage, transport and simulator layers can encode it without knowing the core's internals
(msgspec encodes dataclasses directly). Names follow the Raft paper: ``term``, ``voted_for``,
``commit_index``, ``prev_log_index``, ``prev_log_term``, ``match_index``.

Node ids are positive integers; ``NO_NODE`` (0) stands for "nobody" (no vote, no known leader).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

NodeId = int
NO_NODE: NodeId = 0


class EntryKind(enum.IntEnum):
    """What an entry carries. The state machine sees only NORMAL entries' data."""

    NORMAL = 0
    NOOP = 1  # appended by a new leader when it takes office (Raft section 5.4.2, 8)
    CONFIG = 2  # a membership change: the whole new configuration (``encode_config``)


@dataclass(frozen=True, slots=True)
class Entry:
    index: int
    term: int
    kind: EntryKind = EntryKind.NORMAL
    data: bytes = b""

    def size_bytes(self) -> int:
        """Approximate encoded size, used for byte budgets (batching, uncommitted bound)."""
        return len(self.data) + 24


@dataclass(frozen=True, slots=True)
class HardState:
    """The state that must be durable before any message that depends on it leaves the node."""

    term: int = 0
    voted_for: NodeId = NO_NODE
    commit_index: int = 0


@dataclass(frozen=True, slots=True)
class Configuration:
    """The cluster membership, a value owned by the core.

    ``voters_outgoing`` is non-empty only during a joint-consensus change (Raft thesis 4.3);
    decisions then need a majority of ``voters`` *and* a majority of ``voters_outgoing``.
    """

    voters: frozenset[NodeId] = field(default_factory=frozenset)
    voters_outgoing: frozenset[NodeId] = field(default_factory=frozenset)
    learners: frozenset[NodeId] = field(default_factory=frozenset)

    def members(self) -> frozenset[NodeId]:
        return self.voters | self.voters_outgoing | self.learners

    def is_voter(self, node_id: NodeId) -> bool:
        return node_id in self.voters or node_id in self.voters_outgoing

    def with_learner(self, node_id: NodeId) -> Configuration:
        """``node_id`` added as a learner (it receives the log but neither votes nor counts)."""
        return Configuration(
            self.voters - {node_id}, self.voters_outgoing, self.learners | {node_id}
        )

    def with_voter(self, node_id: NodeId) -> Configuration:
        """``node_id`` added as a voter, or promoted from learner to voter."""
        return Configuration(
            self.voters | {node_id}, self.voters_outgoing, self.learners - {node_id}
        )

    def without(self, node_id: NodeId) -> Configuration:
        return Configuration(
            self.voters - {node_id}, self.voters_outgoing, self.learners - {node_id}
        )


def encode_config(config: Configuration, context: bytes = b"") -> bytes:
    """The data of a CONFIG entry: the whole new configuration, plus an opaque ``context`` the
    application may use (for example the new member's addresses). JSON from the standard
    library, so the core needs no codec."""
    assert not config.voters_outgoing, "joint configurations are not proposed as entries"
    body = {
        "voters": sorted(config.voters),
        "learners": sorted(config.learners),
        "context": context.hex(),
    }
    return json.dumps(body, separators=(",", ":")).encode()


def decode_config(data: bytes) -> tuple[Configuration, bytes]:
    """Inverse of ``encode_config``; raises ValueError on anything else."""
    try:
        body = json.loads(data)
        voters = frozenset(int(v) for v in body["voters"])
        learners = frozenset(int(v) for v in body["learners"])
        context = bytes.fromhex(body["context"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"not a configuration entry: {error}") from None
    if voters & learners or any(n <= 0 for n in voters | learners):
        raise ValueError("a configuration's voters and learners must be distinct positive ids")
    return Configuration(voters=voters, learners=learners), context


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    index: int = 0
    term: int = 0
    config: Configuration = field(default_factory=Configuration)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A state machine image that covers every entry up to ``meta.index``."""

    meta: SnapshotMeta
    data: bytes = b""


# --------------------------------------------------------------------------------------------
# Messages. Every message carries the sender's term and the two endpoints.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestVote:
    """Candidate -> voter (Raft 5.2). ``pre_vote`` asks without disturbing terms (thesis 9.6);
    ``transfer`` marks a campaign started by TimeoutNow, which voters honour even while they
    believe a leader is alive (thesis 3.10)."""

    term: int
    sender: NodeId
    receiver: NodeId
    last_log_index: int
    last_log_term: int
    pre_vote: bool = False
    transfer: bool = False


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    sender: NodeId
    receiver: NodeId
    granted: bool
    pre_vote: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    """Leader -> follower (Raft 5.3). The follower accepts ``entries`` only if its log holds an
    entry at ``prev_log_index`` with ``prev_log_term``."""

    term: int
    sender: NodeId
    receiver: NodeId
    prev_log_index: int
    prev_log_term: int
    entries: tuple[Entry, ...]
    leader_commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    """Follower -> leader. On success ``match_index`` is the last index known to match the
    leader's log. On rejection ``reject_index`` is the ``prev_log_index`` that failed and
    ``hint_index`` / ``hint_term`` let the leader skip a whole term per round trip: the follower's
    last index at or below ``reject_index`` whose term is <= the leader's ``prev_log_term``."""

    term: int
    sender: NodeId
    receiver: NodeId
    success: bool
    match_index: int = 0
    reject_index: int = 0
    hint_index: int = 0
    hint_term: int = 0


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Leader -> follower: keeps followers' election timers quiet, advances their commit index
    (never past what the follower is known to hold), and confirms leadership for ReadIndex
    rounds tagged with ``read_seq``."""

    term: int
    sender: NodeId
    receiver: NodeId
    leader_commit: int
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class HeartbeatResponse:
    term: int
    sender: NodeId
    receiver: NodeId
    read_seq: int = 0


@dataclass(frozen=True, slots=True)
class InstallSnapshot:
    """Leader -> follower whose needed entries were compacted away (Raft section 7)."""

    term: int
    sender: NodeId
    receiver: NodeId
    snapshot: Snapshot


@dataclass(frozen=True, slots=True)
class TimeoutNow:
    """Leader -> transfer target: start an election now (thesis 3.10)."""

    term: int
    sender: NodeId
    receiver: NodeId


@dataclass(frozen=True, slots=True)
class ForwardProposal:
    """Follower -> leader: proposals a follower received from its clients."""

    term: int
    sender: NodeId
    receiver: NodeId
    data: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ReadIndexRequest:
    """Follower -> leader: ask for a read index on behalf of the follower's client."""

    term: int
    sender: NodeId
    receiver: NodeId
    context: bytes


@dataclass(frozen=True, slots=True)
class ReadIndexResponse:
    """Leader -> follower: ``index`` is safe to read at once the follower has applied it."""

    term: int
    sender: NodeId
    receiver: NodeId
    context: bytes
    index: int


Message = (
    RequestVote
    | RequestVoteResponse
    | AppendEntries
    | AppendEntriesResponse
    | Heartbeat
    | HeartbeatResponse
    | InstallSnapshot
    | TimeoutNow
    | ForwardProposal
    | ReadIndexRequest
    | ReadIndexResponse
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre-candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A linearizable read may be served once the state machine has applied ``index``."""

    context: bytes
    index: int


@dataclass(frozen=True, slots=True)
class SoftState:
    """Volatile state the application may want to show (not persisted)."""

    role: Role
    leader_id: NodeId


@dataclass(frozen=True, slots=True)
class Ready:
    """A batch of effects the application must carry out, in this order:

    1. when ``must_sync()``: persist ``hard_state`` (when not None), ``snapshot`` (when not
       None) and ``entries`` (an entry at index i replaces any stored entry at i and everything
       after it), with a single fsync for the whole batch. A Ready whose only durable change is
       the commit index need not be persisted: a restarted node learns it again from the
       leader (it persists with the next batch);
    2. send ``messages`` (they may depend on the state made durable in step 1; a leader's
       ``AppendEntries`` and ``Heartbeat`` do not, and may leave before step 1, so the leader's
       fsync overlaps its followers': the leader counts itself only for what ``advance``
       confirmed durable);
    3. if ``snapshot`` is not None restore the state machine from it, then apply
       ``committed_entries`` in order, each exactly once; serve ``read_states`` whose index
       has been applied;
    4. call ``RaftNode.advance(ready)``.
    """

    soft_state: SoftState
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None
    messages: tuple[Message, ...]
    committed_entries: tuple[Entry, ...]
    read_states: tuple[ReadState, ...]
    vote_changed: bool = True  # the term or the vote differs from the previous Ready's

    def messages_before_persist(self) -> tuple[Message, ...]:
        """The leader's appends and heartbeats: they may leave before step 1."""
        return tuple(m for m in self.messages if isinstance(m, AppendEntries | Heartbeat))

    def messages_after_persist(self) -> tuple[Message, ...]:
        return tuple(m for m in self.messages if not isinstance(m, AppendEntries | Heartbeat))

    def must_sync(self) -> bool:
        """Whether step 1 is needed: new entries, a snapshot, or a new term or vote (Raft's
        persistent state; the commit index is not)."""
        return bool(self.entries) or self.snapshot is not None or self.vote_changed


@dataclass(frozen=True, slots=True)
class PersistentState:
    """What a node recovers from its storage at start-up and hands to ``RaftNode``."""

    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: tuple[Entry, ...] = ()
