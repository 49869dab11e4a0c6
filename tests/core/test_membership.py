"""Membership changes (Raft thesis chapter 4): single-server changes, learners, removal of the
leader, and configurations carried by the log, snapshots and restarts."""

from __future__ import annotations

import pytest

from replog.core import (
    AppendEntries,
    Configuration,
    EntryKind,
    ProposalDropped,
    RaftNode,
    ReplogError,
    RequestVote,
    Role,
    Snapshot,
)
from replog.core.types import decode_config, encode_config

from .harness import Cluster, is_msg


def voters(*ids: int) -> Configuration:
    return Configuration(voters=frozenset(ids))


def grown(ids: list[int], start: list[int], **config: object) -> tuple[Cluster, RaftNode]:
    c = Cluster(ids, voters=start, **config)
    leader = c.elect(start[0])
    leader.propose(b"first")
    c.deliver()
    return c, leader


def serving_leader(c: Cluster, *candidates: int) -> RaftNode:
    """The leader, one of ``candidates``, after checking that it commits a new write."""
    leader = c.leader()
    assert leader is not None and leader.node_id in candidates
    leader.propose(b"after")
    c.deliver()
    assert b"after" in c.data(leader.node_id)
    return leader


def test_config_entries_round_trip_with_their_context() -> None:
    config = Configuration(voters=frozenset({1, 2}), learners=frozenset({7}))
    assert decode_config(encode_config(config, b"\x00meta")) == (config, b"\x00meta")
    with pytest.raises(ValueError):
        decode_config(b"garbage")
    with pytest.raises(ValueError):
        decode_config(b'{"voters": [1], "learners": [1], "context": ""}')


def test_4_1_a_learner_receives_the_log_but_does_not_count() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    leader.propose_membership(leader.membership.with_learner(4))
    c.deliver()
    assert c.nodes[4].membership.learners == {4}
    assert c.data(4) == [b"first"]  # caught up from the leader
    c.down |= {2, 3}
    leader.propose(b"needs a voter majority")
    c.deliver()
    assert b"needs a voter majority" not in c.data(1)  # learner 4 is no substitute
    c.down -= {2, 3}
    c.tick(5)
    assert b"needs a voter majority" in c.data(4)


def test_4_1_a_learner_never_campaigns() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    leader.propose_membership(leader.membership.with_learner(4))
    c.deliver()
    c.down.add(1)
    c.tick(60, only={4})
    assert c.nodes[4].role is Role.FOLLOWER
    assert c.take(is_msg(RequestVote, sender=4)) == []


def test_4_1_promotion_changes_the_quorum() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    leader.propose_membership(leader.membership.with_learner(4))
    c.deliver()
    leader.propose_membership(leader.membership.with_voter(4))
    c.deliver()
    assert all(n.membership == voters(1, 2, 3, 4) for n in c.nodes.values())
    c.down |= {3, 4}
    leader.propose(b"two of four")
    c.deliver()
    assert b"two of four" not in c.data(1)  # 2 of 4 is not a majority
    c.down.discard(4)
    c.tick(5)
    assert b"two of four" in c.data(1)


def test_4_1_the_new_configuration_is_used_as_soon_as_it_is_in_the_log() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    index = leader.propose_membership(leader.membership.with_learner(4))
    appends = c.take(is_msg(AppendEntries, receiver=2))
    c.send(*appends)
    assert c.nodes[2].membership.learners == {4}  # in the log, not yet committed
    assert c.nodes[2].commit_index < index
    assert leader.membership_pending


def test_4_1_an_uncommitted_configuration_that_is_cut_away_is_undone() -> None:
    c, leader = grown([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], pre_vote=False, check_quorum=False)
    leader.propose_membership(leader.membership.without(5))
    c.send(*c.take(is_msg(AppendEntries, receiver=2)))
    assert c.nodes[2].membership == voters(1, 2, 3, 4)
    c.take()  # node 1's change reaches nobody else and node 1 goes down
    c.down.add(1)
    new_leader = c.elect_by_hand(3, 4, 5)
    assert new_leader.membership == voters(1, 2, 3, 4, 5)
    new_leader.propose(b"replaces the change")
    c.deliver()
    assert c.nodes[2].membership == voters(1, 2, 3, 4, 5)  # the entry was cut: back to the old


def test_4_1_one_change_at_a_time() -> None:
    c, leader = grown([1, 2, 3, 4, 5], [1, 2, 3])
    leader.propose_membership(leader.membership.with_learner(4))
    with pytest.raises(ProposalDropped, match="still uncommitted"):
        leader.propose_membership(leader.membership.with_learner(5))
    c.deliver()
    leader.propose_membership(leader.membership.with_learner(5))


def test_4_1_at_most_one_voter_changes() -> None:
    _c, leader = grown([1, 2, 3, 4, 5], [1, 2, 3])
    with pytest.raises(ReplogError, match="at most one voter"):
        leader.propose_membership(voters(1, 2, 3, 4, 5))
    with pytest.raises(ReplogError, match="at least one voter"):
        leader.propose_membership(Configuration())
    with pytest.raises(ReplogError, match="unchanged"):
        leader.propose_membership(voters(1, 2, 3))


