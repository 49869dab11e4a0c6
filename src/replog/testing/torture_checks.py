"""Checkers of the bank and append workloads of ``replog torture`` (the register workload goes to
the linearizability checker, ``replog.testing.linearizability``).

Their histories use the checker's JSON-lines shape (``process``, ``type`` of ``invoke`` / ``ok``
/ ``fail`` / ``info``, ``f``, ``key``, ``value``, ``time``) with their own operations:

- bank: ``transfer`` (value ``{"from", "to", "amount"}``) and ``read`` (an ``ok`` carries every
  account's balance, ``{"a0": 100, ...}``); the end-of-run reads, one per node, have ``process``
  ``"final-<node>"``.
- append: ``append`` (value: the unique string appended to the list under ``key``) and ``read``
  (an ``ok`` carries the list read); final reads as for the bank.

Each checker returns a list of problems (empty: clean); every problem names the history lines.
They check what follows from the workloads' invariants, not full linearizability:

- bank: every read sums to the total and has no negative balance; every node's final balances
  are equal and sum to the total.
- append: no list ever holds a value twice; every read of a key is a prefix of every longer read
  of it (the list only grows, so readers agree on one order), and the final reads of all nodes
  are equal; every acknowledged append is in the final list; no append that failed (certainly
  not applied) or that nobody invoked appears; an append acknowledged before a read started is
  in that read.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from replog.testing.history import HistoryError

PROBLEMS_MAX = 20  # keep a report readable: the first problems are the useful ones
FINAL_PREFIX = "final-"


@dataclass(frozen=True, slots=True)
class Op:
    """One invoke with its completion; ``result`` is the ``ok`` event's value."""

    process: int | str
    f: str
    key: Any
    value: Any
    outcome: str  # ok, fail or info (also for an invoke never completed)
    result: Any
    invoke_line: int
    complete_line: int | None

    @property
    def final(self) -> bool:
        return isinstance(self.process, str) and self.process.startswith(FINAL_PREFIX)

    def where(self) -> str:
        end = "open" if self.complete_line is None else str(self.complete_line)
        return f"lines {self.invoke_line}-{end}"


def pair_events(lines: Iterable[str | Mapping[str, Any]]) -> list[Op]:
    """Pair invokes with completions (per process), in invocation order."""
    ops: list[Op] = []
    open_by_process: dict[int | str, int] = {}
    for number, item in enumerate(lines, start=1):
        event = _decode(item, number)
        if event is None:
            continue
        process, kind = event.get("process"), event.get("type")
        if not isinstance(process, int | str) or isinstance(process, bool):
            raise HistoryError(number, f"bad process {process!r}")
        if kind == "invoke":
            if process in open_by_process:
                raise HistoryError(number, f"process {process!r} invokes while an op is open")
            open_by_process[process] = len(ops)
            f = str(event.get("f"))
            ops.append(
                Op(process, f, event.get("key"), event.get("value"), "info", None, number, None)
            )
        elif kind in ("ok", "fail", "info"):
            index = open_by_process.pop(process, None)
            if index is None:
                raise HistoryError(number, f"{kind} of process {process!r} without an invoke")
            op = ops[index]
            result = event.get("value") if kind == "ok" else None
            ops[index] = Op(
                op.process, op.f, op.key, op.value, kind, result, op.invoke_line, number
            )
        else:
            raise HistoryError(number, f"unknown type {kind!r}")
    return ops


def _decode(item: str | Mapping[str, Any], number: int) -> Mapping[str, Any] | None:
    if isinstance(item, Mapping):
        return item
    if not item.strip():
        return None
    try:
        event = json.loads(item)
    except ValueError as error:
        raise HistoryError(number, f"malformed JSON ({error})") from None
    if not isinstance(event, dict):
        raise HistoryError(number, "expected a JSON object")
    return event


def check_bank(
    ops: list[Op], accounts: list[str], total: int, nodes: Sequence[str] = ()
) -> list[str]:
    """Problems of a bank history (see the module docstring); every one of ``nodes`` must
    have answered its final read."""
    problems: list[str] = []
    finals: dict[str, tuple[Op, dict[str, int]]] = {}
    for op in ops:
        if op.f != "read" or op.outcome != "ok":
            continue
        balances = op.result
        if not isinstance(balances, dict) or sorted(balances) != sorted(accounts):
            problems.append(f"read {op.where()}: accounts {balances!r}, expected {accounts}")
            continue
        if sum(balances.values()) != total:
            problems.append(f"read {op.where()}: balances sum to {sum(balances.values())}, "
                            f"not {total}: {balances}")  # fmt: skip
        negative = {name: amount for name, amount in balances.items() if amount < 0}
        if negative:
            problems.append(f"read {op.where()}: negative balance {negative}")
        if op.final:
            finals[str(op.process)] = (op, balances)
    problems.extend(_finals_disagree(finals, nodes))
    return problems[:PROBLEMS_MAX]


