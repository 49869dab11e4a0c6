"""RaftNode: one member of a Raft group, as a deterministic state machine without I/O.

Theory of operation. The node owns the Raft protocol state of the paper's Figure 2: persistent
``term`` / ``voted_for`` / log, volatile ``commit_index`` / ``applied_index``, and on a leader the
per-follower ``Progress``. The application drives it with four kinds of input (``tick`` for time,
``step`` for messages, ``propose`` / ``read_index`` / ``transfer_leader`` for client requests)
and collects the effects as ``Ready`` batches, whose docstring states the order in which they must
be carried out. Nothing here touches a clock, a socket or a file, and all randomness comes from
the ``random.Random`` passed in, so the same inputs always give the same outputs.

Rules and where they come from:

* Terms (Raft 5.1): a message from a higher term makes the node a follower of that term; a
  request from a lower term (append, heartbeat, snapshot, vote) is refused with the current
  term, so that its stale sender steps down; a stale answer is ignored.
* Election (5.2, 5.4.1): randomized timeouts in [T, 2T) ticks, restarted by the leader or a
  granted vote but not by a refused one (Figure 2); one vote per term, made durable before the
  reply leaves (the Ready order); a vote only for a log at least as up to date.
  Pre-vote (thesis 9.6) asks first without raising terms, so a node that was cut off cannot
  disrupt a healthy leader when it returns. With check-quorum (thesis 6.2) a leader that has not
  heard from a quorum within an election timeout steps down, and a follower that heard from a
  leader within the election timeout ignores vote requests, unless they come from a leadership
  transfer (thesis 3.10).
* Replication (5.3): AppendEntries carries the previous entry's index and term; rejections carry
  a hint so the leader skips a whole term per round trip; ``Progress`` decides between probing,
  pipelined streaming and snapshots.
* Commit (5.3, 5.4.2): an index is committed once a quorum of voters holds it *durably* and the
  entry is from the leader's current term; a new leader appends a no-op to get there.
  The leader counts itself only for what ``advance`` has confirmed as persisted. Followers
  learn a new commit index from the next append or heartbeat, or, from an idle leader, by
  the next tick (``_announce_commit``): no message is sent for the commit index alone, except
  to a follower whose forwarded proposals it commits (its clients are waiting for it).
* Forwarding: a follower's proposal goes to the leader it knows (``ForwardProposal``). One
  that reaches a node that cannot append it (no longer the leader, or handing leadership
  over) was appended by nobody, so that node passes it on to its own leader, or keeps it until
  it knows one (bounded by ``max_uncommitted_bytes``).
* Reads (thesis 6.4): ReadIndex with a heartbeat round (see ``readonly``); lease reads as an
  opt-in that trusts check-quorum plus a clock drift bound.

* Membership (thesis 4.1-4.2): single-server changes. A CONFIG entry holds the whole new
  configuration; each node uses the latest one in its log, committed or not, and reverts if the
  entry is cut away. A leader proposes a change only when the previous one is committed and it
  has committed an entry of its own term (the fix for changes across elections). A leader that
  removed itself steps down once the change commits. A node that is not a voter campaigns only
  while the change that took its vote is uncommitted (see ``_promotable``).
  Every quorum decision goes through ``JointConfig``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from replog.core.errors import NotLeader, ProposalDropped, ReplogError, UncommittedLogFull
from replog.core.log import RaftLog
from replog.core.progress import Progress, ProgressState
from replog.core.quorum import JointConfig, VoteResult
from replog.core.readonly import PendingRead, PendingReads
from replog.core.types import (
    NO_NODE,
    AppendEntries,
    AppendEntriesResponse,
    Configuration,
    Entry,
    EntryKind,
    ForwardProposal,
    HardState,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    NodeId,
    PersistentState,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    Ready,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
    TimeoutNow,
    decode_config,
    encode_config,
)


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Tuning of one node. Times are in ticks; sizes in bytes."""

    node_id: NodeId
    election_timeout_ticks: int = 10
    heartbeat_interval_ticks: int = 1
    pre_vote: bool = True
    check_quorum: bool = True
    max_inflight_messages: int = 256
    max_message_bytes: int = 1 << 20
    max_uncommitted_bytes: int = 64 << 20
    max_apply_bytes: int = 64 << 20
    max_pending_reads: int = 65536
    lease_reads: bool = False
    clock_drift_ticks: int = 1

    def __post_init__(self) -> None:
        if self.node_id <= 0:
            raise ValueError("node_id must be a positive integer")
        if self.heartbeat_interval_ticks < 1:
            raise ValueError("heartbeat_interval_ticks must be at least 1")
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks:
            raise ValueError("election_timeout_ticks must exceed heartbeat_interval_ticks")
        if self.lease_reads and not self.check_quorum:
            raise ValueError("lease_reads relies on check_quorum")
        if self.lease_reads and self.clock_drift_ticks >= self.election_timeout_ticks:
            raise ValueError("clock_drift_ticks must be below election_timeout_ticks")
        for name in ("max_inflight_messages", "max_message_bytes", "max_uncommitted_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")


