"""The linearizability checker: hand-written histories, a brute-force oracle, properties."""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from replog.testing.history import Operation, parse_history, value_identity
from replog.testing.linearizability import CheckResult, Status, check_history, check_operations

# --------------------------------------------------------------------------------------------
# A tiny notation: each helper is one history line.
# --------------------------------------------------------------------------------------------


def event(process: Any, type_: str, f: str, value: Any = None, key: Any = "x") -> str:
    return json.dumps({"process": process, "type": type_, "f": f, "key": key, "value": value})


def invoke(process: Any, f: str, value: Any = None, key: Any = "x") -> str:
    return event(process, "invoke", f, value, key)


def ok(process: Any, f: str, value: Any = None, key: Any = "x") -> str:
    return event(process, "ok", f, value, key)


def fail(process: Any, f: str, value: Any = None, key: Any = "x") -> str:
    return event(process, "fail", f, value, key)


def info(process: Any, f: str, value: Any = None, key: Any = "x") -> str:
    return event(process, "info", f, value, key)


def write(process: Any, value: Any, key: Any = "x") -> list[str]:
    return [invoke(process, "write", value, key), ok(process, "write", value, key)]


def read(process: Any, value: Any, key: Any = "x") -> list[str]:
    return [invoke(process, "read", None, key), ok(process, "read", value, key)]


def check(lines: list[str], **budget: Any) -> CheckResult:
    return check_history(lines, **budget)


# --------------------------------------------------------------------------------------------
# Hand-written histories.
# --------------------------------------------------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = check([])
    assert result.status == "linearizable"
    assert result.violation is None


def test_sequential_reads_see_the_latest_write() -> None:
    history = [*read(0, None), *write(0, 1), *read(1, 1), *write(1, 2), *read(0, 2)]
    assert check(history).status is Status.LINEARIZABLE


def test_stale_read_is_not_linearizable() -> None:
    history = [*write(0, 1), *write(0, 2), *read(1, 1)]
    result = check(history)
    assert result.status == "not linearizable"
    assert result.violation is not None
    assert result.violation.key == "x"
    assert (result.violation.operation.invoke_line, result.violation.prefix_end_line) == (5, 6)
    assert [op.invoke_line for op in result.violation.context] == [1, 3]
    text = "\n".join(result.explain())
    assert "lines 5-6" in text
    assert "lines 3-4" in text


def test_read_of_a_value_never_written() -> None:
    result = check([*write(0, 1), *read(1, 7), *read(1, 1)])
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.operation.result == 7
    assert result.violation.prefix_end_line == 4


def test_read_of_a_value_written_only_later() -> None:
    result = check([*read(1, 5), *write(0, 5)])
    assert result.status is Status.NOT_LINEARIZABLE


def test_concurrent_read_may_see_old_or_new_value() -> None:
    for seen in (None, 1):
        history = [invoke(0, "write", 1), invoke(1, "read"), ok(1, "read", seen), ok(0, "write", 1)]
        assert check(history).status is Status.LINEARIZABLE, seen


def test_read_after_a_concurrent_read_saw_the_new_value_must_not_go_back() -> None:
    history = [
        invoke(0, "write", 1),
        *read(1, 1),
        *read(2, None),  # starts after a read saw 1: the write already took effect
        ok(0, "write", 1),
    ]
    result = check(history)
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.operation.invoke_line == 4


def test_two_concurrent_cas_cannot_both_succeed() -> None:
    both = [
        *write(0, 0),
        invoke(1, "cas", [0, 1]),
        invoke(2, "cas", [0, 2]),
        ok(1, "cas", [0, 1]),
        ok(2, "cas", [0, 2]),
    ]
    assert check(both).status is Status.NOT_LINEARIZABLE
    one = [*both[:5], fail(2, "cas", [0, 2]), *read(0, 1)]
    assert check(one).status is Status.LINEARIZABLE


