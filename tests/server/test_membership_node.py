"""Membership in the Node runtime, in one event loop: joining, promotion, removal, refusals,
leadership transfer, and the member registry through the log, snapshots and restarts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec
import pytest

from replog.core import NotLeader
from replog.errors import UnknownOutcome
from replog.server.config import ConfigError, load_config
from replog.server.members import (
    SNAPSHOT_MAGIC,
    ChangeContext,
    ClientRecord,
    MemberInfo,
    NodeSnapshot,
    Registry,
    unwrap_snapshot,
    wrap_snapshot,
)
from replog.server.node import (
    MemberExists,
    MemberNotCaughtUp,
    MemberNotFound,
    MembershipChangePending,
    MembershipError,
    Node,
    NodeOptions,
    WouldLoseQuorum,
)
from replog.testing.machines import Register
from replog.testing.processes import free_ports

FAST = NodeOptions(tick_ms=5, heartbeat_ms=20, election_timeout_ms=150, request_timeout_ms=3000)
SNAPPY = NodeOptions(
    tick_ms=5,
    heartbeat_ms=20,
    election_timeout_ms=150,
    request_timeout_ms=3000,
    snapshot_entries=20,
    snapshot_keep_entries=5,
)
WAIT_S = 15.0


def items(node: Node) -> list[bytes]:
    assert isinstance(node.machine, Register)
    return node.machine.items


class Cluster:
    """In-process nodes n1..nN plus room for new ones, each with its own peer port."""

    def __init__(self, root: Path, size: int, options: NodeOptions = FAST) -> None:
        self.root = root
        self.options = options
        ports = free_ports(size + 2)
        self.addresses = {f"n{i + 1}": f"127.0.0.1:{port}" for i, port in enumerate(ports)}
        self.initial = {name: self.addresses[name] for name in list(self.addresses)[:size]}
        self.nodes: dict[str, Node] = {}

    def make(self, name: str, *, join: bool = False, client_url: str = "") -> Node:
        peers = dict(self.initial)
        peers[name] = self.addresses[name]
        return Node(
            Register(),
            name=name,
            data_dir=str(self.root / name),
            peers=peers,
            options=self.options,
            join=join,
            client_url=client_url,
        )

    async def start(self, name: str, *, join: bool = False, client_url: str = "") -> Node:
        node = self.make(name, join=join, client_url=client_url)
        await node.start()
        self.nodes[name] = node
        return node

    async def stop(self, name: str) -> None:
        node = self.nodes.pop(name)
        await node.stop(transfer=False)

    async def leader(self, timeout_s: float = WAIT_S) -> Node:
        async with asyncio.timeout(timeout_s):
            while True:
                leaders = [n for n in self.nodes.values() if not n.stopped and n.is_leader]
                if len(leaders) == 1:
                    return leaders[0]
                await asyncio.sleep(0.01)


async def eventually(check: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


def roles(node: Node) -> dict[str, str]:
    return {m.name: m.role for m in node.members()}


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path, 3)
    for name in c.initial:
        await c.start(name)
    yield c
    for name in list(c.nodes):
        await c.stop(name)


async def test_a_joining_node_becomes_a_learner_then_a_voter(cluster: Cluster) -> None:
    leader = await cluster.leader()
    for i in range(5):
        await leader.propose(b"%d" % i)
    n4 = await cluster.start("n4", join=True)
    assert n4.status().role == "removed"  # not a member yet: it waits, it never campaigns
    info = await leader.add_member("n4", cluster.addresses["n4"], "http://127.0.0.1:9")
    assert info.promote and info.client == "http://127.0.0.1:9"
    await eventually(lambda: roles(leader).get("n4") == "voter", "n4 promoted to voter")
    await eventually(lambda: len(items(n4)) == 5, "n4 to catch up")
    assert n4.member("n4") == MemberInfo("n4", cluster.addresses["n4"], "http://127.0.0.1:9")
    assert await n4.propose(b"from n4") == 6
    listed = {m.name: m for m in leader.members()}
    assert set(listed) == {"n1", "n2", "n3", "n4"}
    assert all(m.caught_up for m in listed.values())
    assert listed[leader.name].is_leader


async def test_a_learner_added_with_learner_stays_one(cluster: Cluster) -> None:
    leader = await cluster.leader()
    n4 = await cluster.start("n4", join=True)
    await leader.add_member("n4", cluster.addresses["n4"], "http://127.0.0.1:9", learner=True)
    await eventually(lambda: n4.status().role == "learner", "n4 to learn it is a learner")
    await leader.propose(b"x")
    await eventually(lambda: len(items(n4)) == 1, "the learner to receive the log")
    await asyncio.sleep(0.6)  # over one promotion check
    assert roles(leader)["n4"] == "learner"
    await leader.promote_member("n4")
    assert roles(leader)["n4"] == "voter"


async def test_refusals(cluster: Cluster) -> None:
    leader = await cluster.leader()
    with pytest.raises(MemberExists):
        await leader.add_member("n2", "127.0.0.1:1", "http://127.0.0.1:1")
    with pytest.raises(MemberExists, match="belongs to member n2"):
        await leader.add_member("n9", cluster.addresses["n2"], "http://127.0.0.1:1")
    with pytest.raises(MemberNotFound):
        await leader.remove_member("n9")
    with pytest.raises(MemberNotFound):
        await leader.promote_member("n9")
    with pytest.raises(MembershipError, match="bad node name"):
        await leader.add_member("N 9", "127.0.0.1:1", "http://127.0.0.1:1")
    with pytest.raises(MembershipError, match="port"):
        await leader.add_member("n9", "127.0.0.1", "http://127.0.0.1:1")
    follower = next(n for n in cluster.nodes.values() if n is not leader)
    with pytest.raises(NotLeader):
        await follower.add_member("n9", "127.0.0.1:1", "http://127.0.0.1:1")


async def test_a_second_change_while_one_is_pending_is_refused(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.propose(b"commit one entry of this term")
    first = asyncio.create_task(
        leader.add_member("n4", cluster.addresses["n4"], "http://127.0.0.1:9", learner=True)
    )
    await asyncio.sleep(0)  # the first change is in the log, not yet committed
    with pytest.raises(MembershipChangePending):
        await leader.add_member("n5", cluster.addresses["n5"], "http://127.0.0.1:8")
    await first
    assert roles(leader)["n4"] == "learner"


async def test_promoting_a_learner_that_is_far_behind_is_refused(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.add_member("n4", cluster.addresses["n4"], "http://127.0.0.1:9")  # never started
    for i in range(3):
        await leader.propose(b"%d" % i)
    with pytest.raises(MemberNotCaughtUp, match="behind"):
        await leader.promote_member("n4")
    await asyncio.sleep(0.6)
    assert roles(leader)["n4"] == "learner"  # not promoted automatically either
    await leader.remove_member("n4")  # a learner leaves without a quorum question
    assert "n4" not in roles(leader)


async def test_a_removal_that_would_lose_quorum_is_refused(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.propose(b"x")
    followers = [n.name for n in cluster.nodes.values() if n is not leader]
    await cluster.stop(followers[0])
    await asyncio.sleep(1.1)  # longer than the window in which a member counts as reachable
    with pytest.raises(WouldLoseQuorum, match="answered recently"):
        await leader.remove_member(followers[1])
    assert set(roles(leader)) == {"n1", "n2", "n3"}
    await leader.remove_member(followers[0])  # removing the dead one keeps a live quorum
    assert set(roles(leader)) == {leader.name, followers[1]}
    assert await leader.propose(b"y") == 2


async def test_the_leader_removing_itself_hands_over_first(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.propose(b"x")
    with pytest.raises(NotLeader):
        await leader.remove_member(leader.name)
    new_leader = await cluster.leader()
    assert new_leader is not leader
    await new_leader.remove_member(leader.name)
    # It was made a learner first, and heard of that: it does not campaign any more.
    await eventually(lambda: leader.status().role == "learner", "the old leader to stop voting")
    assert set(roles(new_leader)) == set(cluster.initial) - {leader.name}
    assert await new_leader.propose(b"y") == 2
    await asyncio.sleep(0.5)  # the removed node does not campaign and disturbs nobody
    assert new_leader.is_leader and not leader.is_leader


async def test_a_node_removed_while_down_does_not_disturb_the_cluster(cluster: Cluster) -> None:
    leader = await cluster.leader()
    await leader.propose(b"x")
    gone = next(n for n in sorted(cluster.nodes) if n != leader.name)
    await cluster.stop(gone)
    await leader.remove_member(gone)
    term = leader.status().term
    back = await cluster.start(gone)  # it never heard of its removal
    for i in range(20):
        await leader.propose(b"%d" % i)
        await asyncio.sleep(0.05)
    assert leader.is_leader and leader.status().term == term
    assert not back.is_leader
    assert gone not in roles(leader)


async def test_leadership_transfer_to_a_chosen_voter_and_to_the_most_up_to_date(
    cluster: Cluster,
) -> None:
    leader = await cluster.leader()
    await leader.propose(b"x")
    target = next(n for n in sorted(cluster.nodes) if n != leader.name)
    assert await leader.transfer_leadership(target) == target
    new_leader = await cluster.leader()
    assert new_leader.name == target
    assert await new_leader.transfer_leadership(new_leader.name) == new_leader.name
    with pytest.raises(MemberNotFound):
        await new_leader.transfer_leadership("n9")
    chosen = await new_leader.transfer_leadership(None)
    assert chosen != target
    assert (await cluster.leader()).name == chosen


async def test_client_urls_are_published_through_the_log(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 3)
    try:
        for i, name in enumerate(c.initial):
            await c.start(name, client_url=f"http://127.0.0.1:{20001 + i}")
        for node in c.nodes.values():
            await eventually(
                lambda node=node: all(node.member(n) and node.member(n).client for n in c.initial),  # type: ignore[union-attr]
                f"{node.name} to learn every client URL",
            )
        assert c.nodes["n1"].member("n3") == MemberInfo(
            "n3", c.addresses["n3"], "http://127.0.0.1:20003"
        )
    finally:
        for name in list(c.nodes):
            await c.stop(name)


async def test_a_new_node_catches_up_by_snapshot_and_keeps_its_membership_on_restart(
    tmp_path: Path,
) -> None:
    c = Cluster(tmp_path, 3, SNAPPY)
    try:
        for name in c.initial:
            await c.start(name)
        leader = await c.leader()
        for i in range(60):
            await leader.propose(b"%d" % i)
        await eventually(lambda: leader.status().snapshot_index > 0, "a snapshot on the leader")
        await c.start("n4", join=True)
        await leader.add_member("n4", c.addresses["n4"], "http://127.0.0.1:9")
        await eventually(lambda: roles(leader).get("n4") == "voter", "n4 promoted")
        n4 = c.nodes["n4"]
        await eventually(lambda: len(items(n4)) == 60, "n4 to catch up")
        assert n4.status().snapshot_index > 0  # it started from the leader's snapshot
        for i in range(60, 90):
            await leader.propose(b"%d" % i)
        await eventually(lambda: len(items(n4)) == 90, "n4 to keep up")
        await c.stop("n4")
        n4 = await c.start("n4", join=True)  # the flag no longer matters: the log decides
        await eventually(lambda: n4.status().role in ("follower", "leader"), "n4 a voter again")
        assert n4.member("n4") == MemberInfo("n4", c.addresses["n4"], "http://127.0.0.1:9")
        assert n4.member("n1") is not None and n4.member("n1").peer == c.addresses["n1"]  # type: ignore[union-attr]
        await eventually(lambda: len(items(n4)) == 90, "n4 to recover its data")
    finally:
        for name in list(c.nodes):
            await c.stop(name)


async def test_a_node_offline_through_compactions_catches_up_by_snapshot(tmp_path: Path) -> None:
    c = Cluster(tmp_path, 3, SNAPPY)
    try:
        for name in c.initial:
            await c.start(name)
        leader = await c.leader()
        offline = next(n for n in sorted(c.nodes) if n != leader.name)
        await c.stop(offline)
        # More writes than the leader keeps in flight to one follower (256 appends, which the
        # transport holds while the follower is away): the rest can only come by snapshot.
        for i in range(400):
            await leader.propose(b"%d" % i)
        assert leader.status().snapshot_index >= 300  # compacted many times over
        back = await c.start(offline)
        await eventually(lambda: len(items(back)) == 400, f"{offline} to catch up")
        assert items(back) == [b"%d" % i for i in range(400)]
        assert back.status().snapshot_index > 0
        assert {m.name for m in (await c.leader()).members()} == set(c.initial)
    finally:
        for name in list(c.nodes):
            await c.stop(name)


async def test_a_change_that_cannot_commit_has_an_unknown_outcome(tmp_path: Path) -> None:
    c = Cluster(
        tmp_path,
        3,
        NodeOptions(tick_ms=5, heartbeat_ms=20, election_timeout_ms=1000, request_timeout_ms=300),
    )
    try:
        for name in c.initial:
            await c.start(name)
        leader = await c.leader()
        await leader.propose(b"x")
        for name in [n for n in c.nodes if n != leader.name]:
            await c.stop(name)
        with pytest.raises(UnknownOutcome):
            await leader.add_member("n4", c.addresses["n4"], "http://127.0.0.1:9")
        with pytest.raises(MembershipChangePending):
            await leader.add_member("n5", c.addresses["n5"], "http://127.0.0.1:8")
    finally:
        for name in list(c.nodes):
            await c.stop(name)


# ---- the registry alone -----------------------------------------------------------------------


def test_registry_merges_changes_keeping_configured_peer_addresses() -> None:
    registry = Registry({"n1": "10.0.0.1:1", "n2": "proxy:2"})
    context = ChangeContext(
        "n3",
        (
            MemberInfo("n1", "10.0.0.1:1", "http://a"),
            MemberInfo("n2", "10.0.0.2:1", "http://b"),
            MemberInfo("n3", "10.0.0.3:1", "http://c", promote=False),
        ),
    )
    registry.learn_change(context)
    assert registry.get(MemberInfo("n2", "").node_id) == MemberInfo("n2", "proxy:2", "http://b")
    assert registry.get(MemberInfo("n3", "").node_id) == context.members[2]
    assert registry.learn_record(ClientRecord("n1", "http://new"))
    assert not registry.learn_record(ClientRecord("n9", "http://x"))
    assert registry.get(MemberInfo("n1", "").node_id) == MemberInfo(
        "n1", "10.0.0.1:1", "http://new"
    )
    assert registry.name_of(12345) == "12345"


def test_node_snapshots_carry_the_registry_and_read_plain_ones() -> None:
    members = (MemberInfo("n1", "h:1", "http://h:2"),)
    members_out, machine = unwrap_snapshot(wrap_snapshot(members, b"state"))
    assert members_out == members and machine == b"state"
    assert unwrap_snapshot(b"plain machine bytes") == ((), b"plain machine bytes")
    with pytest.raises(ValueError, match="damaged"):
        unwrap_snapshot(wrap_snapshot(members, b"state")[:-3])


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 1 << 20])
def test_a_node_snapshot_has_the_bytes_of_one_encoding(size: int) -> None:
    # Joined from pieces (so a large image is copied without holding the GIL), in the same
    # format as ever: the bin header of every size class.
    members = (MemberInfo("n1", "h:1", "http://h:2"), MemberInfo("n2", "h:3"))
    machine = bytes(range(256)) * (size // 256) + bytes(size % 256)
    expected = SNAPSHOT_MAGIC + msgspec.msgpack.encode(NodeSnapshot(members, machine))
    assert wrap_snapshot(members, machine) == expected
    assert unwrap_snapshot(expected) == (members, machine)


# ---- the settings of joining ------------------------------------------------------------------


def test_join_settings(tmp_path: Path) -> None:
    base = {"name": "n4", "data_dir": str(tmp_path / "n4")}
    config = load_config(base, {}, None)
    assert config.initial_cluster_state == "new" and config.auto_promote
    joined = load_config(
        {**base, "initial_cluster": "n1=127.0.0.1:1,n4=127.0.0.1:14400"},
        {"REPLOG_INITIAL_CLUSTER_STATE": "Existing", "REPLOG_AUTO_PROMOTE": "off"},
        None,
    )
    assert joined.initial_cluster_state == "existing" and not joined.auto_promote
    with pytest.raises(ConfigError, match="list its members besides this node"):
        load_config({**base, "initial_cluster_state": "existing"}, {}, None)
    with pytest.raises(ConfigError, match="unknown cluster state 'maybe'"):
        load_config({**base, "initial_cluster_state": "maybe"}, {}, None)
    file = tmp_path / "replog.toml"
    file.write_text('name = "n4"\nauto-promote = "no"\n')
    with pytest.raises(ConfigError, match="expected a boolean"):
        load_config({"data_dir": str(tmp_path / "n4")}, {}, str(file))
    with pytest.raises(ValueError, match="at least one member"):
        Node(Register(), name="n4", data_dir=str(tmp_path), peers={"n4": "127.0.0.1:1"}, join=True)
