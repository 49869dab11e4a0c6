"""Simulated clients: register operations against random nodes, and their Jepsen-style history.

Theory of operation
-------------------
Each client process runs one operation at a time: it picks a node and an operation (a read, a
write of a fresh unique value, or a compare-and-set from a value it has seen to a fresh one)
on one of a few keys, records an ``invoke`` event, sends it, and records the completion:

- ``ok``: the node applied the command (for a cas: the comparison held), or served the read
  once it had applied the read index the leader confirmed;
- ``fail``: definitely no effect: refused before entering the log (``NotLeader`` raised at once,
  node down), a cas whose comparison failed when applied, or any read that did not complete;
- ``info``: unknown: a write that timed out or whose node crashed; it may still commit.

A process that saw ``info`` is retired and continues under a new process id, as in Jepsen, so
no process ever has two operations open. Every write and cas gets a unique command id, which is
registered with the provenance checker before it is proposed. The history is a list of event
dicts in real-time order, bounded by ``ops_max`` operations, ready for
``replog.testing.linearizability.check_history``.

``LivenessProbe`` runs the liveness phase: once the world is repaired, it proposes a probe
command through the current leader until one commits, then waits for every node to apply it,
all before a deadline; missing the deadline is a liveness violation.
"""

from __future__ import annotations

import collections
import random
from collections.abc import Callable
from typing import Any

from replog.testing.cluster import Cluster
from replog.testing.events import EventQueue, Trace
from replog.testing.invariants import InvariantViolation, Provenance
from replog.testing.simkv import ABSENT, Command

RECENT_VALUES_MAX = 4


class Operation:
    """One client operation in flight; the cluster answers it through ``finish``."""

    __slots__ = ("f", "key", "node", "op_id", "open", "process", "value", "workload")

    def __init__(
        self,
        workload: Workload,
        op_id: int,
        process: int,
        *,
        f: str,
        key: str,
        value: int | list[int | None] | None,
        node: int,
    ) -> None:
        self.workload = workload
        self.op_id = op_id
        self.process = process
        self.f = f
        self.key = key
        self.value = value
        self.node = node
        self.open = True

    def finish(self, outcome: str, value: int | None) -> None:
        if self.open:
            self.open = False
            self.workload.complete(self, outcome, value)


class Workload:
    """Client processes issuing operations and recording the history."""

    def __init__(
        self,
        cluster: Cluster,
        rng: random.Random,
        provenance: Provenance,
        *,
        clients: int = 3,
        keys: int = 3,
        timeout_ms: int = 400,
        think_ms: int = 20,
        ops_max: int = 5000,
    ) -> None:
        self._cluster = cluster
        self._queue = cluster.queue
        self._rng = rng
        self._provenance = provenance
        self._clients = clients
        self._keys = tuple(f"k{i}" for i in range(keys))
        self._timeout_ms = timeout_ms
        self._think_ms = think_ms
        self._ops_max = ops_max
        self._process = list(range(clients))
        self._recent: dict[str, collections.deque[int]] = {
            k: collections.deque(maxlen=RECENT_VALUES_MAX) for k in self._keys
        }
        self._next_value = 0
        self._running = False
        self._open: dict[int, Operation] = {}
        self.ops = 0
        self.history: list[dict[str, Any]] = []
        self.outcomes: collections.Counter[str] = collections.Counter()

    def start(self) -> None:
        self._running = True
        for client in range(self._clients):
            self._queue.after(self._rng.randint(0, self._think_ms), self._invoker(client))

    def stop(self) -> None:
        """No new operations; those in flight still complete or time out."""
        self._running = False

    def close(self) -> None:
        """End of the run: operations still open are recorded as unknown (reads as failed)."""
        for op in list(self._open.values()):
            op.finish("fail" if op.f == "read" else "info", None)

    def _invoker(self, client: int) -> Callable[[], None]:
        return lambda: self._invoke(client)

    def _invoke(self, client: int) -> None:
        if not self._running or self.ops >= self._ops_max:
            return
        self.ops += 1
        rng = self._rng
        key = rng.choice(self._keys)
        node = rng.choice(self._cluster.node_ids)
        roll = rng.random()
        f = "read" if roll < 0.4 else ("write" if roll < 0.8 else "cas")
        value: int | list[int | None] | None = None
        if f != "read":
            self._next_value += 1
            fresh = self._next_value
            if f == "cas":
                recent = self._recent[key]
                value = [rng.choice(recent) if recent else None, fresh]
            else:
                value = fresh
        op = Operation(self, self.ops, self._process[client], f=f, key=key, value=value, node=node)
        self._open[op.op_id] = op
        self._record(op, "invoke", value)
        self._queue.after(self._timeout_ms, op_timeout(op))
        self._send(op)

    def _send(self, op: Operation) -> None:
        if op.f == "read":
            self._cluster.read(op.node, op.key, f"r{op.op_id}".encode(), op)
            return
        command_id = f"c{op.op_id}"
        self._provenance.observe_proposed(command_id)
        if op.f == "write":
            assert isinstance(op.value, int)
            command = Command(command_id, "write", op.key, op.value)
        else:
            assert isinstance(op.value, list)
            expect, new = op.value
            assert new is not None
            command = Command(command_id, "cas", op.key, new, ABSENT if expect is None else expect)
        self._cluster.propose(op.node, command, op)

    def complete(self, op: Operation, outcome: str, value: int | None) -> None:
        del self._open[op.op_id]
        self.outcomes[f"{op.f}:{outcome}"] += 1
        self._record(op, outcome, value if op.f == "read" and outcome == "ok" else op.value)
        if op.f == "read" and outcome == "ok" and value is not None:
            self._remember(op.key, value)
        elif op.f == "write" and outcome == "ok":
            assert isinstance(op.value, int)
            self._remember(op.key, op.value)
        client = op.process % self._clients
        if outcome == "info":
            self._process[client] += self._clients  # a retired process never invokes again
        if self._running:
            self._queue.after(self._rng.randint(1, self._think_ms), self._invoker(client))

    def _remember(self, key: str, value: int) -> None:
        recent = self._recent[key]
        if value not in recent:
            recent.append(value)

    def _record(self, op: Operation, kind: str, value: object) -> None:
        self.history.append(
            {
                "process": op.process,
                "type": kind,
                "f": op.f,
                "key": op.key,
                "value": value,
                "time": self._queue.now,
            }
        )