def test_concurrent_cas_chain_orders_itself() -> None:
    history = [
        *write(0, 0),
        invoke(1, "cas", [1, 2]),
        invoke(2, "cas", [0, 1]),
        ok(1, "cas", [1, 2]),
        ok(2, "cas", [0, 1]),
        *read(0, 2),
    ]
    assert check(history).status is Status.LINEARIZABLE


def test_a_failed_cas_is_dropped() -> None:
    history = [*write(0, 0), invoke(1, "cas", [0, 5]), fail(1, "cas", [0, 5]), *read(0, 0)]
    assert check(history).status is Status.LINEARIZABLE


def test_a_failed_write_did_not_happen() -> None:
    history = [*write(0, 1), invoke(1, "write", 2), fail(1, "write", 2), *read(0, 2)]
    assert check(history).status is Status.NOT_LINEARIZABLE


def test_a_successful_cas_needs_its_expected_value() -> None:
    history = [*write(0, 1), invoke(1, "cas", [0, 5]), ok(1, "cas", [0, 5])]
    assert check(history).status is Status.NOT_LINEARIZABLE


def test_info_write_that_must_have_taken_effect() -> None:
    history = [invoke(0, "write", 1), info(0, "write", 1), *read(1, None), *read(1, 1)]
    assert check(history).status is Status.LINEARIZABLE


def test_info_write_whose_value_is_never_seen() -> None:
    history = [*write(0, 1), invoke(1, "write", 2), info(1, "write", 2), *read(0, 1), *read(2, 1)]
    assert check(history).status is Status.LINEARIZABLE


def test_info_write_takes_effect_at_most_once() -> None:
    history = [
        *write(0, 1),
        invoke(1, "write", 2),
        info(1, "write", 2),
        *read(0, 2),
        *write(0, 3),
        *read(0, 2),
    ]
    assert check(history).status is Status.NOT_LINEARIZABLE


def test_info_write_cannot_take_effect_before_its_invocation() -> None:
    history = [*read(0, 2), invoke(1, "write", 2), info(1, "write", 2)]
    assert check(history).status is Status.NOT_LINEARIZABLE


def test_two_info_writes_of_one_value_can_each_take_effect() -> None:
    history = [
        invoke(1, "write", 2),
        info(1, "write", 2),
        invoke(2, "write", 2),
        info(2, "write", 2),
        *read(0, 2),
        *write(0, 3),
        *read(0, 3),
        *read(0, 2),
    ]
    assert check(history).status is Status.LINEARIZABLE
    assert check([line for line in history if '"process": 2' not in line]).status == (
        "not linearizable"
    )


def test_info_cas_may_apply_late_or_never() -> None:
    late = [*write(0, 1), invoke(1, "cas", [1, 5]), info(1, "cas", [1, 5]), *read(0, 1)]
    assert check([*late, *read(0, 5)]).status is Status.LINEARIZABLE
    assert check([*late, *read(0, 1)]).status is Status.LINEARIZABLE
    assert check([*late, *write(0, 2), *read(0, 5)]).status is Status.NOT_LINEARIZABLE


def test_an_invoke_that_never_completes_is_like_info() -> None:
    history = [*write(0, 1), invoke(1, "write", 2), *read(0, 2), *read(0, 2)]
    assert check(history).status is Status.LINEARIZABLE


def test_an_info_read_constrains_nothing() -> None:
    history = [*write(0, 1), invoke(1, "read"), info(1, "read"), invoke(1, "read")]
    assert check(history).status is Status.LINEARIZABLE


def test_values_compare_by_json_equality() -> None:
    assert check([*write(0, True), *read(0, 1)]).status is Status.NOT_LINEARIZABLE
    assert check([*write(0, 0), *read(0, False)]).status is Status.NOT_LINEARIZABLE
    assert check([*write(0, 1), *read(0, 1.0)]).status is Status.LINEARIZABLE
    assert check([*write(0, "1"), *read(0, 1)]).status is Status.NOT_LINEARIZABLE
    assert check([*write(0, "a"), *write(1, None), *read(0, None)]).status == "linearizable"


