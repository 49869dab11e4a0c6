"""LogIndex against a plain list model, under random puts, marks and compactions."""

from __future__ import annotations

import random

import pytest

from replog.core.types import Entry, EntryKind
from replog.storage.logindex import LogIndex, ReplayLog, Run
from replog.storage.record import NO_TERM


class ListLog:
    def __init__(self) -> None:
        self.base, self.base_term = 0, 0
        self.terms: list[int] = []
        self.segs: list[int] = []

    @property
    def last(self) -> int:
        return self.base + len(self.terms)

    def term(self, index: int) -> int | None:
        if index == self.base:
            return self.base_term
        if self.base < index <= self.last:
            return self.terms[index - self.base - 1]
        return None


def _check(log: LogIndex, model: ListLog) -> None:
    assert (log.base_index, log.base_term, log.last_index) == (
        model.base,
        model.base_term,
        model.last,
    )
    for index in range(model.base - 1, model.last + 2):
        assert log.term(index) == model.term(index), index
        run = log.locate(index)
        if model.base < index <= model.last:
            assert run is not None and run.first <= index <= run.last
            assert run.seq == model.segs[index - model.base - 1]
        else:
            assert run is None


@pytest.mark.parametrize("seed", range(30))
def test_log_index_matches_list_model(seed: int) -> None:
    rng = random.Random(seed)
    log = ReplayLog()
    model = ListLog()
    seq = 1
    for _ in range(300):
        roll = rng.random()
        if roll < 0.6:
            first = rng.randint(max(model.base + 1, model.last - 5), model.last + 1)
            count = rng.randint(1, 5)
            term = rng.randint(1, 9)
            terms = None if rng.random() < 0.5 else tuple(rng.randint(1, 9) for _ in range(count))
            run = Run(first, first, first + count - 1, seq, rng.randint(0, 999), term, terms)
            entries = [
                Entry(first + k, run.term_at(first + k), EntryKind.NORMAL, b"")
                for k in range(count)
            ]
            assert log.put_entries(run, entries)
            del model.terms[first - model.base - 1 :], model.segs[first - model.base - 1 :]
            model.terms += [run.term_at(first + k) for k in range(count)]
            model.segs += [seq] * count
        elif roll < 0.7:
            seq += 1
        elif roll < 0.8 and model.last > model.base:
            index = rng.randint(model.base, model.last + 2)
            found = model.term(index) if rng.random() < 0.6 else 99
            term = found if found is not None else 99
            keep = log.snapshot_keeps_suffix(index, term)
            assert keep == (model.term(index) == term)
            assert log.apply_mark(index, term, keep)
            if keep:
                drop = index - model.base
                del model.terms[:drop], model.segs[:drop]
                model.base, model.base_term = index, term
            else:
                model.base, model.base_term, model.terms, model.segs = index, term, [], []
        elif model.last > model.base:
            cut = rng.choice(model.segs)
            log.drop_before_segment(cut)
            drop = sum(1 for s in model.segs if s < cut)
            if drop:
                model.base_term = model.terms[drop - 1]
                model.base += drop
                del model.terms[:drop], model.segs[:drop]
        _check(log, model)
        assert [e.index for e in log.entries] == list(range(model.base + 1, model.last + 1))
        assert [e.term for e in log.entries] == model.terms


def test_gap_is_refused_and_changes_nothing() -> None:
    log = LogIndex()
    assert log.put(Run(1, 1, 3, 1, 0, 1, None))
    assert not log.put(Run(5, 5, 5, 1, 0, 1, None))
    assert log.last_index == 3


def test_entry_below_the_base_restarts_the_log_with_unknown_base_term() -> None:
    log = LogIndex(100, 4)
    assert log.put(Run(50, 50, 52, 2, 0, 5, None))
    assert (log.base_index, log.base_term, log.last_index) == (49, NO_TERM, 52)
    # A snapshot mark recorded as "kept" fills in the unknown term at the base.
    assert log.apply_mark(49, 4, True)
    assert log.base_term == 4


def test_mark_that_does_not_fit_is_refused() -> None:
    log = LogIndex()
    assert log.put(Run(1, 1, 3, 1, 0, 2, None))
    assert not log.apply_mark(5, 2, True)
    assert not log.apply_mark(2, 9, True)
    assert log.apply_mark(9, 9, False)
    assert (log.base_index, log.last_index) == (9, 9)
