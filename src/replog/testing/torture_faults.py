"""The fault schedule and the nemesis of ``replog torture``.

Theory of operation. ``make_schedule`` draws, from the seed alone, a list of ``FaultStep``s: when
each fault starts (seconds into the run), its kind, its target (``leader`` or a node index),
how long it holds and its parameters; faults never overlap and each is followed by a quiet gap
for recovery. The same seed and the same options give the same schedule; which node is the
leader, and all process timing, vary from run to run. The ``Nemesis`` runs a schedule against a
``TortureCluster`` in its own thread, logs every fault it injects (``faults.jsonl``, stamped by
the run's clock) and always heals what it did: after each step, and once more at the end (resume
every paused node, heal every link, restart every stopped node).

Kinds: ``kill`` (SIGKILL a random node or the leader, restart it later), ``pause`` (SIGSTOP the
leader, SIGCONT later), ``partition`` (a shape of directed links set to drop or cut, or every link
slowed down), ``crash-all`` (SIGKILL every node, restart them all), ``clock`` (a forward jump of
one node's clocks, wall and monotonic, through libfaketime; needs the faketime package).
"""

from __future__ import annotations

import json
import math
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

FAULT_KINDS = ("kill", "pause", "partition", "crash-all", "clock")
PARTITION_SHAPES = ("isolate-leader", "halves", "one-way-leader", "bridge", "slow")
WARMUP_S = 2.0
GAP_S = (1.5, 3.0)
TAIL_S = 3.0
STEPS_MAX = 100_000
LEADERLESS_SHAPES = ("halves", "bridge", "slow")  # partitions that do not need the leader
LEADER_WAIT_S = 5.0  # a step that needs the leader waits this long for one, then is skipped


@dataclass(frozen=True)
class FaultStep:
    at_s: float
    kind: str
    target: str  # "leader", or "node:<index>"
    hold_s: float
    shape: str = ""
    mode: str = ""
    delay_ms: int = 0
    jump_s: float = 0.0
    seed: int = 0  # picks within the step (e.g. the sides of a partition)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0, 0.0)}


def make_schedule(
    seed: int, kinds: tuple[str, ...], duration_s: float, nodes: int
) -> list[FaultStep]:
    """The faults of a run: a pure function of its arguments."""
    for kind in kinds:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r} (known: {', '.join(FAULT_KINDS)})")
    rng = random.Random(seed)
    steps: list[FaultStep] = []
    at_s = WARMUP_S
    while kinds and at_s < duration_s - TAIL_S and len(steps) < STEPS_MAX:
        step = _draw(rng, rng.choice(kinds), round(at_s, 3), nodes)
        steps.append(step)
        at_s += step.hold_s + rng.uniform(*GAP_S)
    return steps


def _draw(rng: random.Random, kind: str, at_s: float, nodes: int) -> FaultStep:
    target = "leader" if rng.random() < 0.5 else f"node:{rng.randrange(nodes)}"
    seed = rng.randrange(2**31)
    if kind == "kill":
        return FaultStep(at_s, kind, target, round(rng.uniform(0.5, 3.0), 3), seed=seed)
    if kind == "pause":
        return FaultStep(at_s, kind, "leader", round(rng.uniform(1.5, 4.0), 3), seed=seed)
    if kind == "partition":
        shape = rng.choice(PARTITION_SHAPES if nodes >= 5 else (*PARTITION_SHAPES[:3], "slow"))
        delay_ms = rng.choice((20, 50, 150)) if shape == "slow" else 0
        mode = "pass" if shape == "slow" else rng.choice(("drop", "cut"))
        hold_s = round(rng.uniform(1.5, 5.0), 3)
        return FaultStep(at_s, kind, "leader", hold_s, shape, mode, delay_ms, seed=seed)
    if kind == "crash-all":
        return FaultStep(at_s, kind, "all", round(rng.uniform(0.2, 1.5), 3), seed=seed)
    assert kind == "clock", kind
    jump_s = round(rng.uniform(1.0, 5.0), 3)
    return FaultStep(at_s, kind, target, 0.5, jump_s=jump_s, seed=seed)


class FaultTarget(Protocol):
    """What the nemesis needs of a cluster (``replog.testing.torture.TortureCluster``)."""

    names: list[str]

    def leader(self) -> tuple[str, int] | None: ...
    def kill(self, name: str) -> None: ...
    def restart(self, name: str) -> None: ...
    def pause(self, name: str) -> None: ...
    def resume(self, name: str) -> None: ...
    def set_link(self, src: str, dst: str, mode: str, delay_ms: int) -> None: ...
    def heal_links(self) -> None: ...
    def jump_clock(self, name: str, jump_s: float) -> bool: ...
    def heal_all(self) -> None: ...


