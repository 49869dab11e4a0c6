"""Random workloads on SimDisk with injected I/O errors and crashes.

Each seed runs several epochs: operations until an injected fault fails the storage (or the
epoch ends), then a power loss (``SimDisk.crash``) and recovery. The recovered state must be
exactly the last acknowledged one, or what the failed operation would have produced had it
completed (its bytes may have reached the disk without being acknowledged), or, for a failed
snapshot installation, the crash-window state of recovery Table 2. Never anything older.
"""

from __future__ import annotations

import copy
import errno
import random

import pytest

from replog.storage import DiskOp, NodeStorage, SimDisk, StorageFailed, StorageOptions

from .workload import Model, Save, View, Workload, run_op, view_of

DIR = "/node"
OPTIONS = StorageOptions(segment_bytes=4096)
FAULT_OPS = (
    DiskOp.WRITE,
    DiskOp.FSYNC,
    DiskOp.FSYNC_DIR,
    DiskOp.CREATE,
    DiskOp.RENAME,
    DiskOp.REMOVE,
    DiskOp.TRUNCATE,
)


def _epoch(
    storage: NodeStorage, disk: SimDisk, model: Model, rng: random.Random, ops: int
) -> list[View]:
    """Run up to ``ops`` operations; returns the states recovery may legitimately show."""
    workload = Workload(rng, model)
    for _ in range(ops):
        op = workload.next_op()
        try:
            run_op(storage, op)
        except StorageFailed:
            after = copy.deepcopy(model)
            after.apply(op)
            allowed = [model.view(), after.view()]
            window = model.crash_window(op) if isinstance(op, Save) else None
            if window is not None:
                allowed.append(window)
            with pytest.raises(StorageFailed):
                storage.save(None, ())  # nothing is ever written after a failure
                storage.save(model.hard_state, ())
            return allowed
        model.apply(op)
    return [model.view()]


def _run(seed: int, epochs: int, ops: int, faults: bool) -> None:
    rng = random.Random(seed)
    disk = SimDisk(random.Random(seed * 7919 + 1))
    storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
    model = Model.from_state(state)
    for epoch in range(epochs):
        if faults:
            disk.fail_next(
                rng.choice(FAULT_OPS),
                rng.choice((errno.EIO, errno.ENOSPC)),
                after=rng.randint(0, 80),
            )
        allowed = _epoch(storage, disk, model, rng, ops)
        storage.close()
        disk.clear_faults()
        if rng.random() < 0.5:
            # The process dies but the machine stays up: recovery reads the page cache, and
            # what it returns must then survive a power loss.
            storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
            assert view_of(state) in allowed
            allowed = [view_of(state)]
            storage.close()
        disk.crash()
        storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
        recovered = view_of(state)
        assert recovered in allowed, f"seed {seed} epoch {epoch}: lost acknowledged state"
        model = Model.from_state(state)
    storage.close()


@pytest.mark.parametrize("seed", range(40))
def test_faults_then_crash_never_lose_acknowledged_state(seed: int) -> None:
    _run(seed, epochs=4, ops=50, faults=True)


@pytest.mark.parametrize("seed", range(10))
def test_crash_after_acknowledged_batches_loses_nothing(seed: int) -> None:
    _run(seed, epochs=4, ops=40, faults=False)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(40, 1040))
def test_faults_then_crash_many_seeds(seed: int) -> None:
    _run(seed, epochs=6, ops=80, faults=True)


@pytest.mark.parametrize("seed", range(8))
def test_random_fault_rates_with_repeated_crashes(seed: int) -> None:
    """Faults anywhere, including during recovery's own repairs."""
    rng = random.Random(seed)
    disk = SimDisk(random.Random(seed))
    model: Model | None = None
    allowed: list[View] = [Model().view()]
    for _ in range(12):
        disk.fail_rate(DiskOp.WRITE, 0.02)
        disk.fail_rate(DiskOp.FSYNC, 0.02)
        disk.fail_rate(DiskOp.TRUNCATE, 0.1)
        try:
            storage, state = NodeStorage.open(disk, DIR, "c", 1, OPTIONS)
        except Exception as error:  # an I/O error while recovering: try again after a crash
            assert "I/O error" in str(error) or "cannot open" in str(error)
            disk.crash()
            continue
        assert view_of(state) in allowed
        model = Model.from_state(state)
        allowed = _epoch(storage, disk, model, rng, 30)
        storage.close()
        disk.clear_faults()
        disk.crash()
