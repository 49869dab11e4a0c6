"""Raft's safety properties, checked incrementally while a simulated cluster runs.

Theory of operation
-------------------
The simulator calls these checkers at the moments a property can first be broken: when a node
is seen as leader, when a Ready is made durable, when an entry is applied, when a client is
told its write succeeded. Each checker keeps only the small index it needs (a dict keyed by
term or by (index, term)), so a check costs O(batch), not O(log), and running them after every
event stays cheap. A broken property raises ``InvariantViolation`` naming the property, the
node, the index and the term, so the failing seed's trace can be read against it.

The properties (Raft paper, Figure 3 and sections 5.2 to 5.4, 7 and 8):

- election safety: at most one leader per term, ever (5.2);
- leader append-only: a leader never overwrites or deletes entries of its own log (5.3);
- log matching: two logs holding an entry with the same index and term hold the same data and
  agree on every entry before it (5.3). Checked by induction: (index, term) must always map to
  the same (data, term of the preceding entry);
- leader completeness: a leader of term T holds every entry committed in a term before T (5.4);
- state machine safety: no two nodes apply different entries at one index; each node applies
  indexes in order, without gaps, each once per life, counting from the snapshot it restored;
  two state machine images taken at one index are identical (5.4.3, 7);
- commit index monotonic per node life, and never below a restored snapshot;
- a node's term never decreases, across restarts too (5.1: currentTerm is persistent);
- committed means durable: an index is committed, and a client acknowledged, only once its
  entry is durable on a majority (5.3, 8);
- provenance: every applied client command was proposed by some client;
- the durable store and the core agree once a Ready has been handled (term, vote, log end).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from replog.core.types import Entry


class InvariantViolation(Exception):
    """A safety property was broken. Carries where, so a trace can be read against it."""

    def __init__(
        self,
        invariant: str,
        detail: str,
        *,
        node: int | None = None,
        index: int | None = None,
        term: int | None = None,
    ) -> None:
        where = []
        if node is not None:
            where.append(f"node {node}")
        if index is not None:
            where.append(f"index {index}")
        if term is not None:
            where.append(f"term {term}")
        location = f" ({', '.join(where)})" if where else ""
        super().__init__(f"{invariant} violated{location}: {detail}")
        self.invariant = invariant
        self.detail = detail
        self.node = node
        self.index = index
        self.term = term


class DurableView(Protocol):
    """What the checkers need to see of a node's durable store."""

    def holds(self, index: int, term: int) -> bool: ...


class ElectionSafety:
    """At most one leader per term (Raft 5.2)."""

    def __init__(self) -> None:
        self._leader_by_term: dict[int, int] = {}

    @property
    def elections(self) -> int:
        return len(self._leader_by_term)

    def observe_leader(self, node: int, term: int) -> bool:
        """Record that ``node`` is leader of ``term``; True if this is news."""
        known = self._leader_by_term.get(term)
        if known is None:
            self._leader_by_term[term] = node
            return True
        if known != node:
            raise InvariantViolation(
                "election safety",
                f"nodes {known} and {node} were both leader of term {term}",
                node=node,
                term=term,
            )
        return False


class TermMonotonic:
    """A node's current term never decreases, not even across a restart (Raft 5.1)."""

    def __init__(self) -> None:
        self._term: dict[int, int] = {}

    def observe(self, node: int, term: int) -> None:
        previous = self._term.get(node, 0)
        if term < previous:
            raise InvariantViolation(
                "term monotonic",
                f"term went down from {previous} to {term}",
                node=node,
                term=term,
            )
        self._term[node] = term


class CommitMonotonic:
    """The commit index never goes down within a node's life; a restarted node starts at or
    above the snapshot it restored."""

    def __init__(self) -> None:
        self._commit: dict[int, int] = {}

    def started(self, node: int, commit_index: int, snapshot_index: int) -> None:
        if commit_index < snapshot_index:
            raise InvariantViolation(
                "commit monotonic",
                f"restarted with commit index {commit_index} below its snapshot "
                f"at {snapshot_index}",
                node=node,
                index=commit_index,
            )
        self._commit[node] = commit_index

    def observe(self, node: int, commit_index: int) -> None:
        previous = self._commit.get(node, 0)
        if commit_index < previous:
            raise InvariantViolation(
                "commit monotonic",
                f"commit index went down from {previous} to {commit_index}",
                node=node,
                index=commit_index,
            )
        self._commit[node] = commit_index


