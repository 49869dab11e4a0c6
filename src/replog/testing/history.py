"""Client histories of register operations, parsed from Jepsen-style JSON lines.

A history is one JSON object per line, in real-time order::

    {"process": 3, "type": "invoke", "f": "cas", "key": "x", "value": [1, 2], "time": 1234}
    {"process": 3, "type": "ok", "f": "cas", "key": "x", "value": [1, 2], "time": 1301}

``type`` is ``invoke``, ``ok``, ``fail`` (the operation definitely did not take effect) or ``info``
(its outcome is unknown). ``f`` is ``read``, ``write`` or ``cas``. A write's value is the value
written, a cas's value is ``[expected, new]``, a read's ``ok`` carries the value read (null for a
missing key). Values and keys are JSON scalars compared by JSON equality (``true`` is not ``1``).
``time`` is optional and unused: line order is the real-time order.

A completion (``ok``/``fail``/``info``) closes the open invoke of the same process. Its ``f`` and
``key`` may be omitted, but when present they must match the invoke. An invoke that is never
completed counts as ``info``. After ``info`` a process may invoke again.

``parse_history`` pairs invokes with completions into ``Operation`` values, one per invoke, in
invocation order; bad input raises ``HistoryError`` naming the (1-based) line.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias, TypeVar

from replog.core.errors import ReplogError

Scalar: TypeAlias = bool | int | float | str | None
Process: TypeAlias = int | str
OpKind: TypeAlias = Literal["read", "write", "cas"]
Outcome: TypeAlias = Literal["ok", "fail", "info"]

OP_KINDS: tuple[OpKind, ...] = ("read", "write", "cas")
OUTCOMES: tuple[Outcome, ...] = ("ok", "fail", "info")
_EVENT_TYPES = ("invoke", *OUTCOMES)

_Choice = TypeVar("_Choice", bound=str)


class HistoryError(ReplogError):
    """The history is malformed; ``line`` is the 1-based line (or event position) at fault."""

    def __init__(self, line: int, problem: str) -> None:
        super().__init__(f"line {line}: {problem}")
        self.line = line
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Operation:
    """One invoke paired with its completion.

    ``value`` is the invoke's argument: the value written, ``(expected, new)`` for a cas, and
    None for a read. ``result`` is the value an ``ok`` read returned (None otherwise).
    ``complete_line`` is None for an invoke that never completed (its outcome is ``info``).
    """

    process: Process
    f: OpKind
    key: Scalar
    value: Scalar | tuple[Scalar, Scalar]
    outcome: Outcome
    result: Scalar
    invoke_line: int
    complete_line: int | None

    @property
    def cas_expected(self) -> Scalar:
        """The value a cas compares against."""
        assert isinstance(self.value, tuple), "only a cas has an expected value"
        return self.value[0]

    @property
    def written(self) -> Scalar:
        """The value the operation stores if it takes effect: a write's value, a cas's new one."""
        assert self.f != "read", "a read writes nothing"
        return self.value[1] if isinstance(self.value, tuple) else self.value

    def lines(self) -> str:
        """Where the operation sits in the history, e.g. ``lines 4-9`` or ``line 4 (open)``."""
        if self.complete_line is None:
            return f"line {self.invoke_line} (never completed)"
        return f"lines {self.invoke_line}-{self.complete_line}"

    def describe(self) -> str:
        """A one-line human description, e.g. ``process 3 cas 'x' 1->2: ok (lines 4-9)``."""
        key = json.dumps(self.key)
        if self.f == "read":
            shown = json.dumps(self.result) if self.outcome == "ok" else "?"
            action = f"read {key} -> {shown}"
        elif self.f == "write":
            action = f"write {key} := {json.dumps(self.value)}"
        else:
            action = f"cas {key} {json.dumps(self.cas_expected)}->{json.dumps(self.written)}"
        return f"process {json.dumps(self.process)} {action}: {self.outcome} ({self.lines()})"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready description of the operation."""
        value = list(self.value) if isinstance(self.value, tuple) else self.value
        return {
            "process": self.process,
            "f": self.f,
            "key": self.key,
            "value": value,
            "outcome": self.outcome,
            "result": self.result,
            "invoke_line": self.invoke_line,
            "complete_line": self.complete_line,
        }


def value_identity(value: Scalar) -> tuple[str, Scalar]:
    """A hashable token equal for two scalars exactly when they are equal as JSON values.

    Python says ``True == 1``; JSON does not. Numbers compare by numeric value (``1 == 1.0``).
    """
    if value is None:
        return ("null", None)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        return ("number", value)
    return ("string", value)