def test_keys_are_independent_registers() -> None:
    history = [*write(0, 1, key="a"), *read(1, None, key="b"), *read(1, 1, key="a")]
    assert check(history).status is Status.LINEARIZABLE
    assert check([*write(0, 1, key=1), *read(1, None, key=True)]).status == "linearizable"


def test_only_the_bad_key_is_reported() -> None:
    history = [
        *write(0, 1, key="a"),
        *write(0, 1, key="b"),
        *write(1, 2, key="b"),
        *read(0, 1, key="a"),
        *read(1, 1, key="b"),  # stale
        *write(2, 1, key="c"),
        *read(2, 1, key="c"),
    ]
    result = check(history)
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.key == "b"
    assert result.violation.operation.invoke_line == 9
    assert result.keys_total == 3
    assert check([line for line in history if '"b"' not in line]).status is Status.LINEARIZABLE


def test_a_long_sequential_history_needs_no_recursion() -> None:
    history: list[str] = []
    for value in range(5000):
        history += write(0, value) + read(1, value)
    result = check(history)
    assert result.status is Status.LINEARIZABLE
    assert result.operations == 10000


# --------------------------------------------------------------------------------------------
# Budgets.
# --------------------------------------------------------------------------------------------


def hard_history(writers: int) -> list[str]:
    """Concurrent writes, then reads of two different values with no write between them: no
    order works, and proving it means trying (almost) every order of the writes."""
    history = [invoke(p, "write", p) for p in range(writers)]
    history += [ok(p, "write", p) for p in range(writers)]
    return [*history, *read(writers, 0), *read(writers, 1)]


def test_hard_history_is_refuted_without_a_budget() -> None:
    result = check(hard_history(8), time_budget_s=None)
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.states_explored > 100


def test_state_budget_exhaustion_is_unknown() -> None:
    result = check(hard_history(10), max_states=100)
    assert result.status == "unknown"
    assert result.violation is None
    assert "budget exhausted" in result.reason
    assert "100" in result.reason
    assert result.states_explored == 100


def test_time_budget_exhaustion_is_unknown() -> None:
    result = check(hard_history(14), time_budget_s=0.01)
    assert result.status is Status.UNKNOWN
    assert "time budget" in result.reason


def test_a_violation_in_a_small_key_is_found_before_a_large_key_exhausts_the_budget() -> None:
    history = [*hard_history(12), *write(0, 1, key="y"), *read(0, 2, key="y")]
    result = check(history, max_states=1000)
    assert result.status is Status.NOT_LINEARIZABLE


def test_budget_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="time_budget_s"):
        check([], time_budget_s=0)
    with pytest.raises(ValueError, match="max_states"):
        check([], max_states=0)


def test_json_report_is_plain_json() -> None:
    result = check([*write(0, 1), *read(0, 2)])
    report = json.loads(json.dumps(result.to_json()))
    assert report["status"] == "not linearizable"
    assert report["violation"]["operation"]["invoke_line"] == 3
    assert report["violation"]["key"] == "x"


# --------------------------------------------------------------------------------------------
# Random histories of a real sequential register, with overlapping intervals.
# --------------------------------------------------------------------------------------------

VALUES = [None, 0, 1, 2]


@st.composite
def register_runs(draw: st.DrawFn, ops_max: int = 40) -> list[str]:
    """Run a register sequentially, each operation at an instant, then stretch each one into an
    interval around its instant; one process never has two operations open at once."""
    processes = draw(st.integers(1, 5))
    state: dict[str, Any] = {"a": None, "b": None}
    free_at = [0.0] * processes  # when each process completed its last operation
    timed: list[tuple[float, dict[str, Any]]] = []
    last_op: dict[int, int] = {}
    instant = 0
    for _ in range(draw(st.integers(1, ops_max))):
        process = draw(st.integers(0, processes - 1))
        instant = max(instant + draw(st.integers(1, 3)), int(free_at[process]) + 1)
        start = max(instant - draw(st.integers(0, 6)) - 0.25, free_at[process] + 0.5)
        end = instant + draw(st.integers(0, 6)) + 0.25
        free_at[process] = end
        invoked, completed = _run_one(draw, state)
        invoked["process"] = completed["process"] = process
        last_op[process] = len(timed)
        timed += [(start, invoked), (end, completed)]
    for index in last_op.values():  # a process's last info may never complete
        if timed[index + 1][1]["type"] == "info" and draw(st.booleans()):
            timed[index + 1] = (float("inf"), {})
    timed.sort(key=lambda item: item[0])
    return [json.dumps(event) for _, event in timed if event]


