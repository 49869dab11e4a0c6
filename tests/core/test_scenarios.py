"""The classic hard cases: the follower logs of Figure 7, the commit rule of Figure 8, a leader
backing up over a long divergent log, a partitioned old leader asked for linearizable reads, and
a network that duplicates and reorders everything."""

from __future__ import annotations

import contextlib
import random
from collections import Counter

import pytest

from replog.core import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    InstallSnapshot,
    Message,
    NotLeader,
    Role,
    Snapshot,
    SnapshotMeta,
)

from .harness import Cluster, persisted

CLASSIC = {"pre_vote": False, "check_quorum": False}
ELECTION_TICKS = 10


def rejections_by_sender(messages: list[Message]) -> Counter[int]:
    return Counter(
        m.sender for m in messages if isinstance(m, AppendEntriesResponse) and not m.success
    )


# ==== Figure 7 ===============================================================================

LEADER, A, B, C, D, E, F = 1, 2, 3, 4, 5, 6, 7
FIGURE_7 = {
    LEADER: (1, 1, 1, 4, 4, 5, 5, 6, 6, 6),
    A: (1, 1, 1, 4, 4, 5, 5, 6, 6),
    B: (1, 1, 1, 4),
    C: (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 6),
    D: (1, 1, 1, 4, 4, 5, 5, 6, 6, 6, 7, 7),
    E: (1, 1, 1, 4, 4, 4, 4),
    F: (1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 3),
}


def figure_7_cluster() -> Cluster:
    # Every server is in the term of its last entry, the leader-to-be in term 7.
    states = {i: persisted(terms[-1], *terms) for i, terms in FIGURE_7.items()}
    states[LEADER] = persisted(7, *FIGURE_7[LEADER])
    return Cluster(sorted(FIGURE_7), states=states, **CLASSIC)


def test_figure_7_every_follower_log_converges_to_the_leaders() -> None:
    c = figure_7_cluster()

    leader = c.elect(LEADER)
    c.tick()  # followers learn the commit index from the leader's next message

    # The leader wins term 8 with the votes of a, b, e and f (c and d hold logs more up to
    # date than its own and refuse), appends its no-op, and repairs every follower: missing
    # entries are added (a, b, e), extra ones removed (c, d), conflicting ones replaced (f).
    assert leader.term == 8
    expected = [*FIGURE_7[LEADER], 8]
    for node_id in FIGURE_7:
        assert c.log_terms(node_id) == expected, f"follower {node_id}"
        assert c.nodes[node_id].commit_index == 11


def test_figure_7_conflict_hint_skips_a_whole_term_per_round_trip() -> None:
    c = figure_7_cluster()

    c.elect(LEADER)

    # Raft 5.3, last paragraph: with the term of the conflicting entry and the first index it
    # stores for that term, the leader bypasses all conflicting entries of a term at once.
    # Backing up one entry per round trip would cost b 6 refusals, e 5 and f 7.
    assert rejections_by_sender(c.sent) == {A: 1, B: 1, E: 1, F: 1}


# ==== Figure 8 ===============================================================================


def figure_8_cluster() -> Cluster:
    """Figure 8 (c): S1 was leader in term 2 and put entry 2 on S2; S5 led term 3 with the
    votes of S3 and S4 and wrote its own entry 2 only to itself, then crashed. Entry 1 is
    committed. S1 now has to finish term 2's entry."""
    states = {
        1: persisted(3, 1, 2, commit=1),
        2: persisted(2, 1, 2, commit=1),
        3: persisted(3, 1, voted_for=5, commit=1),
        4: persisted(3, 1, voted_for=5, commit=1),
        5: persisted(3, 1, 3, voted_for=5, commit=1),
    }
    c = Cluster([1, 2, 3, 4, 5], states=states, max_message_bytes=1, **CLASSIC)
    c.down = {5}
    return c


