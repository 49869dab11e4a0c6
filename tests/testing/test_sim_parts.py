"""The simulator's parts on their own: clock, network, partitions, fault plans, the KV machine,
the liveness probe."""

from __future__ import annotations

import collections
import dataclasses
import errno
import random
from collections.abc import Callable

import pytest

from replog.core.types import Heartbeat, Message
from replog.storage import DiskOp
from replog.testing.cluster import Cluster, ClusterSettings
from replog.testing.events import EventQueue, Trace
from replog.testing.faults import PARTITION_SHAPES, FaultPlan, partition_links
from replog.testing.invariants import InvariantViolation, Provenance, SafetyChecker
from replog.testing.network import LinkParams, SimNetwork
from replog.testing.simkv import ABSENT, Command, KvMachine, decode_command, encode_command
from replog.testing.walstore import DATA_DIRECTORY, WalStore
from replog.testing.workload import LivenessProbe

# ---- event queue and trace --------------------------------------------------------------------


def test_queue_runs_in_time_then_scheduling_order() -> None:
    queue = EventQueue()
    ran: list[str] = []
    queue.schedule(5, lambda: ran.append("b"))
    queue.schedule(2, lambda: ran.append("a"))
    queue.schedule(5, lambda: ran.append("c"))
    while (action := queue.pop()) is not None:
        action()
    assert ran == ["a", "b", "c"]
    assert queue.now == 5
    with pytest.raises(AssertionError):
        queue.schedule(4, lambda: None)


def test_queue_has_a_limit() -> None:
    queue = EventQueue(limit=2)
    queue.after(1, lambda: None)
    queue.after(1, lambda: None)
    with pytest.raises(OverflowError):
        queue.after(1, lambda: None)


def test_trace_keeps_a_bounded_tail_and_hashes_everything() -> None:
    queue = EventQueue()
    one, two = Trace(queue, tail_lines=3), Trace(queue, tail_lines=3)
    for i in range(10):
        one.record(f"line {i}")
        two.record(f"line {i}" if i != 4 else "other")
    assert len(one.tail()) == 3
    assert one.tail()[-1].endswith("line 9")
    assert one.tail() == two.tail()
    assert one.digest() != two.digest()


# ---- network ----------------------------------------------------------------------------------


def network(
    params: LinkParams,
) -> tuple[SimNetwork, EventQueue, list[Message], collections.Counter[str]]:
    queue = EventQueue()
    delivered: list[Message] = []
    faults: collections.Counter[str] = collections.Counter()
    net = SimNetwork(
        (1, 2, 3),
        random.Random(1),
        queue=queue,
        trace=Trace(queue),
        faults=faults,
        deliver=delivered.append,
        in_flight_max=50,
    )
    net.set_links({(1, 2): params, (2, 1): params})
    return net, queue, delivered, faults


def heartbeat(seq: int, sender: int = 1, receiver: int = 2) -> Heartbeat:
    return Heartbeat(1, sender, receiver, 0, seq)


def drain(queue: EventQueue) -> None:
    while (action := queue.pop()) is not None:
        action()


def test_network_drops_duplicates_and_reorders() -> None:
    net, queue, delivered, faults = network(
        LinkParams(drop_rate=0.2, dup_rate=0.2, reorder_rate=0.3, delay_max_ms=2)
    )
    for seq in range(1, 41):
        net.send(heartbeat(seq))
    drain(queue)
    seqs = [m.read_seq for m in delivered if isinstance(m, Heartbeat)]
    assert faults["drop"] > 0 and faults["duplicate"] > 0 and faults["reorder"] > 0
    assert len(seqs) == 40 - faults["drop"] + faults["duplicate"]
    assert seqs != sorted(seqs), "reordered"
    assert len(set(seqs)) < len(seqs), "duplicated"


def test_network_partition_cuts_sent_and_in_flight_messages_one_way() -> None:
    net, queue, delivered, _ = network(LinkParams(delay_min_ms=5, delay_max_ms=5))
    net.send(heartbeat(1))
    net.partition({(1, 2)})
    net.send(heartbeat(2))
    net.send(heartbeat(3, sender=2, receiver=1))  # the other direction is open
    drain(queue)
    assert [(m.sender, m.read_seq) for m in delivered if isinstance(m, Heartbeat)] == [(2, 3)]
    net.heal()
    net.send(heartbeat(4))
    drain(queue)
    assert len(delivered) == 2


def test_network_bounds_messages_in_flight_per_link() -> None:
    net, queue, delivered, faults = network(LinkParams(delay_min_ms=10, delay_max_ms=10))
    for seq in range(1, 61):
        net.send(heartbeat(seq))
    drain(queue)
    assert len(delivered) == 50
    assert faults["overflow"] == 10


