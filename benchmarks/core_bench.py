"""How fast is the consensus core itself? Entries committed per CPU-second.

A 3-node cluster runs in one process with an in-memory "disk" and a perfect network, so the only
cost measured is the core (RaftNode) plus the minimal Ready loop around it. The leader proposes
batches of entries between Ready rounds, as the server does when many clients write at once.

    .venv/bin/python benchmarks/core_bench.py [--entries N] [--batch B] [--size BYTES]
"""

from __future__ import annotations

import argparse
import random
import time

from replog.core import Configuration, Message, RaftConfig, RaftNode, Role


def run(total: int, batch: int, size: int) -> tuple[float, int]:
    ids = [1, 2, 3]
    membership = Configuration(voters=frozenset(ids))
    nodes = {i: RaftNode(RaftConfig(node_id=i), membership, random.Random(i)) for i in ids}
    stored: dict[int, int] = dict.fromkeys(ids, 0)
    applied: dict[int, int] = dict.fromkeys(ids, 0)
    queue: list[Message] = []

    def pump() -> None:
        nonlocal queue
        while True:
            for node_id, node in nodes.items():
                if node.has_ready():
                    rd = node.ready()
                    stored[node_id] += len(rd.entries)  # stands in for the WAL write
                    queue.extend(rd.messages)
                    applied[node_id] += len(rd.committed_entries)
                    node.advance(rd)
            if not queue:
                return
            batch_msgs, queue = queue, []
            for m in batch_msgs:
                nodes[m.receiver].step(m)

    nodes[1].campaign()
    pump()
    leader = nodes[1]
    assert leader.role is Role.LEADER
    payload = b"x" * size
    start_commit = leader.commit_index
    start = time.process_time()
    proposed = 0
    while proposed < total:
        for _ in range(batch):
            leader.propose(payload)
        proposed += batch
        pump()
    leader.tick()  # an idle leader announces its last commit index on its next tick
    pump()
    elapsed = time.process_time() - start
    committed = leader.commit_index - start_commit
    assert committed == proposed and min(applied.values()) >= proposed
    return elapsed, committed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--size", type=int, default=100)
    args = parser.parse_args()
    print(f"{'batch':>6} {'entries':>9} {'cpu s':>7} {'entries/cpu-s':>14}")
    for batch in sorted({1, 16, args.batch}):
        total = min(args.entries, batch * 5000)
        elapsed, committed = run(total, batch, args.size)
        print(f"{batch:>6} {committed:>9} {elapsed:>7.2f} {committed / elapsed:>14,.0f}")


if __name__ == "__main__":
    main()
