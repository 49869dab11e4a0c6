"""Recovery decisions, as two labelled decision tables.

Theory of operation. Recovery (``replay.py``) reads the data directory and, whenever something
is not as a clean shutdown would leave it, describes the situation with a few enumerated
facts and asks one of the tables below what to do. The tables are data, not nested ``if``s, so
they can be read as a whole, reviewed rule by rule, and tested over every combination of
their inputs (``tests/storage/test_recovery_table.py``). The first matching row wins; every
combination matches some row.

The one rule both tables serve: **never silently drop a record that might have been
acknowledged.** A batch is acknowledged only after the fsync that follows its single write,
and the next batch is written only after that. Hence only bytes after the last complete
batch of the *last* segment can be an unacknowledged torn write; damage anywhere else, or
damage followed by a later batch, is corruption that stops the node with the file, the offset,
the rule and the repair. Even in the final batch, damage that one flipped bit explains
(``bitflip.py``) is media corruption of a record that was written whole, maybe fsynced and
acknowledged: it stops the node too, rather than cutting away a vote or entries that peers
count on. Only a write cut short, or sectors that never reached the disk, are torn.

Table 1, TAIL_TABLE: a WAL segment stops parsing at some offset (``Defect``). Inputs: the
defect, whether this is the last segment, what follows the defect (``Rest``), what cutting
would remove (``Cut``), and what the damage looks like (``Damage``). Actions: truncate the
torn tail, or stop with ``CorruptionError``.

Table 2, SNAPSHOT_TABLE: how the newest valid snapshot relates to the replayed log
(``Relation``) and where the hard state's commit index falls (``CommitPosition``), applying
Raft section 7 ("if an existing log entry has the same index and term as the snapshot's last
included entry, retain the log entries following it; otherwise discard the entire log").
Actions: keep the log after the snapshot, discard it, or stop.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

from replog.storage.record import Defect


class Severity(enum.Enum):
    INFO = "info"  # harmless (a leftover temporary file, an ignored foreign file)
    REPAIRED = "repaired"  # an unacknowledged torn tail, cut at start
    DAMAGED = "damaged"  # damage recovery can work around (a bad snapshot with an older one)
    FATAL = "fatal"  # the node must not start


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    path: str
    offset: int | None
    rule: str
    message: str


# --------------------------------------------------------------------------------------------
# Table 1: a defect in a WAL segment.
# --------------------------------------------------------------------------------------------


class Rest(enum.Enum):
    """What the bytes after the defect hold (found by searching for record magic)."""

    NOTHING = "nothing but zero bytes follows"
    GARBAGE = "non-zero bytes follow but no valid record"
    FRAGMENTS = "only non-final parts of the same unfinished batch follow"
    OWN_FINAL = "the final part of the same batch follows, then nothing"
    LATER = "a later batch or other valid data follows"


class Cut(enum.Enum):
    """What truncating at the end of the last complete batch would remove."""

    BATCH = "the unfinished batch after the last complete one"
    SEGMENT = "the whole segment (its header is damaged); the earlier state is in older files"
    ORPHAN = "the whole segment, and no older file holds the earlier state"


class Damage(enum.Enum):
    """What the damaged record itself looks like."""

    ENDS_INSIDE = "the file ends inside it: a write cut short"
    BIT_FLIP = "it is whole, and one flipped bit explains the damage"
    UNEXPLAINED = "parts of it are zero or garbage, as where sectors never reached the disk"


class Action(enum.Enum):
    TRUNCATE = "truncate the torn tail and continue"
    CORRUPT = "stop: corruption"


_ANY_DEFECT = frozenset(Defect)
_ANY_REST = frozenset(Rest)
_ANY_CUT = frozenset(Cut)
_ANY_DAMAGE = frozenset(Damage)
_NOT_FLIPPED = frozenset({Damage.ENDS_INSIDE, Damage.UNEXPLAINED})
_TORN_RESTS = frozenset({Rest.NOTHING, Rest.GARBAGE, Rest.FRAGMENTS, Rest.OWN_FINAL})


@dataclass(frozen=True, slots=True)
class TailRow:
    rule: str
    defects: frozenset[Defect]
    last_segment: frozenset[bool]
    rests: frozenset[Rest]
    cuts: frozenset[Cut]
    damages: frozenset[Damage]
    action: Action
    why: str

    def matches(
        self, defect: Defect, last_segment: bool, rest: Rest, cut: Cut, damage: Damage
    ) -> bool:
        return (
            defect in self.defects
            and last_segment in self.last_segment
            and rest in self.rests
            and cut in self.cuts
            and damage in self.damages
        )


_BOTH = frozenset({True, False})
_LAST = frozenset({True})

_KEEPABLE = frozenset({Cut.BATCH, Cut.SEGMENT})
_TORN_DEFECTS = frozenset({Defect.BAD_MAGIC, Defect.BAD_LENGTH, Defect.BAD_CHECKSUM})

TAIL_TABLE: tuple[TailRow, ...] = (
    TailRow(
        "T1-intact-but-invalid",
        frozenset({Defect.BAD_CONTENT}),
        _BOTH,
        _ANY_REST,
        _ANY_CUT,
        _ANY_DAMAGE,
        Action.CORRUPT,
        "the record passed its checksum, so its bytes are what was written, yet they make no "
        "sense here: a software bug, or files from elsewhere",
    ),
    TailRow(
        "T2-sealed-segment",
        _ANY_DEFECT,
        frozenset({False}),
        _ANY_REST,
        _ANY_CUT,
        _ANY_DAMAGE,
        Action.CORRUPT,
        "a newer segment exists, so every batch of this one was fsynced before; only the last "
        "segment can end in a torn write",
    ),
    TailRow(
        "T3-acknowledged-data-follows",
        _ANY_DEFECT,
        _LAST,
        frozenset({Rest.LATER}),
        _ANY_CUT,
        _ANY_DAMAGE,
        Action.CORRUPT,
        "a later batch follows the damage; it was written after the damaged batch was "
        "acknowledged, so cutting would lose acknowledged entries",
    ),
    TailRow(
        "T4-orphan-segment",
        _ANY_DEFECT,
        _LAST,
        _TORN_RESTS,
        frozenset({Cut.ORPHAN}),
        _ANY_DAMAGE,
        Action.CORRUPT,
        "the segment header is damaged and older segments were compacted away, so dropping "
        "this segment would lose the hard state (term and vote)",
    ),
    TailRow(
        "T5-flipped-bit",
        _ANY_DEFECT,
        _LAST,
        _TORN_RESTS,
        _KEEPABLE,
        frozenset({Damage.BIT_FLIP}),
        Action.CORRUPT,
        "the final batch was written whole and a bit flipped since (media corruption): it "
        "may have been fsynced and acknowledged, and cutting it could take back a vote",
    ),
    TailRow(
        "T6-incomplete-final-batch",
        frozenset({Defect.OPEN_BATCH}),
        _LAST,
        _TORN_RESTS,
        _KEEPABLE,
        _NOT_FLIPPED,
        Action.TRUNCATE,
        "the last write stopped between two parts of a batch; its fsync never returned",
    ),
    TailRow(
        "T7-torn-final-write",
        frozenset({Defect.SHORT_HEADER, Defect.PAST_END}),
        _LAST,
        _TORN_RESTS,
        _KEEPABLE,
        _NOT_FLIPPED,
        Action.TRUNCATE,
        "the last record runs past the end of the file: the last write was cut short",
    ),
    TailRow(
        "T8-zeroed-tail",
        _TORN_DEFECTS,
        _LAST,
        frozenset({Rest.NOTHING}),
        _KEEPABLE,
        _NOT_FLIPPED,
        Action.TRUNCATE,
        "the file ends in zeros: it grew, but the data of the last write never reached the disk",
    ),
    TailRow(
        "T9-torn-final-batch",
        _TORN_DEFECTS,
        _LAST,
        frozenset({Rest.GARBAGE, Rest.FRAGMENTS, Rest.OWN_FINAL}),
        _KEEPABLE,
        _NOT_FLIPPED,
        Action.TRUNCATE,
        "the damage lies in the final batch, nothing after it, and no single flipped bit "
        "explains it: the last write was torn (its sectors reached the disk in part) before "
        "its fsync returned",
    ),
)


def tail_inputs() -> Iterator[tuple[Defect, bool, Rest, Cut, Damage]]:
    """Every combination of Table 1's inputs."""
    return itertools.product(Defect, (True, False), Rest, Cut, Damage)


