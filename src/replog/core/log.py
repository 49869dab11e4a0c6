"""The node's view of its replicated log: entries, what is durable, committed and applied.

Theory of operation. The log is a snapshot (covering every index up to ``offset``) followed by
``entries`` held in memory (``entries[k].index == offset + 1 + k``). Four cursors move over it:

    offset <= applied_index <= commit_index <= last_index     (applied may trail the snapshot
    stable_index <= last_index                                 only right after a restore)

* ``stable_index``: entries up to here have been handed to storage and acknowledged through
  ``advance``; entries after it are persisted by the next Ready.
* ``commit_index``: known committed (Raft 5.3); never decreases, never passes ``last_index``.
* ``applied_index``: handed to the state machine and acknowledged through ``advance``.

Appends from a leader follow Raft 5.3: the entry at ``prev_log_index`` must have
``prev_log_term``; an incoming entry only replaces a stored one when their terms differ (so a late,
stale AppendEntries never erases entries that already match), and a committed entry is never
replaced (that would be a safety bug, so it is asserted). Entries at or below ``offset`` are
committed, hence identical on every node, and are skipped rather than compared.

The whole uncompacted log lives in memory; snapshots (``compact``) bound it.
"""

from __future__ import annotations

from replog.core.types import Entry, Snapshot


class RaftLog:
    __slots__ = (
        "applied_index",
        "commit_index",
        "entries",
        "offset",
        "offset_term",
        "pending_snapshot",
        "snapshot",
        "stable_index",
    )

    def __init__(self, snapshot: Snapshot | None, entries: tuple[Entry, ...], commit: int) -> None:
        self.snapshot = snapshot
        self.pending_snapshot: Snapshot | None = None  # received, not yet persisted
        self.offset = snapshot.meta.index if snapshot else 0
        self.offset_term = snapshot.meta.term if snapshot else 0
        self.entries = [e for e in entries if e.index > self.offset]
        for k, entry in enumerate(self.entries):
            assert entry.index == self.offset + 1 + k, "recovered entries must be contiguous"
        self.stable_index = self.last_index()
        self.commit_index = min(max(commit, self.offset), self.last_index())
        self.applied_index = self.offset

    # ---- reading ---------------------------------------------------------------------------

    def last_index(self) -> int:
        return self.offset + len(self.entries)

    def last_term(self) -> int:
        return self.entries[-1].term if self.entries else self.offset_term

    def first_index(self) -> int:
        return self.offset + 1

    def term(self, index: int) -> int | None:
        """The term of the entry at ``index``; None when compacted away or beyond the end."""
        if index == self.offset:
            return self.offset_term
        if self.offset < index <= self.offset + len(self.entries):
            return self.entries[index - self.offset - 1].term
        return None

    def entry(self, index: int) -> Entry | None:
        if self.offset < index <= self.offset + len(self.entries):
            return self.entries[index - self.offset - 1]
        return None

    def slice(self, lo: int, hi: int, max_bytes: int | None = None) -> list[Entry]:
        """Entries in [lo, hi); with ``max_bytes``, stop once the budget is spent (at least one)."""
        lo = max(lo, self.offset + 1)
        selected = self.entries[lo - self.offset - 1 : max(hi - self.offset - 1, 0)]
        if max_bytes is None:
            return selected
        total = 0
        for count, entry in enumerate(selected):
            total += entry.size_bytes()
            if total > max_bytes and count > 0:
                return selected[:count]
        return selected

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """The voting rule (Raft 5.4.1): is a candidate's log at least as up to date as ours?"""
        return (last_term, last_index) >= (self.last_term(), self.last_index())

    def matches(self, index: int, term: int) -> bool:
        return self.term(index) == term

    def conflict_hint(self, index: int, term: int) -> tuple[int, int]:
        """The largest index <= ``index`` whose term is <= ``term``, with that term.

        A follower answers a failed consistency check with it, so the leader can skip every
        entry of a term the follower does not share in one round trip (Raft 5.3, last paragraph).
        """
        index = min(index, self.last_index())
        while index > self.offset:
            entry_term = self.entries[index - self.offset - 1].term
            if entry_term <= term:
                return index, entry_term
            index -= 1
        return self.offset, self.offset_term

    # ---- writing ---------------------------------------------------------------------------

    def append(self, entries: list[Entry]) -> None:
        """The leader appends its own new entries at the end."""
        if entries:
            assert entries[0].index == self.last_index() + 1
            self.entries.extend(entries)

    def maybe_append(
        self, prev_index: int, prev_term: int, commit: int, entries: tuple[Entry, ...]
    ) -> int | None:
        """Apply an AppendEntries; returns the last index now known to match, or None when the
        consistency check on the previous entry fails."""
        if prev_index < self.offset:
            # Everything at or below the snapshot is committed, hence matches the leader.
            skip = self.offset - prev_index
            if skip >= len(entries):
                return prev_index + len(entries)
            entries = entries[skip:]
            prev_index, prev_term = self.offset, self.offset_term
        if not self.matches(prev_index, prev_term):
            return None
        self._merge(entries)
        last_new = prev_index + len(entries)
        self.commit_to(min(commit, last_new))
        return last_new

    def _merge(self, entries: tuple[Entry, ...]) -> None:
        for k, entry in enumerate(entries):
            existing = self.term(entry.index)
            if existing == entry.term:
                continue
            if existing is not None:
                assert entry.index > self.commit_index, "a committed entry cannot conflict"
                del self.entries[entry.index - self.offset - 1 :]
                self.stable_index = min(self.stable_index, entry.index - 1)
            self.entries.extend(entries[k:])
            return

    def commit_to(self, index: int) -> bool:
        if index > self.commit_index:
            assert index <= self.last_index(), "cannot commit past the end of the log"
            self.commit_index = index
            return True
        return False

    def restore(self, snapshot: Snapshot) -> None:
        """Replace the log by a snapshot received from the leader (Raft section 7)."""
        self.snapshot = snapshot
        self.pending_snapshot = snapshot
        self.offset = snapshot.meta.index
        self.offset_term = snapshot.meta.term
        self.entries = []
        self.stable_index = self.offset
        self.commit_index = self.offset

    def compact(self, snapshot: Snapshot, keep_entries: int) -> None:
        """Keep ``snapshot`` and drop entries up to its index minus a trailing window."""
        index = snapshot.meta.index
        assert index <= self.applied_index, "can only compact applied entries"
        if self.snapshot is None or index > self.snapshot.meta.index:
            self.snapshot = snapshot
        drop_to = min(index - keep_entries, self.stable_index)
        if drop_to > self.offset:
            term = self.term(drop_to)
            assert term is not None
            del self.entries[: drop_to - self.offset]
            self.offset, self.offset_term = drop_to, term
