"""Linearizability checking of key-value register histories.

Theory of operation. A history is linearizable when every operation can be given a single
instant between its invocation and its completion such that, taken in the order of those
instants, the operations are a legal run of a sequential register (Herlihy & Wing, 1990). Each
key is an independent register whose initial value is null, and linearizability is local
(P-compositional): a history is linearizable exactly when each key's sub-history is. So we split
by key and check the keys one by one, smallest first, stopping at the first violation.

Outcomes shape the search. A ``fail`` operation did not happen and is dropped. An ``info``
operation (or an invoke that never completed) may have taken effect at any instant after its
invocation, or never: it has no completion event, so nothing forces it into the order, and an
``info`` read constrains nothing and is dropped. Before searching we also drop ``info`` writes
and cas operations whose effect no operation could observe (no read returns the value written
and no cas expects it), and ``info`` cas operations whose expected value nothing can produce:
placing them, or not, never changes what the others see.

Per key we run the Wing & Gong search (WGL) in the form Lowe gave it: the invocations and
completions of the completed operations sit in a doubly linked list in real-time order. Scanning
from the front, we place (linearize) the first invocation whose operation is legal in the
current register state, lift its invocation and completion out of the list (the lifted entry
keeps its own links, so putting it back is two assignments; the stack of choices is the undo
log), and restart the scan. Reaching a completion whose operation is not placed means the
choices so far are wrong: undo the last one and try the next invocation after it. The list
running out of completions means success; having nothing left to undo means no linearization
exists. A configuration (which operations are placed, the register value) met a second time is
not explored again, which keeps the search near linear on histories of bounded concurrency
(the worst case stays exponential: the problem is NP-complete). The search is a loop with an
explicit stack, so history length is not limited by Python's recursion limit.

Three refinements keep it fast. Just-in-time placement of ``info`` operations: they live in a
list of their own and are tried only when the scan is stuck at a completion, so no work goes
into placing them where nothing needs them. Interchangeable ``info`` operations (same kind, same
values) are counted, not named, in the configuration, so k of them cost k + 1 states, not 2^k;
and a configuration that placed more of them than one known to fail is pruned (``_Dominance``).
Greedy reads: a pending read that is legal now is placed at once with no alternative tried, since
moving a read earlier (everything that had to precede it is already placed) changes nothing.

Explanations. The latest completion the search was ever stuck at marks a prefix of the key's
history that is already not linearizable: every operation finishing earlier was placed, but
this one could not be. (The prefix must also reach the ``fail`` of any operation invoked before
that completion: until then the operation may yet take effect.) Without such failures it is the
shortest failing prefix of the key. We report the stuck operation with the operations running
alongside it and the last writes finished before it started. A read (or cas) that needs a value
nothing invoked before its completion could have stored is reported the same way, without a
search.

Budget. A check may be limited in wall time and in the number of configurations explored
(summed over keys). Running out ends the check with status ``unknown``: the answer is never
"linearizable" unless the search completed, and "not linearizable" only when it proved it.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replog.testing.history import Operation, Scalar, parse_history, value_identity

DEFAULT_TIME_BUDGET_S = 60.0
_PRUNE_PASSES_MAX = 8  # the pre-search pruning is an optimisation; bound its cost
_CONTEXT_CONCURRENT_MAX = 8
_CONTEXT_PRECEDING_MAX = 2
_TIME_CHECK_EVERY_STATES = 256
_DOMINANCE_SCAN_MAX = 4  # failed configurations compared per lookup: a cheap partial check
_ANY = -1  # in _Register.required: the operation accepts any state
_KEEP = -1  # in _Register.produced: the operation leaves the state as it is


class Status(enum.StrEnum):
    LINEARIZABLE = "linearizable"
    NOT_LINEARIZABLE = "not linearizable"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Violation:
    """Why one key's history is not linearizable.

    ``operation`` cannot be placed: the key's history up to ``prefix_end_line`` (its
    completion, or a later ``fail`` of an operation invoked before that) is already not
    linearizable. ``context`` holds the operations it has to be ordered against: those
    running alongside it and the last state-changing operations that finished before it
    started.
    """

    key: Scalar
    operation: Operation
    prefix_end_line: int
    context: tuple[Operation, ...]

    def explain(self) -> list[str]:
        key = json.dumps(self.key)
        lines = [
            f"key {key}: no order of its operations is legal for a register",
            f"cannot be linearized: {self.operation.describe()}",
            f"the history of key {key} up to line {self.prefix_end_line} already fails;",
            "operations it must be ordered against:",
        ]
        lines += [f"  {op.describe()}" for op in self.context] or ["  (none)"]
        return lines

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "operation": self.operation.to_json(),
            "prefix_end_line": self.prefix_end_line,
            "context": [op.to_json() for op in self.context],
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    status: Status
    reason: str
    operations: int
    keys_total: int
    keys_checked: int
    states_explored: int
    elapsed_s: float
    violation: Violation | None = None

    def explain(self) -> list[str]:
        """The lines that follow the status in a human report."""
        if self.violation is not None:
            return self.violation.explain()
        return [self.reason]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "reason": self.reason,
            "operations": self.operations,
            "keys_total": self.keys_total,
            "keys_checked": self.keys_checked,
            "states_explored": self.states_explored,
            "elapsed_s": round(self.elapsed_s, 6),
            "violation": None if self.violation is None else self.violation.to_json(),
        }


def check_history(
    events: Iterable[str | Mapping[str, Any]] | Iterable[Operation] | str,
    *,
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    max_states: int | None = None,
) -> CheckResult:
    """Check a history given as JSON lines, decoded events, or parsed ``Operation`` values.

    Raises ``HistoryError`` for malformed input. See ``check_operations`` for the budget.
    """
    if isinstance(events, str):
        events = events.splitlines()
    items: list[str | Mapping[str, Any] | Operation] = list(events)
    operations = [item for item in items if isinstance(item, Operation)]
    if not operations:
        operations = parse_history(item for item in items if not isinstance(item, Operation))
    elif len(operations) != len(items):
        raise TypeError("check_history takes either events or Operation values, not a mix")
    return check_operations(operations, time_budget_s=time_budget_s, max_states=max_states)


def check_operations(
    operations: Sequence[Operation],
    *,
    time_budget_s: float | None = DEFAULT_TIME_BUDGET_S,
    max_states: int | None = None,
) -> CheckResult:
    """Check parsed operations for linearizability, key by key.

    ``time_budget_s`` bounds the wall time and ``max_states`` the configurations explored over
    all keys (None: no limit). Exhausting either gives status ``unknown``.
    """
    if time_budget_s is not None and not time_budget_s > 0:
        raise ValueError(f"time_budget_s must be positive, got {time_budget_s!r}")
    if max_states is not None and max_states < 1:
        raise ValueError(f"max_states must be at least 1, got {max_states!r}")
    budget = _Budget(time.monotonic(), time_budget_s, max_states)
    groups = sorted(_group_by_key(operations), key=len)
    for checked, group in enumerate(groups):
        outcome = _check_key(group, budget)
        if outcome.status is Status.LINEARIZABLE:
            continue
        if outcome.violation is not None:
            summary = _Summary(len(operations), len(groups), checked + 1, budget)
            reason = f"key {json.dumps(group[0].key)} is not linearizable"
            return summary.result(Status.NOT_LINEARIZABLE, reason, outcome.violation)
        summary = _Summary(len(operations), len(groups), checked, budget)
        return summary.result(Status.UNKNOWN, budget.exhausted_reason(group[0].key))
    summary = _Summary(len(operations), len(groups), len(groups), budget)
    counted = f"{_plural(len(operations), 'operation')} on {_plural(len(groups), 'key')}"
    reason = f"all {counted} can be linearized"
    return summary.result(Status.LINEARIZABLE, reason)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


@dataclass(frozen=True, slots=True)
class _Summary:
    operations: int
    keys_total: int
    keys_checked: int
    budget: _Budget

    def result(
        self, status: Status, reason: str, violation: Violation | None = None
    ) -> CheckResult:
        return CheckResult(
            status=status,
            reason=reason,
            operations=self.operations,
            keys_total=self.keys_total,
            keys_checked=self.keys_checked,
            states_explored=self.budget.states,
            elapsed_s=time.monotonic() - self.budget.started_s,
            violation=violation,
        )


class _Budget:
    """What the search may still spend: configurations and wall time, shared by all keys."""

    def __init__(self, started_s: float, time_budget_s: float | None, max_states: int | None):
        self.started_s = started_s
        self.time_budget_s = time_budget_s
        self.max_states = max_states
        self.states = 0
        self.exhausted_by = ""

    def maybe_exhaust(self) -> bool:
        """Count one more configuration, unless the budget has run out (then says so)."""
        if self.max_states is not None and self.states >= self.max_states:
            self.exhausted_by = f"the state budget of {self.max_states} configurations"
            return True
        self.states += 1
        if self.time_budget_s is None or self.states % _TIME_CHECK_EVERY_STATES != 1:
            return False
        if time.monotonic() - self.started_s <= self.time_budget_s:
            return False
        self.exhausted_by = f"the time budget of {self.time_budget_s:g} s"
        return True

    def exhausted_reason(self, key: Scalar) -> str:
        return f"budget exhausted: {self.exhausted_by} ran out while checking key {json.dumps(key)}"


def _group_by_key(operations: Iterable[Operation]) -> list[list[Operation]]:
    groups: dict[tuple[str, Scalar], list[Operation]] = {}
    for op in operations:
        groups.setdefault(value_identity(op.key), []).append(op)
    return list(groups.values())


@dataclass(frozen=True, slots=True)
class _KeyOutcome:
    status: Status
    violation: Violation | None = None


def _check_key(operations: list[Operation], budget: _Budget) -> _KeyOutcome:
    relevant = _drop_irrelevant(operations)
    impossible = _first_impossible(relevant)
    if impossible is not None:
        return _KeyOutcome(Status.NOT_LINEARIZABLE, _violation(impossible, operations))
    register = _Register.build(relevant)
    status, stuck = _search(register, budget)
    if status is not Status.NOT_LINEARIZABLE:
        return _KeyOutcome(status)
    return _KeyOutcome(status, _violation(register.operations[stuck], operations))


def _first_impossible(operations: list[Operation]) -> Operation | None:
    """The first completed read or cas to need a value that nothing invoked before its
    completion could have stored: a violation found without searching. (A cas that stores
    the value it expects could store it itself, so it is left to the search.)"""
    first_stored: dict[tuple[str, Scalar], int] = {value_identity(None): 0}
    for op in operations:
        if op.f != "read":
            line = first_stored.setdefault(value_identity(op.written), op.invoke_line)
            first_stored[value_identity(op.written)] = min(line, op.invoke_line)
    impossible: list[Operation] = []
    for op in operations:
        if op.outcome != "ok" or op.f == "write":
            continue
        needed = op.result if op.f == "read" else op.cas_expected
        if op.f == "cas" and value_identity(needed) == value_identity(op.written):
            continue
        assert op.complete_line is not None
        if first_stored.get(value_identity(needed), op.complete_line) >= op.complete_line:
            impossible.append(op)
    return min(impossible, key=lambda op: op.complete_line or 0, default=None)


def _drop_irrelevant(operations: list[Operation]) -> list[Operation]:
    """Drop what cannot matter: failed operations, unanswered reads, and ``info`` writes whose
    effect no one could observe or cas operations that could never apply (see the top)."""
    kept = [op for op in operations if op.outcome != "fail"]
    kept = [op for op in kept if op.f != "read" or op.outcome == "ok"]
    for _ in range(_PRUNE_PASSES_MAX):
        observed = {value_identity(op.result) for op in kept if op.f == "read"}
        observed |= {value_identity(op.cas_expected) for op in kept if op.f == "cas"}
        producible = {value_identity(None)}
        producible |= {value_identity(op.written) for op in kept if op.f != "read"}
        still = [op for op in kept if not _is_dead(op, observed, producible)]
        if len(still) == len(kept):
            break
        kept = still
    return kept


def _is_dead(
    op: Operation, observed: set[tuple[str, Scalar]], producible: set[tuple[str, Scalar]]
) -> bool:
    if op.outcome != "info":
        return False
    if op.f == "read":
        return False
    unobserved = value_identity(op.written) not in observed
    return unobserved or (op.f == "cas" and value_identity(op.cas_expected) not in producible)


@dataclass(frozen=True, slots=True)
class _Register:
    """One key's operations, reduced to small integers for the search.

    Values are interned (null is 0). Operation ``i`` is legal in state ``s`` when
    ``required[i]`` is ``_ANY`` or ``s``; it then leaves ``produced[i]`` (``s`` for ``_KEEP``).
    Entries ``1..n`` are the invocations and completions in real-time order; entry 0 is the
    head of the main list and ``n + 1`` its tail, ``n + 2`` and ``n + 3`` the head and tail of
    the list of ``info`` invocations (see ``_initial_links``). ``entry_op[e]`` is entry ``e``'s
    operation and
    ``return_of[e]`` is, for an invocation, its completion's entry (0 when it has none, as for
    ``info``) and -1 for completions and the sentinels.

    ``weight[i]`` is what placing operation ``i`` adds to the number that records which
    operations are placed (the first half of a configuration). A completed operation owns one
    bit, the low ``completed`` bits. ``info`` operations with the same ``required`` and
    ``produced`` are interchangeable once invoked (no completion tells them apart), so they
    share one counter, a bit field above those bits: which of them were placed does not
    matter, only how many, and the search explores each count once instead of each subset.
    Each field has a guard bit above it (``info_guards``) so that fields can be compared all at
    once: counts ``a <= b`` field by field exactly when ``((b | guards) - a) & guards`` is
    ``guards``. Placing fewer ``info`` operations is never worse (each may also never happen),
    which is what ``_Dominance`` uses.

    ``greedy[i]`` marks operations that never change the state (reads, and a cas whose
    expected and new values are equal). Once such an operation is pending and legal, placing it
    at once is as good as any later place: everything that had to precede it is placed
    already, and it leaves the state unchanged. So the search never tries the alternatives to
    placing it, and when placing it leads to a configuration known to fail, so does the
    current one.
    """

    operations: tuple[Operation, ...]
    required: tuple[int, ...]
    produced: tuple[int, ...]
    weight: tuple[int, ...]
    completed: int
    info_guards: int
    greedy: tuple[bool, ...]
    entry_op: tuple[int, ...]
    return_of: tuple[int, ...]

    @staticmethod
    def build(operations: list[Operation]) -> _Register:
        assert all(op.outcome in ("ok", "info") for op in operations)
        interned: dict[tuple[str, Scalar], int] = {value_identity(None): 0}

        def intern(value: Scalar) -> int:
            return interned.setdefault(value_identity(value), len(interned))

        required: list[int] = []
        produced: list[int] = []
        for op in operations:
            if op.f == "read":
                required.append(intern(op.result))
                produced.append(_KEEP)
            else:
                required.append(intern(op.cas_expected) if op.f == "cas" else _ANY)
                produced.append(intern(op.written))
        greedy = tuple(
            op.outcome == "ok" and need != _ANY and new in (_KEEP, need)
            for op, need, new in zip(operations, required, produced, strict=True)
        )
        weight, info_guards = _weights(operations, required, produced)
        entry_op, return_of = _entries(operations)
        return _Register(
            tuple(operations),
            tuple(required),
            tuple(produced),
            weight,
            sum(op.outcome == "ok" for op in operations),
            info_guards,
            greedy,
            entry_op,
            return_of,
        )


def _weights(
    operations: list[Operation], required: list[int], produced: list[int]
) -> tuple[tuple[int, ...], int]:
    """Each operation's weight, and the guard bits of the info counters (see ``_Register``)."""
    counts: dict[tuple[int, int], int] = {}
    for op, need, new in zip(operations, required, produced, strict=True):
        if op.outcome == "info":
            counts[need, new] = counts.get((need, new), 0) + 1
    offset = sum(op.outcome == "ok" for op in operations)
    unit: dict[tuple[int, int], int] = {}
    guards = 0
    for kind, count in counts.items():
        unit[kind] = 1 << offset
        offset += count.bit_length()
        guards |= 1 << offset
        offset += 1
    weight: list[int] = []
    bit = 1
    for op, need, new in zip(operations, required, produced, strict=True):
        if op.outcome == "info":
            weight.append(unit[need, new])
        else:
            weight.append(bit)
            bit <<= 1
    return tuple(weight), guards


