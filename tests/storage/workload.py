"""Random Raft-shaped storage workloads and a plain model of what they should leave on disk.

``Model`` applies the same operations to simple Python lists; ``View`` is the comparable
summary of a ``PersistentState``. ``Workload`` draws operations a Raft node could produce:
appends in the current term, conflicting suffix replacements above the commit index, votes,
commit advances, snapshots from a leader (the log restarts after them) and local snapshots
with a trailing window.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from replog.core.types import (
    NO_NODE,
    Configuration,
    Entry,
    EntryKind,
    HardState,
    PersistentState,
    Snapshot,
    SnapshotMeta,
)
from replog.storage import NodeStorage

CONFIG = Configuration(frozenset({1, 2, 3}))


@dataclass(frozen=True)
class View:
    hard_state: HardState
    snapshot: tuple[int, int, bytes] | None
    entries: tuple[Entry, ...]


def view_of(state: PersistentState) -> View:
    snap = state.snapshot
    index = snap.meta.index if snap else 0
    return View(
        state.hard_state,
        (snap.meta.index, snap.meta.term, snap.data) if snap else None,
        tuple(e for e in state.entries if e.index > index),
    )


@dataclass(frozen=True)
class Save:
    hard_state: HardState | None
    entries: tuple[Entry, ...]
    snapshot: Snapshot | None = None


@dataclass(frozen=True)
class TakeSnapshot:
    snapshot: Snapshot
    keep_entries: int


Op = Save | TakeSnapshot


@dataclass
class Model:
    hard_state: HardState = field(default_factory=HardState)
    snapshot: Snapshot | None = None
    entries: list[Entry] = field(default_factory=list)  # entries after the snapshot

    @classmethod
    def from_state(cls, state: PersistentState) -> Model:
        index = state.snapshot.meta.index if state.snapshot else 0
        return cls(state.hard_state, state.snapshot, [e for e in state.entries if e.index > index])

    @property
    def base(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.base + len(self.entries)

    def term(self, index: int) -> int | None:
        if index == self.base:
            return self.snapshot.meta.term if self.snapshot else 0
        if self.base < index <= self.last_index:
            return self.entries[index - self.base - 1].term
        return None

    def view(self) -> View:
        snap = self.snapshot
        return View(
            self.hard_state,
            (snap.meta.index, snap.meta.term, snap.data) if snap else None,
            tuple(self.entries),
        )

    def apply(self, op: Op) -> None:
        if isinstance(op, TakeSnapshot):
            index = op.snapshot.meta.index
            if index > self.base:
                del self.entries[: index - self.base]
                self.snapshot = op.snapshot
            return
        if op.snapshot is not None:
            self.snapshot = op.snapshot
            self.entries = []
        if op.entries:
            del self.entries[op.entries[0].index - self.base - 1 :]
            self.entries.extend(op.entries)
        if op.hard_state is not None:
            self.hard_state = op.hard_state

    def crash_window(self, op: Save) -> View | None:
        """What recovery shows when a leader's snapshot reached the disk but its WAL batch did
        not (Raft section 7 applied at recovery, hard state lifted to the snapshot)."""
        if op.snapshot is None:
            return None
        meta = op.snapshot.meta
        kept: tuple[Entry, ...] = ()
        if self.term(meta.index) == meta.term:
            kept = tuple(e for e in self.entries if e.index > meta.index)
        hs = self.hard_state
        term = max(hs.term, meta.term)
        lifted = HardState(
            term, hs.voted_for if term == hs.term else NO_NODE, max(hs.commit_index, meta.index)
        )
        return View(lifted, (meta.index, meta.term, op.snapshot.data), kept)


def make_entry(rng: random.Random, index: int, term: int) -> Entry:
    kind = EntryKind.NORMAL if rng.random() < 0.9 else rng.choice(list(EntryKind))
    size = rng.choice((0, 1, 10, 100, 300))
    return Entry(index, term, kind, rng.randbytes(size))


class Workload:
    """Draws valid operations against ``model`` (which the caller keeps up to date)."""

    def __init__(self, rng: random.Random, model: Model, *, snapshots: bool = True) -> None:
        self.rng = rng
        self.model = model
        self.snapshots = snapshots

    def next_op(self) -> Op:
        rng, m = self.rng, self.model
        roll = rng.random()
        if self.snapshots and roll < 0.04:
            return self._install()
        if self.snapshots and roll < 0.10 and m.hard_state.commit_index > m.base:
            return self._local_snapshot()
        if roll < 0.20 and m.last_index > max(m.hard_state.commit_index, m.base):
            return self._conflict()
        if roll < 0.27:
            hs = m.hard_state
            return Save(HardState(hs.term + 1, rng.choice((NO_NODE, 1, 2, 3)), hs.commit_index), ())
        return self._append()

    def _term(self) -> int:
        m = self.model
        last_term = m.term(m.last_index) or 0
        return max(m.hard_state.term, last_term, 1)

    def _commit(self, last: int) -> int:
        commit = self.model.hard_state.commit_index
        return self.rng.randint(commit, max(commit, last))

    def _append(self) -> Save:
        m, rng = self.model, self.rng
        term = self._term()
        count = rng.choice((0, 1, 1, 2, 5, 16))
        first = m.last_index + 1
        entries = tuple(make_entry(rng, first + k, term) for k in range(count))
        hs = m.hard_state
        new = HardState(term, hs.voted_for if term == hs.term else NO_NODE, hs.commit_index)
        new = HardState(new.term, new.voted_for, self._commit(first + count - 1))
        return Save(new if (new != hs or not entries) else None, entries)

    def _conflict(self) -> Save:
        m, rng = self.model, self.rng
        low = max(m.hard_state.commit_index, m.base) + 1
        start = rng.randint(low, m.last_index)
        term = self._term() + 1
        count = rng.randint(1, 6)
        entries = tuple(make_entry(rng, start + k, term) for k in range(count))
        return Save(HardState(term, NO_NODE, m.hard_state.commit_index), entries)

    def _install(self) -> Save:
        m, rng = self.model, self.rng
        low = max(m.hard_state.commit_index, m.base) + 1
        index = rng.randint(low, m.last_index + 3)
        existing = m.term(index)
        term = existing if (existing and rng.random() < 0.5) else self._term() + 1
        snapshot = Snapshot(SnapshotMeta(index, term, CONFIG), rng.randbytes(rng.randint(0, 64)))
        count = rng.choice((0, 1, 3))
        entries = tuple(make_entry(rng, index + 1 + k, term) for k in range(count))
        old = m.hard_state
        new_term = max(old.term, term)
        hs = HardState(new_term, old.voted_for if new_term == old.term else NO_NODE, index)
        return Save(hs, entries, snapshot)

    def _local_snapshot(self) -> TakeSnapshot:
        m, rng = self.model, self.rng
        index = rng.randint(m.base + 1, m.hard_state.commit_index)
        term = m.term(index)
        assert term is not None
        data = rng.randbytes(rng.randint(0, 64))
        return TakeSnapshot(Snapshot(SnapshotMeta(index, term, CONFIG), data), rng.randint(0, 8))


def run_op(storage: NodeStorage, op: Op) -> None:
    if isinstance(op, TakeSnapshot):
        storage.save_snapshot(op.snapshot, op.keep_entries)
    else:
        storage.save(op.hard_state, op.entries, op.snapshot)
