"""How long do taking and restoring a snapshot of a large KV store stall a node's event loop?

A node captures the store on its event loop (``KVStore.snapshot_encoder``), then encodes the
capture and wraps it with the member registry on another thread (``wrap_snapshot``), exactly as
``Node`` does. It restores one (a follower installing the leader's) by unwrapping it and loading
the image on that thread (``KVStore.snapshot_restorer``), then installing the loaded state on
the loop. While each runs, a task on the loop wakes every millisecond; the longest gap between
its wake-ups is how long heartbeats and client answers would have waited (the capture's own
stall included, and without it). For comparison, the restore is also timed as a machine
without ``snapshot_restorer`` is restored: ``restore`` on the loop. The garbage collector is
tuned as ``replog serve`` tunes it.

    .venv/bin/python benchmarks/snapshot_stall.py [--keys N] [--value-bytes B] [-o json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import time
from collections.abc import Callable
from typing import Any

from replog.server.app import tune_garbage_collector
from replog.server.members import MemberInfo, unwrap_snapshot, wrap_snapshot
from replog.statemachines import KVStore, Put, Request

SAMPLE_S = 0.001


def fill(keys: int, value_bytes: int) -> KVStore:
    store = KVStore()
    value = b"v" * value_bytes
    for i in range(keys):
        store.apply_request(Request(Put(b"key/%010d" % i, value)))
    return store


class Sampler:
    """A task on the loop that wakes every millisecond and records the gaps between its
    wake-ups: (when a gap began, how long it was)."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float]] = []
        self._done = False
        self._task = asyncio.create_task(self._sample())

    async def _sample(self) -> None:
        last = time.perf_counter()
        while not self._done:
            await asyncio.sleep(SAMPLE_S)
            now = time.perf_counter()
            self.gaps.append((last, now - last))
            last = now

    async def stop(self) -> None:
        await asyncio.sleep(0.02)
        self._done = True
        await self._task

    def longest_ms(self, since: float = 0.0) -> float:
        return round(max(gap for began, gap in self.gaps if began >= since) * 1000, 1)


async def measure(store: KVStore) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    sampler = Sampler()
    await asyncio.sleep(0.05)
    members = (MemberInfo("n1", "127.0.0.1:7000"),)
    started = time.perf_counter()
    encode = store.snapshot_encoder()
    captured = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        data = await loop.run_in_executor(pool, lambda: wrap_snapshot(members, encode()))
        encoded = time.perf_counter()
        await sampler.stop()
        restore = await measure_restore(pool, data)
    return {
        "keys": len(store),
        "snapshot_bytes": len(data),
        "capture_ms": round((captured - started) * 1000, 1),
        "encode_ms": round((encoded - captured) * 1000, 1),
        "max_loop_gap_ms": sampler.longest_ms(),
        "max_gap_while_encoding_ms": sampler.longest_ms(since=captured),
        **restore,
    }


async def measure_restore(pool: concurrent.futures.Executor, data: bytes) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    into = KVStore()

    def load() -> Callable[[], None]:
        return into.snapshot_restorer(unwrap_snapshot(data)[1])

    sampler = Sampler()
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    install = await loop.run_in_executor(pool, load)
    loaded = time.perf_counter()
    install()
    installed = time.perf_counter()
    await sampler.stop()
    on_thread_gap = sampler.longest_ms()
    sampler = Sampler()
    await asyncio.sleep(0.05)
    KVStore().restore(unwrap_snapshot(data)[1])
    await sampler.stop()
    return {
        "restore_load_ms": round((loaded - started) * 1000, 1),
        "restore_install_ms": round((installed - loaded) * 1000, 1),
        "max_gap_while_restoring_ms": on_thread_gap,
        "max_gap_restoring_on_loop_ms": sampler.longest_ms(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="keys in the store")
    parser.add_argument("--value-bytes", type=int, default=100, help="bytes per value")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text")
    args = parser.parse_args()
    tune_garbage_collector()
    store = fill(args.keys, args.value_bytes)
    result = asyncio.run(measure(store))
    if args.output == "json":
        print(json.dumps(result))
    else:
        print(
            f"{result['keys']:,} keys, {result['snapshot_bytes'] / 1e6:.0f} MB snapshot: capture "
            f"{result['capture_ms']} ms on the loop, encode {result['encode_ms']} ms on a thread, "
            f"longest loop stall {result['max_loop_gap_ms']} ms "
            f"({result['max_gap_while_encoding_ms']} ms after the capture)"
        )
        print(
            f"restore: load {result['restore_load_ms']} ms on a thread, install "
            f"{result['restore_install_ms']} ms on the loop, longest loop stall "
            f"{result['max_gap_while_restoring_ms']} ms (restoring on the loop: "
            f"{result['max_gap_restoring_on_loop_ms']} ms)"
        )


if __name__ == "__main__":
    main()
