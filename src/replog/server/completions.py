"""Results handed to waiting callers a slice at a time.

A commit may complete thousands of requests at once. Resolving all their futures together
would make the event loop run every waiting handler back to back before anything else,
timers included: the node's ticks, and with them the leader's heartbeats, would wait behind
them, and followers would start elections under load. ``Completions`` queues the results and
resolves ``slice_size`` of them per turn of the loop, so timers and the driver run in between.
The first ``slice_size`` results of a turn, when nothing is queued, are resolved at once: a
lone commit reaches its caller without waiting for the task's next turn.
The order of completions is kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any, Protocol

SLICE_DEFAULT = 256  # about 2 ms of write callbacks; at 1,000 clients 4-11% more writes than 64


class Waiter(Protocol):
    """What receives one result: an ``asyncio.Future``, or anything that resolves alike."""

    def done(self) -> bool: ...
    def set_result(self, result: Any, /) -> None: ...
    def set_exception(self, exception: BaseException, /) -> None: ...


class Completions:
    def __init__(self, slice_size: int = SLICE_DEFAULT) -> None:
        assert slice_size >= 1
        self._slice = slice_size
        self._queue: collections.deque[tuple[Waiter, bool, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._spent = 0  # results resolved at once in this turn of the loop

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replog-completions")

    def result(self, future: Waiter, value: object) -> None:
        if self._may_resolve_now():
            if not future.done():
                future.set_result(value)
            return
        self._queue.append((future, True, value))
        self._wake.set()

    def exception(self, future: Waiter, error: BaseException) -> None:
        if self._may_resolve_now():
            if not future.done():
                future.set_exception(error)
            return
        self._queue.append((future, False, error))
        self._wake.set()

    def _may_resolve_now(self) -> bool:
        """Whether this turn's budget allows one more result at once (the queue's order is
        kept: nothing is resolved at once while anything waits in it)."""
        if self._queue or self._task is None:
            return False
        if self._spent == 0:
            asyncio.get_running_loop().call_soon(self._new_turn)
        if self._spent >= self._slice:
            return False
        self._spent += 1
        return True

    def _new_turn(self) -> None:
        self._spent = 0

    def __len__(self) -> int:
        return len(self._queue)

    async def close(self) -> None:
        """Stop the task and hand out whatever is still queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._resolve(len(self._queue))

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                self._resolve(self._slice)
                await asyncio.sleep(0)  # the handlers just woken, and any due timer, run now

    def _resolve(self, count: int) -> None:
        queue = self._queue
        for _ in range(min(count, len(queue))):
            future, ok, value = queue.popleft()
            if future.done():
                continue
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
