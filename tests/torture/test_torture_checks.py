"""The bank and append checkers catch hand-made bad histories."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replog.testing.history import HistoryError
from replog.testing.torture_checks import check_append, check_bank, pair_events

ACCOUNTS = ["a", "b"]


def ev(process: int | str, kind: str, f: str, value: Any = None, key: Any = "k") -> str:
    event = {"process": process, "type": kind, "f": f, "key": key}
    if value is not None:
        event["value"] = value
    return json.dumps(event)


def op(process: int | str, f: str, value: Any, outcome: str, result: Any = None) -> list[str]:
    return [ev(process, "invoke", f, value), ev(process, outcome, f, result)]


def bank_read(process: int | str, balances: dict[str, int]) -> list[str]:
    return op(process, "read", None, "ok", balances)


def finals(view: dict[str, Any], nodes: tuple[str, ...] = ("n1", "n2")) -> list[str]:
    return [line for node in nodes for line in op(f"final-{node}", "read", None, "ok", view)]


def test_pairing_and_malformed_input() -> None:
    ops = pair_events([*op(1, "append", "x", "ok"), ev(2, "invoke", "read"), ""])
    assert [(o.f, o.outcome) for o in ops] == [("append", "ok"), ("read", "info")]
    assert ops[0].where() == "lines 1-2" and ops[1].where() == "lines 3-open"
    with pytest.raises(HistoryError, match="line 1"):
        pair_events(["{not json"])
    with pytest.raises(HistoryError, match="without an invoke"):
        pair_events([ev(1, "ok", "read")])
    with pytest.raises(HistoryError, match="invokes while"):
        pair_events([ev(1, "invoke", "read"), ev(1, "invoke", "read")])


def test_a_clean_bank_history_passes() -> None:
    transfer = {"from": "a", "to": "b", "amount": 5}
    lines = [
        *bank_read(1, {"a": 10, "b": 10}),
        *op(2, "transfer", transfer, "ok"),
        *bank_read(1, {"a": 5, "b": 15}),
        *finals({"a": 5, "b": 15}),
    ]
    assert check_bank(pair_events(lines), ACCOUNTS, 20) == []


def test_bank_catches_a_negative_balance() -> None:
    lines = [*bank_read(1, {"a": -5, "b": 25}), *finals({"a": 0, "b": 20})]
    problems = check_bank(pair_events(lines), ACCOUNTS, 20)
    assert len(problems) == 1 and "negative balance {'a': -5}" in problems[0]


def test_bank_catches_a_wrong_total_and_disagreeing_nodes() -> None:
    lines = [
        *bank_read(1, {"a": 10, "b": 11}),
        *op("final-n1", "read", None, "ok", {"a": 10, "b": 10}),
        *op("final-n2", "read", None, "ok", {"a": 5, "b": 15}),
    ]
    problems = check_bank(pair_events(lines), ACCOUNTS, 20)
    assert any("sum to 21, not 20" in p for p in problems)
    assert any("final reads disagree" in p for p in problems)


def test_bank_needs_final_reads() -> None:
    assert check_bank(pair_events(bank_read(1, {"a": 10, "b": 10})), ACCOUNTS, 20) == [
        "no final read answered"
    ]


def test_a_clean_append_history_passes() -> None:
    lines = [
        *op(1, "append", "x", "ok"),
        ev(2, "invoke", "append", "y"),  # concurrent with the read: may or may not be seen
        *op(3, "read", None, "ok", ["x"]),
        ev(2, "info", "append"),
        *op(4, "append", "z", "fail"),
        *op(3, "read", None, "ok", ["x", "y"]),
        *finals(["x", "y"]),
    ]
    assert check_append(pair_events(lines)) == []


def test_append_catches_a_lost_acknowledged_append() -> None:
    lines = [*op(1, "append", "x", "ok"), *op(1, "append", "y", "ok"), *finals(["x"])]
    problems = check_append(pair_events(lines))
    assert any("acknowledged append 'y'" in p and "lost" in p for p in problems)


def test_append_catches_a_duplicated_append() -> None:
    lines = [*op(1, "append", "x", "ok"), *finals(["x", "x"])]
    problems = check_append(pair_events(lines))
    assert any("holds ['x'] more than once" in p for p in problems)


def test_append_catches_readers_disagreeing_on_the_order() -> None:
    lines = [
        *op(1, "append", "a", "info"),
        *op(2, "append", "b", "info"),
        *op(3, "read", None, "ok", ["a", "b"]),
        *op(4, "read", None, "ok", ["b", "a"]),
        *finals(["a", "b"]),
    ]
    problems = check_append(pair_events(lines))
    assert any("disagree on the order" in p for p in problems)


def test_append_catches_a_failed_or_unknown_value_and_a_stale_read() -> None:
    lines = [
        *op(1, "append", "a", "fail"),
        *op(2, "append", "b", "ok"),
        *op(3, "read", None, "ok", []),  # started after b was acknowledged
        *finals(["a", "b", "ghost"]),
    ]
    problems = check_append(pair_events(lines))
    assert any("'a', whose append failed" in p for p in problems)
    assert any("'ghost', never appended" in p for p in problems)
    assert any("misses ['b']" in p and "stale read" in p for p in problems)


def test_append_keys_are_checked_separately() -> None:
    lines = [
        ev(1, "invoke", "append", "x", key="k1"),
        ev(1, "ok", "append", key="k1"),
        ev("final-n1", "invoke", "read", key="k1"),
        ev("final-n1", "ok", "read", ["x"], key="k1"),
        ev("final-n1", "invoke", "read", key="k2"),
        ev("final-n1", "ok", "read", [], key="k2"),
    ]
    assert check_append(pair_events(lines)) == []


def test_every_node_must_answer_its_final_read() -> None:
    lines = [*bank_read(1, {"a": 10, "b": 10}), *finals({"a": 10, "b": 10}, ("n1",))]
    assert check_bank(pair_events(lines), ACCOUNTS, 20, ["n1"]) == []
    assert check_bank(pair_events(lines), ACCOUNTS, 20, ["n1", "n2"]) == [
        "no final read answered by n2"
    ]
    appends = [*op(1, "append", "x", "ok"), *finals(["x"], ("n1",))]
    assert check_append(pair_events(appends), ["n1"]) == []
    problems = check_append(pair_events(appends), ["n1", "n3"])
    assert problems == ['key "k": no final read answered by n3']
