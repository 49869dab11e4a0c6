"""Node: the runtime that drives the core with real storage and TCP, in one event loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replog.core import Entry, EntryKind, Ready, Role, SoftState
from replog.errors import Unavailable, UnknownOutcome
from replog.server import node as node_module
from replog.server.node import (
    REQUEST_ID_BYTES,
    Node,
    NodeOptions,
    NodeStopped,
    _Deadlines,
    _Proposal,
)
from replog.storage.disk import OpenMode, OsDisk, OsFile
from replog.testing.machines import Register
from replog.testing.processes import free_ports

EMPTY_READY = Ready(SoftState(Role.LEADER, 1), None, (), None, (), (), (), False)
FAST = NodeOptions(tick_ms=5, heartbeat_ms=20, election_timeout_ms=150, request_timeout_ms=3000)


def make_nodes(
    tmp: Path,
    count: int,
    options: NodeOptions = FAST,
    machine: Callable[[], Register] = Register,
) -> list[Node]:
    ports = free_ports(count)
    peers = {f"n{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    return [
        Node(machine(), name=name, data_dir=str(tmp / name), peers=peers, options=options)
        for name in peers
    ]


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[list[Node]]:
    nodes = make_nodes(tmp_path, 3)
    for node in nodes:
        await node.start()
    yield nodes
    for node in nodes:
        if not node.stopped:
            await node.stop(transfer=False)


async def leader_of(nodes: list[Node], timeout_s: float = 5.0) -> Node:
    async with asyncio.timeout(timeout_s):
        while True:
            leaders = [n for n in nodes if not n.stopped and n.is_leader]
            if len(leaders) == 1:
                return leaders[0]
            await asyncio.sleep(0.01)


def machine(node: Node) -> Register:
    assert isinstance(node.machine, Register)
    return node.machine


async def test_a_write_through_any_node_applies_everywhere(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    assert await leader.propose(b"a") == 1
    assert await follower.propose(b"b") == 2  # forwarded to the leader through the core
    for node in cluster:
        assert await node.wait_applied(lambda node=node: len(machine(node).items) == 2, 3)
        assert machine(node).items == [b"a", b"b"]


async def test_a_drained_leader_answers_its_writes_before_it_stops(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    writes = [leader.submit(b"w%d" % i) for i in range(200)]
    await leader.drain(timeout_s=3)
    assert not leader.is_leader  # handed over first
    assert all(write.done() for write in writes)
    await leader.stop(transfer=False)
    assert [write.exception() for write in writes] == [None] * 200
    others = [n for n in cluster if n is not leader]
    assert await others[0].wait_applied(lambda: len(machine(others[0]).items) == 200, 3)


async def test_writes_through_a_follower_outlive_the_leaders_drain(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    writes = [follower.submit(b"f%d" % i) for i in range(100)]
    drained = asyncio.create_task(leader.drain(timeout_s=3))
    for i in range(100, 300):  # forwarded while leadership moves
        writes.append(follower.submit(b"f%d" % i))
        await asyncio.sleep(0.001)
    await drained
    await leader.stop(transfer=False)
    outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, BaseException)] == []
    assert await follower.wait_applied(lambda: len(machine(follower).items) == 300, 3)


class OnceRegister(Register):
    """Applies a command at most once, as a store that deduplicates by idempotency key does."""

    def apply(self, command: bytes) -> object:
        return "again" if command in self.items else super().apply(command)


async def test_idempotent_writes_forwarded_to_a_leader_that_died_commit_under_the_next(
    tmp_path: Path,
) -> None:
    """Forwarded proposals die with a leader that never appended them; nothing tells the
    follower. It proposes its idempotent ones again once a new leader is known, instead of
    answering ``UnknownOutcome`` at their deadline. The others it must not send twice."""
    nodes = make_nodes(tmp_path, 3, machine=OnceRegister)
    for node in nodes:
        await node.start()
    try:
        leader = await leader_of(nodes)
        follower = next(n for n in nodes if n is not leader)
        await leader.stop(transfer=False)  # the follower still takes it for the leader
        keyed = [follower.submit(b"k%d" % i, timeout_s=10, idempotent=True) for i in range(20)]
        plain = [follower.submit(b"p%d" % i, timeout_s=2) for i in range(5)]
        outcomes = await asyncio.gather(*keyed, return_exceptions=True)
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        lost = await asyncio.gather(*plain, return_exceptions=True)
        assert all(isinstance(o, UnknownOutcome) for o in lost)
        items = machine(follower).items
        assert sorted(items) == sorted(b"k%d" % i for i in range(20))
    finally:
        for node in nodes:
            if not node.stopped:
                await node.stop(transfer=False)


@pytest.mark.parametrize(("copies", "fails"), [(1, True), (2, False)])
async def test_a_write_loses_its_slot_only_if_it_was_proposed_once(
    tmp_path: Path, copies: int, fails: bool
) -> None:
    """When another entry commits in the slot a write was appended at, that copy is gone for
    good: a write proposed once fails as ``Unavailable``. One proposed again may still commit
    elsewhere, so it keeps waiting (for its other copy or its deadline)."""
    (node,) = make_nodes(tmp_path, 1)
    await node.start()
    try:
        await leader_of([node])
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        mine, other = b"m" * REQUEST_ID_BYTES, b"o" * REQUEST_ID_BYTES
        proposal = _Proposal(mine, mine + b"w", future, 1e18, idempotent=True, copies=copies)
        node._waiting.by_request[mine] = proposal
        node._waiting.by_index[10**6] = mine
        slot_taken = Entry(10**6, 1, EntryKind.NORMAL, other + b"x")
        node._apply(replace(EMPTY_READY, committed_entries=(slot_taken,)))
        await asyncio.sleep(0.01)
        assert future.done() is fails
        if fails:
            assert isinstance(future.exception(), Unavailable)
        else:
            assert node._waiting.by_request[mine] is proposal
    finally:
        await node.stop(transfer=False)


async def test_a_follower_yields_the_cpu_after_each_acknowledgement(
    cluster: list[Node], monkeypatch: pytest.MonkeyPatch
) -> None:
    yields: list[None] = []
    monkeypatch.setattr(node_module, "yield_cpu", lambda: yields.append(None))
    leader = await leader_of(cluster)
    for i in range(10):
        await leader.propose(b"w%d" % i)
    assert len(yields) >= 10  # at least one follower acknowledged every write


async def test_read_barrier_on_a_follower_sees_acknowledged_writes(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    follower = next(n for n in cluster if n is not leader)
    for i in range(20):
        await leader.propose(str(i).encode())
        index = await follower.read_barrier()
        assert index >= 20 - 19 + i
        assert machine(follower).items[-1] == str(i).encode()


async def test_concurrent_proposals_are_batched_and_all_answered(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    results = await asyncio.gather(*(leader.propose(b"x%d" % i) for i in range(300)))
    assert sorted(results) == list(range(1, 301))  # type: ignore[type-var]


async def test_a_write_with_a_callback_is_answered_once_and_a_failing_callback_is_contained(
    cluster: list[Node],
) -> None:
    leader = await leader_of(cluster)
    outcomes: list[tuple[object, BaseException | None]] = []

    def fail(result: object, error: BaseException | None) -> None:
        outcomes.append((result, error))
        raise RuntimeError("a caller's bug")

    leader.submit_callback(b"a", fail)
    leader.submit_callback(b"b", lambda result, error: outcomes.append((result, error)))
    assert await leader.wait_applied(lambda: len(machine(leader).items) == 2, 3)
    async with asyncio.timeout(3):
        while len(outcomes) < 2:
            await asyncio.sleep(0.01)
    assert outcomes == [(1, None), (2, None)]
    assert await leader.propose(b"c") == 3  # the driver went on


async def test_a_write_with_a_callback_learns_of_a_lost_quorum(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    await nodes[0].start()  # alone: no leader can be elected
    outcome: list[BaseException | None] = []
    try:
        nodes[0].submit_callback(b"x", lambda _, error: outcome.append(error), timeout_s=0.2)
        async with asyncio.timeout(3):
            while not outcome:
                await asyncio.sleep(0.01)
        assert isinstance(outcome[0], Unavailable)
    finally:
        await nodes[0].stop()
    with pytest.raises(NodeStopped):
        nodes[0].submit_callback(b"y", lambda _, error: outcome.append(error))
    assert len(outcome) == 1


async def test_writes_resume_on_a_new_leader(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    await leader.propose(b"before")
    await leader.stop(transfer=False)
    rest = [n for n in cluster if n is not leader]
    new_leader = await leader_of(rest)
    assert await new_leader.propose(b"after") == 2
    with pytest.raises(NodeStopped):
        await leader.propose(b"stopped")


async def test_graceful_stop_hands_leadership_over(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    await leader.propose(b"a")
    await leader.stop()  # transfers first
    rest = [n for n in cluster if n is not leader]
    assert any(n.is_leader for n in rest)


async def test_no_quorum_means_unavailable_or_unknown(tmp_path: Path) -> None:
    options = NodeOptions(tick_ms=5, heartbeat_ms=20, election_timeout_ms=150)
    nodes = make_nodes(tmp_path, 3, options)
    await nodes[0].start()  # alone: no leader can be elected
    try:
        with pytest.raises(Unavailable):
            await nodes[0].propose(b"x", timeout_s=0.5)
        with pytest.raises(Unavailable):
            await nodes[0].read_barrier(timeout_s=0.5)
    finally:
        await nodes[0].stop()


async def test_a_leader_cut_off_gives_unknown_outcome(cluster: list[Node]) -> None:
    leader = await leader_of(cluster)
    for node in cluster:
        if node is not leader:
            await node.stop(transfer=False)
    with pytest.raises((UnknownOutcome, Unavailable)):
        await leader.propose(b"lost?", timeout_s=0.5)


async def test_restart_recovers_state_and_catches_up(tmp_path: Path) -> None:
    nodes = make_nodes(tmp_path, 3)
    for node in nodes:
        await node.start()
    leader = await leader_of(nodes)
    for i in range(10):
        await leader.propose(b"%d" % i)
    victim = next(n for n in nodes if n is not leader)
    await victim.stop(transfer=False)
    for i in range(10, 15):
        await leader.propose(b"%d" % i)
    peers = {n.name: f"127.0.0.1:{n._addresses[n.node_id][1]}" for n in nodes}
    again = Node(
        Register(),
        name=victim.name,
        data_dir=str(tmp_path / victim.name),
        peers=peers,
        options=FAST,
    )
    await again.start()
    try:
        assert await again.wait_applied(lambda: len(machine(again).items) == 15, 5)
        assert machine(again).items == [b"%d" % i for i in range(15)]
    finally:
        await again.stop(transfer=False)
        for node in nodes:
            if not node.stopped:
                await node.stop(transfer=False)


async def test_snapshots_bound_the_log_and_restore_on_restart(tmp_path: Path) -> None:
    options = NodeOptions(
        tick_ms=5,
        heartbeat_ms=20,
        election_timeout_ms=150,
        snapshot_entries=50,
        snapshot_keep_entries=10,
    )
    nodes = make_nodes(tmp_path, 1, options)
    node = nodes[0]
    await node.start()
    await leader_of(nodes)
    for i in range(200):
        await node.propose(b"%d" % i)
    status = node.status()
    assert status.snapshot_index >= 150
    await node.stop()
    again = Node(
        Register(),
        name="n1",
        data_dir=str(tmp_path / "n1"),
        peers={"n1": f"127.0.0.1:{node._listen_peer[1]}"},
        options=options,
    )
    await again.start()
    try:
        await again.read_barrier()
        assert machine(again).items == [b"%d" % i for i in range(200)]
    finally:
        await again.stop()


class GatedRestores(Register):
    """Loads a snapshot (on the caller's thread) only once ``release`` is set."""

    def __init__(self, loading: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self._loading, self._release = loading, release

    def snapshot_restorer(self, data: memoryview) -> Callable[[], None]:
        self._loading.set()
        assert self._release.wait(10), "loaded on the event loop, which the test then waits for"
        items = bytes(data).split(b"\n") if data else []

        def install() -> None:
            self.items = items

        return install


async def test_a_follower_loads_a_snapshot_off_its_event_loop(tmp_path: Path) -> None:
    """A follower far behind gets the leader's snapshot. Loading a large state takes long, and
    its loop must go on meanwhile (this test runs on that loop); nothing is applied until the
    loaded state is installed."""
    loading, release = threading.Event(), threading.Event()
    options = replace(FAST, snapshot_entries=50, snapshot_keep_entries=10)
    nodes = make_nodes(tmp_path, 3, options)
    peers = {node.name: f"127.0.0.1:{node._listen_peer[1]}" for node in nodes}
    for node in nodes:
        await node.start()
    leader = await leader_of(nodes)
    term = leader.status().term
    behind = next(node for node in nodes if node is not leader)
    again = Node(
        GatedRestores(loading, release),
        name=behind.name,
        data_dir=str(tmp_path / behind.name),
        peers=peers,
        options=options,
    )
    try:
        await behind.stop(transfer=False)
        for i in range(400):  # more than the leader holds in flight for an absent follower
            await leader.propose(b"%d" % i)
        assert leader.status().snapshot_index >= 300
        await again.start()
        async with asyncio.timeout(5):
            while not loading.is_set():
                await asyncio.sleep(0.01)
        during = list(machine(again).items)  # what it applied from appends held for it
        await asyncio.sleep(1.0)  # the loop runs; the driver waits, past election timeouts
        assert machine(again).items == during
        release.set()
        async with asyncio.timeout(5):
            while len(machine(again).items) < 400:
                await asyncio.sleep(0.01)
        assert machine(again).items == [b"%d" % i for i in range(400)]
        assert again.status().snapshot_index >= 300
        installs = "replog_server_snapshot_install_duration_seconds_count"
        assert (again.metrics.registry.get_sample_value(installs) or 0) >= 1
        # It heard the leader all through the load: the time that passed must not count as
        # silence (it would campaign, and lose the leader it had). Unless a slow machine made
        # the cluster elect another leader meanwhile, it saw one leader.
        await asyncio.sleep(0.2)  # a campaign would have begun, and the leader been heard again
        changes = again.metrics.registry.get_sample_value("replog_server_leader_changes_seen_total")
        if leader.is_leader and leader.status().term == term:
            assert (changes, again.leader) == (1, leader.name)
    finally:
        release.set()
        for node in [*nodes, again]:
            if not node.stopped:
                await node.stop(transfer=False)


async def test_the_log_kept_behind_a_snapshot_is_bounded_in_bytes(tmp_path: Path) -> None:
    options = replace(
        FAST, snapshot_entries=50, snapshot_keep_entries=40, snapshot_keep_bytes=10_000
    )
    nodes = make_nodes(tmp_path, 1, options)
    node = nodes[0]
    await node.start()
    try:
        await leader_of(nodes)
        async with asyncio.timeout(5):
            while node.status().snapshot_index < 100:
                await node.propose(b"v" * 1_000)
        raft = node._core()
        assert raft.first_index > node.status().snapshot_index - 10  # not 40 entries back
    finally:
        await node.stop()


class SlowSnapshots(Register):
    """A register whose snapshot encoding waits until released (on the encoder thread)."""

    def __init__(self, encoding: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.encoding = encoding
        self.release = release

    def snapshot_encoder(self) -> Callable[[], bytes]:
        items = list(self.items)

        def encode() -> bytes:
            self.encoding.set()
            assert self.release.wait(10)
            return b"\n".join(items)

        return encode

    def snapshot(self) -> bytes:
        return self.snapshot_encoder()()


async def writes_go_on_while_snapshots_wait(
    nodes: list[Node], waiting: threading.Event, release: threading.Event
) -> None:
    """Writes commit and nobody campaigns while every snapshot waits (``waiting`` is set
    once one does) until ``release``; then snapshots resume."""
    for node in nodes:
        await node.start()
    try:
        leader = await leader_of(nodes)
        for i in range(60):
            await leader.propose(b"%d" % i)
        assert await asyncio.to_thread(waiting.wait, 5)
        terms = {node.name: node.status().term for node in nodes}
        async with asyncio.timeout(5):
            for i in range(60, 200):
                await leader.propose(b"%d" % i)
        await asyncio.sleep(0.4)  # more than two election timeouts
        assert {node.name: node.status().term for node in nodes} == terms
        assert leader.status().snapshot_index == 0
        release.set()
        async with asyncio.timeout(5):
            while leader.status().snapshot_index < 50:
                await leader.propose(b"more")
        assert machine(leader).items[:200] == [b"%d" % i for i in range(200)]
    finally:
        release.set()
        for node in nodes:
            await node.stop(transfer=False)


async def test_a_slow_snapshot_does_not_hold_up_replication(tmp_path: Path) -> None:
    encoding, release = threading.Event(), threading.Event()
    ports = free_ports(3)
    peers = {f"n{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
    options = replace(FAST, snapshot_entries=50)
    nodes = [
        Node(
            SlowSnapshots(encoding, release),
            name=name,
            data_dir=str(tmp_path / name),
            peers=peers,
            options=options,
        )
        for name in peers
    ]
    await writes_go_on_while_snapshots_wait(nodes, encoding, release)


class _GatedFsync:
    """A file whose fsync waits for ``gate`` (a stand-in for a disk busy with a large file)."""

    def __init__(self, handle: OsFile, writing: threading.Event, gate: threading.Event) -> None:
        self._handle = handle
        self._writing = writing
        self._gate = gate

    def fsync(self) -> None:
        self._writing.set()
        assert self._gate.wait(10)
        self._handle.fsync()

    def __getattr__(self, name: str) -> object:
        return getattr(self._handle, name)


async def test_a_slow_snapshot_file_does_not_hold_up_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writing, gate = threading.Event(), threading.Event()

    class SlowSnapshotFiles(OsDisk):
        def open(self, path: str, mode: OpenMode) -> OsFile:
            handle = super().open(path, mode)
            if os.path.basename(path).startswith("snap-") and path.endswith(".tmp"):
                return _GatedFsync(handle, writing, gate)  # type: ignore[return-value]
            return handle

    monkeypatch.setattr(node_module, "OsDisk", SlowSnapshotFiles)
    nodes = make_nodes(tmp_path, 3, replace(FAST, snapshot_entries=50))
    await writes_go_on_while_snapshots_wait(nodes, writing, gate)


@given(
    st.lists(st.floats(0, 5, allow_nan=False), max_size=40),
    st.lists(st.floats(0, 6, allow_nan=False), min_size=1, max_size=5),
)
def test_proposal_deadlines_expire_never_early_and_at_most_one_slot_late(
    deadlines: list[float], nows: list[float]
) -> None:
    slots = _Deadlines()
    for k, deadline in enumerate(deadlines):
        slots.add(deadline, k.to_bytes(2, "big"))
    taken: list[int] = []
    for now in sorted(nows):
        due = [int.from_bytes(i, "big") for i in slots.pop_due(now)]
        assert all(deadlines[k] <= now for k in due)
        taken += due
        slot_s = 1 / _Deadlines.SLOTS_PER_S
        assert {k for k, d in enumerate(deadlines) if d <= now - slot_s} <= set(taken)
    assert len(taken) == len(set(taken))  # each once


async def test_the_requests_a_node_holds_are_bounded_reads_included(tmp_path: Path) -> None:
    """Without a quorum nothing completes, and a node holds what it was asked until the
    deadlines: at most ``pending_requests_max`` writes and reads together. The next request
    is refused at once as unavailable. Reads used to count once per batch, however many
    callers waited in it, so they had no bound."""
    options = replace(FAST, pending_requests_max=4, request_timeout_ms=3000)
    node = make_nodes(tmp_path, 3, options)[0]  # the other two never start: no leader
    await node.start()
    held = [node.submit(b"w1"), node.submit(b"w2")]
    reads = [asyncio.create_task(node.read_barrier()) for _ in range(2)]
    await asyncio.sleep(0.05)  # the reads are waiting now
    with pytest.raises(Unavailable, match="too many requests"):
        await node.read_barrier()
    with pytest.raises(Unavailable, match="too many requests"):
        node.submit(b"w3")
    for waiting in [*held, *reads]:
        waiting.cancel()
    await asyncio.gather(*reads, return_exceptions=True)
    await asyncio.sleep(0.05)  # the driver drops the withdrawn writes
    node.submit(b"w4").cancel()  # room again once they are gone
    await node.stop(transfer=False)
