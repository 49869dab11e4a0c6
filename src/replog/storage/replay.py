"""Recovery: read a data directory and work out the durable state it holds, changing nothing.

Theory of operation. ``plan_recovery`` is a pure reader: it lists the directory, checks the
metadata, loads the newest valid snapshot, replays every WAL segment in order and reconciles
the two, and returns a ``RecoveryPlan``: the state to hand to Raft plus the repairs that the
caller (``NodeStorage.open``) must make before writing (cut a torn tail, remove leftover
temporary files, record a snapshot mark). ``replog data inspect`` runs the same code and
prints the plan instead.

Replaying a segment: the first record must be its header, which must continue the previous
segment exactly (first index, term before it, batch number, hard state). Then come batches;
the parts of a batch are buffered and applied to the log only when the final part arrives,
so an unfinished batch never counts. When parsing stops early the decision table
(``recovery.TAIL_TABLE``) says whether the rest is a torn tail to cut or corruption. Records
are found again after damage by searching for the record magic, so recovery can tell "a torn
final write" from "damage followed by later acknowledged batches"; and ``bitflip.py`` tells a
record that one flipped bit explains (written whole: never cut) from one that was torn.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace

from replog.core.types import NO_NODE, HardState, PersistentState, Snapshot
from replog.storage.bitflip import explain_by_bit_flip
from replog.storage.disk import Disk
from replog.storage.errors import CorruptionError, FormatTooNew
from replog.storage.layout import (
    Identity,
    Listing,
    SegmentName,
    check_identity,
    list_directory,
    read_file,
    read_meta,
)
from replog.storage.logindex import LogIndex, ReplayLog, Run
from replog.storage.record import (
    FORMAT_VERSION,
    HEADER_BYTES,
    MAGIC,
    NO_TERM,
    WAL_MAGIC,
    ZERO_BLOCK,
    BatchPart,
    Defect,
    Frame,
    RecordType,
    SegmentHeader,
    decode_batch_part,
    decode_segment_header,
    peek_version,
    read_frame,
)
from replog.storage.recovery import (
    Action,
    CommitPosition,
    Cut,
    Damage,
    Finding,
    Relation,
    Rest,
    Severity,
    SnapshotRow,
    Verdict,
    decide_snapshot,
    decide_tail,
)
from replog.storage.snapshot import read_snapshot

SEGMENTS_MAX = 1 << 16
SEGMENT_BYTES_READ_MAX = 4 << 30
RESCAN_CANDIDATES_MAX = 1 << 20
SNAPSHOT_BYTES_MAX_DEFAULT = 1 << 30


@dataclass(slots=True)
class SegmentFacts:
    """What replay learned about one segment file."""

    name: SegmentName
    size: int  # bytes in the file
    valid_bytes: int  # bytes that stay (less than size when a torn tail is cut)
    records: int = 0
    batches: int = 0
    first_entry: int = 0  # lowest / highest entry index written in it (0: none)
    last_entry: int = 0
    removed: bool = False  # the whole segment is a torn tail
    last_write_start: int = 0  # where the write of the last complete batch began


@dataclass(frozen=True, slots=True)
class TailCut:
    path: str
    offset: int  # keep the bytes before this offset
    remove: bool  # the whole file goes
    defect: Defect
    rest: Rest
    rule: str


@dataclass(slots=True)
class RecoveryPlan:
    directory: str
    identity: Identity | None
    fresh: bool
    listing: Listing
    snapshot: Snapshot | None = None
    log: ReplayLog = field(default_factory=ReplayLog)
    hard_state: HardState = field(default_factory=HardState)  # what to hand to Raft
    wal_hard_state: HardState = field(default_factory=HardState)  # what the WAL ends with
    next_batch: int = 1
    segments: list[SegmentFacts] = field(default_factory=list)
    cut: TailCut | None = None
    snapshot_row: SnapshotRow | None = None
    repair_mark: tuple[int, int, bool] | None = None  # a snapshot mark recovery must write
    repair_hard_state: bool = False  # recovery changed the hard state; write it
    findings: list[Finding] = field(default_factory=list)

    def persistent_state(self) -> PersistentState:
        return PersistentState(self.hard_state, self.snapshot, tuple(self.log.entries))

    def log_index(self) -> LogIndex:
        """The live log's locations, without the entries (what the writer keeps)."""
        index = LogIndex(self.log.base_index, self.log.base_term)
        for run in self.log.runs():
            index.put(replace(run))
        return index