class RaftNode:
    def __init__(
        self,
        config: RaftConfig,
        membership: Configuration,
        rng: random.Random,
        state: PersistentState | None = None,
    ) -> None:
        state = state or PersistentState()
        self.config = config
        self.node_id = config.node_id
        self._rng = rng
        hard = state.hard_state
        self.term = hard.term
        self.voted_for = hard.voted_for
        self.log = RaftLog(state.snapshot, state.entries, hard.commit_index)
        # The configuration at the log's offset, then every CONFIG entry after it: the one in
        # effect is the latest in the log, committed or not (thesis 4.1).
        self._base_config = state.snapshot.meta.config if state.snapshot else membership
        self._config_entries: list[tuple[int, int, Configuration]] = []
        self.membership = self._base_config
        self._quorum = JointConfig.of(self.membership.voters, self.membership.voters_outgoing)
        self.role = Role.FOLLOWER
        self.leader_id = NO_NODE
        self.progress: dict[NodeId, Progress] = {}
        self._votes: dict[NodeId, bool] = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._election_timeout = config.election_timeout_ticks
        self._ticks = 0
        # After a restart, this node may have acknowledged a leader's heartbeat just before it
        # went down; it honours that leader's lease for one election timeout (a node that never
        # saw any term cannot have).
        self._restart_lease_ticks = config.election_timeout_ticks if hard.term > 0 else 0
        self._msgs: list[Message] = []
        self._read_states: list[ReadState] = []
        self._reads = PendingReads(config.max_pending_reads)
        self._reads_before_commit: list[tuple[bytes, NodeId, bool]] = []
        self._ack_tick: dict[NodeId, int] = {}
        self._seq_tick: dict[int, int] = {}
        self._lease_floor_tick = 0
        self._transferee = NO_NODE
        self._uncommitted_bytes = 0
        self._forward: list[bytes] = []
        self._broadcast_pending = False
        self._prev_hard = hard
        self._prev_soft = SoftState(self.role, self.leader_id)
        self._reset_election_timeout()
        self._track_config_entries(self.log.entries)

    # ---- read-only views -------------------------------------------------------------------

    @property
    def commit_index(self) -> int:
        return self.log.commit_index

    @property
    def applied_index(self) -> int:
        return self.log.applied_index

    @property
    def last_index(self) -> int:
        return self.log.last_index()

    @property
    def last_term(self) -> int:
        return self.log.last_term()

    @property
    def first_index(self) -> int:
        return self.log.first_index()

    @property
    def lead_transferee(self) -> NodeId:
        return self._transferee

    def entry(self, index: int) -> Entry | None:
        return self.log.entry(index)

    def entries(self, lo: int, hi: int) -> list[Entry]:
        return self.log.slice(lo, hi)

    @property
    def membership_pending(self) -> bool:
        """Whether the latest configuration entry is not yet committed."""
        return bool(self._config_entries) and self._config_entries[-1][0] > self.log.commit_index

    def hard_state(self) -> HardState:
        return HardState(self.term, self.voted_for, self.log.commit_index)

    def __repr__(self) -> str:
        return (
            f"RaftNode(id={self.node_id}, {self.role.value}, term={self.term}, "
            f"leader={self.leader_id}, last={self.last_index}, commit={self.commit_index})"
        )

    # ---- role changes: one door per role ---------------------------------------------------

    def _reset(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = NO_NODE
        self.leader_id = NO_NODE
        self._votes = {}
        self._election_elapsed = 0
        self._heartbeat_elapsed = 0
        self._reset_election_timeout()
        self._transferee = NO_NODE
        self.progress = {}
        self._reads.reset()
        self._reads_before_commit = []
        self._ack_tick = {}
        self._seq_tick = {}
        self._uncommitted_bytes = 0
        self._broadcast_pending = False

    def _reset_election_timeout(self) -> None:
        timeout = self.config.election_timeout_ticks
        self._election_timeout = timeout + self._rng.randrange(timeout)

    def _become_follower(self, term: int, leader_id: NodeId) -> None:
        self._reset(term)
        self.role = Role.FOLLOWER
        self.leader_id = leader_id

    def _become_pre_candidate(self) -> None:
        # Pre-vote changes neither term nor vote (thesis 9.6).
        self._reset(self.term)
        self.role = Role.PRE_CANDIDATE

    def _become_candidate(self) -> None:
        assert self.role is not Role.LEADER
        self._reset(self.term + 1)
        self.role = Role.CANDIDATE
        self.voted_for = self.node_id

    def _become_leader(self) -> None:
        assert self.role is Role.CANDIDATE
        self._reset(self.term)
        self.role = Role.LEADER
        self.leader_id = self.node_id
        next_index = self.log.last_index() + 1
        for member in self.membership.members() | {self.node_id}:
            progress = Progress(next_index, self.config.max_inflight_messages)
            self.progress[member] = progress
        own = self.progress[self.node_id]
        own.maybe_update(self.log.stable_index)
        own.become_replicate()
        own.recent_active = True
        # A no-op of the new term lets the leader commit, and so learn the commit index
        # (Raft 5.4.2 and section 8).
        self.log.append([Entry(next_index, self.term, EntryKind.NOOP)])
        self._broadcast_pending = True

    # ---- time --------------------------------------------------------------------------------

    def tick(self) -> None:
        self._ticks += 1
        if self.role is Role.LEADER:
            self._tick_leader()
        else:
            self._tick_election()

    def _tick_election(self) -> None:
        self._election_elapsed += 1
        if self._election_elapsed >= self._election_timeout and self._promotable():
            self._election_elapsed = 0
            self.campaign()

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._election_elapsed += 1
        if self._election_elapsed >= self.config.election_timeout_ticks:
            self._election_elapsed = 0
            self._retry_stuck_progress()
            if self.config.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, NO_NODE)
                return
            self._transferee = NO_NODE  # a transfer that did not finish in time is abandoned
        if self._heartbeat_elapsed >= self.config.heartbeat_interval_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat(self._next_read_seq())
        self._announce_commit()

    def _announce_commit(self) -> None:
        """Send the commit index to the followers that have not been told it. A new commit
        index is not broadcast at once: followers learn it from the next AppendEntries (Raft
        5.3), so under load it rides on the appends that go out anyway, and an idle leader
        sends it here within a tick. That halves the messages of a sequential writer."""
        for member in self.progress:
            self._announce_commit_to(member)

    def _announce_commit_to(self, member: NodeId) -> None:
        pr = self.progress.get(member)
        if (
            member != self.node_id
            and pr is not None
            and pr.state is ProgressState.REPLICATE
            and pr.commit_sent < self.log.commit_index
        ):
            self._send_append(member, send_if_empty=True)

    def _quorum_recently_active(self) -> bool:
        active = frozenset(member for member, pr in self.progress.items() if pr.recent_active) | {
            self.node_id
        }
        for member, pr in self.progress.items():
            pr.recent_active = member == self.node_id
        return self._quorum.is_quorum(active)

    def _retry_stuck_progress(self) -> None:
        """Once per election timeout: resend what seems lost (a snapshot or a window of appends
        that nobody acknowledged)."""
        for member, pr in self.progress.items():
            if member == self.node_id:
                continue
            if pr.state is ProgressState.SNAPSHOT:
                pr.abandon_snapshot()
                self._send_append(member)
            elif pr.stalled():
                pr.become_probe()
                self._send_append(member)

    def _promotable(self) -> bool:
        """A voter of the latest configuration may campaign, and so may a voter of the
        committed one while a change that took its vote is pending (thesis 4.2.2): the others
        may still need its vote, which it refuses to a shorter log, so it must be able to win
        and commit the change itself. It counts votes by its latest configuration, without its
        own, and steps down once the change commits."""
        if self.membership.is_voter(self.node_id):
            return True
        committed = self._config_at(self.log.commit_index)
        return self.membership_pending and committed.is_voter(self.node_id)

    # ---- elections ---------------------------------------------------------------------------

    def campaign(self, transfer: bool = False) -> None:
        """Start an election now (with a pre-vote round first when configured)."""
        if self.role is Role.LEADER or not self._promotable():
            return
        if self.config.pre_vote and not transfer:
            self._become_pre_candidate()
            self._request_votes(self.term + 1, pre_vote=True, transfer=False)
        else:
            self._become_candidate()
            self._request_votes(self.term, pre_vote=False, transfer=transfer)

    def _request_votes(self, term: int, pre_vote: bool, transfer: bool) -> None:
        self._votes[self.node_id] = True
        if self._tally_votes():
            return
        for voter in sorted(self._quorum.voters() - {self.node_id}):
            self._send(
                RequestVote(
                    term,
                    self.node_id,
                    voter,
                    self.log.last_index(),
                    self.log.last_term(),
                    pre_vote=pre_vote,
                    transfer=transfer,
                )
            )

    def _tally_votes(self) -> bool:
        """Act on the election's outcome once known; says whether it is decided."""
        result = self._quorum.vote_result(self._votes)
        if result is VoteResult.WON:
            if self.role is Role.PRE_CANDIDATE:
                self._become_candidate()
                self._request_votes(self.term, pre_vote=False, transfer=False)
            else:
                self._become_leader()
            return True
        if result is VoteResult.LOST:
            self._become_follower(self.term, NO_NODE)
            return True
        return False

    def _handle_vote_request(self, m: RequestVote) -> None:
        can_vote = (
            self.voted_for == m.sender
            or (self.voted_for == NO_NODE and self.leader_id == NO_NODE)
            or (m.pre_vote and m.term > self.term)
        )
        if can_vote and self.log.is_up_to_date(m.last_log_index, m.last_log_term):
            if not m.pre_vote:
                self._election_elapsed = 0
                self.voted_for = m.sender
            # A granted pre-vote answers in the term the candidate would campaign in.
            self._send(RequestVoteResponse(m.term, self.node_id, m.sender, True, m.pre_vote))
        else:
            self._send(RequestVoteResponse(self.term, self.node_id, m.sender, False, m.pre_vote))

    def _handle_vote_response(self, m: RequestVoteResponse) -> None:
        expected = Role.PRE_CANDIDATE if m.pre_vote else Role.CANDIDATE
        if self.role is not expected or m.sender in self._votes:
            return
        self._votes[m.sender] = m.granted
        self._tally_votes()

    # ---- the message entry point -------------------------------------------------------------

    def step(self, m: Message) -> None:
        """Feed one message addressed to this node."""
        if m.receiver != self.node_id:
            return
        if m.term > self.term:
            if not self._accept_higher_term(m):
                return
        elif m.term < self.term:
            self._answer_stale(m)
            return
        self._dispatch(m)

    def _accept_higher_term(self, m: Message) -> bool:
        if isinstance(m, RequestVote):
            in_lease = (
                self.config.check_quorum
                and self._election_elapsed < (self.config.election_timeout_ticks)
                and (self.leader_id != NO_NODE or self._ticks < self._restart_lease_ticks)
            )
            # A live leader is known, or this node has just started and may have promised a
            # leader its lease before the restart (it cannot remember): do not disrupt it.
            if in_lease and not m.transfer:
                return False
            if m.pre_vote:
                return True  # a pre-vote never moves our term
        if isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
            return True
        leader = m.sender if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot) else 0
        elapsed, was_leader = self._election_elapsed, self.role is Role.LEADER
        self._become_follower(m.term, leader)
        if isinstance(m, RequestVote) and not was_leader:
            # Figure 2: only the leader or a granted vote restarts the election timer. A voter
            # that refuses a candidate with a shorter log keeps counting, so doomed candidacies
            # at ever higher terms cannot keep the node that can win from campaigning.
            self._election_elapsed = elapsed
        return True

    def _answer_stale(self, m: Message) -> None:
        """A message from an older term: tell a stale leader or (pre-)candidate our term (Figure
        2). A candidate left unanswered could trail forever behind the terms of a voter that
        keeps campaigning with a log too short to win."""
        if isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._send(AppendEntriesResponse(self.term, self.node_id, m.sender, success=False))
        elif isinstance(m, RequestVote):
            self._send(RequestVoteResponse(self.term, self.node_id, m.sender, False, m.pre_vote))
        elif isinstance(m, ForwardProposal):
            self._keep_forwarded(m.data)  # sent to us as an older term's leader: pass it on

    def _dispatch(self, m: Message) -> None:
        if isinstance(m, RequestVote):
            self._handle_vote_request(m)
        elif isinstance(m, RequestVoteResponse):
            self._handle_vote_response(m)
        elif isinstance(m, AppendEntries | Heartbeat | InstallSnapshot):
            self._from_leader(m)
        elif self.role is Role.LEADER:
            self._step_leader(m)
        else:
            self._step_follower(m)

    def _from_leader(self, m: AppendEntries | Heartbeat | InstallSnapshot) -> None:
        assert self.role is not Role.LEADER, f"two leaders in term {self.term}"
        if self.role is not Role.FOLLOWER or self.leader_id != m.sender:
            self._become_follower(self.term, m.sender)
        self._election_elapsed = 0
        if isinstance(m, AppendEntries):
            self._handle_append(m)
        elif isinstance(m, Heartbeat):
            self._handle_heartbeat(m)
        else:
            self._handle_snapshot(m)

    # ---- follower side -----------------------------------------------------------------------

    def _handle_append(self, m: AppendEntries) -> None:
        last_new = self.log.maybe_append(
            m.prev_log_index, m.prev_log_term, m.leader_commit, m.entries
        )
        if last_new is not None:
            self._track_config_entries(m.entries)
            self._send(
                AppendEntriesResponse(self.term, self.node_id, m.sender, True, match_index=last_new)
            )
            return
        hint_index, hint_term = self.log.conflict_hint(m.prev_log_index, m.prev_log_term)
        self._send(
            AppendEntriesResponse(
                self.term,
                self.node_id,
                m.sender,
                False,
                reject_index=m.prev_log_index,
                hint_index=hint_index,
                hint_term=hint_term,
            )
        )

    def _handle_heartbeat(self, m: Heartbeat) -> None:
        self.log.commit_to(min(m.leader_commit, self.log.last_index()))
        self._send(HeartbeatResponse(self.term, self.node_id, m.sender, m.read_seq))

    def _handle_snapshot(self, m: InstallSnapshot) -> None:
        meta = m.snapshot.meta
        if meta.index > self.log.commit_index:
            if self.log.matches(meta.index, meta.term):
                self.log.commit_to(meta.index)  # our log already holds it: just move on
            else:
                self.log.restore(m.snapshot)
                self._base_config = meta.config
                self._config_entries = []
                self._set_membership(meta.config)
        match = self.log.commit_index
        self._send(AppendEntriesResponse(self.term, self.node_id, m.sender, True, match))

    def _step_follower(self, m: Message) -> None:
        if isinstance(m, TimeoutNow):
            self.campaign(transfer=True)
        elif isinstance(m, ReadIndexResponse):
            self._read_states.append(ReadState(m.context, m.index))
        elif isinstance(m, ForwardProposal):
            self._keep_forwarded(m.data)  # we led when it left: pass it on
        # A read request reaches a follower only from a node that thinks it leads: dropped.

    def _keep_forwarded(self, data: tuple[bytes, ...]) -> None:
        """Forwarded proposals that reached a node that cannot append them (it no longer leads,
        or is handing leadership over): nobody appended them, so they go on to the leader this
        node knows, or wait for one. Beyond ``max_uncommitted_bytes`` waiting they are dropped
        (their clients time out)."""
        room = self.config.max_uncommitted_bytes - sum(map(len, self._forward))
        for item in data:
            if len(item) > room:
                return
            self._forward.append(item)
            room -= len(item)

    # ---- leader side -------------------------------------------------------------------------

    def _step_leader(self, m: Message) -> None:
        if isinstance(m, AppendEntriesResponse):
            self._handle_append_response(m)
        elif isinstance(m, HeartbeatResponse):
            self._handle_heartbeat_response(m)
        elif isinstance(m, ForwardProposal):
            if self._transferee != NO_NODE:
                self._keep_forwarded(m.data)  # for the next leader
                return
            pr = self.progress.get(m.sender)
            for data in m.data:
                try:
                    index = self.propose(data)
                except ReplogError:
                    return  # the follower's client times out and retries
                if pr is not None and index is not None:
                    pr.forwarded_index = index
        elif isinstance(m, ReadIndexRequest):
            self._start_read(m.context, m.sender)

    def _handle_append_response(self, m: AppendEntriesResponse) -> None:
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        pr.recent_active = True
        if not m.success:
            # Our last entry at or below the follower's hint whose term is no newer than the
            # hint's: everything after it in a term the follower lacks is skipped at once.
            hint_index, _ = self.log.conflict_hint(m.hint_index, m.hint_term)
            if pr.maybe_decrease(m.reject_index, hint_index):
                self._send_append(m.sender)
            return
        if not pr.on_append_success(m.match_index):
            return
        if pr.match_index > self.log.commit_index:
            self._maybe_commit()  # followers learn it with the next append (see _announce_commit)
        if self.role is Role.LEADER:  # (a leader whose removal committed stepped down)
            self._send_append(m.sender)
        if m.sender == self._transferee and pr.match_index == self.log.last_index():
            self._send(TimeoutNow(self.term, self.node_id, m.sender))

    def _handle_heartbeat_response(self, m: HeartbeatResponse) -> None:
        pr = self.progress.get(m.sender)
        if pr is None:
            return
        pr.recent_active = True
        pr.on_heartbeat_response(m.read_seq)
        if pr.match_index < self.log.last_index():
            # A probe goes out even when it carries no entries: its consistency check is what
            # tells us where the follower's log ends (a new member starts with nothing).
            self._send_append(m.sender, send_if_empty=pr.state is ProgressState.PROBE)
        if m.read_seq:
            self._reads.ack(m.sender, m.read_seq)
            self._record_lease_ack(m.sender, m.read_seq)
            self._release_reads()

    def _maybe_commit(self) -> bool:
        """Commit what a quorum holds. Called when a voter's match index moved past the commit
        index: only such a move can let the commit index advance."""
        acked = {member: pr.match_index for member, pr in self.progress.items()}
        index = min(self._quorum.committed_index(acked), self.log.last_index())
        # Only entries of the current term are committed by counting replicas (Raft 5.4.2).
        if index <= self.log.commit_index or self.log.term(index) != self.term:
            return False
        for entry in self.log.slice(self.log.commit_index + 1, index + 1):
            if entry.term == self.term and entry.kind is EntryKind.NORMAL:  # proposed by us
                self._uncommitted_bytes -= entry.size_bytes()
        assert self._uncommitted_bytes >= 0
        self.log.commit_to(index)
        self._on_commit_in_term()
        if not self.membership.is_voter(self.node_id) and not self.membership_pending:
            # Our removal is committed: stop leading a cluster we are not part of (thesis 4.2.2).
            self._become_follower(self.term, NO_NODE)
        return True

    def _announce_forwarded_commits(self) -> None:
        """A member whose forwarded proposals committed is told with this Ready: its clients
        wait for that commit index, which would otherwise come with the next tick. (Called
        after the appends of this Ready went out: one that went to it carried the index.)"""
        for member, pr in self.progress.items():
            if pr.forwarded_index and pr.forwarded_index <= self.log.commit_index:
                pr.forwarded_index = 0
                self._announce_commit_to(member)

    def _send_append(self, to: NodeId, send_if_empty: bool = False) -> None:
        """Send what ``to`` is missing, as far as its progress allows (pipelined in REPLICATE)."""
        pr = self.progress[to]
        if pr.next_index == self.log.last_index() + 1 and not send_if_empty:
            return  # nothing to send (the common answer to an acknowledgement)
        while not pr.is_paused():
            prev_index = pr.next_index - 1
            prev_term = self.log.term(prev_index)
            if prev_term is None:
                self._send_snapshot(to, pr)
                return
            entries = self.log.slice(
                pr.next_index, self.log.last_index() + 1, self.config.max_message_bytes
            )
            if not entries and not send_if_empty:
                return
            self._send(
                AppendEntries(
                    self.term,
                    self.node_id,
                    to,
                    prev_index,
                    prev_term,
                    tuple(entries),
                    self.log.commit_index,
                )
            )
            last_sent = prev_index + len(entries)
            pr.commit_sent = self.log.commit_index
            pr.sent_entries(last_sent, len(entries))
            if (
                not entries
                or pr.state is not ProgressState.REPLICATE
                or last_sent == self.log.last_index()
            ):
                return
            send_if_empty = False

    def _send_snapshot(self, to: NodeId, pr: Progress) -> None:
        snapshot = self.log.snapshot
        assert snapshot is not None, "entries were compacted without a snapshot"
        self._send(InstallSnapshot(self.term, self.node_id, to, snapshot))
        pr.become_snapshot(snapshot.meta.index)

    def _broadcast_append(self) -> None:
        self._broadcast_pending = False
        for member in sorted(self.progress):
            if member != self.node_id:
                self._send_append(member, send_if_empty=True)

    def _broadcast_heartbeat(self, read_seq: int) -> None:
        for member in sorted(self.progress):
            if member == self.node_id:
                continue
            pr = self.progress[member]
            pr.on_heartbeat_sent(read_seq)
            commit = min(pr.match_index, self.log.commit_index)
            pr.commit_sent = max(pr.commit_sent, commit)
            self._send(Heartbeat(self.term, self.node_id, member, commit, read_seq))

    # ---- client requests ---------------------------------------------------------------------

    def propose(self, data: bytes) -> int | None:
        """Propose a command. A leader appends it and returns its index; a follower forwards it
        to the leader it knows and returns None. Raises a ``ProposalError`` when it cannot."""
        if self.role is not Role.LEADER:
            if self.leader_id == NO_NODE:
                raise NotLeader(NO_NODE)
            if sum(map(len, self._forward)) + len(data) > self.config.max_uncommitted_bytes:
                raise ProposalDropped("too many proposals are waiting to be forwarded")
            self._forward.append(data)
            return None
        if self._transferee != NO_NODE:
            raise ProposalDropped(f"leadership is being transferred to node {self._transferee}")
        entry = Entry(self.log.last_index() + 1, self.term, EntryKind.NORMAL, data)
        size = entry.size_bytes()
        limit = self.config.max_uncommitted_bytes
        if self._uncommitted_bytes and self._uncommitted_bytes + size > limit:
            raise UncommittedLogFull(self._uncommitted_bytes, limit)
        self._uncommitted_bytes += size
        self.log.append([entry])
        self._broadcast_pending = True
        return entry.index

    def read_index(self, context: bytes, lease: bool = True) -> None:
        """Ask for a linearizable read. Its ``ReadState(context, index)`` arrives in a later
        Ready; serve the read once ``index`` is applied. It may never arrive if leadership is
        lost: callers need a timeout. ``lease=False`` asks for the heartbeat round even when
        lease reads are configured (a lease read is only taken when both allow it)."""
        if self.role is Role.LEADER:
            self._start_read(context, self.node_id, lease)
        elif self.leader_id != NO_NODE:
            self._send(ReadIndexRequest(self.term, self.node_id, self.leader_id, context))
        else:
            raise NotLeader(NO_NODE)

    def _start_read(self, context: bytes, requester: NodeId, lease: bool = True) -> None:
        if self.log.term(self.log.commit_index) != self.term:
            # Until an entry of this term commits, our commit index may lag the real one.
            if len(self._reads_before_commit) < self.config.max_pending_reads:
                self._reads_before_commit.append((context, requester, lease))
            return
        index = self.log.commit_index
        if self._quorum.voters() <= {self.node_id} or (lease and self._lease_valid()):
            self._answer_read(PendingRead(0, index, context, requester))
            return
        self._broadcast_heartbeat(self._stamp(self._reads.add(index, context, requester)))

    def _on_commit_in_term(self) -> None:
        waiting, self._reads_before_commit = self._reads_before_commit, []
        for context, requester, lease in waiting:
            self._start_read(context, requester, lease)

    def _release_reads(self) -> None:
        for read in self._reads.release(self._quorum, self.node_id):
            self._answer_read(read)

    def _answer_read(self, read: PendingRead) -> None:
        if read.requester == self.node_id:
            self._read_states.append(ReadState(read.context, read.index))
        else:
            self._announce_commit_to(read.requester)  # so it can apply up to the read index
            self._send(
                ReadIndexResponse(self.term, self.node_id, read.requester, read.context, read.index)
            )

    def _next_read_seq(self) -> int:
        """Every heartbeat round carries a fresh sequence number, so it can confirm reads."""
        return self._stamp(self._reads.add_round())

    def _stamp(self, seq: int) -> int:
        """Remember when heartbeat round ``seq`` left (leases are measured from it)."""
        if self.config.lease_reads:
            self._seq_tick[seq] = self._ticks
        return seq

    # ---- leases ------------------------------------------------------------------------------

    def _record_lease_ack(self, member: NodeId, seq: int) -> None:
        sent_tick = self._seq_tick.get(seq)
        if sent_tick is not None and sent_tick > self._ack_tick.get(member, -1):
            self._ack_tick[member] = sent_tick
        if len(self._seq_tick) > 4 * self.config.election_timeout_ticks + 1024:
            # A heartbeat sent over an election timeout ago can no longer support a lease.
            oldest = self._ticks - self.config.election_timeout_ticks
            self._seq_tick = {s: t for s, t in self._seq_tick.items() if t >= oldest}

    def _lease_valid(self) -> bool:
        """A lease holds while a quorum acknowledged a heartbeat sent less than an election
        timeout (minus the clock drift bound) ago: until then no follower of that quorum votes
        for anyone else."""
        if not self.config.lease_reads or self._transferee != NO_NODE:
            return False
        acked = dict(self._ack_tick)
        acked[self.node_id] = self._ticks
        since = self._quorum.committed_index(acked)
        if since < self._lease_floor_tick:
            return False
        lease = self.config.election_timeout_ticks - self.config.clock_drift_ticks
        return self._ticks < since + lease

    # ---- leadership transfer -----------------------------------------------------------------

    def transfer_leader(self, to: NodeId) -> None:
        """Hand leadership to ``to`` (thesis 3.10): catch it up, then tell it to campaign."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if to == self.node_id:
            return
        if not self.membership.is_voter(to):
            raise ReplogError(f"node {to} is not a voter and cannot lead")
        self._transferee = to
        self._election_elapsed = 0
        self._lease_floor_tick = self._ticks + 1  # the target's campaign ignores leases
        if self.progress[to].match_index == self.log.last_index():
            self._send(TimeoutNow(self.term, self.node_id, to))
        else:
            self._send_append(to)

    # ---- membership changes (Raft thesis 4.1, 4.2) ---------------------------------------------

    def propose_membership(self, config: Configuration, context: bytes = b"") -> int:
        """Propose a new configuration that adds, promotes or removes at most one voter (and any
        learners); ``context`` travels in the entry for the application. It takes effect on
        each node as soon as the entry is in its log. Returns the entry's index."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader_id)
        if self._transferee != NO_NODE:
            raise ProposalDropped(f"leadership is being transferred to node {self._transferee}")
        if self.membership_pending:
            raise ProposalDropped("a membership change is still uncommitted")
        if self.log.term(self.log.commit_index) != self.term:
            # Without this, changes across leader elections can break overlap (the single-server
            # change fix: a leader first commits an entry of its own term).
            raise ProposalDropped("this leader has not committed an entry of its term yet")
        _check_change(self.membership, config)
        data = encode_config(config, context)
        entry = Entry(self.log.last_index() + 1, self.term, EntryKind.CONFIG, data)
        self.log.append([entry])
        self._track_config_entries([entry])
        self._broadcast_pending = True
        return entry.index

    def _track_config_entries(self, entries: Sequence[Entry]) -> None:
        """Keep ``_config_entries`` equal to the CONFIG entries of the log after it changed
        (entries appended, possibly replacing a conflicting suffix), and switch to the latest."""
        log = self.log
        kept = [c for c in self._config_entries if log.term(c[0]) == c[1]]
        changed = len(kept) != len(self._config_entries)
        for entry in entries:
            if entry.kind is not EntryKind.CONFIG or log.term(entry.index) != entry.term:
                continue
            if kept and entry.index <= kept[-1][0]:
                continue
            config, _ = decode_config(entry.data)
            kept.append((entry.index, entry.term, config))
            changed = True
        if changed:
            self._config_entries = kept
            self._set_membership(kept[-1][2] if kept else self._base_config)

    def _config_at(self, index: int) -> Configuration:
        config = self._base_config
        for config_index, _, entry_config in self._config_entries:
            if config_index > index:
                break
            config = entry_config
        return config

    def _set_membership(self, config: Configuration) -> None:
        self.membership = config
        self._quorum = JointConfig.of(config.voters, config.voters_outgoing)
        if self.role is not Role.LEADER:
            return
        for member in config.members():
            if member not in self.progress:
                self.progress[member] = Progress(
                    self.log.last_index() + 1, self.config.max_inflight_messages
                )
        for member in list(self.progress):
            if member != self.node_id and member not in config.members():
                del self.progress[member]
                self._ack_tick.pop(member, None)
        if self._transferee != NO_NODE and not config.is_voter(self._transferee):
            self._transferee = NO_NODE

    # ---- snapshots ---------------------------------------------------------------------------

    def snapshot_meta(self, index: int) -> SnapshotMeta:
        """The metadata of a snapshot of the state machine at applied ``index``: the term of
        that entry and the membership, so a node restored from it knows its cluster."""
        term = self.log.term(index)
        if index > self.log.applied_index or term is None:
            raise ReplogError(
                f"cannot snapshot at {index}: applied index is {self.log.applied_index} and the "
                f"log holds {self.log.offset}..{self.log.last_index()}"
            )
        return SnapshotMeta(index, term, self._config_at(index))

    def compact(self, snapshot: Snapshot, keep_entries: int = 0) -> None:
        """The application saved ``snapshot`` (at an applied index); drop the log before it,
        keeping a trailing window of ``keep_entries`` for followers that are slightly behind."""
        meta = snapshot.meta
        if meta.index > self.log.applied_index:
            raise ReplogError(
                f"snapshot at {meta.index} is past the applied index {self.log.applied_index}"
            )
        if self.log.term(meta.index) not in (None, meta.term) or not meta.config.voters:
            raise ReplogError("snapshot metadata does not match the log; use snapshot_meta()")
        self.log.compact(snapshot, keep_entries)
        offset = self.log.offset
        self._base_config = self._config_at(offset)
        self._config_entries = [c for c in self._config_entries if c[0] > offset]

    # ---- Ready -------------------------------------------------------------------------------

    def _send(self, m: Message) -> None:
        self._msgs.append(m)

    def _can_forward(self) -> bool:
        """Whether proposals waiting in ``_forward`` have a leader to go to: this node, unless
        it is handing leadership over, or the leader it knows."""
        if self.role is Role.LEADER:
            return self._transferee == NO_NODE
        return self.leader_id != NO_NODE

    def _flush(self) -> None:
        if self._forward and self._can_forward():
            waiting, self._forward = tuple(self._forward), []
            if self.role is Role.LEADER:
                self._step_leader(ForwardProposal(self.term, self.node_id, self.node_id, waiting))
            else:
                self._send(ForwardProposal(self.term, self.node_id, self.leader_id, waiting))
        if self._broadcast_pending and self.role is Role.LEADER:
            self._broadcast_append()
        self._broadcast_pending = False
        if self.role is Role.LEADER:
            self._announce_forwarded_commits()

    def _apply_from(self) -> int:
        pending = self.log.pending_snapshot
        return pending.meta.index if pending else self.log.applied_index

    def has_ready(self) -> bool:
        log, hard, soft = self.log, self._prev_hard, self._prev_soft
        return bool(
            self._msgs
            or self._read_states
            or self._broadcast_pending
            or (bool(self._forward) and self._can_forward())
            or log.pending_snapshot is not None
            or log.stable_index < log.last_index()
            or log.commit_index > self._apply_from()
            or log.commit_index != hard.commit_index
            or self.term != hard.term
            or self.voted_for != hard.voted_for
            or self.role is not soft.role
            or self.leader_id != soft.leader_id
        )

    def ready(self) -> Ready:
        """Collect the effects accumulated since the last ``advance``."""
        self._flush()
        hard = self.hard_state()
        soft = SoftState(self.role, self.leader_id)
        offset = self.log.offset
        ready = Ready(
            soft_state=soft,
            hard_state=hard if hard != self._prev_hard else None,
            entries=tuple(self.log.entries[self.log.stable_index - offset :]),
            snapshot=self.log.pending_snapshot,
            messages=tuple(self._msgs),
            committed_entries=tuple(
                self.log.slice(
                    self._apply_from() + 1, self.log.commit_index + 1, self.config.max_apply_bytes
                )
            ),
            read_states=tuple(self._read_states),
            vote_changed=(hard.term, hard.voted_for)
            != (self._prev_hard.term, self._prev_hard.voted_for),
        )
        self._msgs = []
        self._read_states = []
        self._prev_hard = hard
        self._prev_soft = soft
        return ready

    def advance(self, ready: Ready) -> None:
        """The application carried out ``ready``: its entries are durable and its committed
        entries applied."""
        if ready.snapshot is not None:
            self.log.pending_snapshot = None
            self.log.applied_index = max(self.log.applied_index, ready.snapshot.meta.index)
            self.log.stable_index = max(self.log.stable_index, ready.snapshot.meta.index)
        if ready.entries:
            last = ready.entries[-1]
            if self.log.term(last.index) == last.term:
                self.log.stable_index = max(self.log.stable_index, last.index)
        if ready.committed_entries:
            self.log.applied_index = ready.committed_entries[-1].index
        if self.role is Role.LEADER:
            own = self.progress[self.node_id]
            if own.maybe_update(self.log.stable_index) and own.match_index > self.log.commit_index:
                self._maybe_commit()


def _check_change(current: Configuration, new: Configuration) -> None:
    """A single-server change (thesis 4.1): majorities of the old and new voter sets overlap."""
    if new.voters_outgoing:
        raise ReplogError("joint configurations cannot be proposed directly")
    if not new.voters:
        raise ReplogError("a configuration needs at least one voter")
    if new.voters & new.learners:
        raise ReplogError("a node cannot be both a voter and a learner")
    if any(node <= 0 for node in new.members()):
        raise ReplogError("node ids are positive integers")
    if len(new.voters ^ current.voters) > 1:
        raise ReplogError("a change may add, promote or remove at most one voter at a time")
    if new == current:
        raise ReplogError("the configuration is unchanged")
