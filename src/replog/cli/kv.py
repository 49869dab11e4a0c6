"""The client commands of ``replog``: put, get, del, list, txn, watch, status.

Every command talks to a cluster through ``replog.Client``. Where to connect and how to print
come from the command's own ``--endpoints``/``--output``, else the group's (``replog --endpoints
... put ...``), else ``REPLOG_ENDPOINTS``, else the ``replog dev`` cluster. Table output is for
people; ``--output json`` prints the HTTP API's JSON objects (one document per command, one
object per line for ``watch``). Exit codes: 0 done, 1 the operation failed (the error is one line
on stderr), 2 bad usage or input, 3 no endpoint reachable.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from replog.client import (
    DEFAULT_ENDPOINTS,
    Client,
    DeleteResult,
    GetResult,
    KeyValue,
    OpResult,
    PutResult,
    ReplogClientError,
    StatusResponse,
    Unavailable,
    parse_txn,
    to_api_json,
)
from replog.client._policy import normalize_endpoints

__all__ = ["KV_COMMANDS", "client_group_options"]

ENV_ENDPOINTS = "REPLOG_ENDPOINTS"
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
STDIN_MAX_BYTES = 64 * 1024 * 1024
TABLE_WIDTH_MIN = 160
_META = "replog.client."
F = TypeVar("F", bound=Callable[..., Any])


class CommandFailed(click.ClickException):
    """An operation that failed: ``error: <code>: <message> (<endpoint>)`` on stderr."""

    exit_code = EXIT_FAILED

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)


class Unreachable(CommandFailed):
    """No endpoint could be reached."""

    exit_code = EXIT_UNREACHABLE


@dataclass(frozen=True)
class Settings:
    endpoints: tuple[str, ...]
    output: str
    retry_timeout_s: float

    def client(self) -> Client:
        return Client(self.endpoints, retry_timeout_s=self.retry_timeout_s)


# --- options -------------------------------------------------------------------------------------

_ENDPOINTS_HELP = (
    f"Comma-separated client URLs of the cluster [env {ENV_ENDPOINTS}; "
    f"default: {','.join(DEFAULT_ENDPOINTS)}]."
)


def _options(f: F) -> F:
    f = click.option(
        "--retry-timeout",
        "retry_timeout_s",
        type=click.FloatRange(min=0),
        default=None,
        metavar="SECONDS",
        help="Keep retrying an unavailable cluster this long [default: 15].",
    )(f)
    f = click.option(
        "--output",
        "-o",
        type=click.Choice(["table", "json"]),
        default=None,
        help="table (for people) or json (the API's JSON objects) [default: table].",
    )(f)
    return click.option("--endpoints", metavar="URL,...", default=None, help=_ENDPOINTS_HELP)(f)


def client_group_options(f: Callable[[], None]) -> Callable[..., None]:
    """Give the ``replog`` group the client options, remembered for the sub-commands."""

    @functools.wraps(f)
    def group(endpoints: str | None, output: str | None, retry_timeout_s: float | None) -> None:
        meta = click.get_current_context().meta
        meta[_META + "endpoints"] = endpoints
        meta[_META + "output"] = output
        meta[_META + "retry_timeout_s"] = retry_timeout_s
        f()

    return _options(group)


def _settings(endpoints: str | None, output: str | None, retry_timeout_s: float | None) -> Settings:
    meta = click.get_current_context().meta
    endpoints = endpoints or meta.get(_META + "endpoints") or os.environ.get(ENV_ENDPOINTS)
    try:
        urls = normalize_endpoints(endpoints) if endpoints else DEFAULT_ENDPOINTS
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="'--endpoints'") from None
    if retry_timeout_s is None:
        retry_timeout_s = meta.get(_META + "retry_timeout_s")
    return Settings(
        endpoints=urls,
        output=output or meta.get(_META + "output") or "table",
        retry_timeout_s=15.0 if retry_timeout_s is None else retry_timeout_s,
    )


def client_command(name: str, epilog: str) -> Callable[[Callable[..., None]], click.Command]:
    """A command that takes the client options and gets ``settings`` instead of them."""

    def decorate(f: Callable[..., None]) -> click.Command:
        @functools.wraps(f)
        def command(
            endpoints: str | None, output: str | None, retry_timeout_s: float | None, **kwargs: Any
        ) -> None:
            f(_settings(endpoints, output, retry_timeout_s), **kwargs)

        return click.command(name, epilog=epilog)(_options(command))

    return decorate


@contextmanager
def _reported() -> Iterator[None]:
    """Turn client errors into one line on stderr and the matching exit code."""
    try:
        yield
    except Unavailable as error:
        if error.code == "unreachable":
            raise Unreachable(str(error)) from None
        raise CommandFailed(str(error)) from None
    except ReplogClientError as error:
        raise CommandFailed(str(error)) from None


# --- printing ------------------------------------------------------------------------------------


def _show(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(data).decode("ascii")


def _echo_json(document: Any) -> None:
    click.echo(json.dumps(document, ensure_ascii=False))


def _console() -> Console:
    console = Console(file=sys.stdout, highlight=False, soft_wrap=False)
    if not console.is_terminal:
        console.width = max(console.width, TABLE_WIDTH_MIN)  # a pipe or a file: do not cut rows
    return console


def _kv_table(kvs: list[KeyValue], caption: str | None = None) -> Table:
    table = Table(
        "key", "value", "version", "create_rev", "mod_rev", caption=caption, box=box.SIMPLE_HEAD
    )
    for kv in kvs:
        table.add_row(
            Text(_show(kv.key)),
            Text(_show(kv.value)),
            str(kv.version),
            str(kv.create_revision),
            str(kv.mod_revision),
        )
    return table


def _read_stdin(param_hint: str) -> bytes:
    data = sys.stdin.buffer.read(STDIN_MAX_BYTES + 1)
    if len(data) > STDIN_MAX_BYTES:
        raise click.BadParameter(f"stdin is over {STDIN_MAX_BYTES} bytes", param_hint=param_hint)
    return data


# --- commands ------------------------------------------------------------------------------------


@client_command(
    "put",
    epilog="\b\nExamples:\n  replog put config/a 1\n  replog put blob - < file.bin",
)
@click.argument("key")
@click.argument("value")
def put(settings: Settings, key: str, value: str) -> None:
    """Write VALUE under KEY (VALUE "-" reads the bytes from stdin)."""
    data = value.encode("utf-8")
    if value == "-":
        data = _read_stdin("VALUE")
    with _reported(), settings.client() as client:
        answer = client.put(key, data)
    if settings.output == "json":
        _echo_json(to_api_json(answer))
        return
    kv = answer.kv
    click.echo(f"put {_show(kv.key)} (revision {kv.mod_revision}, version {kv.version})")


@client_command(
    "get",
    epilog="\b\nExamples:\n  replog get config/a\n  replog get config/a --consistency stale "
    "--min-revision 12",
)
@click.argument("key")
@click.option(
    "--consistency",
    type=click.Choice(["linearizable", "lease", "stale"]),
    default="linearizable",
    show_default=True,
    help="linearizable: every acknowledged write; lease: the same on a leader lease; "
    "stale: the answering node's state at once.",
)
@click.option(
    "--min-revision",
    type=click.IntRange(min=0),
    default=None,
    help="Wait until the answering node has applied this revision (read your writes).",
)
def get(settings: Settings, key: str, consistency: str, min_revision: int | None) -> None:
    """Read KEY; a missing key is an error (exit 1)."""
    with _reported(), settings.client() as client:
        answer = client.get_response(key, consistency=consistency, min_revision=min_revision)
    if answer.kv is None:
        raise CommandFailed(f"key_not_found: key not found: {key}")
    if settings.output == "json":
        _echo_json(to_api_json(answer))
        return
    _console().print(_kv_table([answer.kv]))


@client_command("del", epilog="\b\nExample:\n  replog del config/a")
@click.argument("key")
def delete(settings: Settings, key: str) -> None:
    """Delete KEY (deleting a missing key is not an error)."""
    with _reported(), settings.client() as client:
        answer = client.delete(key)
    if settings.output == "json":
        _echo_json(to_api_json(answer))
    elif answer.deleted:
        click.echo(f"deleted {key} (revision {answer.header.revision})")
    else:
        click.echo(f"{key} did not exist; nothing deleted")


@client_command(
    "list",
    epilog="\b\nExamples:\n  replog list config/\n  replog list --limit 10   (all keys)",
)
@click.argument("prefix", default="")
@click.option(
    "--limit",
    type=click.IntRange(min=1, max=10_000),
    default=1000,
    show_default=True,
    help="At most this many keys.",
)
def list_keys(settings: Settings, prefix: str, limit: int) -> None:
    """List the keys that start with PREFIX (all keys without one), in byte order."""
    with _reported(), settings.client() as client:
        answer = client.range(prefix, limit=limit)
    if settings.output == "json":
        _echo_json(to_api_json(answer))
        return
    more = f" (more: raise --limit above {limit})" if answer.more else ""
    caption = f"{len(answer.kvs)} of {answer.count} keys{more}"
    _console().print(_kv_table(list(answer.kvs), caption=caption))


_TXN_EPILOG = """\b
FILE holds the JSON body of POST /v1/txn, for example a compare-and-set:
  {"compare": [{"key": "a", "target": "mod_revision", "op": "==", "value": 0}],
   "success": [{"put": {"key": "a", "value": "1"}}],
   "failure": [{"get": {"key": "a"}}]}
