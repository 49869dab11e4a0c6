"""Quorum arithmetic: worked examples, the identity elements, joint configurations, and a
differential test against brute-force definitions taken straight from the Raft paper."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replog.core.quorum import COMMIT_ALL, JointConfig, MajorityConfig, VoteResult

PENDING, LOST, WON = VoteResult.PENDING, VoteResult.LOST, VoteResult.WON


def majority(*voters: int) -> MajorityConfig:
    return MajorityConfig(frozenset(voters))


def joint(incoming: set[int], outgoing: set[int]) -> JointConfig:
    return JointConfig.of(frozenset(incoming), frozenset(outgoing))


# ---- MajorityConfig ------------------------------------------------------------------------


@pytest.mark.parametrize(("size", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_quorum_size_is_a_strict_majority(size: int, quorum: int) -> None:
    assert majority(*range(1, size + 1)).quorum_size() == quorum


@pytest.mark.parametrize(
    ("voters", "acked", "committed"),
    [
        ({1}, {1: 7}, 7),
        ({1, 2, 3}, {1: 5, 2: 3, 3: 1}, 3),  # the median of three
        ({1, 2, 3}, {1: 5, 2: 5, 3: 0}, 5),
        ({1, 2, 3}, {1: 5}, 0),  # missing voters count as having acknowledged nothing
        ({1, 2, 3, 4}, {1: 4, 2: 3, 3: 2, 4: 1}, 2),  # four voters need three
        ({1, 2, 3, 4, 5}, {1: 9, 2: 9, 3: 1, 4: 1, 5: 1}, 1),
        ({1, 2, 3}, {1: 5, 2: 5, 9: 100}, 5),  # a non-voter's acknowledgement is ignored
        ({1, 2, 3}, {7: 100, 8: 100, 9: 100}, 0),
    ],
)
def test_majority_committed_index(voters: set[int], acked: dict[int, int], committed: int) -> None:
    # Raft 5.3: an entry is committed once it is replicated on a majority of the servers.
    assert majority(*voters).committed_index(acked) == committed


@pytest.mark.parametrize(
    ("voters", "votes", "result"),
    [
        ({1}, {}, PENDING),
        ({1}, {1: True}, WON),
        ({1}, {1: False}, LOST),
        ({1, 2, 3}, {1: True}, PENDING),
        ({1, 2, 3}, {1: True, 2: True}, WON),
        ({1, 2, 3}, {1: True, 2: False}, PENDING),
        ({1, 2, 3}, {2: False, 3: False}, LOST),  # two refusals of three: no majority left
        ({1, 2, 3, 4}, {1: True, 2: True}, PENDING),
        ({1, 2, 3, 4}, {1: True, 2: True, 3: False, 4: False}, LOST),  # a tie is not a win
        ({1, 2, 3, 4, 5}, {1: True, 2: True, 3: True}, WON),
        ({1, 2, 3}, {1: True, 8: True, 9: True}, PENDING),  # non-voters' votes do not count
    ],
)
def test_majority_vote_result(voters: set[int], votes: dict[int, bool], result: VoteResult) -> None:
    # Raft 5.2: a candidate wins an election if it receives votes from a majority of the servers.
    assert majority(*voters).vote_result(votes) is result


def test_empty_majority_is_the_identity_element() -> None:
    # The empty configuration commits everything and wins every vote, so it never constrains
    # the other half of a joint configuration.
    empty = MajorityConfig()
    assert empty.committed_index({}) == COMMIT_ALL
    assert empty.committed_index({1: 3}) == COMMIT_ALL
    assert empty.vote_result({}) is WON
    assert empty.vote_result({1: False}) is WON


# ---- JointConfig ---------------------------------------------------------------------------


def test_joint_with_empty_outgoing_behaves_like_its_incoming_half() -> None:
    incoming = majority(1, 2, 3)
    plain = JointConfig(incoming)
    acked = {1: 4, 2: 6, 3: 2}
    assert plain.committed_index(acked) == incoming.committed_index(acked) == 4
    for votes in ({}, {1: True}, {1: True, 2: True}, {1: False, 2: False}):
        assert plain.vote_result(votes) is incoming.vote_result(votes)
    assert plain.voters() == frozenset({1, 2, 3})


def test_fully_empty_joint_config_commits_all_and_wins() -> None:
    assert JointConfig().committed_index({}) == COMMIT_ALL
    assert JointConfig().vote_result({}) is WON


def test_joint_committed_index_needs_both_majorities() -> None:
    # Raft thesis 4.3: during joint consensus, agreement needs separate majorities of both the
    # old and the new configuration.
    config = joint({1, 2, 3}, {3, 4, 5})
    acked = {1: 9, 2: 9, 3: 4, 4: 2, 5: 1}
    assert config.incoming.committed_index(acked) == 9
    assert config.outgoing.committed_index(acked) == 2
    assert config.committed_index(acked) == 2


@pytest.mark.parametrize(
    ("votes", "result"),
    [
        ({1: True, 2: True}, PENDING),  # incoming won, outgoing still open
        ({1: True, 2: True, 4: True}, PENDING),
        ({1: True, 3: True, 4: True}, WON),  # node 3's vote counts in both halves
        ({1: True, 2: True, 3: True}, PENDING),  # 3 alone is no outgoing majority
        ({1: True, 2: True, 4: False, 5: False}, LOST),  # outgoing lost
        ({1: False, 2: False, 4: True, 5: True}, LOST),  # incoming lost
        ({}, PENDING),
    ],
)
def test_joint_vote_result(votes: dict[int, bool], result: VoteResult) -> None:
    assert joint({1, 2, 3}, {3, 4, 5}).vote_result(votes) is result


def test_joint_voters_is_the_union() -> None:
    assert joint({1, 2, 3}, {3, 4}).voters() == frozenset({1, 2, 3, 4})


def test_is_quorum() -> None:
    config = joint({1, 2, 3}, {3, 4, 5})
    assert config.is_quorum(frozenset({1, 3, 4}))
    assert not config.is_quorum(frozenset({1, 2, 3}))  # no majority of the outgoing half
    assert not config.is_quorum(frozenset())
    assert JointConfig(majority(1, 2, 3)).is_quorum(frozenset({2, 3}))


# ---- differential test against naive definitions ------------------------------------------


def naive_committed_index(voters: frozenset[int], acked: dict[int, int]) -> int:
    """The largest index i that a majority of voters has acknowledged, found by trying every
    candidate value of i."""
    if not voters:
        return COMMIT_ALL
    best = 0
    for i in range(max(acked.values(), default=0) + 1):
        holders = sum(1 for voter in voters if acked.get(voter, 0) >= i)
        if holders > len(voters) / 2:
            best = i
    return best


def naive_vote_result(halves: list[frozenset[int]], votes: dict[int, bool]) -> VoteResult:
    """WON if every way the missing voters could still answer wins, LOST if none does. A voter
    in both halves answers once, for both."""
    voters = sorted(frozenset().union(*halves))
    missing = [voter for voter in voters if voter not in votes]
    outcomes = set()
    for answers in itertools.product([False, True], repeat=len(missing)):
        complete = {**votes, **dict(zip(missing, answers, strict=True))}
        outcomes.add(all(sum(complete[v] for v in half) > len(half) / 2 for half in halves if half))
    if outcomes == {True}:
        return WON
    if outcomes == {False}:
        return LOST
    return PENDING


node_ids = st.integers(min_value=1, max_value=9)
voter_sets = st.frozensets(node_ids, max_size=7)
acks = st.dictionaries(node_ids, st.integers(min_value=0, max_value=12), max_size=9)
ballots = st.dictionaries(node_ids, st.booleans(), max_size=9)
DIFFERENTIAL = settings(max_examples=200, derandomize=True, deadline=None)


@DIFFERENTIAL
@given(voters=voter_sets, acked=acks)
def test_majority_committed_index_matches_naive(
    voters: frozenset[int], acked: dict[int, int]
) -> None:
    assert MajorityConfig(voters).committed_index(acked) == naive_committed_index(voters, acked)


@DIFFERENTIAL
@given(voters=voter_sets, votes=ballots)
def test_majority_vote_result_matches_naive(voters: frozenset[int], votes: dict[int, bool]) -> None:
    assert MajorityConfig(voters).vote_result(votes) is naive_vote_result([voters], votes)


@DIFFERENTIAL
@given(incoming=voter_sets, outgoing=voter_sets, acked=acks)
def test_joint_committed_index_matches_naive(
    incoming: frozenset[int], outgoing: frozenset[int], acked: dict[int, int]
) -> None:
    expected = min(naive_committed_index(incoming, acked), naive_committed_index(outgoing, acked))
    assert JointConfig.of(incoming, outgoing).committed_index(acked) == expected


@DIFFERENTIAL
@given(incoming=voter_sets, outgoing=voter_sets, votes=ballots)
def test_joint_vote_result_matches_naive(
    incoming: frozenset[int], outgoing: frozenset[int], votes: dict[int, bool]
) -> None:
    expected = naive_vote_result([incoming, outgoing], votes)
    assert JointConfig.of(incoming, outgoing).vote_result(votes) is expected


@DIFFERENTIAL
@given(voters=voter_sets, acked=acks)
def test_committed_index_is_held_by_a_quorum_and_is_maximal(
    voters: frozenset[int], acked: dict[int, int]
) -> None:
    # A property-level restatement: a quorum holds the committed index, none holds one more.
    config = MajorityConfig(voters)
    committed = config.committed_index(acked)
    if not voters:
        assert committed == COMMIT_ALL
        return
    holders = {voter for voter in voters if acked.get(voter, 0) >= committed}
    assert len(holders) >= config.quorum_size()
    beyond = {voter for voter in voters if acked.get(voter, 0) >= committed + 1}
    assert len(beyond) < config.quorum_size()