class Nemesis:
    """Runs a schedule in a thread; ``counts`` holds the faults injected by kind."""

    def __init__(
        self,
        cluster: FaultTarget,
        steps: list[FaultStep],
        clock: Callable[[], float],
        log_path: Path,
        on_leader_killed: Callable[[int], None],
        *,
        min_gap_s: float = GAP_S[0],
    ) -> None:
        self.cluster = cluster
        self.min_gap_s = min_gap_s
        self.steps = steps
        self.clock = clock
        self.log_path = log_path
        self.on_leader_killed = on_leader_killed
        self.counts: dict[str, int] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="nemesis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current step, heal everything and wait."""
        self._stop.set()
        self._thread.join()
        self.cluster.heal_all()

    def _run(self) -> None:
        ended_s = -math.inf
        with open(self.log_path, "a", encoding="utf-8") as log:
            for step in self.steps:
                # a step that starts late (slow leader lookup, slow restarts) still leaves the
                # previous fault its quiet gap
                start_s = max(step.at_s, ended_s + self.min_gap_s)
                if self._stop.wait(max(0.0, start_s - self.clock())):
                    return
                try:
                    detail = self._inject(step)
                except Exception as error:  # a harness problem: record, heal, go on
                    detail = f"error: {error!r}"
                    self.errors.append(f"{step.kind} at {step.at_s}s: {error!r}")
                    self.cluster.heal_all()
                event = {"time_s": round(self.clock(), 3), **step.to_json(), "detail": detail}
                log.write(json.dumps(event) + "\n")
                log.flush()
                ended_s = self.clock()

    def _count(self, kind: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1

    def _resolve(self, step: FaultStep) -> tuple[str, int] | None:
        leader = self.cluster.leader()
        deadline = self.clock() + LEADER_WAIT_S
        while leader is None and self.clock() < deadline and not self._stop.wait(0.1):
            leader = self.cluster.leader()
        if step.target.startswith("node:"):
            name = self.cluster.names[int(step.target.split(":")[1]) % len(self.cluster.names)]
            term = leader[1] if leader is not None and leader[0] == name else -1
            return name, term
        return leader

    def _inject(self, step: FaultStep) -> str:
        if step.kind == "crash-all":
            for name in self.cluster.names:
                self.cluster.kill(name)
            self._count("crash-all")
            self._stop.wait(step.hold_s)
            for name in self.cluster.names:
                self.cluster.restart(name)
            return "killed and restarted every node"
        if step.kind == "partition" and step.shape in LEADERLESS_SHAPES:
            return self._partition(step, "")
        target = self._resolve(step)
        if target is None:
            self._count("skipped (no leader)")
            return "skipped: no leader"
        name, term = target
        if step.kind == "kill":
            return self._kill(step, name, term)
        if step.kind == "pause":
            self.cluster.pause(name)
            self._count("pause-leader")
            self._stop.wait(step.hold_s)
            self.cluster.resume(name)
            return f"paused {name} (leader, term {term})"
        if step.kind == "partition":
            return self._partition(step, name)
        assert step.kind == "clock", step.kind
        if not self.cluster.jump_clock(name, step.jump_s):
            self._count("skipped (no faketime)")
            return "skipped: libfaketime is not installed"
        self._count("clock-jump")
        return f"clock of {name} jumped {step.jump_s}s forward"

    def _kill(self, step: FaultStep, name: str, term: int) -> str:
        self.cluster.kill(name)
        if term >= 0:
            self.on_leader_killed(term)
            self._count("kill-leader")
        else:
            self._count("kill")
        self._stop.wait(step.hold_s)
        self.cluster.restart(name)
        role = f"leader, term {term}" if term >= 0 else "not the leader"
        return f"killed {name} ({role}), restarted"

    def _partition(self, step: FaultStep, leader: str) -> str:
        links = partition_links(step, leader, self.cluster.names)
        for src, dst in links:
            self.cluster.set_link(src, dst, step.mode, step.delay_ms)
        self._count(f"partition:{step.shape}")
        self._stop.wait(step.hold_s)
        self.cluster.heal_links()
        shown = ", ".join(f"{s}->{d}" for s, d in links)
        return f"{step.shape} ({step.mode}, {step.delay_ms} ms): {shown}"


def partition_links(step: FaultStep, leader: str, names: list[str]) -> list[tuple[str, str]]:
    """The directed links a partition step changes."""
    rng = random.Random(step.seed)
    others = [n for n in names if n != leader]
    if step.shape == "slow":
        return [(a, b) for a in names for b in names if a != b]
    if step.shape == "isolate-leader":
        return _between([leader], others)
    if step.shape == "one-way-leader":
        return [(leader, other) for other in others]  # the leader cannot send; it still hears
    shuffled = rng.sample(names, len(names))
    if step.shape == "halves":
        minority = shuffled[: (len(names) - 1) // 2]
        return _between(minority, [n for n in names if n not in minority])
    assert step.shape == "bridge", step.shape
    # two sides that cannot talk, and one bridge node that talks to both
    rest = shuffled[1:]  # shuffled[0] is the bridge
    half = len(rest) // 2
    return _between(rest[:half], rest[half:])


def _between(side_a: list[str], side_b: list[str]) -> list[tuple[str, str]]:
    return [(a, b) for a in side_a for b in side_b] + [(b, a) for a in side_a for b in side_b]