def _run_one(draw: st.DrawFn, state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    key = draw(st.sampled_from(sorted(state)))
    f = draw(st.sampled_from(["read", "write", "cas"]))
    mode = draw(st.sampled_from(["ok", "ok", "ok", "info", "lost"]))
    if f == "read":
        completed = {"type": "ok", "value": state[key]} if mode == "ok" else {"type": "info"}
        return {"type": "invoke", "f": f, "key": key, "value": None}, completed | {"f": f}
    value: Any = draw(st.sampled_from(VALUES))
    if f == "cas":
        value = [draw(st.sampled_from(VALUES)), value]
    applies = f == "write" or value_identity(state[key]) == value_identity(value[0])
    if mode == "lost":  # did not take effect: reported as fail or info
        outcome = "fail" if f == "write" or not applies else draw(st.sampled_from(["fail", "info"]))
        outcome = "info" if f == "write" and draw(st.booleans()) else outcome
    else:
        outcome = mode if applies else "fail"
        if applies:
            state[key] = value[1] if f == "cas" else value
    invoked = {"type": "invoke", "f": f, "key": key, "value": value}
    return invoked, {"type": outcome, "f": f, "key": key, "value": value}


PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPERTY
@given(register_runs(), st.integers(min_value=0, max_value=10**6))
def test_register_runs_are_linearizable_until_a_read_returns_a_value_never_written(
    history: list[str], pick: int
) -> None:
    result = check(history)
    assert result.status is Status.LINEARIZABLE, "\n".join([*history, *result.explain()])
    reads = [i for i, line in enumerate(history) if '"type": "ok", "f": "read"' in line]
    if not reads:
        history = [*history, *read(99, "never written", key="a")]
        reads = [len(history) - 1]
    index = reads[pick % len(reads)]
    mutated = json.loads(history[index]) | {"value": "never written"}
    history = [*history[:index], json.dumps(mutated), *history[index + 1 :]]
    result = check(history)
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.operation.complete_line == index + 1
    assert result.violation.key == mutated["key"]


# --------------------------------------------------------------------------------------------
# A brute-force oracle on small random (mostly non-linearizable) histories.
# --------------------------------------------------------------------------------------------


@st.composite
def random_histories(draw: st.DrawFn) -> list[str]:
    history: list[str] = []
    open_ops: dict[int, tuple[str, Any]] = {}
    for _ in range(draw(st.integers(1, 18))):
        process = draw(st.integers(0, 3))
        if process in open_ops:
            f, value = open_ops.pop(process)
            outcome = draw(st.sampled_from(["ok", "ok", "ok", "fail", "info"]))
            if f == "read" and outcome == "ok":
                value = draw(st.sampled_from(VALUES))
            history.append(event(process, outcome, f, value))
            continue
        f = draw(st.sampled_from(["read", "write", "write", "cas"]))
        value = draw(st.sampled_from(VALUES))
        value = [draw(st.sampled_from(VALUES)), value] if f == "cas" else value
        open_ops[process] = (f, None if f == "read" else value)
        history.append(invoke(process, f, open_ops[process][1]))
    return history


def brute_force_linearizable(operations: list[Operation]) -> bool:
    """Try every subset of the info operations and every real-time-respecting order."""
    must = [op for op in operations if op.outcome == "ok"]
    may = [op for op in operations if op.outcome == "info" and op.f != "read"]
    for size in range(len(may) + 1):
        for chosen in itertools.combinations(may, size):
            if _some_order_works([*must, *chosen]):
                return True
    return False


def _some_order_works(ops: list[Operation]) -> bool:
    def precedes(a: Operation, b: Operation) -> bool:  # an info operation never completes
        return a.outcome == "ok" and a.complete_line is not None and a.complete_line < b.invoke_line

    failed: set[tuple[frozenset[int], Any]] = set()

    def extend(placed: frozenset[int], state: Any) -> bool:
        if len(placed) == len(ops):
            return True
        if (placed, value_identity(state)) in failed:
            return False
        for i, op in enumerate(ops):
            if i in placed or any(
                precedes(other, op) for j, other in enumerate(ops) if j not in placed
            ):
                continue
            after = _apply(op, state)
            if after is not _ILLEGAL and extend(placed | {i}, after):
                return True
        failed.add((placed, value_identity(state)))
        return False

    return extend(frozenset(), None)


_ILLEGAL = object()


def _apply(op: Operation, state: Any) -> Any:
    if op.f == "write":
        return op.written
    needed = op.result if op.f == "read" else op.cas_expected
    if value_identity(needed) != value_identity(state):
        return _ILLEGAL
    return state if op.f == "read" else op.written


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_histories())
def test_checker_agrees_with_brute_force(history: list[str]) -> None:
    operations = parse_history(history)
    expected = brute_force_linearizable(operations)
    result = check_operations(operations)
    assert (result.status is Status.LINEARIZABLE) == expected, "\n".join(history)
    if result.violation is not None:  # the reported prefix already fails on its own
        prefix = parse_history(history[: result.violation.prefix_end_line])
        assert not brute_force_linearizable(prefix)


