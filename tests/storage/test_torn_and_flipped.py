"""Cut the WAL at every byte offset, and flip bits everywhere: recovery either returns a
clean prefix that holds every batch acknowledged before the damaged one, or stops with a
CorruptionError. It never silently drops an acknowledged batch that a later one follows, and
never cuts a final batch that one flipped bit explains (it was written whole)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from replog.core.types import Snapshot, SnapshotMeta
from replog.storage import CorruptionError, NodeStorage, SimDisk, StorageOptions
from replog.storage.layout import META_NAME

from .workload import CONFIG, Model, TakeSnapshot, View, Workload, run_op, view_of

DIR = "/n"
OPTIONS = StorageOptions(segment_bytes=4096, batch_part_bytes=256)


@dataclass
class Step:
    view: View
    segment: str  # the active segment after the step
    size: int  # its size after the step


@dataclass
class Built:
    files: dict[str, bytes]
    initial: View
    steps: list[Step]


def _build(seed: int, ops: int, snapshots: bool = False, two_snapshots: bool = False) -> Built:
    disk = SimDisk(random.Random(seed))
    storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
    model = Model.from_state(state)
    workload = Workload(random.Random(seed), model, snapshots=snapshots)
    steps = []
    for _ in range(ops):
        op = workload.next_op()
        run_op(storage, op)
        model.apply(op)
        segment = storage._wal.segments[-1]
        steps.append(Step(model.view(), segment.name, segment.size))
    if two_snapshots:  # two local snapshots, the log kept whole behind both
        for index in (model.hard_state.commit_index // 2, model.hard_state.commit_index):
            term = model.term(index)
            assert term is not None and index > 0
            op2 = TakeSnapshot(Snapshot(SnapshotMeta(index, term, CONFIG), b"s%d" % index), 10**6)
            run_op(storage, op2)
            model.apply(op2)
        steps.append(Step(model.view(), steps[-1].segment, steps[-1].size))
    storage.close()
    files = {name: disk.contents(f"{DIR}/{name}") for name in disk.list_dir(DIR)}
    return Built(files, view_of(state), steps)


def _recover(files: dict[str, bytes]) -> View:
    disk = SimDisk(random.Random(0))
    disk.make_dir(DIR)
    for name, data in files.items():
        disk.put_file(f"{DIR}/{name}", data)
    storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
    storage.close()
    return view_of(state)


def _expected_after_cut(built: Built, segment: str, cut: int) -> View:
    """The state after the last step whose bytes in ``segment`` end at or before ``cut``."""
    best = built.initial
    for k, step in enumerate(built.steps):
        if step.segment != segment:
            if all(s.segment != segment for s in built.steps[:k]):
                best = step.view  # before the segment existed
            continue
        if step.size <= cut:
            best = step.view
    return best


def _cut_offsets(built: Built, stride: int) -> list[int]:
    last = built.steps[-1]
    sizes = [s.size for s in built.steps if s.segment == last.segment]
    tail_start = sizes[-3] if len(sizes) >= 3 else 0
    dense = set(range(tail_start, last.size + 1))
    return sorted(dense | set(range(0, last.size + 1, stride)))


@pytest.mark.parametrize("seed", range(3))
def test_cut_last_segment_at_every_offset(seed: int) -> None:
    built = _build(seed, 30)
    last = built.steps[-1]
    for cut in _cut_offsets(built, stride=7):
        files = dict(built.files)
        files[last.segment] = files[last.segment][:cut]
        assert _recover(files) == _expected_after_cut(built, last.segment, cut), cut


def _last_batch_region(built: Built) -> tuple[str, int, int]:
    last, before = built.steps[-1], built.steps[-2]
    start = before.size if before.segment == last.segment else 0
    return last.segment, start, last.size


def _flip_outcome(built: Built, name: str, offset: int) -> View | None:
    files = dict(built.files)
    damaged = bytearray(files[name])
    damaged[offset] ^= 1 << (offset % 8)
    files[name] = bytes(damaged)
    try:
        return _recover(files)
    except CorruptionError:
        return None


def _check_flips(built: Built, stride: int) -> None:
    """Every single flipped bit in what the WAL wrote stops recovery, the final batch
    included: one flipped bit explains the damage, so the record was written whole and may
    have been acknowledged; cutting it as a torn write could take back a vote or entries. A
    flip in the preallocated rest of the last segment, never written, loses nothing."""
    segment, start, end = _last_batch_region(built)
    for name, data in built.files.items():
        if not name.startswith("wal-"):
            continue
        written = end if name == segment else len(data)
        dense = set(range(max(0, start - 40), written)) if name == segment else set()
        offsets = range(written) if stride == 1 else sorted(set(range(0, written, stride)) | dense)
        for offset in offsets:
            assert _flip_outcome(built, name, offset) is None, f"{name}@{offset} accepted"
    unused = len(built.files[segment]) - end
    assert unused > 0  # the last segment is preallocated
    for offset in range(end, len(built.files[segment]), max(1, unused // 16)):
        assert _flip_outcome(built, segment, offset) == built.steps[-1].view, offset


@pytest.mark.parametrize("seed", range(2))
def test_bit_flips_in_the_wal_are_caught(seed: int) -> None:
    _check_flips(_build(seed + 10, 25), stride=7)


def test_bit_flips_in_metadata_are_caught() -> None:
    built = _build(20, 5)
    for offset in range(len(built.files[META_NAME])):
        assert _flip_outcome(built, META_NAME, offset) is None


def test_bit_flips_in_the_newest_snapshot_fall_back_to_the_older_one() -> None:
    built = _build(21, 40, two_snapshots=True)
    snaps = sorted(n for n in built.files if n.startswith("snap-"))
    assert len(snaps) == 2
    final = built.steps[-1].view
    assert final.snapshot is not None
    for offset in range(len(built.files[snaps[-1]])):
        outcome = _flip_outcome(built, snaps[-1], offset)
        assert outcome is not None and outcome.snapshot is not None
        assert outcome.snapshot[0] < final.snapshot[0], f"damage at {offset} accepted"
        assert outcome.hard_state == final.hard_state
        tail = tuple(e for e in outcome.entries if e.index > final.snapshot[0])
        assert tail == final.entries


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("seed", range(100, 110))
def test_cut_and_flip_everywhere(seed: int) -> None:
    built = _build(seed, 40)
    last = built.steps[-1]
    for cut in range(last.size + 1):
        files = dict(built.files)
        files[last.segment] = files[last.segment][:cut]
        assert _recover(files) == _expected_after_cut(built, last.segment, cut), cut
    _check_flips(built, stride=1)
