"""Where each live log entry sits on disk: the WAL's in-memory index.

Theory of operation. The live log is ``base_index`` (with ``base_term``: the snapshot or
compaction point it continues from) followed by contiguous entries up to ``last_index``. The
entries are grouped into *runs*, one per batch part on disk: a run says "entries first..last
live in segment ``seq`` inside the record at ``offset``". Runs are contiguous and ordered by
index, and so by segment, because an entry is always written after the entries before it.

The same rules serve the writer (updated after each fsynced batch) and recovery (replaying
records), so both compute the same log from the same records:

* ``put(run)``: an entry at index i replaces the entry at i and everything after it (the
  Ready contract). i == last + 1 appends; base < i <= last truncates, then appends; i <= base
  can only come from records older than a compaction point (replay of the first surviving
  segment) and restarts the log at i with an unknown base term; i > last + 1 is a gap.
* ``snapshot_keeps_suffix(index, term)``: Raft section 7, "if an existing log entry has the
  same index and term as the snapshot's last included entry, retain the log entries following
  it; otherwise discard the entire log". The writer evaluates it once and records the decision
  in the snapshot mark; ``apply_mark`` replays the recorded decision (re-evaluating it on a log
  whose start was compacted away could decide differently).
* ``drop_before_segment(seq)``: compaction deleted every segment numbered below ``seq``.

Memory is one small object per batch part, not per entry.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from replog.core.types import Entry
from replog.storage.record import NO_TERM


@dataclass(slots=True)
class Run:
    record_first: int  # index of the record's first entry (positions inside the record)
    first: int  # first live index of this run
    last: int  # last live index
    seq: int  # segment number
    offset: int  # record offset in the segment
    term: int
    terms: tuple[int, ...] | None  # per-entry terms from record_first, when not uniform

    def term_at(self, index: int) -> int:
        return self.term if self.terms is None else self.terms[index - self.record_first]


class LogIndex:
    __slots__ = ("_firsts", "_runs", "base_index", "base_term")

    def __init__(self, base_index: int = 0, base_term: int = 0) -> None:
        self.base_index = base_index
        self.base_term = base_term  # NO_TERM when unknown
        self._runs: list[Run] = []
        self._firsts: list[int] = []

    @property
    def last_index(self) -> int:
        return self._runs[-1].last if self._runs else self.base_index

    @property
    def last_term(self) -> int:
        return self._runs[-1].term_at(self._runs[-1].last) if self._runs else self.base_term

    @property
    def first_index(self) -> int:
        return self.base_index + 1

    def __len__(self) -> int:
        return self.last_index - self.base_index

    def runs(self) -> list[Run]:
        return list(self._runs)

    def locate(self, index: int) -> Run | None:
        if not self.base_index < index <= self.last_index:
            return None
        return self._runs[bisect.bisect_right(self._firsts, index) - 1]

    def term(self, index: int) -> int | None:
        """The term at ``index``; ``base_term`` at the base (maybe NO_TERM); None outside."""
        if index == self.base_index:
            return self.base_term
        run = self.locate(index)
        return None if run is None else run.term_at(index)

    def first_live_segment_after(self, index: int) -> int | None:
        """The segment holding entry ``index + 1``, None if the log ends at or before it."""
        run = self.locate(max(index + 1, self.base_index + 1))
        return None if run is None else run.seq

    # ---- changes --------------------------------------------------------------------------

    def put(self, run: Run) -> bool:
        """Add a run (its entries replace any at the same indexes and everything after);
        False, changing nothing, when it would leave a gap after ``last_index``."""
        assert run.first <= run.last
        if run.first > self.last_index + 1:
            return False
        if run.first <= self.base_index:
            self._reset(run.first - 1, NO_TERM)
        elif run.first <= self.last_index:
            self._truncate_from(run.first)
        self._runs.append(run)
        self._firsts.append(run.first)
        return True

    def snapshot_keeps_suffix(self, index: int, term: int) -> bool:
        """Raft section 7 evaluated on this log: does it hold the snapshot's last entry?"""
        found = self.term(index)
        return found == term or (index == self.base_index and found == NO_TERM)

    def apply_mark(self, index: int, term: int, keep: bool) -> bool:
        """Cut the log back to a snapshot at (index, term), keeping the entries after it when
        ``keep`` (the writer's decision, recorded with the mark); False if ``keep`` does not
        fit this log (then nothing changed)."""
        if not keep:
            self._reset(index, term)
            return True
        if index > self.last_index:
            return False
        if index < self.base_index:
            return True  # compaction already dropped everything up to the snapshot and more
        found = self.term(index)
        if found not in (term, NO_TERM):
            return False
        self._drop_through(index, term)
        return True

    def drop_before_segment(self, seq: int) -> None:
        """Forget the runs of segments numbered below ``seq`` (compaction deleted them)."""
        k = 0
        while k < len(self._runs) and self._runs[k].seq < seq:
            k += 1
        if k:
            last = self._runs[k - 1]
            self._drop_runs(k, last.last, last.term_at(last.last))

    # ---- internals ------------------------------------------------------------------------

    def _reset(self, base_index: int, base_term: int) -> None:
        self.base_index, self.base_term = base_index, base_term
        self._runs.clear()
        self._firsts.clear()

    def _truncate_from(self, index: int) -> None:
        k = bisect.bisect_right(self._firsts, index) - 1
        run = self._runs[k]
        if run.first == index:
            del self._runs[k:], self._firsts[k:]
        else:
            run.last = index - 1
            del self._runs[k + 1 :], self._firsts[k + 1 :]

    def _drop_through(self, index: int, term: int) -> None:
        """Make ``index`` the base, keeping the entries after it."""
        if index == self.base_index:
            self.base_term = term
            return
        k = bisect.bisect_right(self._firsts, index) - 1
        run = self._runs[k]
        if run.last > index:
            run.first = index + 1
            self._firsts[k] = index + 1
            self._drop_runs(k, index, term)
        else:
            self._drop_runs(k + 1, index, term)

    def _drop_runs(self, count: int, base_index: int, base_term: int) -> None:
        del self._runs[:count], self._firsts[:count]
        self.base_index, self.base_term = base_index, base_term


class ReplayLog(LogIndex):
    """A ``LogIndex`` that also holds the entries themselves (recovery hands them to Raft)."""

    __slots__ = ("entries",)

    def __init__(self, base_index: int = 0, base_term: int = 0) -> None:
        super().__init__(base_index, base_term)
        self.entries: list[Entry] = []  # entries[k].index == base_index + 1 + k

    def put_entries(self, run: Run, entries: list[Entry]) -> bool:
        assert entries and entries[0].index == run.first and entries[-1].index == run.last
        if not self.put(run):
            return False
        self.entries.extend(entries)
        return True

    def _reset(self, base_index: int, base_term: int) -> None:
        super()._reset(base_index, base_term)
        self.entries = []

    def _truncate_from(self, index: int) -> None:
        super()._truncate_from(index)
        del self.entries[index - self.base_index - 1 :]

    def _drop_runs(self, count: int, base_index: int, base_term: int) -> None:
        dropped = base_index - self.base_index
        super()._drop_runs(count, base_index, base_term)
        del self.entries[:dropped]
