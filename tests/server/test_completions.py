"""Completions: results reach their callers in order, a slice per turn of the event loop."""

from __future__ import annotations

import asyncio
import time

from replog.server.completions import Completions


async def test_results_and_errors_arrive_in_order() -> None:
    completions = Completions(slice_size=3)
    completions.start()
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(10)]
    for i, future in enumerate(futures):
        if i == 4:
            completions.exception(future, ValueError("no"))
        else:
            completions.result(future, i)
    results = await asyncio.gather(*futures, return_exceptions=True)
    assert results[:4] == [0, 1, 2, 3] and isinstance(results[4], ValueError)
    assert results[5:] == [5, 6, 7, 8, 9]
    await completions.close()


async def test_a_timer_runs_between_slices_of_a_large_burst() -> None:
    completions = Completions(slice_size=16)
    completions.start()
    loop = asyncio.get_running_loop()
    done: list[float] = []

    async def handler(future: asyncio.Future[int]) -> None:
        await future
        time.sleep(0.0005)  # the work a request handler does once its write committed
        done.append(time.monotonic())

    futures = [loop.create_future() for _ in range(1000)]
    tasks = [asyncio.create_task(handler(f)) for f in futures]
    await asyncio.sleep(0)
    fired: list[float] = []
    loop.call_later(0.02, lambda: fired.append(time.monotonic()))
    for i, future in enumerate(futures):
        completions.result(future, i)
    await asyncio.gather(*tasks)
    # The timer fired long before the last handler ran: it did not wait for the whole burst.
    assert fired and fired[0] < done[-1] - 0.1
    await completions.close()


async def test_close_hands_out_what_is_queued() -> None:
    completions = Completions()
    future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    completions.result(future, "late")
    await completions.close()
    assert future.result() == "late"


async def test_a_few_results_are_handed_over_at_once_then_queued() -> None:
    completions = Completions(slice_size=2)
    completions.start()
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(4)]
    for i, future in enumerate(futures):
        completions.result(future, i)
    assert [f.done() for f in futures] == [True, True, False, False]  # this turn's budget
    assert await asyncio.gather(*futures) == [0, 1, 2, 3]
    await asyncio.sleep(0)
    late = loop.create_future()
    completions.result(late, "next turn")  # a new turn, an empty queue: at once again
    assert late.done()
    await completions.close()