# ---- partitions -------------------------------------------------------------------------------


def reachable(blocked: frozenset[tuple[int, int]], nodes: range) -> dict[int, set[int]]:
    return {a: {b for b in nodes if b != a and (a, b) not in blocked} for a in nodes}


@pytest.mark.parametrize("seed", range(20))
def test_partition_shapes(seed: int) -> None:
    nodes = range(1, 6)
    rng = random.Random(seed)
    blocked, text = partition_links("isolate-leader", nodes, rng, 3)
    assert reachable(blocked, nodes)[3] == set() and "n3" in text
    blocked, _ = partition_links("split", nodes, rng, None)
    sees = reachable(blocked, nodes)
    sizes = sorted(len(sees[n]) + 1 for n in nodes)
    assert sizes[0] <= 2 and sizes[-1] >= 3  # a minority and a majority
    blocked, text = partition_links("bridge", nodes, rng, None)
    sees = reachable(blocked, nodes)
    bridge = int(text.split()[1][1:])
    assert sees[bridge] == set(nodes) - {bridge}
    assert all(len(sees[n]) < 4 for n in nodes if n != bridge)
    blocked, _ = partition_links("ring", nodes, rng, None)
    assert all(len(peers) == 2 for peers in reachable(blocked, nodes).values())
    blocked, _ = partition_links("one-way", nodes, rng, None)
    assert blocked and all((b, a) not in blocked for a, b in blocked)


def test_fault_plans_differ_per_seed_and_cover_every_kind() -> None:
    plans = [FaultPlan.draw(random.Random(seed), 5) for seed in range(200)]
    assert len({plan.describe() for plan in plans}) == 200
    shapes = {shape for plan in plans for shape in plan.partition_shapes}
    assert shapes == set(PARTITION_SHAPES)
    assert any(plan.crashes for plan in plans) and not all(plan.crashes for plan in plans)
    assert any(plan.pauses for plan in plans) and any(plan.transfers for plan in plans)
    assert all(
        "ring" not in FaultPlan.draw(random.Random(s), 3).partition_shapes for s in range(50)
    )