def test_figure_8_old_term_entry_on_a_majority_is_not_committed() -> None:
    c = figure_8_cluster()

    def delivers_a_term_4_entry(m: Message) -> bool:
        if not isinstance(m, AppendEntries) or all(e.term != 4 for e in m.entries):
            return False
        prev = c.nodes[m.receiver].entry(m.prev_log_index)
        return prev is not None and prev.term == m.prev_log_term

    # S1 leads term 4 and copies entry 2 (term 2) to S3 and S4, but its own entry of term 4
    # never reaches anyone (it crashes before, as in the figure).
    c.drop = delivers_a_term_4_entry
    s1 = c.elect(1)
    c.tick(3)
    assert (s1.role, s1.term) == (Role.LEADER, 4)
    assert [c.log_terms(i) for i in (1, 2, 3, 4)] == [[1, 2, 4], [1, 2], [1, 2], [1, 2]]
    known = sorted(pr.match_index for pr in s1.progress.values())
    assert known == [0, 0, 2, 2, 3]  # by counting alone, entry 2 is on a majority

    # 5.4.2: it is from an older term, so S1 does not count it as committed.
    assert s1.commit_index == 1

    # Why: S1 crashes, S5 returns and wins term 5 with the votes of S2, S3 and S4 (its last
    # term, 3, beats their 2), and replaces entry 2 everywhere.
    c.down = {1}
    c.restart(5)
    c.heal()
    s5 = c.nodes[5]
    s5.campaign()  # term 4: S2, S3 and S4 already voted for S1 in term 4
    c.deliver()
    s5.campaign()
    c.deliver()
    assert (s5.role, s5.term) == (Role.LEADER, 5)
    assert [c.log_terms(i) for i in (2, 3, 4, 5)] == [[1, 3, 5]] * 4
    # Had S1 committed the term-2 entry, a committed entry would now be gone. Nobody applied it.
    for node_id in (2, 3, 4, 5):
        assert Entry(2, 2) not in c.applied[node_id]


def test_figure_8_entry_of_the_current_term_commits_the_older_ones() -> None:
    c = figure_8_cluster()

    s1 = c.elect(1)
    c.deliver()

    # Figure 8 (e): S1's term-4 entry reaches a majority, which commits it and entry 2 with
    # it. S5 can then never be elected: every majority holds a log more up to date than its.
    assert s1.commit_index == 3
    c.down = {1}
    c.restart(5)
    c.nodes[5].campaign()
    c.deliver()
    assert c.nodes[5].role is not Role.LEADER
    assert all(c.log_terms(i)[:2] == [1, 2] for i in (2, 3, 4))


# ==== a leader backing up over a long divergent log ==========================================


def backing_up(leader_log: tuple[int, ...], follower_log: tuple[int, ...]) -> Cluster:
    """Node 1 (with node 2 holding the same log) takes office in a new term and repairs
    node 3's log; returns the cluster once it is done."""
    term = max(leader_log + follower_log)
    states = {
        1: persisted(term, *leader_log),
        2: persisted(term, *leader_log),
        3: persisted(term, *follower_log),
    }
    c = Cluster([1, 2, 3], states=states, **CLASSIC)
    c.elect(1)
    c.tick(2)
    assert c.log_terms(3) == [*leader_log, term + 1]
    return c


@pytest.mark.parametrize(
    ("leader_log", "follower_log"),
    [
        ((1,) * 10 + (3,) * 1000, (1,) * 10 + (2,) * 1000),
        ((1,) * 10 + (2,) * 1000, (1,) * 10 + (3,) * 1000),
        ((1,) * 10 + (6,) * 1000, (1,) * 10 + (2,) * 250 + (3,) * 250 + (4,) * 250 + (5,) * 250),
        ((1,) * 10 + (2,) * 500 + (4,) * 500, (1,) * 10 + (2,) * 300 + (3,) * 700),
        ((1,) * 10 + (3,) * 1000, (1,) * 10 + (2,) * 10),
    ],
    ids=[
        "stale-lower-term",
        "stale-higher-term",
        "four-stale-terms",
        "both-sides-several-terms",
        "short-follower",
    ],
)
def test_leader_backs_up_over_a_long_divergent_log_a_term_at_a_time(
    leader_log: tuple[int, ...], follower_log: tuple[int, ...]
) -> None:
    c = backing_up(leader_log, follower_log)

    # Raft 5.3: at most one refusal per term involved, not one per conflicting entry.
    divergent_terms = set(leader_log[10:]) | set(follower_log[10:])
    assert 1 <= rejections_by_sender(c.sent)[3] <= len(divergent_terms)


