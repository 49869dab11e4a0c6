"""The deterministic cluster simulator: one seed, one world, checked after every event.

Theory of operation
-------------------
``run_seed(seed)`` builds a world from nothing but the seed: one ``random.Random(seed)`` hands
out the generators of every component (fault plan, network, clocks, nodes, clients, nemesis),
so the world and everything in it replays exactly; the trace digest proves it.

A run has two phases (the structure of TigerBeetle's simulator):

1. Safety: ``events`` events with the seed's faults on: lossy, duplicating, reordering links,
   partitions, crashes with restarts from durable state only, pauses, leadership transfers,
   and, with ``disk_faults`` on a store over a simulated disk, I/O errors that stop a node,
   writes lost or torn by its crashes, and bit flips on a minority of the disks, while
   clients read, write and compare-and-set. The checkers in ``invariants`` run after
   every event; the first broken property ends the run.
2. Liveness: the nemesis stops, partitions heal, links calm down, paused nodes resume, crashed
   nodes restart. Within ``liveness_election_timeouts`` election timeouts of virtual time a
   leader must emerge, commit a new command and every node must apply it.

Then the clients' history is checked for linearizability with a bounded search budget:
"not linearizable" is a violation; "unknown" (budget spent) is counted apart, never as a pass.

``run_seeds`` runs many seeds and sums them up in a ``RunSummary`` (events, elections, commits,
reads, faults by kind, violations, seeds per second), keeping the failing seeds' reports.
"""

from __future__ import annotations

import collections
import dataclasses
import random
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from replog.testing.cluster import Cluster, ClusterSettings, StoreFactory
from replog.testing.durable import MemoryStore
from replog.testing.events import EventQueue, Trace
from replog.testing.faults import FaultPlan, Nemesis
from replog.testing.invariants import InvariantViolation, SafetyChecker
from replog.testing.linearizability import Status, check_history
from replog.testing.workload import LivenessProbe, Workload

LIVENESS_EVENTS_MAX = 1_000_000  # a runaway in the liveness phase is reported, not looped on
FAILURES_KEPT_MAX = 8


@dataclass(frozen=True, slots=True)
class SimConfig:
    """What every seed of a run shares. The seed decides everything else."""

    nodes: int = 3
    events: int = 10_000
    clients: int = 3
    keys: int = 2
    tick_ms: int = 10
    vary_tuning: bool = True  # each seed draws its own protocol options and limits
    client_timeout_ms: int = 400
    liveness_election_timeouts: int = 20
    trace_tail_lines: int = 40
    check_linearizability: bool = True
    linearizability_max_states: int = 200_000
    linearizability_time_budget_s: float = 20.0
    ops_max: int = 5000
    disk_faults: bool = False  # I/O errors and bit flips, for stores on a simulated disk
    # Membership changes need to know which disks are damaged (to keep a healthy majority of
    # voters); a test that damages disks outside the plan turns them off.
    membership_changes: bool = True

    def cluster_settings(self, rng: random.Random, pauses: bool) -> ClusterSettings:
        if self.vary_tuning:
            return ClusterSettings.draw(rng, self.nodes, self.tick_ms, pauses)
        return ClusterSettings(nodes=self.nodes, tick_ms=self.tick_ms)


@dataclass(slots=True)
class SeedResult:
    """What one seed's world did, and how it ended."""

    seed: int
    nodes: int
    plan: str = ""
    events: int = 0
    virtual_ms: int = 0
    elections: int = 0
    commits: int = 0
    snapshots: int = 0
    reads: int = 0
    ops: dict[str, int] = field(default_factory=dict)
    faults: dict[str, int] = field(default_factory=dict)
    liveness_ms: int | None = None
    linearizability: str = "skipped"
    violation: str | None = None
    trace_tail: list[str] = field(default_factory=list)
    trace_digest: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def failed(self) -> bool:
        return self.violation is not None

    def to_json(self, with_trace: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "seed": self.seed,
            "nodes": self.nodes,
            "plan": self.plan,
            "events": self.events,
            "virtual_ms": self.virtual_ms,
            "elections": self.elections,
            "commits": self.commits,
            "snapshots": self.snapshots,
            "reads": self.reads,
            "ops": self.ops,
            "faults": self.faults,
            "liveness_ms": self.liveness_ms,
            "linearizability": self.linearizability,
            "violation": self.violation,
            "trace_digest": self.trace_digest,
            "wall_s": round(self.wall_s, 4),
        }
        if with_trace:
            data["trace_tail"] = self.trace_tail
        return data


