"""WAL throughput against the disk's own limit: appends/s and fsyncs/s per batch size.

Run: .venv/bin/python benchmarks/wal_bench.py [--seconds 0.5] [--trials 8] [--dir PATH] [--profile]

For batches of 1, 16 and 256 entries of 100 bytes, it times
  * raw: a plain loop of os.write(batch bytes) + os.fsync on one file, the physical limit;
  * wal: NodeStorage.save(hard_state, entries) on OsDisk, one batch per call (one write, one
    fsync, plus a directory fsync when a segment rolls over at 64 MiB);
in the same directory (same disk), alternating short raw and wal trials and summing them,
so that a noisy neighbour on the disk hurts both alike. Entries are built in untimed chunks
(building them is the core's work, not the storage's). ``--profile`` prints a cProfile of
the WAL at the largest batch size. The last column is the CPU cost of one save() (encoding,
checksums, the write call, index upkeep) measured with fsync switched off: how far the WAL is
from the disk's limit on a disk whose fsync is faster than this one's.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from replog.core.types import Entry, EntryKind, HardState
from replog.storage import Disk, NodeStorage, OpenMode, OsDisk
from replog.storage.disk import OsFile

BATCH_SIZES = (1, 16, 256)
ENTRY_BYTES = 100
BATCHES_MAX = 10_000_000
CHUNK = 16  # batches prepared (untimed) at a time: fresh in the CPU cache, as from a core


@dataclass(frozen=True)
class Result:
    batches: int
    seconds: float

    @property
    def fsyncs_per_second(self) -> float:
        return self.batches / self.seconds


class _NoSyncFile(OsFile):
    __slots__ = ()

    def fsync(self) -> None:
        pass


class _NoSyncDisk(OsDisk):
    """OsDisk without fsync: what is left of a save is its CPU cost (and the write call)."""

    def open(self, path: str, mode: OpenMode) -> OsFile:
        handle = super().open(path, mode)
        handle.__class__ = _NoSyncFile
        return handle

    def fsync_dir(self, path: str) -> None:
        pass


def _timed(step: Callable[[int], None], seconds: float) -> Result:
    start = time.perf_counter()
    deadline = start + seconds
    batches = 0
    while batches < BATCHES_MAX:
        step(batches)
        batches += 1
        if batches % 8 == 0 and time.perf_counter() >= deadline:
            break
    return Result(batches, time.perf_counter() - start)


def raw_trial(directory: str, batch: int, seconds: float) -> Result:
    payload = os.urandom(ENTRY_BYTES) * batch
    path = os.path.join(directory, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:

        def step(_: int) -> None:
            os.write(fd, payload)
            os.fsync(fd)

        return _timed(step, seconds)
    finally:
        os.close(fd)
        os.remove(path)


def _batches(batch: int, first: int, count: int) -> list[tuple[Entry, ...]]:
    data = os.urandom(ENTRY_BYTES)
    return [
        tuple(Entry(first + k * batch + j, 1, EntryKind.NORMAL, data) for j in range(batch))
        for k in range(count)
    ]


def wal_trial(
    directory: str,
    batch: int,
    seconds: float,
    profile: cProfile.Profile | None = None,
    disk: Disk | None = None,
) -> Result:
    """Times chunks of CHUNK prepared batches; preparing a chunk is not timed."""
    path = os.path.join(directory, "wal")
    storage, _ = NodeStorage.open(disk or OsDisk(), path, "bench", 1)
    timed = 0.0
    batches = 0
    try:
        while timed < seconds and batches < BATCHES_MAX:
            chunk = _batches(batch, batches * batch + 1, CHUNK)
            if profile is not None:
                profile.enable()
            start = time.perf_counter()
            for entries in chunk:
                storage.save(HardState(1, 1, entries[-1].index), entries)
            timed += time.perf_counter() - start
            if profile is not None:
                profile.disable()
            batches += len(chunk)
        return Result(batches, timed)
    finally:
        storage.close()
        shutil.rmtree(path)


def _rate(results: list[Result]) -> float:
    """Batches per second over all trials together (short interleaved trials, summed, so a
    slow spell of the disk weighs on both variants alike)."""
    return sum(r.batches for r in results) / sum(r.seconds for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=0.5, help="length of one trial")
    parser.add_argument("--trials", type=int, default=8, help="raw/wal trial pairs per size")
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--profile", action="store_true", help="cProfile the WAL at 256")
    args = parser.parse_args()
    base = tempfile.mkdtemp(prefix="wal-bench-", dir=args.dir)
    print(f"directory: {base}   entry: {ENTRY_BYTES} bytes   trial: {args.seconds} s", flush=True)
    header = f"{'batch':>5} | {'raw entries/s':>13} {'raw fsyncs/s':>12} | "
    header += f"{'wal entries/s':>13} {'wal fsyncs/s':>12} | {'wal/raw':>7} | "
    header += f"{'save cpu us':>11}"
    print(header)
    print("-" * len(header))
    try:
        for batch in BATCH_SIZES:
            raw, wal = [], []
            for _ in range(args.trials):
                raw.append(raw_trial(base, batch, args.seconds))
                wal.append(wal_trial(base, batch, args.seconds))
            r, w = _rate(raw), _rate(wal)
            cpu = wal_trial(base, batch, min(args.seconds, 1.0), disk=_NoSyncDisk())
            print(
                f"{batch:>5} | {r * batch:>13,.0f} {r:>12,.0f} | {w * batch:>13,.0f} "
                f"{w:>12,.0f} | {w / r:>7.0%} | {1e6 / cpu.fsyncs_per_second:>11.1f}",
                flush=True,
            )
        if args.profile:
            profile = cProfile.Profile()
            wal_trial(base, BATCH_SIZES[-1], args.seconds, profile)
            pstats.Stats(profile, stream=sys.stdout).sort_stats("tottime").print_stats(15)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
