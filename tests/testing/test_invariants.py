"""Each safety checker must accept a correct run and catch the violation it exists for."""

from __future__ import annotations

import pytest

from replog.core.types import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Ready,
    Role,
    Snapshot,
    SnapshotMeta,
    SoftState,
)
from replog.testing.durable import MemoryStore
from replog.testing.invariants import (
    AckDurability,
    CommitMonotonic,
    DurableMatchesMemory,
    ElectionSafety,
    InvariantViolation,
    LeaderAppendOnly,
    LeaderCompleteness,
    LogMatching,
    Provenance,
    StateMachineSafety,
    TermMonotonic,
)


def entry(index: int, term: int, data: bytes = b"x", kind: EntryKind = EntryKind.NORMAL) -> Entry:
    return Entry(index, term, kind, data)


def violation(invariant: str) -> pytest.RaisesExc[InvariantViolation]:
    return pytest.raises(InvariantViolation, match=f"^{invariant} violated")


# ---- election safety -------------------------------------------------------------------------


def test_election_safety_accepts_one_leader_per_term() -> None:
    checker = ElectionSafety()
    assert checker.observe_leader(1, 3)
    assert not checker.observe_leader(1, 3)
    assert checker.observe_leader(2, 4)
    assert checker.elections == 2


def test_election_safety_catches_two_leaders_in_one_term() -> None:
    checker = ElectionSafety()
    checker.observe_leader(1, 3)
    with violation("election safety") as caught:
        checker.observe_leader(2, 3)
    assert caught.value.node == 2
    assert caught.value.term == 3
    assert "nodes 1 and 2" in str(caught.value)


def test_election_safety_remembers_old_terms() -> None:
    checker = ElectionSafety()
    checker.observe_leader(1, 3)
    checker.observe_leader(2, 5)
    with violation("election safety"):
        checker.observe_leader(3, 3)


# ---- terms and commit indexes ----------------------------------------------------------------


def test_term_never_decreases_even_across_restarts() -> None:
    checker = TermMonotonic()
    checker.observe(1, 2)
    checker.observe(1, 2)
    checker.observe(1, 5)
    checker.observe(2, 1)
    with violation("term monotonic") as caught:
        checker.observe(1, 4)
    assert caught.value.node == 1


def test_commit_index_monotonic_within_a_life() -> None:
    checker = CommitMonotonic()
    checker.started(1, 0, 0)
    checker.observe(1, 4)
    checker.observe(1, 4)
    with violation("commit monotonic") as caught:
        checker.observe(1, 3)
    assert caught.value.index == 3


def test_commit_index_may_restart_lower_but_not_below_the_snapshot() -> None:
    checker = CommitMonotonic()
    checker.observe(1, 10)
    checker.started(1, 6, 6)  # restarted from a hard state persisted at 6: allowed
    checker.observe(1, 7)
    with violation("commit monotonic"):
        checker.started(1, 5, 6)


# ---- leader append-only ----------------------------------------------------------------------


def write(checker: LeaderAppendOnly, node: int, term: int, last: int, *entries: Entry) -> None:
    checker.observe_write(
        node, term, is_leader=True, durable_last_index=last, entries=entries, has_snapshot=False
    )


def test_leader_appends_past_its_log() -> None:
    checker = LeaderAppendOnly()
    write(checker, 1, 2, 5, entry(6, 2))
    write(checker, 1, 2, 6, entry(7, 2), entry(8, 2))
    write(checker, 1, 2, 8)


def test_leader_append_only_catches_an_overwrite() -> None:
    checker = LeaderAppendOnly()
    write(checker, 1, 2, 5, entry(6, 2), entry(7, 2))
    with violation("leader append-only") as caught:
        write(checker, 1, 2, 7, entry(7, 2, b"other"))
    assert caught.value.index == 7


def test_leader_append_only_catches_a_rewrite_of_the_log_it_was_elected_with() -> None:
    checker = LeaderAppendOnly()
    with violation("leader append-only"):
        write(checker, 1, 2, 5, entry(5, 2))


def test_leader_append_only_catches_an_entry_of_another_term() -> None:
    checker = LeaderAppendOnly()
    with violation("leader append-only"):
        write(checker, 1, 3, 5, entry(6, 2))


def test_leader_append_only_catches_a_snapshot_install() -> None:
    checker = LeaderAppendOnly()
    with violation("leader append-only"):
        checker.observe_write(
            1, 3, is_leader=True, durable_last_index=5, entries=(), has_snapshot=True
        )


def test_leader_append_only_forgets_a_leader_that_stepped_down() -> None:
    checker = LeaderAppendOnly()
    write(checker, 1, 2, 5, entry(6, 2), entry(7, 2))
    checker.observe_write(
        1, 3, is_leader=False, durable_last_index=7, entries=(entry(6, 3),), has_snapshot=False
    )
    write(checker, 1, 4, 6, entry(7, 4))  # a new term as leader starts from its log end
    checker.stepped_down(1)
    write(checker, 1, 4, 3, entry(4, 4))  # after a crash the durable log is the reference


# ---- log matching ----------------------------------------------------------------------------


