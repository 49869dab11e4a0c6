"""Errors the core raises for operating conditions a caller must handle (never for bugs)."""

from __future__ import annotations

from replog.core.types import NO_NODE, NodeId


class ReplogError(Exception):
    """Base class of every error replog raises on purpose."""


class ProposalError(ReplogError):
    """A proposal or read was refused; it definitely did not enter the log."""


class NotLeader(ProposalError):
    def __init__(self, leader_id: NodeId) -> None:
        known = f"the leader is node {leader_id}" if leader_id != NO_NODE else "no leader is known"
        super().__init__(f"this node is not the leader ({known})")
        self.leader_id = leader_id


class ProposalDropped(ProposalError):
    """The proposal could not be accepted now (no leader, or a leadership transfer is on)."""


class UncommittedLogFull(ProposalError):
    def __init__(self, uncommitted_bytes: int, limit_bytes: int) -> None:
        super().__init__(
            f"the leader holds {uncommitted_bytes} bytes of uncommitted entries, over its limit "
            f"of {limit_bytes} bytes; retry once followers catch up"
        )
        self.uncommitted_bytes = uncommitted_bytes
        self.limit_bytes = limit_bytes
