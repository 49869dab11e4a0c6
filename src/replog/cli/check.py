"""The ``replog check`` command: is a recorded client history linearizable?

Exit codes are part of the contract: 0 linearizable, 1 not linearizable, 2 unknown (the budget
ran out), 3 bad input or bad usage. Click reports its own usage errors with exit code 2, which
would read as "unknown", so the command's parser turns them into exit code 3.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator

import click

from replog.testing.history import HistoryError, Operation, parse_history
from replog.testing.linearizability import (
    DEFAULT_TIME_BUDGET_S,
    CheckResult,
    Status,
    check_operations,
)

EXIT_LINEARIZABLE = 0
EXIT_NOT_LINEARIZABLE = 1
EXIT_UNKNOWN = 2
EXIT_BAD_INPUT = 3

_EXIT_CODES = {
    Status.LINEARIZABLE: EXIT_LINEARIZABLE,
    Status.NOT_LINEARIZABLE: EXIT_NOT_LINEARIZABLE,
    Status.UNKNOWN: EXIT_UNKNOWN,
}


class _BadInput(click.ClickException):
    exit_code = EXIT_BAD_INPUT


class _BadUsage(click.UsageError):
    exit_code = EXIT_BAD_INPUT


class _CheckCommand(click.Command):
    """A command whose usage errors exit with ``EXIT_BAD_INPUT`` instead of click's 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            raise _BadUsage(error.format_message(), error.ctx or ctx) from error


_EPILOG = """\b
Input: one JSON object per line, in real-time order, e.g.
  {"process": 3, "type": "invoke", "f": "cas", "key": "x", "value": [1, 2]}
  {"process": 3, "type": "ok", "f": "cas", "key": "x", "value": [1, 2]}
type: invoke, ok, fail (did not happen) or info (may or may not have happened);
f: read, write or cas (value [expected, new]); a read's ok carries the value
read (null for a missing key). Each key is a register that starts at null.

\b
Exit codes:
  0  linearizable
  1  not linearizable (the explanation follows)
  2  unknown: the time or state budget ran out before an answer
  3  bad input (the message names the line) or bad usage
"""


@click.command(cls=_CheckCommand, epilog=_EPILOG)
@click.argument("history_file", metavar="FILE", type=click.Path(dir_okay=False, allow_dash=True))
@click.option(
    "--time-budget",
    "time_budget_s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TIME_BUDGET_S,
    show_default=True,
    metavar="SECONDS",
    help="Give up with 'unknown' after this much wall time.",
)
@click.option(
    "--max-states",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Give up with 'unknown' after exploring N search states (default: no limit).",
)
@click.option(
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Report as text or as one JSON object.",
)
@click.pass_context
def check(
    ctx: click.Context,
    history_file: str,
    time_budget_s: float,
    max_states: int | None,
    output: str,
) -> None:
    """Check that the client history in FILE (- for stdin) is linearizable.

    Prints 'linearizable', 'not linearizable' followed by the key and the
    operations (with their line numbers) that cannot be ordered, or 'unknown'
    with the budget that ran out. Keys are checked independently.
    """
    operations = _read_operations(history_file)
    try:
        result = check_operations(operations, time_budget_s=time_budget_s, max_states=max_states)
    except KeyboardInterrupt:  # no answer: "unknown", not click's "Aborted!" with exit code 1
        _echo_interrupted(output)
        ctx.exit(EXIT_UNKNOWN)
    if output == "json":
        click.echo(json.dumps(result.to_json(), indent=2))
    else:
        click.echo(_text_report(result))
    ctx.exit(_EXIT_CODES[result.status])


def _text_report(result: CheckResult) -> str:
    if result.status is Status.LINEARIZABLE:
        return str(result.status)
    return "\n".join([str(result.status), *result.explain()])


def _echo_interrupted(output: str) -> None:
    reason = "interrupted before an answer"
    if output == "json":
        click.echo(json.dumps({"status": str(Status.UNKNOWN), "reason": reason}, indent=2))
    else:
        click.echo(f"{Status.UNKNOWN}\n{reason}")


def _read_operations(path: str) -> list[Operation]:
    name = "<stdin>" if path == "-" else path
    try:
        if path == "-":
            return parse_history(_text_lines(sys.stdin.buffer))
        with open(path, "rb") as stream:
            return parse_history(_text_lines(stream))
    except HistoryError as error:
        raise _BadInput(f"{name}: {error}") from None
    except OSError as error:
        raise _BadInput(f"cannot read {name}: {error.strerror or error}") from None


def _text_lines(stream: Iterable[bytes]) -> Iterator[str]:
    """Decode a byte stream line by line, naming the line that is not UTF-8."""
    for line, raw in enumerate(stream, start=1):
        try:
            yield raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as error:
            raise HistoryError(line, f"not UTF-8 text ({error.reason})") from None
