"""The simulated network: per-link loss, delay, duplication and reordering, and partitions.

Theory of operation
-------------------
Every directed link (sender, receiver) has its own ``LinkParams``, drawn per seed by the fault
plan. ``send`` decides a message's fate once, when it leaves: dropped (by chance, by a
partition, or because the link already holds ``in_flight_max`` messages, like a full socket
buffer), or scheduled to arrive after a delay drawn from the link's range. A reordered message
gets an extra long delay, so later messages overtake it; a duplicated one is scheduled twice
with independent delays. Partitions are a set of blocked directed links, checked both when a
message leaves and when it arrives, so a partition also cuts what was already on the wire;
one-way loss is simply a blocked link whose reverse is open.

All draws come from the network's own ``random.Random``, derived from the seed, and every fate
is written to the trace, so a run replays exactly.
"""

from __future__ import annotations

import collections
import functools
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from replog.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    ForwardProposal,
    Heartbeat,
    HeartbeatResponse,
    InstallSnapshot,
    Message,
    ReadIndexRequest,
    ReadIndexResponse,
    RequestVote,
    RequestVoteResponse,
    TimeoutNow,
)
from replog.testing.events import EventQueue, Trace

Link = tuple[int, int]


@dataclass(frozen=True, slots=True)
class LinkParams:
    """How one directed link misbehaves. Rates are probabilities per message."""

    drop_rate: float = 0.0
    dup_rate: float = 0.0
    reorder_rate: float = 0.0
    delay_min_ms: int = 1
    delay_max_ms: int = 3
    reorder_delay_ms: int = 40


NOMINAL_LINK = LinkParams()


class SimNetwork:
    """Carries messages between simulated nodes through the event queue."""

    def __init__(
        self,
        nodes: Sequence[int],
        rng: random.Random,
        *,
        queue: EventQueue,
        trace: Trace,
        faults: collections.Counter[str],
        deliver: Callable[[Message], None],
        in_flight_max: int = 1024,
    ) -> None:
        self._nodes = tuple(nodes)
        self._rng = rng
        self._queue = queue
        self._trace = trace
        self._faults = faults
        self._deliver = deliver
        self._in_flight_max = in_flight_max
        self._links: dict[Link, LinkParams] = {}
        self._in_flight: dict[Link, int] = collections.defaultdict(int)
        self.blocked: frozenset[Link] = frozenset()
        self.sent = 0

    def set_links(self, links: dict[Link, LinkParams]) -> None:
        self._links = dict(links)

    def calm(self) -> None:
        """Every link back to nominal: no loss, no duplication, no reordering."""
        self._links = {}

    def partition(self, blocked: Iterable[Link]) -> None:
        self.blocked = frozenset(blocked)

    def heal(self) -> None:
        self.blocked = frozenset()

    def reachable(self, sender: int, receiver: int) -> bool:
        return (sender, receiver) not in self.blocked

    def send(self, message: Message) -> None:
        self.sent += 1
        link = (message.sender, message.receiver)
        if link in self.blocked:
            self._faults["cut"] += 1
            self._trace.record(f"n{link[0]}->n{link[1]} cut {describe(message)}")
            return
        params = self._links.get(link, NOMINAL_LINK)
        rng = self._rng
        if params.drop_rate and rng.random() < params.drop_rate:
            self._faults["drop"] += 1
            self._trace.record(f"n{link[0]}->n{link[1]} lost {describe(message)}")
            return
        copies = 1
        if params.dup_rate and rng.random() < params.dup_rate:
            self._faults["duplicate"] += 1
            copies = 2
        for _ in range(copies):
            if self._in_flight[link] >= self._in_flight_max:
                self._faults["overflow"] += 1
                self._trace.record(f"n{link[0]}->n{link[1]} overflow {describe(message)}")
                return
            delay = rng.randint(params.delay_min_ms, params.delay_max_ms)
            if params.reorder_rate and rng.random() < params.reorder_rate:
                self._faults["reorder"] += 1
                delay += rng.randint(1, params.reorder_delay_ms)
            self._in_flight[link] += 1
            self._queue.after(delay, functools.partial(self._arrive, message))

    def _arrive(self, message: Message) -> None:
        link = (message.sender, message.receiver)
        self._in_flight[link] -= 1
        if link in self.blocked:
            self._faults["cut"] += 1
            self._trace.record(f"n{link[0]}->n{link[1]} cut in flight {describe(message)}")
            return
        self._deliver(message)


def describe(m: Message) -> str:
    """One short line for a message, for traces."""
    name = type(m).__name__
    detail = _detail(m)
    return f"{name}(t{m.term}{' ' + detail if detail else ''})"


def _detail(m: Message) -> str:
    if isinstance(m, AppendEntries):
        span = f"{m.entries[0].index}..{m.entries[-1].index}" if m.entries else "-"
        return f"prev={m.prev_log_index}/{m.prev_log_term} ents={span} commit={m.leader_commit}"
    if isinstance(m, AppendEntriesResponse):
        if m.success:
            return f"ok match={m.match_index}"
        return f"reject={m.reject_index} hint={m.hint_index}/{m.hint_term}"
    if isinstance(m, Heartbeat):
        return f"commit={m.leader_commit} seq={m.read_seq}"
    if isinstance(m, HeartbeatResponse):
        return f"seq={m.read_seq}"
    if isinstance(m, RequestVote):
        kind = "pre " if m.pre_vote else ""
        return f"{kind}last={m.last_log_index}/{m.last_log_term}{' transfer' if m.transfer else ''}"
    if isinstance(m, RequestVoteResponse):
        return f"{'pre ' if m.pre_vote else ''}{'granted' if m.granted else 'refused'}"
    if isinstance(m, InstallSnapshot):
        return f"snap={m.snapshot.meta.index}/{m.snapshot.meta.term}"
    if isinstance(m, ForwardProposal):
        return f"n={len(m.data)}"
    if isinstance(m, ReadIndexRequest):
        return f"ctx={m.context.decode(errors='replace')}"
    if isinstance(m, ReadIndexResponse):
        return f"ctx={m.context.decode(errors='replace')} index={m.index}"
    assert isinstance(m, TimeoutNow)
    return ""