def test_4_1_a_new_leader_commits_in_its_term_before_changing_membership() -> None:
    c, _leader = grown([1, 2, 3, 4], [1, 2, 3], pre_vote=False, check_quorum=False)
    c.down.add(1)
    c.take()
    new_leader = c.elect_by_hand(2, 3)  # its no-op is not committed yet
    with pytest.raises(ProposalDropped, match="not committed an entry of its term"):
        new_leader.propose_membership(new_leader.membership.with_learner(4))
    c.deliver()
    new_leader.propose_membership(new_leader.membership.with_learner(4))


def test_4_2_2_a_leader_that_removes_itself_steps_down_after_the_commit() -> None:
    c, leader = grown([1, 2, 3], [1, 2, 3])
    leader.propose_membership(leader.membership.without(1))
    assert leader.role is Role.LEADER  # it manages the change without counting itself
    c.deliver()
    assert leader.role is Role.FOLLOWER
    c.tick(60)
    serving_leader(c, 2, 3)
    assert c.nodes[1].role is Role.FOLLOWER  # the removed node never campaigns


def test_4_2_2_a_demoted_voter_holding_the_change_stands_as_candidate() -> None:
    # The demotion reaches only node 2 before the leader fails. Nodes 3 and 4 still count
    # node 2's vote under the old configuration, and node 2 refuses them: its log is longer.
    # Unless node 2 campaigns (counting votes by its new configuration, without itself),
    # nobody can win until node 1 comes back.
    c, leader = grown([1, 2, 3, 4], [1, 2, 3, 4])
    index = leader.propose_membership(leader.membership.with_learner(2))
    c.send(*c.take(is_msg(AppendEntries, receiver=2)))
    c.take()
    c.down.add(1)
    c.tick(60)
    assert serving_leader(c, 3, 4).commit_index >= index
    assert c.nodes[2].role is Role.FOLLOWER  # it led only until its demotion committed


def test_4_2_2_a_removed_leader_holding_the_change_stands_as_candidate() -> None:
    # The leader removes itself; the change reaches nobody before it loses leadership, and
    # node 3 is gone for good. Nodes 2 and 4 need node 1's vote under the old configuration,
    # and node 1 refuses them. Node 1 campaigns under its new configuration, commits the
    # change with nodes 2 and 4, and steps down.
    c, leader = grown([1, 2, 3, 4], [1, 2, 3, 4])
    index = leader.propose_membership(leader.membership.without(1))
    c.take()
    c.down.add(3)
    c.partition([1], [2, 4])
    c.tick(30)  # check-quorum: node 1 steps down
    assert c.leader() is None
    c.heal()
    c.tick(60)
    new_leader = serving_leader(c, 2, 4)
    assert new_leader.membership == voters(2, 3, 4)
    assert new_leader.commit_index >= index
    assert c.nodes[1].role is Role.FOLLOWER


def test_4_2_2_a_node_that_knows_its_removal_committed_never_campaigns() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3, 4])
    index = leader.propose_membership(leader.membership.without(1))
    c.deliver()
    assert leader.role is Role.FOLLOWER and leader.commit_index >= index
    c.sent.clear()
    c.tick(60, only={1})
    assert [m for m in c.sent if m.sender == 1] == []


def test_4_2_removed_voters_stop_counting() -> None:
    c, leader = grown([1, 2, 3], [1, 2, 3])
    leader.propose_membership(leader.membership.without(3))
    c.deliver()
    c.down.add(3)
    leader.propose(b"two of two")
    c.deliver()
    c.tick()  # followers learn the commit index from the leader's next message
    assert b"two of two" in c.data(2)
    assert 3 not in leader.progress


def test_snapshots_carry_the_configuration_at_their_index() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    before = leader.applied_index
    leader.propose_membership(leader.membership.with_learner(4))
    c.deliver()
    assert leader.snapshot_meta(before).config == voters(1, 2, 3)
    meta = leader.snapshot_meta(leader.applied_index)
    assert meta.config.learners == {4}
    leader.compact(Snapshot(meta, b"image"))
    assert leader.membership.learners == {4}


def test_a_new_node_catches_up_from_a_snapshot_and_learns_the_configuration() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    for i in range(5):
        leader.propose(b"%d" % i)
    c.deliver()
    leader.propose_membership(leader.membership.with_learner(4))
    c.down.add(4)
    c.deliver()
    leader.compact(Snapshot(leader.snapshot_meta(leader.applied_index), b"image"))
    c.down.discard(4)
    c.tick(12)
    node4 = c.nodes[4]
    assert node4.membership.learners == {4}
    assert node4.commit_index == leader.commit_index
    assert c.applied[4][0].kind is EntryKind.NOOP  # the harness marks a restored snapshot


def test_a_restart_recovers_the_configuration_from_the_log() -> None:
    c, leader = grown([1, 2, 3, 4], [1, 2, 3])
    leader.propose_membership(leader.membership.with_learner(4))
    c.deliver()
    c.restart(2)
    assert c.nodes[2].membership.learners == {4}
    assert c.nodes[2].membership.voters == {1, 2, 3}
