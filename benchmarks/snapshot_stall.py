"""How long does taking a snapshot of a large KV store stall a node's event loop?

A node captures the store on its event loop (``KVStore.snapshot_encoder``), then encodes the
capture and wraps it with the member registry on another thread (``wrap_snapshot``), exactly as
``Node`` does. While that thread runs, a task on the loop wakes every millisecond; the longest
gap between its wake-ups is how long heartbeats and client answers would have waited (the
capture's own stall included, and without it). The garbage collector is tuned as
``replog serve`` tunes it.

    .venv/bin/python benchmarks/snapshot_stall.py [--keys N] [--value-bytes B] [-o json]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import time
from typing import Any

from replog.server.app import tune_garbage_collector
from replog.server.members import MemberInfo, wrap_snapshot
from replog.statemachines import KVStore, Put, Request

SAMPLE_S = 0.001


def fill(keys: int, value_bytes: int) -> KVStore:
    store = KVStore()
    value = b"v" * value_bytes
    for i in range(keys):
        store.apply_request(Request(Put(b"key/%010d" % i, value)))
    return store


async def measure(store: KVStore) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    gaps: list[tuple[float, float]] = []  # (when a gap began, how long it was)
    done = False

    async def sample() -> None:
        last = time.perf_counter()
        while not done:
            await asyncio.sleep(SAMPLE_S)
            now = time.perf_counter()
            gaps.append((last, now - last))
            last = now

    sampler = asyncio.create_task(sample())
    await asyncio.sleep(0.05)
    members = (MemberInfo("n1", "127.0.0.1:7000"),)
    started = time.perf_counter()
    encode = store.snapshot_encoder()
    captured = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        data = await loop.run_in_executor(pool, lambda: wrap_snapshot(members, encode()))
    encoded = time.perf_counter()
    await asyncio.sleep(0.02)
    done = True
    await sampler
    return {
        "keys": len(store),
        "snapshot_bytes": len(data),
        "capture_ms": round((captured - started) * 1000, 1),
        "encode_ms": round((encoded - captured) * 1000, 1),
        "max_loop_gap_ms": round(max(gap for _, gap in gaps) * 1000, 1),
        "max_gap_while_encoding_ms": round(
            max(gap for began, gap in gaps if began >= captured) * 1000, 1
        ),
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


if __name__ == "__main__":
    main()
