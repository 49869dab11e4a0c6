"""Membership changes, made by the leader one server at a time (Raft thesis 4.1).

Theory of operation. The leader's ``Node.add_member``, ``remove_member`` and ``promote_member``
come here. Each proposes a CONFIG entry whose context carries the member registry
(``replog.server.members``), so every node learns a new member's addresses from the entry as
soon as it is in its log, which is also when its core starts using the new configuration. A new
member joins as a learner; the leader promotes it to voter once its match index is within
``CATCH_UP_LAG_ENTRIES`` of the leader's log and it answered recently (unless it asked to stay
a learner, or ``auto_promote`` is off). A voter is removed in two changes: first demoted to
learner (so it still receives the log and learns that it no longer votes), then removed.

Refusals, checked on the leader before proposing: a second change while one is uncommitted; a
change after which the voters heard from recently would not form a quorum (unless forced);
promoting a learner that has not caught up. A leader asked to remove itself first hands
leadership to the most up-to-date voter, which then makes the change (``NotLeader`` tells the
caller where to go).

``MembershipChanges`` works on its ``Node``'s core, registry and driver; it keeps only what is
its own: when each peer was last heard from, and when learners were last looked at.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from replog.core import (
    Configuration,
    NotLeader,
    ProposalDropped,
    ProposalError,
    RaftNode,
    ReplogError,
    Role,
)
from replog.errors import Unavailable, UnknownOutcome
from replog.server.config import CLUSTER_MEMBERS_MAX, check_name, node_id_of, parse_address
from replog.server.members import ChangeContext, MemberInfo, encode_context

if TYPE_CHECKING:
    from replog.server.node import Node

log = logging.getLogger("replog.node")

CATCH_UP_LAG_ENTRIES = 100  # a member within this many entries of the leader has caught up
PROMOTE_CHECK_S = 0.5  # how often a leader looks for learners to promote
DEMOTE_WAIT_S = 2.0  # how long a removal waits for the demoted voter to hear of it


class MembershipError(ReplogError):
    """A membership request refused before anything was proposed; ``code`` and ``status`` are
    its HTTP API error (docs/http-api.md)."""

    code = "invalid_request"
    status = 400


class MemberNotFound(MembershipError):
    code = "member_not_found"
    status = 404


class MemberExists(MembershipError):
    code = "member_exists"
    status = 409


class MembershipChangePending(MembershipError):
    code = "membership_change_pending"
    status = 409


class WouldLoseQuorum(MembershipError):
    code = "would_lose_quorum"
    status = 409


class MemberNotCaughtUp(MembershipError):
    code = "member_not_caught_up"
    status = 409


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One member as the leader sees it; ``caught_up``, ``match_index`` and ``lag`` are None
    on a node that does not lead."""

    name: str
    node_id: int
    peer: str
    client: str
    role: str  # voter | learner
    is_leader: bool
    promote: bool
    caught_up: bool | None
    match_index: int | None
    lag: int | None


