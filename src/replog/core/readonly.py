"""A leader's bookkeeping for linearizable reads that do not go through the log.

Theory of operation (Raft thesis section 6.4, "ReadIndex"). A read is linearizable if it observes
every write committed before the read began. The leader records its commit index as the read's
index, then proves it was still the leader *after* the read arrived: it sends a heartbeat round
tagged with a fresh sequence number, and once a quorum acknowledged a heartbeat with sequence
number >= the read's, no other leader can have committed anything newer in between. The read is
then served once the state machine has applied its index.

Sequence numbers only grow, so one acknowledgement confirms every read with a smaller or equal
number; reads are released in arrival order. A leader that loses office drops its pending reads
(their callers time out and retry elsewhere).

``PendingReads`` is bounded by ``max_pending``: over it, the oldest read is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from replog.core.quorum import JointConfig


@dataclass(frozen=True, slots=True)
class PendingRead:
    seq: int
    index: int
    context: bytes
    requester: int


class PendingReads:
    __slots__ = ("_acks", "_pending", "max_pending", "seq")

    def __init__(self, max_pending: int = 65536) -> None:
        self.seq = 0
        self.max_pending = max_pending
        self._pending: deque[PendingRead] = deque()
        self._acks: dict[int, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, index: int, context: bytes, requester: int) -> int:
        """Record a read at ``index``; returns the sequence number its heartbeat must carry."""
        self.seq += 1
        if len(self._pending) >= self.max_pending:
            self._pending.popleft()
        self._pending.append(PendingRead(self.seq, index, context, requester))
        return self.seq

    def add_round(self) -> int:
        """A heartbeat round with no read of its own; returns its sequence number."""
        self.seq += 1
        return self.seq

    def ack(self, peer: int, seq: int) -> None:
        if seq > self._acks.get(peer, 0):
            self._acks[peer] = seq

    def release(self, quorum: JointConfig, self_id: int) -> list[PendingRead]:
        """The reads whose leadership check a quorum has now confirmed."""
        if not self._pending:
            return []
        acked = dict(self._acks)
        acked[self_id] = self.seq
        confirmed = quorum.committed_index(acked)
        released: list[PendingRead] = []
        while self._pending and self._pending[0].seq <= confirmed:
            released.append(self._pending.popleft())
        return released

    def reset(self) -> None:
        """Drop every pending read and acknowledgement (the node left office)."""
        self._pending.clear()
        self._acks.clear()