def test_log_matching_accepts_identical_prefixes_and_divergent_terms() -> None:
    checker = LogMatching()
    checker.observe_write(1, 0, [entry(1, 1, b"a"), entry(2, 1, b"b")])
    checker.observe_write(2, 0, [entry(1, 1, b"a")])
    checker.observe_write(2, 1, [entry(2, 2, b"c")])  # a different term may differ


def test_log_matching_catches_different_data_at_same_index_and_term() -> None:
    checker = LogMatching()
    checker.observe_write(1, 0, [entry(1, 1, b"a"), entry(2, 1, b"b")])
    with violation("log matching") as caught:
        checker.observe_write(2, 1, [entry(2, 1, b"z")])
    assert (caught.value.node, caught.value.index, caught.value.term) == (2, 2, 1)


def test_log_matching_catches_a_different_kind() -> None:
    checker = LogMatching()
    checker.observe_write(1, 0, [entry(1, 1, b"", EntryKind.NOOP)])
    with violation("log matching"):
        checker.observe_write(2, 0, [entry(1, 1, b"")])


def test_log_matching_catches_different_preceding_entries() -> None:
    checker = LogMatching()
    checker.observe_write(1, 1, [entry(5, 3, b"a")])
    with violation("log matching") as caught:
        checker.observe_write(2, 2, [entry(5, 3, b"a")])
    assert "previous term" in str(caught.value)


def test_log_matching_catches_gaps_and_falling_terms() -> None:
    with violation("log matching"):
        LogMatching().observe_write(1, 0, [entry(1, 1), entry(3, 1)])
    with violation("log matching"):
        LogMatching().observe_write(1, 0, [entry(1, 2), entry(2, 1)])
    with violation("log matching"):
        LogMatching().observe_write(1, 3, [entry(4, 2)])


# ---- leader completeness ---------------------------------------------------------------------


def test_leader_completeness_accepts_a_leader_holding_every_committed_entry() -> None:
    checker = LeaderCompleteness()
    checker.observe_committed(1, 1, 1)
    checker.observe_committed(2, 2, 2)
    checker.check_leader(3, 3, 1, {1: 1, 2: 2, 3: 3}.get)
    assert checker.commit_index == 2


def test_leader_completeness_catches_a_leader_missing_a_committed_entry() -> None:
    checker = LeaderCompleteness()
    checker.observe_committed(1, 1, 1)
    checker.observe_committed(2, 2, 2)
    with violation("leader completeness") as caught:
        checker.check_leader(3, 3, 1, {1: 1}.get)
    assert caught.value.index == 2


def test_leader_completeness_catches_a_leader_with_another_term_at_a_committed_index() -> None:
    checker = LeaderCompleteness()
    checker.observe_committed(1, 2, 2)
    with violation("leader completeness"):
        checker.check_leader(3, 4, 1, {1: 3}.get)


def test_leader_completeness_ignores_later_commits_and_compacted_entries() -> None:
    checker = LeaderCompleteness()
    checker.observe_committed(1, 1, 1)
    checker.observe_committed(2, 5, 5)  # committed in term 5: a leader of term 4 need not hold it
    checker.check_leader(1, 4, 2, {}.get)  # index 1 is inside its snapshot


def test_leader_completeness_catches_an_index_committed_twice_with_different_terms() -> None:
    checker = LeaderCompleteness()
    checker.observe_committed(4, 2, 2)
    with violation("leader completeness"):
        checker.observe_committed(4, 3, 3)


# ---- state machine safety --------------------------------------------------------------------


def test_state_machine_safety_accepts_in_order_identical_applies() -> None:
    checker = StateMachineSafety()
    for node in (1, 2):
        checker.started(node, 0)
        checker.observe_apply(node, entry(1, 1, b"a"))
        checker.observe_apply(node, entry(2, 1, b"b"))
    checker.started(1, 1)  # restarted from a snapshot at 1: re-applies 2
    checker.observe_apply(1, entry(2, 1, b"b"))


def test_state_machine_safety_catches_different_commands_at_one_index() -> None:
    checker = StateMachineSafety()
    checker.started(1, 0)
    checker.started(2, 0)
    checker.observe_apply(1, entry(1, 1, b"a"))
    with violation("state machine safety") as caught:
        checker.observe_apply(2, entry(1, 1, b"b"))
    assert caught.value.node == 2


def test_state_machine_safety_catches_gaps_and_repeats() -> None:
    checker = StateMachineSafety()
    checker.started(1, 0)
    checker.observe_apply(1, entry(1, 1))
    with violation("state machine safety"):
        checker.observe_apply(1, entry(3, 1))
    with violation("state machine safety"):
        checker.observe_apply(1, entry(1, 1))


def test_state_machine_safety_catches_a_snapshot_that_goes_back() -> None:
    checker = StateMachineSafety()
    checker.started(1, 0)
    for index in range(1, 6):
        checker.observe_apply(1, entry(index, 1))
    checker.observe_restore(1, 8)
    checker.observe_apply(1, entry(9, 1))
    with violation("state machine safety"):
        checker.observe_restore(1, 7)


