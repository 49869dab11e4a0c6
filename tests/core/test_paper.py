"""One test per rule of the Raft paper (sections 5.1-5.4, 7 and 8), then the extensions of the
Raft thesis the core implements: pre-vote (9.6), check-quorum (6.2), ReadIndex and lease reads
(6.4), leadership transfer (3.10), plus forwarding, flow-control limits, restarts and
determinism.

Each test is a transcript: arrange a cluster, act (ticks, proposals, messages delivered whole or
one at a time), assert what the paper requires. Tests of the paper's own rules turn pre-vote and
check-quorum off (``CLASSIC``) so that only the rule under test is at work.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from replog.core import (
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
    NotLeader,
    PersistentState,
    ProposalDropped,
    RaftConfig,
    RaftNode,
    ReadIndexRequest,
    ReadIndexResponse,
    ReadState,
    ReplogError,
    RequestVote,
    RequestVoteResponse,
    Role,
    Snapshot,
    SnapshotMeta,
    TimeoutNow,
    UncommittedLogFull,
)

from .harness import Cluster, is_msg, log_of_terms, persisted

CLASSIC = {"pre_vote": False, "check_quorum": False}
ELECTION_TICKS = 10  # RaftConfig's default election_timeout_ticks


def of_kind(messages: list[Message], kind: type) -> list[Any]:
    return [m for m in messages if isinstance(m, kind)]


def committed_cluster(*data: bytes, **config: object) -> tuple[Cluster, RaftNode]:
    """Three nodes, node 1 elected, ``data`` proposed and committed everywhere."""
    c = Cluster([1, 2, 3], **config)
    leader = c.elect(1)
    for item in data:
        leader.propose(item)
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    return c, leader


# ==== 5.1 Raft basics ========================================================================


def test_5_1_servers_start_as_followers() -> None:
    c = Cluster([1, 2, 3])
    for node in c.nodes.values():
        assert (node.role, node.term, node.leader_id, node.voted_for) == (Role.FOLLOWER, 0, 0, 0)


def test_5_1_higher_term_makes_leader_step_down() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    old = c.elect(1)
    c.partition([1], [2, 3])
    new = c.elect(2)
    assert (old.role, old.term, new.term) == (Role.LEADER, 1, 2)
    c.heal()

    c.tick(1, only={1})  # the old leader's heartbeats are answered with term 2

    # 5.1: if a server's term is smaller than another's it updates its term; a leader that
    # learns of a newer term reverts to follower.
    assert (old.role, old.term) == (Role.FOLLOWER, 2)
    c.tick(1, only={2})
    assert old.leader_id == 2


def test_5_1_stale_term_message_rejected() -> None:
    c, old = committed_cluster(b"a", **CLASSIC)
    c.partition([1], [2, 3])
    c.elect(2)
    follower = c.nodes[3]
    log_before = c.log_terms(3)
    old.propose(b"from the past")
    [stale] = c.take(is_msg(AppendEntries, sender=1, receiver=3))
    assert stale.term == 1

    c.send(stale)

    # 5.1: a server rejects a request with a stale term; its answer carries its own term.
    assert c.log_terms(3) == log_before
    assert (follower.term, follower.leader_id) == (2, 2)
    [answer] = c.take(is_msg(AppendEntriesResponse, sender=3))
    assert (answer.term, answer.success) == (2, False)
    c.send(answer)
    assert (old.role, old.term) == (Role.FOLLOWER, 2)


def test_5_1_stale_candidate_learns_the_term_from_a_refused_vote() -> None:
    # Figure 2: a RequestVote with a stale term is answered "false" with the receiver's term,
    # and the candidate adopts it. Unanswered, a candidate with the only log that can win could
    # trail forever behind the terms of a voter whose short log keeps it campaigning (a 3-node
    # simulation found such a cluster without a leader 2 s after its repair).
    states = {1: persisted(3, 1, 1, 1), 2: persisted(3, 1, 1, 1), 3: persisted(5, 1)}
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    c.down = {2}
    candidate = c.nodes[1]

    candidate.campaign()
    c.deliver()

    [answer] = of_kind(c.sent, RequestVoteResponse)
    assert (answer.sender, answer.term, answer.granted) == (3, 5, False)
    assert (candidate.role, candidate.term) == (Role.FOLLOWER, 5)


def test_5_2_refusing_a_vote_does_not_restart_the_election_timer() -> None:
    # Figure 2: a follower campaigns when its election timeout elapses without hearing from the
    # leader or granting a vote. A candidate whose short log cannot win, campaigning again and
    # again with ever higher terms, must not hold back the voter that can win (a simulated
    # cluster stayed leaderless for 1.9 s that way).
    states = {1: persisted(3, 1, 1, 1), 2: persisted(3, 1, 1, 1), 3: persisted(3, 1)}
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    voter = c.nodes[1]
    term = voter.term
    for tick in range(4 * ELECTION_TICKS):
        if tick % 3 == 0 and voter.role is Role.FOLLOWER:
            term += 1
            voter.step(RequestVote(term, 3, 1, last_log_index=1, last_log_term=1))
            assert voter.voted_for != 3
        voter.tick()
        if voter.role is Role.CANDIDATE:
            break
    assert voter.role is Role.CANDIDATE


# ==== 5.2 Leader election ====================================================================


def test_5_2_follower_starts_election_after_timeout() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    node = c.nodes[1]
    ticks = 0
    while node.role is Role.FOLLOWER:
        node.tick()
        ticks += 1

    # 5.2: a follower that hears nothing for an election timeout increments its term, votes
    # for itself and asks every other server for its vote.
    assert ELECTION_TICKS <= ticks < 2 * ELECTION_TICKS
    assert (node.role, node.term, node.voted_for) == (Role.CANDIDATE, 1, 1)
    requests = c.take()
    assert requests == [
        RequestVote(term=1, sender=1, receiver=2, last_log_index=0, last_log_term=0),
        RequestVote(term=1, sender=1, receiver=3, last_log_index=0, last_log_term=0),
    ]


def test_5_2_heartbeats_keep_followers_from_campaigning() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    leader = c.elect(1)
    c.tick(10 * ELECTION_TICKS)
    assert c.leader() is leader
    assert [n.term for n in c.nodes.values()] == [1, 1, 1]
    assert all(n.role is Role.FOLLOWER for i, n in c.nodes.items() if i != 1)


def test_5_2_candidate_wins_with_majority() -> None:
    c = Cluster([1, 2, 3, 4, 5], **CLASSIC)
    c.down = {4, 5}
    candidate = c.nodes[1]

    candidate.campaign()
    c.deliver()

    # 5.2: votes from a majority (itself, 2 and 3 of five) make the candidate leader, and its
    # first AppendEntries establishes its authority.
    assert (candidate.role, candidate.term) == (Role.LEADER, 1)
    assert [c.nodes[i].leader_id for i in (2, 3)] == [1, 1]


def test_5_2_candidate_without_majority_starts_a_new_election() -> None:
    c = Cluster([1, 2, 3, 4, 5], **CLASSIC)
    c.down = {3, 4, 5}
    candidate = c.nodes[1]
    candidate.campaign()
    c.deliver()
    assert (candidate.role, candidate.term) == (Role.CANDIDATE, 1)  # two votes of five

    c.tick(2 * ELECTION_TICKS, only={1})

    # 5.2: with no winner, the candidate times out and starts a new election in a new term.
    assert candidate.role is Role.CANDIDATE
    assert candidate.term >= 2


def test_5_2_candidate_refused_by_a_majority_returns_to_follower() -> None:
    states = {1: persisted(1, 1), 2: persisted(1, 1, 1), 3: persisted(1, 1, 1)}
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    candidate = c.nodes[1]

    candidate.campaign()
    c.deliver()

    assert (candidate.role, candidate.term, candidate.voted_for) == (Role.FOLLOWER, 2, 1)


def test_5_2_one_vote_per_term() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.nodes[1].campaign()
    c.nodes[2].campaign()
    [from_1] = c.take(is_msg(RequestVote, sender=1, receiver=3))
    [from_2] = c.take(is_msg(RequestVote, sender=2, receiver=3))
    assert from_1.term == from_2.term == 1

    c.send(from_1, from_2, from_1)  # the last one is a retransmission

    # 5.2: each server votes for at most one candidate in a term, first come first served.
    answers = c.take(is_msg(RequestVoteResponse, sender=3))
    assert [(a.receiver, a.granted) for a in answers] == [(1, True), (2, False), (1, True)]
    assert c.nodes[3].voted_for == 1


def test_5_2_vote_is_durable_before_reply() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    candidate, voter = c.nodes[1], c.nodes[3]
    candidate.campaign()
    own = candidate.ready()
    # The candidate's own vote is persisted with the requests it sends.
    assert own.hard_state == HardState(term=1, voted_for=1, commit_index=0)
    assert len(of_kind(list(own.messages), RequestVote)) == 2
    candidate.advance(own)
    [request] = [m for m in own.messages if m.receiver == 3]

    voter.step(request)
    rd = voter.ready()

    # 5.2 and Figure 2: votedFor is persistent state, updated on stable storage before
    # responding. The Ready that carries the granted vote carries the hard state recording it,
    # and the Ready contract persists it before any message leaves.
    [answer] = rd.messages
    assert isinstance(answer, RequestVoteResponse) and answer.granted
    assert rd.hard_state == HardState(term=1, voted_for=1, commit_index=0)
    assert rd.must_sync()


def test_5_2_randomized_election_timeouts() -> None:
    def ticks_until_campaign(seed: int) -> int:
        cfg = RaftConfig(node_id=1, pre_vote=False, check_quorum=False)
        node = RaftNode(cfg, Configuration(voters=frozenset({1, 2, 3})), random.Random(seed))
        ticks = 0
        while node.role is Role.FOLLOWER:
            node.tick()
            ticks += 1
        return ticks

    timeouts = [ticks_until_campaign(seed) for seed in range(40)]

    # 5.2: election timeouts are chosen randomly from a fixed interval ([T, 2T) here) so that
    # split votes are rare and resolved quickly.
    assert all(ELECTION_TICKS <= t < 2 * ELECTION_TICKS for t in timeouts)
    assert len(set(timeouts)) >= 6


def test_5_2_each_new_election_draws_a_new_timeout() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.down = {2, 3}
    node = c.nodes[1]
    campaigns_at = []
    for tick in range(1, 30 * ELECTION_TICKS):
        term = node.term
        c.tick(1, only={1})
        if node.term != term:
            campaigns_at.append(tick)
    gaps = [b - a for a, b in itertools.pairwise(campaigns_at)]
    assert all(ELECTION_TICKS <= gap < 2 * ELECTION_TICKS for gap in gaps)
    assert len(set(gaps)) >= 4


def test_5_2_split_votes_are_resolved() -> None:
    c = Cluster([1, 2, 3, 4], **CLASSIC)
    c.nodes[1].campaign()
    c.nodes[2].campaign()
    c.drop = lambda m: isinstance(m, RequestVote) and (m.sender, m.receiver) == (1, 4)
    c.deliver()
    c.heal()

    # Node 3 voted for 1, node 4 for 2: two votes each, three needed. Nobody wins term 1.
    assert [c.nodes[i].voted_for for i in (1, 2, 3, 4)] == [1, 2, 1, 2]
    assert c.leader() is None

    leaders_by_term: dict[int, set[int]] = {}
    for _ in range(4 * ELECTION_TICKS):
        c.tick()
        for node_id, node in c.nodes.items():
            if node.role is Role.LEADER:
                leaders_by_term.setdefault(node.term, set()).add(node_id)

    # 5.2: the candidates time out at different, random moments; the first to start the next
    # term wins it. No term ever has two leaders (Election Safety).
    leader = c.leader()
    assert leader is not None and leader.term >= 2
    assert all(len(ids) == 1 for ids in leaders_by_term.values())


def test_5_2_candidate_steps_down_on_append_from_leader_of_same_term() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.nodes[1].campaign()
    c.nodes[3].campaign()
    loser = c.nodes[3]
    assert (loser.role, loser.term) == (Role.CANDIDATE, 1)
    # The two candidates' vote requests to each other are lost; node 2 hears node 1 first.
    c.drop = lambda m: (
        {m.sender, m.receiver} == {1, 3} and isinstance(m, RequestVote | RequestVoteResponse)
    )

    c.deliver()

    # 5.2: a candidate that receives AppendEntries from a leader whose term is at least its
    # own recognizes the leader and returns to follower.
    assert c.nodes[1].role is Role.LEADER
    assert (loser.role, loser.term, loser.leader_id) == (Role.FOLLOWER, 1, 1)
    assert c.log_terms(3) == c.log_terms(1) == [1]


def test_5_2_candidate_rejects_append_from_an_older_term() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.elect(1)
    c.partition([1], [2], [3])
    c.nodes[3].campaign()
    c.nodes[1].propose(b"x")
    [old_append] = c.take(is_msg(AppendEntries, sender=1, receiver=3))

    c.send(old_append)

    assert (c.nodes[3].role, c.nodes[3].term) == (Role.CANDIDATE, 2)


# ==== 5.3 Log replication ====================================================================


def test_5_3_leader_appends_and_replicates_a_command() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    leader = c.elect(1)

    index = leader.propose(b"x")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message

    assert index == 2  # after the leader's no-op
    assert leader.entry(2) == Entry(2, 1, EntryKind.NORMAL, b"x")
    for node_id in (1, 2, 3):
        assert c.nodes[node_id].entry(2) == leader.entry(2)
        assert c.data(node_id) == [b"x"]


def test_5_3_consistency_check() -> None:
    states = {
        1: persisted(2, 1, 1, 2),
        2: persisted(2, 1, 1, 2),
        3: persisted(2, 1, 1),
    }
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    leader = c.elect_by_hand(1, 3)  # term 3; its no-op is entry 4
    [probe] = c.take(is_msg(AppendEntries, receiver=3))
    assert (probe.prev_log_index, probe.prev_log_term) == (3, 2)

    c.send(probe)

    # 5.3: the follower does not hold entry 3, so it refuses the new entries, and says where
    # its log can still match (entry 2, term 1).
    assert c.log_terms(3) == [1, 1]
    [refusal] = c.take(is_msg(AppendEntriesResponse, sender=3))
    assert (refusal.success, refusal.reject_index) == (False, 3)
    assert (refusal.hint_index, refusal.hint_term) == (2, 1)

    c.send(refusal)
    [retry] = c.take(is_msg(AppendEntries, receiver=3))
    assert (retry.prev_log_index, retry.prev_log_term) == (2, 1)
    c.send(retry)
    assert c.log_terms(3) == c.log_terms(1) == [1, 1, 2, 3]
    c.send(*c.take(is_msg(AppendEntriesResponse, sender=3)))
    assert leader.progress[3].match_index == 4


def test_5_3_follower_removes_only_conflicting_entries() -> None:
    c = Cluster([1, 2, 3], states={2: persisted(2, 1, 1, 2, 2, 2)}, **CLASSIC)
    follower = c.nodes[2]
    newer = AppendEntries(3, 1, 2, 2, 1, (Entry(3, 2), Entry(4, 3)), leader_commit=0)
    older = AppendEntries(3, 1, 2, 1, 1, (Entry(2, 1), Entry(3, 2)), leader_commit=0)

    c.send(newer)

    # 5.3: entry 3 agrees with the leader and stays; entry 4 conflicts, so it and all that
    # follow it are deleted before the leader's entry is appended.
    assert c.log_terms(2) == [1, 1, 2, 3]
    assert [e.term for e in c.durable[2].entries] == [1, 1, 2, 3]

    c.send(older)  # a late, stale copy of an earlier message

    # Nothing in it conflicts, so nothing is removed: it must not truncate entry 4.
    assert c.log_terms(2) == [1, 1, 2, 3]
    answers = c.take(is_msg(AppendEntriesResponse, sender=2))
    assert [(a.success, a.match_index) for a in answers] == [(True, 4), (True, 3)]
    assert follower.term == 3


def test_5_3_acknowledged_entries_are_durable() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.elect(1)
    c.nodes[1].propose(b"x")
    [append] = c.take(is_msg(AppendEntries, receiver=2))
    follower = c.nodes[2]

    follower.step(append)
    rd = follower.ready()

    # Figure 2: followers persist entries before responding; the success answer leaves in the
    # same Ready as the entries it acknowledges, which the contract persists first.
    [answer] = rd.messages
    assert isinstance(answer, AppendEntriesResponse) and answer.success
    assert [e.index for e in rd.entries] == [2]
    assert answer.match_index == 2
    assert rd.must_sync()


def test_5_3_leader_counts_itself_only_for_durable_entries() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.down = {3}
    leader = c.elect(1)
    follower = c.nodes[2]
    leader.propose(b"x")
    rd = leader.ready()  # entry 2 goes to storage and to node 2; not advanced yet
    [append] = [m for m in rd.messages if m.receiver == 2]
    follower.step(append)
    follower_rd = follower.ready()
    follower.advance(follower_rd)
    [ack] = follower_rd.messages

    leader.step(ack)

    # Node 2 holds entry 2 durably, but the leader's own copy is not known to be durable yet:
    # one copy of three is no majority.
    assert ack.match_index == 2
    assert leader.commit_index == 1
    leader.advance(rd)
    assert leader.commit_index == 2


def test_5_3_advance_acknowledges_only_what_the_ready_carried() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    c.down = {3}
    leader = c.elect(1)
    follower = c.nodes[2]
    leader.propose(b"x")
    rd = leader.ready()  # carries entry 2
    assert [e.index for e in rd.entries] == [2]
    leader.propose(b"y")  # entry 3 arrives while entry 2 is being persisted

    leader.advance(rd)
    unfinished = leader.ready()  # sends entry 3, but its own write never completes
    for m in rd.messages + unfinished.messages:
        if m.receiver == 2:
            follower.step(m)
    follower_rd = follower.ready()
    follower.advance(follower_rd)
    for m in follower_rd.messages:
        leader.step(m)

    # Node 2 holds entries 2 and 3; the leader has made only entry 2 durable.
    assert follower.last_index == 3
    assert leader.commit_index == 2


def test_5_3_leader_never_overwrites_own_log() -> None:
    states = {
        1: persisted(3, 1, 1, 2, 2),  # uncommitted entries of term 2
        2: persisted(3, 1, 1, 3),  # an uncommitted entry of term 3, more up to date
        3: persisted(3, 1, 1),
    }
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    leader = c.elect(1)  # term 4, with node 3's vote
    assert c.log_terms(1) == [1, 1, 2, 2, 4]

    c.tick(3)

    # 5.3 (Leader Append-Only): the leader keeps its log whatever its followers hold; the
    # followers' logs are made to match it.
    assert leader.role is Role.LEADER
    assert c.log_terms(1) == [1, 1, 2, 2, 4]
    assert c.log_terms(2) == c.log_terms(3) == [1, 1, 2, 2, 4]


def test_5_3_commit_index_propagates_to_followers() -> None:
    c, leader = committed_cluster(**CLASSIC)
    leader.propose(b"x")
    appends = c.take(is_msg(AppendEntries, sender=1))
    c.send(*appends)
    c.send(*c.take(is_msg(AppendEntriesResponse)))
    assert leader.commit_index == 2
    assert [c.nodes[i].commit_index for i in (2, 3)] == [1, 1]  # not told yet

    c.deliver()
    assert [c.nodes[i].commit_index for i in (2, 3)] == [1, 1]  # no message for that alone

    # 5.3: the leader includes its commit index in future AppendEntries, and once a follower
    # learns an entry is committed it applies it. The next append carries it...
    leader.propose(b"y")
    [append] = c.take(is_msg(AppendEntries, sender=1, receiver=2))
    assert (append.leader_commit, [e.data for e in append.entries]) == (2, [b"y"])
    c.send(append)
    c.deliver()
    assert c.nodes[2].commit_index == 2
    assert c.data(2) == [b"x"]

    # ...and an idle leader sends it within a tick: every follower ends up applying everything.
    c.tick()
    assert [c.nodes[i].commit_index for i in (2, 3)] == [3, 3]
    assert c.data(2) == c.data(3) == [b"x", b"y"]


def test_5_3_follower_commits_only_entries_known_to_match_the_leader() -> None:
    states = {
        1: persisted(2, 1, 1, commit=2),
        2: persisted(2, 1, 1, commit=2),
        3: persisted(2, 1, 1, 2, commit=2),  # entry 3 of term 2 never committed
    }
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    leader = c.elect_by_hand(1, 2)  # term 3; its no-op is entry 3
    c.drop = lambda m: m.receiver == 3 and isinstance(m, AppendEntries)
    c.deliver()
    assert leader.commit_index == 3

    leader.tick()
    [heartbeat] = c.take(is_msg(Heartbeat, receiver=3))
    c.send(heartbeat)

    # Node 3's entry 3 is not the leader's entry 3. The leader only vouches for what it knows
    # node 3 holds, so node 3 never commits (and applies) its own stale entry.
    assert heartbeat.leader_commit <= leader.progress[3].match_index
    assert c.nodes[3].commit_index == 2
    assert c.log_terms(3) == [1, 1, 2]
    c.heal()
    c.tick(2)
    assert c.log_terms(3) == [1, 1, 3]
    assert c.nodes[3].commit_index == 3


def test_5_3_leader_retries_until_the_follower_has_everything() -> None:
    c, leader = committed_cluster(b"a", **CLASSIC)
    c.down = {3}
    for item in (b"b", b"c", b"d"):
        leader.propose(item)
    c.tick(2)
    assert c.nodes[3].last_index == 2
    c.down = set()

    c.tick(3)  # 5.3: the leader retries AppendEntries indefinitely

    assert c.log_terms(3) == c.log_terms(1)
    assert c.data(3) == [b"a", b"b", b"c", b"d"]


def test_5_3_lost_appends_are_resent_even_when_heartbeat_answers_are_lost_too() -> None:
    c, leader = committed_cluster(b"a")
    answers_lost = is_msg(HeartbeatResponse, sender=3)
    c.drop = lambda m: answers_lost(m) or is_msg(AppendEntries, receiver=3)(m)
    leader.propose(b"b")
    c.deliver()
    c.drop = answers_lost  # appends get through again; nothing new is proposed

    c.tick(3 * ELECTION_TICKS)

    # Without a heartbeat answer the leader cannot tell the append was lost; once an election
    # timeout passes with no progress it sends it again anyway.
    assert c.data(3) == [b"a", b"b"]


def test_5_3_applied_in_order_exactly_once() -> None:
    c = Cluster([1, 2, 3], seed=5, **CLASSIC)
    leader = c.elect(1)
    for k in range(5):
        leader.propose(b"a%d" % k)
    c.tick(1)
    c.partition([1], [2, 3])
    leader.propose(b"lost with its leader")
    new = c.elect(2)
    for k in range(5):
        new.propose(b"b%d" % k)
    c.tick(2)
    c.heal()
    c.restart(3)
    c.tick(3)
    c.nodes[2].propose(b"last")
    c.tick(3)

    # 5.3 and Figure 2 (State Machine Safety): every node applies the same entries, in log
    # order, each exactly once; the restarted node replays from the start of its log.
    expected = [b"a0", b"a1", b"a2", b"a3", b"a4", b"b0", b"b1", b"b2", b"b3", b"b4", b"last"]
    for node_id in (1, 2, 3):
        indexes = [e.index for e in c.applied[node_id]]
        assert indexes == list(range(1, len(indexes) + 1))
        assert c.data(node_id) == expected
    assert c.applied[1] == c.applied[2] == c.applied[3]


# ==== 5.4 Safety =============================================================================


@pytest.mark.parametrize(
    ("candidate_last", "granted"),
    [
        ((5, 1), False),  # last term older, though the log is longer
        ((2, 2), False),  # same last term, shorter
        ((3, 2), True),  # identical
        ((4, 2), True),  # same last term, longer
        ((1, 3), True),  # last term newer, though the log is shorter
    ],
)
def test_5_4_1_voting_rule_rejects_less_up_to_date_log(
    candidate_last: tuple[int, int], granted: bool
) -> None:
    c = Cluster([1, 2, 3], states={3: persisted(2, 1, 1, 2)}, **CLASSIC)
    last_index, last_term = candidate_last
    request = RequestVote(3, 1, 3, last_log_index=last_index, last_log_term=last_term)

    c.send(request)

    # 5.4.1: the voter denies its vote if its own log is more up to date than the candidate's.
    [answer] = c.take(is_msg(RequestVoteResponse, sender=3))
    assert answer.granted is granted
    assert c.nodes[3].voted_for == (1 if granted else 0)
    assert c.nodes[3].term == 3


def test_5_4_1_a_node_missing_committed_entries_cannot_be_elected() -> None:
    c, leader = committed_cluster(b"a", **CLASSIC)
    c.partition([1, 2], [3])
    leader.propose(b"committed without 3")
    c.deliver()
    assert leader.commit_index == 3
    c.down = {1}
    c.heal()

    c.nodes[3].campaign()
    c.deliver()

    # 5.4.1: node 2 holds the committed entry and refuses node 3, so node 3 cannot win; every
    # future leader holds every committed entry (Leader Completeness).
    assert c.nodes[3].role is not Role.LEADER
    c.tick(4 * ELECTION_TICKS, only={2, 3})
    new = c.leader()
    assert new is not None and new.node_id == 2
    assert c.data(3)[:2] == [b"a", b"committed without 3"]


def test_5_4_2_leader_commits_only_current_term_entries_by_counting() -> None:
    states = {
        1: persisted(2, 1, 2, commit=1),  # entry 2 was written in term 2, never committed
        2: persisted(2, 1, commit=1),
        3: persisted(2, 1, commit=1),
    }
    c = Cluster([1, 2, 3], states=states, max_message_bytes=1, **CLASSIC)
    leader = c.elect_by_hand(1, 2)
    assert (leader.role, leader.term, c.log_terms(1)) == (Role.LEADER, 3, [1, 2, 3])
    [probe] = c.take(is_msg(AppendEntries, receiver=2))
    c.send(probe)  # node 2 lacks entry 2: refused
    c.send(*c.take(is_msg(AppendEntriesResponse)))
    [old_entry] = c.take(is_msg(AppendEntries, receiver=2))
    assert old_entry.entries == (Entry(2, 2),)  # one entry per message (max_message_bytes)

    c.send(old_entry)
    c.send(*c.take(is_msg(AppendEntriesResponse)))

    # 5.4.2: entry 2 is now stored on a majority (nodes 1 and 2), but it is from term 2: the
    # leader does not commit it by counting replicas.
    assert leader.progress[2].match_index == 2
    assert leader.commit_index == 1

    [own_entry] = c.take(is_msg(AppendEntries, receiver=2))
    assert own_entry.entries == (Entry(3, 3, EntryKind.NOOP),)
    c.send(own_entry)
    c.send(*c.take(is_msg(AppendEntriesResponse)))

    # Once an entry of its own term is on a majority, it and every entry before it commit.
    assert leader.commit_index == 3


# ==== 7 Log compaction, 8 Client interaction ================================================


def test_7_snapshot_installed_on_lagging_follower_after_compaction() -> None:
    c, leader = committed_cluster(b"a", **CLASSIC)
    c.down = {3}
    for k in range(8):
        leader.propose(b"b%d" % k)
    c.tick(1)
    applied = leader.applied_index
    snapshot = Snapshot(SnapshotMeta(applied, leader.term, c.membership), b"image")
    leader.compact(snapshot)
    c.durable[1].snapshot = snapshot
    assert leader.first_index == applied + 1
    c.down = set()

    c.tick(3)

    # 7: the leader no longer holds the entries node 3 needs, so it sends its snapshot; the
    # follower discards its log and continues from the snapshot.
    assert len(of_kind(c.sent, InstallSnapshot)) == 1
    follower = c.nodes[3]
    assert (follower.first_index, follower.commit_index) == (applied + 1, leader.commit_index)
    assert c.applied[3][0] == Entry(applied, 1, EntryKind.NOOP)  # the harness's restore marker
    leader.propose(b"after")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    assert c.data(3)[-1] == b"after"
    assert c.log_terms(3) == c.log_terms(1)


def lost_snapshot_cluster() -> tuple[Cluster, RaftNode]:
    """Node 3 needs entry 3, which the leader compacted; the InstallSnapshot sent for it is
    lost."""
    c, leader = committed_cluster(b"a", **CLASSIC)
    c.down = {3}
    leader.propose(b"b")
    c.tick(1)
    leader.compact(Snapshot(SnapshotMeta(leader.applied_index, 1, c.membership), b"image"))
    c.down = set()
    c.drop = lambda m: isinstance(m, InstallSnapshot)
    c.tick(2)
    assert len(of_kind(c.sent, InstallSnapshot)) == 1  # lost; nothing else is sent meanwhile
    c.heal()
    return c, leader


def test_7_lost_snapshot_is_sent_again() -> None:
    c, leader = lost_snapshot_cluster()

    c.tick(2 * ELECTION_TICKS)

    # The leader gives up waiting for an answer after an election timeout and tries again,
    # even though no new entry is proposed meanwhile.
    assert len(of_kind(c.sent, InstallSnapshot)) >= 2
    assert c.log_terms(3) == c.log_terms(1)
    assert c.nodes[3].commit_index == leader.commit_index


def test_8_leader_appends_a_noop_on_election() -> None:
    c = Cluster([1, 2, 3], states={i: persisted(1, 1, 1) for i in (1, 2, 3)}, **CLASSIC)

    leader = c.elect(1)
    c.tick()  # followers learn the commit index from the leader's next message

    # 8: a new leader commits a blank entry of its own term at the start of its term, which
    # tells it (and through it, the followers) which entries are committed.
    assert leader.entry(3) == Entry(3, 2, EntryKind.NOOP)
    assert leader.commit_index == 3
    assert [c.nodes[i].commit_index for i in (2, 3)] == [3, 3]
    assert [e.kind for e in c.applied[2]] == [EntryKind.NORMAL] * 2 + [EntryKind.NOOP]


# ==== Raft thesis 9.6: pre-vote ============================================================


def test_thesis_9_6_prevote_partitioned_node_rejoins_without_disruption() -> None:
    c, leader = committed_cluster(b"a")  # pre-vote and check-quorum are on by default
    c.partition([1, 2], [3])
    c.tick(10 * ELECTION_TICKS)
    isolated = c.nodes[3]

    # Pre-vote: the isolated node never wins a pre-vote, so it never raises its term.
    assert isolated.term == 1
    assert isolated.role is Role.PRE_CANDIDATE
    leader.propose(b"b")

    c.heal()
    c.tick(2)

    assert c.leader() is leader
    assert [n.term for n in c.nodes.values()] == [1, 1, 1]
    assert (isolated.role, isolated.leader_id) == (Role.FOLLOWER, 1)
    assert c.data(3) == [b"a", b"b"]


def test_thesis_9_6_without_prevote_a_rejoining_node_disrupts_the_leader() -> None:
    # The contrast that motivates pre-vote: the isolated node's term runs ahead, and when it
    # returns, its term deposes a perfectly healthy leader.
    c, leader = committed_cluster(b"a", **CLASSIC)
    c.partition([1, 2], [3])
    c.tick(10 * ELECTION_TICKS)
    assert c.nodes[3].term > 5  # a campaign at least every 2 * ELECTION_TICKS ticks

    c.heal()
    c.tick(1)

    assert leader.role is Role.FOLLOWER
    assert leader.term > 5


def test_thesis_9_6_prevote_changes_no_persistent_state() -> None:
    c, _ = committed_cluster(b"a", check_quorum=False)
    c.partition([1], [2], [3])
    node = c.nodes[3]
    hard_before = node.hard_state()

    c.tick(2 * ELECTION_TICKS, only={3})

    assert node.role is Role.PRE_CANDIDATE
    assert node.hard_state() == hard_before
    request = [m for m in c.sent if is_msg(RequestVote, sender=3, receiver=2)(m)][-1]
    assert request.pre_vote and request.term == 2
    voter = c.nodes[2]
    voter.step(request)
    rd = voter.ready()
    # A granted pre-vote is not a vote: nothing to persist, the voter's term is unchanged.
    [answer] = rd.messages
    assert isinstance(answer, RequestVoteResponse) and answer.pre_vote and answer.granted
    assert rd.hard_state is None
    assert (voter.term, voter.voted_for) == (1, 1)


def test_thesis_9_6_prevote_candidate_with_a_stale_term_catches_up() -> None:
    # Node 1 holds the longest log but missed terms 4 and 5; node 3 cannot win with its short
    # log. Node 1's pre-vote for term 4 is refused with term 5, which node 1 adopts; only then
    # can it ask for term 6 and win.
    states = {1: persisted(3, 1, 1, 1), 2: persisted(3, 1, 1, 1), 3: persisted(5, 1)}
    c = Cluster([1, 2, 3], states=states)
    c.down = {2}

    c.tick(6 * ELECTION_TICKS)

    leader = c.leader()
    assert leader is not None and leader.node_id == 1
    assert leader.term == 6


def test_thesis_9_6_prevote_won_becomes_a_real_election() -> None:
    c, _ = committed_cluster(b"a", check_quorum=False)
    c.down = {1}

    c.nodes[2].campaign()
    c.deliver()

    assert (c.nodes[2].role, c.nodes[2].term) == (Role.LEADER, 2)
    assert [m.pre_vote for m in of_kind(c.sent, RequestVote) if m.sender == 2] == [
        True,
        True,
        False,
        False,
    ]


# ==== Raft thesis 6.2: check-quorum ==========================================================


def test_thesis_6_2_check_quorum_leader_steps_down_without_a_quorum() -> None:
    c, leader = committed_cluster(b"a")
    c.partition([1], [2, 3])

    c.tick(ELECTION_TICKS - 1, only={1})
    assert leader.role is Role.LEADER
    c.tick(ELECTION_TICKS + 1, only={1})

    # Thesis 6.2: a leader that has not heard from a majority within an election timeout
    # steps down, so its clients look elsewhere. Its term does not change.
    assert (leader.role, leader.term, leader.leader_id) == (Role.FOLLOWER, 1, 0)


def test_thesis_6_2_check_quorum_leader_with_a_quorum_stays() -> None:
    c, leader = committed_cluster(b"a")
    c.partition([1, 2], [3])
    c.tick(10 * ELECTION_TICKS, only={1, 2})
    assert c.leader() is leader
    assert leader.term == 1


def test_thesis_6_2_any_answer_counts_as_a_sign_of_life() -> None:
    c, leader = committed_cluster(b"a")
    c.drop = lambda m: isinstance(m, HeartbeatResponse)

    for k in range(3 * ELECTION_TICKS):
        leader.propose(b"%d" % k)
        c.tick(1)

    # Heartbeat answers are lost, but followers keep acknowledging appends: a quorum is there.
    assert leader.role is Role.LEADER


def test_thesis_6_2_followers_ignore_votes_while_the_leader_is_alive() -> None:
    c, leader = committed_cluster(b"a", pre_vote=False)
    c.partition([1, 3], [2])
    c.tick(2 * ELECTION_TICKS)  # node 2 hears nothing and campaigns; 1 and 3 carry on
    assert c.nodes[2].role is Role.CANDIDATE
    request = [m for m in c.sent if is_msg(RequestVote, sender=2, receiver=3)(m)][-1]

    c.send(request)

    # Node 3 heard from its leader within the election timeout: it ignores the request, so a
    # node that was merely cut off cannot depose a leader a majority still follows.
    assert c.take(is_msg(RequestVoteResponse, sender=3)) == []
    assert (c.nodes[3].term, c.nodes[3].leader_id) == (1, 1)
    assert leader.role is Role.LEADER


# ==== Raft thesis 6.4: ReadIndex and leases ===============================================


def test_thesis_6_4_read_index_waits_for_a_heartbeat_round() -> None:
    c, leader = committed_cluster(b"a")

    leader.read_index(b"r")
    heartbeats = c.take(is_msg(Heartbeat, sender=1))

    # The leader records its commit index and must first confirm it still leads.
    assert c.reads[1] == []
    assert len(heartbeats) == 2
    assert heartbeats[0].read_seq == heartbeats[1].read_seq > 0
    c.send(*heartbeats)
    [first, second] = c.take(is_msg(HeartbeatResponse))
    assert c.reads[1] == []

    c.send(first)  # with the leader itself, two of three: a quorum

    assert c.reads[1] == [ReadState(b"r", leader.commit_index)]
    c.send(second)
    assert len(c.reads[1]) == 1


def test_thesis_6_4_heartbeat_round_from_before_the_read_does_not_confirm_it() -> None:
    c, leader = committed_cluster(b"a")
    leader.tick()  # a heartbeat round of its own, sent before the read arrives
    c.send(*c.take(is_msg(Heartbeat, sender=1)))
    early_answers = c.take(is_msg(HeartbeatResponse))

    leader.read_index(b"r")
    c.send(*early_answers)

    assert c.reads[1] == []
    c.deliver()
    assert c.reads[1] == [ReadState(b"r", 2)]


def test_thesis_6_4_read_index_through_a_follower() -> None:
    c, leader = committed_cluster(b"a", b"b")

    c.nodes[3].read_index(b"f")
    c.deliver()

    # The follower asks the leader for a read index; the read is served once the follower
    # has applied it.
    assert c.reads[3] == [ReadState(b"f", leader.commit_index)]
    assert c.reads[1] == []
    kinds = [type(m) for m in c.sent if isinstance(m, ReadIndexRequest | ReadIndexResponse)]
    assert kinds == [ReadIndexRequest, ReadIndexResponse]
    assert c.nodes[3].applied_index >= c.reads[3][0].index


def test_thesis_6_4_read_index_deferred_until_leader_commits_in_its_term() -> None:
    # Entries 2 and 3 were committed by the previous leader, but node 1 only knows of 1.
    states = {
        1: persisted(1, 1, 1, 1, commit=1),
        2: persisted(1, 1, 1, 1, commit=3),
        3: persisted(1, 1, 1, 1, commit=3),
    }
    c = Cluster([1, 2, 3], states=states, check_quorum=False)
    c.drop = lambda m: isinstance(m, AppendEntriesResponse)
    leader = c.elect(1)
    assert leader.commit_index == 1

    leader.read_index(b"r")
    c.deliver()

    # Until an entry of its own term commits, the leader's commit index may be stale; a read
    # at 1 would miss writes 2 and 3.
    assert c.reads[1] == []
    c.heal()
    c.tick(1)
    assert c.reads[1] == [ReadState(b"r", 4)]


def test_thesis_6_4_read_index_without_a_leader_is_refused() -> None:
    c = Cluster([1, 2, 3])
    with pytest.raises(NotLeader):
        c.nodes[1].read_index(b"r")


def test_thesis_6_4_single_node_serves_reads_at_once() -> None:
    c = Cluster([1])
    leader = c.elect(1)
    leader.read_index(b"r")
    c.process()
    assert c.reads[1] == [ReadState(b"r", 1)]
    assert c.queue == []


def test_thesis_6_4_1_lease_reads_are_opt_in() -> None:
    by_default, leader = committed_cluster(b"a")
    by_default.tick(1)
    leader.read_index(b"r")
    assert by_default.take(is_msg(Heartbeat)) != []  # a heartbeat round is needed

    c, leased = committed_cluster(b"a", lease_reads=True)
    c.tick(1)  # a heartbeat round acknowledged by everyone
    leased.read_index(b"r")
    c.process()

    # Within the lease no other leader can exist, so the read is served without a round.
    assert c.reads[1] == [ReadState(b"r", 2)]
    assert c.queue == []


def test_thesis_6_4_1_a_read_may_decline_the_lease() -> None:
    c, leased = committed_cluster(b"a", lease_reads=True)
    c.tick(1)
    leased.read_index(b"r", lease=False)
    # The caller asked for the full ReadIndex round even though the lease holds.
    assert c.take(is_msg(Heartbeat)) != []
    assert c.reads[1] == []


def test_thesis_6_4_1_lease_expires_before_followers_may_vote_again() -> None:
    c, leader = committed_cluster(b"a", lease_reads=True)  # ends with a tick:
    # the last heartbeat round anyone acknowledges is sent at tick 1
    c.partition([1], [2, 3])
    served_at = []
    for tick in range(1, 2 * ELECTION_TICKS):
        leader.read_index(b"r%d" % tick)
        c.process()
        if c.reads[1] and c.reads[1][-1].context == b"r%d" % tick:
            served_at.append(tick)
        c.tick(1, only={1})

    # Followers refuse votes for an election timeout after that heartbeat arrives; the lease
    # ends earlier by the clock drift bound (one tick by default): ticks 1 to 9.
    assert served_at == list(range(1, ELECTION_TICKS))


def test_thesis_6_4_1_a_restarted_follower_still_honours_the_lease() -> None:
    c, leader = committed_cluster(b"a", lease_reads=True, pre_vote=False)
    c.tick(1)  # nodes 2 and 3 acknowledge a heartbeat: the leader holds a lease on them
    c.partition([1], [2, 3])
    c.restart(3)  # node 3 forgets that it heard from a leader

    c.nodes[2].campaign()
    c.deliver()

    # Node 3 cannot remember whether it promised a lease, so it assumes it did: it takes no
    # part in an election for an election timeout. Node 1's lease reads stay safe meanwhile.
    assert c.nodes[2].role is Role.CANDIDATE
    leader.read_index(b"r")
    c.process()
    assert c.reads[1] == [ReadState(b"r", 2)]
    c.tick(3 * ELECTION_TICKS, only={2, 3})
    new = c.nodes[2] if c.nodes[2].role is Role.LEADER else c.nodes[3]
    assert new.role is Role.LEADER  # afterwards the majority side elects a leader as usual


def test_thesis_6_4_1_leadership_transfer_suspends_the_lease() -> None:
    c, leader = committed_cluster(b"a", lease_reads=True)
    c.tick(1)
    c.down = {2}
    leader.transfer_leader(2)
    leader.read_index(b"r")
    c.process()
    assert c.reads[1] == []
    assert c.take(is_msg(Heartbeat)) != []


# ==== Raft thesis 3.10: leadership transfer ================================================


def test_thesis_3_10_transfer_to_an_up_to_date_follower() -> None:
    c, old = committed_cluster(b"a")

    old.transfer_leader(2)
    c.deliver()

    # The target is up to date, so the leader sends TimeoutNow at once; the target campaigns
    # without waiting (and without pre-vote), and followers vote despite knowing a leader.
    new = c.nodes[2]
    assert (new.role, new.term) == (Role.LEADER, 2)
    assert (old.role, old.leader_id) == (Role.FOLLOWER, 2)
    assert of_kind(c.sent, TimeoutNow) == [TimeoutNow(1, 1, 2)]
    new.propose(b"b")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    assert c.data(1) == [b"a", b"b"]


def test_thesis_3_10_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    c, leader = committed_cluster(b"a")
    c.drop = lambda m: m.receiver == 3 and isinstance(m, AppendEntries)
    for k in range(5):
        leader.propose(b"b%d" % k)
    c.deliver()
    assert c.nodes[3].last_index < leader.last_index
    c.heal()
    first = len(c.sent)
    last = leader.last_index

    leader.transfer_leader(3)
    c.tick(2)

    target = c.nodes[3]
    assert (target.role, target.term) == (Role.LEADER, 2)
    transcript = c.sent[first:]
    [timeout_now] = of_kind(transcript, TimeoutNow)
    caught_up = next(
        m
        for m in transcript
        if isinstance(m, AppendEntriesResponse) and m.sender == 3 and m.match_index == last
    )
    # TimeoutNow went out only after the target had acknowledged the leader's whole log.
    assert transcript.index(caught_up) < transcript.index(timeout_now)
    assert c.data(3)[:6] == [b"a", b"b0", b"b1", b"b2", b"b3", b"b4"]


def test_thesis_3_10_proposals_refused_during_transfer() -> None:
    c, leader = committed_cluster(b"a")
    c.down = {3}

    leader.transfer_leader(3)

    # New entries would only make the target fall further behind.
    with pytest.raises(ProposalDropped):
        leader.propose(b"b")
    c.tick(ELECTION_TICKS, only={1, 2})
    # The transfer did not finish within an election timeout: abandoned, service resumes.
    assert leader.role is Role.LEADER
    assert leader.lead_transferee == 0
    assert leader.propose(b"b") == 3


def test_thesis_3_10_only_a_leader_transfers_and_only_to_a_voter() -> None:
    c, leader = committed_cluster(b"a")
    with pytest.raises(NotLeader) as refused:
        c.nodes[2].transfer_leader(3)
    assert refused.value.leader_id == 1
    with pytest.raises(ReplogError):
        leader.transfer_leader(9)
    leader.transfer_leader(1)  # to itself: nothing to do
    assert leader.lead_transferee == 0


# ==== Client requests, limits ================================================================


def test_proposal_forwarded_from_a_follower() -> None:
    c, _ = committed_cluster(b"a")

    assert c.nodes[3].propose(b"via 3") is None
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message

    assert [(m.sender, m.receiver, m.data) for m in of_kind(c.sent, ForwardProposal)] == [
        (3, 1, (b"via 3",))
    ]
    for node_id in (1, 2, 3):
        assert c.data(node_id) == [b"a", b"via 3"]


def test_forwarded_proposal_commit_reaches_its_follower_at_once() -> None:
    # The follower's client waits for the commit index; an idle leader would otherwise only
    # announce it with its next tick (a whole tick of latency for every forwarded write).
    c, _ = committed_cluster(b"a")

    c.nodes[3].propose(b"via 3")
    c.deliver()  # no tick

    assert c.nodes[3].commit_index == 3
    assert c.data(3) == [b"a", b"via 3"]
    assert c.data(2) == [b"a"]  # the other follower learns it from the next message, as before


def test_proposals_forwarded_during_a_leadership_transfer_commit_under_the_next_leader() -> None:
    # A clean stop hands leadership over; what followers forward meanwhile must not vanish
    # (their clients would wait for their timeout and learn nothing of the outcome).
    c, leader = committed_cluster(b"a")
    c.nodes[3].propose(b"late")
    late = c.take(is_msg(ForwardProposal, sender=3))  # still on its way to node 1
    leader.transfer_leader(2)
    c.nodes[3].propose(b"during")
    c.deliver()
    assert c.nodes[2].role is Role.LEADER and leader.role is Role.FOLLOWER
    c.send(*late)  # reaches node 1 in an older term, when node 2 leads
    c.deliver()
    c.tick()
    for node_id in (1, 2, 3):
        assert sorted(c.data(node_id)) == [b"a", b"during", b"late"]


def test_proposal_without_a_known_leader_is_refused() -> None:
    c = Cluster([1, 2, 3])
    with pytest.raises(NotLeader) as refused:
        c.nodes[2].propose(b"x")
    assert refused.value.leader_id == 0


def test_uncommitted_bytes_bound_raises_uncommitted_log_full() -> None:
    c, leader = committed_cluster(b"a", max_uncommitted_bytes=100)
    c.partition([1], [2, 3])
    entry_bytes = Entry(0, 0, data=b"x" * 26).size_bytes()
    assert entry_bytes == 50

    assert leader.propose(b"x" * 26) == 3
    assert leader.propose(b"x" * 26) == 4  # exactly at the limit
    with pytest.raises(UncommittedLogFull) as full:
        leader.propose(b"x")

    assert (full.value.uncommitted_bytes, full.value.limit_bytes) == (100, 100)
    assert leader.last_index == 4
    c.heal()
    c.tick(1)
    assert leader.commit_index == 4
    assert leader.propose(b"x") == 5  # room again once the entries committed


def uncommitted_bytes(node: RaftNode) -> int:
    return sum(e.size_bytes() for e in node.entries(node.commit_index + 1, node.last_index + 1))


def test_uncommitted_bytes_bound_holds_when_the_noop_commits_with_proposals() -> None:
    c = Cluster([1, 2, 3], max_uncommitted_bytes=100, max_message_bytes=1)
    c.drop = lambda m: isinstance(m, AppendEntries) and m.entries != ()
    leader = c.elect(1)  # its no-op (entry 1) is not replicated yet
    assert leader.propose(b"x" * 26) == 2  # 50 bytes
    assert leader.propose(b"x" * 26) == 3  # 50 bytes: the bound is reached
    c.drop = lambda m: isinstance(m, AppendEntries) and any(e.index == 3 for e in m.entries)
    c.tick(2)
    assert leader.commit_index == 2  # the no-op and entry 2 committed, entry 3 did not
    assert uncommitted_bytes(leader) == 50

    with pytest.raises(UncommittedLogFull):
        leader.propose(b"x" * 40)  # 64 more bytes would make 114, over the limit of 100

    assert uncommitted_bytes(leader) <= 100


def test_a_single_entry_over_the_bound_is_still_accepted() -> None:
    # Otherwise an entry larger than the limit could never be proposed.
    _, leader = committed_cluster(b"a", max_uncommitted_bytes=10)
    assert leader.propose(b"x" * 100) == 3


def test_pipelined_appends_are_bounded_by_the_inflight_window() -> None:
    c, leader = committed_cluster(b"a", max_inflight_messages=2, max_message_bytes=1)
    c.drop = lambda m: m.sender == 3 and isinstance(m, AppendEntriesResponse)
    first = len(c.sent)

    for k in range(10):
        leader.propose(b"%d" % k)
    c.deliver()

    # One entry per message, and node 3 acknowledges none of them: after two messages the
    # window is full and the leader waits.
    def carrying_entries(to: int) -> list[AppendEntries]:
        return [m for m in c.sent[first:] if is_msg(AppendEntries, receiver=to)(m) and m.entries]

    assert [len(m.entries) for m in carrying_entries(2)] == [1] * 10
    assert len(carrying_entries(3)) == 2
    c.heal()
    c.tick(3)
    assert c.log_terms(3) == c.log_terms(1)


def test_appends_are_batched_within_the_message_size_limit() -> None:
    c, leader = committed_cluster(b"a", max_message_bytes=250)
    c.drop = lambda m: m.receiver == 3 and isinstance(m, AppendEntries)
    for k in range(9):
        leader.propose(b"x" * 76 + b"%d" % k)  # 101 bytes each
    c.deliver()
    c.heal()
    first = len(c.sent)

    c.tick(2)  # node 3 catches up on nine entries at once

    sizes = [
        sum(e.size_bytes() for e in m.entries)
        for m in c.sent[first:]
        if is_msg(AppendEntries, receiver=3)(m) and m.entries
    ]
    assert sizes and all(size <= 250 for size in sizes)
    assert sum(size // 101 for size in sizes) == 9
    assert c.data(3) == c.data(1)


def test_committed_entries_are_handed_over_in_bounded_batches() -> None:
    c = Cluster([1], max_apply_bytes=100)
    leader = c.elect(1)
    for k in range(6):
        leader.propose(b"x" * 25 + b"%d" % k)  # 50 bytes each
    leader_rd = leader.ready()  # persists the six entries, which commits them
    assert leader_rd.committed_entries == ()
    leader.advance(leader_rd)
    batches = []
    while leader.has_ready():
        rd = leader.ready()
        batches.append([e.index for e in rd.committed_entries])
        leader.advance(rd)

    # Each Ready hands over at most max_apply_bytes of entries, in order, each once.
    assert batches == [[2, 3], [4, 5], [6, 7]]


def test_nothing_to_do_means_no_ready() -> None:
    c, leader = committed_cluster(b"a")
    c.tick(1)
    assert not any(node.has_ready() for node in c.nodes.values())
    leader.propose(b"b")
    assert leader.has_ready()


# ==== Restarts and determinism ===============================================================


def test_restart_keeps_term_vote_and_log() -> None:
    c, _ = committed_cluster(b"a", b"b", **CLASSIC)
    log_before = c.log_terms(3)

    c.restart(3)

    # Figure 2: currentTerm, votedFor and the log are persistent state.
    node = c.nodes[3]
    assert (node.term, node.voted_for, node.role) == (1, 1, Role.FOLLOWER)
    assert c.log_terms(3) == log_before
    assert node.commit_index == 3
    c.send(RequestVote(1, 2, 3, last_log_index=3, last_log_term=1))
    [answer] = c.take(is_msg(RequestVoteResponse, sender=3))
    assert not answer.granted  # it already voted for node 1 in term 1
    c.deliver()
    assert c.data(3) == [b"a", b"b"]  # committed entries are applied again, once


def test_restarted_leader_rejoins_as_follower_and_loses_no_committed_entry() -> None:
    c, _ = committed_cluster(b"a", b"b", **CLASSIC)

    c.restart(1)
    c.tick(4 * ELECTION_TICKS)

    leader = c.leader()
    assert leader is not None and leader.term >= 2
    for node_id in (1, 2, 3):
        assert c.data(node_id) == [b"a", b"b"]


def test_restart_from_a_snapshot() -> None:
    c, leader = committed_cluster(b"a", b"b", **CLASSIC)
    c.tick(1)
    node = c.nodes[2]
    snapshot = Snapshot(SnapshotMeta(node.applied_index, 1, c.membership), b"image")
    node.compact(snapshot)
    c.durable[2].snapshot = snapshot
    c.durable[2].entries = []

    c.restart(2)

    restarted = c.nodes[2]
    assert (restarted.first_index, restarted.last_index, restarted.term) == (4, 3, 1)
    assert restarted.applied_index == 3
    leader.propose(b"c")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    assert c.data(2) == [b"c"]


def test_node_built_from_persisted_state_holds_it() -> None:
    state = PersistentState(HardState(7, 2, 2), None, log_of_terms(1, 3, 7))
    node = RaftNode(
        RaftConfig(node_id=1), Configuration(voters=frozenset({1, 2, 3})), random.Random(0), state
    )
    assert (node.term, node.voted_for, node.commit_index, node.last_index) == (7, 2, 2, 3)
    assert node.hard_state() == HardState(7, 2, 2)
    rd = node.ready()
    assert rd.hard_state is None  # nothing new to persist
    assert [e.index for e in rd.committed_entries] == [1, 2]


def run_script(seed: int) -> tuple[list[Message], list[list[Entry]]]:
    c = Cluster([1, 2, 3, 4, 5], seed=seed)
    while c.leader() is None:
        c.tick()
    leader = c.leader()
    assert leader is not None
    for k in range(5):
        leader.propose(b"x%d" % k)
    c.partition([leader.node_id], [i for i in c.nodes if i != leader.node_id])
    c.tick(4 * ELECTION_TICKS)
    c.heal()
    c.tick(2 * ELECTION_TICKS)
    return c.sent, [c.applied[i] for i in sorted(c.nodes)]


def test_determinism_same_seed_same_messages() -> None:
    # The core takes its randomness from the rng it is given and nothing else.
    first, second = run_script(seed=11), run_script(seed=11)
    assert first == second
    assert len(first[0]) > 100