def _fatal(path: str, offset: int | None, reason: str, rule: str) -> CorruptionError:
    return CorruptionError(path, offset, reason, rule)


# --------------------------------------------------------------------------------------------
# The whole directory.
# --------------------------------------------------------------------------------------------


def plan_recovery(
    disk: Disk,
    directory: str,
    expected: Identity | None,
    snapshot_bytes_max: int = SNAPSHOT_BYTES_MAX_DEFAULT,
) -> RecoveryPlan:
    """Read ``directory`` and plan recovery; raises ``CorruptionError``, ``FormatTooNew`` or
    an ``IdentityMismatch``. With ``expected`` None the metadata's identity is taken."""
    listing = list_directory(disk, directory)
    plan = RecoveryPlan(directory, expected, fresh=listing.is_empty(), listing=listing)
    _note_odd_files(plan)
    if plan.fresh:
        return plan
    if not listing.meta:
        raise _fatal(
            os.path.join(directory, "replog.meta"),
            None,
            "the metadata file is missing while WAL segments or snapshots exist",
            "meta-missing",
        )
    meta = read_meta(disk, directory)
    if expected is not None:
        check_identity(directory, meta, expected)
    identity = Identity(meta.cluster_id, meta.node_id)
    plan.identity = identity
    _load_snapshot(disk, plan, identity, snapshot_bytes_max)
    _replay_segments(disk, plan, identity)
    _reconcile(plan)
    return plan


def _note_odd_files(plan: RecoveryPlan) -> None:
    listing, directory = plan.listing, plan.directory
    if listing.misnamed:
        raise _fatal(
            os.path.join(directory, listing.misnamed[0]),
            None,
            "a file is named like a WAL segment or snapshot but does not follow the naming "
            "scheme; move it out of the data directory",
            "misnamed-file",
        )
    for name in listing.temps:
        plan.findings.append(
            Finding(
                Severity.INFO,
                os.path.join(directory, name),
                None,
                "leftover-temporary",
                "left by an interrupted write; never read, removed at start",
            )
        )
    for name in listing.unknown:
        plan.findings.append(
            Finding(
                Severity.INFO,
                os.path.join(directory, name),
                None,
                "foreign-file",
                "not a replog file; ignored",
            )
        )


def _load_snapshot(disk: Disk, plan: RecoveryPlan, identity: Identity, bytes_max: int) -> None:
    """The newest snapshot that reads back whole; damaged newer ones become findings."""
    for name in reversed(plan.listing.snapshots):
        found = read_snapshot(disk, plan.directory, name, identity, bytes_max)
        if isinstance(found, Snapshot):
            plan.snapshot = found
            return
        plan.findings.append(
            Finding(
                Severity.DAMAGED,
                os.path.join(plan.directory, name.name),
                None,
                "snapshot-damaged",
                f"snapshot is damaged ({found}); an older snapshot is used if the log "
                "still connects to it",
            )
        )


def _replay_segments(disk: Disk, plan: RecoveryPlan, identity: Identity) -> None:
    segments = plan.listing.segments
    if len(segments) > SEGMENTS_MAX:
        raise _fatal(plan.directory, None, f"{len(segments)} WAL segments", "too-many-segments")
    for before, after in itertools.pairwise(segments):
        if after.seq != before.seq + 1:
            raise _fatal(
                os.path.join(plan.directory, after.name),
                None,
                f"WAL segments {before.seq + 1} to {after.seq - 1} are missing",
                "segment-missing",
            )
    replayer = _Replayer(plan, identity)
    for k, name in enumerate(segments):
        path = os.path.join(plan.directory, name.name)
        data = read_file(disk, path, SEGMENT_BYTES_READ_MAX)
        if data is None:
            raise _fatal(path, None, "segment file is implausibly large", "segment-too-large")
        replayer.segment(name, data, is_last=k == len(segments) - 1, has_predecessor=k > 0)
    plan.next_batch = replayer.next_batch or 1
    plan.hard_state = replayer.hard_state
    plan.wal_hard_state = replayer.hard_state


# --------------------------------------------------------------------------------------------
# One segment.
# --------------------------------------------------------------------------------------------