def op_timeout(op: Operation) -> Callable[[], None]:
    def fire() -> None:
        op.finish("fail" if op.f == "read" else "info", None)

    return fire


class LivenessProbe:
    """The liveness phase: a command must commit and reach every node before a deadline."""

    def __init__(
        self,
        cluster: Cluster,
        provenance: Provenance,
        trace: Trace,
        deadline_ms: int,
        timeout_ms: int,
    ) -> None:
        self._cluster = cluster
        self._queue: EventQueue = cluster.queue
        self._provenance = provenance
        self._trace = trace
        self._deadline = self._queue.now + deadline_ms
        self._timeout_ms = timeout_ms
        self._started = self._queue.now
        self._attempts = 0
        self._pending: _ProbeRequest | None = None
        self._target: int | None = None  # applied index every member must reach
        self._members: frozenset[int] = frozenset(cluster.node_ids)
        self.done = False
        self.elapsed_ms = 0

    def start(self) -> None:
        self._queue.after(0, self._step)

    @property
    def now(self) -> int:
        return self._queue.now

    def committed(self, node: int) -> None:
        raft = self._cluster.nodes[node].raft
        self._target = raft.applied_index if raft is not None else None
        if raft is not None:
            self._members = raft.membership.members()  # removed nodes no longer hear the log
        self._trace.record(f"LIVENESS probe committed, every member must apply {self._target}")

    def _step(self) -> None:
        if self.done:
            return
        now = self._queue.now
        if now > self._deadline:
            self._fail()
        if self._target is not None and self._all_applied(self._target):
            self.done = True
            self.elapsed_ms = now - self._started
            self._trace.record(f"LIVENESS reached after {self.elapsed_ms}ms")
            return
        pending = self._pending
        if self._target is None and (pending is None or not pending.open):
            self._propose()
        self._queue.after(self._cluster.settings.tick_ms, self._step)

    def _propose(self) -> None:
        leader = self._cluster.leader()
        if leader is None:
            return
        self._attempts += 1
        command_id = f"probe{self._attempts}"
        self._provenance.observe_proposed(command_id)
        request = _ProbeRequest(self, leader, self._queue.now + self._timeout_ms)
        self._pending = request
        self._cluster.propose(
            leader, Command(command_id, "write", "probe", self._attempts), request
        )

    def _all_applied(self, index: int) -> bool:
        """Every member that could start has applied ``index`` (a node whose store refused to
        recover stays down; the simulator damages at most a minority of disks)."""
        for node_id, node in self._cluster.nodes.items():
            if node_id not in self._members:
                continue
            if node.refused is None and (node.raft is None or node.raft.applied_index < index):
                return False
        return True

    def _fail(self) -> None:
        states = "; ".join(node.describe() for node in self._cluster.nodes.values())
        stage = "no probe committed" if self._target is None else f"not all applied {self._target}"
        raise InvariantViolation(
            "liveness",
            f"{stage} within {self._deadline - self._started}ms of the repaired world "
            f"({self._attempts} attempts): {states}",
        )


class _ProbeRequest:
    __slots__ = ("_expires", "_open", "_probe", "node")

    def __init__(self, probe: LivenessProbe, node: int, expires: int) -> None:
        self._probe = probe
        self.node = node
        self._expires = expires
        self._open = True

    @property
    def open(self) -> bool:
        return self._open and self._probe.now < self._expires

    def finish(self, outcome: str, value: int | None) -> None:
        if not self._open:
            return
        self._open = False
        if outcome == "ok":
            self._probe.committed(self.node)