class _World:
    """Everything one seed builds, wired together."""

    def __init__(
        self,
        seed: int,
        config: SimConfig,
        trace_sink: Callable[[str], None] | None,
        store_factory: StoreFactory,
    ) -> None:
        master = random.Random(seed)
        self.config = config
        self.queue = EventQueue()
        self.trace = Trace(self.queue, config.trace_tail_lines, trace_sink)
        self.faults: collections.Counter[str] = collections.Counter()
        self.checker = SafetyChecker()
        plan_rng = random.Random(master.getrandbits(64))
        self.plan = FaultPlan.draw(plan_rng, config.nodes, config.disk_faults)
        if not config.membership_changes:
            self.plan = dataclasses.replace(self.plan, membership=False)
        tuning_rng = random.Random(master.getrandbits(64))
        self.settings = config.cluster_settings(tuning_rng, self.plan.pauses)
        self.cluster = Cluster(
            self.settings,
            self.plan,
            random.Random(master.getrandbits(64)),
            queue=self.queue,
            trace=self.trace,
            faults=self.faults,
            checker=self.checker,
            store_factory=store_factory,
        )
        self.workload = Workload(
            self.cluster,
            random.Random(master.getrandbits(64)),
            self.checker.provenance,
            clients=config.clients,
            keys=config.keys,
            timeout_ms=config.client_timeout_ms,
            ops_max=config.ops_max,
        )
        nemesis_rng = random.Random(master.getrandbits(64))
        self.nemesis = Nemesis(
            self.plan,
            nemesis_rng,
            queue=self.queue,
            trace=self.trace,
            faults=self.faults,
            target=self.cluster,
        )
        self.events = 0
        self.liveness_ms: int | None = None

    def run(self) -> None:
        self.trace.record(f"WORLD {self.describe()}")
        self.cluster.start()
        self.workload.start()
        self.nemesis.start()
        self._pump(self.config.events, lambda: False)
        self.trace.record("SAFETY PHASE over")
        self.nemesis.stop()
        self.workload.stop()
        self.cluster.repair()
        probe = LivenessProbe(
            self.cluster,
            self.checker.provenance,
            self.trace,
            self.liveness_bound_ms,
            self.config.client_timeout_ms,
        )
        probe.start()
        self._pump(LIVENESS_EVENTS_MAX, lambda: probe.done)
        if not probe.done:
            raise InvariantViolation("liveness", "the event queue ran dry before the probe ended")
        self.liveness_ms = probe.elapsed_ms
        self.workload.close()

    def describe(self) -> str:
        return f"{self.plan.describe()} | {self.settings.describe()}"

    @property
    def liveness_bound_ms(self) -> int:
        timeout_ms = self.settings.election_timeout_ticks * self.settings.tick_ms
        return self.config.liveness_election_timeouts * timeout_ms

    def _pump(self, limit: int, done: Callable[[], bool]) -> None:
        queue = self.queue
        for _ in range(limit):
            if done():
                return
            action = queue.pop()
            if action is None:
                return
            self.events += 1
            action()
        if not done() and limit == LIVENESS_EVENTS_MAX:
            raise InvariantViolation("liveness", f"no progress within {limit} events")


