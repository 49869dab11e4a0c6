"""The durable half of a simulated node: what survives a crash.

Theory of operation
-------------------
``DurableStore`` is the seam between the simulator and storage. The simulator hands it each
Ready before sending that Ready's messages (step 1 of the Ready contract), hands it the
snapshots the application takes, and on a crash asks it for exactly what a restarted node
would read back (``crash_and_recover``). The invariant checkers read it through ``holds``,
``term_at`` and ``durable_tuple`` to see what is really on "disk".

``MemoryStore`` keeps the durable image in memory and treats each ``save`` as fsynced on
return, which is what the Ready contract promises after step 1. It applies the persistence
rules literally:

- a snapshot in a Ready replaces the whole log (the core restores the snapshot and discards
  its log, Raft section 7); entries after it come from the same or later Readies;
- an entry at index i replaces the stored entry at i and everything after it;
- the first new entry must attach to the stored log (no gap) and lie after the snapshot;
- a snapshot the application took drops the entries it covers.

A breach of these rules by the core is reported as an ``InvariantViolation`` ("durable log").

To run the simulator over another store, implement the ``DurableStore`` protocol and pass a
factory ``(node_id, rng) -> DurableStore`` to ``run_seed`` / ``run_seeds`` / ``Cluster``
(``rng`` is derived from the seed, for stores that need randomness of their own).
``walstore.WalStore`` is such a store: the real WAL on a simulated disk that loses unsynced
bytes when it crashes. A store whose ``crash_and_recover`` raises a ``ReplogError`` (recovery
found corruption) leaves its node down for the rest of the run. A store that also implements
``FaultyDisk`` lets the nemesis inject I/O errors and bit flips into its disk.
"""

from __future__ import annotations

import collections
import dataclasses
import random
from typing import Protocol, runtime_checkable

from replog.core.types import Entry, HardState, PersistentState, Ready, Snapshot
from replog.storage import DiskOp
from replog.testing.invariants import InvariantViolation


class DurableStore(Protocol):
    """What a simulated node persists, and what a restart reads back."""

    def save(self, ready: Ready) -> None:
        """Step 1 of the Ready contract: hard state, snapshot and entries, durably."""

    def save_snapshot(self, snapshot: Snapshot) -> None:
        """A snapshot the application took; entries it covers may be dropped."""

    def crash_and_recover(self) -> PersistentState:
        """Forget everything not durable and return what a restarted node recovers."""

    def holds(self, index: int, term: int) -> bool:
        """Is the entry (index, term) durable here, in the log or inside the snapshot?"""

    def term_at(self, index: int) -> int | None:
        """The term of the durable entry at ``index`` (the snapshot's term at its index)."""

    @property
    def last_index(self) -> int: ...

    def durable_tuple(self) -> tuple[int, int, int, int]:
        """(term, voted_for, last index, last term) as durably stored."""


@runtime_checkable
class FaultyDisk(Protocol):
    """A store on a disk the nemesis can damage (``walstore.WalStore``).

    ``save`` and ``save_snapshot`` raise ``replog.storage.StorageFailed`` once an injected
    error hit a write, or ``replog.storage.PowerCut`` when the power went out; either way the
    node must stop, and ``crash_and_recover`` clears the faults before recovery reads the disk
    back."""

    def inject_error(self, op: DiskOp, error: int, after: int) -> None:
        """Fail the call of ``op`` after ``after`` more calls of it, with errno ``error``."""

    def cut_power(self, op: DiskOp, after: int) -> None:
        """Cut the power at a coming call of ``op``: ``save`` raises ``PowerCut``."""

    def clear_errors(self) -> None:
        """Cancel the errors injected and not yet hit."""

    def flip_random_bit(self) -> str | None:
        """Flip one bit somewhere in a WAL segment or snapshot file; says where (or None)."""

    def drain_counts(self) -> collections.Counter[str]:
        """What the disk did since the last call (torn and lost writes at crashes, ...)."""


class MemoryStore:
    """An in-memory durable store: every ``save`` is fsynced when it returns."""

    def __init__(self, node_id: int, rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.hard_state = HardState()
        self.snapshot: Snapshot | None = None
        self._entries: list[Entry] = []  # _entries[k].index == snapshot_index + 1 + k
        self.saves = 0

    @property
    def snapshot_index(self) -> int:
        return self.snapshot.meta.index if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.snapshot_index + len(self._entries)

    def term_at(self, index: int) -> int | None:
        offset = self.snapshot_index
        if index == offset:
            return self.snapshot.meta.term if self.snapshot else 0
        if offset < index <= offset + len(self._entries):
            return self._entries[index - offset - 1].term
        return None

    def holds(self, index: int, term: int) -> bool:
        if index <= self.snapshot_index:
            return index > 0
        return self.term_at(index) == term

    def durable_tuple(self) -> tuple[int, int, int, int]:
        last_term = self.term_at(self.last_index)
        assert last_term is not None
        return (self.hard_state.term, self.hard_state.voted_for, self.last_index, last_term)

    def save(self, ready: Ready) -> None:
        self.saves += 1
        if ready.hard_state is not None:
            self.hard_state = ready.hard_state
        if ready.snapshot is not None:
            self._install(ready.snapshot)
        if ready.entries:
            self._write(ready.entries)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        index = snapshot.meta.index
        if index <= self.snapshot_index:
            return
        if self.term_at(index) != snapshot.meta.term:
            raise InvariantViolation(
                "durable log",
                f"snapshot of term {snapshot.meta.term} taken at an index holding term "
                f"{self.term_at(index)}",
                node=self.node_id,
                index=index,
            )
        del self._entries[: index - self.snapshot_index]
        self.snapshot = snapshot

    def crash_and_recover(self) -> PersistentState:
        # A snapshot covers only committed entries, so the commit index is at least its index
        # (the stored one may lag: a commit-only change is not persisted); the WAL's recovery
        # reports the same.
        hard = self.hard_state
        if hard.commit_index < self.snapshot_index:
            hard = dataclasses.replace(hard, commit_index=self.snapshot_index)
        return PersistentState(hard, self.snapshot, tuple(self._entries))

    def _install(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index <= self.snapshot_index:
            raise InvariantViolation(
                "durable log",
                f"a Ready carries a snapshot at {snapshot.meta.index}, not newer than the "
                f"stored one at {self.snapshot_index}",
                node=self.node_id,
                index=snapshot.meta.index,
            )
        self.snapshot = snapshot
        self._entries = []

    def _write(self, entries: tuple[Entry, ...]) -> None:
        first = entries[0].index
        offset = self.snapshot_index
        if not offset < first <= self.last_index + 1:
            raise InvariantViolation(
                "durable log",
                f"entries from {first} do not attach to the stored log "
                f"(snapshot at {offset}, last index {self.last_index})",
                node=self.node_id,
                index=first,
            )
        del self._entries[first - offset - 1 :]
        self._entries.extend(entries)
