"""Virtual time for the simulator: one event queue, and a bounded trace of what happened.

Theory of operation
-------------------
A simulated world has exactly one source of time: ``EventQueue.now``, in virtual
milliseconds. Everything that happens later (a node's next tick, a message arriving, a client's
timeout, the next fault) is an action scheduled at a virtual time. Actions live in one heap
keyed by (time, sequence number); the sequence number is taken from a counter at scheduling
time, so two actions due at the same millisecond always run in the order they were scheduled.
Together with a single seeded random generator this makes a run a pure function of its seed.

The queue and the trace both have limits. The queue refuses to grow past ``limit`` pending
actions (a runaway is a bug of the simulator or the system under test, and is reported as
such). The trace keeps the last ``tail_lines`` lines in a ring for the failure report, a
running BLAKE2b hash of every line for determinism checks, and optionally streams every line
to a sink (``replog sim --trace``).
"""

from __future__ import annotations

import collections
import hashlib
import heapq
from collections.abc import Callable

Action = Callable[[], None]


class EventQueue:
    """A min-heap of actions keyed by (virtual time in ms, scheduling order)."""

    def __init__(self, limit: int = 200_000) -> None:
        self._heap: list[tuple[int, int, Action]] = []
        self._sequence = 0
        self._limit = limit
        self.now = 0

    def __len__(self) -> int:
        return len(self._heap)

    def schedule(self, at: int, action: Action) -> None:
        """Run ``action`` at virtual time ``at`` (never in the past)."""
        assert at >= self.now, f"scheduled in the past: {at} < {self.now}"
        if len(self._heap) >= self._limit:
            raise OverflowError(f"event queue over its limit of {self._limit} pending events")
        self._sequence += 1
        heapq.heappush(self._heap, (at, self._sequence, action))

    def after(self, delay: int, action: Action) -> None:
        self.schedule(self.now + delay, action)

    def pop(self) -> Action | None:
        """The next action, with the clock advanced to its time; None when empty."""
        if not self._heap:
            return None
        at, _, action = heapq.heappop(self._heap)
        self.now = at
        return action

    def peek_time(self) -> int | None:
        return self._heap[0][0] if self._heap else None


class Trace:
    """A bounded ring of human-readable lines plus a running hash of all of them."""

    def __init__(
        self,
        clock: EventQueue,
        tail_lines: int = 40,
        sink: Callable[[str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._hash = hashlib.blake2b(digest_size=16)
        self._sink = sink
        self.lines = 0

    def record(self, text: str) -> None:
        line = f"{self._clock.now:>8}ms {text}"
        self.lines += 1
        self._hash.update(line.encode())
        self._hash.update(b"\n")
        self._tail.append(line)
        if self._sink is not None:
            self._sink(line)

    def tail(self) -> list[str]:
        return list(self._tail)

    def digest(self) -> str:
        return self._hash.hexdigest()
