"""Quorum arithmetic: the one place that knows what "a majority" means.

Theory of operation. A decision (an index is committed, an election is won) needs a majority of
the voting configuration (Raft section 5.2, 5.3). During a membership change the configuration is
joint (Raft thesis section 4.3): a decision needs a majority of the incoming voters *and* a
majority of the outgoing voters. Both kinds of quorum are plain values with two questions:

* ``committed_index(acked)``: the largest index that a quorum has acknowledged, given each
  voter's acknowledged index (voters missing from ``acked`` count as 0);
* ``vote_result(votes)``: WON once a quorum granted, LOST once a quorum can no longer grant,
  PENDING otherwise.

The empty majority is the identity element: it commits everything (``COMMIT_ALL``) and wins every
vote, so a joint configuration whose outgoing half is empty behaves exactly like its incoming
half, and callers never special-case "not in a joint change". This module is a leaf: it imports
nothing from the rest of replog.
"""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

COMMIT_ALL = sys.maxsize


class VoteResult(enum.Enum):
    PENDING = "pending"
    LOST = "lost"
    WON = "won"


@dataclass(frozen=True, slots=True)
class MajorityConfig:
    voters: frozenset[int] = field(default_factory=frozenset)

    def quorum_size(self) -> int:
        return len(self.voters) // 2 + 1

    def committed_index(self, acked: Mapping[int, int]) -> int:
        if not self.voters:
            return COMMIT_ALL
        indexes = sorted((acked.get(voter, 0) for voter in self.voters), reverse=True)
        # The quorum_size-th highest acknowledgement is held by at least quorum_size voters.
        return indexes[self.quorum_size() - 1]

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        if not self.voters:
            return VoteResult.WON
        granted = sum(1 for voter in self.voters if votes.get(voter) is True)
        missing = sum(1 for voter in self.voters if voter not in votes)
        quorum = self.quorum_size()
        if granted >= quorum:
            return VoteResult.WON
        if granted + missing >= quorum:
            return VoteResult.PENDING
        return VoteResult.LOST


@dataclass(frozen=True, slots=True)
class JointConfig:
    incoming: MajorityConfig = field(default_factory=MajorityConfig)
    outgoing: MajorityConfig = field(default_factory=MajorityConfig)

    @classmethod
    def of(cls, voters: frozenset[int], voters_outgoing: frozenset[int]) -> JointConfig:
        return cls(MajorityConfig(voters), MajorityConfig(voters_outgoing))

    def voters(self) -> frozenset[int]:
        return self.incoming.voters | self.outgoing.voters

    def committed_index(self, acked: Mapping[int, int]) -> int:
        return min(self.incoming.committed_index(acked), self.outgoing.committed_index(acked))

    def vote_result(self, votes: Mapping[int, bool]) -> VoteResult:
        first = self.incoming.vote_result(votes)
        second = self.outgoing.vote_result(votes)
        if first is second:
            return first
        if VoteResult.LOST in (first, second):
            return VoteResult.LOST
        return VoteResult.PENDING

    def is_quorum(self, members: frozenset[int]) -> bool:
        """Whether ``members`` (e.g. the peers recently heard from) form a quorum."""
        return self.vote_result(dict.fromkeys(members, True)) is VoteResult.WON