def decide_tail(
    defect: Defect, last_segment: bool, rest: Rest, cut: Cut, damage: Damage
) -> TailRow:
    for row in TAIL_TABLE:
        if row.matches(defect, last_segment, rest, cut, damage):
            return row
    raise AssertionError(f"TAIL_TABLE misses {defect}, {last_segment}, {rest}, {cut}, {damage}")


# --------------------------------------------------------------------------------------------
# Table 2: the newest valid snapshot against the replayed log.
# --------------------------------------------------------------------------------------------


class Relation(enum.Enum):
    """Where the snapshot (index S, term T; S = 0 without a snapshot) meets the log."""

    HOLDS_MATCH = "the log holds entry S with term T"
    HOLDS_CONFLICT = "the log holds entry S with another term"
    STARTS_AFTER = "the log starts at S + 1 and continues entry S of term T"
    STARTS_AFTER_CONFLICT = "the log starts at S + 1 but continues an entry of another term"
    BEHIND = "the log ends before S"
    GAP = "the log starts after S + 1: the entries in between are missing"


class CommitPosition(enum.Enum):
    IN_SNAPSHOT = "the commit index is at or below S"
    IN_LOG = "the commit index is after S and within the log"
    BEYOND = "the commit index is beyond both the snapshot and the log"


