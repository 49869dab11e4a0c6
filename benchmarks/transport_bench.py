"""Peer transport speed: the codec alone, then two PeerTransports on loopback.

Run: .venv/bin/python benchmarks/transport_bench.py [--seconds 1.0] [--profile]

Codec: microseconds to encode and to decode one message (best of several trials), for a
Heartbeat, an AppendEntriesResponse and AppendEntries of 1, 16 and 256 entries of 256 bytes.

Loopback: two transports in one process and one event loop (so the figure is the CPU cost of
both ends together, the pessimistic case), node 1 sending to node 2 as fast as its queue takes
them, for heartbeats and for AppendEntries of 16 entries of 256 bytes. Reports messages/s and
MB/s of entry data delivered to ``on_message``.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

from replog.core.types import (
    AppendEntries,
    AppendEntriesResponse,
    Entry,
    EntryKind,
    Heartbeat,
    Message,
)
from replog.transport import PeerTransport, decode_message, encode_message

ENTRY_BYTES = 256


def append(count: int) -> AppendEntries:
    entries = tuple(
        Entry(100 + i, 7, EntryKind.NORMAL, bytes([i % 256]) * ENTRY_BYTES) for i in range(count)
    )
    return AppendEntries(7, 1, 2, 99, 7, entries, 98)


def best_us(fn: Callable[[Any], Any], arg: Any, seconds: float) -> float:
    """Best per-call time over 5 trials of about seconds/5 each."""
    calls = 1
    start = time.perf_counter()
    fn(arg)
    once = max(time.perf_counter() - start, 1e-7)
    calls = max(1, int(seconds / 5 / once))
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(calls):
            fn(arg)
        best = min(best, (time.perf_counter() - start) / calls)
    return best * 1e6


def codec_table(seconds: float) -> None:
    cases: list[tuple[str, Message]] = [
        ("Heartbeat", Heartbeat(7, 1, 2, 98, 3)),
        ("AppendEntriesResponse", AppendEntriesResponse(7, 2, 1, True, 355)),
        ("AppendEntries x1", append(1)),
        ("AppendEntries x16", append(16)),
        ("AppendEntries x256", append(256)),
    ]
    print(f"{'codec':24} {'bytes':>8} {'encode us':>10} {'decode us':>10} {'both us':>10}")
    for name, m in cases:
        body = encode_message(m)
        enc = best_us(encode_message, m, seconds)
        dec = best_us(decode_message, body, seconds)
        print(f"{name:24} {len(body):8d} {enc:10.2f} {dec:10.2f} {enc + dec:10.2f}")


async def loopback(m: Message, seconds: float) -> tuple[float, float]:
    received = 0

    def on_message(_: Message) -> None:
        nonlocal received
        received += 1

    receiver = PeerTransport(
        node_id=2, cluster_id="bench", listen=("127.0.0.1", 0), peers={}, on_message=on_message
    )
    await receiver.start()
    sender = PeerTransport(
        node_id=1,
        cluster_id="bench",
        listen=("127.0.0.1", 0),
        peers={2: receiver.listen_address},
        on_message=lambda _: None,
    )
    await sender.start()
    try:
        sent = 0
        start = time.perf_counter()
        deadline = start + seconds
        while time.perf_counter() < deadline:
            while sender.send(m):
                sent += 1
            await asyncio.sleep(0)
        while received < sent:
            await asyncio.sleep(0.001)
        elapsed = time.perf_counter() - start
    finally:
        await sender.close()
        await receiver.close()
    data_bytes = sum(len(e.data) for e in m.entries) if isinstance(m, AppendEntries) else 0
    return received / elapsed, received * data_bytes / elapsed / 1e6


def loopback_table(seconds: float) -> None:
    print(f"\n{'loopback (one process)':24} {'msgs/s':>10} {'entries/s':>10} {'MB/s':>8}")
    for name, m, per in [
        ("Heartbeat", Heartbeat(7, 1, 2, 98, 3), 0),
        ("AppendEntries x16", append(16), 16),
        ("AppendEntries x256", append(256), 256),
    ]:
        rate, mb_s = asyncio.run(loopback(m, seconds))
        print(f"{name:24} {rate:10.0f} {rate * per:10.0f} {mb_s:8.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--profile", action="store_true", help="profile the x16 loopback")
    args = parser.parse_args()
    codec_table(args.seconds)
    loopback_table(args.seconds)
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(loopback(append(16), args.seconds))
        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)


if __name__ == "__main__":
    main()
