"""Results handed to waiting callers a slice at a time.

A commit may complete thousands of requests at once. Resolving all their futures together
would make the event loop run every waiting handler back to back before anything else,
timers included: the node's ticks, and with them the leader's heartbeats, would wait behind
them, and followers would start elections under load. ``Completions`` queues the results and
resolves ``slice_size`` of them per turn of the loop, so timers and the driver run in between.
The order of completions is kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import Any

SLICE_DEFAULT = 64


class Completions:
    def __init__(self, slice_size: int = SLICE_DEFAULT) -> None:
        assert slice_size >= 1
        self._slice = slice_size
        self._queue: collections.deque[tuple[asyncio.Future[Any], bool, Any]] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="replog-completions")

    def result(self, future: asyncio.Future[Any], value: object) -> None:
        self._queue.append((future, True, value))
        self._wake.set()

    def exception(self, future: asyncio.Future[Any], error: BaseException) -> None:
        self._queue.append((future, False, error))
        self._wake.set()

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