def parse_history(lines: Iterable[str | Mapping[str, Any]] | str) -> list[Operation]:
    """Parse a history into operations, in invocation order.

    ``lines`` holds JSON text lines (blank ones are skipped but counted) or already-decoded
    event mappings; a single string is split into lines. Raises ``HistoryError``.
    """
    if isinstance(lines, str):
        lines = lines.splitlines()
    operations: list[Operation] = []
    open_by_process: dict[Process, int] = {}  # process -> index of its open invoke
    for line, item in enumerate(lines, start=1):
        event = _decode(item, line)
        if event is not None:
            _apply_event(event, line, operations, open_by_process)
    return operations


def _decode(item: str | Mapping[str, Any], line: int) -> Mapping[str, Any] | None:
    if isinstance(item, Mapping):
        return item
    if not item.strip():
        return None
    try:
        event = json.loads(item, parse_constant=_reject_constant)
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        raise HistoryError(line, f"malformed JSON ({error})") from None
    if not isinstance(event, dict):
        raise HistoryError(line, f"expected a JSON object, got {type(event).__name__}")
    return event


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _apply_event(
    event: Mapping[str, Any],
    line: int,
    operations: list[Operation],
    open_by_process: dict[Process, int],
) -> None:
    process = _field_process(event, line)
    event_type = _field_choice(event, "type", _EVENT_TYPES, line)
    if event_type == "invoke":
        if process in open_by_process:
            opened = operations[open_by_process[process]].invoke_line
            raise HistoryError(
                line, f"process {process!r} invokes again while its invoke on line {opened} is open"
            )
        open_by_process[process] = len(operations)
        operations.append(_invoke(event, process, line))
        return
    index = open_by_process.pop(process, None)
    if index is None:
        raise HistoryError(line, f"{event_type!r} for process {process!r} without an open invoke")
    operations[index] = _complete(operations[index], event, event_type, line)


def _invoke(event: Mapping[str, Any], process: Process, line: int) -> Operation:
    f = _field_choice(event, "f", OP_KINDS, line)
    key = _field_scalar(event, "key", line)
    value: Scalar | tuple[Scalar, Scalar] = None
    if f == "write":
        value = _field_scalar(event, "value", line)
    elif f == "cas":
        value = _field_cas(event, line)
    return Operation(
        process=process,
        f=f,
        key=key,
        value=value,
        outcome="info",
        result=None,
        invoke_line=line,
        complete_line=None,
    )


def _complete(op: Operation, event: Mapping[str, Any], outcome: str, line: int) -> Operation:
    assert outcome in OUTCOMES
    where = f"the invoke on line {op.invoke_line}"
    if event.get("f") is not None and event["f"] != op.f:
        raise HistoryError(line, f"completion f {event['f']!r} does not match {where} ({op.f!r})")
    if "key" in event:
        key = _field_scalar(event, "key", line)
        if value_identity(key) != value_identity(op.key):
            raise HistoryError(line, f"completion key {key!r} does not match {where} ({op.key!r})")
    result: Scalar = None
    if op.f == "read" and outcome == "ok":
        if "value" not in event:
            raise HistoryError(line, "a read's ok must carry the value read (null if missing)")
        result = _field_scalar(event, "value", line)
    return replace(op, outcome=_as_outcome(outcome), result=result, complete_line=line)


def _as_outcome(name: str) -> Outcome:
    for outcome in OUTCOMES:
        if outcome == name:
            return outcome
    raise AssertionError(f"not an outcome: {name!r}")


def _field_process(event: Mapping[str, Any], line: int) -> Process:
    if "process" not in event:
        raise HistoryError(line, "missing field 'process'")
    process = event["process"]
    if isinstance(process, bool) or not isinstance(process, int | str):
        raise HistoryError(line, f"field 'process' must be an integer or a string: {process!r}")
    return process


def _field_choice(
    event: Mapping[str, Any], name: str, choices: tuple[_Choice, ...], line: int
) -> _Choice:
    if name not in event:
        raise HistoryError(line, f"missing field {name!r}")
    for choice in choices:
        if event[name] == choice:
            return choice
    allowed = ", ".join(choices)
    raise HistoryError(line, f"unknown {name} {event[name]!r} (expected one of: {allowed})")


def _field_scalar(event: Mapping[str, Any], name: str, line: int) -> Scalar:
    if name not in event:
        raise HistoryError(line, f"missing field {name!r}")
    return _scalar(event[name], f"field {name!r}", line)


def _field_cas(event: Mapping[str, Any], line: int) -> tuple[Scalar, Scalar]:
    if "value" not in event:
        raise HistoryError(line, "missing field 'value'")
    value = event["value"]
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise HistoryError(line, f"a cas value must be a list [expected, new]: {value!r}")
    expected = _scalar(value[0], "the cas expected value", line)
    new = _scalar(value[1], "the cas new value", line)
    return (expected, new)


def _scalar(value: object, what: str, line: int) -> Scalar:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    raise HistoryError(line, f"{what} must be a JSON scalar (null, boolean, number, string)")