# --------------------------------------------------------------------------------------------
# Size: thousands of operations per key, moderate concurrency.
# --------------------------------------------------------------------------------------------


def big_history(seed: int, ops: int, processes: int, info_rate: float) -> list[str]:
    rng = random.Random(seed)
    state: Any = None
    free_at = [0.0] * processes
    timed: list[tuple[float, dict[str, Any]]] = []
    now = 0.0  # the instant the current operation takes effect
    for _ in range(ops):
        process = min(range(processes), key=lambda p: (free_at[p], rng.random()))
        now = max(now + 1.0, free_at[process] + 0.01)
        start = rng.uniform(max(free_at[process], now - processes), now)
        end = now + rng.uniform(0.01, processes)
        free_at[process] = end
        f = rng.choice(["read", "write", "cas"])
        value: Any = rng.randrange(5)
        outcome = "ok"
        if f == "read":
            value = state
        elif f == "write":
            state = value
        else:
            value = [rng.randrange(5), value]
            outcome = "ok" if state == value[0] else "fail"
            state = value[1] if outcome == "ok" else state
        if f != "read" and outcome == "ok" and rng.random() < info_rate:
            outcome = "info"
        base = {"process": process, "f": f, "key": "k"}
        timed.append((start, base | {"type": "invoke", "value": None if f == "read" else value}))
        timed.append((end, base | {"type": outcome, "value": value}))
    timed.sort(key=lambda item: item[0])
    return [json.dumps(event) for _, event in timed]


@pytest.mark.parametrize(("processes", "info_rate"), [(5, 0.0), (10, 0.0), (10, 0.05)])
def test_thousands_of_operations_check_quickly(processes: int, info_rate: float) -> None:
    history = big_history(seed=processes, ops=3000, processes=processes, info_rate=info_rate)
    started = time.perf_counter()
    result = check(history)
    elapsed = time.perf_counter() - started
    assert result.status is Status.LINEARIZABLE
    assert elapsed < 5.0  # typically about 0.1 s; generous for slow machines


def test_a_stale_read_late_in_a_big_history_is_found() -> None:
    history = big_history(seed=3, ops=3000, processes=5, info_rate=0.0)
    history += [*write(100, 11, key="k"), *write(100, 12, key="k"), *read(101, 11, key="k")]
    result = check(history)
    assert result.status is Status.NOT_LINEARIZABLE
    assert result.violation is not None
    assert result.violation.prefix_end_line == len(history)
