"""What a leader knows about one follower's log, and how fast it may send to it.

Theory of operation. For each follower the leader keeps ``match_index`` (the highest index known
to be replicated there) and ``next_index`` (the next index to send), Raft section 5.3, plus a
state that decides how entries flow:

* PROBE: the leader does not know where the follower's log matches its own. It sends one
  AppendEntries and waits (``probe_sent``) for the answer, or for the next heartbeat interval,
  before sending another. A rejection moves ``next_index`` back using the follower's hint.
* REPLICATE: the follower accepted an append, so the leader streams entries optimistically,
  advancing ``next_index`` as it sends, with at most ``Inflights.capacity`` messages
  unacknowledged (pipelining with a bounded window). A rejection drops back to PROBE.
* SNAPSHOT: the entries the follower needs were compacted; an InstallSnapshot is in flight and
  nothing else is sent until the follower acknowledges it (or the leader gives up and probes).

Invariants: ``match_index < next_index``; in REPLICATE, every in-flight message ends at an index
below ``next_index``; ``recent_active`` is set whenever the follower answers and cleared by the
leader's check-quorum round.
"""

from __future__ import annotations

import enum
from collections import deque


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Inflights:
    """A bounded window of unacknowledged appends, each recorded by its last index."""

    __slots__ = ("_last_indexes", "capacity")

    def __init__(self, capacity: int) -> None:
        assert capacity > 0
        self.capacity = capacity
        self._last_indexes: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._last_indexes)

    def full(self) -> bool:
        return len(self._last_indexes) >= self.capacity

    def add(self, last_index: int) -> None:
        assert not self.full(), "sent past the in-flight window"
        assert not self._last_indexes or last_index >= self._last_indexes[-1]
        self._last_indexes.append(last_index)

    def free_to(self, index: int) -> None:
        """Forget every in-flight message that ends at or before ``index``."""
        while self._last_indexes and self._last_indexes[0] <= index:
            self._last_indexes.popleft()

    def reset(self) -> None:
        self._last_indexes.clear()


class Progress:
    __slots__ = (
        "commit_sent",
        "forwarded_index",
        "heartbeat_mark",
        "heartbeat_seq",
        "inflights",
        "match_at_last_round",
        "match_index",
        "next_index",
        "pending_snapshot_index",
        "probe_sent",
        "recent_active",
        "state",
    )

    def __init__(self, next_index: int, max_inflight: int) -> None:
        self.match_index = 0
        self.next_index = next_index
        self.commit_sent = 0  # the highest commit index an append or heartbeat carried
        self.forwarded_index = 0  # the last entry this member forwarded, until it commits
        self.state = ProgressState.PROBE
        self.probe_sent = False
        self.pending_snapshot_index = 0
        self.recent_active = False
        self.heartbeat_seq = 0
        self.heartbeat_mark = 0
        self.match_at_last_round = 0
        self.inflights = Inflights(max_inflight)

    def __repr__(self) -> str:
        return (
            f"Progress({self.state.value}, match={self.match_index}, next={self.next_index}, "
            f"inflight={len(self.inflights)})"
        )

    def become_probe(self) -> None:
        if self.state is ProgressState.SNAPSHOT:
            self.next_index = max(self.match_index + 1, self.pending_snapshot_index + 1)
        else:
            self.next_index = self.match_index + 1
        self._reset(ProgressState.PROBE)

    def become_replicate(self) -> None:
        self.next_index = self.match_index + 1
        self._reset(ProgressState.REPLICATE)

    def become_snapshot(self, snapshot_index: int) -> None:
        self._reset(ProgressState.SNAPSHOT)
        self.pending_snapshot_index = snapshot_index

    def _reset(self, state: ProgressState) -> None:
        self.state = state
        self.probe_sent = False
        self.pending_snapshot_index = 0
        self.inflights.reset()

    def is_paused(self) -> bool:
        """Whether the leader must hold further appends to this follower for now."""
        if self.state is ProgressState.PROBE:
            return self.probe_sent
        if self.state is ProgressState.REPLICATE:
            return self.inflights.full()
        return True

    def sent_entries(self, last_index: int, count: int) -> None:
        """Record an AppendEntries that carried ``count`` entries ending at ``last_index``."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next_index = last_index + 1
                self.inflights.add(last_index)
        elif self.state is ProgressState.PROBE:
            self.probe_sent = True

    def maybe_update(self, match_index: int) -> bool:
        """A follower acknowledged ``match_index``; says whether anything moved forward."""
        updated = match_index > self.match_index
        if updated:
            self.match_index = match_index
            self.probe_sent = False
        self.next_index = max(self.next_index, match_index + 1)
        return updated

    def on_append_success(self, match_index: int) -> bool:
        """A follower accepted an append up to ``match_index``; says whether anything changed."""
        updated = self.maybe_update(match_index)
        if self.state is ProgressState.PROBE and (updated or match_index == self.match_index):
            self.become_replicate()
            return True
        if self.state is ProgressState.SNAPSHOT:
            if self.match_index < self.pending_snapshot_index:
                return updated
            self.become_replicate()
            return True
        if updated:
            self.inflights.free_to(match_index)
        return updated

    def abandon_snapshot(self) -> None:
        """The snapshot in flight was not acknowledged in time: probe again from ``match``."""
        assert self.state is ProgressState.SNAPSHOT
        self.pending_snapshot_index = 0
        self.become_probe()

    def on_heartbeat_sent(self, seq: int) -> None:
        """Remember what had been sent when heartbeat ``seq`` left."""
        self.heartbeat_seq = seq
        self.heartbeat_mark = self.next_index - 1

    def on_heartbeat_response(self, seq: int) -> None:
        """Unpause a probe. In REPLICATE, links deliver in order, so an answer to heartbeat
        ``seq`` while appends sent before it are still unacknowledged means they were lost:
        fall back to probing from ``match_index``."""
        if self.state is ProgressState.PROBE:
            self.probe_sent = False
        elif (
            self.state is ProgressState.REPLICATE
            and seq == self.heartbeat_seq
            and self.match_index < self.heartbeat_mark
        ):
            self.become_probe()

    def stalled(self) -> bool:
        """Whether appends are outstanding and nothing was acknowledged since the last call
        (the leader asks once per election timeout, a fallback for lost heartbeat answers)."""
        stalled = (
            self.state is ProgressState.REPLICATE
            and len(self.inflights) > 0
            and self.match_index == self.match_at_last_round
        )
        self.match_at_last_round = self.match_index
        return stalled

    def maybe_decrease(self, reject_index: int, hint_index: int) -> bool:
        """A follower rejected the append whose previous entry was ``reject_index``; the leader
        worked out from the follower's hint that the logs may match at ``hint_index``.

        Says whether the rejection was news; stale rejections (for messages sent before a newer
        success, or out of order) change nothing.
        """
        if self.state is ProgressState.REPLICATE:
            if reject_index <= self.match_index:
                return False
            self.become_probe()
        elif reject_index != self.next_index - 1:
            return False
        self.next_index = max(min(reject_index, hint_index + 1), self.match_index + 1)
        self.probe_sent = False
        return True