class LeaderAppendOnly:
    """A leader only appends entries of its own term past its log end (Raft 5.3)."""

    def __init__(self) -> None:
        # node -> (term it leads, last index it has written while leading)
        self._leading: dict[int, tuple[int, int]] = {}

    def stepped_down(self, node: int) -> None:
        self._leading.pop(node, None)

    def observe_write(
        self,
        node: int,
        term: int,
        *,
        is_leader: bool,
        durable_last_index: int,
        entries: Sequence[Entry],
        has_snapshot: bool,
    ) -> None:
        """A Ready of ``node`` is being made durable; ``durable_last_index`` is the log end
        before the write."""
        if not is_leader:
            self._leading.pop(node, None)
            return
        state = self._leading.get(node)
        last = durable_last_index if state is None or state[0] != term else state[1]
        if has_snapshot:
            raise InvariantViolation(
                "leader append-only",
                "a leader replaced its log by a snapshot",
                node=node,
                term=term,
            )
        if entries and entries[0].index <= last:
            raise InvariantViolation(
                "leader append-only",
                f"the leader rewrote its log from index {entries[0].index} "
                f"(its log ended at {last})",
                node=node,
                index=entries[0].index,
                term=term,
            )
        for entry in entries:
            if entry.term != term:
                raise InvariantViolation(
                    "leader append-only",
                    f"the leader of term {term} appended an entry of term {entry.term}",
                    node=node,
                    index=entry.index,
                    term=term,
                )
        self._leading[node] = (term, entries[-1].index if entries else last)


class LogMatching:
    """Two logs with an entry of the same index and term agree on it and on every earlier entry
    (Raft 5.3). Kept by induction: (index, term) always maps to one (kind, data, previous term)."""

    def __init__(self, entries_max: int = 1 << 20) -> None:
        self._seen: dict[tuple[int, int], tuple[int, bytes, int]] = {}
        self._entries_max = entries_max

    def observe_write(self, node: int, prev_term: int, entries: Sequence[Entry]) -> None:
        """``prev_term`` is the term of the entry just before ``entries[0]`` in that node's log
        (0 at the start of the log)."""
        previous_index = entries[0].index - 1 if entries else 0
        for entry in entries:
            if entry.index != previous_index + 1:
                raise InvariantViolation(
                    "log matching",
                    f"entries written out of order: {entry.index} after {previous_index}",
                    node=node,
                    index=entry.index,
                    term=entry.term,
                )
            if entry.term < prev_term:
                raise InvariantViolation(
                    "log matching",
                    f"term {entry.term} follows term {prev_term} in the log",
                    node=node,
                    index=entry.index,
                    term=entry.term,
                )
            self._match(node, entry, prev_term)
            previous_index = entry.index
            prev_term = entry.term

    def _match(self, node: int, entry: Entry, prev_term: int) -> None:
        value = (int(entry.kind), entry.data, prev_term)
        key = (entry.index, entry.term)
        known = self._seen.setdefault(key, value)
        assert len(self._seen) <= self._entries_max, "log matching index over its limit"
        if known == value:
            return
        what = "data" if known[:2] != value[:2] else f"previous term ({known[2]} vs {prev_term})"
        raise InvariantViolation(
            "log matching",
            f"two logs hold (index {entry.index}, term {entry.term}) with different {what}",
            node=node,
            index=entry.index,
            term=entry.term,
        )


class LeaderCompleteness:
    """A leader of term T holds every entry committed in a term before T (Raft 5.4.1).

    The commit term recorded for an entry is the term of the node that reported it committed,
    an upper bound of the term in which it really was committed, so the check is sound."""

    def __init__(self, committed_max: int = 1 << 20) -> None:
        self._committed: dict[int, tuple[int, int]] = {}  # index -> (entry term, commit term)
        self._committed_max = committed_max

    @property
    def commit_index(self) -> int:
        return max(self._committed, default=0)

    def observe_committed(self, index: int, term: int, commit_term: int) -> None:
        known = self._committed.get(index)
        if known is None:
            if len(self._committed) >= self._committed_max:
                raise AssertionError("committed log over its limit")
            self._committed[index] = (term, commit_term)
        elif known[0] != term:
            raise InvariantViolation(
                "leader completeness",
                f"index {index} committed with term {known[0]} and later with term {term}",
                index=index,
                term=term,
            )
        elif commit_term < known[1]:
            self._committed[index] = (term, commit_term)

    def check_leader(
        self, node: int, term: int, first_index: int, term_at: Callable[[int], int | None]
    ) -> None:
        """``term_at(i)`` is the term of the leader's entry at index i, None if it has none;
        entries below ``first_index`` are inside its snapshot and not checked here."""
        for index, (entry_term, commit_term) in self._committed.items():
            if commit_term >= term or index < first_index:
                continue
            held = term_at(index)
            if held != entry_term:
                raise InvariantViolation(
                    "leader completeness",
                    f"the new leader of term {term} holds term {held} at index {index}, "
                    f"committed with term {entry_term} in term {commit_term}",
                    node=node,
                    index=index,
                    term=term,
                )


