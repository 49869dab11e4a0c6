"""A ``DurableStore`` backed by the real storage engine on a simulated disk.

Theory of operation
-------------------
``WalStore`` runs ``replog.storage.NodeStorage`` (segmented WAL, snapshot files, recovery) on
a ``SimDisk``, one disk per simulated node, so the simulator exercises the same code that a
server runs. ``save`` is ``NodeStorage.save`` (one WAL batch, one fsync); ``save_snapshot`` is
``NodeStorage.save_snapshot`` (snapshot file, then compaction). ``crash_and_recover`` cuts the
power of the simulated disk, which keeps only what was fsynced plus a random prefix of what was
pending, possibly torn, and then reopens the directory through the normal recovery path: the
``PersistentState`` handed to the restarted node is exactly what recovery reads back.

Small segments make segment roll-over and compaction happen within a short simulated run.
Recovery refusing to open (``CorruptionError``) propagates; the cluster keeps such a node down,
as an operator would have to repair it.

Disk faults (``FaultyDisk``), driven by the nemesis: ``inject_error`` makes a chosen call
(write, fsync, create, rename, remove, directory fsync) fail with EIO or ENOSPC; the storage
then refuses every later write (``StorageFailed``) and the cluster stops the node.
``cut_power`` makes the power go out at a chosen call, typically the fsync of a batch already
written: the node stops there, and the crash that follows loses or tears that batch.
``flip_random_bit`` flips one bit anywhere in a WAL segment or snapshot file, at most once per
life of the disk's contents, so each recovery faces a single flipped bit.
``crash_and_recover`` clears the scheduled errors first (the operator replaced the disk
controller, the full volume got space), then cuts the power; the unsynced writes it loses and
the writes it tears are counted for the run's summary (``drain_counts``).

``tail_flips_on_crash`` flips one bit near the end of the newest WAL segment at each crash,
the place where a flipped bit looks most like a torn write. ``with_tail_flips`` builds a store
factory that damages only the nodes given (a minority).
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable, Collection

from replog.core.types import PersistentState, Ready, Snapshot
from replog.storage import DiskOp, NodeStorage, SimDisk, StorageOptions
from replog.testing.durable import DurableStore

DATA_DIRECTORY = "/replog/data"
CLUSTER_ID = "sim"
TAIL_FLIP_WINDOW_BYTES = 8


class WalStore:
    """``DurableStore`` over ``NodeStorage`` on a ``SimDisk``."""

    def __init__(
        self,
        node_id: int,
        rng: random.Random,
        options: StorageOptions | None = None,
        *,
        tail_flips_on_crash: bool = False,
    ) -> None:
        self.node_id = node_id
        self.disk = SimDisk(rng)
        self.tail_flips_on_crash = tail_flips_on_crash
        self.tail_flips = 0
        self._counts: collections.Counter[str] = collections.Counter()
        self._flipped = False  # a bit was flipped since the last recovery
        self._options = options or StorageOptions(segment_bytes=16 << 10)
        self.storage, _ = NodeStorage.open(
            self.disk, DATA_DIRECTORY, CLUSTER_ID, node_id, self._options
        )

    @property
    def last_index(self) -> int:
        return self.storage.last_index

    def _snapshot_index(self) -> int:
        meta = self.storage.snapshot_meta
        return meta.index if meta is not None else 0

    def term_at(self, index: int) -> int | None:
        if index == 0:
            return 0
        meta = self.storage.snapshot_meta
        if meta is not None and index == meta.index:
            return meta.term
        return self.storage.term(index)

    def holds(self, index: int, term: int) -> bool:
        if index <= self._snapshot_index():
            return index > 0
        return self.storage.term(index) == term

    def durable_tuple(self) -> tuple[int, int, int, int]:
        hard = self.storage.hard_state
        last = self.storage.last_index
        last_term = self.term_at(last)
        assert last_term is not None, f"no term for the last stored index {last}"
        return (hard.term, hard.voted_for, last, last_term)

    def save(self, ready: Ready) -> None:
        self.storage.save_ready(ready)

    def save_snapshot(self, snapshot: Snapshot) -> None:
        if snapshot.meta.index > self._snapshot_index():
            self.storage.save_snapshot(snapshot)

    def crash_and_recover(self) -> PersistentState:
        disk = self.disk
        disk.clear_faults()
        before = (disk.lost_writes, disk.torn_writes, disk.lost_dir_ops)
        disk.crash()
        self._counts["disk:lost-unsynced"] += disk.lost_writes - before[0]
        self._counts["disk:torn"] += disk.torn_writes - before[1]
        self._counts["disk:lost-dir-op"] += disk.lost_dir_ops - before[2]
        if self.tail_flips_on_crash:
            self._flip_near_the_tail()
        self._flipped = False
        self.storage, state = NodeStorage.open(
            disk, DATA_DIRECTORY, CLUSTER_ID, self.node_id, self._options
        )
        return state

    # ---- FaultyDisk ----------------------------------------------------------------------

    def inject_error(self, op: DiskOp, error: int, after: int) -> None:
        self.disk.fail_next(op, error, after=after, path_contains=DATA_DIRECTORY)

    def cut_power(self, op: DiskOp, after: int) -> None:
        self.disk.cut_power_next(op, after=after, path_contains=DATA_DIRECTORY)

    def clear_errors(self) -> None:
        self.disk.clear_faults()

    def flip_random_bit(self) -> str | None:
        if self._flipped:
            return None
        disk = self.disk
        files = [
            path
            for path in disk.files(DATA_DIRECTORY)
            if path.endswith((".wal", ".snap")) and disk.file_size(path) > 0
        ]
        if not files:
            return None
        rng = disk.rng
        path = rng.choice(files)
        offset = rng.randrange(disk.file_size(path))
        disk.flip_bit(path, offset, rng.randrange(8))
        self._flipped = True
        return f"{path} at {offset}"

    def drain_counts(self) -> collections.Counter[str]:
        counts = +self._counts  # drops the zero counts
        self._counts.clear()
        return counts

    def _flip_near_the_tail(self) -> None:
        segments = [n for n in self.disk.list_dir(DATA_DIRECTORY) if n.endswith(".wal")]
        if not segments:
            return
        path = f"{DATA_DIRECTORY}/{max(segments)}"
        size = self.disk.file_size(path)
        if size <= TAIL_FLIP_WINDOW_BYTES:
            return
        rng = self.disk.rng
        offset = size - 1 - rng.randrange(TAIL_FLIP_WINDOW_BYTES)
        self.disk.flip_bit(path, offset, rng.randrange(8))
        self.tail_flips += 1


def with_tail_flips(damaged: Collection[int]) -> Callable[[int, random.Random], DurableStore]:
    """A store factory: WAL stores, of which those of ``damaged`` nodes suffer tail flips."""

    def factory(node_id: int, rng: random.Random) -> DurableStore:
        return WalStore(node_id, rng, tail_flips_on_crash=node_id in damaged)

    return factory