def _finals_disagree(finals: Mapping[str, tuple[Op, Any]], nodes: Sequence[str]) -> list[str]:
    views = sorted(finals.items())
    silent = [n for n in nodes if FINAL_PREFIX + n not in finals]
    if silent:
        return [f"no final read answered by {', '.join(silent)}"]
    if not views:
        return ["no final read answered"]
    first_name, (first_op, first) = views[0]
    return [
        f"final reads disagree: {first_name} ({first_op.where()}) {first!r} "
        f"vs {name} ({op.where()}) {value!r}"
        for name, (op, value) in views[1:]
        if value != first
    ]


def check_append(ops: list[Op], nodes: Sequence[str] = ()) -> list[str]:
    """Problems of an append history (see the module docstring); every one of ``nodes`` must
    have answered its final read of every key."""
    problems: list[str] = []
    by_key: dict[str, list[Op]] = {}
    for op in ops:
        by_key.setdefault(json.dumps(op.key), []).append(op)
    for key, key_ops in sorted(by_key.items()):
        problems.extend(_check_append_key(key, key_ops, nodes))
    return problems[:PROBLEMS_MAX]


def _check_append_key(key: str, ops: list[Op], nodes: Sequence[str]) -> list[str]:
    problems: list[str] = []
    reads = [op for op in ops if op.f == "read" and op.outcome == "ok"]
    appends = {op.value: op for op in ops if op.f == "append"}
    for read in reads:
        problems.extend(_check_one_list(key, read, appends))
    ordered = sorted(reads, key=lambda op: len(op.result) if isinstance(op.result, list) else 0)
    for shorter, longer in itertools.pairwise(ordered):
        if longer.result[: len(shorter.result)] != shorter.result:
            problems.append(
                f"key {key}: reads disagree on the order: {shorter.where()} {shorter.result} "
                f"is not a prefix of {longer.where()} {longer.result}"
            )
            break
    finals = {str(op.process): (op, op.result) for op in reads if op.final}
    problems.extend(f"key {key}: {p}" for p in _finals_disagree(finals, nodes))
    if finals:
        final = set(next(iter(finals.values()))[1])
        for value, op in appends.items():
            if op.outcome == "ok" and value not in final:
                problems.append(f"key {key}: acknowledged append {value!r} ({op.where()}) lost")
    problems.extend(_check_real_time(key, reads, appends))
    return problems


def _check_one_list(key: str, read: Op, appends: Mapping[Any, Op]) -> list[str]:
    values = read.result
    if not isinstance(values, list):
        return [f"key {key}: read {read.where()} returned {values!r}, not a list"]
    problems: list[str] = []
    if len(set(map(json.dumps, values))) != len(values):
        counts: dict[str, int] = {}
        for value in values:
            counts[json.dumps(value)] = counts.get(json.dumps(value), 0) + 1
        twice = [json.loads(text) for text, count in counts.items() if count > 1]
        problems.append(f"key {key}: read {read.where()} holds {twice!r} more than once")
    for value in values:
        append = appends.get(value)
        if append is None:
            problems.append(f"key {key}: read {read.where()} holds {value!r}, never appended")
        elif append.outcome == "fail":
            problems.append(
                f"key {key}: read {read.where()} holds {value!r}, whose append failed "
                f"({append.where()})"
            )
    return problems


def _check_real_time(key: str, reads: list[Op], appends: Mapping[Any, Op]) -> list[str]:
    acked = sorted(
        (op.complete_line, value)
        for value, op in appends.items()
        if op.outcome == "ok" and op.complete_line is not None
    )
    problems: list[str] = []
    for read in reads:
        present = set(read.result) if isinstance(read.result, list) else set()
        missing = [
            value for line, value in acked if line < read.invoke_line and value not in present
        ]
        if missing:
            problems.append(
                f"key {key}: read {read.where()} misses {missing[:5]!r}, acknowledged before "
                "it started (stale read)"
            )
    return problems