def run_seed(
    seed: int,
    config: SimConfig | None = None,
    trace_sink: Callable[[str], None] | None = None,
    store_factory: StoreFactory = MemoryStore,
    keep_history: bool = False,
) -> SeedResult:
    """Build and run the world of ``seed``; never raises for a violation, reports it."""
    config = config or SimConfig()
    started = time.perf_counter()
    world = _World(seed, config, trace_sink, store_factory)
    result = SeedResult(seed=seed, nodes=config.nodes, plan=world.describe())
    try:
        world.run()
    except InvariantViolation as violation:
        result.violation = str(violation)
    except Exception as error:  # a crash of the system under test is a finding too
        where = traceback.extract_tb(error.__traceback__)[-1]
        result.violation = (
            f"unexpected {type(error).__name__}: {error} "
            f"(at {where.filename}:{where.lineno} in {where.name})"
        )
    if result.violation is None and config.check_linearizability:
        result.linearizability = _check_linearizability(world, config, result)
    _fill(result, world)
    if keep_history:
        result.history = world.workload.history
    result.wall_s = time.perf_counter() - started
    return result


def _check_linearizability(world: _World, config: SimConfig, result: SeedResult) -> str:
    checked = check_history(
        world.workload.history,
        time_budget_s=config.linearizability_time_budget_s,
        max_states=config.linearizability_max_states,
    )
    if checked.status is Status.NOT_LINEARIZABLE:
        detail = " / ".join(checked.explain())
        result.violation = f"linearizability violated: {checked.reason}: {detail}"
    return str(checked.status)


def _fill(result: SeedResult, world: _World) -> None:
    result.events = world.events
    result.virtual_ms = world.queue.now
    result.elections = world.checker.election.elections
    result.commits = world.checker.completeness.commit_index
    result.snapshots = world.cluster.snapshots_taken
    result.ops = dict(sorted(world.workload.outcomes.items()))
    result.reads = world.workload.outcomes["read:ok"]
    result.faults = dict(sorted(world.faults.items()))
    result.liveness_ms = world.liveness_ms
    result.trace_tail = world.trace.tail()
    result.trace_digest = world.trace.digest()


@dataclass(slots=True)
class RunSummary:
    """Totals over the seeds of one run."""

    nodes: int
    seeds: int = 0
    events: int = 0
    elections: int = 0
    commits: int = 0
    reads: int = 0
    snapshots: int = 0
    violations: int = 0
    liveness_ms_max: int = 0  # slowest recovery of the liveness phase over the seeds
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    linearizability: collections.Counter[str] = field(default_factory=collections.Counter)
    failures: list[SeedResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def seeds_per_s(self) -> float:
        return self.seeds / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def events_per_seed(self) -> float:
        return self.events / self.seeds if self.seeds else 0.0

    def add(self, result: SeedResult) -> None:
        self.seeds += 1
        self.events += result.events
        self.elections += result.elections
        self.commits += result.commits
        self.reads += result.reads
        self.snapshots += result.snapshots
        self.liveness_ms_max = max(self.liveness_ms_max, result.liveness_ms or 0)
        self.faults.update(result.faults)
        self.linearizability[result.linearizability] += 1
        if result.failed:
            self.violations += 1
            if len(self.failures) < FAILURES_KEPT_MAX:
                self.failures.append(result)

    def to_json(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes,
            "seeds": self.seeds,
            "events": self.events,
            "events_per_seed": round(self.events_per_seed, 1),
            "elections": self.elections,
            "commits": self.commits,
            "reads": self.reads,
            "snapshots": self.snapshots,
            "faults": dict(sorted(self.faults.items())),
            "linearizability": dict(sorted(self.linearizability.items())),
            "violations": self.violations,
            "liveness_ms_max": self.liveness_ms_max,
            "seeds_per_s": round(self.seeds_per_s, 3),
            "wall_s": round(self.wall_s, 3),
            "failures": [f.to_json() for f in self.failures],
        }


def run_seeds(
    seeds: Iterable[int],
    config: SimConfig | None = None,
    *,
    stop_on_failure: bool = False,
    on_result: Callable[[SeedResult], None] | None = None,
    store_factory: StoreFactory = MemoryStore,
) -> RunSummary:
    """Run every seed; returns the totals (and the first failing seeds' reports)."""
    config = config or SimConfig()
    summary = RunSummary(nodes=config.nodes)
    started = time.perf_counter()
    for seed in seeds:
        result = run_seed(seed, config, store_factory=store_factory)
        summary.add(result)
        if on_result is not None:
            on_result(result)
        if result.failed and stop_on_failure:
            break
    summary.wall_s = time.perf_counter() - started
    return summary
