"""The ``replog`` command line: one click group, one module per sub-command."""

from __future__ import annotations

import click

from replog import __version__
from replog.cli.bench import bench
from replog.cli.check import check
from replog.cli.data import data
from replog.cli.dev import dev
from replog.cli.kv import KV_COMMANDS, client_group_options
from replog.cli.member import leader, member
from replog.cli.serve import serve
from replog.cli.sim import sim
from replog.cli.torture import torture


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replog")
@client_group_options
def main() -> None:
    """replog: a replicated log (Raft) for Python.

    Start here: `replog dev` runs a local 3-node cluster; then `replog put KEY VALUE`,
    `replog get KEY`, `replog status`. Run `replog COMMAND --help` for the details of a command.
    The client options given here (before COMMAND) apply to the client commands (put, get, del,
    list, txn, watch, status, member, leader).
    """


main.add_command(sim)
main.add_command(check)
main.add_command(data)
main.add_command(serve)
main.add_command(dev)
main.add_command(torture)
main.add_command(bench)
for command in KV_COMMANDS:
    main.add_command(command)
main.add_command(member)
main.add_command(leader)