def test_disk_faults_damage_a_minority_and_leave_the_rest_of_the_plan_alone() -> None:
    for nodes in (3, 5, 7):
        plans = [
            FaultPlan.draw(random.Random(seed), nodes, disk_faults=True) for seed in range(200)
        ]
        assert all(len(plan.damaged) <= (nodes - 1) // 2 for plan in plans)
        assert all(set(plan.damaged) <= set(range(1, nodes + 1)) for plan in plans)
        assert any(plan.damaged for plan in plans) and not all(plan.damaged for plan in plans)
        assert any(plan.disk_errors for plan in plans)
        assert all(("flip" in plan.nemesis_actions()) == bool(plan.damaged) for plan in plans)
        for seed, plan in enumerate(plans[:50]):
            without = FaultPlan.draw(random.Random(seed), nodes)
            assert not without.disk_faults and "disk-error" not in without.nemesis_actions()
            same = dataclasses.replace(plan, disk_faults=False, disk_errors=False, damaged=())
            assert same == without


def wal_cluster(plan: FaultPlan, faults: collections.Counter[str]) -> Cluster:
    queue = EventQueue()
    return Cluster(
        ClusterSettings(nodes=3),
        plan,
        random.Random(4),
        queue=queue,
        trace=Trace(queue),
        faults=faults,
        checker=SafetyChecker(),
        store_factory=WalStore,
    )


def run_until(cluster: Cluster, done: Callable[[], bool], events: int = 20_000) -> None:
    for _ in range(events):
        if done():
            return
        action = cluster.queue.pop()
        assert action is not None
        action()
    raise AssertionError("not done in time")


class _Request:
    """A client request nobody waits for."""

    open = True

    def finish(self, outcome: str, value: int | None) -> None:
        self.open = False


@pytest.mark.parametrize("fault", ["disk:storage-failed", "disk:power-cut"])
def test_a_failed_save_stops_the_node_until_it_restarts_through_recovery(fault: str) -> None:
    faults: collections.Counter[str] = collections.Counter()
    cluster = wal_cluster(FaultPlan(disk_faults=True, disk_errors=True), faults)
    cluster.start()
    run_until(cluster, lambda: cluster.leader() is not None)
    leader = cluster.leader()
    assert leader is not None
    if fault == "disk:power-cut":
        assert cluster.cut_power(leader, DiskOp.FSYNC, 0)
    else:
        assert cluster.inject_disk_error(leader, DiskOp.FSYNC, errno.EIO, 0)
    # An idle leader has nothing to fsync (a commit alone is not synced): give it a write.
    cluster.propose(leader, Command("w1", "write", "k", 1), _Request())
    run_until(cluster, lambda: not cluster.is_up(leader))
    assert faults[fault] == 1
    run_until(cluster, lambda: cluster.is_up(leader))
    assert "refused-start" not in faults
    run_until(cluster, lambda: cluster.nodes[leader].kv.applied_index > 0)


def test_recovery_refusing_a_disk_outside_the_damaged_set_is_a_violation() -> None:
    cluster = wal_cluster(FaultPlan(disk_faults=True), collections.Counter())
    cluster.start()
    run_until(cluster, lambda: cluster.leader() is not None)
    cluster.crash(1)
    store = cluster.nodes[1].store
    assert isinstance(store, WalStore)
    segment = next(n for n in store.disk.list_dir(DATA_DIRECTORY) if n.endswith(".wal"))
    store.disk.flip_bit(f"{DATA_DIRECTORY}/{segment}", 20)
    with pytest.raises(InvariantViolation, match=r"recovery violated.*without media damage"):
        cluster.restart(1)


def test_cluster_settings_never_combine_lease_reads_with_pauses() -> None:
    for seed in range(200):
        settings = ClusterSettings.draw(random.Random(seed), 3, 10, pauses=True)
        assert not settings.lease_reads
        settings.raft_config(1)  # a valid core configuration
    drawn = [ClusterSettings.draw(random.Random(s), 3, 10, pauses=False) for s in range(200)]
    assert any(s.lease_reads for s in drawn) and any(not s.pre_vote for s in drawn)


# ---- the KV state machine ---------------------------------------------------------------------


def test_kv_write_cas_and_dedup() -> None:
    kv = KvMachine()
    assert kv.apply(1, Command("c1", "cas", "k", 5, ABSENT))
    assert not kv.apply(2, Command("c2", "cas", "k", 6, 4))
    assert kv.apply(3, Command("c3", "write", "k", 7))
    assert kv.apply(4, Command("c1", "cas", "k", 5, ABSENT)), "a repeat keeps its first outcome"
    assert kv.read("k") == 7
    kv.skip(5)
    copy = KvMachine()
    copy.restore(kv.snapshot_data())
    assert (copy.applied_index, copy.values, copy.outcomes) == (5, {"k": 7}, kv.outcomes)
    assert copy.snapshot_data() == kv.snapshot_data()


def test_command_codec_round_trips_and_rejects_garbage() -> None:
    command = Command("c9", "cas", "k1", 3, 2)
    assert decode_command(encode_command(command)) == command
    assert decode_command(b"\x80\x04garbage") is None
    assert decode_command(b'{"id":"c","op":"drop","key":"k","value":1}') is None
    assert decode_command(b'{"id":"c","op":"cas","key":"k","value":1}') is None
    assert decode_command(b'{"id":"c","op":"write","key":"k","value":1,"expect":2}') is None


# ---- the liveness probe -----------------------------------------------------------------------


def test_liveness_probe_reports_a_cluster_that_cannot_make_progress() -> None:
    queue = EventQueue()
    trace = Trace(queue)
    cluster = Cluster(
        ClusterSettings(nodes=3),
        FaultPlan(),
        random.Random(4),
        queue=queue,
        trace=trace,
        faults=collections.Counter(),
        checker=SafetyChecker(),
    )
    cluster.start()
    for node in (1, 2):
        cluster.crash(node)
    probe = LivenessProbe(cluster, Provenance(), trace, deadline_ms=500, timeout_ms=100)
    probe.start()
    with pytest.raises(InvariantViolation, match=r"^liveness violated.*no probe committed"):
        drain(queue)
    assert not probe.done


def test_liveness_probe_passes_on_a_healthy_cluster() -> None:
    queue = EventQueue()
    trace = Trace(queue)
    checker = SafetyChecker()
    cluster = Cluster(
        ClusterSettings(nodes=5),
        FaultPlan(),
        random.Random(4),
        queue=queue,
        trace=trace,
        faults=collections.Counter(),
        checker=checker,
    )
    cluster.start()
    probe = LivenessProbe(cluster, checker.provenance, trace, deadline_ms=2000, timeout_ms=100)
    probe.start()
    while not probe.done and (action := queue.pop()) is not None:
        action()
    assert probe.done
    assert probe.elapsed_ms < 2000


def test_repair_reports_a_majority_that_stays_down() -> None:
    cluster = wal_cluster(FaultPlan(), collections.Counter())
    cluster.start()
    for node_id in (1, 2):
        cluster.crash(node_id)
        cluster.nodes[node_id].refused = "damaged"
    with pytest.raises(InvariantViolation, match=r"^liveness violated.*\[1, 2\]"):
        cluster.repair()
