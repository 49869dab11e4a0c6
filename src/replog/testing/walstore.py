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
Recovery refusing to open (corruption) surfaces as an exception, which the simulator reports
against the seed like any other failure.
"""

from __future__ import annotations

import random

from replog.core.types import PersistentState, Ready, Snapshot
from replog.storage import NodeStorage, SimDisk, StorageOptions

DATA_DIRECTORY = "/replog/data"
CLUSTER_ID = "sim"


class WalStore:
    """``DurableStore`` over ``NodeStorage`` on a ``SimDisk``."""

    def __init__(
        self,
        node_id: int,
        rng: random.Random,
        options: StorageOptions | None = None,
    ) -> None:
        self.node_id = node_id
        self.disk = SimDisk(rng)
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
        self.disk.crash()
        self.storage, state = NodeStorage.open(
            self.disk, DATA_DIRECTORY, CLUSTER_ID, self.node_id, self._options
        )
        return state
