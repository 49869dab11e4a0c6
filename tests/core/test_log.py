"""RaftLog: the node's log over its snapshot, and the follower side of AppendEntries (Raft 5.3)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replog.core import Entry, Snapshot, SnapshotMeta
from replog.core.log import RaftLog

from .harness import log_of_terms

FIGURE_7_LEADER = (1, 1, 1, 4, 4, 5, 5, 6, 6, 6)


def raft_log(*terms: int, commit: int = 0) -> RaftLog:
    return RaftLog(None, log_of_terms(*terms), commit)


def snapshot_at(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term), b"image")


def terms(log: RaftLog) -> list[int]:
    return [e.term for e in log.slice(log.first_index(), log.last_index() + 1)]


def entries(first: int, *terms: int) -> tuple[Entry, ...]:
    return tuple(Entry(first + k, term) for k, term in enumerate(terms))


# ---- reading -------------------------------------------------------------------------------


def test_empty_log() -> None:
    log = raft_log()
    assert (log.first_index(), log.last_index(), log.last_term()) == (1, 0, 0)
    assert log.term(0) == 0  # the empty prefix matches every leader's
    assert log.term(1) is None
    assert log.entry(1) is None


def test_term_lookup() -> None:
    log = raft_log(*FIGURE_7_LEADER)
    assert [log.term(i) for i in range(11)] == [0, *FIGURE_7_LEADER]
    assert log.term(11) is None
    assert (log.last_index(), log.last_term()) == (10, 6)
    assert log.entry(4) == Entry(4, 4)


def test_term_lookup_over_a_snapshot() -> None:
    log = RaftLog(snapshot_at(5, 2), entries(6, 3, 3), commit=5)
    assert (log.first_index(), log.last_index(), log.last_term()) == (6, 7, 3)
    assert log.term(5) == 2  # the snapshot remembers the term of its last entry
    assert log.term(4) is None  # compacted away
    assert log.entry(5) is None
    assert log.term(7) == 3


def test_snapshot_alone_gives_last_index_and_term() -> None:
    log = RaftLog(snapshot_at(5, 2), (), commit=0)
    assert (log.last_index(), log.last_term()) == (5, 2)
    assert log.commit_index == 5  # everything in a snapshot is committed
    assert log.applied_index == 5


def test_recovered_entries_covered_by_the_snapshot_are_skipped() -> None:
    log = RaftLog(snapshot_at(3, 1), log_of_terms(1, 1, 1, 2, 2), commit=9)
    assert (log.first_index(), log.last_index()) == (4, 5)
    assert log.commit_index == 5  # a recovered commit index never passes the log's end


def test_recovered_entries_must_be_contiguous() -> None:
    with pytest.raises(AssertionError):
        RaftLog(None, (Entry(1, 1), Entry(3, 1)), commit=0)


def test_slice_is_half_open_and_clipped_to_the_snapshot() -> None:
    log = RaftLog(snapshot_at(2, 1), entries(3, 1, 2, 2, 3), commit=2)
    assert [e.index for e in log.slice(3, 5)] == [3, 4]
    assert [e.index for e in log.slice(1, 4)] == [3]  # below the snapshot: nothing to give
    assert [e.index for e in log.slice(5, 99)] == [5, 6]
    assert log.slice(7, 9) == []
    assert log.slice(5, 5) == []


def test_slice_with_a_byte_budget() -> None:
    log = RaftLog(None, tuple(Entry(i, 1, data=b"x" * 76) for i in range(1, 6)), commit=0)
    assert log.entries[0].size_bytes() == 100
    assert [e.index for e in log.slice(1, 6, max_bytes=300)] == [1, 2, 3]  # an exact fit
    assert [e.index for e in log.slice(1, 6, max_bytes=299)] == [1, 2]
    assert [e.index for e in log.slice(2, 6, max_bytes=10_000)] == [2, 3, 4, 5]
    # An entry larger than the whole budget still goes out alone, or nothing would progress.
    assert [e.index for e in log.slice(1, 6, max_bytes=1)] == [1]


@pytest.mark.parametrize(
    ("candidate", "up_to_date"),
    [
        ((10, 6), True),  # identical
        ((11, 6), True),  # same last term, longer
        ((9, 6), False),  # same last term, shorter
        ((3, 7), True),  # later last term wins even when much shorter
        ((20, 5), False),  # earlier last term loses even when much longer
        ((0, 0), False),
    ],
)
def test_is_up_to_date(candidate: tuple[int, int], up_to_date: bool) -> None:
    # Raft 5.4.1: compare the terms of the last entries; with equal terms the longer log wins.
    log = raft_log(*FIGURE_7_LEADER)
    assert log.is_up_to_date(*candidate) is up_to_date


def test_empty_log_finds_every_candidate_up_to_date() -> None:
    assert raft_log().is_up_to_date(0, 0)


@pytest.mark.parametrize(
    ("index", "term", "hint"),
    [
        (10, 6, (10, 6)),
        (10, 5, (7, 5)),  # skips every entry of term 6 at once
        (10, 3, (3, 1)),  # skips terms 6, 5 and 4
        (9, 4, (5, 4)),
        (20, 6, (10, 6)),  # beyond the end: starts from the last entry
        (4, 9, (4, 4)),
        (10, 0, (0, 0)),  # no entry old enough: the start of the log
    ],
)
def test_conflict_hint(index: int, term: int, hint: tuple[int, int]) -> None:
    # Raft 5.3 (last paragraph): the follower names the last entry that can still match a
    # leader whose entry at ``index`` has ``term``, so the leader skips whole terms.
    assert raft_log(*FIGURE_7_LEADER).conflict_hint(index, term) == hint


def test_conflict_hint_stops_at_the_snapshot() -> None:
    log = RaftLog(snapshot_at(5, 2), entries(6, 4, 4), commit=5)
    assert log.conflict_hint(7, 3) == (5, 2)


# ---- appending -----------------------------------------------------------------------------


def test_append_to_matching_log_extends_it_and_advances_commit() -> None:
    log = raft_log(1, 1)
    assert log.maybe_append(2, 1, commit=3, entries=entries(3, 2, 2)) == 4
    assert terms(log) == [1, 1, 2, 2]
    assert log.commit_index == 3


def test_commit_is_capped_at_the_last_new_entry() -> None:
    # Raft Figure 2: commitIndex = min(leaderCommit, index of last new entry). The follower
    # may hold later entries that the leader has not vouched for yet.
    log = raft_log(1, 1, 1, 1, 1)
    assert log.maybe_append(1, 1, commit=5, entries=entries(2, 1)) == 2
    assert log.commit_index == 2


def test_commit_never_moves_back() -> None:
    log = raft_log(1, 1, 1, commit=3)
    assert log.maybe_append(1, 1, commit=1, entries=()) == 1
    assert log.commit_index == 3


@pytest.mark.parametrize(
    ("prev_index", "prev_term"),
    [
        (3, 1),  # the log has index 3 with term 2
        (5, 2),  # the log is too short
    ],
)
def test_consistency_check_rejects_a_gap_or_a_mismatch(prev_index: int, prev_term: int) -> None:
    # Raft 5.3: reply false if the log holds no entry at prevLogIndex with prevLogTerm.
    log = raft_log(1, 1, 2, commit=1)
    sent = entries(prev_index + 1, 3)
    assert log.maybe_append(prev_index, prev_term, commit=9, entries=sent) is None
    assert terms(log) == [1, 1, 2]
    assert log.commit_index == 1


def test_conflicting_entries_are_truncated_from_the_first_conflict() -> None:
    log = raft_log(1, 1, 2, 2, 2)
    assert log.stable_index == 5
    assert log.maybe_append(2, 1, commit=0, entries=entries(3, 2, 3)) == 4
    # Entry 3 matched and stays; 4 conflicted, so 4 and everything after it went.
    assert terms(log) == [1, 1, 2, 3]
    assert log.stable_index == 3  # the replacement must be persisted again


def test_late_stale_append_does_not_erase_matching_entries() -> None:
    # Raft 5.3: delete an existing entry only when it conflicts with a new one. An old
    # AppendEntries that arrives after a newer one carries a prefix of what we hold already.
    log = raft_log(1, 1, 2, 2)
    assert log.maybe_append(0, 0, commit=0, entries=entries(1, 1, 1)) == 2
    assert terms(log) == [1, 1, 2, 2]
    assert log.stable_index == 4


def test_a_committed_entry_never_conflicts() -> None:
    log = raft_log(1, 1, 2, commit=3)
    with pytest.raises(AssertionError, match="committed"):
        log.maybe_append(2, 1, commit=3, entries=entries(3, 3))


def test_entries_below_the_snapshot_are_skipped() -> None:
    log = RaftLog(snapshot_at(5, 2), entries(6, 2, 2, 2), commit=5)
    # The leader probes from index 3; whatever it sends up to 5 is committed, hence identical.
    assert log.maybe_append(3, 1, commit=5, entries=entries(4, 1, 2, 2, 3)) == 7
    assert terms(log) == [2, 3]
    assert log.first_index() == 6


def test_append_entirely_below_the_snapshot_is_acknowledged_up_to_its_end() -> None:
    log = RaftLog(snapshot_at(5, 2), entries(6, 2), commit=5)
    assert log.maybe_append(1, 1, commit=3, entries=entries(2, 1, 1)) == 3
    assert terms(log) == [2]
    assert log.commit_index == 5


def test_commit_to_moves_forward_only_and_never_past_the_end() -> None:
    log = raft_log(1, 1, 1)
    assert log.commit_to(2)
    assert not log.commit_to(1)
    assert log.commit_index == 2
    with pytest.raises(AssertionError):
        log.commit_to(4)


def test_leader_append_must_continue_the_log() -> None:
    log = raft_log(1, 1)
    log.append([Entry(3, 2)])
    assert terms(log) == [1, 1, 2]
    assert log.stable_index == 2  # not durable until the next Ready is persisted
    with pytest.raises(AssertionError):
        log.append([Entry(5, 2)])


# ---- snapshots -----------------------------------------------------------------------------


def applied_log(*terms: int, applied: int) -> RaftLog:
    log = raft_log(*terms, commit=applied)
    log.applied_index = applied
    return log


def test_compact_keeps_a_trailing_window() -> None:
    log = applied_log(1, 1, 1, 2, 2, 2, 3, 3, 3, 3, applied=8)
    log.compact(snapshot_at(8, 3), keep_entries=3)
    # The snapshot covers 8, but entries 6..8 stay so that a follower slightly behind can
    # still be sent entries instead of a whole snapshot.
    assert log.snapshot == snapshot_at(8, 3)
    assert (log.offset, log.first_index(), log.last_index()) == (5, 6, 10)
    assert log.term(5) == 2
    assert log.term(4) is None
    assert terms(log) == [2, 3, 3, 3, 3]


def test_compact_without_window_drops_everything_covered() -> None:
    log = applied_log(1, 1, 2, 2, applied=3)
    log.compact(snapshot_at(3, 2), keep_entries=0)
    assert (log.offset, log.term(3), terms(log)) == (3, 2, [2])


def test_compact_never_drops_entries_not_yet_persisted() -> None:
    log = applied_log(1, 1, applied=2)
    log.append([Entry(3, 1), Entry(4, 1)])
    # A follower may apply committed entries from the same Ready that persists them.
    log.commit_to(4)
    log.applied_index = 4
    log.compact(snapshot_at(4, 1), keep_entries=0)
    assert log.snapshot == snapshot_at(4, 1)
    assert log.offset == 2  # 3 and 4 stay until the next Ready has handed them to storage
    assert terms(log) == [1, 1]


def test_compact_with_a_window_wider_than_the_log_keeps_everything() -> None:
    log = applied_log(1, 1, 1, applied=3)
    log.compact(snapshot_at(3, 1), keep_entries=10)
    assert log.offset == 0
    assert log.snapshot == snapshot_at(3, 1)
    assert terms(log) == [1, 1, 1]


def test_an_older_snapshot_does_not_replace_a_newer_one() -> None:
    log = applied_log(1, 1, 1, 1, applied=4)
    log.compact(snapshot_at(4, 1), keep_entries=0)
    log.compact(snapshot_at(2, 1), keep_entries=0)
    assert log.snapshot == snapshot_at(4, 1)
    assert log.offset == 4


def test_compact_past_the_applied_index_is_refused() -> None:
    log = applied_log(1, 1, 1, applied=1)
    with pytest.raises(AssertionError, match="applied"):
        log.compact(snapshot_at(2, 1), keep_entries=0)


def test_restore_replaces_the_log_by_the_snapshot() -> None:
    # Raft 7: a follower whose log conflicts with the snapshot discards its entire log.
    log = raft_log(1, 1, 4, 4, commit=2)
    log.restore(snapshot_at(6, 5))
    assert (log.offset, log.last_index(), log.last_term()) == (6, 6, 5)
    assert log.entries == []
    assert log.commit_index == 6
    assert log.stable_index == 6
    assert log.pending_snapshot == snapshot_at(6, 5)  # to be persisted by the next Ready
    assert log.maybe_append(6, 5, commit=7, entries=entries(7, 5)) == 7


# ---- property: appends keep the Log Matching Property ---------------------------------------


@st.composite
def leader_and_follower_logs(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """A leader's log (even terms, non-decreasing) and a follower's sharing a prefix of it,
    followed by entries of terms the leader never wrote at those indexes (odd terms)."""
    steps = draw(st.lists(st.integers(min_value=0, max_value=1), min_size=1, max_size=12))
    leader: list[int] = []
    term = 2
    for step in steps:
        term += 2 * step
        leader.append(term)
    shared = draw(st.integers(min_value=0, max_value=len(leader)))
    last = leader[shared - 1] if shared else 0
    tail = draw(st.lists(st.integers(min_value=0, max_value=3), max_size=8))
    return leader, leader[:shared] + sorted(last + 1 + 2 * k for k in tail)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(logs=leader_and_follower_logs(), data=st.data())
def test_append_makes_the_follower_match_the_leader_up_to_the_returned_index(
    logs: tuple[list[int], list[int]], data: st.DataObject
) -> None:
    leader, follower_terms = logs
    follower = raft_log(*follower_terms)
    prev = data.draw(st.integers(min_value=0, max_value=len(leader)), label="prev")
    count = data.draw(st.integers(min_value=0, max_value=len(leader) - prev), label="count")
    sent = entries(prev + 1, *leader[prev : prev + count])
    prev_term = leader[prev - 1] if prev else 0
    shared = next(
        (i for i, (a, b) in enumerate(zip(leader, follower_terms, strict=False)) if a != b),
        min(len(leader), len(follower_terms)),
    )

    last_new = follower.maybe_append(prev, prev_term, commit=0, entries=sent)

    if prev > shared:
        assert last_new is None  # the consistency check fails
        assert terms(follower) == follower_terms  # and the log is untouched
        return
    assert last_new == prev + count
    assert terms(follower)[:last_new] == leader[:last_new]
    if shared >= last_new:
        # Nothing conflicted: whatever the follower held stays, even beyond the message.
        assert terms(follower) == follower_terms
    else:
        assert terms(follower) == leader[:last_new]
