"""Both recovery decision tables, over every combination of their inputs."""

from __future__ import annotations

import pytest

from replog.storage.logindex import LogIndex, Run
from replog.storage.record import NO_TERM, Defect
from replog.storage.recovery import (
    SNAPSHOT_TABLE,
    TAIL_TABLE,
    Action,
    CommitPosition,
    Cut,
    Damage,
    Relation,
    Rest,
    Verdict,
    decide_snapshot,
    decide_tail,
    snapshot_inputs,
    tail_inputs,
)
from replog.storage.replay import commit_position, relation_of

TAIL_COMBINATIONS = list(tail_inputs())
SNAPSHOT_COMBINATIONS = list(snapshot_inputs())


def test_tail_inputs_cover_the_whole_space() -> None:
    assert len(TAIL_COMBINATIONS) == len(Defect) * 2 * len(Rest) * len(Cut) * len(Damage)
    assert len(set(TAIL_COMBINATIONS)) == len(TAIL_COMBINATIONS)


@pytest.mark.parametrize(("defect", "last", "rest", "cut", "damage"), TAIL_COMBINATIONS)
def test_tail_table_never_cuts_what_may_be_acknowledged(
    defect: Defect, last: bool, rest: Rest, cut: Cut, damage: Damage
) -> None:
    row = decide_tail(defect, last, rest, cut, damage)
    assert row.matches(defect, last, rest, cut, damage)
    # The first matching row is the decision; it must be the first in table order.
    assert row is next(r for r in TAIL_TABLE if r.matches(defect, last, rest, cut, damage))
    if row.action is Action.TRUNCATE:
        assert last, "only the last segment may lose its tail"
        assert rest is not Rest.LATER, "a later batch proves the damaged one was acknowledged"
        assert defect is not Defect.BAD_CONTENT, "an intact record is never a torn write"
        assert cut is not Cut.ORPHAN, "never drop the only copy of the hard state"
        assert damage is not Damage.BIT_FLIP, "a record written whole may be acknowledged"
    else:
        assert (
            (not last)
            or rest is Rest.LATER
            or defect is Defect.BAD_CONTENT
            or cut is Cut.ORPHAN
            or damage is Damage.BIT_FLIP
        ), f"{row.rule} refuses a torn tail it could cut"


def test_every_tail_row_decides_something() -> None:
    used = {decide_tail(*combo).rule for combo in TAIL_COMBINATIONS}
    assert used == {row.rule for row in TAIL_TABLE}
    assert len({row.rule for row in TAIL_TABLE}) == len(TAIL_TABLE)


@pytest.mark.parametrize(("relation", "commit", "present"), SNAPSHOT_COMBINATIONS)
def test_snapshot_table_keeps_committed_entries(
    relation: Relation, commit: CommitPosition, present: bool
) -> None:
    row = decide_snapshot(relation, commit, present)
    assert row is next(r for r in SNAPSHOT_TABLE if r.matches(relation, commit, present))
    if row.verdict is Verdict.DISCARD:
        # Only uncommitted entries (commit index inside the snapshot) may be discarded.
        assert commit is CommitPosition.IN_SNAPSHOT
        assert relation in (Relation.HOLDS_CONFLICT, Relation.BEHIND)
    if row.verdict is Verdict.KEEP:
        assert relation in (Relation.HOLDS_MATCH, Relation.STARTS_AFTER)
        assert commit is not CommitPosition.BEYOND
    if relation is Relation.GAP or commit is CommitPosition.BEYOND:
        assert row.verdict is Verdict.CORRUPT


def test_every_snapshot_row_decides_something() -> None:
    used = {decide_snapshot(*combo).rule for combo in SNAPSHOT_COMBINATIONS}
    assert used == {row.rule for row in SNAPSHOT_TABLE}


def _log(base: int, base_term: int, terms: list[int]) -> LogIndex:
    log = LogIndex(base, base_term)
    for k, term in enumerate(terms):
        index = base + 1 + k
        assert log.put(Run(index, index, index, 1, 0, term, None))
    return log


@pytest.mark.parametrize(
    ("log", "index", "term", "expected"),
    [
        (_log(0, 0, [1, 1, 2]), 0, 0, Relation.STARTS_AFTER),
        (_log(0, 0, [1, 1, 2]), 2, 1, Relation.HOLDS_MATCH),
        (_log(0, 0, [1, 1, 2]), 3, 3, Relation.HOLDS_CONFLICT),
        (_log(0, 0, [1, 1, 2]), 5, 3, Relation.BEHIND),
        (_log(4, 2, [2, 3]), 4, 2, Relation.STARTS_AFTER),
        (_log(4, NO_TERM, [2, 3]), 4, 2, Relation.STARTS_AFTER),
        (_log(4, 1, [2, 3]), 4, 2, Relation.STARTS_AFTER_CONFLICT),
        (_log(4, 2, [2, 3]), 2, 1, Relation.GAP),
        (_log(4, 2, []), 0, 0, Relation.GAP),
    ],
)
def test_relation_of(log: LogIndex, index: int, term: int, expected: Relation) -> None:
    assert relation_of(log, index, term) is expected


def test_commit_position() -> None:
    assert commit_position(3, 5, 9) is CommitPosition.IN_SNAPSHOT
    assert commit_position(7, 5, 9) is CommitPosition.IN_LOG
    assert commit_position(10, 5, 9) is CommitPosition.BEYOND
    assert commit_position(10, 12, 9) is CommitPosition.IN_SNAPSHOT
