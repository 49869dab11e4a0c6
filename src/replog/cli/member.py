"""The membership commands of ``replog``: ``member list|add|remove|promote`` and
``leader transfer``.

They take the client options of the other client commands (``--endpoints``, ``--output``,
``--retry-timeout``) and talk to ``/v1/members`` and ``/v1/leader/transfer`` through
``replog.Client``; any node serves them (it forwards to the leader). ``member add`` prints the
``replog serve`` command line that starts the new node on a line of its own. A refusal
(``member_exists``, ``membership_change_pending``, ``would_lose_quorum``,
``member_not_caught_up``, ``member_not_found``) is one line on stderr and exit code 1.
"""

from __future__ import annotations

import shlex
from typing import Any

import click
from rich import box
from rich.table import Table

from replog.cli.kv import Settings, _console, _echo_json, _reported, client_command

__all__ = ["leader", "member"]


@click.group()
def member() -> None:
    """List, add, remove and promote cluster members."""


@click.group()
def leader() -> None:
    """Leadership: hand it to another voter."""


def _yes_no(value: object) -> str:
    if value is None:
        return "?"
    return "yes" if value else "no"


def _members_table(members: list[dict[str, Any]]) -> Table:
    table = Table(
        "id", "role", "leader", "caught up", "lag", "peer url", "client url", box=box.SIMPLE_HEAD
    )
    for item in members:
        lag = item.get("lag")
        table.add_row(
            str(item.get("id")),
            str(item.get("role")),
            "*" if item.get("is_leader") else "",
            _yes_no(item.get("caught_up")),
            "?" if lag is None else str(lag),
            str(item.get("peer_url") or "?"),
            str(item.get("client_url") or "?"),
        )
    return table


@client_command("list", epilog="\b\nExamples:\n  replog member list\n  replog member list -o json")
def list_members(settings: Settings) -> None:
    """List every member: its URLs, voter or learner, and whether it has caught up."""
    with _reported(), settings.client() as client:
        answer = client.members()
    if settings.output == "json":
        _echo_json(answer)
        return
    _console().print(_members_table(list(answer.get("members", []))))


_ADD_EPILOG = """\b
Examples:
  replog member add n4 --peer-url 127.0.0.1:14403 --client-url http://127.0.0.1:14303
  replog member add n5 --peer-url 10.0.0.5:14400 --client-url http://10.0.0.5:14300 --learner
\b
The new node joins as a learner and becomes a voter once it has caught up (unless --learner).
Start it with the command line printed after the change.
"""


@client_command("add", epilog=_ADD_EPILOG)
@click.argument("name")
@click.option("--peer-url", required=True, metavar="HOST:PORT", help="The new node's peer address.")
@click.option("--client-url", required=True, metavar="URL", help="The new node's client URL.")
@click.option("--learner", is_flag=True, help="Keep it a learner (never promoted automatically).")
@click.option(
    "--data-dir",
    default=None,
    metavar="DIR",
    help="Data directory to put in the printed command [default: the serve default].",
)
def add_member(
    settings: Settings,
    *,
    name: str,
    peer_url: str,
    client_url: str,
    learner: bool,
    data_dir: str | None,
) -> None:
    """Add NAME to the cluster and print the command line that starts it."""
    with _reported(), settings.client() as client:
        answer = client.add_member(name, peer_url, client_url, learner=learner)
    argv = [str(a) for a in answer.get("argv", [])]
    if data_dir is not None and argv:
        argv += ["--data-dir", data_dir]
        answer["argv"] = argv
        answer["command"] = shlex.join(argv)
    if settings.output == "json":
        _echo_json(answer)
        return
    kind = "a learner" if learner else "a learner (promoted to voter once caught up)"
    click.echo(f"added {name} as {kind}; start it with:")
    click.echo(answer.get("command", ""))


@client_command("remove", epilog="\b\nExamples:\n  replog member remove n3\n")
@click.argument("name")
@click.option(
    "--force",
    is_flag=True,
    help="Remove even if the remaining reachable voters would not form a quorum.",
)
def remove_member(settings: Settings, name: str, force: bool) -> None:
    """Remove NAME from the cluster (a leader hands over leadership first)."""
    with _reported(), settings.client() as client:
        answer = client.remove_member(name, force=force)
    if settings.output == "json":
        _echo_json(answer)
        return
    click.echo(f"removed {name}")


@client_command("promote", epilog="\b\nExample:\n  replog member promote n4\n")
@click.argument("name")
def promote_member(settings: Settings, name: str) -> None:
    """Make the learner NAME a voter (refused until it has caught up)."""
    with _reported(), settings.client() as client:
        answer = client.promote_member(name)
    if settings.output == "json":
        _echo_json(answer)
        return
    click.echo(f"{name} is a voter")


@client_command(
    "transfer",
    epilog="\b\nExamples:\n  replog leader transfer\n  replog leader transfer --to n2\n",
)
@click.option(
    "--to",
    "to",
    default=None,
    metavar="ID",
    help="The voter to hand leadership to [default: the most up-to-date one].",
)
def transfer(settings: Settings, to: str | None) -> None:
    """Hand leadership to another voter."""
    with _reported(), settings.client() as client:
        answer = client.transfer_leader(to)
    if settings.output == "json":
        _echo_json(answer)
        return
    click.echo(f"leader: {answer.get('leader_id')}")


member.add_command(list_members)
member.add_command(add_member)
member.add_command(remove_member)
member.add_command(promote_member)
leader.add_command(transfer)