class _Replayer:
    """Replays segments in order into ``plan.log``; keeps the hard state and batch number."""

    def __init__(self, plan: RecoveryPlan, identity: Identity) -> None:
        self.plan = plan
        self.identity = identity
        self.log = plan.log
        self.hard_state = HardState()
        self.next_batch: int | None = None  # unknown until a header or batch is read
        # per segment:
        self.facts = SegmentFacts(SegmentName(0, 0, ""), 0, 0)
        self.path = ""
        self.header_seen = False
        self.pending: list[tuple[int, BatchPart]] = []
        self.valid_end = 0
        self.is_last = False
        self.has_predecessor = False

    def segment(self, name: SegmentName, data: bytes, is_last: bool, has_predecessor: bool) -> None:
        self.facts = SegmentFacts(name, len(data), len(data))
        self.plan.segments.append(self.facts)
        self.path = os.path.join(self.plan.directory, name.name)
        self.header_seen = False
        self.pending = []
        self.valid_end = 0
        self.is_last = is_last
        self.has_predecessor = has_predecessor
        pos = 0
        while pos < len(data):
            found = read_frame(data, pos)
            if isinstance(found, Defect):
                if self.header_seen and not self.pending and all_zero(data, pos):
                    self.facts.valid_bytes = pos  # the preallocated rest: nothing was torn
                    return
                self._stop(data, pos, found, "")
                return
            problem = self._accept(found, pos)
            if problem:
                self._stop(data, pos, Defect.BAD_CONTENT, problem)
                return
            self.facts.records += 1
            pos = found.end
        if self.pending or not self.header_seen:
            defect = Defect.OPEN_BATCH if self.header_seen else Defect.SHORT_HEADER
            self._stop(data, pos, defect, "")

    def _stop(self, data: bytes, pos: int, defect: Defect, problem: str) -> None:
        """Parsing stopped at ``pos``: consult TAIL_TABLE, then cut or raise."""
        rest = classify_rest(data, pos, self.next_batch)
        if self.header_seen:
            cut = Cut.BATCH
        elif self.has_predecessor or self.facts.name.seq == 1:
            cut = Cut.SEGMENT
        else:
            cut = Cut.ORPHAN
        damage, flip = damage_of(data, pos, defect, rest)
        row = decide_tail(defect, self.is_last, rest, cut, damage)
        what = f"{defect.value}{': ' + problem if problem else ''}; {rest.value}"
        if flip is not None:
            what += f"; one flipped bit explains it (offset {flip[0]}, bit {flip[1]})"
        if row.action is Action.CORRUPT:
            raise _fatal(self.path, pos, f"{what}; {row.why}", row.rule)
        self.pending = []
        self.facts.valid_bytes = self.valid_end
        self.facts.removed = not self.header_seen
        self.plan.cut = TailCut(
            self.path, self.valid_end, not self.header_seen, defect, rest, row.rule
        )
        self.plan.findings.append(
            Finding(
                Severity.REPAIRED,
                self.path,
                pos,
                row.rule,
                f"{what}; {row.why}. The {len(data) - self.valid_end} bytes from offset "
                f"{self.valid_end} were never acknowledged and are cut at start",
            )
        )

    def _accept(self, found: Frame, pos: int) -> str:
        """Take one checksummed record; returns what is wrong with it, or ''."""
        if found.flags != 0:
            return f"unknown record flags {found.flags}"
        if not self.header_seen:
            if found.rtype != RecordType.SEGMENT_HEADER:
                return "a segment must start with its header record"
            problem = self._accept_header(found.body)
            self.header_seen = not problem
            self.valid_end = found.end
            return problem
        if found.rtype != RecordType.BATCH:
            return f"record type {found.rtype} does not belong inside a segment"
        part = decode_batch_part(found.body)
        if isinstance(part, str):
            return part
        if self.next_batch is not None and part.batch_seq != self.next_batch:
            return f"batch {part.batch_seq} where batch {self.next_batch} was due"
        if part.part != len(self.pending):
            return f"part {part.part} of batch {part.batch_seq} out of order"
        self.pending.append((pos, part))
        if not part.final:
            return ""
        problem = self._apply_batch()
        self.valid_end = found.end
        return problem

    def _accept_header(self, body: bytes) -> str:
        version = peek_version(body, WAL_MAGIC)
        if isinstance(version, str):
            return version
        if version > FORMAT_VERSION:
            raise FormatTooNew(self.path, version, FORMAT_VERSION)
        header = decode_segment_header(body)
        if isinstance(header, str):
            return header
        name = self.facts.name
        if (header.cluster_id, header.node_id) != (self.identity.cluster_id, self.identity.node_id):
            return f"segment of cluster {header.cluster_id!r} node {header.node_id}"
        if (header.segment_seq, header.first_index) != (name.seq, name.first_index):
            return "segment header does not match the file name"
        if self.has_predecessor:
            return self._check_continuity(header)
        self.log.base_index = header.first_index - 1
        self.log.base_term = header.prev_term
        self.hard_state = header.hard_state()
        self.next_batch = header.batch_seq
        return ""

    def _check_continuity(self, header: SegmentHeader) -> str:
        log = self.log
        if header.first_index != log.last_index + 1:
            return f"segment starts at index {header.first_index}, log ends at {log.last_index}"
        if NO_TERM not in (header.prev_term, log.last_term) and header.prev_term != log.last_term:
            return f"segment continues term {header.prev_term}, log ends in {log.last_term}"
        if header.batch_seq != self.next_batch:
            return f"segment starts with batch {header.batch_seq}, {self.next_batch} was due"
        if header.hard_state() != self.hard_state:
            return "segment header's hard state differs from the last batch's"
        return ""

    def _apply_batch(self) -> str:
        """The final part arrived: apply the whole batch to the log and the hard state."""
        log = self.log
        seq = self.facts.name.seq
        for offset, part in self.pending:
            if part.snapshot_index:
                ok = log.apply_mark(part.snapshot_index, part.snapshot_term, part.snapshot_keep)
                if not ok:
                    return f"snapshot mark at {part.snapshot_index} does not fit the log"
            if part.datas:
                entries = part.entries()
                first, last = entries[0].index, entries[-1].index
                terms = tuple(part.terms) if part.terms else None
                run = Run(first, first, last, seq, offset, part.term, terms)
                if not log.put_entries(run, entries):
                    return f"entries start at {first} but the log ends at {log.last_index}"
                self._note_entries(first, last)
        final = self.pending[-1][1]
        self.facts.last_write_start = self.pending[0][0] if self.facts.batches else 0
        problem = self._check_hard_state(final.hard_state())
        if problem:
            return problem
        self.hard_state = final.hard_state()
        self.next_batch = final.batch_seq + 1
        self.pending = []
        self.facts.batches += 1
        return ""

    def _note_entries(self, first: int, last: int) -> None:
        facts = self.facts
        facts.first_entry = first if not facts.first_entry else min(facts.first_entry, first)
        facts.last_entry = max(facts.last_entry, last)

    def _check_hard_state(self, new: HardState) -> str:
        old = self.hard_state
        if new.term < old.term:
            return f"hard state term went back from {old.term} to {new.term}"
        if new.term == old.term and old.voted_for not in (NO_NODE, new.voted_for):
            return f"vote changed from {old.voted_for} to {new.voted_for} within term {new.term}"
        if new.commit_index > self.log.last_index:
            return f"commit index {new.commit_index} beyond the log end {self.log.last_index}"
        return ""


