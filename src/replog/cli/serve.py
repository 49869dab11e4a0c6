"""``replog serve``: run one node of a cluster.

Settings come from flags, ``REPLOG_*`` environment variables and a TOML file, in that order of
precedence (``replog.server.config``). Every flag defaults to None so that only the flags the
user gave override the environment and the file. ``--check-config`` validates and prints the
resolved configuration without starting anything (exit 0), or prints every problem (exit 2).
The runtime (``replog.server.app``) is imported only when the node really starts.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from replog.server.config import ConfigError, Resolved, render_json, render_toml, resolve_config

EXIT_CONFIG = 2
EXIT_NO_RUNTIME = 1

_EXAMPLE = """\b
A three-node cluster on three machines (run one line on each):
  replog serve --name n1 --listen-client 0.0.0.0:14300 \\
    --advertise-client http://10.0.0.1:14300 --listen-peer 0.0.0.0:14400 \\
    --advertise-peer 10.0.0.1:14400 \\
    --initial-cluster n1=10.0.0.1:14400,n2=10.0.0.2:14400,n3=10.0.0.3:14400
  (n2 and n3 alike, with their own name and address)

\b
The same through the environment or a file:
  REPLOG_NAME=n1 REPLOG_INITIAL_CLUSTER=n1=...,n2=...,n3=... replog serve
  replog serve --config /etc/replog/replog.toml --check-config
"""


def _flag(name: str, metavar: str, text: str) -> Any:
    return click.option(name, default=None, metavar=metavar, help=text)


_OPTIONS = [
    _flag("--name", "NAME", "This node's name (n1, db-2, ...). Required."),
    _flag("--cluster-id", "ID", "The cluster's name; every node must agree. [default: replog]"),
    _flag("--data-dir", "DIR", "This node's data directory. [default: ./replog-data/NAME]"),
    _flag("--listen-client", "HOST:PORT", "HTTP API address. [default: 127.0.0.1:14300]"),
    _flag(
        "--advertise-client",
        "URL",
        "Client URL others use for this node (required when listening on 0.0.0.0 or ::). "
        "[default: http://LISTEN-CLIENT]",
    ),
    _flag("--listen-peer", "HOST:PORT", "Raft peer address. [default: 127.0.0.1:14400]"),
    _flag(
        "--advertise-peer",
        "HOST:PORT",
        "Peer address others use for this node (required when listening on 0.0.0.0 or ::). "
        "[default: LISTEN-PEER]",
    ),
    _flag(
        "--listen-rpc",
        "HOST:PORT",
        "Binary client protocol address (docs/rpc-protocol.md), for programs that send many "
        "requests. [default: off]",
    ),
    _flag(
        "--initial-cluster",
        "NAME=HOST:PORT,...",
        "Every member's name and advertised peer address. [default: this node alone]",
    ),
    _flag(
        "--initial-cluster-state",
        "new|existing",
        "new: the initial cluster starts together; existing: join a running cluster (list its "
        "members and this node in --initial-cluster; add it with replog member add). "
        "[default: new]",
    ),
    click.option(
        "--auto-promote/--no-auto-promote",
        default=None,
        help="As leader, promote learners to voters once they have caught up (unless added "
        "with --learner). [default: on]",
    ),
    _flag("--tick-ms", "MS", "Raft clock tick. [default: 10]"),
    _flag("--heartbeat-ms", "MS", "Leader heartbeat interval. [default: 50]"),
    _flag(
        "--election-timeout-ms",
        "MS",
        "Election timeout T (randomized in [T, 2T)). [default: 500]",
    ),
    click.option(
        "--lease-reads/--no-lease-reads",
        default=None,
        help="Serve lease reads without a heartbeat round (trusts the clock drift bound). "
        "[default: off]",
    ),
    _flag("--clock-drift-ms", "MS", "Clock drift bound for lease reads. [default: 50]"),
    _flag("--snapshot-entries", "N", "Snapshot after this many applied entries. [default: 10000]"),
    _flag(
        "--snapshot-keep-entries",
        "N",
        "Entries kept in the log behind a snapshot. [default: 1000]",
    ),
    _flag("--request-timeout-ms", "MS", "Client request timeout. [default: 5000]"),
    _flag("--key-bytes-max", "BYTES", "Largest key. [default: 4096]"),
    _flag("--value-bytes-max", "BYTES", "Largest value. [default: 1048576]"),
    _flag("--request-bytes-max", "BYTES", "Largest request body. [default: 2097152]"),
    _flag(
        "--client-connections-max",
        "N",
        "Client connections (HTTP and binary protocol together) open at once; one more is "
        "answered 'unavailable' and closed. Lowered if need be to keep 384 of the open files "
        "limit for the node's own files and peers. [default: 10000]",
    ),
    _flag("--log-level", "LEVEL", "debug, info, warning or error. [default: info]"),
    _flag(
        "--event-loop",
        "auto|asyncio|uvloop",
        "auto: uvloop when installed (pip install 'replog[fast]'), else asyncio's. [default: auto]",
    ),
]


def _with_options(command: Any) -> Any:
    for option in reversed(_OPTIONS):
        command = option(command)
    return command


@click.command(epilog=_EXAMPLE, context_settings={"max_content_width": 100})
@_with_options
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="REPLOG_CONFIG",
    default=None,
    help="TOML file with settings (keys as the flags, without '--'). Env: REPLOG_CONFIG.",
)
@click.option(
    "--check-config",
    is_flag=True,
    help="Validate, print the resolved configuration and exit (0 valid, 2 problems).",
)
@click.option(
    "--output",
    type=click.Choice(["toml", "json"]),
    default="toml",
    show_default=True,
    help="Format of --check-config's output.",
)
def serve(config_file: str | None, check_config: bool, output: str, **flags: object) -> None:
    """Run one replog node until SIGTERM or Ctrl-C.

    Settings: flags win over REPLOG_* environment variables (REPLOG_ + the flag's name in
    upper case, e.g. REPLOG_INITIAL_CLUSTER), which win over the --config file.
    """
    resolved = _resolve(flags, config_file)
    if check_config:
        click.echo(render_json(resolved) if output == "json" else render_toml(resolved), nl=False)
        if output == "json":
            click.echo()
        return
    try:
        app = importlib.import_module("replog.server.app")
    except ModuleNotFoundError as error:
        if error.name != "replog.server.app":
            raise  # the runtime is there but broken: show the traceback
        click.echo(f"error: the server runtime is not available: {error}", err=True)
        raise click.exceptions.Exit(EXIT_NO_RUNTIME) from error
    sys.exit(app.run(resolved.config))


def _resolve(flags: dict[str, object], config_file: str | None) -> Resolved:
    try:
        return resolve_config(flags, os.environ, config_file)
    except ConfigError as error:
        count = len(error.problems)
        plural = "s" if count > 1 else ""
        click.echo(f"error: {count} problem{plural} in the configuration:", err=True)
        for problem in error.problems:
            click.echo(f"  - {problem}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from error