class Verdict(enum.Enum):
    KEEP = "keep the log entries after the snapshot"
    DISCARD = "discard the log: it restarts right after the snapshot"
    CORRUPT = "stop: corruption"


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    rule: str
    relations: frozenset[Relation]
    commits: frozenset[CommitPosition]
    snapshot_present: frozenset[bool]
    verdict: Verdict
    why: str

    def matches(self, relation: Relation, commit: CommitPosition, present: bool) -> bool:
        return (
            relation in self.relations
            and commit in self.commits
            and present in self.snapshot_present
        )


_ANY_COMMIT = frozenset(CommitPosition)
_NOT_BEYOND = frozenset({CommitPosition.IN_SNAPSHOT, CommitPosition.IN_LOG})

SNAPSHOT_TABLE: tuple[SnapshotRow, ...] = (
    SnapshotRow(
        "S1-missing-entries",
        frozenset({Relation.GAP}),
        _ANY_COMMIT,
        frozenset({True}),
        Verdict.CORRUPT,
        "entries between the snapshot and the first log entry are missing: a segment was "
        "deleted, or the snapshot that covered them is lost or damaged",
    ),
    SnapshotRow(
        "S2-log-without-snapshot",
        frozenset({Relation.GAP}),
        _ANY_COMMIT,
        frozenset({False}),
        Verdict.CORRUPT,
        "the log was compacted but no valid snapshot covers the entries before it",
    ),
    SnapshotRow(
        "S3-log-continues-other-entry",
        frozenset({Relation.STARTS_AFTER_CONFLICT}),
        _ANY_COMMIT,
        _BOTH,
        Verdict.CORRUPT,
        "the log continues an entry at the snapshot's index with another term; committed "
        "entries cannot differ",
    ),
    SnapshotRow(
        "S4-commit-beyond-log",
        frozenset(Relation),
        frozenset({CommitPosition.BEYOND}),
        _BOTH,
        Verdict.CORRUPT,
        "the hard state says entries were committed that neither the log nor the snapshot holds",
    ),
    SnapshotRow(
        "S5-log-holds-snapshot",
        frozenset({Relation.HOLDS_MATCH, Relation.STARTS_AFTER}),
        _NOT_BEYOND,
        _BOTH,
        Verdict.KEEP,
        "the normal case: the log continues the snapshot (Raft section 7: retain the entries "
        "following it)",
    ),
    SnapshotRow(
        "S6-committed-entry-conflicts",
        frozenset({Relation.HOLDS_CONFLICT}),
        frozenset({CommitPosition.IN_LOG}),
        _BOTH,
        Verdict.CORRUPT,
        "an entry the hard state calls committed conflicts with the snapshot",
    ),
    SnapshotRow(
        "S7-snapshot-replaces-conflicting-log",
        frozenset({Relation.HOLDS_CONFLICT}),
        frozenset({CommitPosition.IN_SNAPSHOT}),
        _BOTH,
        Verdict.DISCARD,
        "a snapshot from the leader was saved but the crash came before the log was cut; its "
        "uncommitted entries conflict (Raft section 7: discard the entire log)",
    ),
    SnapshotRow(
        "S8-snapshot-ahead-of-log",
        frozenset({Relation.BEHIND}),
        frozenset({CommitPosition.IN_SNAPSHOT}),
        _BOTH,
        Verdict.DISCARD,
        "the snapshot is newer than the whole log (one from the leader, saved just before a "
        "crash): the log restarts after it",
    ),
    SnapshotRow(
        "S9-inconsistent",
        frozenset({Relation.BEHIND}),
        frozenset({CommitPosition.IN_LOG}),
        _BOTH,
        Verdict.CORRUPT,
        "cannot happen: a commit index after the snapshot inside a log that ends before it",
    ),
)


def snapshot_inputs() -> Iterator[tuple[Relation, CommitPosition, bool]]:
    """Every combination of Table 2's inputs."""
    return itertools.product(Relation, CommitPosition, (True, False))


def decide_snapshot(relation: Relation, commit: CommitPosition, present: bool) -> SnapshotRow:
    for row in SNAPSHOT_TABLE:
        if row.matches(relation, commit, present):
            return row
    raise AssertionError(f"SNAPSHOT_TABLE misses {relation}, {commit}, {present}")