def classify_rest(data: bytes, pos: int, expected_batch: int | None) -> Rest:
    """What follows a defect at ``pos``: search for record magic, check each candidate."""
    start = pos + 1
    fragments = False
    for _ in range(RESCAN_CANDIDATES_MAX):
        at = data.find(MAGIC, start)
        if at < 0:
            break
        found = read_frame(data, at)
        if isinstance(found, Defect):
            start = at + 1
            continue
        part = decode_batch_part(found.body) if found.rtype == RecordType.BATCH else None
        if not isinstance(part, BatchPart) or found.flags != 0:
            return Rest.LATER
        if expected_batch is None:
            expected_batch = part.batch_seq
        if part.batch_seq != expected_batch:
            return Rest.LATER
        if part.final:
            return Rest.OWN_FINAL if all_zero(data, found.end) else Rest.LATER
        fragments = True
        start = found.end
    else:
        return Rest.LATER  # too many candidates to tell: assume the worst
    if fragments:
        return Rest.FRAGMENTS
    return Rest.NOTHING if all_zero(data, pos) else Rest.GARBAGE


def damage_of(
    data: bytes, pos: int, defect: Defect, rest: Rest
) -> tuple[Damage, tuple[int, int] | None]:
    """What the damaged record at ``pos`` looks like, with the flipped bit if one explains it."""
    if defect in (Defect.OPEN_BATCH, Defect.SHORT_HEADER, Defect.BAD_CONTENT):
        return (Damage.UNEXPLAINED if defect is Defect.BAD_CONTENT else Damage.ENDS_INSIDE), None
    flip = explain_by_bit_flip(data, pos)
    if flip is not None and _torn_into_zeros(data, pos, flip[0]):
        return Damage.ENDS_INSIDE, None
    if flip is not None:
        return Damage.BIT_FLIP, flip
    if defect is Defect.PAST_END and rest in (Rest.NOTHING, Rest.GARBAGE):
        return Damage.ENDS_INSIDE, None
    return Damage.UNEXPLAINED, None