class StateMachineSafety:
    """No two nodes apply different entries at one index; a node applies in order, no gaps,
    each index once per life, counting from the snapshot it restored (Raft 5.4.3, 7)."""

    def __init__(self, entries_max: int = 1 << 20) -> None:
        self._entries_max = entries_max
        self._applied: dict[int, tuple[int, int, bytes]] = {}  # index -> (term, kind, data)
        self._next: dict[int, int] = {}  # node -> index it must apply next
        self._images: dict[int, bytes] = {}  # index -> digest of the state machine image

    def started(self, node: int, snapshot_index: int) -> None:
        self._next[node] = snapshot_index + 1

    def observe_restore(self, node: int, snapshot_index: int) -> None:
        applied = self._next.get(node, 1) - 1
        if snapshot_index < applied:
            raise InvariantViolation(
                "state machine safety",
                f"restored a snapshot at {snapshot_index} over state applied up to {applied}",
                node=node,
                index=snapshot_index,
            )
        self._next[node] = snapshot_index + 1

    def observe_apply(self, node: int, entry: Entry) -> None:
        expected = self._next.get(node, 1)
        if entry.index != expected:
            raise InvariantViolation(
                "state machine safety",
                f"applied index {entry.index} when {expected} was next",
                node=node,
                index=entry.index,
                term=entry.term,
            )
        value = (entry.term, int(entry.kind), entry.data)
        known = self._applied.setdefault(entry.index, value)
        assert len(self._applied) <= self._entries_max, "applied index over its limit"
        if known != value:
            raise InvariantViolation(
                "state machine safety",
                f"applied (term {entry.term}, {entry.data!r}) where another node applied "
                f"(term {known[0]}, {known[2]!r})",
                node=node,
                index=entry.index,
                term=entry.term,
            )
        self._next[node] = expected + 1

    def observe_image(self, node: int, index: int, digest: bytes) -> None:
        """Two state machine images taken at one applied index must be identical."""
        known = self._images.setdefault(index, digest)
        assert len(self._images) <= self._entries_max, "image index over its limit"
        if known != digest:
            raise InvariantViolation(
                "state machine safety",
                f"state machine image at index {index} differs from another node's",
                node=node,
                index=index,
            )


class Provenance:
    """Every command a state machine applies was proposed by some client."""

    def __init__(self) -> None:
        self._proposed: set[str] = set()

    def observe_proposed(self, command_id: str) -> None:
        self._proposed.add(command_id)

    def observe_applied(self, node: int, index: int, command_id: str | None) -> None:
        if command_id is None:
            raise InvariantViolation(
                "provenance", "applied data that is not a client command", node=node, index=index
            )
        if command_id not in self._proposed:
            raise InvariantViolation(
                "provenance",
                f"applied command {command_id!r} that no client proposed",
                node=node,
                index=index,
            )


class AckDurability:
    """An entry counts as committed, and a write is acknowledged, only once the entry is durable
    on a majority of the voters (Raft 5.3; of the configuration in effect, thesis 4.1). Each
    committed index is checked once, when a node first reports it committed; each
    acknowledgement is checked when it is given."""

    def __init__(self) -> None:
        self.checked_to = 0  # every index up to here was durable on a majority when committed

    def observe_commit(
        self,
        node: int,
        commit_index: int,
        term_at: Callable[[int], int | None],
        stores: Sequence[DurableView],
        voters: int,
    ) -> None:
        """``term_at`` reads the reporting node's log (None where it is compacted)."""
        for index in range(self.checked_to + 1, commit_index + 1):
            term = term_at(index)
            if term is None:
                continue
            holders = sum(1 for store in stores if store.holds(index, term))
            if holders * 2 <= voters:
                raise InvariantViolation(
                    "committed means durable",
                    f"committed with the entry durable on {holders} of {voters} nodes",
                    node=node,
                    index=index,
                    term=term,
                )
        self.checked_to = max(self.checked_to, commit_index)

    def observe_ack(
        self, node: int, index: int, term: int, stores: Sequence[DurableView], voters: int
    ) -> None:
        """``stores`` are the acknowledging node's voters. An index already checked at its
        commit passed with the committing leader's configuration, which the acknowledging
        node may not know yet (a membership change in flight)."""
        if index <= self.checked_to:
            return
        holders = sum(1 for store in stores if store.holds(index, term))
        if holders * 2 <= voters:
            raise InvariantViolation(
                "acknowledged means durable",
                f"acknowledged with the entry durable on {holders} of {voters} nodes",
                node=node,
                index=index,
                term=term,
            )


class DurableMatchesMemory:
    """Once a Ready is handled, the durable store holds what the core believes it persisted."""

    def observe(
        self,
        node: int,
        memory: tuple[int, int, int, int],
        durable: tuple[int, int, int, int],
    ) -> None:
        """Both tuples are (term, voted_for, last_index, last_term)."""
        if memory != durable:
            raise InvariantViolation(
                "durable matches memory",
                "after a Ready the core has (term, vote, last index, last term) = "
                f"{memory} but the store holds {durable}",
                node=node,
                term=memory[0],
            )


class SafetyChecker:
    """All the checkers of one simulated cluster."""

    def __init__(self) -> None:
        self.election = ElectionSafety()
        self.terms = TermMonotonic()
        self.commits = CommitMonotonic()
        self.append_only = LeaderAppendOnly()
        self.log_matching = LogMatching()
        self.completeness = LeaderCompleteness()
        self.state_machine = StateMachineSafety()
        self.provenance = Provenance()
        self.acks = AckDurability()
        self.durable = DurableMatchesMemory()