def test_state_machine_safety_catches_different_images_at_one_index() -> None:
    checker = StateMachineSafety()
    checker.observe_image(1, 10, b"digest-a")
    checker.observe_image(2, 10, b"digest-a")
    with violation("state machine safety"):
        checker.observe_image(3, 10, b"digest-b")


# ---- provenance, acknowledgements, durable state ---------------------------------------------


def test_provenance_catches_commands_nobody_proposed() -> None:
    checker = Provenance()
    checker.observe_proposed("c1")
    checker.observe_applied(1, 1, "c1")
    with violation("provenance"):
        checker.observe_applied(1, 2, "c2")
    with violation("provenance"):
        checker.observe_applied(1, 3, None)


def store_with(node: int, *entries: Entry) -> MemoryStore:
    store = MemoryStore(node)
    if entries:
        store.save(ready(entries=entries))
    return store


def ready(
    entries: tuple[Entry, ...] = (),
    hard_state: HardState | None = None,
    snapshot: Snapshot | None = None,
) -> Ready:
    return Ready(
        soft_state=SoftState(Role.FOLLOWER, 0),
        hard_state=hard_state,
        entries=entries,
        snapshot=snapshot,
        messages=(),
        committed_entries=(),
        read_states=(),
    )


def test_ack_durability_needs_a_majority_of_stores() -> None:
    checker = AckDurability()
    stores = [store_with(1, entry(1, 1)), store_with(2, entry(1, 1)), store_with(3)]
    checker.observe_ack(1, 1, 1, stores, 3)
    with violation("acknowledged means durable") as caught:
        checker.observe_ack(1, 1, 1, [stores[0], stores[2], store_with(4, entry(1, 2))], 3)
    assert "1 of 3" in str(caught.value)


def test_commit_durability_checks_each_newly_committed_index_once() -> None:
    checker = AckDurability()
    stores = [store_with(1, entry(1, 1), entry(2, 1)), store_with(2, entry(1, 1)), store_with(3)]
    checker.observe_commit(1, 1, {1: 1, 2: 1}.get, stores, 3)
    checker.observe_commit(2, 0, {}.get, stores, 3)
    with violation("committed means durable") as caught:
        checker.observe_commit(1, 2, {1: 1, 2: 1}.get, stores, 3)
    assert caught.value.index == 2
    checker.observe_commit(1, 2, {}.get, stores, 3)  # compacted: not checkable, not a violation


def test_durable_matches_memory() -> None:
    checker = DurableMatchesMemory()
    checker.observe(1, (2, 1, 5, 2), (2, 1, 5, 2))
    with violation("durable matches memory"):
        checker.observe(1, (2, 1, 5, 2), (2, 0, 5, 2))


# ---- the in-memory durable store -------------------------------------------------------------


def snapshot_at(index: int, term: int) -> Snapshot:
    return Snapshot(SnapshotMeta(index, term, Configuration(frozenset({1, 2, 3}))), b"image")


def test_store_replaces_from_the_first_new_entry_onwards() -> None:
    store = store_with(1, entry(1, 1), entry(2, 1), entry(3, 1))
    store.save(ready(entries=(entry(2, 2),), hard_state=HardState(2, 1, 1)))
    assert store.last_index == 2
    assert store.term_at(2) == 2
    assert store.durable_tuple() == (2, 1, 2, 2)
    recovered = store.crash_and_recover()
    assert recovered.entries == (entry(1, 1), entry(2, 2))
    assert recovered.hard_state == HardState(2, 1, 1)


def test_store_snapshot_replaces_the_log() -> None:
    store = store_with(1, entry(1, 1), entry(2, 1))
    store.save(ready(snapshot=snapshot_at(5, 2)))
    assert store.last_index == 5
    assert store.holds(3, 9)  # inside the snapshot
    assert store.term_at(5) == 2
    store.save(ready(entries=(entry(6, 2),)))
    assert store.crash_and_recover().entries == (entry(6, 2),)


def test_store_compacts_on_the_applications_snapshot() -> None:
    store = store_with(1, entry(1, 1), entry(2, 1), entry(3, 2))
    store.save_snapshot(snapshot_at(2, 1))
    state = store.crash_and_recover()
    assert state.snapshot is not None and state.snapshot.meta.index == 2
    assert state.entries == (entry(3, 2),)
    store.save_snapshot(snapshot_at(1, 1))  # older than what it has: ignored
    assert store.snapshot_index == 2


def test_store_rejects_gaps_stale_snapshots_and_mismatched_snapshots() -> None:
    store = store_with(1, entry(1, 1), entry(2, 1))
    with violation("durable log"):
        store.save(ready(entries=(entry(4, 1),)))
    store.save(ready(snapshot=snapshot_at(5, 2)))
    with violation("durable log"):
        store.save(ready(snapshot=snapshot_at(4, 2)))
    with violation("durable log"):
        store.save(ready(entries=(entry(5, 2),)))  # rewrites what the snapshot covers
    store.save(ready(entries=(entry(6, 2),)))
    with violation("durable log"):
        store.save_snapshot(snapshot_at(6, 3))
