"""A WAL writer for the SIGKILL test: appends batches forever, prints each durable index.

Usage: python kill_writer.py DIRECTORY SEED

It opens (and so recovers) DIRECTORY with the real file system, then appends batches of
entries whose data is a function of their index, and after each ``save`` returns prints the
last index it holds, flushing at once: every printed index is acknowledged as durable. Now
and then it takes a snapshot and compacts. It never stops by itself; the test kills it.
"""

from __future__ import annotations

import random
import sys

from replog.core.types import (
    Configuration,
    Entry,
    EntryKind,
    HardState,
    Snapshot,
    SnapshotMeta,
)
from replog.storage import NodeStorage, OsDisk, StorageOptions

OPTIONS = StorageOptions(segment_bytes=64 << 10)
CLUSTER = "kill-test"


def data_for(index: int) -> bytes:
    return f"entry-{index};".encode() * (1 + index % 7)


def main() -> None:
    directory, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    storage, state = NodeStorage.open(OsDisk(), directory, CLUSTER, 1, OPTIONS)
    snapshot_index = state.snapshot.meta.index if state.snapshot else 0
    last = state.entries[-1].index if state.entries else snapshot_index
    print(f"recovered {last}", flush=True)
    while True:
        count = rng.choice((1, 1, 4, 16, 64))
        entries = tuple(
            Entry(index, 1, EntryKind.NORMAL, data_for(index))
            for index in range(last + 1, last + 1 + count)
        )
        storage.save(HardState(1, 1, last + count), entries)
        last += count
        print(last, flush=True)
        if rng.random() < 0.03:
            meta = SnapshotMeta(last, 1, Configuration(frozenset({1})))
            storage.save_snapshot(Snapshot(meta, b"state@%d" % last), keep_entries=100)


if __name__ == "__main__":
    main()