def _torn_into_zeros(data: bytes, pos: int, offset: int) -> bool:
    """Whether the record at ``pos`` reads as zeros from the byte at ``offset`` to its end.
    A write torn there into preallocated space (zeros) looks exactly like a bit that flipped
    to 0 at ``offset``; the torn write is the likely story, so this is not media damage."""
    length = int.from_bytes(data[pos + 4 : pos + 8], "little")
    end = min(len(data), pos + HEADER_BYTES + length)
    return offset < end and all_zero(data[offset:end], 0)


def all_zero(data: bytes, start: int) -> bool:
    """Whether ``data`` holds only zeros from ``start`` on (an unwritten, preallocated rest).
    Compared a block at a time: a 64 MiB segment takes milliseconds, not a byte-wise scan."""
    block = len(ZERO_BLOCK)
    for offset in range(start, len(data), block):
        piece = data[offset : offset + block]
        if piece != ZERO_BLOCK[: len(piece)]:
            return False
    return True


# --------------------------------------------------------------------------------------------
# Snapshot against log (Table 2).
# --------------------------------------------------------------------------------------------


def relation_of(log: LogIndex, index: int, term: int) -> Relation:
    if log.base_index > index:
        return Relation.GAP
    if log.base_index == index:
        ok = log.base_term in (term, NO_TERM)
        return Relation.STARTS_AFTER if ok else Relation.STARTS_AFTER_CONFLICT
    if log.last_index < index:
        return Relation.BEHIND
    return Relation.HOLDS_MATCH if log.term(index) == term else Relation.HOLDS_CONFLICT


def commit_position(commit_index: int, snapshot_index: int, last_index: int) -> CommitPosition:
    if commit_index <= snapshot_index:
        return CommitPosition.IN_SNAPSHOT
    if commit_index <= last_index:
        return CommitPosition.IN_LOG
    return CommitPosition.BEYOND


def _reconcile(plan: RecoveryPlan) -> None:
    log, snapshot = plan.log, plan.snapshot
    index, term = (snapshot.meta.index, snapshot.meta.term) if snapshot else (0, 0)
    relation = relation_of(log, index, term)
    position = commit_position(plan.hard_state.commit_index, index, log.last_index)
    row = decide_snapshot(relation, position, snapshot is not None)
    plan.snapshot_row = row
    if row.verdict is Verdict.CORRUPT:
        raise _fatal(
            plan.directory,
            None,
            f"{relation.value} (snapshot index {index} term {term}, log {log.base_index + 1}"
            f"..{log.last_index}, commit index {plan.hard_state.commit_index}); {row.why}",
            row.rule,
        )
    if snapshot is None:
        return
    keep = row.verdict is Verdict.KEEP
    log.apply_mark(index, term, keep)
    if not keep:
        plan.repair_mark = (index, term, False)
        plan.findings.append(Finding(Severity.INFO, plan.directory, None, row.rule, row.why))
    _lift_hard_state(plan, index, term)


def _lift_hard_state(plan: RecoveryPlan, index: int, term: int) -> None:
    """A snapshot is committed, and was sent in its term or later: the hard state is at least
    that (it lags only when the crash came between saving the snapshot and the WAL batch)."""
    old = plan.hard_state
    new_term = max(old.term, term)
    new = HardState(
        new_term,
        old.voted_for if new_term == old.term else NO_NODE,
        max(old.commit_index, index),
    )
    if new != old:
        plan.hard_state = new
        plan.repair_hard_state = True