@pytest.mark.parametrize(
    "follower_log", [(), (3,) * 1000], ids=["empty-follower", "divergent-from-the-first-entry"]
)
def test_leader_backs_up_to_the_start_of_the_log_in_one_round_trip(
    follower_log: tuple[int, ...],
) -> None:
    c = backing_up((2,) * 1000, follower_log)

    # The follower holds no entry the leader could match above index 0 (a new node, a replaced
    # disk, or a log that diverges at its first entry) and its hint says so: (0, 0). That is
    # one round trip's worth of information, not one per entry.
    assert rejections_by_sender(c.sent)[3] <= 1


# ==== a partitioned old leader and linearizable reads ========================================


@pytest.mark.parametrize("config", [CLASSIC, {}], ids=["classic", "pre-vote+check-quorum"])
def test_partitioned_old_leader_never_serves_a_linearizable_read(config: dict[str, bool]) -> None:
    c = Cluster([1, 2, 3, 4, 5], seed=4, **config)
    old = c.elect(1)
    old.propose(b"x")
    c.deliver()
    c.partition([1, 2], [3, 4, 5])

    # Reads asked of the old leader, directly and through its follower on the minority side.
    old.read_index(b"at the old leader")
    c.nodes[2].read_index(b"through its follower")
    for _ in range(8 * ELECTION_TICKS):
        c.tick()
        if any(c.nodes[i].role is Role.LEADER for i in (3, 4, 5)):
            break
    new = c.leader()
    assert new is not None and new.node_id in (3, 4, 5)
    index = new.propose(b"y")
    c.tick(2)
    assert new.commit_index >= index  # the majority moved on
    with contextlib.suppress(NotLeader):  # refused outright once it has stepped down
        old.read_index(b"once more")
    c.tick(2 * ELECTION_TICKS)

    # ReadIndex (thesis 6.4): the old leader cannot get a heartbeat round confirmed by a
    # majority, so no read is ever served there; it would miss "y".
    assert c.reads[1] == c.reads[2] == []

    c.heal()
    c.tick(2)

    assert (old.role, old.leader_id, old.term) == (Role.FOLLOWER, new.node_id, new.term)
    assert c.reads[1] == c.reads[2] == []
    old.read_index(b"after healing")
    c.tick(1)
    [state] = c.reads[1]
    assert state.context == b"after healing"
    assert state.index >= index

    # Even once node 1 leads again, the reads it took while deposed stay unanswered.
    new.transfer_leader(1)
    c.tick(2)
    assert c.leader() is old
    assert c.reads[1] == [state]
    assert c.reads[2] == []


# ==== duplicated and reordered messages ======================================================


def deliver_chaotically(
    c: Cluster, rng: random.Random, held: list[Message], cut_off: frozenset[int] = frozenset()
) -> None:
    """One round of a hostile network: a third of the messages are duplicated, everything is
    shuffled, some messages are held back to arrive (much) later, and messages to or from a
    node that is cut off are lost or delayed until after it is back."""
    batch = c.take() + held
    held.clear()
    batch += [m for m in batch if rng.random() < 0.3]
    rng.shuffle(batch)
    for m in batch:
        if m.sender in cut_off or m.receiver in cut_off:
            if rng.random() < 0.5:
                held.append(m)
        elif rng.random() < 0.15:
            held.append(m)
        else:
            c.send(m)


def check_safety(c: Cluster, leaders: dict[int, int], commits: dict[int, int]) -> None:
    nodes = list(c.nodes.values())
    for node in nodes:
        if node.role is Role.LEADER:
            # Election Safety: at most one leader per term.
            assert leaders.setdefault(node.term, node.node_id) == node.node_id
        assert node.commit_index >= commits.get(node.node_id, 0)
        commits[node.node_id] = node.commit_index
    # State Machine Safety: committed prefixes agree (compared where both nodes hold them).
    for first in nodes:
        for second in nodes:
            upto = min(first.commit_index, second.commit_index)
            lo = max(first.first_index, second.first_index)
            assert first.entries(lo, upto + 1) == second.entries(lo, upto + 1)


