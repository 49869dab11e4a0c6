"""``replog dev``: a local cluster of N ``replog serve`` processes, in the foreground.

The layout and the supervision live in ``replog.server.supervisor``. This command checks its
arguments, that the directory was not made for a cluster of another size (``dev-cluster.json``
records the size: the nodes' membership depends on it) and that every port is free, then
starts the nodes, prints their URLs and the leader, and stops them all on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Sequence
from types import FrameType

import click

from replog.server.supervisor import (
    DEFAULT_BASE_PORT,
    HOST,
    NODES_MAX,
    NodePlan,
    Supervisor,
    plan_cluster,
    ports_in_use,
    serve_command_line,
)

MARKER_NAME = "dev-cluster.json"
DEFAULT_DATA_DIR = "./replog-data"
EXIT_USAGE = 2
EXIT_FAILED = 1


@click.command()
@click.option(
    "--nodes",
    type=click.IntRange(1, NODES_MAX),
    default=3,
    show_default=True,
    help="Number of nodes (n1 .. nN).",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=DEFAULT_DATA_DIR,
    show_default=True,
    help="Directory holding each node's data (DIR/n1, ...) and log (DIR/n1.log).",
)
@click.option(
    "--base-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_BASE_PORT,
    show_default=True,
    help="Client port of n1; node i listens on P+i-1 (client), P+100+i-1 (peer) and "
    "P+200+i-1 (binary client protocol).",
)
@click.option(
    "--print-only",
    is_flag=True,
    help="Print the replog serve command line of each node and exit.",
)
def dev(nodes: int, data_dir: str, base_port: int, print_only: bool) -> None:
    """Run a local cluster on 127.0.0.1 in the foreground; Ctrl-C stops it.

    Running it again with the same --data-dir resumes the same cluster from its data.
    """
    try:
        cluster = plan_cluster(nodes, data_dir, base_port)
    except ValueError as error:
        raise click.UsageError(str(error)) from error
    if print_only:
        for node in cluster:
            click.echo(serve_command_line(node, cluster))
        return
    _check_marker(data_dir, nodes)
    taken = ports_in_use(cluster)
    if taken:
        for line in taken:
            click.echo(f"error: {line}", err=True)
        click.echo(
            "hint: stop whatever holds these ports (another replog dev?) or choose other "
            "ports with --base-port",
            err=True,
        )
        raise click.exceptions.Exit(EXIT_FAILED)
    _write_marker(data_dir, nodes)
    sys.exit(_supervise(cluster))


def _supervise(cluster: Sequence[NodePlan]) -> int:
    supervisor = Supervisor(cluster, out=_say)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        supervisor.request_stop()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.start()
        for node in cluster:
            _say(
                f"{node.name}: {node.client_url}   (rpc {HOST}:{node.rpc_port}, "
                f"data {node.data_dir}, log {node.log_path})"
            )
        code = supervisor.run()
    except OSError as error:
        click.echo(f"error: cannot start the nodes: {error}", err=True)
        code = EXIT_FAILED
    finally:
        supervisor.stop_all()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return code


def _say(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _check_marker(data_dir: str, nodes: int) -> None:
    path = os.path.join(data_dir, MARKER_NAME)
    try:
        with open(path, "rb") as handle:
            recorded = json.loads(handle.read(4096))["nodes"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise click.ClickException(f"cannot read {path}: {error}") from error
    if recorded != nodes:
        raise click.UsageError(
            f"{data_dir} holds a {recorded}-node dev cluster; run with --nodes {recorded}, "
            "or use another --data-dir for a cluster of another size"
        )


def _write_marker(data_dir: str, nodes: int) -> None:
    os.makedirs(data_dir, exist_ok=True)
    path = os.path.join(data_dir, MARKER_NAME)
    if not os.path.exists(path):
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"nodes": nodes}, handle)
            handle.write("\n")