def _entries(operations: list[Operation]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    events: list[tuple[int, int]] = []  # (line, operation index); a line holds one event
    for index, op in enumerate(operations):
        events.append((op.invoke_line, index))
        if op.outcome == "ok":
            assert op.complete_line is not None
            events.append((op.complete_line, index))
    events.sort()
    entry_op = [-1]
    return_of = [-1]
    call_entry: dict[int, int] = {}
    for entry, (_, index) in enumerate(events, start=1):
        entry_op.append(index)
        if index in call_entry:
            return_of[call_entry[index]] = entry
            return_of.append(-1)
        else:
            call_entry[index] = entry
            return_of.append(0)
    entry_op += [-1, -1, -1]  # the sentinels: main tail, info head, info tail
    return_of += [-1, -1, -1]
    return tuple(entry_op), tuple(return_of)


def _initial_links(register: _Register) -> tuple[list[int], list[int]]:
    """The two lists, as ``after`` and ``before`` arrays: the main list (head 0) holds the
    completed operations' invocations and completions; the info list holds the invocations
    of ``info`` operations. Both are in real-time order."""
    size = len(register.entry_op)
    main_tail, info_head, info_tail = size - 3, size - 2, size - 1
    after = [0] * size
    before = [0] * size
    last_main, last_info = 0, info_head
    for entry in range(1, main_tail):
        if register.return_of[entry] == 0:  # the invocation of an info operation
            after[last_info], before[entry], last_info = entry, last_info, entry
        else:
            after[last_main], before[entry], last_main = entry, last_main, entry
    after[last_main], before[main_tail] = main_tail, last_main
    after[last_info], before[info_tail] = info_tail, last_info
    return after, before


def _search(register: _Register, budget: _Budget) -> tuple[Status, int]:
    """The Wing & Gong search; returns the status and, when not linearizable, the index of
    the operation whose completion the search got stuck at latest (else -1).

    The scan of the main list places completed operations. Reaching a completion whose
    operation is not placed, it tries the ``info`` operations invoked before that completion
    (``bound``) before backtracking: ``info`` operations are placed only when needed.
    """
    required, produced, greedy = register.required, register.produced, register.greedy
    weight, entry_op, return_of = register.weight, register.entry_op, register.return_of
    after, before = _initial_links(register)
    main_tail, info_head = len(entry_op) - 3, len(entry_op) - 2
    seen: set[tuple[int, int]] = set()
    dominance = _Dominance(register) if register.info_guards else None
    stack: list[tuple[int, int, int]] = []  # (placed invocation entry, state before, bound)
    linearized = state = stuck = bound = 0
    entry = after[0]
    while entry != main_tail:
        op = entry_op[entry]
        if bound == 0 and return_of[entry] < 0:  # a completion blocks the scan
            stuck = max(stuck, entry)
            bound, entry = entry, after[info_head]
            continue
        if bound and entry > bound:  # no info operation left to try
            pass
        elif required[op] not in (_ANY, state) or (
            bound and required[op] == _ANY and stack and stack[-1][2]
        ):  # illegal, or an info write right after an info operation that it would hide
            entry = after[entry]
            continue
        else:
            memo = (linearized + weight[op], state if produced[op] == _KEEP else produced[op])
            if memo not in seen and not (dominance and dominance.covers(*memo)):
                if budget.maybe_exhaust():
                    return Status.UNKNOWN, -1
                seen.add(memo)
                stack.append((entry, state, bound))
                linearized, state = memo
                _unlink(after, before, entry)
                _unlink(after, before, return_of[entry])
                entry, bound = after[0], 0
                continue
            if not greedy[op]:
                entry = after[entry]
                continue
        # Backtrack: undo the latest choice, and the greedy ones that no alternative can beat.
        while True:
            if not stack:
                return Status.NOT_LINEARIZABLE, entry_op[stuck]
            if dominance:
                dominance.record(linearized, state)
            entry, state, bound = stack.pop()
            linearized -= weight[entry_op[entry]]
            _relink(after, before, return_of[entry])
            _relink(after, before, entry)
            if not greedy[entry_op[entry]]:
                break
        entry = after[entry]
    return Status.LINEARIZABLE, -1


class _Dominance:
    """Configurations known to fail, to prune those that are no better.

    A configuration that placed the same completed operations, reached the same state, and
    placed at least as many ``info`` operations of every kind as one known to fail, fails too:
    any continuation of it is a continuation of the other. Only the latest few failures of each
    (completed operations, state) pair are compared: a full scan costs more than it saves.
    """

    def __init__(self, register: _Register) -> None:
        self.completed_mask = (1 << register.completed) - 1
        self.guards = register.info_guards
        self.failed: dict[tuple[int, int], list[int]] = {}

    def covers(self, linearized: int, state: int) -> bool:
        known = self.failed.get((linearized & self.completed_mask, state))
        if not known:
            return False
        counts = linearized | self.guards
        recent = known[-_DOMINANCE_SCAN_MAX:]
        return any((counts - other) & self.guards == self.guards for other in recent)

    def record(self, linearized: int, state: int) -> None:
        self.failed.setdefault((linearized & self.completed_mask, state), []).append(linearized)


def _unlink(after: list[int], before: list[int], entry: int) -> None:
    if entry > 0:
        after[before[entry]] = after[entry]
        before[after[entry]] = before[entry]


def _relink(after: list[int], before: list[int], entry: int) -> None:
    """Undo ``_unlink(entry)``; undoing in the reverse order of unlinking restores the list."""
    if entry > 0:
        after[before[entry]] = entry
        before[after[entry]] = entry


def _may_matter(op: Operation) -> bool:
    """Whether an operation can take part in an explanation (not failed, not an unanswered read)."""
    return op.outcome == "ok" or (op.outcome == "info" and op.f != "read")


def _violation(stuck: Operation, operations: list[Operation]) -> Violation:
    assert stuck.complete_line is not None, "only a completed operation can get stuck"
    start, end = stuck.invoke_line, stuck.complete_line
    relevant = [op for op in operations if _may_matter(op)]
    concurrent = [  # an info operation may take effect at any time after its invocation
        op
        for op in relevant
        if op is not stuck
        and op.invoke_line < end
        and (op.outcome == "info" or (op.complete_line or 0) > start)
    ]
    preceding = [
        op
        for op in relevant
        if op.f != "read" and op.outcome == "ok" and (op.complete_line or 0) < start
    ]
    preceding.sort(key=lambda op: op.complete_line or 0)
    chosen = preceding[-_CONTEXT_PRECEDING_MAX:] + concurrent[-_CONTEXT_CONCURRENT_MAX:]
    context = sorted({op.invoke_line: op for op in chosen}.values(), key=lambda op: op.invoke_line)
    failed_by = [
        op.complete_line
        for op in operations
        if op.outcome == "fail" and op.invoke_line < end and op.complete_line is not None
    ]
    return Violation(stuck.key, stuck, max([end, *failed_by]), tuple(context))