@pytest.mark.parametrize("seed", range(6))
def test_duplicated_and_reordered_messages_still_converge(seed: int) -> None:
    rng = random.Random(seed)
    c = Cluster([1, 2, 3], seed=seed)
    held: list[Message] = []
    leaders: dict[int, int] = {}
    commits: dict[int, int] = {}
    proposed = []
    cut_off: frozenset[int] = frozenset()
    back_at = 0
    for step in range(500):
        if step == back_at:
            cut_off = frozenset()
        if not cut_off and rng.random() < 0.04:
            # Cut off the leader (forcing an election) or anyone else, for a while.
            leader = c.leader()
            victim = leader.node_id if leader and rng.random() < 0.6 else rng.choice([1, 2, 3])
            cut_off, back_at = frozenset({victim}), step + rng.randrange(20, 60)
        if rng.random() < 0.4:
            for node in c.nodes.values():
                node.tick()
        leader = c.leader()
        if leader is not None and rng.random() < 0.3:
            data = b"%d-%d" % (seed, step)
            leader.propose(data)
            proposed.append(data)
        deliver_chaotically(c, rng, held, cut_off)
        check_safety(c, leaders, commits)

    # Then the network behaves again: everyone converges to one log and one state.
    c.deliver()
    c.tick(4 * ELECTION_TICKS)
    check_safety(c, leaders, commits)
    leader = c.leader()
    assert leader is not None
    logs = [c.nodes[i].entries(1, c.nodes[i].last_index + 1) for i in (1, 2, 3)]
    assert logs[0] == logs[1] == logs[2]
    assert [c.nodes[i].commit_index for i in (1, 2, 3)] == [leader.last_index] * 3
    assert c.applied[1] == c.applied[2] == c.applied[3]
    applied = c.data(1)
    assert len(applied) == len(set(applied))  # each command at most once...
    assert set(applied) <= set(proposed)  # ...and only commands that were proposed
    assert len(applied) >= len(proposed) // 3


# ==== flow control in a healthy network =====================================================


def test_lossless_network_carries_each_entry_once() -> None:
    c = Cluster([1, 2, 3])
    leader = c.elect(1)
    c.tick(3)  # an idle cluster
    first = len(c.sent)

    index = leader.propose(b"x")
    c.tick(1)  # the tick's heartbeat leaves before the append
    c.tick(1)  # followers learn the commit index from the leader's next message

    copies = Counter(
        m.receiver
        for m in c.sent[first:]
        if isinstance(m, AppendEntries) and any(e.index == index for e in m.entries)
    )
    assert c.data(2) == [b"x"]
    # Nothing was lost, so nothing needs sending twice.
    assert copies == {2: 1, 3: 1}


def test_late_duplicate_snapshot_changes_nothing() -> None:
    c = Cluster([1, 2, 3], **CLASSIC)
    leader = c.elect(1)
    c.down = {3}
    for k in range(20):
        leader.propose(b"%d" % k)
    c.tick(1)
    snapshot = Snapshot(SnapshotMeta(leader.applied_index, leader.term, c.membership), b"img")
    leader.compact(snapshot, keep_entries=5)
    c.down = set()
    c.tick(2)
    [install] = [m for m in c.sent if isinstance(m, InstallSnapshot)]
    assert c.applied[3][0].index == snapshot.meta.index  # node 3 restored the snapshot
    leader.propose(b"after")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    follower = c.nodes[3]
    own = Snapshot(SnapshotMeta(follower.applied_index, 1, c.membership), b"newer")
    follower.compact(own)  # node 3 has since taken a newer snapshot of its own
    before = (follower.first_index, c.log_terms(3), follower.commit_index, list(c.applied[3]))

    c.send(install)  # the network delivers the same InstallSnapshot again, late
    c.deliver()

    # Raft 7: a snapshot that covers only what the follower has already committed replaces
    # nothing; in particular it never rolls back the follower's newer snapshot or entries.
    assert (follower.first_index, c.log_terms(3), follower.commit_index, c.applied[3]) == before
    assert c.data(3)[-1] == b"after"
    assert leader.progress[3].match_index == leader.last_index