class MembershipChanges:
    """The membership operations of one node (leader only; ``NotLeader`` elsewhere)."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._registry = node._registry
        self.heard_at: dict[int, float] = {}  # node id -> when a message from it last arrived
        self._promote_checked_at = 0.0

    def statuses(self) -> tuple[MemberStatus, ...]:
        """``Node.members``."""
        raft = self._node._core()
        config = raft.membership
        leading = raft.role is Role.LEADER
        out: list[MemberStatus] = []
        for node_id in config.members():
            info = self._registry.get(node_id) or MemberInfo(str(node_id), "")
            progress = raft.progress.get(node_id) if leading else None
            match = raft.last_index if node_id == self._node.node_id else None
            if progress is not None and node_id != self._node.node_id:
                match = progress.match_index
            out.append(
                MemberStatus(
                    name=info.name,
                    node_id=node_id,
                    peer=info.peer,
                    client=info.client,
                    role="voter" if config.is_voter(node_id) else "learner",
                    is_leader=node_id == raft.leader_id,
                    promote=info.promote,
                    caught_up=self._caught_up(raft, node_id) if leading else None,
                    match_index=match if leading else None,
                    lag=raft.last_index - match if leading and match is not None else None,
                )
            )
        return tuple(sorted(out, key=lambda m: m.name))

    async def add(self, name: str, peer: str, client: str, *, learner: bool = False) -> MemberInfo:
        """``Node.add_member``."""
        raft = self._leader_core()
        info = _member_info(name, peer, client, promote=not learner)
        node_id = info.node_id
        config = raft.membership
        known = self._registry.get(node_id)
        if node_id in config.members():
            if known is not None and (known.peer, known.client) == (info.peer, info.client):
                return known
            raise MemberExists(f"{name} is already a member (remove it first to re-add it)")
        for other in self._registry.describe(config.members()):
            if other.peer == info.peer:
                raise MemberExists(f"peer address {info.peer} belongs to member {other.name}")
        if known is not None and known.name != name:
            raise MemberExists(f"{name} maps to the node id of {known.name}; choose another name")
        if len(config.members()) >= CLUSTER_MEMBERS_MAX:
            raise MembershipError(f"the cluster has {CLUSTER_MEMBERS_MAX} members, its limit")
        self._check_no_change_pending(raft)
        self._registry.put(info)
        await self._change(raft, config.with_learner(node_id), info)
        return info

    async def remove(self, name: str, *, force: bool = False) -> MemberInfo:
        """``Node.remove_member``."""
        raft = self._leader_core()
        node_id = node_id_of(name)
        config = raft.membership
        if node_id not in config.members():
            raise MemberNotFound(f"{name} is not a member of the cluster")
        self._check_no_change_pending(raft)
        new = config.without(node_id)
        if not new.voters:
            raise WouldLoseQuorum(f"{name} is the last voter; a cluster needs one")
        if not force:
            await self._check_quorum(raft, new, f"removing {name}")
            raft = self._leader_core()
            self._check_no_change_pending(raft)
        if node_id == self._node.node_id:
            new_leader = await self._node.transfer_leadership(None)
            log.info("node %s handed leadership to %s to be removed", self._node.name, new_leader)
            raise NotLeader(raft.leader_id)
        info = self._registry.get(node_id) or MemberInfo(name, "")
        if config.is_voter(node_id):
            await self._demote(raft, node_id, info)
            raft = self._leader_core()
            self._check_no_change_pending(raft)
        await self._change(raft, raft.membership.without(node_id), info)
        return info

    async def _demote(self, raft: RaftNode, node_id: int, info: MemberInfo) -> None:
        """Make a voter a learner before removing it: as a learner it still receives the log,
        so it learns that it no longer votes and stops campaigning (a removed voter would not
        hear of its removal: the leader stops replicating to it at once)."""
        demoted = raft.membership.without(node_id).with_learner(node_id)
        staying = MemberInfo(info.name, info.peer, info.client, promote=False)
        self._registry.put(staying)  # or the leader would promote it again
        index = await self._change(raft, demoted, staying)
        if not self._heard(node_id):
            return  # down: there is no one to tell
        deadline = time.monotonic() + DEMOTE_WAIT_S
        silence_s = self._node.options.election_timeout_ms / 1000
        while time.monotonic() < deadline and raft.role is Role.LEADER:
            progress = raft.progress.get(node_id)
            if progress is None or progress.match_index >= index:
                return
            if time.monotonic() - self.heard_at.get(node_id, 0.0) > silence_s:
                return  # it stopped answering: down, or cut off
            await asyncio.sleep(0.01)

    async def promote(self, name: str) -> MemberInfo:
        """``Node.promote_member``."""
        raft = self._leader_core()
        node_id = node_id_of(name)
        config = raft.membership
        if node_id not in config.members():
            raise MemberNotFound(f"{name} is not a member of the cluster")
        info = self._registry.get(node_id) or MemberInfo(name, "")
        if config.is_voter(node_id):
            return info
        self._check_no_change_pending(raft)
        if not self._caught_up(raft, node_id):
            progress = raft.progress.get(node_id)
            lag = raft.last_index - (progress.match_index if progress else 0)
            raise MemberNotCaughtUp(
                f"{name} is {lag} entries behind the leader (or has not answered recently); "
                f"it can become a voter once within {CATCH_UP_LAG_ENTRIES}"
            )
        await self._check_quorum(raft, config.with_voter(node_id), f"promoting {name}")
        raft = self._leader_core()
        self._check_no_change_pending(raft)
        await self._change(raft, raft.membership.with_voter(node_id), info)
        return info

    def _leader_core(self) -> RaftNode:
        raft = self._node._core()
        self._node._check_running()
        if raft.role is not Role.LEADER:
            raise NotLeader(raft.leader_id)
        return raft

    def _check_no_change_pending(self, raft: RaftNode) -> None:
        if raft.membership_pending:
            raise MembershipChangePending(
                "another membership change is not committed yet; retry once it is"
            )

    async def _check_quorum(self, raft: RaftNode, config: Configuration, what: str) -> None:
        """Refuse ``config`` unless a quorum of its voters answered recently. A leader that
        took office less than one such window ago waits for that long before refusing: it
        may not have heard from every voter yet."""
        voters = config.voters
        while True:
            reachable = sorted(
                self._registry.name_of(v)
                for v in voters
                if v == self._node.node_id or self._heard(v)
            )
            if len(reachable) > len(voters) // 2:
                return
            if time.monotonic() - self._node._leader_since > self._heard_window_s:
                break
            await asyncio.sleep(0.02)
        raise WouldLoseQuorum(
            f"{what} leaves {len(voters)} voters of which only {len(reachable)} answered "
            f"recently ({', '.join(reachable) or 'none'}); a quorum needs "
            f"{len(voters) // 2 + 1} (force it if you are sure)"
        )

    @property
    def _heard_window_s(self) -> float:
        return max(1.0, 3 * self._node.options.election_timeout_ms / 1000)

    def _heard(self, node_id: int) -> bool:
        return time.monotonic() - self.heard_at.get(node_id, -1e9) <= self._heard_window_s

    def _caught_up(self, raft: RaftNode, node_id: int) -> bool:
        if node_id == self._node.node_id:
            return True
        progress = raft.progress.get(node_id)
        if progress is None or not self._heard(node_id):
            return False
        return raft.last_index - progress.match_index <= CATCH_UP_LAG_ENTRIES

    async def _change(self, raft: RaftNode, config: Configuration, subject: MemberInfo) -> int:
        """Propose ``config``, wait until it is applied here, and return its index."""
        members = self._registry.describe(config.members())
        context = encode_context(ChangeContext(subject.name, members))
        term = raft.term
        timeout_s = self._node.options.request_timeout_ms / 1000
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                index = raft.propose_membership(config, context)
                break
            except ProposalDropped as error:
                if raft.membership_pending:
                    raise MembershipChangePending(str(error)) from None
                # A new leader first commits an entry of its term (or a transfer is running).
                left_s = deadline - time.monotonic()
                if raft.role is not Role.LEADER or raft.term != term or left_s <= 0:
                    raise Unavailable(str(error)) from None
                await self._node.wait_applied(lambda: False, min(left_s, 0.05))
            except ProposalError as error:
                raise Unavailable(str(error)) from None
        self._node._wake.set()
        log.info(
            "node %s proposed membership change at %d: %s", self._node.name, index, subject.name
        )
        if not await self._node.wait_applied(lambda: raft.applied_index >= index, timeout_s):
            raise UnknownOutcome("the membership change did not commit in time; it may still apply")
        entry = raft.entry(index)
        if entry is not None and entry.term != term:
            raise Unavailable("leadership changed before the membership change committed")
        return index

    def maybe_promote_learners(self, raft: RaftNode) -> None:
        """On the leader, about twice a second: promote one caught-up learner that wants it."""
        now = time.monotonic()
        if now - self._promote_checked_at < PROMOTE_CHECK_S:
            return
        self._promote_checked_at = now
        if not self._node.auto_promote or raft.role is not Role.LEADER or raft.membership_pending:
            return
        for node_id in sorted(raft.membership.learners):
            info = self._registry.get(node_id)
            if info is None or not info.promote or not self._caught_up(raft, node_id):
                continue
            config = raft.membership.with_voter(node_id)
            context = encode_context(
                ChangeContext(info.name, self._registry.describe(config.members()))
            )
            with contextlib.suppress(ProposalError):
                index = raft.propose_membership(config, context)
                log.info(
                    "node %s promotes %s to voter (index %d)", self._node.name, info.name, index
                )
            return


def _member_info(name: str, peer: str, client: str, *, promote: bool) -> MemberInfo:
    """A new member's description, its addresses in their canonical spelling."""
    try:
        check_name(name)
        peer_address = str(parse_address(peer, "peer"))
        client_url = f"http://{parse_address(client, 'client')}"
    except ValueError as error:
        raise MembershipError(str(error)) from None
    return MemberInfo(name, peer_address, client_url, promote)
