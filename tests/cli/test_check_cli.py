"""``replog check``: output, exit codes and errors, through the real command group."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from replog.cli import main


def event(process: int, type_: str, f: str, value: Any = None, key: str = "x") -> str:
    return json.dumps({"process": process, "type": type_, "f": f, "key": key, "value": value})


GOOD = [
    event(0, "invoke", "write", 1),
    event(0, "ok", "write", 1),
    event(1, "invoke", "read"),
    event(1, "ok", "read", 1),
]
STALE = [*GOOD[:2], event(0, "invoke", "write", 2), event(0, "ok", "write", 2), *GOOD[2:]]


def hard(writers: int) -> list[str]:
    history = [event(p, "invoke", "write", p) for p in range(writers)]
    history += [event(p, "ok", "write", p) for p in range(writers)]
    reads = [event(99, "invoke", "read"), event(99, "ok", "read", 0)]
    return history + reads + [event(99, "invoke", "read"), event(99, "ok", "read", 1)]


def run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(main, ["check", *args], input=stdin)


@pytest.fixture
def write_history(tmp_path: Path) -> Any:
    def write(lines: list[str], name: str = "history.jsonl") -> str:
        path = tmp_path / name
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return str(path)

    return write


def test_linearizable_history_exits_0(write_history: Any) -> None:
    result = run(write_history(GOOD))
    assert result.exit_code == 0, result.output
    assert result.stdout == "linearizable\n"


def test_not_linearizable_exits_1_with_an_explanation(write_history: Any) -> None:
    result = run(write_history(STALE))
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0] == "not linearizable"
    explanation = "\n".join(lines[1:])
    assert 'key "x"' in explanation
    assert "lines 5-6" in explanation  # the stale read
    assert "lines 3-4" in explanation  # the write it missed


def test_budget_exhaustion_exits_2_with_the_reason(write_history: Any) -> None:
    result = run("--max-states", "50", write_history(hard(10)))
    assert result.exit_code == 2
    lines = result.stdout.splitlines()
    assert lines[0] == "unknown"
    assert "budget exhausted" in lines[1]


def test_time_budget_option(write_history: Any) -> None:
    result = run("--time-budget", "0.01", write_history(hard(14)))
    assert result.exit_code == 2
    assert "time budget" in result.stdout


def test_reads_stdin_with_dash() -> None:
    assert run("-", stdin="\n".join(GOOD)).exit_code == 0
    assert run("-", stdin="\n".join(STALE)).exit_code == 1


def test_json_output(write_history: Any) -> None:
    result = run("--output", "json", write_history(STALE))
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["status"] == "not linearizable"
    assert report["violation"]["key"] == "x"
    assert report["violation"]["operation"]["invoke_line"] == 5
    good = json.loads(run("--output", "json", write_history(GOOD)).stdout)
    assert good["status"] == "linearizable"
    assert good["violation"] is None


def test_bad_input_exits_3_naming_the_line(write_history: Any) -> None:
    path = write_history([*GOOD, "", '{"process": 1, "type": "ok", "f": "read", "value": 1}'])
    result = run(path)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "line 6:" in result.stderr
    assert "without an open invoke" in result.stderr


def test_malformed_json_from_stdin_exits_3() -> None:
    result = run("-", stdin=GOOD[0] + "\n{oops\n")
    assert result.exit_code == 3
    assert "<stdin>: line 2: malformed JSON" in result.stderr


def test_text_that_is_not_utf8_exits_3(tmp_path: Path) -> None:
    path = tmp_path / "binary.jsonl"
    path.write_bytes(GOOD[0].encode() + b"\n\xff\xfe\n")
    result = run(str(path))
    assert result.exit_code == 3
    assert "line 2: not UTF-8" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="missing-file-argument"),
        pytest.param(["/nonexistent/history.jsonl"], id="file-not-found"),
        pytest.param(["--output", "xml", "-"], id="bad-output"),
        pytest.param(["--time-budget", "soon", "-"], id="bad-time-budget"),
        pytest.param(["--time-budget", "0", "-"], id="zero-time-budget"),
        pytest.param(["--max-states", "0", "-"], id="zero-max-states"),
        pytest.param(["--frobnicate", "-"], id="unknown-option"),
        pytest.param(["a.jsonl", "b.jsonl"], id="extra-argument"),
    ],
)
def test_usage_errors_exit_3_not_2(args: list[str]) -> None:
    result = run(*args, stdin="")
    assert result.exit_code == 3, result.output
    assert "Error:" in result.stderr


def test_a_directory_is_bad_input(tmp_path: Path) -> None:
    result = run(str(tmp_path))
    assert result.exit_code == 3


def test_empty_history_is_linearizable() -> None:
    result = run("-", stdin="")
    assert (result.exit_code, result.stdout) == (0, "linearizable\n")


def test_help_explains_format_options_and_exit_codes() -> None:
    result = CliRunner().invoke(main, ["check", "--help"])
    assert result.exit_code == 0
    for needle in ("--time-budget", "--max-states", "--output", "Exit codes", "info", "cas"):
        assert needle in result.stdout
    assert "2  unknown" in result.stdout
    assert "3  bad input" in result.stdout


def test_an_interrupted_check_is_unknown(write_history: Any, monkeypatch: Any) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    module = importlib.import_module("replog.cli.check")  # the package exports the command
    monkeypatch.setattr(module, "check_operations", interrupted)
    result = run(write_history(GOOD))
    assert result.exit_code == 2
    assert result.stdout.splitlines() == ["unknown", "interrupted before an answer"]
