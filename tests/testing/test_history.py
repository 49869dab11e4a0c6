"""Parsing Jepsen-style JSON-lines histories into operations."""

from __future__ import annotations

import json
from typing import Any

import pytest

from replog.core.errors import ReplogError
from replog.testing.history import HistoryError, Operation, parse_history, value_identity


def line(process: Any, type_: str, f: str, key: Any = "x", value: Any = None, **extra: Any) -> str:
    event = {"process": process, "type": type_, "f": f, "key": key, "value": value, **extra}
    return json.dumps(event)


def test_pairs_each_invoke_with_its_process_completion() -> None:
    ops = parse_history(
        [
            line(1, "invoke", "write", value=3, time=10),
            line(2, "invoke", "read"),
            line(2, "ok", "read", value=3),
            line(1, "ok", "write", value=3),
        ]
    )
    assert ops == [
        Operation(1, "write", "x", 3, "ok", None, invoke_line=1, complete_line=4),
        Operation(2, "read", "x", None, "ok", 3, invoke_line=2, complete_line=3),
    ]


def test_cas_value_becomes_a_pair_and_fail_is_kept_as_an_outcome() -> None:
    ops = parse_history([line(0, "invoke", "cas", value=[1, 2]), line(0, "fail", "cas")])
    (op,) = ops
    assert op.value == (1, 2)
    assert (op.cas_expected, op.written, op.outcome) == (1, 2, "fail")


def test_blank_lines_are_skipped_but_counted() -> None:
    ops = parse_history(["", line(0, "invoke", "write", value=1), "   ", line(0, "info", "write")])
    assert (ops[0].invoke_line, ops[0].complete_line, ops[0].outcome) == (2, 4, "info")


def test_an_invoke_that_never_completes_is_info() -> None:
    (op,) = parse_history([line(0, "invoke", "write", value=1)])
    assert op.outcome == "info"
    assert op.complete_line is None


def test_a_process_may_invoke_again_after_info() -> None:
    ops = parse_history(
        [
            line(7, "invoke", "write", value=1),
            line(7, "info", "write"),
            line(7, "invoke", "read"),
            line(7, "ok", "read", value=None),
        ]
    )
    assert [op.outcome for op in ops] == ["info", "ok"]


def test_a_whole_text_and_decoded_events_are_accepted() -> None:
    text = "\n".join([line("a", "invoke", "read"), line("a", "ok", "read", value="v")])
    from_text = parse_history(text)
    from_events = parse_history([json.loads(item) for item in text.splitlines()])
    assert from_text == from_events
    assert from_text[0].process == "a"
    assert from_text[0].result == "v"


def test_completions_may_omit_f_and_key() -> None:
    ops = parse_history(
        [line(0, "invoke", "read", key=5), json.dumps({"process": 0, "type": "ok", "value": 1})]
    )
    assert (ops[0].key, ops[0].result) == (5, 1)


def test_read_invoke_with_a_value_is_accepted() -> None:
    (op,) = parse_history([line(0, "invoke", "read", value=99), line(0, "ok", "read", value=1)])
    assert op.result == 1


def test_describe_names_the_lines() -> None:
    ops = parse_history([line(3, "invoke", "cas", value=[1, 2]), line(3, "ok", "cas")])
    assert ops[0].describe() == 'process 3 cas "x" 1->2: ok (lines 1-2)'


def test_value_identity_is_json_equality() -> None:
    assert value_identity(True) != value_identity(1)
    assert value_identity(False) != value_identity(0)
    assert value_identity(None) != value_identity(0)
    assert value_identity(1) == value_identity(1.0)
    assert value_identity("1") != value_identity(1)


BAD_INPUT = [
    pytest.param([line(0, "invoke", "read"), "{not json"], 2, "malformed JSON", id="json"),
    pytest.param(["[1, 2]"], 1, "expected a JSON object", id="not-object"),
    pytest.param(['{"type": "invoke", "f": "read", "key": "x"}'], 1, "'process'", id="no-process"),
    pytest.param(['{"process": 1, "f": "read", "key": "x"}'], 1, "'type'", id="no-type"),
    pytest.param(['{"process": 1, "type": "invoke", "key": "x"}'], 1, "'f'", id="no-f"),
    pytest.param(['{"process": 1, "type": "invoke", "f": "read"}'], 1, "'key'", id="no-key"),
    pytest.param(
        ['{"process": 1, "type": "invoke", "f": "write", "key": "x"}'], 1, "'value'", id="no-value"
    ),
    pytest.param([line(0, "invoke", "append")], 1, "unknown f 'append'", id="unknown-f"),
    pytest.param([line(0, "begin", "read")], 1, "unknown type 'begin'", id="unknown-type"),
    pytest.param([line(True, "invoke", "read")], 1, "'process'", id="bool-process"),
    pytest.param([line(1.5, "invoke", "read")], 1, "'process'", id="float-process"),
    pytest.param(
        [line(0, "invoke", "read"), line(1, "ok", "read", value=1)],
        2,
        "without an open invoke",
        id="orphan-ok",
    ),
    pytest.param(
        [line(0, "invoke", "write", value=1), line(0, "ok", "write"), line(0, "fail", "write")],
        3,
        "without an open invoke",
        id="double-completion",
    ),
    pytest.param(
        [line(0, "invoke", "read"), line(0, "invoke", "read")],
        2,
        "invokes again while its invoke on line 1 is open",
        id="double-invoke",
    ),
    pytest.param([line(0, "invoke", "cas", value=1)], 1, "[expected, new]", id="cas-scalar"),
    pytest.param([line(0, "invoke", "cas", value=[1])], 1, "[expected, new]", id="cas-short"),
    pytest.param([line(0, "invoke", "cas", value=[1, 2, 3])], 1, "[expected, new]", id="cas-3"),
    pytest.param([line(0, "invoke", "cas", value=[[1], 2])], 1, "JSON scalar", id="cas-list"),
    pytest.param([line(0, "invoke", "write", value={"a": 1})], 1, "JSON scalar", id="object"),
    pytest.param([line(0, "invoke", "write", key=[1], value=1)], 1, "JSON scalar", id="list-key"),
    pytest.param(
        ['{"process": 0, "type": "invoke", "f": "write", "key": "x", "value": NaN}'],
        1,
        "malformed JSON",
        id="nan",
    ),
    pytest.param(
        [line(0, "invoke", "read"), json.dumps({"process": 0, "type": "ok", "f": "read"})],
        2,
        "must carry the value read",
        id="read-ok-without-value",
    ),
    pytest.param(
        [line(0, "invoke", "read"), line(0, "ok", "write", value=1)],
        2,
        "does not match the invoke on line 1",
        id="f-mismatch",
    ),
    pytest.param(
        [line(0, "invoke", "read"), line(0, "ok", "read", key="y", value=1)],
        2,
        "does not match the invoke on line 1",
        id="key-mismatch",
    ),
    pytest.param(
        ["", "", line(0, "invoke", "read"), "", "oops"], 5, "malformed JSON", id="blank-lines"
    ),
]


@pytest.mark.parametrize(("lines", "bad_line", "problem"), BAD_INPUT)
def test_bad_input_names_the_line(lines: list[str], bad_line: int, problem: str) -> None:
    with pytest.raises(HistoryError) as caught:
        parse_history(lines)
    assert caught.value.line == bad_line
    assert str(caught.value).startswith(f"line {bad_line}: ")
    assert problem in str(caught.value)


def test_history_error_is_a_replog_error() -> None:
    assert issubclass(HistoryError, ReplogError)