\b
Examples:
  replog txn cas.json
  echo '{"success": [{"delete": {"key": "a"}}]}' | replog txn -
"""


@client_command("txn", epilog=_TXN_EPILOG)
@click.argument("file", metavar="FILE|-", type=click.Path(dir_okay=False, allow_dash=True))
def txn(settings: Settings, file: str) -> None:
    """Run a transaction: if every compare holds, the success operations, else the failure ones."""
    if file == "-":
        text = _read_stdin("FILE")
    else:
        try:
            text = Path(file).read_bytes()
        except OSError as error:
            raise click.BadParameter(str(error), param_hint="FILE") from None
    try:
        compare, success, failure = parse_txn(text)
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="FILE") from None
    with _reported(), settings.client() as client:
        answer = client.txn(compare, success, failure)
    if settings.output == "json":
        _echo_json(to_api_json(answer))
        return
    click.echo(f"succeeded: {str(answer.succeeded).lower()} (revision {answer.revision})")
    if answer.responses:
        _console().print(_results_table(answer.responses))


def _results_table(results: tuple[OpResult, ...]) -> Table:
    table = Table("#", "op", "key", "value / deleted", "mod_rev", box=box.SIMPLE_HEAD)
    for number, result in enumerate(results):
        if isinstance(result, PutResult):
            kv = result.kv
            row = ["put", _show(kv.key), _show(kv.value), str(kv.mod_revision)]
        elif isinstance(result, DeleteResult):
            key = _show(result.prev_kv.key) if result.prev_kv else "-"
            row = ["delete", key, f"deleted {result.deleted}", "-"]
        elif isinstance(result, GetResult) and result.kv is not None:
            kv = result.kv
            row = ["get", _show(kv.key), _show(kv.value), str(kv.mod_revision)]
        else:
            row = ["get", "-", "(no such key)", "-"]
        table.add_row(str(number), *(Text(cell) for cell in row))
    return table


@client_command(
    "watch",
    epilog="\b\nExamples:\n  replog watch config/a\n  replog watch --prefix config/ "
    "--start-revision 100\nCtrl-C stops watching (exit code 0).",
)
@click.argument("key", required=False)
@click.option("--prefix", default=None, help="Watch every key that starts with this.")
@click.option(
    "--start-revision",
    type=click.IntRange(min=1),
    default=None,
    help="Replay the history from this revision first [default: only new events].",
)
def watch(
    settings: Settings, key: str | None, prefix: str | None, start_revision: int | None
) -> None:
    """Print the changes of KEY (or of the keys under --prefix), one line per event."""
    if (key is None) == (prefix is None):
        raise click.UsageError("give exactly one of KEY and --prefix")
    try:
        with _reported(), settings.client() as client:
            events = client.watch(key=key, prefix=prefix, start_revision=start_revision)
            with events:
                for event in events:
                    _print_event(settings.output, event)
    except KeyboardInterrupt:
        return


def _print_event(output: str, event: Any) -> None:
    if output == "json":
        _echo_json(to_api_json(event))
        return
    kv = event.kv
    if event.type == "put":
        line = f"PUT {_show(kv.key)} = {_show(kv.value)} (revision {kv.mod_revision})"
    else:
        line = f"{event.type.upper()} {_show(kv.key)} (revision {kv.mod_revision})"
    click.echo(line)
    sys.stdout.flush()


@client_command(
    "status",
    epilog="\b\nExample:\n  replog status --endpoints http://127.0.0.1:14300,"
    "http://127.0.0.1:14301\nlag: the leader's commit index minus the node's applied index.",
)
def status(settings: Settings) -> None:
    """Show every endpoint's node: role, term, commit and applied index, lag, leader."""
    with _reported(), settings.client() as client:
        answers = client.status_all()
    leader = _leader_status(answers)
    if settings.output == "json":
        _echo_json([_status_json(endpoint, answer, leader) for endpoint, answer in answers])
    else:
        _console().print(_status_table(answers, leader))
        for endpoint, answer in answers:
            if isinstance(answer, ReplogClientError):
                click.echo(f"{endpoint}: {answer.code}: {answer.message}")
    if all(isinstance(answer, Unavailable) for _, answer in answers):
        raise Unreachable(f"unreachable: none of the {len(answers)} endpoints answered")


