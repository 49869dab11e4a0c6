"""What goes wrong in one simulated world: the fault plan, partition shapes and the nemesis.

Theory of operation
-------------------
Every seed is a different world. ``FaultPlan.draw`` turns the seed's fault generator into a
plan: which kinds of faults are on at all, and how hard each one hits (loss, duplication and
reordering rates, delays, which partition shapes, crashes, pauses, leadership transfers, how
often the nemesis acts, how long nodes stay down, how often nodes snapshot, how far their
clocks drift). Some seeds get a calm world, some a storm; most get a mix. ``link_params``
then gives each directed link its own variation of the plan's rates.

With ``disk_faults`` (stores on a simulated disk) the plan also draws disk damage: whether
chosen calls fail with EIO or ENOSPC, and the damaged set, the nodes (at most a minority,
fixed for the whole seed) whose WAL segments and snapshot files get bit flips. A damaged node
whose recovery refuses stays down; as the set is a minority, a majority is always left for
the liveness phase. The disk draws come last, so the rest of a world is the same with or
without them.

The ``Nemesis`` is the adversary of the safety phase. At intervals drawn from the plan it picks
one enabled action: cut the network into a shape, heal it, crash a node (and schedule its
restart), pause a node (a stop-the-world stall: it neither ticks nor receives), ask the leader
to hand leadership over, schedule an I/O error on one of an up node's next disk calls (the
node stops when its save fails, and restarts through recovery), or flip a bit on a damaged
node's disk. With disk faults, some crashes are power cuts in the middle of a coming disk call
(mostly the fsync of a batch just written), which the crash then loses or tears.

Partition shapes follow the usual catalogue of partition testing: an isolated leader, a
majority/minority split, a bridge (one node sees both halves, which cannot see each other), a
ring (each node sees only its two neighbours), and one-way loss. ``stop`` ends the safety
phase; what remains broken is repaired by the simulator before the liveness phase.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from replog.storage import DiskOp
from replog.testing.events import EventQueue, Trace
from replog.testing.network import Link, LinkParams

PARTITION_SHAPES = ("isolate-leader", "split", "bridge", "ring", "one-way")
DISK_ERROR_OPS = (
    DiskOp.WRITE,
    DiskOp.WRITE,
    DiskOp.FSYNC,
    DiskOp.FSYNC,
    DiskOp.CREATE,
    DiskOp.FSYNC_DIR,
    DiskOp.RENAME,
    DiskOp.REMOVE,
)
POWER_CUT_OPS = (DiskOp.FSYNC, DiskOp.FSYNC, DiskOp.FSYNC, DiskOp.WRITE, DiskOp.RENAME)
DISK_ERRNOS = {errno.EIO: "eio", errno.ENOSPC: "enospc"}


@dataclass(frozen=True, slots=True)
class FaultPlan:
    """The faults of one seed's world. Times in virtual ms; rates per message."""

    drop_rate: float = 0.0
    dup_rate: float = 0.0
    reorder_rate: float = 0.0
    delay_max_ms: int = 3
    partition_shapes: tuple[str, ...] = ()
    crashes: bool = False
    pauses: bool = False
    transfers: bool = False
    membership: bool = False  # add learners, promote them, remove voters (the leader too)
    nemesis_interval_ms: tuple[int, int] = (100, 400)
    downtime_ms: tuple[int, int] = (50, 500)
    snapshot_interval: int = 20
    keep_entries: int = 0
    tick_jitter_ms: int = 0
    disk_faults: bool = False  # the plan governs disk damage (damage outside it is a finding)
    disk_errors: bool = False
    damaged: tuple[int, ...] = ()  # nodes whose disks get bit flips (a minority)

    @staticmethod
    def draw(rng: random.Random, nodes: int, disk_faults: bool = False) -> FaultPlan:
        def maybe(p: float, low: float, high: float) -> float:
            return rng.uniform(low, high) if rng.random() < p else 0.0

        shapes = tuple(
            shape
            for shape in PARTITION_SHAPES
            if rng.random() < 0.5 and (shape != "ring" or nodes >= 4)
        )
        gap = rng.choice((60, 150, 400))
        down = rng.choice((40, 200, 800))
        plan = FaultPlan(
            drop_rate=maybe(0.5, 0.01, 0.2),
            dup_rate=maybe(0.4, 0.01, 0.1),
            reorder_rate=maybe(0.5, 0.02, 0.2),
            delay_max_ms=rng.choice((2, 5, 15, 40)),
            partition_shapes=shapes,
            crashes=rng.random() < 0.6,
            pauses=rng.random() < 0.3,
            transfers=rng.random() < 0.3,
            nemesis_interval_ms=(gap // 2, gap * 2),
            downtime_ms=(down // 4, down),
            snapshot_interval=rng.choice((4, 10, 30, 100)),
            keep_entries=rng.choice((0, 0, 3, 20)),
            tick_jitter_ms=rng.choice((0, 1, 3)),
        )
        plan = dataclasses.replace(plan, membership=rng.random() < 0.35)
        if disk_faults:
            damaged_count = rng.randint(1, (nodes - 1) // 2) if rng.random() < 0.4 else 0
            plan = dataclasses.replace(
                plan,
                disk_faults=True,
                disk_errors=rng.random() < 0.5,
                damaged=tuple(sorted(rng.sample(range(1, nodes + 1), damaged_count))),
            )
        return plan

    def describe(self) -> str:
        parts = [
            f"drop={self.drop_rate:.3f}",
            f"dup={self.dup_rate:.3f}",
            f"reorder={self.reorder_rate:.3f}",
            f"delay<={self.delay_max_ms}ms",
            f"partitions={','.join(self.partition_shapes) or 'none'}",
            f"crashes={'on' if self.crashes else 'off'}",
            f"pauses={'on' if self.pauses else 'off'}",
            f"transfers={'on' if self.transfers else 'off'}",
            f"membership={'on' if self.membership else 'off'}",
            f"nemesis every {self.nemesis_interval_ms[0]}-{self.nemesis_interval_ms[1]}ms",
            f"snapshot every {self.snapshot_interval} keep {self.keep_entries}",
            f"tick jitter {self.tick_jitter_ms}ms",
        ]
        if self.disk_faults:
            flips = ",".join(f"n{n}" for n in self.damaged) or "none"
            parts.append(f"disk errors={'on' if self.disk_errors else 'off'} bit flips={flips}")
        return " ".join(parts)

    def nemesis_actions(self) -> tuple[str, ...]:
        actions: list[str] = []
        if self.partition_shapes:
            actions += ["partition", "heal"]
        if self.crashes:
            actions += ["crash", "crash"]
        if self.pauses:
            actions.append("pause")
        if self.transfers:
            actions.append("transfer")
        if self.membership:
            actions += ["member", "member"]
        if self.disk_errors:
            actions.append("disk-error")
        if self.damaged:
            actions.append("flip")
        return tuple(actions)


def link_params(
    plan: FaultPlan, rng: random.Random, nodes: Sequence[int]
) -> dict[Link, LinkParams]:
    """Each directed link gets the plan's rates scaled by its own factor in [0.5, 1.5)."""
    links: dict[Link, LinkParams] = {}
    for sender in nodes:
        for receiver in nodes:
            if sender == receiver:
                continue
            scale = rng.uniform(0.5, 1.5)
            links[(sender, receiver)] = LinkParams(
                drop_rate=plan.drop_rate * scale,
                dup_rate=plan.dup_rate * scale,
                reorder_rate=plan.reorder_rate * scale,
                delay_min_ms=1,
                delay_max_ms=max(1, round(plan.delay_max_ms * scale)),
                reorder_delay_ms=max(2, plan.delay_max_ms * 4),
            )
    return links


def partition_links(
    shape: str, nodes: Sequence[int], rng: random.Random, leader: int | None
) -> tuple[frozenset[Link], str]:
    """The directed links a partition of ``shape`` blocks, and a description of it."""
    order = list(nodes)
    rng.shuffle(order)
    if shape == "isolate-leader":
        target = leader if leader is not None else order[0]
        rest = [n for n in order if n != target]
        return _between([target], rest), f"isolate n{target}"
    if shape == "split":
        minority = rng.randint(1, (len(order) - 1) // 2)
        small, large = order[:minority], order[minority:]
        return _between(small, large), f"split {_names(small)} | {_names(large)}"
    if shape == "bridge":
        bridge, rest = order[0], order[1:]
        half = rng.randint(1, len(rest) - 1)
        left, right = rest[:half], rest[half:]
        blocked = _between(left, right)
        return blocked, f"bridge n{bridge} between {_names(left)} and {_names(right)}"
    if shape == "ring":
        size = len(order)
        neighbours = {(order[i], order[(i + 1) % size]) for i in range(size)}
        neighbours |= {(b, a) for a, b in neighbours}
        ring_blocked = {(a, b) for a in order for b in order if a != b and (a, b) not in neighbours}
        return frozenset(ring_blocked), f"ring {'-'.join(f'n{n}' for n in order)}"
    assert shape == "one-way", shape
    source, targets = order[0], order[1 : 1 + rng.randint(1, len(order) - 1)]
    if rng.random() < 0.5:
        links = frozenset((source, t) for t in targets)
        return links, f"one-way: n{source} cannot send to {_names(targets)}"
    links = frozenset((t, source) for t in targets)
    return links, f"one-way: n{source} cannot hear from {_names(targets)}"


def _between(a: Sequence[int], b: Sequence[int]) -> frozenset[Link]:
    return frozenset({(x, y) for x in a for y in b} | {(y, x) for x in a for y in b})


def _names(nodes: Sequence[int]) -> str:
    return ",".join(f"n{n}" for n in sorted(nodes))


class FaultTarget(Protocol):
    """What the nemesis can do to a cluster."""

    node_ids: tuple[int, ...]

    def leader(self) -> int | None: ...
    def is_up(self, node_id: int) -> bool: ...
    def crash(self, node_id: int) -> None: ...
    def restart(self, node_id: int) -> None: ...
    def pause(self, node_id: int, duration_ms: int) -> None: ...
    def transfer_leader(self, leader: int, to: int) -> None: ...
    def change_membership(self, rng: random.Random) -> str | None: ...
    def partition(self, blocked: frozenset[Link], description: str) -> None: ...
    def heal(self) -> None: ...
    def inject_disk_error(self, node_id: int, op: DiskOp, error: int, after: int) -> bool: ...
    def flip_bit(self, node_id: int) -> bool: ...
    def cut_power(self, node_id: int, op: DiskOp, after: int) -> bool: ...


class Nemesis:
    """Injects the plan's faults into a cluster during the safety phase."""

    def __init__(
        self,
        plan: FaultPlan,
        rng: random.Random,
        *,
        queue: EventQueue,
        trace: Trace,
        faults: collections.Counter[str],
        target: FaultTarget,
    ) -> None:
        self._plan = plan
        self._rng = rng
        self._queue = queue
        self._trace = trace
        self._faults = faults
        self._target = target
        self._actions = plan.nemesis_actions()
        self._running = False

    def start(self) -> None:
        if self._actions:
            self._running = True
            self._schedule()

    def stop(self) -> None:
        self._running = False

    def _schedule(self) -> None:
        low, high = self._plan.nemesis_interval_ms
        self._queue.after(self._rng.randint(low, high), self._act)

    def _act(self) -> None:
        if not self._running:
            return
        self._schedule()
        action = self._rng.choice(self._actions)
        if action == "partition":
            self._partition()
        elif action == "heal":
            self._faults["heal"] += 1
            self._target.heal()
        elif action == "crash":
            self._crash()
        elif action == "pause":
            self._pause()
        elif action == "disk-error":
            self._disk_error()
        elif action == "flip":
            self._flip()
        elif action == "member":
            change = self._target.change_membership(self._rng)
            self._faults[f"member:{change}" if change else "member:refused"] += 1
        else:
            self._transfer()

    def _partition(self) -> None:
        shape = self._rng.choice(self._plan.partition_shapes)
        nodes = self._target.node_ids
        blocked, description = partition_links(shape, nodes, self._rng, self._target.leader())
        self._faults[f"partition:{shape}"] += 1
        self._target.partition(blocked, description)

    def _crash(self) -> None:
        up = [n for n in self._target.node_ids if self._target.is_up(n)]
        if not up:
            return
        leader = self._target.leader()
        victim = leader if leader is not None and self._rng.random() < 0.3 else self._rng.choice(up)
        if self._plan.disk_faults and self._rng.random() < 0.3:
            # The power goes out in the middle of one of the victim's coming disk calls; the
            # cluster stops it then and restarts it after a downtime.
            op = self._rng.choice(POWER_CUT_OPS)
            self._target.cut_power(victim, op, self._rng.randint(0, 1))
            return
        self._faults["crash"] += 1
        self._target.crash(victim)
        low, high = self._plan.downtime_ms
        self._queue.after(self._rng.randint(low, high), lambda: self._restart(victim))

    def _restart(self, node_id: int) -> None:
        if self._running and not self._target.is_up(node_id):
            self._faults["restart"] += 1
            self._target.restart(node_id)

    def _pause(self) -> None:
        up = [n for n in self._target.node_ids if self._target.is_up(n)]
        if up:
            self._faults["pause"] += 1
            self._target.pause(self._rng.choice(up), self._rng.randint(20, 400))

    def _disk_error(self) -> None:
        up = [n for n in self._target.node_ids if self._target.is_up(n)]
        if not up:
            return
        node = self._rng.choice(up)
        op = self._rng.choice(DISK_ERROR_OPS)
        error = self._rng.choice(sorted(DISK_ERRNOS))
        if self._target.inject_disk_error(node, op, error, self._rng.randint(0, 2)):
            self._faults[f"disk:inject-{DISK_ERRNOS[error]}"] += 1

    def _flip(self) -> None:
        node = self._rng.choice(self._plan.damaged)
        if self._target.flip_bit(node):
            self._faults["disk:bit-flip"] += 1

    def _transfer(self) -> None:
        leader = self._target.leader()
        if leader is None:
            return
        others = [n for n in self._target.node_ids if n != leader]
        self._faults["transfer"] += 1
        self._target.transfer_leader(leader, self._rng.choice(others))
