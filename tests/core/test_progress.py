"""Per-follower progress (Raft 5.3 nextIndex / matchIndex) and its flow-control states."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from replog.core.progress import Inflights, Progress, ProgressState

PROBE, REPLICATE, SNAPSHOT = ProgressState.PROBE, ProgressState.REPLICATE, ProgressState.SNAPSHOT


def replicating(match: int, capacity: int = 3) -> Progress:
    """A follower known to hold everything up to ``match``, streamed to in REPLICATE."""
    pr = Progress(next_index=match + 1, max_inflight=capacity)
    assert pr.on_append_success(match)
    assert pr.state is REPLICATE
    return pr


# ---- Inflights -----------------------------------------------------------------------------


def test_inflights_window_fills_and_frees_in_order() -> None:
    window = Inflights(3)
    for last in (4, 6, 9):
        assert not window.full()
        window.add(last)
    assert window.full()
    window.free_to(5)  # acknowledges the message ending at 4 only
    assert len(window) == 2
    assert not window.full()
    window.free_to(9)
    assert len(window) == 0


def test_inflights_rejects_overflow_and_disorder() -> None:
    window = Inflights(1)
    window.add(5)
    with pytest.raises(AssertionError):
        window.add(6)  # past the window
    window.reset()
    assert len(window) == 0
    window.add(5)
    window.free_to(4)
    assert len(window) == 1
    two = Inflights(2)
    two.add(5)
    with pytest.raises(AssertionError):
        two.add(4)  # in-flight messages end at non-decreasing indexes
    with pytest.raises(AssertionError):
        Inflights(0)


# ---- PROBE ---------------------------------------------------------------------------------


def test_probe_sends_one_append_then_pauses() -> None:
    pr = Progress(next_index=5, max_inflight=4)
    assert pr.state is PROBE
    assert not pr.is_paused()
    pr.sent_entries(last_index=7, count=3)
    # While probing, the leader does not know where the logs match: one message at a time, and
    # next_index does not move optimistically.
    assert pr.is_paused()
    assert pr.next_index == 5
    assert len(pr.inflights) == 0


def test_heartbeat_response_unpauses_a_probe() -> None:
    pr = Progress(next_index=5, max_inflight=4)
    pr.sent_entries(last_index=7, count=3)
    pr.on_heartbeat_sent(1)
    pr.on_heartbeat_response(1)
    assert pr.state is PROBE
    assert not pr.is_paused()


def test_accepted_probe_switches_to_replicate() -> None:
    pr = Progress(next_index=5, max_inflight=4)
    pr.sent_entries(last_index=7, count=3)
    assert pr.on_append_success(7)
    assert pr.state is REPLICATE
    assert (pr.match_index, pr.next_index) == (7, 8)
    assert not pr.is_paused()


def test_accepted_empty_probe_at_current_match_also_switches_to_replicate() -> None:
    # A follower that already holds everything answers a probe with the match we know.
    pr = Progress(next_index=1, max_inflight=4)
    pr.sent_entries(last_index=0, count=0)
    assert pr.on_append_success(0)
    assert pr.state is REPLICATE


def test_stale_success_in_probe_changes_nothing() -> None:
    pr = replicating(match=10)
    pr.become_probe()
    pr.sent_entries(last_index=12, count=2)
    assert not pr.on_append_success(8)  # an old acknowledgement, delivered late
    assert pr.state is PROBE
    assert (pr.match_index, pr.next_index) == (10, 11)
    assert pr.is_paused()


# ---- REPLICATE -----------------------------------------------------------------------------


def test_replicate_streams_until_the_window_is_full() -> None:
    pr = replicating(match=4, capacity=2)
    pr.sent_entries(last_index=6, count=2)
    assert pr.next_index == 7  # optimistic: the next message starts after what is in flight
    assert not pr.is_paused()
    pr.sent_entries(last_index=9, count=3)
    assert pr.next_index == 10
    assert pr.is_paused()  # two messages unacknowledged: the window is full
    assert pr.on_append_success(6)
    assert not pr.is_paused()
    assert (pr.match_index, pr.next_index) == (6, 10)


def test_empty_append_in_replicate_takes_no_window_slot() -> None:
    pr = replicating(match=4, capacity=1)
    pr.sent_entries(last_index=4, count=0)
    assert not pr.is_paused()
    assert pr.next_index == 5


def test_stale_success_in_replicate_changes_nothing() -> None:
    pr = replicating(match=4, capacity=3)
    pr.sent_entries(last_index=6, count=2)
    pr.sent_entries(last_index=8, count=2)
    assert pr.on_append_success(8)
    assert not pr.on_append_success(6)  # reordered: the older acknowledgement arrives last
    assert (pr.match_index, pr.next_index) == (8, 9)
    assert len(pr.inflights) == 0


# ---- rejections ----------------------------------------------------------------------------


def test_rejection_in_probe_uses_the_hint() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    pr.sent_entries(last_index=12, count=3)
    # The append whose previous entry was 9 failed; the logs may match at 4.
    assert pr.maybe_decrease(reject_index=9, hint_index=4)
    assert pr.next_index == 5
    assert not pr.is_paused()


def test_rejection_hint_never_moves_next_index_forward() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    assert pr.maybe_decrease(reject_index=9, hint_index=30)
    assert pr.next_index == 9


def test_rejection_never_moves_next_index_to_or_below_match() -> None:
    pr = replicating(match=3)
    pr.sent_entries(last_index=5, count=2)
    pr.sent_entries(last_index=7, count=2)
    # The append after 5 failed and the follower's hint points at the start of the log, but the
    # follower is known to hold 3: probing restarts right after it.
    assert pr.maybe_decrease(reject_index=5, hint_index=0)
    assert pr.state is PROBE
    assert pr.next_index == 4


def test_stale_rejection_in_probe_is_ignored() -> None:
    pr = Progress(next_index=10, max_inflight=4)
    pr.sent_entries(last_index=12, count=3)
    # Only a rejection of the append we are waiting for (previous entry 9) is news.
    assert not pr.maybe_decrease(reject_index=5, hint_index=2)
    assert pr.next_index == 10
    assert pr.is_paused()


def test_stale_rejection_in_replicate_is_ignored() -> None:
    pr = replicating(match=10)
    pr.sent_entries(last_index=12, count=2)
    # The follower already acknowledged 10, so a rejection at 8 is from an older message.
    assert not pr.maybe_decrease(reject_index=8, hint_index=3)
    assert pr.state is REPLICATE
    assert (pr.match_index, pr.next_index) == (10, 13)
    assert len(pr.inflights) == 1


def test_fresh_rejection_in_replicate_falls_back_to_probe() -> None:
    pr = replicating(match=10)
    pr.sent_entries(last_index=12, count=2)
    pr.sent_entries(last_index=14, count=2)
    assert pr.maybe_decrease(reject_index=12, hint_index=11)
    assert pr.state is PROBE
    assert pr.next_index == 12
    assert len(pr.inflights) == 0
    assert not pr.is_paused()


# ---- SNAPSHOT ------------------------------------------------------------------------------


def test_snapshot_pauses_until_the_follower_reaches_it() -> None:
    pr = Progress(next_index=3, max_inflight=4)
    pr.become_snapshot(20)
    assert pr.state is SNAPSHOT
    assert pr.is_paused()
    assert pr.on_append_success(10)  # progress, but not the snapshot yet
    assert pr.state is SNAPSHOT
    assert pr.is_paused()
    assert pr.on_append_success(20)
    assert pr.state is REPLICATE
    assert (pr.match_index, pr.next_index) == (20, 21)
    assert not pr.is_paused()


def test_snapshot_known_applied_probes_after_the_snapshot_index() -> None:
    pr = replicating(match=5)
    pr.become_snapshot(20)
    pr.become_probe()
    assert pr.state is PROBE
    assert pr.next_index == 21
    assert pr.pending_snapshot_index == 0


def test_abandoned_snapshot_probes_again_from_match() -> None:
    # Nothing says the snapshot arrived, so the leader must not assume the follower holds it.
    pr = replicating(match=5)
    pr.become_snapshot(20)
    pr.abandon_snapshot()
    assert pr.state is PROBE
    assert (pr.match_index, pr.next_index) == (5, 6)
    assert not pr.is_paused()
    with pytest.raises(AssertionError):
        pr.abandon_snapshot()  # only a snapshot in flight can be abandoned


def test_heartbeat_response_does_not_unpause_a_snapshot() -> None:
    pr = Progress(next_index=3, max_inflight=4)
    pr.become_snapshot(20)
    pr.on_heartbeat_sent(1)
    pr.on_heartbeat_response(1)
    assert pr.state is SNAPSHOT
    assert pr.is_paused()


# ---- detecting lost appends ----------------------------------------------------------------


def test_answer_to_a_heartbeat_sent_after_unacknowledged_appends_means_they_were_lost() -> None:
    pr = replicating(match=4)
    pr.sent_entries(last_index=6, count=2)
    pr.on_heartbeat_sent(1)
    # Links deliver in order: the heartbeat's answer overtook no acknowledgement of 5..6, so
    # the append was lost, and the leader probes from the match index again.
    pr.on_heartbeat_response(1)
    assert pr.state is PROBE
    assert pr.next_index == 5
    assert len(pr.inflights) == 0


def test_append_sent_after_the_heartbeat_is_not_presumed_lost() -> None:
    pr = replicating(match=4)
    pr.on_heartbeat_sent(1)
    pr.sent_entries(last_index=6, count=2)
    pr.on_heartbeat_response(1)  # its acknowledgement may well be on its way
    assert pr.state is REPLICATE
    assert pr.next_index == 7


def test_answer_to_an_older_heartbeat_says_nothing() -> None:
    pr = replicating(match=4)
    pr.on_heartbeat_sent(1)
    pr.sent_entries(last_index=6, count=2)
    pr.on_heartbeat_sent(2)
    pr.on_heartbeat_response(1)
    assert pr.state is REPLICATE


def test_acknowledged_appends_keep_replicate_streaming() -> None:
    pr = replicating(match=4)
    pr.sent_entries(last_index=6, count=2)
    pr.sent_entries(last_index=8, count=2)
    pr.on_heartbeat_sent(1)
    assert pr.on_append_success(8)
    pr.on_heartbeat_response(1)
    assert pr.state is REPLICATE
    assert pr.next_index == 9


def test_stalled_needs_outstanding_appends_and_no_progress_between_two_checks() -> None:
    pr = replicating(match=4)
    assert not pr.stalled()  # nothing in flight
    pr.sent_entries(last_index=6, count=2)
    assert pr.stalled()  # in flight, and nothing acknowledged since the last check
    pr.sent_entries(last_index=8, count=2)
    assert pr.on_append_success(6)
    assert not pr.stalled()  # the follower moved
    assert pr.stalled()
    pr.become_probe()
    assert not pr.stalled()  # only a stream can stall; a probe waits for its heartbeat


# ---- invariants under any interleaving -----------------------------------------------------


class LeaderAndFollower(RuleBasedStateMachine):
    """A leader's Progress for one follower whose log is a prefix of the leader's, driven by
    sends, heartbeats, duplicated and reordered deliveries, snapshots, the leader's periodic
    checks and new proposals. The leader must never believe the follower holds more than it
    does, and once the network behaves the follower catches up."""

    def __init__(self) -> None:
        super().__init__()
        self.leader_last = 5
        self.snapshot_index = 0
        self.follower_last = 0
        self.heartbeat_seq = 0
        self.pr = Progress(next_index=self.leader_last + 1, max_inflight=3)
        # To the follower: ("append", prev, count), ("snap", index, 0), ("heartbeat", seq, 0).
        # To the leader: ("ok", match, 0), ("reject", reject_index, hint), ("heartbeat", seq, 0).
        self.in_flight: list[tuple[str, int, int]] = []
        self.answers: list[tuple[str, int, int]] = []

    @initialize(follower_last=st.integers(min_value=0, max_value=5))
    def follower_log(self, follower_last: int) -> None:
        self.follower_last = follower_last

    @rule(count=st.integers(min_value=1, max_value=3))
    def propose(self, count: int) -> None:
        self.leader_last += count

    @rule(batch=st.integers(min_value=1, max_value=4), send_if_empty=st.booleans())
    def send(self, batch: int, send_if_empty: bool) -> None:
        # The loop of RaftNode._send_append, with a message size limit of ``batch`` entries.
        pr = self.pr
        while not pr.is_paused():
            prev = pr.next_index - 1
            if prev < self.snapshot_index:
                self.in_flight.append(("snap", self.snapshot_index, 0))
                pr.become_snapshot(self.snapshot_index)
                return
            count = max(0, min(self.leader_last, prev + batch) - prev)
            if not count and not send_if_empty:
                return
            self.in_flight.append(("append", prev, count))
            pr.sent_entries(prev + count, count)
            if not count or pr.state is not REPLICATE:
                return
            send_if_empty = False

    @rule()
    def heartbeat(self) -> None:
        self.heartbeat_seq += 1
        self.pr.on_heartbeat_sent(self.heartbeat_seq)
        self.in_flight.append(("heartbeat", self.heartbeat_seq, 0))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), duplicate=st.booleans())
    def follower_receives(self, data: st.DataObject, duplicate: bool) -> None:
        k = data.draw(st.integers(min_value=0, max_value=len(self.in_flight) - 1))
        self._follower_receives(*(self.in_flight[k] if duplicate else self.in_flight.pop(k)))

    def _follower_receives(self, kind: str, index: int, count: int) -> None:
        if kind == "heartbeat":
            self.answers.append(("heartbeat", index, 0))
        elif kind == "snap":
            self.follower_last = max(self.follower_last, index)
            self.answers.append(("ok", index, 0))
        elif index <= self.follower_last:
            self.follower_last = max(self.follower_last, index + count)
            self.answers.append(("ok", index + count, 0))
        else:
            self.answers.append(("reject", index, self.follower_last))

    @precondition(lambda self: self.answers)
    @rule(data=st.data(), duplicate=st.booleans())
    def leader_receives(self, data: st.DataObject, duplicate: bool) -> None:
        k = data.draw(st.integers(min_value=0, max_value=len(self.answers) - 1))
        self._leader_receives(*(self.answers[k] if duplicate else self.answers.pop(k)))

    def _leader_receives(self, kind: str, index: int, hint: int) -> None:
        if kind == "heartbeat":
            self.pr.on_heartbeat_response(index)
        elif kind == "ok":
            self.pr.on_append_success(index)
        else:
            self.pr.maybe_decrease(index, hint)

    @rule(batch=st.integers(min_value=1, max_value=4))
    def round_trip(self, batch: int) -> None:
        # A lossless round trip: sends and a heartbeat arrive in order and are answered in order.
        self.send(batch, send_if_empty=True)
        self.heartbeat()
        while self.in_flight:
            self._follower_receives(*self.in_flight.pop(0))
        while self.answers:
            self._leader_receives(*self.answers.pop(0))

    @rule()
    def election_timeout_check(self) -> None:
        # RaftNode._retry_stuck_progress.
        if self.pr.state is SNAPSHOT:
            self.pr.abandon_snapshot()
        elif self.pr.stalled():
            self.pr.become_probe()

    @precondition(lambda self: self.snapshot_index + 4 <= self.leader_last)
    @rule()
    def compact(self) -> None:
        self.snapshot_index = self.leader_last

    @invariant()
    def leader_never_overestimates_the_follower(self) -> None:
        assert self.pr.match_index <= self.follower_last

    @invariant()
    def match_is_below_next(self) -> None:
        assert self.pr.match_index < self.pr.next_index <= self.leader_last + 1

    @invariant()
    def window_is_bounded(self) -> None:
        assert len(self.pr.inflights) <= self.pr.inflights.capacity
        if self.pr.state is not REPLICATE:
            assert len(self.pr.inflights) == 0

    def teardown(self) -> None:
        # Whatever happened before, once messages stop getting lost the follower catches up
        # (after at most one election-timeout check, a probe, then windows of 3 messages of 4
        # entries per round trip).
        self.in_flight.clear()
        self.answers.clear()
        self.election_timeout_check()
        for _ in range(4 + self.leader_last // 12):
            self.round_trip(batch=4)
        assert self.pr.match_index == self.follower_last == self.leader_last


TestProgressInvariants = LeaderAndFollower.TestCase
TestProgressInvariants.settings = settings(
    max_examples=100, stateful_step_count=40, derandomize=True, deadline=None
)