def _leader_status(
    answers: list[tuple[str, StatusResponse | ReplogClientError]],
) -> StatusResponse | None:
    """The status of the node that the freshest answers name as leader (if it answered)."""
    known = [a for _, a in answers if isinstance(a, StatusResponse) and a.node.leader_id]
    if not known:
        return None
    leader_id = max(known, key=lambda answer: answer.node.term).node.leader_id
    for _, answer in answers:
        if isinstance(answer, StatusResponse) and answer.node.id == leader_id:
            return answer
    return None


def _lag(answer: StatusResponse, leader: StatusResponse | None) -> int | None:
    if leader is None:
        return None
    return max(0, leader.node.commit_index - answer.node.applied_index)


def _status_json(
    endpoint: str, answer: StatusResponse | ReplogClientError, leader: StatusResponse | None
) -> dict[str, Any]:
    if isinstance(answer, ReplogClientError):
        return {"endpoint": endpoint, "error": {"code": answer.code, "message": answer.message}}
    return {"endpoint": endpoint, "status": to_api_json(answer), "lag": _lag(answer, leader)}


def _status_table(
    answers: list[tuple[str, StatusResponse | ReplogClientError]], leader: StatusResponse | None
) -> Table:
    """One row per endpoint; an endpoint that failed shows its error code as its role."""
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("endpoint", no_wrap=True, min_width=max(len(url) for url, _ in answers))
    for column in ("id", "role", "term", "commit", "applied", "lag", "leader"):
        table.add_column(column, no_wrap=True, min_width=len(column))
    for endpoint, answer in answers:
        if isinstance(answer, ReplogClientError):
            table.add_row(endpoint, "-", Text(answer.code, style="red"), *["-"] * 5)
            continue
        node = answer.node
        lag = _lag(answer, leader)
        cells = [node.id, node.role, str(node.term), str(node.commit_index)]
        cells += [str(node.applied_index), "-" if lag is None else str(lag), node.leader_id or "-"]
        table.add_row(endpoint, *(Text(cell) for cell in cells))
    return table


KV_COMMANDS: tuple[click.Command, ...] = (put, get, delete, list_keys, txn, watch, status)
